"""Where the massive activation and the attention sink sit in a forward, and where an intervention moves them.

    with track(model) as where:          # around any forwards, an intervention's included (captures compose)
        model(ids)
    where.summary()                      # the massive activation and the sinks, per layer and overall

Per forward and layer (layers, tokens and channels 0-based):
- the massive activation: the largest |h| of the layer output (resid_post), its token and channel, and its ratio
  to the layer's median |h|; a layer holds one when the ratio passes the activation rule's factor and |h| its
  floor (lib.interventions.Rule, the figures' rule);
- the sink: a layer has one where the attention rule (lib.analysis.ATTENTION_RULE, the rule the figures and
  mask_attn_sink use, on the head-averaged cumulative attention) flags a key; the sink is the flagged key holding
  the largest share of the attention of queries 1..T-1 (head-averaged; what the queries after it pay it,
  lib.reducers.attention_received, summed and divided by T - 1), and that share.
The massive activation is the largest |h| among the layers whose largest entry the rule flags in at least half of
the windows (the layer that stands highest over its median where the rule flags none).
`compare(before, after)` says, window by window, whether the intervention moved them to another token.
"""
from collections import Counter
from contextlib import contextmanager
from statistics import median

import torch

from lib import analysis, interventions, outliers, reducers
from lib.gpt2_checkpoints import CheckpointLM
from lib.interventions import DEFAULT_RULE, Rule
from monkey_patch import Capture



def _residual(point, layer, h):
    """Per sequence: the largest |h| (token, channel, value), the median |h| and each token's max |h|."""
    out = []
    for sequence, token_max in zip(h.detach(), reducers.token_max_abs(point, layer, h)):
        flat = sequence.abs().float()
        token, channel = divmod(int(flat.argmax()), sequence.shape[-1])
        out.append({"token": token, "channel": channel, "value": float(sequence[token, channel]),
                    "median": float(flat.median()), "token_max": token_max})
    return out


def _attention(point, layer, probs):
    """Per sequence: the attention each key receives from later queries and the head-averaged cumulative attention."""
    received = reducers.attention_received(point, layer, probs)
    return [{"received": r, "cumulative": outliers.column_sums(p).mean(dim=0).cpu()} for r, p in zip(received, probs)]


class Tracker:
    """What `track` recorded: per forward, per layer, the residual summary and the attention received per key."""

    def __init__(self, capture: Capture, n_layers: int, attention: bool):
        self.capture, self.n_layers, self.attention = capture, n_layers, attention

    def windows(self) -> list[list[dict]]:
        """Per sequence seen (over every forward, in order), per 0-based layer: token, channel, value, median,
        token_max [tokens] and, where attention was tracked, received [keys] (head-averaged)."""
        per_layer = [[s for call in self.capture.reduced("resid_post", i) for s in call] for i in range(self.n_layers)]
        if self.attention:
            attention = [[s for call in self.capture.reduced("attn.pattern", i) for s in call] for i in range(self.n_layers)]
            for i in range(self.n_layers):
                for entry, seen in zip(per_layer[i], attention[i]):
                    entry["received"], entry["cumulative"] = seen["received"].mean(dim=0), seen["cumulative"]
        return [[per_layer[i][w] for i in range(self.n_layers)] for w in range(len(per_layer[0]))]

    def summary(self, rule: Rule = DEFAULT_RULE) -> dict:
        return summarize(self.windows(), rule)


@contextmanager
def track(model, attention: bool = True):
    """Record where the massive activation and the sinks sit in every forward of `model` inside the context.
    `attention=False` for edits that replace attention's output (the scale test), whose maps are not defined."""
    if getattr(model.config, "model_type", None) is None:  # a gpt-2/ GPT: captured through its checkpoint wrapper
        model = CheckpointLM(model)
    points = ["resid_post"] + (["attn.pattern"] if attention else [])
    reduce = reducers.by_point({"resid_post": _residual, "attn.pattern": _attention})
    with Capture(model, points, reduce=reduce) as cap:
        tracker = Tracker(cap, len(cap.view.layers), attention)
        yield tracker


def _massive(layer: dict, rule: Rule) -> bool:
    return abs(layer["value"]) > rule.min_abs and abs(layer["value"]) > rule.factor * max(layer["median"], 1e-12)


def later_share(received: torch.Tensor) -> torch.Tensor:
    """[keys] mean attention from the queries after each key -> its share of the attention of queries 1..T-1."""
    n = received.shape[-1]
    later = torch.arange(n - 1, -1, -1, dtype=received.dtype)  # queries after key k: n - 1 - k
    return received * later / max(n - 1, 1)


def _sink(layer: dict):
    """(key, share, flagged): the key the attention rule flags with the largest share of the attention of queries
    1..T-1 (where it flags none: the key with the largest share); None where attention was not tracked."""
    if "received" not in layer:
        return None
    shares = later_share(layer["received"])
    flagged = analysis.excess_attention_keys(layer["cumulative"])
    key = max(flagged, key=lambda k: float(shares[k])) if flagged else int(shares.argmax())
    return key, float(shares[key]), bool(flagged)


def summarize(windows: list[list[dict]], rule: Rule = DEFAULT_RULE) -> dict:
    """Per layer over the windows, and overall: where the massive activation and the sink sit."""
    n_layers = len(windows[0])
    layers = []
    for i in range(n_layers):
        entries = [w[i] for w in windows]
        ratios = [abs(e["value"]) / max(e["median"], 1e-12) for e in entries]
        row = {"layer": i, "ratio_median": median(ratios), "value_median": median(abs(e["value"]) for e in entries),
               "channel": Counter(e["channel"] for e in entries).most_common(1)[0][0],
               "massive_windows": sum(_massive(e, rule) for e in entries) / len(entries)}
        sinks = [_sink(e) for e in entries]
        if sinks[0] is not None:
            row["sink_share_median"] = median(s[1] for s in sinks)
            row["sink_windows"] = sum(s[2] for s in sinks) / len(sinks)
        layers.append(row)
    massive_layers = [r["layer"] for r in layers if r["massive_windows"] >= 0.5]
    flagged = [r for r in layers if r["layer"] in massive_layers]
    top = max(flagged, key=lambda r: r["value_median"]) if flagged else max(layers, key=lambda r: r["ratio_median"])
    out = {"windows": len(windows), "rule": str(rule), "sink_rule": analysis.ATTENTION_RULE, "per_layer": layers,
           "massive": {"layers": massive_layers, "largest_layer": top["layer"], "channel": top["channel"],
                       "ratio_median": top["ratio_median"], "value_median": top["value_median"],
                       "tokens": [w[top["layer"]]["token"] for w in windows]}}
    if "sink_windows" in layers[0]:
        sink_layers = [r["layer"] for r in layers if r["sink_windows"] >= 0.5]
        at = sink_layers[0] if sink_layers else max(layers, key=lambda r: r["sink_share_median"])["layer"]
        out["sink"] = {"layers": sink_layers, "first_layer": sink_layers[0] if sink_layers else None,
                       "tokens": [_sink(w[at])[0] for w in windows],
                       "share_median": median(_sink(w[at])[1] for w in windows)}
    return out


def window_values(windows: list[list[dict]], summary: dict) -> dict:
    """Per window: the massive activation's |h| at the layer `summary` (of the same windows) reads it at, and the
    sink's share of the attention of queries 1..T-1 at the layer where its median share is largest (for paired
    comparisons over the same windows)."""
    top = summary["massive"]["largest_layer"]
    out = {"massive_abs": [abs(w[top]["value"]) for w in windows]}
    if "sink" in summary:
        at = max(summary["per_layer"], key=lambda r: r["sink_share_median"])["layer"]
        out["sink_share"] = [_sink(w[at])[1] for w in windows]
    return out


def compare(before: dict, after: dict) -> dict:
    """Share of windows whose massive activation (at its largest layer) and sink (at its first layer) sit on another
    token after the intervention than before; the same windows in the same order."""
    def moved(kind):
        if kind not in before or kind not in after:
            return None
        pairs = list(zip(before[kind]["tokens"], after[kind]["tokens"]))
        return sum(a != b for a, b in pairs) / len(pairs)
    return {"massive_moved": moved("massive"), "sink_moved": moved("sink")}


def shift(summary: dict, offset: int) -> dict:
    """A summary of windows that lost their first `offset` tokens (a BOS removed), with its token positions counted
    in the full windows, so that `compare` against the full windows' summary pairs the same tokens."""
    out = dict(summary)
    for kind in ("massive", "sink"):
        if kind in out:
            out[kind] = {**out[kind], "tokens": [t + offset for t in out[kind]["tokens"]]}
    return out


def tokens_max_abs(tracker_windows: list[list[dict]], window: int = 0) -> torch.Tensor:
    """float32 [layers, tokens]: each token's largest |h| per layer in one window (the relocation figure's map)."""
    return torch.stack([layer["token_max"] for layer in tracker_windows[window]])


def received(tracker_windows: list[list[dict]], window: int = 0) -> torch.Tensor:
    """float32 [layers, keys]: each key's share of the attention of queries 1..T-1 (head-averaged), per layer."""
    return torch.stack([later_share(layer["received"]) for layer in tracker_windows[window]])


# --- the relocation experiment: block the outlier tokens as keys and see where the outlier and the sink go --------

CONDITIONS = ("every_layer", "from_sink_layer", "before_sink_layer")
CONDITION_TEXT = {"every_layer": "masked in every layer", "from_sink_layer": "masked from the first sink layer on",
                  "before_sink_layer": "masked only in the layers before the first sink layer"}


def condition_layers(condition: str, first_sink_layer: int, n_layers: int) -> list[int]:
    """The layers a condition masks."""
    return {"every_layer": list(range(n_layers)), "from_sink_layer": list(range(first_sink_layer, n_layers)),
            "before_sink_layer": list(range(first_sink_layer))}[condition]


def defined_conditions(first_sink_layer: int | None, n_layers: int) -> tuple[dict, list[str]]:
    """({condition: its layers}, why the others are left out): every layer only where no layer has a sink;
    a condition that masks no layer, or the same layers as an earlier one, is left out (a sink from the first layer
    on leaves nothing before it, and "from it on" is every layer)."""
    if first_sink_layer is None:
        return {"every_layer": condition_layers("every_layer", 0, n_layers)}, []
    kept, skipped = {}, []
    for condition in CONDITIONS:
        layers = condition_layers(condition, first_sink_layer, n_layers)
        same = next((c for c, seen in kept.items() if seen == layers), None)
        if not layers or same:
            skipped.append(f"{CONDITION_TEXT[condition]} " + ("masks no layer" if not layers else
                                                               f"masks the same layers as {CONDITION_TEXT[same]}"))
        else:
            kept[condition] = layers
    return kept, skipped


def outlier_tokens(scan) -> list[list[int]]:
    """Per window of an outlier scan (lib.interventions.scan_outliers): the tokens flagged, in any layer, in the
    channel of the largest outliers (lib.interventions.dominant_channel): the massive activation's tokens, not every
    smaller outlier of the early layers."""
    channel = interventions.dominant_channel(scan)
    if channel is None:
        return [[] for _ in scan]
    return [sorted({t for mask, _ in per_layer for t in torch.nonzero(mask[:, channel]).flatten().tolist()})
            for per_layer in scan]


def random_tokens(keys: list[int], n_tokens: int, generator: torch.Generator) -> list[int]:
    """As many tokens as `keys`, drawn among the others (the control)."""
    others = torch.tensor([t for t in range(n_tokens) if t not in set(keys)])
    return sorted(others[torch.randperm(len(others), generator=generator)[:len(keys)]].tolist())


def masked_logits(model, logits_fn, keys_per_window: list[list[int]], layers: list[int]):
    """logits_fn' that masks window i's keys in `layers` (windows are evaluated one at a time, in order)."""
    state = interventions.SinkMask()
    calls = iter(keys_per_window)

    def run(ids):
        keys = next(calls)
        state.keys = {layer: [keys] for layer in layers} if keys and layers else {}
        with interventions.masking(model, state):
            return logits_fn(ids)
    return run


def measure(model, blocks, logits_fn, run_fn, windows, rule: Rule = DEFAULT_RULE, seed: int = 0,
            prefix: int = 0) -> dict:
    """The relocation experiment on evaluation windows [n, L]: each window's outlier tokens (flagged by `rule` in
    any layer of its unmasked forward) blocked as keys for every other query in each condition's layers, and a
    control that blocks as many other tokens of the window, drawn with `seed`. Per condition and kind: perplexity
    with its paired change against the unmasked model, the masked layers, and where the massive activation
    and the sink went. The first sink layer is the unmasked model's (`summarize`). `prefix`: the special tokens each
    window starts with (lib.perplexity.perplexity: never scored)."""
    from lib.perplexity import perplexity, summarize as summarize_ppl
    inputs = windows[:, :-1]  # what the model sees of a window
    keys = outlier_tokens(interventions.scan_outliers(model, run_fn, inputs, rule))
    generator = torch.Generator().manual_seed(seed)
    controls = [random_tokens(k, inputs.shape[1], generator) for k in keys]
    with track(model) as where:
        baseline = perplexity(logits_fn, windows, prefix=prefix)
    before = where.summary(rule)
    first_sink = before.get("sink", {}).get("first_layer")
    out = {"rule": str(rule), "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
           "outlier_tokens": keys, "control_tokens": controls, "first_sink_layer": first_sink,
           "baseline": {**summarize_ppl(baseline), "where": before}, "conditions": {}}
    if first_sink is None:
        out["note"] = "no layer has a sink (a key the attention rule flags) in at least half of the windows: only the " \
                      "every-layer condition is defined"
    conditions, skipped = defined_conditions(first_sink, len(blocks))
    for condition, layers in conditions.items():
        out["conditions"][condition] = {}
        for kind, per_window in (("outliers", keys), ("control", controls)):
            with track(model) as where:
                measured = perplexity(masked_logits(model, logits_fn, per_window, layers), windows, prefix=prefix)
            after = where.summary(rule)
            out["conditions"][condition][kind] = {**summarize_ppl(measured, baseline),
                                                  "masked_layers": list(layers),
                                                  "where": after, "moved": compare(before, after)}
    if skipped:
        out["note"] = (f"the first sink layer is {first_sink}: " + "; ".join(skipped)
                       + (", so it is not measured" if len(skipped) == 1 else ", so neither is measured"))
    return out


def prompt_maps(model, ids: torch.Tensor, keys: list[int], layers: list[int]) -> dict:
    """One prompt [1, T], unmasked and with `keys` masked in `layers`: each token's max |h| per layer and the
    attention each key receives from later queries, float32 [layers, tokens] each, before and after."""
    maps = {}
    for name, masked in (("before", False), ("after", True)):
        with torch.no_grad(), track(model) as where:
            if masked:
                with interventions.mask_keys(model, keys, layers):
                    model(ids)
            else:
                model(ids)
        windows = where.windows()
        maps[name] = {"max_abs": tokens_max_abs(windows), "received": received(windows)}
    return maps
