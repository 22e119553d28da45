"""Existence figures: the three kinds of outliers on the single prompt (and in the weights)."""
import torch

from lib import analysis, outliers, plotting
from lib.paper_figures.scan import prompt_scan, strongest_layer, writer_unit
from monkey_patch import Capture


def _capture_one(ctx, point, layer):
    ids, _ = ctx.prompt()
    with Capture(ctx.model, [point], layers=[layer]) as cap:
        ctx.forward(ids)
    return cap[point, layer][0]


def _activation_figure(ctx, point, found_key, layers_key, what, stem):
    scan = prompt_scan(ctx)
    if scan[found_key] is None:
        return {"layer": None, "summary": [f"{ctx.title}: {point} cannot be captured for this family"]}
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
    fig, (ax,) = plotting.figure(size=(7, 5.5), three_d=True)
    status = "" if found["tokens"] else " (no outliers found)"
    plotting.wireframe(ax, h.numpy(), tokens, highlight=found["tokens"], zlabel="magnitude",
                       title=f"{ctx.title}, layer {layer + 1}, {what}{status}")
    ctx.save(fig, stem)
    paper = analysis.paper_rule_tokens(h)
    result = {
        "layer": layer + 1, "why": why, "rule": ctx.rule_text, "tokens": tokens,
        "outlier_tokens": found["tokens"], "outlier_channels": found["channels"],
        "outlier_entries": found["entries"], "outliers_found": bool(found["tokens"]),
        "max": found["max"], "median": found["median"], "threshold": found["threshold"],
        "paper_rule_tokens": paper,
        "outlier_layers": [i + 1 for i in scan[layers_key]],
    }
    result["summary"] = [
        f"{ctx.title} {what}, layer {layer + 1} ({why}): max {found['max']:.4g}, median {found['median']:.4g}",
        f"outlier tokens {found['tokens']} {[tokens[t] for t in found['tokens']]}, channels {found['channels']}"
        f"; paper's 1000x-mean rule: tokens {paper}",
        f"layers with outliers (1-based): {result['outlier_layers']}",
    ]
    return result


def activation_layer(ctx):
    return _activation_figure(ctx, "resid_post", "resid", "resid_layers", "layer output",
                              "existence_activation_outliers_layer")


def activation_down(ctx):
    return _activation_figure(ctx, "mlp.down_in", "down", "down_layers", "down_proj input",
                              "existence_activation_outliers_down")


def attention(ctx):
    scan = prompt_scan(ctx)
    if scan["attn_sums"] is None:
        return {"layer": None, "summary": [f"{ctx.title}: attention cannot be captured for this family"]}
    tokens, last = scan["tokens"], ctx.view.num_layers - 1
    chosen = ctx.layer_choice()
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif scan["resid_layers"]:
        layer = min(scan["resid_layers"][0] + 1, last)
        why = f"the layer after the activation outliers appear (layer {scan['resid_layers'][0] + 1})"
    else:
        excess = [s.mean(0) / outliers.uniform_causal_attention(s.shape[1]) for s in scan["attn_sums"]]
        layer = max(range(last + 1), key=lambda i: float(excess[i].max()))
        why = "no activation outliers: the layer whose busiest key most exceeds uniform attention"
    probs = _capture_one(ctx, "attn.pattern", layer)  # [heads, queries, keys]
    cumulative = outliers.cumulative_attention(probs)
    keys = analysis.excess_attention_keys(cumulative)
    fig, (ax,) = plotting.figure(size=(6.5, 5.5))
    status = "" if keys else " (no outlier keys)"
    plotting.attention_heatmap(ax, probs.mean(0).numpy(), tokens, highlight=keys,
                               title=f"{ctx.title}, layer {layer + 1}, head-averaged attention{status}")
    ctx.save(fig, "existence_attention_outliers")
    paper_keys = analysis.paper_attention_keys(cumulative)
    ratio = outliers.head_outlier_ratio(probs, keys).tolist() if keys else [0.0] * probs.shape[0]
    result = {
        "layer": layer + 1, "why": why, "rule": analysis.ATTENTION_RULE, "tokens": tokens,
        "outlier_keys": keys, "outliers_found": bool(keys), "cumulative": cumulative.tolist(),
        "uniform_baseline": outliers.uniform_causal_attention(len(tokens)).tolist(),
        "paper_rule_keys": paper_keys, "head_outlier_ratio": ratio,
        "first_token_share": outliers.first_token_share_all_queries(probs),
        "first_token_share_variant": outliers.FIRST_TOKEN_SHARE_ALL_QUERIES,
    }
    result["summary"] = [
        f"{ctx.title} attention, layer {layer + 1} ({why}): outlier keys {keys} {[tokens[k] for k in keys]}",
        "cumulative attention per key: " + ", ".join(f"{c:.2f}" for c in result["cumulative"]),
        f"paper's >= 0.1 x seqlen rule alone: keys {paper_keys}",
    ]
    differ = analysis.rule_disagreement(cumulative, keys, paper_keys)
    if differ:
        result["rules_differ"] = differ
        result["summary"].append(differ)
    return result


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
        writer, share = writer_unit(ctx, layer, token, channel)
        writer = {"column": writer, "token": token, "channel": channel, "share_of_down_proj_output": share,
                  "ratio": None}
        outlier_columns = list(dict.fromkeys(outlier_columns + [writer["column"]]))
    columns = list(dict.fromkeys(outlier_columns + stats["top_columns"]))[:5]
    ordinary = torch.argsort(ratios)[len(ratios) // 2: len(ratios) // 2 + 3].tolist()
    columns = sorted(set(columns + ordinary))
    top = stats["top_columns"][0]
    top_rows = torch.topk(W[:, top].abs(), min(3, W.shape[0])).indices.tolist()
    fig, (ax,) = plotting.figure(size=(7, 5.5), three_d=True)
    plotting.wireframe(ax, W[:, columns].T.numpy(), [f"col {c}" for c in columns],
                       highlight=[i for i, c in enumerate(columns) if c in set(outlier_columns + [top])],
                       xlabel="row (residual channel)", zlabel="|W|",
                       title=f"{ctx.title}, layer {layer + 1}, down_proj columns")
    ctx.save(fig, "existence_weight_outliers")
    result = {
        "layer": layer + 1, "why": why, "columns": columns, "column_ratios": [ratios[c].item() for c in columns],
        "top_column": top, "top_columns": stats["top_columns"], "top_ratios": stats["top_ratios"],
        "median_ratio": stats["median_ratio"], "top_rows": top_rows,
        "outlier_columns": outlier_columns, "writer": writer,
        "down_in_outlier_channels": list(down_in["channels"]) if down_in else [],
        "layer_output_outlier_channels": activation_channels,
    }
    if writer:
        writer["ratio"] = ratios[writer["column"]].item()
        writer["ratio_rank"] = int((ratios > ratios[writer["column"]]).sum()) + 1
    result["summary"] = [
        f"{ctx.title} down_proj layer {layer + 1} ({why}): top column {top} ratio {stats['top_ratios'][0]:.4g} "
        f"(median {stats['median_ratio']:.4g}), largest in rows {top_rows}",
        f"down_proj-input outlier channels {result['down_in_outlier_channels']}; layer-output outlier channels "
        f"{activation_channels}",
    ]
    if writer:
        result["summary"].append(
            f"column {writer['column']} writes most of channel {writer['channel']} at token {writer['token']} "
            f"(share {writer['share_of_down_proj_output']:.2f}); its ratio {writer['ratio']:.4g} ranks "
            f"{writer['ratio_rank']} of {len(ratios)}")
    return result
