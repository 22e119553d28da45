"""Where the massive activation and the attention sink sit in a forward, and where an intervention moves them.

    with track(model) as where:          # around any forwards, an intervention's included (captures compose)
        model(ids)
    where.summary()                      # the massive activation and the sinks, per layer and overall

Per forward and layer (layers 1-based in every summary, tokens and channels 0-based):
- the massive activation: the largest |h| of the layer output (resid_post), its token and channel, and its ratio
  to the layer's median |h|; a layer holds one when the ratio passes the activation rule's factor and |h| its
  floor (lib.interventions.Rule, the figures' rule);
- the sink: the key that receives the most attention from the queries after it, head-averaged
  (lib.reducers.attention_received), and that share; a layer has a sink when the share is at least SINK_SHARE.
`compare(before, after)` says, window by window, whether the intervention moved them to another token.
"""
from collections import Counter
from contextlib import contextmanager
from statistics import median

import torch

from lib import reducers
from lib.gpt2_checkpoints import CheckpointLM
from lib.interventions import DEFAULT_RULE, Rule
from monkey_patch import Capture

SINK_SHARE = 0.3  # a sink: a key receiving >= 0.3 of its later queries' attention, head-averaged (Gu et al.'s bar)


def _residual(point, layer, h):
    """Per sequence: the largest |h| (token, channel, value), the median |h| and each token's max |h|."""
    out = []
    for sequence in h.detach():
        flat = sequence.abs().float()
        index = int(flat.argmax())
        token, channel = divmod(index, sequence.shape[-1])
        out.append({"token": token, "channel": channel, "value": float(sequence[token, channel]),
                    "median": float(flat.median()), "token_max": flat.amax(dim=-1).cpu()})
    return out


class Tracker:
    """What `track` recorded: per forward, per layer, the residual summary and the attention received per key."""

    def __init__(self, capture: Capture, n_layers: int, attention: bool):
        self.capture, self.n_layers, self.attention = capture, n_layers, attention

    def windows(self) -> list[list[dict]]:
        """Per sequence seen (over every forward, in order), per 0-based layer: token, channel, value, median,
        token_max [tokens] and, where attention was tracked, received [keys] (head-averaged)."""
        per_layer = [[s for call in self.capture["resid_post", i] for s in call] for i in range(self.n_layers)]
        if self.attention:
            received = [[s.mean(dim=0) for call in self.capture["attn.pattern", i] for s in call]
                        for i in range(self.n_layers)]
            for i in range(self.n_layers):
                for entry, shares in zip(per_layer[i], received[i]):
                    entry["received"] = shares
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
    reduce = reducers.by_point({"resid_post": _residual, "attn.pattern": reducers.attention_received})
    with Capture(model, points, reduce=reduce) as cap:
        tracker = Tracker(cap, len(cap.view.layers), attention)
        yield tracker


def _massive(layer: dict, rule: Rule) -> bool:
    return abs(layer["value"]) > rule.min_abs and abs(layer["value"]) > rule.factor * max(layer["median"], 1e-12)


def _sink(layer: dict):
    """(key, share) of the layer's most attended key, or None where attention was not tracked."""
    if "received" not in layer:
        return None
    shares = layer["received"]
    key = int(shares.argmax())
    return key, float(shares[key])


def summarize(windows: list[list[dict]], rule: Rule = DEFAULT_RULE) -> dict:
    """Per layer over the windows, and overall: where the massive activation and the sink sit."""
    n_layers = len(windows[0])
    layers = []
    for i in range(n_layers):
        entries = [w[i] for w in windows]
        ratios = [abs(e["value"]) / max(e["median"], 1e-12) for e in entries]
        row = {"layer": i + 1, "ratio_median": median(ratios), "value_median": median(abs(e["value"]) for e in entries),
               "channel": Counter(e["channel"] for e in entries).most_common(1)[0][0],
               "massive_windows": sum(_massive(e, rule) for e in entries) / len(entries)}
        sinks = [_sink(e) for e in entries]
        if sinks[0] is not None:
            row["sink_share_median"] = median(s[1] for s in sinks)
            row["sink_windows"] = sum(s[1] >= SINK_SHARE for s in sinks) / len(sinks)
        layers.append(row)
    massive_layers = [r["layer"] for r in layers if r["massive_windows"] >= 0.5]
    top = max(layers, key=lambda r: r["ratio_median"])
    out = {"windows": len(windows), "rule": str(rule), "sink_share": SINK_SHARE, "per_layer": layers,
           "massive": {"layers": massive_layers, "largest_layer": top["layer"], "channel": top["channel"],
                       "ratio_median": top["ratio_median"], "value_median": top["value_median"],
                       "tokens": [w[top["layer"] - 1]["token"] for w in windows]}}
    if "sink_windows" in layers[0]:
        sink_layers = [r["layer"] for r in layers if r["sink_windows"] >= 0.5]
        at = sink_layers[0] if sink_layers else max(layers, key=lambda r: r["sink_share_median"])["layer"]
        out["sink"] = {"layers": sink_layers, "first_layer": sink_layers[0] if sink_layers else None,
                       "tokens": [_sink(w[at - 1])[0] for w in windows],
                       "share_median": median(_sink(w[at - 1])[1] for w in windows)}
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


def tokens_max_abs(tracker_windows: list[list[dict]], window: int = 0) -> torch.Tensor:
    """float32 [layers, tokens]: each token's largest |h| per layer in one window (the relocation figure's map)."""
    return torch.stack([layer["token_max"] for layer in tracker_windows[window]])


def received(tracker_windows: list[list[dict]], window: int = 0) -> torch.Tensor:
    """float32 [layers, keys]: the head-averaged attention each key receives from later queries, per layer."""
    return torch.stack([layer["received"] for layer in tracker_windows[window]])
