"""Outlier statistics of An et al., "Systematic Outliers in Large Language Models" (ICLR 2025).

Pure functions on torch tensors: no models, no transformers. Inputs may be any float dtype
(fp16, bf16, fp32, ...); every statistic is computed in float32 and returned as plain Python
numbers or small float32 tensors. Conventions used throughout:

* An activation tensor ``h`` is one sequence's ``[tokens, channels]`` tensor.
* A weight ``W`` is ``[out_features, in_features]`` as ``torch.nn.Linear`` stores it, so an
  "input column" of down_proj is ``W[:, j]``.
* Attention ``probs`` is one sequence's ``[heads, queries, keys]`` softmax output.
* Medians are ``torch.median`` medians: for an even count, the lower of the two middle values
  (the reference code, locuslab/massive-activations, uses the same).
* A ratio whose denominator is zero (all-zero tensor, row, column or head) is defined as 0.0,
  never NaN: nothing there can stand out.
"""
import re

import torch

DEFAULT_OUTLIER_FACTOR = 1000.0
MAX_REPORTED_ENTRIES = 64


# ---------------------------------------------------------------------------------------------
# input checks and fp32 helpers
# ---------------------------------------------------------------------------------------------

def _require_tensor(x, ndim, name, shape_hint):
    """Raise a clear error unless ``x`` is a non-empty tensor with ``ndim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_hint}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def _abs_fp32(x):
    """|x| as float32 (abs first: exact in any float dtype, and no float64 copy is ever made)."""
    return x.detach().abs().to(torch.float32)


def _safe_divide(numerator, denominator):
    """Element-wise numerator / denominator, with 0 where the denominator is 0."""
    zero = torch.zeros((), dtype=numerator.dtype, device=numerator.device)
    safe_denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, zero, numerator / safe_denominator)


def _unravel(flat_indices, n_columns):
    """Flat indices into a row-major [rows, n_columns] tensor -> (rows, columns) as int lists."""
    rows = (flat_indices // n_columns).tolist()
    columns = (flat_indices % n_columns).tolist()
    return rows, columns


# ---------------------------------------------------------------------------------------------
# activation outliers
# ---------------------------------------------------------------------------------------------

def topk_magnitudes(h, k=3):
    """Top-k magnitudes of one sequence's activations and where they sit.

    The paper's per-layer plots show the top-1/2/3 largest |h| and the median |h| of a layer's
    output (or of the down_proj input), ``h`` being ``[tokens, channels]``.

    Returns ``{"top": [v1 >= v2 >= ...], "tokens": [...], "channels": [...], "median": m}`` with
    0-based token and channel positions of each top value. ``k`` is clamped to ``h.numel()``.
    """
    _require_tensor(h, 2, "h", "[tokens, channels]")
    # top-k and median only select values, so they are exact in h's own dtype; one pass over |h|, a block of rows
    # at a time, gives both the median's counts and each row's largest |h|: no copy of a large tensor, in any dtype
    h = h.detach()
    if _countable(h):
        row_max = torch.empty(h.shape[0], dtype=h.dtype)
        median = _median_from_counts(h, _count_top_bits(h, row_max))
    else:
        row_max, median = h.abs().amax(dim=1), magnitude_median(h, absolute=True)
    values, flat = _topk_abs_2d(h, row_max, min(k, h.numel()))
    tokens, channels = _unravel(flat, h.shape[1])
    return {"top": values.float().tolist(), "tokens": tokens, "channels": channels, "median": median}


def _topk_abs_2d(h, row_max, k):
    """torch.topk of |h| flattened (values, flat indices) for a 2-D h whose rows' largest |h| are row_max: the k
    largest entries lie in the k rows with the largest maxima, so only those rows are searched."""
    if k >= h.shape[0] or torch.isnan(row_max).any():
        top = torch.topk(h.abs().flatten(), k)
        return top.values, top.indices
    rows = torch.topk(row_max, k).indices.sort().values
    top = torch.topk(h[rows].abs().flatten(), k)
    n = h.shape[1]
    return top.values, rows[top.indices // n] * n + top.indices % n


MEDIAN_SLICE = 2**20  # entries of |h| made at a time by the counting median (its temporaries stay this small)
_INF_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00, torch.float32: 0x7F80}  # top 16 bits of +inf


def magnitude_median(m, absolute=False) -> float:
    """torch.median (the lower middle value) of a tensor of magnitudes (>= 0), or of |m| where `absolute`, as a
    float, by counting instead of a selection: a non-negative float's bit pattern read as an integer sorts as the
    float does, so counting the 16-bit patterns of bf16/fp16 values finds the median exactly; for float32 the top
    16 bits find the median's bucket and a selection inside that bucket finishes it. |m| is made MEDIAN_SLICE
    entries at a time. Falls back to torch.median for other dtypes and on a GPU; NaN gives NaN, as there."""
    m = m.detach()
    if not _countable(m):
        return (m.abs() if absolute else m).median().float().item()
    return _median_from_counts(m, _count_top_bits(m))


def _countable(m) -> bool:
    return m.numel() > 0 and m.dtype in _INF_BITS and not m.is_cuda


def _abs_blocks(m):
    """(rows or None, |block|): a 2-D m by blocks of whole rows, any other by slices; about MEDIAN_SLICE entries
    each."""
    if m.dim() == 2:
        step = max(1, MEDIAN_SLICE // max(1, m.shape[1]))
        for start in range(0, m.shape[0], step):
            yield slice(start, start + step), m[start:start + step].abs()
    else:
        flat = m.reshape(-1)
        for start in range(0, flat.numel(), MEDIAN_SLICE):
            yield None, flat[start:start + MEDIAN_SLICE].abs()


def _top_bits(magnitudes):
    """The top 16 bits of non-negative floats' bit patterns, as non-negative integers (bf16/fp16: all of them)."""
    if magnitudes.dtype == torch.float32:
        return magnitudes.view(torch.int32) >> 16
    return magnitudes.view(torch.int16)


def _count_top_bits(m, row_max=None):
    """Counts of the top 16 bits of |m| ([2**15]); each row's largest |m| into row_max where given (2-D m)."""
    counts = torch.zeros(1 << 15, dtype=torch.int64)
    for rows, part in _abs_blocks(m):
        counts += torch.bincount(_top_bits(part).flatten(), minlength=1 << 15)
        if row_max is not None:
            torch.amax(part, dim=1, out=row_max[rows])
    return counts


def _median_from_counts(m, counts) -> float:
    """The lower median of |m| from its top-bit counts (float32: a second pass selects inside the bucket)."""
    if counts[_INF_BITS[m.dtype]:].any() and m.isnan().any():  # NaN counts beside +inf: checked where either is
        return float("nan")
    rank = (m.numel() - 1) // 2  # torch.median's element, counting from 0 in ascending order
    below = counts.cumsum(0)
    bucket = int(torch.searchsorted(below, rank, right=True))
    if m.dtype != torch.float32:
        return torch.tensor([bucket], dtype=torch.int16).view(m.dtype).float().item()
    inside = torch.cat([part[_top_bits(part) == bucket] for _, part in _abs_blocks(m)])
    before = int(below[bucket - 1]) if bucket else 0
    return inside.kthvalue(rank - before + 1).values.item()


def _outlier_threshold(magnitudes, rule, factor, min_abs):
    """Threshold that |h| must exceed (strictly) under ``rule``; returns (threshold, factor)."""
    factor = DEFAULT_OUTLIER_FACTOR if factor is None else float(factor)
    if rule == "mean":
        return factor * magnitudes.mean().item(), factor
    if rule in ("median", "token"):
        # "> min_abs and > factor * median" is the same as "> the larger of the two".
        return max(float(min_abs), factor * magnitude_median(magnitudes)), factor
    raise ValueError(f"rule must be 'mean', 'median' or 'token', got {rule!r}")


def _largest_entries(h, magnitudes, above, limit):
    """(token, channel, signed value) of the entries flagged in ``above``, largest |h| first."""
    count = min(int(above.sum().item()), limit)
    if count == 0:
        return []
    ranked = torch.where(above, magnitudes, torch.full_like(magnitudes, -1.0)).flatten()
    flat_indices = torch.topk(ranked, count).indices
    tokens, channels = _unravel(flat_indices, magnitudes.shape[1])
    values = h.detach().flatten()[flat_indices].to(torch.float32).tolist()
    return list(zip(tokens, channels, values))


def activation_outlier_mask(h, rule="token", factor=None, min_abs=100.0, token_factor=2.0):
    """Boolean ``[tokens, channels]``: every entry above the threshold of ``rule`` (see ``activation_outliers``,
    which lists at most 64 of them)."""
    return _flag(h, rule, factor, min_abs, token_factor)[0]


def _flag(h, rule, factor, min_abs, token_factor):
    """(above-threshold mask, threshold, factor used, |h| in fp32) under `rule`."""
    _require_tensor(h, 2, "h", "[tokens, channels]")
    magnitudes = _abs_fp32(h)
    threshold, factor = _outlier_threshold(magnitudes, rule, factor, min_abs)
    above = magnitudes > threshold
    if rule == "token":
        above &= magnitudes > token_factor * magnitudes.median(dim=0).values
    return above, threshold, factor, magnitudes


def activation_outliers(h, rule="mean", factor=None, min_abs=100.0, token_factor=2.0):
    """Activation outliers of one sequence's ``[tokens, channels]`` tensor.

    * ``rule="mean"`` (An et al.): an outlier token is a position whose max over channels of
      |h[t, c]| exceeds ``factor * mean(|h|)`` over the whole tensor (factor defaults to 1000).
    * ``rule="median"`` (Sun et al., "Massive Activations"): an entry is massive when
      |h| > ``min_abs`` (100) and |h| > ``factor * median(|h|)`` (factor defaults to 1000).
    * ``rule="token"``: the median rule, and also |h| > ``token_factor`` (2) x the median over tokens
      of its own channel, so that a channel large at every token (Gemma 2/3's sandwich norms grow a
      few residual channels to thousands everywhere) does not make every token an outlier.

    Returns ``{"rule", "factor", "threshold", "tokens", "channels", "entries", "max", "mean",
    "median"}``: sorted outlier token positions; sorted channels holding an above-threshold
    entry at an outlier token; up to 64 ``(token, channel, signed value)`` above-threshold
    entries, largest |value| first; and max/mean/median of |h|. An all-zero tensor has
    threshold 0 under the mean rule and no outliers.
    """
    above, threshold, factor, magnitudes = _flag(h, rule, factor, min_abs, token_factor)
    # Every above-threshold entry lies, by definition, on an outlier token.
    return {
        "rule": rule,
        "factor": factor,
        "threshold": threshold,
        "tokens": torch.nonzero(above.any(dim=1)).flatten().tolist(),
        "channels": torch.nonzero(above.any(dim=0)).flatten().tolist(),
        "entries": _largest_entries(h, magnitudes, above, MAX_REPORTED_ENTRIES),
        "max": magnitudes.max().item(),
        "mean": magnitudes.mean().item(),
        "median": magnitudes.median().item(),
    }


# ---------------------------------------------------------------------------------------------
# weight outliers
# ---------------------------------------------------------------------------------------------

def _max_over_mean(W, dim):
    """max |W| / mean |W| along ``dim`` in float32, 0 where the slice is all zero."""
    _require_tensor(W, 2, "W", "[out_features, in_features]")
    magnitudes = W.detach().abs()
    # max is exact in the native dtype; the sum accumulates in fp32 without an fp32 copy of W.
    maxima = magnitudes.amax(dim=dim).to(torch.float32)
    means = magnitudes.sum(dim=dim, dtype=torch.float32) / W.shape[dim]
    return _safe_divide(maxima, means)


def column_ratios(W):
    """Per input column j: max_i |W[i, j]| / mean_i |W[i, j]|; float32 ``[in_features]``.

    The paper's weight-outlier measure for down_proj: a column that is huge in a few rows has a
    ratio far above the rest. An all-zero column gets 0.
    """
    return _max_over_mean(W, dim=0)


def row_ratios(W):
    """Per output row i: max_j |W[i, j]| / mean_j |W[i, j]|; float32 ``[out_features]``."""
    return _max_over_mean(W, dim=1)


def weight_column_stats(W, k=3):
    """Per-layer summary of down_proj column ratios, as plotted in the paper.

    Returns ``{"max_ratio", "median_ratio", "top_columns", "top_ratios"}``: the largest and the
    (lower) median column ratio, and the ``k`` columns with the largest ratio, descending.
    """
    ratios = column_ratios(W)
    top = torch.topk(ratios, min(k, ratios.numel()))
    return {
        "max_ratio": ratios.max().item(),
        "median_ratio": ratios.median().item(),
        "top_columns": top.indices.tolist(),
        "top_ratios": top.values.tolist(),
    }


def module_score(W):
    """A projection module's weight-outlier score: the max over all row-wise and column-wise
    max/mean |W| ratios (used to compare q, k, v, o, gate, up and down)."""
    return max(column_ratios(W).max().item(), row_ratios(W).max().item())


# ---------------------------------------------------------------------------------------------
# attention outliers
# ---------------------------------------------------------------------------------------------

def column_sums(probs):
    """Per head, attention probabilities summed over queries: float32 ``[heads, keys]``.

    This is the reduction to keep when attention is processed on the fly (it is all that the
    cumulative attention and the per-head outlier ratio need, instead of the full L x L map).
    """
    _require_tensor(probs, 3, "probs", "[heads, queries, keys]")
    return probs.detach().sum(dim=1, dtype=torch.float32)


def cumulative_attention(probs):
    """Cumulative attention per key: head-averaged probabilities summed over queries, ``[keys]``.

    Equal to ``column_sums(probs).mean(0)``; for a causal map its entries sum to the number of
    queries.
    """
    return column_sums(probs).mean(dim=0)


def uniform_causal_attention(seqlen):
    """Cumulative attention each key would get if every query spread evenly over the keys it sees:
    key j gets sum over queries i >= j of 1 / (i + 1). float32 ``[seqlen]``."""
    shares = 1.0 / torch.arange(1, seqlen + 1, dtype=torch.float32)
    return shares.flip(0).cumsum(0).flip(0)


def paper_attention_keys(cumulative, seqlen=None, factor=0.1):
    """The paper's attention-outlier rule as written: positions whose cumulative attention >= ``factor * seqlen``
    (``seqlen`` defaults to ``len(cumulative)``; the paper uses 0.1). Sorted ints."""
    _require_tensor(cumulative, 1, "cumulative", "[keys]")
    cumulative = cumulative.detach().to(torch.float32)
    seqlen = cumulative.shape[0] if seqlen is None else seqlen
    return torch.nonzero(cumulative >= factor * seqlen).flatten().tolist()


def choosable_shares(cumulative):
    """(share, uniform_share), each ``[keys]``: the share of the attention mass of the queries that had a
    choice (queries 1..T-1; query 0 sees only key 0 and, in a softmax, puts all its weight there) that
    falls on each key, and the share that uniform causal attention would give that key. Both sum to 1."""
    _require_tensor(cumulative, 1, "cumulative", "[keys]")
    T = cumulative.shape[0]
    mass = cumulative.detach().to(torch.float32).clone()
    uniform = uniform_causal_attention(T)
    mass[0] = (mass[0] - 1.0).clamp_min(0.0)
    uniform[0] -= 1.0
    return mass / max(T - 1, 1), uniform / max(T - 1, 1)


def keys_above_uniform(cumulative, min_excess=0.1):
    """The excess-over-uniform attention-outlier rule (lib.analysis' rule, valid on any length): a key whose
    share of the choosable mass (``choosable_shares``) exceeds what uniform attention would give it by >=
    ``min_excess``. Sorted ints; none for T < 2."""
    if cumulative.shape[0] < 2:
        return []
    share, uniform = choosable_shares(cumulative)
    return torch.nonzero(share - uniform >= min_excess - 1e-6).flatten().tolist()


def head_outlier_ratio_from_sums(sums, keys):
    """``head_outlier_ratio`` from precomputed ``column_sums`` ``[heads, keys]``."""
    _require_tensor(sums, 2, "sums", "[heads, keys]")
    sums = sums.detach().to(torch.float32)
    on_keys = sums[:, list(keys)].sum(dim=1)
    return _safe_divide(on_keys, sums.sum(dim=1))


def head_outlier_ratio(probs, keys):
    """Per head, the share of that head's total cumulative attention (summed over queries and
    keys) that falls on the outlier ``keys``: float32 ``[heads]``; 0 for an empty key list."""
    return head_outlier_ratio_from_sums(column_sums(probs), keys)


# ---------------------------------------------------------------------------------------------
# token categories
# ---------------------------------------------------------------------------------------------

# Characters that make up a strong delimiter: sentence and clause punctuation, line breaks,
# dashes, quotes and brackets. A token is a strong delimiter when, once spaces and tabs are
# removed, it is non-empty and made only of these characters ("." "\n" ".\n" "..." " (" '"').
STRONG_DELIMITERS = frozenset(
    ".,;:!?-\n\r"
    "\u2013\u2014\u2026"  # en dash, em dash, ellipsis
    "\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb"  # straight, curly and angle quotes
    "()[]{}<>"
)

# Weak-semantic tokens: frequent function words with little meaning of their own, compared
# case-insensitively after the word-start marker is removed. Digits and the bare word-start
# piece (a token that is only a space, "▁" or "Ġ") are weak-semantic too (WEAK_SEMANTIC_DIGITS).
WEAK_SEMANTIC = frozenset({
    "the", "a", "an", "of", "and", "or", "is", "are", "was", "were", "be", "to", "in", "on",
    "at", "for", "with", "by", "as", "it", "that", "this",
})
WEAK_SEMANTIC_DIGITS = re.compile(r"[0-9]+")

CATEGORIES = ("initial_token", "strong_delimiter", "weak_semantic", "other")

# Tokenizer markers mapped back to the text they stand for: SentencePiece's word-start "▁" and
# GPT-2's byte-level stand-ins for space, newline, tab and carriage return.
_MARKERS = {"\u2581": " ", "\u0120": " ", "\u010a": "\n", "\u0109": "\t", "\u010d": "\r"}
_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _decoded_text(token):
    """The text a tokenizer's printed token stands for (markers and byte pieces undone)."""
    byte_piece = _SENTENCEPIECE_BYTE.fullmatch(token)
    if byte_piece and int(byte_piece.group(1), 16) < 0x80:
        return chr(int(byte_piece.group(1), 16))  # e.g. LLaMA prints "\n" as "<0x0A>"
    return "".join(_MARKERS.get(char, char) for char in token)


def _is_strong_delimiter(text):
    core = text.replace(" ", "").replace("\t", "")
    return bool(core) and all(char in STRONG_DELIMITERS for char in core)


def _is_weak_semantic(text):
    word = text.strip().lower()
    # An empty word is the bare word-start piece (or a token that decodes to nothing).
    return word == "" or word in WEAK_SEMANTIC or bool(WEAK_SEMANTIC_DIGITS.fullmatch(word))


def token_category(token, position):
    """Category of an outlier position, as in the paper's token-category shares.

    ``"initial_token"`` at position 0 whatever the token; else ``"strong_delimiter"`` (see
    STRONG_DELIMITERS), ``"weak_semantic"`` (see WEAK_SEMANTIC: function words, digits, the
    bare word-start piece) or ``"other"``. ``token`` is a token as a tokenizer prints it:
    SentencePiece ("▁the", "<0x0A>"), GPT-2 byte-level ("Ġthe", "Ċ") or plain decoded text
    (" the", "\\n"). Case-insensitive.
    """
    if position == 0:
        return "initial_token"
    text = _decoded_text(token)
    if _is_strong_delimiter(text):
        return "strong_delimiter"
    if _is_weak_semantic(text):
        return "weak_semantic"
    return "other"


def category_shares(categories):
    """Share of each category in a list of ``token_category`` results, plus ``"count"``.

    Shares sum to 1; an empty list gives all shares 0.0 and count 0.
    """
    categories = list(categories)
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown token categories {sorted(unknown)}; expected {CATEGORIES}")
    count = len(categories)
    shares = {name: (categories.count(name) / count if count else 0.0) for name in CATEGORIES}
    shares["count"] = count
    return shares


# ---------------------------------------------------------------------------------------------
# peer metrics
# ---------------------------------------------------------------------------------------------

def kurtosis(x, dim=-1):
    """Non-excess kurtosis E[(x - mu)^4] / sigma^4 along ``dim`` (population moments), float32.

    A Gaussian gives about 3, a tensor with a few huge outliers much more. A constant slice gets 0 instead of
    NaN. The two summaries reported are ``token_kurtosis`` and ``tensor_excess_kurtosis``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("x is empty")
    x = x.detach().to(torch.float32)
    centered = x - x.mean(dim=dim, keepdim=True)
    variance = centered.pow(2).mean(dim=dim)
    fourth_moment = centered.pow(4).mean(dim=dim)
    return _safe_divide(fourth_moment, variance.pow(2))


def token_kurtosis(h):
    """``KURTOSIS_PER_TOKEN``: the non-excess kurtosis of each token's channels, averaged over tokens, of a
    ``[..., tokens, channels]`` tensor (Bondarenko et al. 2023 report it this way). A float."""
    return kurtosis(h, dim=-1).mean().item()


def tensor_excess_kurtosis(x):
    """``KURTOSIS_TENSOR_EXCESS``: the excess kurtosis (non-excess minus 3) of all entries of ``x`` taken as one
    sample, whatever its shape. A float."""
    return kurtosis(x.reshape(-1), dim=0).item() - 3.0


def max_inf_norm(x):
    """Infinity norm max |x| over the whole tensor (Bondarenko et al. 2023), as a float."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("x is empty")
    return x.detach().abs().max().to(torch.float32).item()


def mean_attention_on_key(probs, key=0):
    """Per head, mean attention that the queries able to see ``key`` (q >= key, causal, the key's own query
    included) put on it: float32 ``[heads]``. Stacked over layers this is ``sink_rate``'s input as Gu et al.
    define it (``SINK_RATE_ALL_QUERIES``)."""
    _require_tensor(probs, 3, "probs", "[heads, queries, keys]")
    return probs.detach()[:, key:, key].to(torch.float32).mean(dim=1)


def sink_rate(first_key_attention, threshold=0.3):
    """Sink rate (Gu et al., ICLR 2025): the share of (layer, head) pairs whose mean attention on the first key
    (``first_key_attention``, ``[layers, heads]``) exceeds ``threshold`` (0.3). Which queries that mean is
    over is the input's variant: ``mean_attention_on_key`` (all queries that see the key, Gu et al.'s) or
    ``key_shares_after_first_query(...)[:, 0]`` (queries 1..T-1)."""
    _require_tensor(first_key_attention, 2, "first_key_attention", "[layers, heads]")
    above = first_key_attention.detach().to(torch.float32) > threshold
    return above.to(torch.float32).mean().item()


def first_token_share_all_queries(probs):
    """``FIRST_TOKEN_SHARE_ALL_QUERIES`` (Qiu et al. 2025, "Gated Attention"): the mean over heads and every
    query, query 0 included, of the probability on key 0, for ``[heads, queries, keys]``."""
    _require_tensor(probs, 3, "probs", "[heads, queries, keys]")
    return probs.detach()[..., 0].to(torch.float32).mean().item()


def key_shares_after_first_query(probs):
    """Per head and key, the mean weight that queries 1..T-1 put on the key (``KEY_SHARES``), float32
    ``[heads, keys]``: query 0 has no choice and is left out; a query that cannot see a key (a causal query
    before it) counts as 0 for it, so a late key cannot look like a sink on the strength of a few queries.
    ``probs`` is ``[heads, queries, keys]`` or ``[batch, heads, queries, keys]`` (averaged over the batch),
    each query's row already divided by its total; T >= 2."""
    if not isinstance(probs, torch.Tensor) or probs.dim() not in (3, 4) or probs.shape[-2] < 2:
        raise ValueError("probs must be [heads, queries, keys] or [batch, heads, queries, keys] with >= 2 queries")
    shares = probs.detach()[..., 1:, :].to(torch.float32).mean(dim=-2)
    return shares.mean(dim=0) if probs.dim() == 4 else shares


def first_token_share_after_first_query(probs):
    """``FIRST_TOKEN_SHARE_AFTER_FIRST_QUERY``: ``key_shares_after_first_query`` on key 0, averaged over heads."""
    return key_shares_after_first_query(probs)[:, 0].mean().item()


# ---------------------------------------------------------------------------------------------
# peaks at a fixed position, over many sequences
# ---------------------------------------------------------------------------------------------

def _require_batch(h):
    _require_tensor(h, 3, "h", "[sequences, tokens, channels]")


def channel_position_ratios(h):
    """``POSITION_RATIO`` for every (position, channel): the median over sequences of |h[s, t, c]| / median
    |h[s]| (each sequence's median over all its entries), float32 ``[tokens, channels]``. ``h`` is
    ``[sequences, tokens, channels]``; a sequence whose entries are all 0 gives 0."""
    _require_batch(h)
    magnitudes = h.detach().abs().to(torch.float32)
    medians = magnitudes.flatten(1).median(dim=1).values
    return _safe_divide(magnitudes, medians[:, None, None].expand_as(magnitudes)).median(dim=0).values


def position_ratios(h):
    """(ratio ``[tokens]``, channel ``[tokens]``): for each position, its largest ``channel_position_ratios``
    and that channel (``POSITION_RATIO``): how far one channel of that position stands out in most sequences,
    wherever each sequence's own maximum sits."""
    ratios = channel_position_ratios(h)
    best = ratios.max(dim=1)
    return best.values, best.indices


def holds_max_share(h):
    """``HOLDS_MAX``: per position, the share of sequences whose largest |h| entry (over all positions and
    channels) sits at that position, float32 ``[tokens]`` summing to 1. ``h`` is ``[sequences, tokens,
    channels]``; ties go to the first position."""
    _require_batch(h)
    flat = h.detach().abs().flatten(1).argmax(dim=1) // h.shape[2]
    return torch.bincount(flat, minlength=h.shape[1]).to(torch.float32) / h.shape[0]


def top1_ratio_mean(h):
    """``TOP1_RATIO_MEAN``: the mean over sequences of top-1 |h| / median |h| of each sequence (wherever its
    maximum sits), for ``[sequences, tokens, channels]``. A float."""
    _require_batch(h)
    per_sequence = [topk_magnitudes(sequence.reshape(-1, h.shape[2]), 1) for sequence in h]
    return sum(s["top"][0] / s["median"] if s["median"] else 0.0 for s in per_sequence) / len(per_sequence)


# What each reported statistic is, for the JSON and tables that report it.
KURTOSIS_PER_TOKEN = "kurtosis, non-excess, over channels per token, mean over tokens (Gaussian: 3)"
KURTOSIS_TENSOR_EXCESS = "kurtosis, excess, over all entries of the tensor as one sample (Gaussian: 0)"
FIRST_TOKEN_SHARE_ALL_QUERIES = "attention on key 0, mean over heads and all queries (query 0 included)"
FIRST_TOKEN_SHARE_AFTER_FIRST_QUERY = "attention on key 0, mean over heads and queries 1..T-1"
KEY_SHARES = ("per head and key, mean attention of queries 1..T-1 (each row divided by its total; a query "
              "before the key counts 0)")
SINK_RATE_ALL_QUERIES = ("share of (layer, head) pairs whose mean attention on key 0 over all queries exceeds 0.3 "
                         "(Gu et al.)")
SINK_RATE_AFTER_FIRST_QUERY = ("share of (layer, head) pairs whose mean attention of queries 1..T-1 on key 0 "
                               "exceeds 0.3")
TOP1_RATIO_MEAN = "top-1 |h| / median |h| per sequence (wherever the maximum sits), mean over sequences"
POSITION_RATIO = ("at a fixed position: per channel, the median over sequences of |h[pos, c]| / median |h| of the "
                  "sequence; the position's largest channel")
HOLDS_MAX = "share of sequences whose largest |h| entry sits at the position"


# ---------------------------------------------------------------------------------------------
# streaming accumulation over sequences
# ---------------------------------------------------------------------------------------------

class RunningLayerStats:
    """Per-layer top-k magnitudes reduced on the fly over many sequences.

    The paper averages each layer's top-1/2/3 and median |h| over its calibration sequences;
    only those few numbers and the positions of each sequence's top values are kept, never the
    activations themselves.
    """

    def __init__(self, k=3):
        self.k = k
        self._layers = {}

    def add(self, layer, h):
        """Fold one sequence's ``[tokens, channels]`` tensor of ``layer`` into the statistics."""
        _require_tensor(h, 2, "h", "[tokens, channels]")
        if h.numel() < self.k:
            raise ValueError(f"h has {h.numel()} entries, fewer than k={self.k}")
        stats = topk_magnitudes(h, self.k)
        entry = self._layers.setdefault(
            int(layer), {"top": [0.0] * self.k, "median": 0.0, "tokens": [], "channels": []})
        entry["top"] = [total + value for total, value in zip(entry["top"], stats["top"])]
        entry["median"] += stats["median"]
        entry["tokens"].append(stats["tokens"])
        entry["channels"].append(stats["channels"])

    def summary(self):
        """One dict per layer, sorted by layer: ``{"layer", "top": [mean top-1, ..., top-k],
        "median": mean median, "top_tokens": [[token positions of one sequence's top-k], ...],
        "top_channels": [[channels of one sequence's top-k], ...], "n": sequences}``."""
        rows = []
        for layer in sorted(self._layers):
            entry = self._layers[layer]
            n = len(entry["tokens"])
            rows.append({
                "layer": layer,
                "top": [total / n for total in entry["top"]],
                "median": entry["median"] / n,
                "top_tokens": [list(tokens) for tokens in entry["tokens"]],
                "top_channels": [list(channels) for channels in entry["channels"]],
                "n": n,
            })
        return rows


# ---------------------------------------------------------------------------------------------
# compression of the representations, and sinks on any token (Queipo-de-Llano et al. 2025)
# ---------------------------------------------------------------------------------------------

def matrix_entropy(h):
    """Normalised matrix-based entropy of one sequence's ``[tokens, channels]`` representations.

    The eigenvalues of the token Gram matrix h h^T, divided by their sum (its trace), taken as a
    distribution; its Shannon entropy over log(tokens). 1 when the tokens are orthogonal and of one
    norm, 0 when they all lie on one direction (rank one); at most log(rank) / log(tokens), so below
    1 when there are fewer channels than tokens. One massive token takes nearly all the trace and
    pulls it towards 0. An all-zero ``h`` gives 0. Needs two tokens or more.

    h h^T and h^T h have the same nonzero eigenvalues, so the smaller one is formed (float32, after
    dividing h by its largest |entry|, which leaves the entropy unchanged)."""
    _require_tensor(h, 2, "h", "[tokens, channels]")
    n = h.shape[0]
    if n < 2:
        raise ValueError(f"the matrix entropy needs two tokens or more, got {n}")
    x = h.detach().to(torch.float32)
    scale = x.abs().max()
    if scale == 0:
        return 0.0
    x = x / scale
    gram = x @ x.T if n <= x.shape[1] else x.T @ x
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0.0)
    p = eigenvalues / eigenvalues.sum()
    p = p[p > 0]
    return (-(p * p.log()).sum() / torch.log(torch.tensor(float(n)))).item()


def mean_attention_from_sums(sums):
    """Per head and key, the mean attention from the queries that see the key (the key's own query and
    every later one, under a causal mask): ``column_sums`` ``[heads, keys]`` over T - k queries.
    Column k is ``mean_attention_on_key(probs, k)``, for every key at once and from the column sums a
    streamed capture keeps; stacked over layers, column 0 is ``sink_rate``'s input."""
    _require_tensor(sums, 2, "sums", "[heads, keys]")
    T = sums.shape[1]
    return sums.detach().to(torch.float32) / torch.arange(T, 0, -1, dtype=torch.float32, device=sums.device)
