"""One forward pass over the prompt that every single-prompt figure starts from (cached per run).

For every layer it keeps only small results: the outliers of the layer output and of the down_proj input
(lib.analysis.massive_entries), the paper-rule tokens for comparison, and the per-head attention column
sums. The figures then capture full tensors again for the one layer they draw.
"""
import torch

from lib import analysis
from lib.reducers import attention_column_sums, by_point
from lib.text_numbers import sig
from monkey_patch import Capture


def _activation(rule):
    def reduce(point, layer, tensor):
        sequence = tensor[0]
        found = analysis.massive_entries(sequence, **rule)
        found["paper_rule_tokens"] = analysis.paper_rule_tokens(sequence)
        found["argmax"] = divmod(int(sequence.abs().argmax()), sequence.shape[-1])  # (token, channel) of the max
        return found
    return reduce


def prompt_scan(ctx) -> dict:
    if "scan" in ctx.cache:
        return ctx.cache["scan"]
    ids, tokens = ctx.prompt()
    supported = ctx.view.supported_points()
    points = [p for p in ("resid_post", "mlp.down_in", "attn.pattern") if p in supported]
    reduce = by_point({"attn.pattern": lambda p, l, t: attention_column_sums(p, l, t)[0]}, default=_activation(ctx.rule))
    with Capture(ctx.model, points, reduce=reduce) as cap:
        ctx.forward(ids)
    layers = range(ctx.view.num_layers)
    resid = [cap.reduced("resid_post", i)[0] for i in layers]
    down = [cap.reduced("mlp.down_in", i)[0] for i in layers] if "mlp.down_in" in points else None
    sums = [cap.reduced("attn.pattern", i)[0] for i in layers] if "attn.pattern" in points else None
    scan = {
        "ids": ids, "tokens": tokens, "resid": resid, "down": down, "attn_sums": sums,
        "resid_layers": [i for i in layers if resid[i]["tokens"]],
        "down_layers": [i for i in layers if down and down[i]["tokens"]],
    }
    ctx.cache["scan"] = scan
    return scan


def strongest_layer(found: list) -> int:
    """When no layer has outliers: the layer whose max stands out most from its median."""
    return max(range(len(found)), key=lambda i: found[i]["max"] / max(found[i]["median"], 1e-12))


def main_outlier(scan) -> tuple[int | None, int | None, int | None]:
    """(layer, token, channel) of the first layer-output outlier on the prompt, or Nones."""
    if not scan["resid_layers"]:
        return None, None, None
    layer = scan["resid_layers"][0]
    token, channel, _ = scan["resid"][layer]["entries"][0]
    return layer, token, channel


def persistent_channel_values(ctx, channel: int) -> torch.Tensor:
    """Signed residual value of `channel` for every token after every layer: [layers, tokens]."""
    ids, _ = ctx.prompt()
    pick = lambda point, layer, tensor: tensor[0, :, channel].float().cpu()  # noqa: E731
    with Capture(ctx.model, ["resid_post"], reduce=pick) as cap:
        ctx.forward(ids)
    return torch.stack([cap.reduced("resid_post", i)[0] for i in range(ctx.view.num_layers)])


def writer_unit(ctx, layer: int, token: int, channel: int) -> tuple[int, float]:
    """The MLP unit (down_proj input column) that writes most into `channel` at `token`, and its share of the
    down_proj output there: argmax_j |down_in[token, j] * W_down[channel, j]|."""
    ids, _ = ctx.prompt()
    with Capture(ctx.model, ["mlp.down_in"], layers=[layer]) as cap:
        ctx.forward(ids)
    W = ctx.view.weight(layer, "down").detach().float().cpu()
    contribution = cap["mlp.down_in", layer][0][token] * W[channel]
    unit = int(contribution.abs().argmax())
    total = contribution.sum().item()
    return unit, (contribution[unit].item() / total if total else 0.0)


def _spans(layers: list[int]) -> str:
    """Layers as runs: [2, 3, 4, 7] -> '2-4, 7'."""
    runs, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            runs.append(f"{start}-{layer}" if layer > start else str(start))
            start = None
    return ", ".join(runs) or "none"


def dominant_outlier(ctx) -> dict:
    """The prompt's dominant outlier, whether or not the rule flags it: the largest layer-output |h| among the layers
    whose largest entry exceeds the rule's factor x their median |h| (where none does, the entry that stands highest
    over its median): layer, token, channel, |h|, ratio; its |h| after every layer with each of the
    rule's three tests (|h| > the floor, > factor x the layer's median |h|, > TOKEN_FACTOR x its channel's median
    over tokens), the layers where the rule flags it, and why it stops passing where it does."""
    if "dominant" in ctx.cache:
        return ctx.cache["dominant"]
    scan = prompt_scan(ctx)
    resid, tokens = scan["resid"], scan["tokens"]
    factor, floor = ctx.rule["factor"], ctx.rule["min_abs"]
    massive = [i for i, found in enumerate(resid) if found["max"] > factor * max(found["median"], 1e-12)]
    layer = max(massive, key=lambda i: resid[i]["max"]) if massive else strongest_layer(resid)
    token, channel = resid[layer]["argmax"]
    values = persistent_channel_values(ctx, channel).abs()  # [layers, tokens]
    trace = []
    for i, found in enumerate(resid):
        value, median = float(values[i, token]), max(found["median"], 1e-12)
        channel_median = max(float(values[i].median()), 1e-12)
        tests = {"above_floor": value > floor, "above_factor_x_median": value > factor * median,
                 "above_channel_median": value > analysis.TOKEN_FACTOR * channel_median}
        trace.append({"layer": i, "abs": value, "over_median": value / median,
                      "over_channel_median": value / channel_median, **tests, "flagged": all(tests.values())})
    flagged = [t["layer"] for t in trace if t["flagged"]]
    peak = trace[layer]
    text = (f"dominant outlier of the prompt: token {token} ({tokens[token]!r}), channel {channel}, |h| "
            f"{sig(peak['abs'])} at layer {layer} ({sig(peak['over_median'])} x the median |h|); the rule flags it at "
            f"layers {_spans(flagged)}")
    after = [t for t in trace if flagged and t["layer"] > flagged[-1]]
    if after:
        first, why = after[0], []
        if not first["above_factor_x_median"]:
            why.append(f"it is only {sig(first['over_median'])} x the layer's median |h| (< {factor:g}: the median "
                       f"grows from {sig(resid[flagged[-1]]['median'], 3)} to {sig(resid[first['layer']]['median'], 3)})")
        if not first["above_floor"]:
            why.append(f"|h| {sig(first['abs'])} is under the floor {floor:g}")
        if not first["above_channel_median"]:
            why.append(f"its channel is large at every token (only {sig(first['over_channel_median'], 3)} x the channel's "
                       "median)")
        text += f"; from layer {first['layer']} on it fails: " + "; ".join(why)
    elif not flagged:
        text += f" (factor {factor:g} x the median |h| and the floor {floor:g})"
    ctx.cache["dominant"] = {"layer": layer, "token": token, "token_text": tokens[token], "channel": channel,
                             "abs": peak["abs"], "over_median": peak["over_median"], "flagged_layers": flagged,
                             "per_layer": trace, "text": text}
    return ctx.cache["dominant"]
