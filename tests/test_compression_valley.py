"""The compression-valley statistics of lib/outliers.py on planted matrices and a planted attention map, checked
against hand computations and an independent numpy route (singular values instead of the Gram matrix)."""
import math

import numpy as np
import pytest
import torch

from lib import analysis, outliers
from lib.paper_figures.valley import valley


def entropy_by_svd(h: torch.Tensor) -> float:
    """The same entropy from numpy's singular values of h (their squares are the Gram matrix's eigenvalues)."""
    s = np.linalg.svd(h.numpy().astype(np.float64), compute_uv=False) ** 2
    p = s[s > 0] / s.sum()
    return float(-(p * np.log(p)).sum() / math.log(h.shape[0]))


def test_entropy_of_planted_matrices():
    torch.manual_seed(0)
    rank_one = torch.randn(16, 1) @ torch.randn(1, 32)
    assert outliers.matrix_entropy(rank_one) == pytest.approx(0.0, abs=1e-5)
    q, _ = torch.linalg.qr(torch.randn(64, 64))
    assert outliers.matrix_entropy(q[:16]) == pytest.approx(1.0, abs=1e-5)  # 16 orthonormal tokens
    assert outliers.matrix_entropy(1000 * q[:16]) == pytest.approx(1.0, abs=1e-5)  # the scale does not matter
    # 8 tokens in 4 channels, each unit vector twice: 4 equal eigenvalues, entropy log 4 / log 8
    twice = torch.cat([torch.eye(4), torch.eye(4)])
    assert outliers.matrix_entropy(twice) == pytest.approx(2 / 3, abs=1e-5)
    assert outliers.matrix_entropy(torch.zeros(5, 3)) == 0.0
    h = torch.randn(40, 24)  # more tokens than channels: the channel-side Gram matrix is formed
    assert outliers.matrix_entropy(h) == pytest.approx(entropy_by_svd(h), abs=1e-4)
    with pytest.raises(ValueError, match="two tokens"):
        outliers.matrix_entropy(torch.randn(1, 8))


def test_a_massive_token_collapses_the_entropy_and_leaving_it_out_restores_it():
    torch.manual_seed(1)
    h = torch.randn(64, 128)
    before = outliers.matrix_entropy(h)
    assert before == pytest.approx(entropy_by_svd(h), abs=1e-4) and before > 0.9
    h[9, 5] = 1e4
    assert outliers.matrix_entropy(h) < 0.01
    flagged = analysis.massive_entries(h)["tokens"]
    assert flagged == [9]
    kept = torch.cat([h[:9], h[10:]])
    assert outliers.matrix_entropy(kept) == pytest.approx(entropy_by_svd(kept), abs=1e-4)
    assert outliers.matrix_entropy(kept) > 0.9


def _planted_attention(T=16):
    """Causal [heads, queries, keys]: heads 0 and 1 put half of every query's attention on key 0, head 2 puts 0.6
    of the attention of queries 4.. on key 4, head 3 is uniform; the rest spread evenly over the visible keys."""
    probs = torch.zeros(4, T, T)
    for q in range(T):
        probs[:, q, : q + 1] = 1.0 / (q + 1)
        for head, key, share in ((0, 0, 0.5), (1, 0, 0.5), (2, 4, 0.6)):
            if q > key:
                probs[head, q, : q + 1] = (1 - share) / q
                probs[head, q, key] = share
    return probs


def test_sink_rate_on_a_planted_attention_map():
    probs = _planted_attention()
    assert torch.allclose(probs.sum(-1), torch.ones(4, 16))
    mean = outliers.mean_attention_from_sums(outliers.column_sums(probs))  # what a streamed capture keeps
    for key in (0, 4, 15):
        assert torch.allclose(mean[:, key], outliers.mean_attention_on_key(probs, key))
    # key 0: heads 0 and 1 give (1 + 15 x 0.5) / 16; uniform attention gives (1 + 1/2 + ... + 1/16) / 16 = 0.21
    assert mean[0, 0].item() == pytest.approx(8.5 / 16)
    assert mean[3, 0].item() == pytest.approx(sum(1 / k for k in range(1, 17)) / 16)
    assert outliers.sink_rate(mean[:, 0][None]) == 0.5
    # key 4: head 2 gives (1/5 + 11 x 0.6) / 12 from the queries that see it
    assert mean[2, 4].item() == pytest.approx((1 / 5 + 11 * 0.6) / 12)
    assert outliers.sink_rate(mean[:, 4][None]) == 0.25


def test_valley_is_the_layers_below_half_the_largest_entropy():
    found = valley([0.8, 0.5, 0.39, 0.1, 0.45, 0.7])
    assert found == {"layers": [2, 3], "depth": pytest.approx(1 - 0.1 / 0.8), "lowest_layer": 3, "highest_layer": 0}
    assert valley([None, 0.6, 0.2])["layers"] == [2] and valley([None, None])["layers"] == []
