"""Position figures: where outliers sit over calibration sequences, per layer, channel, token kind and head.

Only small per-layer results are kept while the sequences stream through the model (reducers), so the
paper's 4096-token settings on a 7B model never hold a full attention map for more than one layer at once.
A layer counts as an outlier layer when the rule flags outliers in at least half of the sequences.
Token categories: each outlier position counts once per sequence (union over layers).
"""
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lib import analysis, outliers, plotting
from lib.paper_figures.figure import CALIBRATION_FLAGS, Figure, Unavailable, View, cell, drawn, shares
from lib.reducers import attention_column_sums, by_point
from lib.text_numbers import sig
from monkey_patch import Capture


def sequences(ids, what):
    return tqdm(range(ids.shape[0]), desc=what, unit="seq", leave=False, disable=ids.shape[0] < 4)


def _category_shares(ctx, ids, positions_per_sequence):
    categories = []
    for s, positions in enumerate(positions_per_sequence):
        tokens = ctx.tokens_of(ids[s, sorted(positions)].tolist()) if positions else []
        categories += [outliers.token_category(t, p) for t, p in zip(tokens, sorted(positions))]
    return outliers.category_shares(categories)


def majority_layers(counts, n) -> list[int]:
    """The layers flagged in at least half of the n sequences (and in at least one)."""
    return [i for i, count in enumerate(counts) if count > 0 and count * 2 >= n]


ACTIVATION_POINTS = ("resid_post", "mlp.down_in")


def _activation_stats(ctx):
    """Per point and layer, one summary per calibration sequence; both points in one pass, cached."""
    ids, info = ctx.calibration()
    key = ("activation_stats", info["nsamples"], info["seqlen"])
    if key in ctx.cache:
        return ctx.cache[key]
    points = [p for p in ACTIVATION_POINTS if p in ctx.view.supported_points()]
    n_layers = ctx.view.num_layers
    stats = {p: [[] for _ in range(n_layers)] for p in points}
    with Capture(ctx.model, points, reduce=by_point({}, default=analysis.activation_summary(3, **ctx.rule))) as cap:
        for s in sequences(ids, "activations"):
            ctx.forward(ids[s: s + 1])
            for point in points:
                for layer in range(n_layers):
                    stats[point][layer].append(cap.reduced(point, layer)[0][0])
            cap.clear()
    ctx.cache[key] = (ids, info, stats)
    return ctx.cache[key]


# --- activations: per-layer top values, their channels and tokens ----------------------------------------------

@dataclass
class ActivationPositions:
    rule: str
    calibration: dict
    layers: list
    outlier_layers: list
    categories: dict
    view_3d: dict
    kurtosis_variant: str
    summary: list
    what: str = drawn()          # "layer output" or "down_proj input"
    view_values: object = drawn()  # the 3-D view's rows [tokens shown, channels]
    view_labels: list = drawn()
    view_highlight: list = drawn()


def _activation(ctx, point, what):
    if point not in ctx.view.supported_points():
        return Unavailable([f"{ctx.title}: {point} cannot be captured for this family"], {"layers": []})
    ids, info, all_stats = _activation_stats(ctx)
    per_layer = all_stats[point]
    rows, positions = [], [set() for _ in range(ids.shape[0])]
    for layer, stats in enumerate(per_layer):
        n = len(stats)
        flagged = [s for s in range(n) if stats[s]["outlier_tokens"]]
        for s in flagged:
            positions[s].update(stats[s]["outlier_tokens"])
        channels = [c for st in stats for c in st["channels"]]
        rows.append({
            "layer": layer,
            "top": [sum(st["top"][k] for st in stats) / n for k in range(3)],
            "median": sum(st["median"] for st in stats) / n,
            "kurtosis": sum(st["kurtosis"] for st in stats) / n,
            "top_tokens": [st["tokens"] for st in stats],
            "top_channels": [st["channels"] for st in stats],
            "frequent_channels": analysis.most_common(channels, 3),
            "sequences_with_outliers": len(flagged),
            "outlier_channels": analysis.most_common([c for s in flagged for c in stats[s]["outlier_channels"]], 5),
        })
    outlier_layers = majority_layers([r["sequences_with_outliers"] for r in rows], ids.shape[0])
    categories = _category_shares(ctx, ids, positions)
    # the 3-D view shows the layer with the largest mean top-1 (among the outlier layers when there are any)
    candidates = [r for r in rows if r["layer"] in outlier_layers] or rows
    shown = max(candidates, key=lambda r: r["top"][0])["layer"]
    if ctx.layer_choice() is not None:
        shown = ctx.layer_choice()
    view_3d, values, labels, highlight = _three_d_view(ctx, point, ids[0:1], shown)
    return ActivationPositions(
        rule=ctx.rule_text, calibration=info, layers=rows, outlier_layers=outlier_layers, categories=categories,
        view_3d=view_3d, kurtosis_variant=outliers.KURTOSIS_PER_TOKEN,
        summary=[
            f"{ctx.title} {what} over {info['nsamples']} x {info['seqlen']} tokens of {info['data']}: "
            f"outlier layers {outlier_layers}",
            "top-1 per layer: " + ", ".join(sig(r['top'][0]) for r in rows),
            "median per layer: " + ", ".join(sig(r['median'], 3) for r in rows),
            "kurtosis per layer: " + ", ".join(sig(r['kurtosis'], 3) for r in rows),
            "outlier token categories: " + ", ".join(f"{k} {categories[k]:.1%}" for k in outliers.CATEGORIES)
            + f" (n={categories['count']})",
        ],
        what=what, view_values=values, view_labels=labels, view_highlight=highlight)


def _three_d_view(ctx, point, ids, layer):
    """One calibration sequence at one layer: its first 8 tokens and up to 6 outlier tokens."""
    with Capture(ctx.model, [point], layers=[layer]) as cap:
        ctx.forward(ids)
    h = cap[point, layer][0]
    found = analysis.massive_entries(h, **ctx.rule)
    rows = sorted(set(range(min(8, h.shape[0]))) | set(list(dict.fromkeys(t for t, _, _ in found["entries"]))[:6]))
    tokens = ctx.tokens_of(ids[0, rows].tolist())
    labels = [f"{p}:{plotting.short_label(t, 6)}" for p, t in zip(rows, tokens)]
    info = {"layer": layer, "positions": rows, "outlier_tokens": found["tokens"],
            "outlier_channels": found["channels"], "max": found["max"], "median": found["median"]}
    return info, h[rows].numpy(), labels, [i for i, p in enumerate(rows) if p in found["tokens"]]


def activation_layer(ctx):
    return _activation(ctx, "resid_post", "layer output")


def activation_down(ctx):
    return _activation(ctx, "mlp.down_in", "down_proj input")


OUTLIER_LAYERS = "outlier layers: the rule flags outliers in at least half of the sequences"


def draw_activation(axes, data):
    rows = data.layers
    layers = [r["layer"] for r in rows]
    plotting.layer_curves(axes[0], layers, {"largest |h| (top-1)": [r["top"][0] for r in rows],
                                            "2nd largest": [r["top"][1] for r in rows],
                                            "3rd largest": [r["top"][2] for r in rows],
                                            "median |h|": [r["median"] for r in rows]},
                          title=f"|{data.what}| per layer, mean over the sequences", ylabel="|h|",
                          marked_layers=data.outlier_layers, band_label=OUTLIER_LAYERS, legend_loc="below")
    hot = {(r["layer"], c) for r in rows if r["layer"] in data.outlier_layers for c in r["outlier_channels"]}
    plotting.index_scatter(axes[1], layers, [r["frequent_channels"] for r in rows], highlight=hot,
                           title="channels holding the top-3 values", ranks=("the most frequent", "2nd", "3rd"),
                           labels=("channel of flagged outliers", "channel of top values, not flagged"),
                           legend_loc="below")
    plotting.category_bars(axes[2], data.categories,
                           title=f"kinds of the outlier tokens ({data.categories['count']} positions)")


def draw_activation_3d(axes, data):
    plotting.wireframe(axes[0], data.view_values, data.view_labels, highlight=data.view_highlight,
                       zlabel="|h|", title=f"layer {data.view_3d['layer']}, {data.what} (position:token)",
                       legend=("outlier token (the rule flags an entry)", "other token (the first 8 are shown)"))


# --- attention: cumulative attention per layer, per-head outlier ratio, key categories --------------------------

@dataclass
class AttentionPositions:
    rule: str
    calibration: dict
    layers: list
    outlier_layers: list
    paper_rule: str
    paper_rule_layers: list
    keys_only_ours: int
    keys_only_paper_rule: int
    categories: dict
    sink_rate_first_token: float
    sink_rate_variant: str
    first_token_attention: list
    summary: list


def attention(ctx):
    ids, info = ctx.calibration()
    n_layers, n = ctx.view.num_layers, ids.shape[0]
    top1, top2, median = ([0.0] * n_layers for _ in range(3))
    head_ratio = [torch.zeros(ctx.view.num_heads) for _ in range(n_layers)]
    first_key = torch.zeros(n_layers, ctx.view.num_heads)
    flagged, paper_flagged = [0] * n_layers, [0] * n_layers
    only_ours, only_paper = 0, 0  # (sequence, layer, key) triples flagged by one rule and not the other
    positions = [set() for _ in range(n)]
    with Capture(ctx.model, ["attn.pattern"], reduce=attention_column_sums) as cap:
        for s in sequences(ids, "attention"):
            ctx.forward(ids[s: s + 1])
            for layer in range(n_layers):
                sums = cap.reduced("attn.pattern", layer)[0][0]  # [heads, keys]
                cumulative = sums.mean(0)
                ranked = torch.sort(cumulative, descending=True).values
                top1[layer] += ranked[0].item() / n
                top2[layer] += ranked[min(1, len(ranked) - 1)].item() / n
                median[layer] += cumulative.median().item() / n
                keys = analysis.excess_attention_keys(cumulative)
                paper = analysis.paper_attention_keys(cumulative)
                flagged[layer] += bool(keys)
                paper_flagged[layer] += bool(paper)
                only_ours += len(set(keys) - set(paper))
                only_paper += len(set(paper) - set(keys))
                positions[s].update(keys)
                if keys:
                    head_ratio[layer] += outliers.head_outlier_ratio_from_sums(sums, keys)
                first_key[layer] += sums[:, 0] / sums.shape[1] / n
            cap.clear()
    # per-head ratio: averaged over the sequences in which the layer has outlier keys
    head_ratio = [ratio / max(count, 1) for ratio, count in zip(head_ratio, flagged)]
    rows = [{"layer": i, "top": [top1[i], top2[i]], "median": median[i],
             "sequences_with_outlier_keys": flagged[i], "sequences_with_paper_rule_keys": paper_flagged[i],
             "head_ratio": head_ratio[i].tolist(),
             "head_ratio_mean": head_ratio[i].mean().item(), "head_ratio_min": head_ratio[i].min().item(),
             "head_ratio_max": head_ratio[i].max().item()} for i in range(n_layers)]
    categories = _category_shares(ctx, ids, positions)
    outlier_layers = majority_layers(flagged, n)
    paper_layers = majority_layers(paper_flagged, n)
    sink = outliers.sink_rate(first_key)
    return AttentionPositions(
        rule=analysis.ATTENTION_RULE, calibration=info, layers=rows, outlier_layers=outlier_layers,
        paper_rule=analysis.PAPER_ATTENTION_RULE, paper_rule_layers=paper_layers, keys_only_ours=only_ours,
        keys_only_paper_rule=only_paper, categories=categories, sink_rate_first_token=sink,
        sink_rate_variant=outliers.SINK_RATE_ALL_QUERIES,
        first_token_attention=first_key.tolist(),
        summary=[
            f"{ctx.title} attention over {info['nsamples']} x {info['seqlen']} tokens: layers with outlier keys "
            f"in most sequences {outlier_layers}; sink rate on the first token {sink:.3f}",
            f"paper's >= 0.1 x seqlen rule alone: layers {paper_layers}; (sequence, layer, key) triples flagged by "
            f"one rule only: ours {only_ours}, the paper's {only_paper} (it also counts query 0's forced weight on "
            "key 0 and has no uniform baseline)",
            "cumulative top-1 per layer: " + ", ".join(sig(v) for v in top1),
            "mean per-head outlier ratio: " + ", ".join(f"{r['head_ratio_mean']:.2f}" for r in rows),
            "outlier key categories: " + ", ".join(f"{k} {categories[k]:.1%}" for k in outliers.CATEGORIES)
            + f" (n={categories['count']})",
        ])


def draw_attention(axes, data):
    rows = data.layers
    layers = [r["layer"] for r in rows]
    plotting.layer_curves(axes[0], layers, {"busiest key (top-1)": [r["top"][0] for r in rows],
                                            "2nd busiest": [r["top"][1] for r in rows],
                                            "median key": [r["median"] for r in rows]},
                          title="attention a key receives, summed over queries", ylabel="cumulative attention",
                          marked_layers=data.outlier_layers,
                          band_label="sink layers: outlier keys in at least half of the sequences", legend_loc="below")
    plotting.range_bars(axes[1], layers, [r["head_ratio_mean"] for r in rows], [r["head_ratio_min"] for r in rows],
                        [r["head_ratio_max"] for r in rows], title="each head's share of attention on the outlier keys",
                        ylabel="share on outlier keys", labels=("mean over heads", "smallest to largest head"))
    plotting.category_bars(axes[2], data.categories,
                           title=f"kinds of the outlier keys ({data.categories['count']} positions)")


# --- weights: down_proj column ratios per layer, all modules' scores ---------------------------------------------

@dataclass
class WeightPositions:
    layers: list
    modules: dict
    late_layer_shown: int | None
    summary: list
    late_values: object = drawn()  # |W| of the late layer's columns shown, [columns, rows]
    late_columns: list = drawn()
    late_highlight: list = drawn()


def weights(ctx):
    view = ctx.view
    roles = view.weight_roles()
    rows, scores = [], {role: [] for role in roles}
    for layer in range(view.num_layers):
        if "down" in roles:
            stats = outliers.weight_column_stats(view.weight(layer, "down"), k=3)
            rows.append({"layer": layer, **stats})
        for role in roles:
            scores[role].append(outliers.module_score(view.weight(layer, role)))
    late = max(rows, key=lambda r: (r["layer"] >= view.num_layers // 2, r["max_ratio"])) if rows else None
    values = columns = highlight = None
    if late:
        W = view.weight(late["layer"], "down").detach().float().cpu()
        ordinary = torch.argsort(outliers.column_ratios(W))[W.shape[1] // 2: W.shape[1] // 2 + 2].tolist()
        columns = sorted(set(late["top_columns"] + ordinary))
        values = W[:, columns].T.numpy()
        highlight = [i for i, c in enumerate(columns) if c in late["top_columns"]]
    strongest = max(rows, key=lambda r: r["max_ratio"]) if rows else None
    return WeightPositions(
        layers=rows, modules={role: [{"layer": i, "score": v} for i, v in enumerate(values_)]
                              for role, values_ in scores.items()},
        late_layer_shown=late["layer"] if late else None,
        summary=[
            f"{ctx.title} down_proj: largest column ratio {sig(strongest['max_ratio'])} at layer {strongest['layer']} "
            f"column {strongest['top_columns'][0]}" if strongest else f"{ctx.title}: no down_proj",
            "max column ratio per layer: " + ", ".join(sig(r['max_ratio'], 3) for r in rows),
            "module score maxima: " + ", ".join(f"{role} {sig(max(v), 3)}" for role, v in scores.items()),
        ],
        late_values=values, late_columns=columns, late_highlight=highlight)


def draw_weights(axes, data):
    rows = data.layers
    layers = [m["layer"] for m in next(iter(data.modules.values()), [])]
    if rows:
        plotting.layer_curves(axes[0], layers, {"largest column": [r["max_ratio"] for r in rows],
                                                "median column": [r["median_ratio"] for r in rows]},
                              title="down_proj columns: max |W| / mean |W|", ylabel="max/mean |W|")
        plotting.index_scatter(axes[2], layers, [r["top_columns"] for r in rows], ylabel="column",
                               title="the 3 down_proj columns of largest max/mean", ranks=("largest max/mean", "2nd", "3rd"),
                               labels=("", "column"))
    for role, values in data.modules.items():
        axes[1].plot(layers, [m["score"] for m in values], marker="o", markersize=3, label=role)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("max over row/column max/mean", fontweight="bold")
    axes[1].legend(fontsize=7, ncol=2, title="projection", title_fontsize=7)
    plotting.layer_axis(axes[1], "weight-outlier score of each projection")
    if data.late_values is not None:
        plotting.wireframe(axes[3], data.late_values, [f"col {c}" for c in data.late_columns],
                           highlight=data.late_highlight, xlabel="row", zlabel="|W|",
                           title=f"layer {data.late_layer_shown} down_proj columns",
                           legend=("top-3 max/mean column", "median column"))
    else:
        axes[3].remove()


def _calibration_outliers(result: dict) -> dict:
    return {"first_outlier_layer": (result.get("outlier_layers") or [None])[0],
            "outlier_layers": result.get("outlier_layers", []), "outlier_token_categories": result.get("categories"),
            "rule": result.get("rule"), "calibration": result.get("calibration")}


def _sinks(result: dict) -> dict:
    return {"sink_layers": result.get("outlier_layers", []), "sink_key_categories": result.get("categories")}


ACTIVATION_VIEWS = (
    View(draw_activation, ncols=3, heading=lambda d: f"activation outliers per layer over calibration text, "
         f"{d.what}: the largest values, the channels that hold them and the kinds of tokens they sit on"),
    View(draw_activation_3d, "_3d", size=(7, 5.5), three_d=True, input="sequence",
         heading=lambda d: f"activation outliers, |{d.what}| of each token and channel at layer {d.view_3d['layer']}"))
FIGURES = [
    Figure("pos_activation_outliers_down", "per-layer top-1/2/3 and median of down_proj inputs over calibration text",
           CALIBRATION_FLAGS, "activations", activation_down, ACTIVATION_VIEWS),
    Figure("pos_activation_outliers_layer", "per-layer top-1/2/3 and median of layer outputs over calibration text, "
           "top channels, token categories and a 3-D view", CALIBRATION_FLAGS, "activations", activation_layer,
           ACTIVATION_VIEWS, summary=_calibration_outliers,
           columns=(("first outlier layer (calibration)", lambda row: cell(row["first_outlier_layer"])),
                    ("outlier token categories", lambda row: shares(row["outlier_token_categories"])))),
    Figure("pos_attention_outliers", "cumulative attention, per-head outlier ratio and outlier-key categories",
           ("calibration",), "attention", attention,
           (View(draw_attention, ncols=3, heading="attention outliers per layer over calibration text: how much "
                 "attention the busiest keys collect, how much of each head's attention the outlier keys take, and "
                 "the kinds of tokens they are"),), summary=_sinks,
           columns=(("sink layers", lambda row: cell(row["sink_layers"])),
                    ("sink key categories", lambda row: shares(row["sink_key_categories"])))),
    Figure("pos_weight_outliers", "down_proj column ratios per layer, module scores and top columns",
           (), None, weights,
           (View(draw_weights, ncols=2, nrows=2, three_d=(3,), heading="weight outliers per layer: down_proj columns' "
                 "max/mean |W|, every projection's outlier score, the top columns and one late layer's columns"),)),
]
