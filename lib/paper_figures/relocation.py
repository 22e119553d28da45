"""Relocation: block the outlier tokens as attention keys and see where the model puts its next outlier and sink.

The paper calls the outliers systematic: the model assigns them by a rule (the first token, the first strong
delimiter), not by content. Masking the outlier token as a key tests that causally: a model with such a rule makes
the next candidate its outlier and sink. Which layers are masked matters: from the first sink layer on, the
successor has already seen the original in the early layers and cannot take over; in every layer it can.
On the prompt: each token's max |h| and the attention it receives from later queries, per layer, before and with
the prompt's outlier tokens masked in every layer. On calibration windows: perplexity and where the outlier and
the sink went in each condition of lib.relocation (every layer, from the first sink layer on, only before it),
each against a control that masks as many random tokens.
"""
from dataclasses import dataclass

import torch

from lib import interventions, plotting, relocation
from lib.paper_figures.figure import Figure, View, cell, drawn
from lib.perplexity import gpt2_logits, hf_logits
from lib.text_numbers import sig


def _model_parts(ctx):
    """(network, decoder blocks, logits_fn): a gpt-2/ checkpoint's own GPT (it gives every logit given targets), or
    the Hugging Face model."""
    net = getattr(ctx.model, "gpt", ctx.model)
    gpt2 = net is not ctx.model
    return net, interventions.decoder_blocks(net), gpt2_logits(net) if gpt2 else hf_logits(net)


def _where(summary: dict, tokens: list[str] | None = None) -> dict:
    """The prompt's massive activation and sink from a one-window summary, with token text."""
    massive = summary["massive"]
    out = {"massive_layer": massive["largest_layer"], "massive_token": massive["tokens"][0],
           "massive_channel": massive["channel"], "massive_value": massive["value_median"]}
    if "sink" in summary:
        out.update(sink_first_layer=summary["sink"]["first_layer"], sink_token=summary["sink"]["tokens"][0],
                   sink_share=summary["sink"]["share_median"])
    if tokens:
        out["massive_token_text"] = tokens[out["massive_token"]]
        if "sink_token" in out:
            out["sink_token_text"] = tokens[out["sink_token"]]
    return out


def _trim(entry: dict) -> dict:
    """A condition's entry without the per-layer rows (kept for the baseline only)."""
    where = {k: v for k, v in entry["where"].items() if k != "per_layer"}
    return {**{k: v for k, v in entry.items() if k != "where"}, "where": where}


@dataclass
class Relocation:
    outlier_tokens: list
    outlier_token_text: list
    masked_layers: list
    prompt_before: dict
    prompt_after: dict
    windows: dict
    summary: list
    tokens: list = drawn()
    maps: dict = drawn()


def compute(ctx):
    net, blocks, logits_fn = _model_parts(ctx)
    rule = interventions.Rule(factor=ctx.args.outlier_factor, min_abs=ctx.args.outlier_min_abs)
    ids, tokens = ctx.prompt()
    scan = interventions.scan_outliers(net, ctx.forward, ids.to(ctx.input_device), rule)
    keys = relocation.outlier_tokens(scan)[0]
    if not keys:  # no outlier by the rule: the prompt's largest entry stands in, and the JSON says so
        with relocation.track(net, attention=False) as where:
            ctx.forward(ids)
        keys = [where.summary(rule)["massive"]["tokens"][0]]
    layers = list(range(len(blocks)))
    maps, summaries = {}, {}
    for name, masked in (("before", False), ("after", True)):
        with torch.no_grad(), relocation.track(net) as where:
            if masked:
                with interventions.mask_keys(net, keys, layers):
                    ctx.forward(ids)
            else:
                ctx.forward(ids)
        windows = where.windows()
        maps[name] = {"max_abs": relocation.tokens_max_abs(windows), "received": relocation.received(windows)}
        summaries[name] = _where(where.summary(rule), tokens)
    calib, info = ctx.calibration()
    measured = relocation.measure(net, blocks, logits_fn, ctx.forward, calib.to(ctx.input_device), rule,
                                  seed=ctx.args.seed, prefix=len(ctx.input.prefix))
    measured["conditions"] = {c: {k: _trim(e) for k, e in kinds.items()} for c, kinds in measured["conditions"].items()}
    measured["data"] = info
    data = Relocation(outlier_tokens=keys, outlier_token_text=[tokens[k] for k in keys],
                      masked_layers=list(layers), prompt_before=summaries["before"],
                      prompt_after=summaries["after"], windows=measured, summary=[], tokens=tokens, maps=maps)
    data.summary = _summary(data)
    return data


def _token(text: str, position: int) -> str:
    return f"{text!r} ({position})"


def _summary(d: Relocation) -> list[str]:
    before, after = d.prompt_before, d.prompt_after
    lines = [f"prompt: outlier token(s) {', '.join(_token(t, k) for t, k in zip(d.outlier_token_text, d.outlier_tokens))}"
             f" masked as keys for every other query in every layer",
             f"massive activation: {_token(before['massive_token_text'], before['massive_token'])} at layer "
             f"{before['massive_layer']}, channel {before['massive_channel']}, |h| {sig(before['massive_value'])} -> "
             f"{_token(after['massive_token_text'], after['massive_token'])} at layer {after['massive_layer']}, "
             f"channel {after['massive_channel']}, |h| {sig(after['massive_value'])}"]
    if "sink_token" in before and "sink_token" in after:
        def sink(w):
            where = f"from layer {w['sink_first_layer']}" if w["sink_first_layer"] is not None else "(no layer's rule flags it)"
            return f"{_token(w['sink_token_text'], w['sink_token'])} {where}, {w['sink_share']:.2f} of the attention " \
                   "of queries 1..T-1"
        lines.append(f"sink: {sink(before)} -> {sink(after)}")
    w = d.windows
    base = w["baseline"]["ppl"]
    lines.append(f"{w['windows']} windows x {w['seqlen']} tokens, first sink layer {w['first_sink_layer']}, "
                 f"perplexity {sig(base)} unmasked:")
    for condition, kinds in w["conditions"].items():
        parts = []
        for kind in ("outliers", "control"):
            e = kinds[kind]
            moved = e["moved"]
            parts.append(f"{kind} {sig(e['ppl'])} ({e['nll_change']:+.3f} ± {e['nll_change_stderr']:.3f} nats; outlier "
                         f"moved in {cell(moved['massive_moved'])}, sink in {cell(moved['sink_moved'])} of windows)")
        lines.append(f"  {relocation.CONDITION_TEXT[condition]} (layers {_span(kinds['outliers']['masked_layers'])}): "
                     + "; ".join(parts))
    if w.get("note"):
        lines.append(w["note"])
    return lines


def _span(layers) -> str:
    return "none" if not layers else f"{layers[0]}-{layers[-1]}"


def draw(axes, d: Relocation):
    labels = [plotting.short_label(t) for t in d.tokens]
    hidden = _hidden_text(d)
    for column, name in enumerate(("before", "after")):  # axes: the top row, then the bottom one
        title = "as it is" if name == "before" else f"{hidden} hidden as keys in every layer"
        plotting.layer_token_map(axes[column], torch.log10(d.maps[name]["max_abs"].clamp_min(1e-3)), labels,
                                 highlight=d.outlier_tokens, title=f"{title}: each token's largest |h|",
                                 colorbar="log10 of the largest |h|")
        plotting.layer_token_map(axes[2 + column], d.maps[name]["received"], labels, highlight=d.outlier_tokens,
                                 title=f"{title}: attention each token receives", vmin=0.0, vmax=1.0,
                                 colorbar="share of the later tokens' attention")
    plotting.legend_entries(axes[0].figure, [("frame", plotting.OUTLIER, f"the outlier token(s) {hidden}: hidden "
                                              "as attention keys (right) or not (left)")],
                            loc="lower center", bbox_to_anchor=(0.5, -0.03), fontsize=9)


def _hidden_text(d: Relocation) -> str:
    return ", ".join(f"{t!r} ({k})" for t, k in zip(d.outlier_token_text, d.outlier_tokens))


def _summary_row(result: dict) -> dict:
    after = result.get("prompt_after", {})
    every = result.get("windows", {}).get("conditions", {}).get("every_layer", {}).get("outliers", {})
    return {"relocated_to": after.get("massive_token"), "relocation_nll_change": every.get("nll_change")}


FIGURES = [
    Figure("lifecycle_relocation", "where the outlier and the sink go when the outlier token is masked as a key",
           flags=("prompt", "calibration", "rule"), calibration="activations", compute=compute,
           views=(View(draw, ncols=2, nrows=2, size=(6.0, 4.0), input="prompt",
                       heading=lambda d: f"relocation, where the massive activation (top: each token's largest |h| per "
                                         f"layer) and the attention sink (bottom: the attention each token receives "
                                         f"from the tokens after the first, head-averaged) sit, with the outlier "
                                         f"token(s) {_hidden_text(d)} hidden as attention keys in every layer (right) "
                                         "or not (left)"),),
           summary=_summary_row,
           columns=(("masked outlier moves to token", lambda row: cell(row.get("relocated_to"))),
                    ("NLL change, masked in every layer", lambda row: cell(row.get("relocation_nll_change")))), dominant=True),
]
