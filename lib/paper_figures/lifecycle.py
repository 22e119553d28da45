"""Lifecycle figures on the prompt: where outliers are made (emergence), used by attention (spread) and removed
(disappearance). Each names the layer it chose and the numbers behind the choice.
"""
from dataclasses import dataclass

import torch

from lib import outliers, plotting
from lib.errors import UserError
from lib.paper_figures.figure import PROMPT_FLAGS, Figure, View, cell, drawn
from lib.paper_figures.scan import main_outlier, persistent_channel_values, prompt_scan, strongest_layer
from lib.text_numbers import sig
from monkey_patch import Capture


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
    if ctx.view.family.mlp_out_norm is None:
        return down_out
    return _capture(ctx, ["mlp_out"], layer)["mlp_out"][token, channel].item()


def _need_mlp(ctx):
    if "mlp.down_in" not in ctx.view.supported_points():
        raise UserError(f"{ctx.title}: this family's MLP internals cannot be captured, so the lifecycle cannot be traced")


@dataclass
class TracedEntry:
    """The outlier entry (token, channel) a lifecycle figure follows, the layer it shows and the MLP unit there."""
    layer: int
    why: str
    outliers_found: bool
    token: int
    token_text: str
    channel: int
    neuron: int


@dataclass
class Emergence(TracedEntry):
    value_before: float
    value_after: float
    channel_value_per_layer: list
    neuron_share_of_mlp_write: float
    chain: dict
    evidence: dict
    outlier_layers: list
    summary: list
    panels: list = drawn()  # (values, marked index, title, x label, what the mark is) of each signed-line panel


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
             "resid_post": "layer out"}  # the chain's keys in the JSON
    titles = {"resid_pre": "layer input", "ln2": "MLP norm output", "mlp.gate_out": "gate projection",
              "mlp.up_out": "up projection", "mlp.act_out": "activation of the gate", "mlp.down_in": "down_proj input",
              "mlp.down_out": "down_proj output", "resid_post": "layer output"}
    chain, panels = {}, []
    for stage in [s for s in stages if s in got]:
        row = got[stage][token]
        on_channels = row.shape[0] == W_down.shape[0]
        mark = channel if on_channels else neuron
        chain[names[stage]] = {"index": mark, "value": row[mark].item(), "max_abs": row.abs().max().item()}
        panels.append((row.numpy(), mark, titles[stage], "channel" if on_channels else "MLP unit",
                       f"channel {channel} (the outlier's)" if on_channels else f"unit {neuron} (writes most of it)"))
    for label, role, what in [("row", "gate", "its gate weights"), ("row", "up", "its up weights"),
                              ("column", "down", "what it writes")]:
        if role not in ctx.view.weight_roles():
            continue
        W = ctx.view.weight(layer, role).detach().float().cpu()
        vector = W[:, neuron] if role == "down" else W[neuron]
        top = int(vector.abs().argmax())
        chain[f"W_{role}"] = {"index": top, "value": vector[top].item()}
        largest = f"largest |w|, channel {top}" + (" (the outlier's)" if top == channel else "")
        panels.append((vector.clone().numpy(), top, f"W_{role} {label} {neuron}: {what}", "channel",  # not W's view
                       largest))
    before = values[layer - 1].item() if layer > 0 else 0.0
    return Emergence(
        layer=layer, why=why, outliers_found=detected, token=token, token_text=scan["tokens"][token],
        channel=channel, neuron=neuron, value_before=before, value_after=values[layer].item(),
        channel_value_per_layer=values.tolist(),
        neuron_share_of_mlp_write=(contribution[neuron] / contribution.sum()).item()
        if contribution.sum() != 0 else 0.0,
        chain=chain,
        evidence={key: scan["resid"][layer][key] for key in ("max", "median", "threshold", "entries")},
        outlier_layers=list(scan["resid_layers"]),
        summary=[
            f"{ctx.title} emergence at layer {layer} ({why}): token {token} {scan['tokens'][token]!r} channel "
            f"{channel} goes {sig(before)} -> {sig(values[layer].item())}",
            f"MLP unit {neuron} writes most of it: down_in {sig(chain['down in']['value'])}, "
            f"W_down[{channel}, {neuron}] = {sig(W_down[channel, neuron].item())}",
        ],
        panels=panels)


def draw_emergence(axes, data):
    for ax, (values, mark, title, xlabel, what) in zip(axes, data.panels):
        plotting.signed_line(ax, values, mark=mark, title=title, xlabel=xlabel, mark_label=what,
                             label="weight" if title.startswith("W_") else f"token {data.token}")
    for ax in axes[len(data.panels):]:
        ax.axis("off")


@dataclass
class Spread:
    layer: int
    why: str
    head: int
    head_why: str
    kv_head: int
    tokens: list
    outlier_tokens: list
    head_outlier_ratio: list
    per_token: dict
    attention_on_outlier_tokens: list
    summary: list
    logits: object = drawn()  # the head's [queries, keys] logits, masked entries at the smallest visible one
    probs: object = drawn()   # the head's [queries, keys] probabilities


def spread(ctx):
    scan = prompt_scan(ctx)
    n_layers, tokens = ctx.view.num_layers, scan["tokens"]
    chosen = ctx.layer_choice()
    after = [i + 1 for i in scan["resid_layers"] if i + 1 < n_layers]
    if chosen is not None:
        layer, why = chosen, "--layer"
    elif after:
        layer = after[len(after) // 2]
        why = f"middle of the layers that read the outliers (inputs flagged at layers {after})"
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
    logits = None
    if "attn.scores" in got:
        scores = got["attn.scores"][head].clone()
        visible = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, float("nan")))
        logits = torch.nan_to_num(visible, nan=float(visible[~visible.isnan()].min())).numpy()
    probs = got["attn.pattern"][head]
    v_norm = norms[f"v head {kv} (L2)"]
    return Spread(
        layer=layer, why=why, head=head, head_why=head_why, kv_head=kv, tokens=tokens,
        outlier_tokens=sink_tokens, head_outlier_ratio=ratio.tolist(),
        per_token={name: vector.tolist() for name, vector in norms.items()},
        attention_on_outlier_tokens=probs[:, sink_tokens].sum(-1).tolist() if sink_tokens else [],
        summary=[
            f"{ctx.title} spread at layer {layer} ({why}), head {head} ({head_why}): outlier tokens {sink_tokens}",
            "head outlier ratios: " + ", ".join(f"{r:.2f}" for r in ratio.tolist()),
            "v norm per token: " + ", ".join(sig(v, 3) for v in v_norm.tolist()),
        ],
        logits=logits, probs=probs.numpy())


def draw_spread(axes, data):
    head, kv = data.head, data.kv_head
    titles = ["layer input: largest |h|", "attention norm output: L2 norm", f"query of head {head}: L2 norm",
              f"key (KV head {kv}, read by head {head}): L2 norm", f"value (KV head {kv}): L2 norm"]
    for ax, title, vector in zip(axes, titles, data.per_token.values()):
        plotting.token_bars(ax, data.tokens, vector, highlight=data.outlier_tokens, title=title)
    if data.logits is not None:
        plotting.attention_heatmap(axes[5], data.logits, data.tokens, highlight=data.outlier_tokens,
                                   title=f"head {head} attention logits", key_label="outlier token",
                                   colorbar="logit (before softmax)", vmin=None)
    else:
        axes[5].axis("off")
    plotting.attention_heatmap(axes[6], data.probs, data.tokens, highlight=data.outlier_tokens,
                               title=f"head {head} attention probabilities", key_label="outlier token",
                               colorbar="attention probability")
    axes[7].axis("off")
    plotting.legend_entries(axes[7], [("bar", plotting.OUTLIER, "outlier token (flagged in the layer's input)"),
                                      ("bar", plotting.NORMAL, "other token"),
                                      ("frame", plotting.OUTLIER, "the outlier token's column")],
                            loc="center", fontsize=9)


def _tokens_text(tokens, positions) -> str:
    return ", ".join(f"{tokens[t]!r} ({t})" for t in positions) or "none"


@dataclass
class Disappearance(TracedEntry):
    drop: float
    drop_per_layer: list
    channel_value_per_layer: list
    values_at_layer: dict
    outlier_layers: list
    summary: list
    down_out: object = drawn()  # down_proj output at the token, [channels]
    down_in: object = drawn()   # down_proj input at the token, [MLP units]
    w_column: object = drawn()  # W_down[:, neuron]


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
    mlp_adds = _mlp_write(ctx, layer, token, channel, got["mlp.down_out"][token, channel].item())
    change = (got["resid_post"][token, channel] - got["resid_pre"][token, channel]).item()
    parts = {"layer in": got["resid_pre"][token, channel].item(), "attention adds": change - mlp_adds,
             "MLP adds": mlp_adds, "layer out": got["resid_post"][token, channel].item(),
             "down_proj out": got["mlp.down_out"][token, channel].item(), "change": change}
    return Disappearance(
        layer=layer, why=why, outliers_found=detected, token=token, token_text=scan["tokens"][token],
        channel=channel, neuron=neuron, drop=drop[layer].item(), drop_per_layer=drop.tolist(),
        channel_value_per_layer=values.tolist(), values_at_layer=parts,
        outlier_layers=list(scan["resid_layers"]),
        summary=[
            f"{ctx.title} disappearance at layer {layer} ({why}): |h[{token}, {channel}]| "
            f"{sig(before[layer].item())} -> {sig(magnitude[layer].item())}",
            f"the layer changes it by {sig(change)}: attention adds {sig(parts['attention adds'])}, the MLP adds "
            f"{sig(mlp_adds)}; in down_proj, unit {neuron} pushes hardest against it ({sig(contribution[neuron].item())})",
        ],
        down_out=got["mlp.down_out"][token].numpy(), down_in=got["mlp.down_in"][token].numpy(),
        w_column=W_down[:, neuron].clone().numpy())  # a copy: a view would keep all of W_down


def draw_disappearance(axes, data):
    token, channel, neuron, layer = data.token, data.channel, data.neuron, data.layer
    magnitude = [abs(v) for v in data.channel_value_per_layer]
    plotting.layer_curves(axes[0], list(range(len(magnitude))), {f"token {token}, channel {channel}": magnitude},
                          title="the outlier's |h| after each layer", ylabel="|h|", marked_layers=[layer],
                          band_label=f"layer {layer}: {data.why}", legend_loc="below", legend_ncol=1)
    at_token = f"token {token}"
    plotting.signed_line(axes[1], data.down_out, mark=channel, title=f"down_proj output at layer {layer}",
                         xlabel="channel", mark_label=f"channel {channel} (the outlier's)", label=at_token)
    plotting.signed_line(axes[2], data.down_in, mark=neuron, title=f"down_proj input at layer {layer}",
                         xlabel="MLP unit", mark_label=f"unit {neuron} (pushes hardest against it)", label=at_token)
    plotting.signed_line(axes[3], data.w_column, mark=channel, title=f"W_down column {neuron}: what unit {neuron} "
                         "writes", xlabel="channel", mark_label=f"channel {channel} (the outlier's)", label="weight")
    shown = ["layer in", "attention adds", "MLP adds", "layer out"]
    axes[4].bar(range(4), [data.values_at_layer[k] for k in shown],
                color=[plotting.NORMAL, "#9467bd", plotting.OUTLIER, plotting.NORMAL])
    axes[4].axhline(0, color="black", linewidth=0.6)
    axes[4].set_xticks(range(4))
    axes[4].set_xticklabels(["layer input", "attention adds", "MLP adds", "layer output"], rotation=20, fontsize=7)
    axes[4].set_title(f"token {token}, channel {channel} at layer {layer}: h before, what is added, after", fontsize=9)
    plotting.bold_ticks(axes[4])
    axes[5].axis("off")


def _layer_if_found(key):
    return lambda result: {key: result.get("layer") if result.get("outliers_found") else None}


FIGURES = [
    Figure("lifecycle_emergence", "how the first activation outlier is written by the MLP", PROMPT_FLAGS, None,
           emergence, (View(draw_emergence, ncols=4, nrows=3, size=(3.6, 2.6),
                            heading=lambda d: f"emergence, how the MLP of layer {d.layer} writes the activation outlier "
                                              f"of token {d.token} ({d.token_text!r}) in channel {d.channel}: each step "
                                              f"of the MLP at that token, and the weights of unit {d.neuron}"),),
           summary=_layer_if_found("emergence_layer"),
           columns=(("emergence layer", lambda row: cell(row["emergence_layer"])),), dominant=True),
    Figure("lifecycle_spread", "how attention reads the outlier tokens (q, k, v norms, logits, probabilities)",
           PROMPT_FLAGS + ("head",), None, spread,
           (View(draw_spread, ncols=4, nrows=2, size=(3.8, 3.4),
                 heading=lambda d: f"spread, how head {d.head} of layer {d.layer} attends to the outlier token(s) "
                                   f"{_tokens_text(d.tokens, d.outlier_tokens)}: each token's norms on the way to "
                                   "attention, the head's logits and probabilities"),), dominant=True),
    Figure("lifecycle_disappearance", "how the last layers cancel the outlier", PROMPT_FLAGS, None, disappearance,
           (View(draw_disappearance, ncols=3, nrows=2, size=(4.2, 3.2),
                 heading=lambda d: f"disappearance, how layer {d.layer} removes the activation outlier of token "
                                   f"{d.token} ({d.token_text!r}) in channel {d.channel}"),),
           summary=_layer_if_found("disappearance_layer"),
           columns=(("disappearance layer", lambda row: cell(row["disappearance_layer"])),), dominant=True),
]
