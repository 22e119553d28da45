"""On-the-fly reductions for Capture(reduce=...): keep a few numbers per layer instead of full tensors.

Each reducer takes (point, layer, tensor) with the batch dimension first and returns one small result per
sequence in the batch, computed in float32 on the tensor's own device and moved to the CPU.

    reduce = by_point({"resid_post": topk_median(3), "attn.pattern": attention_column_sums})
"""
import torch

from lib import outliers


def topk_median(k: int = 3):
    """Activations [batch, tokens, channels] -> per sequence: top-k |values| with positions, and the median."""
    def reduce(point, layer, tensor):
        return [outliers.topk_magnitudes(sequence, k) for sequence in tensor]
    return reduce


def attention_column_sums(point, layer, probs):
    """Attention probabilities [batch, heads, queries, keys] -> per sequence: [heads, keys] sums over queries."""
    return [outliers.column_sums(sequence).cpu() for sequence in probs]


# Capture may reduce long maps chunk by chunk (query rows, blocks of heads) and add the results into their heads
# and keys: a reducer flagged so returns per sequence a float32 CPU [heads, keys] sum over queries
attention_column_sums.sums_over_queries = True


def keep(point, layer, tensor):
    """No reduction: the full tensor, float32 on the CPU (one item per sequence)."""
    return [sequence.to("cpu", torch.float32, copy=True) for sequence in tensor]


def by_point(reducers: dict, default=None):
    """Dispatch on the capture point; points without an entry use `default` (error if None)."""
    def reduce(point, layer, tensor):
        fn = reducers.get(point, default)
        if fn is None:
            raise KeyError(f"no reducer for capture point {point!r}")
        return fn(point, layer, tensor)
    reduce.sums_over_queries = frozenset(p for p, fn in reducers.items() if getattr(fn, "sums_over_queries", False))
    return reduce


def token_max_abs(point, layer, tensor):
    """Activations [batch, tokens, channels] -> per sequence: float32 [tokens], each token's largest |h| (the curve
    a massive activation stands out of)."""
    return [sequence.detach().abs().amax(dim=-1).float().cpu() for sequence in tensor]


def attention_received(point, layer, probs):
    """Attention probabilities [batch, heads, queries, keys] (queries = keys, causal) -> per sequence: float32
    [heads, keys], the mean attention that the queries after each key pay it (its own query left out; 0 for the
    last key, which no later query sees). Needs each layer's whole map: for long sequences reduce with
    attention_column_sums instead."""
    n = probs.shape[-1]
    later = torch.arange(n - 1, -1, -1, device=probs.device, dtype=torch.float32)  # queries after key k: n - 1 - k
    out = []
    for sequence in probs.detach().float():
        paid = sequence.sum(dim=1) - sequence.diagonal(dim1=-2, dim2=-1)
        out.append((paid / later.clamp_min(1)).cpu())
    return out
