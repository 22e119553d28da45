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
