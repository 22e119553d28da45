"""Lifecycle figures on the prompt: where outliers are made (emergence), used by attention (spread) and removed
(disappearance). Each names the layer it chose and the numbers behind the choice.
"""
import torch

from lib import outliers, plotting
from lib.errors import UserError
from lib.paper_figures.scan import main_outlier, persistent_channel_values, prompt_scan, strongest_layer
from monkey_patch import Capture
from monkey_patch.adapters import get_submodule


def _capture(ctx, points, layer):
    ids, _ = ctx.prompt()
    points = [p for p in points if p in ctx.view.supported_points()]
    with Capture(ctx.model, points, layers=[layer]) as cap:
        ctx.forward(ids)
    return {p: cap[p, layer][0] for p in points}


def _outlier(ctx, scan):
    """(token, channel, detected) of the prompt's main layer-output outlier; the strongest entry if none."""
    layer, token, channel = main_outlier(scan)
    if layer is not None:
        return token, channel, True
    h = _capture(ctx, ["resid_post"], strongest_layer(scan["resid"]))["resid_post"].abs()
    flat = int(h.argmax())
    return flat // h.shape[1], flat % h.shape[1], False


def _mlp_write(ctx, layer, token, channel, down_out):
    """What the MLP adds to the residual at (token, channel): down_proj's output, or for sandwich-norm
    families (Gemma 2/3) that output after the post-feedforward norm."""
    post = get_submodule(ctx.view.layers[layer], ctx.view.family.mlp_out_norm)
    if post is None:
        return down_out
    seen = {}
    handle = post.register_forward_hook(lambda m, i, o: seen.setdefault("out", o.detach()))
    try:
        ctx.forward(ctx.prompt()[0])
    finally:
        handle.remove()
    return seen["out"][0, token, channel].float().item()


def _need_mlp(ctx):
    if "mlp.down_in" not in ctx.view.supported_points():
        raise UserError(f"{ctx.title}: this family's MLP internals cannot be captured, so the lifecycle cannot be traced")


def emergence(ctx):
    _need_mlp(ctx)
    scan = prompt_scan(ctx)
    token, channel, detected = _outlier(ctx, scan)
    values = persistent_channel_values(ctx, channel)[:, token]  # signed h[token, channel] after each layer
    chosen = ctx.layer_choice()
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif detected:
        layer = scan["resid_layers"][0]
        why = "first layer whose output has an outlier under the rule"
    else:
        jumps = values.abs().diff(prepend=torch.zeros(1))
        layer = int(jumps.argmax())
        why = "no outliers: the layer with the largest growth of the strongest entry"
    stages = ["resid_pre", "ln2", "mlp.gate_out", "mlp.up_out", "mlp.act_out", "mlp.down_in", "mlp.down_out",
              "resid_post"]
    got = _capture(ctx, stages, layer)
    W_down = ctx.view.weight(layer, "down").detach().float().cpu()
    contribution = got["mlp.down_in"][token] * W_down[channel]  # what each MLP unit writes into the channel
    neuron = int(contribution.abs().argmax())
    names = {"resid_pre": "norm in", "ln2": "norm out", "mlp.gate_out": "gate out", "mlp.up_out": "up out",
             "mlp.act_out": "act out", "mlp.down_in": "down in", "mlp.down_out": "down out",
             "resid_post": "layer out"}
    fig, axes = plotting.figure(ncols=4, nrows=3, size=(3.6, 2.6))
    chain = {}
    for ax, stage in zip(axes, [s for s in stages if s in got]):
        row = got[stage][token]
        mark = channel if row.shape[0] == W_down.shape[0] else neuron
        chain[names[stage]] = {"index": mark, "value": row[mark].item(), "max_abs": row.abs().max().item()}
        plotting.signed_line(ax, row.numpy(), mark=mark, title=names[stage],
                             xlabel="channel" if mark == channel else "MLP unit")
    weights = [("row", "gate"), ("row", "up"), ("column", "down")]
    for ax, (label, role) in zip(axes[len(chain):], weights):
        if role not in ctx.view.weight_roles():
            continue
        W = ctx.view.weight(layer, role).detach().float().cpu()
        vector = W[:, neuron] if role == "down" else W[neuron]
        top = int(vector.abs().argmax())
        chain[f"W_{role}"] = {"index": top, "value": vector[top].item()}
        plotting.signed_line(ax, vector.numpy(), mark=top, title=f"W_{role}, {label} {neuron}", xlabel="channel")
    for ax in axes[len(chain):]:
        ax.axis("off")
    fig.suptitle(f"{ctx.title}, layer {layer + 1}: emergence of token {token} ({scan['tokens'][token]!r}) "
                 f"channel {channel}", fontweight="bold")
    ctx.save(fig, "lifecycle_emergence")
    before = values[layer - 1].item() if layer > 0 else 0.0
    result = {
        "layer": layer + 1, "why": why, "outliers_found": detected, "token": token,
        "token_text": scan["tokens"][token], "channel": channel, "neuron": neuron,
        "value_before": before, "value_after": values[layer].item(),
        "channel_value_per_layer": values.tolist(),
        "neuron_share_of_mlp_write": (contribution[neuron] / contribution.sum()).item()
        if contribution.sum() != 0 else 0.0,
        "chain": chain,
        "evidence": {key: scan["resid"][layer][key] for key in ("max", "median", "threshold", "entries")},
        "outlier_layers": [i + 1 for i in scan["resid_layers"]],
    }
    result["summary"] = [
        f"{ctx.title} emergence at layer {layer + 1} ({why}): token {token} {scan['tokens'][token]!r} channel "
        f"{channel} goes {before:.4g} -> {values[layer].item():.4g}",
        f"MLP unit {neuron} writes most of it: down_in {chain['down in']['value']:.4g}, "
        f"W_down[{channel}, {neuron}] = {W_down[channel, neuron].item():.4g}",
    ]
    return result


def spread(ctx):
    scan = prompt_scan(ctx)
    n_layers, tokens = ctx.view.num_layers, scan["tokens"]
    chosen = ctx.layer_choice()
    after = [i + 1 for i in scan["resid_layers"] if i + 1 < n_layers]
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif after:
        layer = after[len(after) // 2]
        why = f"middle of the layers that read the outliers (inputs flagged at layers {[i + 1 for i in after]})"
    else:
        layer = n_layers // 2
        why = "no outliers: the middle layer"
    sink_tokens = scan["resid"][layer - 1]["tokens"] if layer > 0 else []
    if "attn.pattern" not in ctx.view.supported_points() or scan["attn_sums"] is None:
        raise UserError(f"{ctx.title}: attention cannot be captured for this family")
    sums = scan["attn_sums"][layer]
    ratio = outliers.head_outlier_ratio_from_sums(sums, sink_tokens) if sink_tokens else torch.zeros(sums.shape[0])
    head = ctx.head_choice()
    head_why = "--head"
    if head is None:
        head = int(ratio.argmax())
        head_why = "the head putting the largest share of its attention on the outlier tokens"
    got = _capture(ctx, ["resid_pre", "ln1", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern"], layer)
    kv = head * got["attn.k"].shape[1] // ctx.view.num_heads
    norms = {
        "norm in (max |h|)": got["resid_pre"].abs().max(-1).values,
        "norm out (L2)": got["ln1"].norm(dim=-1),
        f"q head {head} (L2)": got["attn.q"][:, head].norm(dim=-1),
        f"k head {kv} (L2)": got["attn.k"][:, kv].norm(dim=-1),
        f"v head {kv} (L2)": got["attn.v"][:, kv].norm(dim=-1),
    }
    fig, axes = plotting.figure(ncols=4, nrows=2, size=(3.8, 3.4))
    for ax, (name, vector) in zip(axes, norms.items()):
        plotting.token_bars(ax, tokens, vector.numpy(), highlight=sink_tokens, title=name)
    maps = {}
    if "attn.scores" in got:
        logits = got["attn.scores"][head].clone()
        maps["logits"] = logits
        visible = torch.where(torch.isfinite(logits), logits, torch.full_like(logits, float("nan")))
        plotting.attention_heatmap(axes[5], torch.nan_to_num(visible, nan=float(visible[~visible.isnan()].min())).numpy(),
                                   tokens, highlight=sink_tokens, title=f"head {head} logits")
    else:
        axes[5].axis("off")
    probs = got["attn.pattern"][head]
    plotting.attention_heatmap(axes[6], probs.numpy(), tokens, highlight=sink_tokens, title=f"head {head} probabilities")
    axes[7].axis("off")
    fig.suptitle(f"{ctx.title}, layer {layer + 1}, head {head}: outlier tokens {sink_tokens}", fontweight="bold")
    ctx.save(fig, "lifecycle_spread")
    result = {
        "layer": layer + 1, "why": why, "head": head, "head_why": head_why, "kv_head": kv, "tokens": tokens,
        "outlier_tokens": sink_tokens, "head_outlier_ratio": ratio.tolist(),
        "per_token": {name: vector.tolist() for name, vector in norms.items()},
        "attention_on_outlier_tokens": probs[:, sink_tokens].sum(-1).tolist() if sink_tokens else [],
    }
    v_norm = norms[f"v head {kv} (L2)"]
    result["summary"] = [
        f"{ctx.title} spread at layer {layer + 1} ({why}), head {head} ({head_why}): outlier tokens {sink_tokens}",
        "head outlier ratios: " + ", ".join(f"{r:.2f}" for r in ratio.tolist()),
        "v norm per token: " + ", ".join(f"{v:.3g}" for v in v_norm.tolist()),
    ]
    return result


def disappearance(ctx):
    _need_mlp(ctx)
    scan = prompt_scan(ctx)
    token, channel, detected = _outlier(ctx, scan)
    values = persistent_channel_values(ctx, channel)[:, token]
    magnitude = values.abs()
    before = torch.cat([magnitude[:1] * 0, magnitude[:-1]])
    drop = before - magnitude  # how much each layer shrinks the outlier
    chosen = ctx.layer_choice()
    start = scan["resid_layers"][0] if detected else 0
    if chosen is not None:
        layer, why = chosen, "--layer"
    else:
        layer = start + int(drop[start:].argmax())
        why = "the layer that shrinks the outlier entry most" + ("" if detected else " (no outliers found)")
    got = _capture(ctx, ["resid_pre", "mlp.down_in", "mlp.down_out", "attn_out", "resid_post"], layer)
    W_down = ctx.view.weight(layer, "down").detach().float().cpu()
    contribution = got["mlp.down_in"][token] * W_down[channel]
    sign = 1.0 if values[layer - 1 if layer > 0 else 0] >= 0 else -1.0
    neuron = int((-sign * contribution).argmax())  # the unit that pushes hardest against the outlier
    fig, axes = plotting.figure(ncols=3, nrows=2, size=(4.2, 3.2))
    layers = list(range(1, len(values) + 1))
    plotting.layer_curves(axes[0], layers, {f"|h[{token}, {channel}]|": magnitude.tolist()},
                          title="outlier across layers", marked_layers=[layer + 1])
    plotting.signed_line(axes[1], got["mlp.down_out"][token].numpy(), mark=channel, title="down_proj output",
                         xlabel="channel")
    plotting.signed_line(axes[2], got["mlp.down_in"][token].numpy(), mark=neuron, title="down_proj input",
                         xlabel="MLP unit")
    plotting.signed_line(axes[3], W_down[:, neuron].numpy(), mark=channel, title=f"W_down column {neuron}",
                         xlabel="channel")
    mlp_adds = _mlp_write(ctx, layer, token, channel, got["mlp.down_out"][token, channel].item())
    change = (got["resid_post"][token, channel] - got["resid_pre"][token, channel]).item()
    parts = {"layer in": got["resid_pre"][token, channel].item(), "attention adds": change - mlp_adds,
             "MLP adds": mlp_adds, "layer out": got["resid_post"][token, channel].item(),
             "down_proj out": got["mlp.down_out"][token, channel].item(), "change": change}
    shown = ["layer in", "attention adds", "MLP adds", "layer out"]
    axes[4].bar(range(4), [parts[k] for k in shown], color=[plotting.NORMAL, "#9467bd", plotting.OUTLIER, plotting.NORMAL])
    axes[4].axhline(0, color="black", linewidth=0.6)
    axes[4].set_xticks(range(4))
    axes[4].set_xticklabels(shown, rotation=20, fontsize=7)
    axes[4].set_title(f"h[{token}, {channel}] at layer {layer + 1}", fontsize=9)
    plotting.bold_ticks(axes[4])
    axes[5].axis("off")
    fig.suptitle(f"{ctx.title}, layer {layer + 1}: disappearance of token {token} channel {channel}", fontweight="bold")
    ctx.save(fig, "lifecycle_disappearance")
    result = {
        "layer": layer + 1, "why": why, "outliers_found": detected, "token": token,
        "token_text": scan["tokens"][token], "channel": channel, "neuron": neuron,
        "drop": drop[layer].item(), "drop_per_layer": drop.tolist(), "channel_value_per_layer": values.tolist(),
        "values_at_layer": parts, "outlier_layers": [i + 1 for i in scan["resid_layers"]],
    }
    result["summary"] = [
        f"{ctx.title} disappearance at layer {layer + 1} ({why}): |h[{token}, {channel}]| "
        f"{before[layer].item():.4g} -> {magnitude[layer].item():.4g}",
        f"the layer changes it by {change:.4g}: attention adds {parts['attention adds']:.4g}, the MLP adds "
        f"{mlp_adds:.4g}; in down_proj, unit {neuron} pushes hardest against it ({contribution[neuron].item():.4g})",
    ]
    return result
