"""Existence figures: the three kinds of outliers on the single prompt (and in the weights)."""
from dataclasses import dataclass

import torch

from lib import analysis, outliers, plotting
from lib.paper_figures.figure import PROMPT_FLAGS, Figure, Unavailable, View, cell, drawn, optional
from lib.paper_figures.scan import prompt_scan, strongest_layer, writer_unit
from lib.text_numbers import sig
from monkey_patch import Capture


def _capture_one(ctx, point, layer):
    ids, _ = ctx.prompt()
    with Capture(ctx.model, [point], layers=[layer]) as cap:
        ctx.forward(ids)
    return cap[point, layer][0]


# --- activations: a 3-D view of one layer on the prompt ---------------------------------------------------------

@dataclass
class ActivationExample:
    layer: int
    why: str
    rule: str
    tokens: list
    outlier_tokens: list
    outlier_channels: list
    outlier_entries: list
    outliers_found: bool
    max: float
    median: float
    threshold: float
    paper_rule_tokens: list
    outlier_layers: list
    summary: list
    what: str = drawn()     # "layer output" or "down_proj input"
    values: object = drawn()  # the layer's [tokens, channels] values


def _activation(ctx, point, found_key, layers_key, what):
    scan = prompt_scan(ctx)
    if scan[found_key] is None:
        return Unavailable([f"{ctx.title}: {point} cannot be captured for this family"], {"layer": None})
    found_per_layer = scan[found_key]
    chosen = ctx.layer_choice()
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif scan[layers_key]:
        layer = scan[layers_key][0]
        why = "first layer whose outliers pass the rule"
    elif found_key == "down" and scan["resid_layers"]:
        layer = scan["resid_layers"][0]
        why = "no down_proj-input outliers: the first layer with layer-output outliers"
    else:
        layer = strongest_layer(found_per_layer)
        why = "no outliers anywhere: the layer with the largest max/median ratio"
    h = _capture_one(ctx, point, layer)
    found = analysis.massive_entries(h, **ctx.rule)
    tokens = scan["tokens"]
    paper = analysis.paper_rule_tokens(h)
    outlier_layers = list(scan[layers_key])
    return ActivationExample(
        layer=layer, why=why, rule=ctx.rule_text, tokens=tokens,
        outlier_tokens=found["tokens"], outlier_channels=found["channels"],
        outlier_entries=found["entries"], outliers_found=bool(found["tokens"]),
        max=found["max"], median=found["median"], threshold=found["threshold"],
        paper_rule_tokens=paper, outlier_layers=outlier_layers,
        summary=[
            f"{ctx.title} {what}, layer {layer} ({why}): max {sig(found['max'])}, median {sig(found['median'])}",
            f"outlier tokens {found['tokens']} {[tokens[t] for t in found['tokens']]}, channels {found['channels']}"
            f"; paper's 1000x-mean rule: tokens {paper}",
            f"layers with outliers: {outlier_layers}",
        ],
        what=what, values=h.numpy())


def activation_layer(ctx):
    return _activation(ctx, "resid_post", "resid", "resid_layers", "layer output")


def activation_down(ctx):
    return _activation(ctx, "mlp.down_in", "down", "down_layers", "down_proj input")


def draw_activation(axes, data):
    status = "" if data.outlier_tokens else " (no outliers found)"
    plotting.wireframe(axes[0], data.values, data.tokens, highlight=data.outlier_tokens, zlabel="|h|",
                       title=f"layer {data.layer}, {data.what}{status}",
                       legend=("outlier token (the rule flags an entry)", "other token"))


def _activation_heading(data) -> str:
    return f"activation outliers, |{data.what}| of each token and channel at layer {data.layer} ({data.why})"


# --- attention: the head-averaged map of one layer on the prompt -------------------------------------------------

@dataclass
class AttentionExample:
    layer: int
    why: str
    rule: str
    tokens: list
    outlier_keys: list
    outliers_found: bool
    cumulative: list
    uniform_baseline: list
    paper_rule_keys: list
    head_outlier_ratio: list
    first_token_share: float
    first_token_share_variant: str
    summary: list
    rules_differ: str = optional()
    mean_map: object = drawn()  # head-averaged [queries, keys] probabilities


def attention(ctx):
    scan = prompt_scan(ctx)
    if scan["attn_sums"] is None:
        return Unavailable([f"{ctx.title}: attention cannot be captured for this family"], {"layer": None})
    tokens, last = scan["tokens"], ctx.view.num_layers - 1
    chosen = ctx.layer_choice()
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif scan["resid_layers"]:
        layer = min(scan["resid_layers"][0] + 1, last)
        why = f"the layer after the activation outliers appear (layer {scan['resid_layers'][0]})"
    else:
        excess = [s.mean(0) / outliers.uniform_causal_attention(s.shape[1]) for s in scan["attn_sums"]]
        layer = max(range(last + 1), key=lambda i: float(excess[i].max()))
        why = "no activation outliers: the layer whose busiest key most exceeds uniform attention"
    probs = _capture_one(ctx, "attn.pattern", layer)  # [heads, queries, keys]
    cumulative = outliers.cumulative_attention(probs)
    keys = analysis.excess_attention_keys(cumulative)
    paper_keys = analysis.paper_attention_keys(cumulative)
    ratio = outliers.head_outlier_ratio(probs, keys).tolist() if keys else [0.0] * probs.shape[0]
    summary = [
        f"{ctx.title} attention, layer {layer} ({why}): outlier keys {keys} {[tokens[k] for k in keys]}",
        "cumulative attention per key: " + ", ".join(f"{c:.2f}" for c in cumulative.tolist()),
        f"paper's >= 0.1 x seqlen rule alone: keys {paper_keys}",
    ]
    differ = analysis.rule_disagreement(cumulative, keys, paper_keys)
    if differ:
        summary.append(differ)
    return AttentionExample(
        layer=layer, why=why, rule=analysis.ATTENTION_RULE, tokens=tokens, outlier_keys=keys,
        outliers_found=bool(keys), cumulative=cumulative.tolist(),
        uniform_baseline=outliers.uniform_causal_attention(len(tokens)).tolist(), paper_rule_keys=paper_keys,
        head_outlier_ratio=ratio, first_token_share=outliers.first_token_share_all_queries(probs),
        first_token_share_variant=outliers.FIRST_TOKEN_SHARE_ALL_QUERIES, summary=summary,
        rules_differ=differ, mean_map=probs.mean(0).numpy())


def draw_attention(axes, data):
    status = "" if data.outlier_keys else " (no outlier keys)"
    plotting.attention_heatmap(axes[0], data.mean_map, data.tokens, highlight=data.outlier_keys,
                               title=f"layer {data.layer}, head-averaged attention{status}",
                               key_label="attention sink (outlier key)", colorbar="attention probability")


# --- weights: down_proj columns of one layer ---------------------------------------------------------------------

@dataclass
class WeightExample:
    layer: int
    why: str
    columns: list
    column_ratios: list
    top_column: int
    top_columns: list
    top_ratios: list
    median_ratio: float
    top_rows: list
    outlier_columns: list
    writer: dict | None
    down_in_outlier_channels: list
    layer_output_outlier_channels: list
    summary: list
    values: object = drawn()     # |W| of the columns shown, [columns, rows]
    highlight: list = drawn()    # indices into `columns` drawn magenta


def weights(ctx):
    scan = prompt_scan(ctx)
    chosen = ctx.layer_choice()
    activation_channels = []
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif scan["down_layers"]:
        layer = scan["down_layers"][0]
        why = "the first layer with down_proj-input outliers (its down_proj writes them)"
    elif scan["resid_layers"]:
        layer = scan["resid_layers"][0]
        why = "the first layer with layer-output outliers"
    else:
        ratios = [outliers.column_ratios(ctx.view.weight(i, "down")).max().item() for i in range(ctx.view.num_layers)]
        layer = max(range(len(ratios)), key=ratios.__getitem__)
        why = "no activation outliers: the layer with the largest down_proj column ratio"
    if scan["resid"][layer]["channels"]:
        activation_channels = scan["resid"][layer]["channels"]
    W = ctx.view.weight(layer, "down").detach().float().cpu()  # [hidden, intermediate]
    ratios = outliers.column_ratios(W)
    stats = outliers.weight_column_stats(W, k=3)
    down_in = scan["down"][layer] if scan["down"] else None
    outlier_columns = list(down_in["channels"]) if down_in and down_in["channels"] else []
    writer = None
    if scan["resid"][layer]["entries"] and scan["down"] is not None:
        token, channel, _ = scan["resid"][layer]["entries"][0]
        column, share = writer_unit(ctx, layer, token, channel)
        writer = {"column": column, "token": token, "channel": channel, "share_of_down_proj_output": share,
                  "ratio": ratios[column].item(), "ratio_rank": int((ratios > ratios[column]).sum()) + 1}
        outlier_columns = list(dict.fromkeys(outlier_columns + [column]))
    columns = list(dict.fromkeys(outlier_columns + stats["top_columns"]))[:5]
    ordinary = torch.argsort(ratios)[len(ratios) // 2: len(ratios) // 2 + 3].tolist()
    columns = sorted(set(columns + ordinary))
    top = stats["top_columns"][0]
    top_rows = torch.topk(W[:, top].abs(), min(3, W.shape[0])).indices.tolist()
    down_in_channels = list(down_in["channels"]) if down_in else []
    summary = [
        f"{ctx.title} down_proj layer {layer} ({why}): top column {top} ratio {sig(stats['top_ratios'][0])} "
        f"(median {sig(stats['median_ratio'])}), largest in rows {top_rows}",
        f"down_proj-input outlier channels {down_in_channels}; layer-output outlier channels {activation_channels}",
    ]
    if writer:
        summary.append(
            f"column {writer['column']} writes most of channel {writer['channel']} at token {writer['token']} "
            f"(share {writer['share_of_down_proj_output']:.2f}); its ratio {sig(writer['ratio'])} ranks "
            f"{writer['ratio_rank']} of {len(ratios)}")
    return WeightExample(
        layer=layer, why=why, columns=columns, column_ratios=[ratios[c].item() for c in columns],
        top_column=top, top_columns=stats["top_columns"], top_ratios=stats["top_ratios"],
        median_ratio=stats["median_ratio"], top_rows=top_rows, outlier_columns=outlier_columns, writer=writer,
        down_in_outlier_channels=down_in_channels, layer_output_outlier_channels=activation_channels,
        summary=summary, values=W[:, columns].T.numpy(),
        highlight=[i for i, c in enumerate(columns) if c in set(outlier_columns + [top])])


def draw_weights(axes, data):
    plotting.wireframe(axes[0], data.values, [f"col {c}" for c in data.columns], highlight=data.highlight,
                       xlabel="row (residual channel)", zlabel="|W|", title=f"layer {data.layer}, down_proj columns",
                       legend=("outlier column (an outlier's MLP unit, its writer, or the largest max/mean)",
                               "median column, for comparison"))


def _weights_heading(data) -> str:
    writer = data.writer
    wrote = (f"; column {writer['column']} writes the outlier of channel {writer['channel']} at token "
             f"{writer['token']}" if writer else "")
    return f"weight outliers, |W| of down_proj columns at layer {data.layer}{wrote}"


def _prompt_outliers(result: dict) -> dict:
    dominant = result.get("dominant_outlier") or {}
    return {"prompt_outlier_tokens": [result["tokens"][t] for t in result.get("outlier_tokens", [])],
            "prompt_outlier_channels": result.get("outlier_channels", []),
            "dominant_outlier": dominant and {k: dominant[k] for k in ("layer", "token", "token_text", "channel", "abs",
                                                                      "over_median", "flagged_layers")}}


def _dominant_cell(row: dict) -> str:
    d = row.get("dominant_outlier")
    if not d:
        return "-"
    return (f"{d['token_text']!r} ({d['token']}), ch {d['channel']}, {sig(d['abs'])} at layer {d['layer']} "
            f"({sig(d['over_median'], 3)}x median); flagged at {cell(d['flagged_layers'])}")


def _writer(result: dict) -> dict:
    writer = result.get("writer") or {}
    return {"writer_column": writer.get("column"), "writer_column_ratio": writer.get("ratio"),
            "writer_column_rank": writer.get("ratio_rank")}


def _writer_cell(row: dict) -> str:
    if row.get("writer_column") is None:
        return "-"
    return f"{row['writer_column']} ({sig(row['writer_column_ratio'], 3)}, rank {row['writer_column_rank']})"


VIEW_3D = dict(size=(7, 5.5), three_d=True)
ACTIVATION_VIEW = View(draw_activation, heading=_activation_heading, **VIEW_3D)
FIGURES = [
    Figure("existence_activation_outliers_down",
           "3-D view of the down_proj input on the prompt at the first layer with outliers",
           PROMPT_FLAGS, None, activation_down, (ACTIVATION_VIEW,), dominant=True),
    Figure("existence_activation_outliers_layer",
           "3-D view of a layer output on the prompt at the first layer with outliers",
           PROMPT_FLAGS, None, activation_layer, (ACTIVATION_VIEW,), summary=_prompt_outliers,
           columns=(("prompt outlier tokens (channels)", lambda row: f"{cell(row['prompt_outlier_tokens'])} "
                                                                     f"({cell(row['prompt_outlier_channels'])})"),
                    ("dominant outlier of the prompt", _dominant_cell)), dominant=True),
    Figure("existence_attention_outliers",
           "head-averaged attention on the prompt at the layer after the outliers appear",
           PROMPT_FLAGS, None, attention,
           (View(draw_attention, size=(6.5, 5.5), heading=lambda d: f"attention sink, head-averaged attention of "
                 f"each query (row) on each key (column) at layer {d.layer} ({d.why})"),), dominant=True),
    Figure("existence_weight_outliers", "3-D view of down_proj columns, including the outlier column",
           PROMPT_FLAGS, None, weights, (View(draw_weights, heading=_weights_heading, **VIEW_3D),), summary=_writer,
           columns=(("down_proj column writing it (ratio, rank)", _writer_cell),), dominant=True),
]
