"""One forward pass over the prompt that every single-prompt figure starts from (cached per run).

For every layer it keeps only small results: the outliers of the layer output and of the down_proj input
(lib.analysis.massive_entries), the paper-rule tokens for comparison, and the per-head attention column
sums. The figures then capture full tensors again for the one layer they draw.
"""
import torch

from lib import analysis
from monkey_patch import Capture
from lib.reducers import attention_column_sums, by_point


def _activation(rule):
    def reduce(point, layer, tensor):
        sequence = tensor[0]
        found = analysis.massive_entries(sequence, **rule)
        found["paper_rule_tokens"] = analysis.paper_rule_tokens(sequence)
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
    resid = [cap["resid_post", i][0] for i in layers]
    down = [cap["mlp.down_in", i][0] for i in layers] if "mlp.down_in" in points else None
    sums = [cap["attn.pattern", i][0] for i in layers] if "attn.pattern" in points else None
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
    return torch.stack([cap["resid_post", i][0] for i in range(ctx.view.num_layers)])


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
