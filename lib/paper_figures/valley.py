"""The compression valley beside the outlier and the sink, per layer over calibration windows (beyond the paper).

Queipo-de-Llano et al. 2025 ("Attention Sinks and Compression Valleys in LLMs are Two Sides of the Same Coin")
report that where the first token's norm grows by orders of magnitude, the layer's representations lose entropy
and the first-token sink rate jumps, in the same layers. Here, per layer and averaged over the windows:
  * the normalised matrix-based entropy of the layer output (lib.outliers.matrix_entropy), of the same output
    without the tokens the activation rule flags in that layer, of the mean-centred output, and of the mean-centred
    output without those tokens: a massive token, a large direction that every token shares (Gemma 3 keeps a few
    residual channels in the thousands at every token) or a true compression tell these apart;
  * the norm of the window's outlier token (the one holding its largest entry flagged by the rule over all layers)
    and of the first token, each over the median token norm;
  * the sink rate of both tokens: the share of heads whose mean attention on the token, from the queries that see
    it, exceeds 0.3 (Gu et al.; lib.outliers.mean_attention_from_sums and sink_rate).
Each window's layer outputs are reduced on the fly (one window's Gram matrix at a time), attention to per-head
column sums, so nothing larger than one layer of one window is held.
"""
from dataclasses import dataclass

import torch

from lib import analysis, outliers, plotting
from lib.paper_figures.figure import Figure, View, cell, drawn
from lib.paper_figures.position import majority_layers, sequences
from lib.reducers import attention_column_sums, by_point
from lib.text_numbers import sig
from monkey_patch import Capture

SINK_THRESHOLD = 0.3  # Gu et al.'s
VALLEY_FRACTION = 0.5
ENTROPIES = ("entropy", "entropy_without_outliers", "entropy_centred", "entropy_centred_without_outliers")
DEFINITIONS = {
    "entropy": "normalised matrix-based entropy of the layer output of one window (Shannon entropy of the token Gram "
               "matrix's eigenvalues over their sum, divided by log(tokens)), averaged over the windows",
    "entropy_without_outliers": "the same without the tokens the activation rule flags in that layer's output",
    "entropy_centred": "the same on the layer output minus its mean over the window's tokens",
    "entropy_centred_without_outliers": "the same on the tokens the rule does not flag, minus their mean",
    "norm_ratio": "L2 norm of the token's layer output over the median L2 norm of the window's tokens",
    "outlier_token": "per window, the token holding the largest entry the activation rule flags in any layer "
                     "(none where it flags nothing; those windows do not count in the outlier-token averages)",
    "sink_rate": f"share of the layer's heads whose mean attention on the token, from the queries that see it (the "
                 f"token's own and every later one), averaged over the windows, exceeds {SINK_THRESHOLD:g}",
    "valley": f"the layers whose entropy is below {VALLEY_FRACTION:g} x the largest entropy over the layers; depth = "
              "1 - lowest / largest entropy",
}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def valley(per_layer: list) -> dict:
    """The valley of a per-layer entropy curve (DEFINITIONS["valley"]); layers without a value
    (no window kept two tokens) are left out."""
    known = {i: e for i, e in enumerate(per_layer) if e is not None}
    if not known:
        return {"layers": [], "depth": None, "lowest_layer": None, "highest_layer": None}
    highest, lowest = max(known, key=known.get), min(known, key=known.get)
    return {"layers": [layer for layer, e in known.items() if e < VALLEY_FRACTION * known[highest]],
            "depth": 1 - known[lowest] / known[highest] if known[highest] > 0 else 0.0,
            "lowest_layer": lowest, "highest_layer": highest}


def _layer_output(rule):
    """Reducer of one window's layer output: the three entropies, the tokens the rule flags, its largest flagged
    entry and every token's norm."""
    def reduce(point, layer, tensor):
        rows = []
        for h in tensor:
            x = h.to(torch.float32)
            found = analysis.massive_entries(x, **rule)
            flagged = set(found["tokens"])
            kept = x[[t for t in range(x.shape[0]) if t not in flagged]]
            enough = kept.shape[0] > 1
            rows.append({"entropy": outliers.matrix_entropy(x),
                         "entropy_without_outliers": outliers.matrix_entropy(kept) if enough else None,
                         "entropy_centred": outliers.matrix_entropy(x - x.mean(0)),
                         "entropy_centred_without_outliers":
                             outliers.matrix_entropy(kept - kept.mean(0)) if enough else None,
                         "outlier_tokens": found["tokens"],
                         "largest": found["entries"][0] if found["entries"] else None,
                         "norms": x.norm(dim=-1).cpu()})
        return rows
    return reduce


@dataclass
class CompressionValley:
    rule: str
    calibration: dict
    definitions: dict
    sink_threshold: float
    valley_fraction: float
    layers: list
    outlier_layers: list
    valley: dict
    windows: list
    windows_with_outlier_token: int
    outlier_token_categories: dict
    summary: list


def compute(ctx):
    ids, info = ctx.calibration()
    n_layers, n = ctx.view.num_layers, ids.shape[0]
    per_window = []  # per window: its per-layer reductions
    reduce = by_point({"attn.pattern": attention_column_sums}, default=_layer_output(ctx.rule))
    with Capture(ctx.model, ["resid_post", "attn.pattern"], reduce=reduce) as cap:
        for s in sequences(ids, "compression"):
            ctx.forward(ids[s: s + 1])
            per_window.append([{**cap.reduced("resid_post", layer)[0][0],
                                "attention": outliers.mean_attention_from_sums(cap.reduced("attn.pattern", layer)[0][0])}
                               for layer in range(n_layers)])
            cap.clear()
    windows = [_outlier_token(ctx, ids[s], layers, s) for s, layers in enumerate(per_window)]
    rows = [_layer_row(layer, [w[layer] for w in per_window], windows) for layer in range(n_layers)]
    outlier_layers = majority_layers([r["windows_with_outliers"] for r in rows], n)
    valleys = {name: valley([r[name] for r in rows]) for name in ENTROPIES}
    found = [w for w in windows if w["position"] is not None]
    categories = outliers.category_shares([w["category"] for w in found])
    return CompressionValley(
        rule=ctx.rule_text, calibration=info, definitions=DEFINITIONS, sink_threshold=SINK_THRESHOLD,
        valley_fraction=VALLEY_FRACTION, layers=rows, outlier_layers=outlier_layers, valley=valleys,
        windows=windows, windows_with_outlier_token=len(found), outlier_token_categories=categories,
        summary=_summary(ctx, info, rows, outlier_layers, valleys, found, categories))


def _outlier_token(ctx, ids, layers, s) -> dict:
    """The window's outlier token: where its largest flagged entry over all layers sits."""
    entries = [(abs(r["largest"][2]), i, r["largest"]) for i, r in enumerate(layers) if r["largest"] is not None]
    if not entries:
        return {"window": s, "position": None}
    _, layer, (position, channel, value) = max(entries)
    token = ctx.tokens_of([ids[position]])[0]
    return {"window": s, "position": position, "token": token,
            "category": outliers.token_category(token, position), "layer": layer, "channel": channel,
            "value": value}


def _layer_row(layer, reductions, windows) -> dict:
    """One layer's averages over the windows (outlier-token ones over the windows that have that token)."""
    row = {"layer": layer, **{name: _mean([r[name] for r in reductions]) for name in ENTROPIES},
           "windows_with_outliers": sum(bool(r["outlier_tokens"]) for r in reductions)}
    on_token = {"first": [(r, 0) for r in reductions],
                "outlier": [(r, w["position"]) for r, w in zip(reductions, windows) if w["position"] is not None]}
    for name, pairs in on_token.items():
        ratios = [float(r["norms"][t] / r["norms"].median()) for r, t in pairs]
        row[f"norm_ratio_{name}"] = _mean(ratios)
        if pairs:
            attention = torch.stack([r["attention"][:, t] for r, t in pairs]).mean(0)  # [heads]
            row[f"sink_rate_{name}"] = outliers.sink_rate(attention[None], SINK_THRESHOLD)
            row[f"attention_on_{name}"] = attention.tolist()
        else:
            row[f"sink_rate_{name}"], row[f"attention_on_{name}"] = None, []
    return row


def _values(rows, key, fmt) -> str:
    """One row value per layer; fmt is a format spec, or a function for measured values written with sig."""
    write = fmt if callable(fmt) else (lambda x: format(x, fmt))
    return ", ".join("-" if r[key] is None else write(r[key]) for r in rows)


def _summary(ctx, info, rows, outlier_layers, valleys, found, categories) -> list[str]:
    v, c = valleys["entropy"], valleys["entropy_centred"]
    return [
        f"{ctx.title} over {info['nsamples']} x {info['seqlen']} tokens of {info['data']}: entropy valley (layers "
        f"below {VALLEY_FRACTION:g} x the largest) {v['layers']}, lowest at layer {v['lowest_layer']}, depth "
        f"{v['depth']:.3f}; mean-centred: {c['layers']}, lowest at layer {c['lowest_layer']}, depth "
        f"{c['depth']:.3f}; outlier layers {outlier_layers}",
        "entropy per layer: " + _values(rows, "entropy", ".3f"),
        "without the outlier tokens: " + _values(rows, "entropy_without_outliers", ".3f"),
        "mean-centred: " + _values(rows, "entropy_centred", ".3f"),
        "mean-centred without the outlier tokens: " + _values(rows, "entropy_centred_without_outliers", ".3f"),
        "outlier-token norm / median norm: " + _values(rows, "norm_ratio_outlier", lambda x: sig(x, 3)),
        "first-token norm / median norm: " + _values(rows, "norm_ratio_first", lambda x: sig(x, 3)),
        "sink rate on the outlier token: " + _values(rows, "sink_rate_outlier", ".2f"),
        "sink rate on the first token: " + _values(rows, "sink_rate_first", ".2f"),
        f"outlier token in {len(found)} of {info['nsamples']} windows: "
        + ", ".join(f"{k} {categories[k]:.1%}" for k in outliers.CATEGORIES),
    ]


def draw(axes, data):
    ax, rows = axes[0], data.layers
    layers = [r["layer"] for r in rows]
    band = plotting.shade_layers(ax, data.outlier_layers,
                                 "outlier layers: the rule flags outliers in at least half of the windows")
    styles = {"entropy": ("entropy", "-", "o", "#d62728"),
              "entropy_without_outliers": ("entropy without the outlier tokens", "--", "s", "#ff7f0e"),
              "entropy_centred": ("entropy, mean-centred", ":", "^", "#2ca02c"),
              "entropy_centred_without_outliers": ("mean-centred, without the outlier tokens", "-.", "v", "#bcbd22"),
              "sink_rate_outlier": ("sink rate, outlier token", "-", "x", "#9467bd"),
              "sink_rate_first": ("sink rate, first token", "-", "+", "#8c564b")}
    for key, (label, line, marker, color) in styles.items():
        series = [(layer, r[key]) for layer, r in zip(layers, rows) if r[key] is not None]
        if series:
            ax.plot(*zip(*series), linestyle=line, marker=marker, markersize=4, color=color, label=label)
    ax.axhline(VALLEY_FRACTION * max(r["entropy"] for r in rows), color="#7f7f7f", linewidth=0.8, linestyle="-.",
               label=f"valley: below {VALLEY_FRACTION:g} x the largest entropy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("entropy, sink rate", fontweight="bold")
    norms = ax.twinx()
    for key, label, color, line in (("norm_ratio_outlier", "norm / median norm, outlier token", plotting.OUTLIER, "-"),
                                    ("norm_ratio_first", "norm / median norm, first token", "#17becf", (0, (4, 3)))):
        series = [(layer, r[key]) for layer, r in zip(layers, rows) if r[key] is not None]
        if series:  # the first token's dashed: where it is the outlier token, both lines show
            norms.plot(*zip(*series), color=color, linewidth=1.6, linestyle=line, label=label)
    norms.set_yscale("log")
    norms.set_ylabel("token norm / median token norm", fontweight="bold")
    plotting.bold_ticks(norms)
    handles = ax.get_legend_handles_labels()
    more = norms.get_legend_handles_labels()
    extra = ([band], [band.get_label()]) if band else ([], [])
    ax.legend(handles[0] + more[0] + extra[0], handles[1] + more[1] + extra[1], fontsize=8, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.12))
    plotting.layer_axis(ax, title="entropy and sink rates (left axis), token norms (right axis), mean over the "
                        "windows")


def _valley_cell(found) -> str:
    return "-" if not found else f"{cell(found['layers'])} ({found['depth']:.2f})"


FIGURES = [
    Figure("pos_compression", "per-layer matrix entropy of the layer output (all tokens, without the outlier tokens, "
           "mean-centred), the outlier and first tokens' norm over the median, and their sink rates",
           ("calibration", "rule"), "activations", compute,
           (View(draw, size=(9, 5.5), heading="compression valley per layer over calibration text: the matrix entropy "
                 "of the layer output, and the norm and sink rate of the outlier token and of the first token"),),
           summary=lambda result: {"valley": (result.get("valley") or {}).get("entropy"),
                                   "centred_valley": (result.get("valley") or {}).get("entropy_centred")},
           columns=(("entropy valley: layers (depth)", lambda row: _valley_cell(row["valley"])),
                    ("mean-centred valley: layers (depth)", lambda row: _valley_cell(row["centred_valley"])))),
]
