"""Tests of lib/outliers.py against hand computations on small planted tensors."""
import math
import numpy as np
import pytest
import torch

from lib import outliers as O


def planted_activations(dtype=torch.float32):
    """[6 tokens, 8 channels] of ones (signs alternate) with outliers at (0, 2), (0, 5), (3, 2)."""
    h = torch.ones(6, 8)
    h[::2] *= -1
    h[0, 2] = 5000.0
    h[0, 5] = -4000.0
    h[3, 2] = 3000.0
    return h.to(dtype)


# --------------------------------------------------------------------------- activations

def test_topk_magnitudes_positions_values_and_median():
    stats = O.topk_magnitudes(planted_activations())
    assert stats["top"] == [5000.0, 4000.0, 3000.0]
    assert stats["tokens"] == [0, 0, 3]
    assert stats["channels"] == [2, 5, 2]
    assert stats["median"] == 1.0  # 45 of the 48 magnitudes are 1


def test_topk_magnitudes_lower_median_for_even_count():
    stats = O.topk_magnitudes(torch.tensor([[1.0, -4.0], [2.0, 3.0]]), k=2)
    assert stats["top"] == [4.0, 3.0]
    assert stats["tokens"] == [0, 1] and stats["channels"] == [1, 1]
    assert stats["median"] == 2.0  # lower middle of 1, 2, 3, 4


def test_mean_rule_finds_planted_tokens_and_channels():
    h = planted_activations()
    mean_abs = (45 + 5000 + 4000 + 3000) / 48  # 250.9375
    result = O.activation_outliers(h, rule="mean", factor=10)
    assert result["threshold"] == pytest.approx(10 * mean_abs)
    assert result["tokens"] == [0, 3]
    assert result["channels"] == [2, 5]
    assert result["entries"] == [(0, 2, 5000.0), (0, 5, -4000.0), (3, 2, 3000.0)]
    assert result["max"] == 5000.0
    assert result["mean"] == pytest.approx(mean_abs)
    assert result["median"] == 1.0
    assert result["rule"] == "mean" and result["factor"] == 10


def test_mean_rule_threshold_excludes_smaller_outlier():
    # 14 * 250.9375 = 3513.1: the 3000 at token 3 is no longer an outlier.
    result = O.activation_outliers(planted_activations(), rule="mean", factor=14)
    assert result["tokens"] == [0]
    assert result["channels"] == [2, 5]


def test_median_rule_finds_planted_tokens_and_channels():
    result = O.activation_outliers(planted_activations(), rule="median")
    assert result["threshold"] == 1000.0  # max(100, 1000 * median 1)
    assert result["tokens"] == [0, 3]
    assert result["channels"] == [2, 5]
    assert [entry[:2] for entry in result["entries"]] == [(0, 2), (0, 5), (3, 2)]


def test_median_rule_min_abs_wins_when_median_is_tiny():
    h = torch.full((4, 4), 0.001)
    h[2, 1] = 50.0  # 50000 x median, but below the absolute floor of 100
    assert O.activation_outliers(h, rule="median")["tokens"] == []
    h[2, 1] = 150.0
    result = O.activation_outliers(h, rule="median")
    assert result["threshold"] == 100.0
    assert result["tokens"] == [2] and result["channels"] == [1]


def test_default_factor_is_1000_and_no_outliers_without_them():
    torch.manual_seed(0)
    h = torch.randn(32, 64)
    for rule in ("mean", "median"):
        result = O.activation_outliers(h, rule=rule)
        assert result["factor"] == 1000.0
        assert result["tokens"] == [] and result["channels"] == [] and result["entries"] == []


def test_entries_are_capped_at_64_largest():
    h = torch.zeros(10, 10)
    h[:, :] = torch.arange(1.0, 101.0).reshape(10, 10)
    result = O.activation_outliers(h, rule="median", factor=0.0, min_abs=0.5)
    assert len(result["entries"]) == 64
    assert result["entries"][0] == (9, 9, 100.0)
    assert result["entries"][-1] == (3, 6, 37.0)
    assert len(result["tokens"]) == 10


def test_all_zero_tensor_has_no_outliers_and_no_nan():
    h = torch.zeros(5, 7)
    for rule in ("mean", "median"):
        result = O.activation_outliers(h, rule=rule)
        assert result["tokens"] == [] and result["entries"] == []
        assert result["mean"] == 0.0 and result["max"] == 0.0
    assert O.topk_magnitudes(h)["top"] == [0.0, 0.0, 0.0]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        O.topk_magnitudes(torch.ones(5))
    with pytest.raises(ValueError, match="2-D"):
        O.activation_outliers(torch.ones(5))
    with pytest.raises(ValueError, match="empty"):
        O.activation_outliers(torch.ones(0, 4))
    with pytest.raises(ValueError, match="rule"):
        O.activation_outliers(torch.ones(2, 2), rule="max")
    with pytest.raises(ValueError, match="2-D"):
        O.column_ratios(torch.ones(5))
    with pytest.raises(ValueError, match="3-D"):
        O.cumulative_attention(torch.ones(4, 4))
    with pytest.raises(TypeError):
        O.topk_magnitudes(np.ones((2, 2)))


def test_fp16_input_gives_fp32_statistics():
    h = planted_activations(torch.float16)
    stats = O.topk_magnitudes(h)
    assert all(type(v) is float for v in stats["top"])
    result = O.activation_outliers(h, factor=10)
    assert result["tokens"] == [0, 3]
    assert all(type(value) is float for _, _, value in result["entries"])
    W = torch.randn(8, 4).half()
    assert O.column_ratios(W).dtype == torch.float32
    assert O.row_ratios(W.to(torch.bfloat16)).dtype == torch.float32
    assert O.kurtosis(W).dtype == torch.float32
    assert O.kurtosis(W.double()).dtype == torch.float32
    probs = torch.full((2, 3, 3), 1 / 3).half()
    assert O.column_sums(probs).dtype == torch.float32
    assert O.cumulative_attention(probs).dtype == torch.float32
    assert O.head_outlier_ratio(probs, [0]).dtype == torch.float32


# --------------------------------------------------------------------------- weights

def test_planted_weight_column_is_top1_with_hand_ratio():
    W = torch.ones(4, 6)
    W[1, 3] = -21.0  # column 3: |.| = 1, 21, 1, 1 -> max 21, mean 6, ratio 3.5
    W[2, 0] = 5.0    # column 0: 1, 1, 5, 1 -> max 5, mean 2, ratio 2.5
    ratios = O.column_ratios(W)
    assert ratios.shape == (6,)
    assert ratios.tolist() == [2.5, 1.0, 1.0, 3.5, 1.0, 1.0]
    stats = O.weight_column_stats(W, k=2)
    assert stats["top_columns"] == [3, 0]
    assert stats["top_ratios"] == [3.5, 2.5]
    assert stats["max_ratio"] == 3.5
    assert stats["median_ratio"] == 1.0


def test_row_ratios_and_module_score_by_hand():
    W = torch.tensor([[1.0, 2.0, 3.0],
                      [0.0, 0.0, 9.0]])
    # rows: 3 / 2 = 1.5 and 9 / 3 = 3; columns: 1 / 0.5 = 2, 2 / 1 = 2, 9 / 6 = 1.5
    assert O.row_ratios(W).tolist() == [1.5, 3.0]
    assert O.column_ratios(W).tolist() == [2.0, 2.0, 1.5]
    assert O.module_score(W) == 3.0
    assert O.module_score(W.t()) == 3.0  # rows and columns both count


def test_zero_weight_column_ratio_is_zero():
    W = torch.ones(3, 3)
    W[:, 1] = 0.0
    assert O.column_ratios(W).tolist() == [1.0, 0.0, 1.0]
    assert O.module_score(torch.zeros(2, 2)) == 0.0


# --------------------------------------------------------------------------- attention

def causal_uniform(heads, n):
    """Each query attends uniformly to keys 0..q."""
    probs = torch.tril(torch.ones(n, n))
    probs = probs / probs.sum(dim=1, keepdim=True)
    return probs.expand(heads, n, n).clone()


def test_all_mass_on_first_key():
    probs = torch.zeros(3, 5, 5)
    probs[:, :, 0] = 1.0
    cumulative = O.cumulative_attention(probs)
    assert cumulative.tolist() == [5.0, 0.0, 0.0, 0.0, 0.0]
    assert O.paper_attention_keys(cumulative) == [0]
    assert O.head_outlier_ratio(probs, [0]).tolist() == [1.0, 1.0, 1.0]
    assert O.first_token_share_all_queries(probs) == 1.0


def test_cumulative_attention_on_uniform_causal_map():
    n = 4
    cumulative = O.cumulative_attention(causal_uniform(2, n))
    # key j gets 1/(q+1) from every query q >= j
    expected = [1 + 1 / 2 + 1 / 3 + 1 / 4, 1 / 2 + 1 / 3 + 1 / 4, 1 / 3 + 1 / 4, 1 / 4]
    assert cumulative.tolist() == pytest.approx(expected)
    assert float(cumulative.sum()) == pytest.approx(n)
    assert O.paper_attention_keys(cumulative) == [0, 1, 2]  # 0.25 < 0.4 <= 0.583
    assert O.paper_attention_keys(cumulative, factor=0.25) == [0, 1]  # threshold 1
    assert O.paper_attention_keys(cumulative, seqlen=20) == [0]  # threshold 2


def test_attention_outlier_key_threshold_is_inclusive():
    assert O.paper_attention_keys(torch.tensor([1.0, 0.5, 0.5]), seqlen=10) == [0]
    assert O.paper_attention_keys(torch.tensor([0.99, 0.5]), seqlen=10) == []


def test_head_outlier_ratio_and_column_sums_by_hand():
    probs = torch.zeros(2, 3, 3)
    probs[0] = torch.tensor([[1.0, 0.0, 0.0],
                             [1.0, 0.0, 0.0],
                             [0.5, 0.5, 0.0]])
    probs[1] = torch.tensor([[1.0, 0.0, 0.0],
                             [0.0, 1.0, 0.0],
                             [0.0, 0.0, 1.0]])
    sums = O.column_sums(probs)
    assert sums.tolist() == [[2.5, 0.5, 0.0], [1.0, 1.0, 1.0]]
    assert O.cumulative_attention(probs).tolist() == [1.75, 0.75, 0.5]
    assert O.head_outlier_ratio(probs, [0]).tolist() == pytest.approx([2.5 / 3, 1 / 3])
    assert O.head_outlier_ratio(probs, [0, 2]).tolist() == pytest.approx([2.5 / 3, 2 / 3])
    assert O.head_outlier_ratio(probs, []).tolist() == [0.0, 0.0]
    assert O.head_outlier_ratio_from_sums(sums, [1]).tolist() == pytest.approx([0.5 / 3, 1 / 3])
    assert O.first_token_share_all_queries(probs) == pytest.approx((2.5 + 1.0) / 6)
    assert O.mean_attention_on_key(probs, 1).tolist() == pytest.approx([0.25, 0.5])


def test_sink_rate_by_hand():
    first_key = torch.tensor([[0.9, 0.1, 0.31],
                              [0.3, 0.05, 0.6]])
    assert O.sink_rate(first_key) == pytest.approx(3 / 6)  # 0.3 itself does not exceed
    assert O.sink_rate(first_key, threshold=0.5) == pytest.approx(2 / 6)
    assert O.sink_rate(first_key, threshold=0.95) == 0.0


# --------------------------------------------------------------------------- token categories

@pytest.mark.parametrize("token, position, expected", [
    ("Summer", 0, "initial_token"),
    ("<s>", 0, "initial_token"),
    (".", 3, "strong_delimiter"),
    (",", 3, "strong_delimiter"),
    ("\n", 5, "strong_delimiter"),
    ("Ċ", 5, "strong_delimiter"),
    ("ĊĊ", 5, "strong_delimiter"),
    ("<0x0A>", 5, "strong_delimiter"),
    ("▁(", 2, "strong_delimiter"),
    (".\n", 2, "strong_delimiter"),
    ('"', 2, "strong_delimiter"),
    ("▁the", 1, "weak_semantic"),
    ("Ġthe", 1, "weak_semantic"),
    (" the", 1, "weak_semantic"),
    ("The", 1, "weak_semantic"),
    ("▁OF", 1, "weak_semantic"),
    ("▁", 4, "weak_semantic"),
    ("Ġ", 4, "weak_semantic"),
    (" ", 4, "weak_semantic"),
    ("7", 4, "weak_semantic"),
    ("▁2025", 4, "weak_semantic"),
    ("Summer", 1, "other"),
    ("▁Summer", 1, "other"),
    ("Ġwarm", 1, "other"),
    ("theory", 1, "other"),
    ("'s", 1, "other"),
])
def test_token_category(token, position, expected):
    assert O.token_category(token, position) == expected


def test_category_shares():
    categories = ["initial_token", "strong_delimiter", "strong_delimiter", "other"]
    shares = O.category_shares(categories)
    assert shares == {"initial_token": 0.25, "strong_delimiter": 0.5, "weak_semantic": 0.0,
                      "other": 0.25, "count": 4}
    empty = O.category_shares([])
    assert empty == {"initial_token": 0.0, "strong_delimiter": 0.0, "weak_semantic": 0.0,
                     "other": 0.0, "count": 0}
    with pytest.raises(ValueError):
        O.category_shares(["delimiter"])


# --------------------------------------------------------------------------- peer metrics

def test_kurtosis_of_normal_sample_is_about_three():
    torch.manual_seed(0)
    assert float(O.kurtosis(torch.randn(200_000))) == pytest.approx(3.0, abs=0.05)


def test_kurtosis_matches_hand_formula_and_spike():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    row = np.array([1.0, 2.0, 3.0, 10.0])
    centered = row - row.mean()
    by_hand = np.mean(centered ** 4) / np.mean(centered ** 2) ** 2
    result = O.kurtosis(x, dim=-1)
    assert result[0].item() == pytest.approx(by_hand, rel=1e-5)
    assert result[1].item() == 0.0  # constant row: 0, not NaN
    # one spike among n - 1 zeros: m4 / m2^2 = (n^2 - 3n + 3) / (n - 1) = n - 2 + 1 / (n - 1)
    n = 100
    spike = torch.zeros(n)
    spike[7] = 1000.0
    assert O.kurtosis(spike).item() == pytest.approx(n - 2 + 1 / (n - 1), rel=1e-4)
    columns = O.kurtosis(x.t(), dim=0)
    assert columns.tolist() == pytest.approx(result.tolist())


def test_max_inf_norm():
    assert O.max_inf_norm(torch.tensor([[1.0, -7.5], [3.0, 2.0]]).half()) == 7.5
    with pytest.raises(ValueError):
        O.max_inf_norm(torch.ones(0))


# --------------------------------------------------------------------------- streaming

def test_running_layer_stats_averages_by_hand():
    a = torch.tensor([[1.0, 6.0, 0.0], [2.0, -5.0, 4.0]])    # top 6, 5, 4; median 2 (of 0,1,2,4,5,6)
    b = torch.tensor([[10.0, 0.0, 1.0], [-8.0, 3.0, 9.0]])   # top 10, 9, 8; median 3 (of 0,1,3,8,9,10)
    running = O.RunningLayerStats()
    running.add(2, a)
    running.add(0, b)
    running.add(2, b)
    summary = running.summary()
    assert [row["layer"] for row in summary] == [0, 2]
    layer0, layer2 = summary
    assert layer0 == {"layer": 0, "top": [10.0, 9.0, 8.0], "median": 3.0,
                      "top_tokens": [[0, 1, 1]], "top_channels": [[0, 2, 0]], "n": 1}
    assert layer2["top"] == [8.0, 7.0, 6.0]
    assert layer2["median"] == 2.5
    assert layer2["top_tokens"] == [[0, 1, 1], [0, 1, 1]]
    assert layer2["top_channels"] == [[1, 1, 2], [0, 2, 0]]
    assert layer2["n"] == 2
    with pytest.raises(ValueError):
        running.add(1, torch.ones(1, 2))
    assert O.RunningLayerStats().summary() == []


# --- the token-specific activation rule and the baseline-aware attention rule ---------------------------------

def test_token_rule_keeps_a_token_specific_outlier_and_drops_a_channel_large_everywhere():
    h = torch.full((6, 8), 0.05)
    h[:, 2] = 3000.0          # large at every token (as Gemma 3's sandwich-norm channels are)
    h[4, 5] = -9000.0         # one token only
    h[4, 2] = 9000.0          # the same channel as everyone, but 3x the channel's typical value
    median_rule = O.activation_outliers(h, rule="median")
    assert median_rule["tokens"] == [0, 1, 2, 3, 4, 5]
    token_rule = O.activation_outliers(h, rule="token")
    assert token_rule["tokens"] == [4] and token_rule["channels"] == [2, 5]
    assert {(t, c) for t, c, _ in token_rule["entries"]} == {(4, 2), (4, 5)}
    assert O.activation_outliers(h, rule="token", token_factor=4.0)["channels"] == [5]


def test_uniform_causal_attention_by_hand():
    # key j is seen by queries j..T-1, query i spreads 1/(i+1): T=3 -> [1 + 1/2 + 1/3, 1/2 + 1/3, 1/3]
    expected = torch.tensor([1 + 1 / 2 + 1 / 3, 1 / 2 + 1 / 3, 1 / 3])
    assert torch.allclose(O.uniform_causal_attention(3), expected)
    assert O.uniform_causal_attention(3).dtype == torch.float32


def test_keys_above_uniform_drop_a_first_key_that_only_gets_its_uniform_share():
    T = 10
    uniform = O.uniform_causal_attention(T)
    cumulative = uniform.clone()
    cumulative[4] += 2.0  # a real sink at key 4, taken evenly from the others
    cumulative[[0, 1, 2, 3]] -= 0.5
    assert 0 in O.paper_attention_keys(cumulative)      # 0.1 x T = 1 is passed by key 0 by construction
    assert O.keys_above_uniform(cumulative) == [4]


def planted_map(T, key, share):
    """Causal attention [1, T, T] where every query q >= max(key, 1) puts `share` of its mass on `key` and
    spreads the rest evenly over its other visible keys; earlier queries attend uniformly."""
    probs = torch.zeros(T, T)
    probs[0, 0] = 1.0
    for q in range(1, T):
        if q < key:
            probs[q, : q + 1] = 1.0 / (q + 1)
            continue
        probs[q, : q + 1] = (1 - share) / q
        probs[q, key] = share
    return probs[None]


@pytest.mark.parametrize("T", [4, 5, 6, 9, 16, 64, 256, 512])
def test_uniform_attention_flags_no_key_on_any_length(T):
    cumulative = O.cumulative_attention(causal_uniform(1, T))
    assert O.keys_above_uniform(cumulative) == []
    share, uniform = O.choosable_shares(cumulative)
    assert torch.allclose(share, uniform, atol=1e-6) and float(share.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("T", [4, 6, 9, 16, 256])
def test_a_first_key_with_half_of_every_later_query_is_flagged(T):
    assert O.keys_above_uniform(O.cumulative_attention(planted_map(T, 0, 0.5))) == [0]


@pytest.mark.parametrize("T", [9, 16, 256])
def test_a_later_key_with_forty_percent_is_flagged(T):
    assert O.keys_above_uniform(O.cumulative_attention(planted_map(T, 3, 0.4))) == [3]  # like Gemma's '.' at position 3


@pytest.mark.parametrize("T", [4, 9, 64])
def test_a_key_just_above_uniform_is_not_flagged(T):
    cumulative = O.cumulative_attention(causal_uniform(1, T))
    share, uniform = O.choosable_shares(cumulative)
    cumulative[0] = 1.0 + 1.1 * uniform[0] * (T - 1)  # key 0 at 1.1 x its uniform share
    assert O.keys_above_uniform(cumulative) == []


def test_the_rules_disagreement_is_explained():
    from lib import analysis
    cumulative = torch.tensor([1.87, 1.02, 0.5, 3.42, 0.8, 0.39, 0.35, 0.29, 0.38])  # Gemma 3 270M, layer 9
    ours, paper = analysis.excess_attention_keys(cumulative), analysis.paper_attention_keys(cumulative)
    assert ours == [3] and paper == [0, 1, 3]
    line = analysis.rule_disagreement(cumulative, ours, paper)
    assert "key 0" in line and "key 1" in line and "key 3" not in line
    assert analysis.rule_disagreement(cumulative, [3], [3]) is None


def test_topk_and_median_of_half_precision_equal_those_of_its_float32_upcast():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        h = (torch.randn(37, 53, generator=g) * 50).to(dtype)
        h[5, 7] = -3000.0
        assert O.topk_magnitudes(h, k=4) == O.topk_magnitudes(h.float(), k=4)


@pytest.mark.parametrize("slice_entries", [2**20, 100])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_counting_median_and_row_topk_equal_torch_on_every_dtype(dtype, slice_entries, monkeypatch):
    # the counting median (in one slice, and in slices of 100 entries) and the row-maxima top-k against
    # torch.median / torch.topk, ties and a planted peak
    monkeypatch.setattr(O, "MEDIAN_SLICE", slice_entries)
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (2, 3), (7, 5), (64, 33), (300, 257)]:
        for scale in (1e-3, 1.0, 1e3):
            h = (torch.randn(*shape, generator=g) * scale).to(dtype)
            if h.numel() > 6:
                h[0, 0], h.view(-1)[3] = 5e3, h.view(-1)[5]
            m = h.abs()
            assert O.magnitude_median(m) == m.median().float().item()
            assert O.magnitude_median(h, absolute=True) == m.median().float().item()
            stats = O.topk_magnitudes(h, k=3)
            assert stats["top"] == torch.topk(m.flatten(), min(3, m.numel())).values.float().tolist()
            assert [m[t, c].float().item() for t, c in zip(stats["tokens"], stats["channels"])] == stats["top"]


def test_counting_median_returns_nan_as_torch_does():
    h = torch.ones(4, 4)
    h[1, 2] = float("nan")
    assert math.isnan(O.magnitude_median(h.abs())) and math.isnan(h.abs().median().item())
    assert math.isnan(O.magnitude_median(h, absolute=True))
    assert math.isnan(O.topk_magnitudes(h)["median"])


# --- one definition per statistic, each variant by hand ---------------------------------------------------------

def test_the_two_kurtosis_variants_by_hand():
    h = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 8.0]])
    # per token over channels: row 0 has m2 = 1, m4 = 1 -> 1; row 1: mean 2, centred (-2, -2, -2, 6),
    # m2 = 48 / 4 = 12, m4 = (3 * 16 + 1296) / 4 = 336 -> 336 / 144 = 7 / 3; mean over tokens 5 / 3
    assert O.token_kurtosis(h) == pytest.approx(5 / 3, rel=1e-6)
    # all eight entries as one sample: mean 1, centred (0, -2, 0, -2, -1, -1, -1, 7), m2 = 60 / 8,
    # m4 = 2436 / 8 -> 304.5 / 56.25; excess: minus 3
    assert O.tensor_excess_kurtosis(h) == pytest.approx(304.5 / 56.25 - 3, rel=1e-6)
    assert O.tensor_excess_kurtosis(h[None]) == pytest.approx(O.tensor_excess_kurtosis(h))  # any shape
    torch.manual_seed(0)
    assert O.tensor_excess_kurtosis(torch.randn(200_000)) == pytest.approx(0.0, abs=0.05)


def three_query_map():
    """One head, T = 3, rows [1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]."""
    return torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])


def test_the_two_first_token_shares_and_the_key_shares_by_hand():
    probs = three_query_map()
    assert O.first_token_share_all_queries(probs) == pytest.approx((1 + 0.5 + 0.2) / 3)
    assert O.first_token_share_after_first_query(probs) == pytest.approx((0.5 + 0.2) / 2)
    # queries 1 and 2 only; query 1 cannot see key 2 and counts 0 there
    assert O.key_shares_after_first_query(probs).tolist() == [pytest.approx([0.35, 0.4, 0.25])]
    other = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    batch = torch.stack([probs, other])  # [batch, heads, queries, keys]: averaged over the batch
    assert O.key_shares_after_first_query(batch).tolist() == [pytest.approx([0.175, 0.45, 0.375])]
    with pytest.raises(ValueError):
        O.key_shares_after_first_query(torch.ones(1, 1, 1))  # one query: nobody chooses


def test_key_shares_agree_with_the_choosable_shares_of_the_column_sums_on_a_softmax_map():
    probs = torch.softmax(torch.randn(3, 9, 9).masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), -1e9), -1)
    share, _ = O.choosable_shares(O.cumulative_attention(probs))
    assert torch.allclose(O.key_shares_after_first_query(probs).mean(0), share, atol=1e-6)


def test_sink_rate_of_each_first_key_variant_by_hand():
    probs = torch.stack([three_query_map()[0], torch.eye(3)])  # head 0 as above, head 1 each query on itself
    gu = O.mean_attention_on_key(probs, 0)  # all queries: head 0 (1 + 0.5 + 0.2) / 3, head 1 1 / 3
    after = O.key_shares_after_first_query(probs)[:, 0]  # queries 1..2: head 0 0.35, head 1 0
    assert gu.tolist() == pytest.approx([1.7 / 3, 1 / 3]) and after.tolist() == pytest.approx([0.35, 0.0])
    assert O.sink_rate(gu[None]) == 1.0 and O.sink_rate(after[None]) == 0.5  # 1/3 > 0.3, but 0 is not


def test_position_statistics_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 10.0]],    # lower median of |h| 2: ratios [[0.5, 1], [1.5, 5]]
                      [[8.0, 1.0], [1.0, 2.0]],     # median 1: [[8, 1], [1, 2]]
                      [[-4.0, 2.0], [2.0, 6.0]]])   # median 2: [[2, 1], [1, 3]]
    assert O.channel_position_ratios(h).tolist() == [[2.0, 1.0], [1.0, 3.0]]  # median over the 3 sequences
    ratio, channel = O.position_ratios(h)
    assert ratio.tolist() == [2.0, 3.0] and channel.tolist() == [0, 1]
    assert O.holds_max_share(h).tolist() == pytest.approx([1 / 3, 2 / 3])  # sequence 1's max is at position 0
    # the position-free ratio averages each sequence's maximum wherever it sits: (5 + 8 + 3) / 3
    assert O.top1_ratio_mean(h) == pytest.approx(16 / 3)
    assert O.channel_position_ratios(torch.zeros(2, 2, 2)).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError):
        O.position_ratios(torch.ones(2, 2))


def test_activation_outlier_mask_flags_the_entries_above_the_threshold_by_hand():
    h = torch.full((10, 6), 0.5)
    h[2, 1], h[7, 4], h[3, 3] = 900.0, -700.0, 400.0  # threshold max(100, 1000 x 0.5) = 500: 400 stays
    mask = O.activation_outlier_mask(h)
    assert torch.nonzero(mask).tolist() == [[2, 1], [7, 4]]
    assert not hasattr(O, "outlier_mask")  # one name, one meaning: the mask alone
