"""Evaluation side: perplexity, compression and interventions (lib/perplexity.py, lib/compression.py,
lib/interventions.py, consequences.py), checked against hand computations and independent facts."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import consequences
from lib import analysis, compression, evaluation, interventions
from lib.gpt2_checkpoints import CheckpointLM
from lib.perplexity import eval_windows, gpt2_logits, hf_logits, perplexity, summarize
from lib.tiny_models import tiny_model
from monkey_patch import Capture, ModelView
from planted import CHANNEL, PLANTED, SINK, CharTokenizer, planted_llama

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gpt-2"))
from model import GPT, GPTConfig  # noqa: E402


# --- perplexity ----------------------------------------------------------------------------------------------

class Bigram(nn.Module):
    """p(next = same token) = 0.75 over a two-token vocabulary."""

    def forward(self, ids):
        table = torch.log(torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
        return table[ids]


def test_perplexity_matches_hand_computation():
    windows = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 1]])
    # window 1: 0->0 .75, 0->1 .25, 1->1 .75; window 2: 1->0 .25, 0->1 .25, 1->1 .75
    expected = (0.75 * 0.25 * 0.75 * 0.25 * 0.25 * 0.75) ** (-1 / 6)
    result = perplexity(Bigram(), windows)
    assert result["ppl"] == pytest.approx(expected, rel=1e-6)
    assert result["tokens"] == 6 and result["windows"] == 2
    assert result["window_nll"][0] == pytest.approx(-math.log(0.75 * 0.25 * 0.75) / 3, rel=1e-6)


def test_uniform_model_has_perplexity_vocab_size():
    windows = torch.randint(0, 50, (3, 9))
    result = perplexity(lambda ids: torch.zeros(*ids.shape, 50), windows, batch_size=2)
    assert result["ppl"] == pytest.approx(50.0, rel=1e-6)


def test_tiny_hf_model_perplexity_against_a_token_by_token_loop():
    model = tiny_model("llama")
    windows = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    total = 0.0
    with torch.no_grad():
        for window in windows:
            for t in range(1, window.numel()):  # each prediction from its own prefix: no shared forward pass
                logits = model(window[:t].unsqueeze(0)).logits[0, -1].double()
                total -= torch.log_softmax(logits, -1)[window[t]].item()
    expected = math.exp(total / (2 * 9))
    assert perplexity(hf_logits(model), windows)["ppl"] == pytest.approx(expected, rel=1e-4)


def test_gpt2_checkpoint_logits_match_prefix_by_prefix():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)).eval()
    ids = torch.randint(0, 11, (1, 8))
    full = gpt2_logits(model)(ids)
    with torch.no_grad():
        for t in range(1, 9):
            last = model(ids[:, :t])[0]
            assert torch.allclose(full[0, t - 1], last[0, -1], atol=1e-5)


def test_eval_windows_are_non_overlapping_and_spread():
    tokens = torch.arange(100).unsqueeze(0)
    all_windows = eval_windows(tokens, 10)
    assert all_windows.shape == (10, 10) and torch.equal(all_windows.flatten(), torch.arange(100))
    picked = eval_windows(tokens, 10, nsamples=3)
    assert picked[:, 0].tolist() == [0, 40, 90]  # first, middle (4.5 rounds to even) and last window
    with pytest.raises(consequences.UserError):
        eval_windows(tokens, 10, nsamples=11)
    with pytest.raises(consequences.UserError):
        eval_windows(tokens, 1)


# --- compression ---------------------------------------------------------------------------------------------

def test_quantization_of_known_values():
    x = torch.tensor([1.0, -0.6, 0.3, 0.0])
    # 4 bits: qmax 7, scale 1/7: 1 -> 7, -0.6 * 7 = -4.2 -> -4, 0.3 * 7 = 2.1 -> 2
    assert torch.allclose(compression.quantize_absmax(x, 4), torch.tensor([1.0, -4 / 7, 2 / 7, 0.0]))
    w = torch.tensor([[2.0, -1.0], [0.0, 0.0], [0.01, 0.004]])
    per_channel = compression.quantize_absmax(w, 8, per_channel=True)
    assert torch.allclose(per_channel[0], torch.tensor([2.0, -round(127 / 2) * 2 / 127]))
    assert torch.equal(per_channel[1], torch.zeros(2))  # an all-zero channel stays zero
    assert per_channel[2, 0] == pytest.approx(0.01) and per_channel[2, 1] == pytest.approx(0.01 * 51 / 127)
    per_tensor = compression.quantize_absmax(w, 8)
    assert per_tensor[2, 1] == 0  # 0.004 < half a step of 2/127


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantization_error_bound(bits, per_channel):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(bits)) * torch.logspace(-2, 1, 16).unsqueeze(1)
    q = compression.quantize_absmax(w, bits, per_channel)
    qmax = 2 ** (bits - 1) - 1
    absmax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().max()
    step = absmax / qmax
    assert ((q - w).abs() <= step / 2 + 1e-7).all()
    levels = torch.unique(torch.round(q / step), dim=None)
    assert levels.abs().max() <= qmax and levels.numel() <= 2 * qmax + 1
    assert torch.equal(compression.quantize_absmax(q, bits, per_channel), q)  # idempotent


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.0, 1.0])
def test_pruning_keeps_exactly_the_requested_sparsity(sparsity):
    w = torch.randint(-3, 4, (7, 9)).float()  # many ties and some zeros already
    w[w == 0] = 1.0
    pruned = compression.prune_magnitude(w, sparsity)
    n_zero = round(sparsity * w.numel())
    assert int((pruned == 0).sum()) == n_zero
    kept = pruned != 0
    assert torch.equal(pruned[kept], w[kept])  # survivors unchanged
    if 0 < n_zero < w.numel():
        assert w[kept].abs().min() >= w[~kept].abs().max()  # the smallest ones went


def test_compressed_restores_weights_and_touches_only_block_linears():
    model = tiny_model("gpt2")  # Conv1D layers: weight stored [in, out]
    blocks = ModelView(model).layers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with compression.compressed(model, blocks, "prune50") as layers:
        assert layers and all(type(m).__name__ == "Conv1D" for _, m in layers)
        for name, value in model.state_dict().items():
            if ".h." in name and name.endswith(("attn.weight", "proj.weight", "fc.weight")):
                assert (value == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)
            else:
                assert torch.equal(value, before[name]), name  # embeddings, norms, biases, head untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_compressed_restores_after_an_error():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        with compression.compressed(model, ModelView(model).layers, "w4_tensor"):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_per_channel_means_per_output_row_for_conv1d():
    """GPT-2's Conv1D stores its weight [in, out]: an output channel is a stored column, so each column gets its own
    8-bit absmax step, max |column| / 127 (by hand below); one planted large entry then coarsens only its column."""
    model = tiny_model("gpt2")
    conv = ModelView(model).layers[0].mlp.c_fc
    with torch.no_grad():
        conv.weight[3, 5] = 10.0
    original = conv.weight.detach().clone()
    step = original.abs().amax(dim=0, keepdim=True) / 127  # [1, out]
    expected = torch.round(original / step) * step
    with compression.compressed(model, ModelView(model).layers[:1], "w8_channel"):
        torch.testing.assert_close(conv.weight.detach(), expected, atol=1e-7, rtol=0)
        per_tensor = torch.round(original[:, 4] / (10.0 / 127)) * (10.0 / 127)  # the planted entry's step
        assert not torch.allclose(conv.weight[:, 4], per_tensor)


def test_w8a8_quantizes_inputs_per_tensor_and_weights_per_channel():
    torch.manual_seed(0)
    blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 4, bias=True))])
    x = torch.randn(2, 3, 6) * torch.tensor([1, 1, 1, 1, 1, 30.0])  # one outlier input channel
    linear = blocks[0][0]
    w, b = linear.weight.detach().clone(), linear.bias.detach().clone()
    step = x.abs().max() / 127
    x_q = torch.round(x / step) * step
    w_q = torch.round(w / (w.abs().amax(1, keepdim=True) / 127)) * (w.abs().amax(1, keepdim=True) / 127)
    with compression.compressed(blocks, blocks, "w8a8"):
        out = blocks[0](x)
    assert torch.allclose(out, x_q @ w_q.T + b, atol=1e-5)
    assert torch.allclose(blocks[0](x), x @ w.T + b, atol=1e-6)  # hooks gone, weights back


# --- interventions ---------------------------------------------------------------------------------------------

def test_outlier_mask_agrees_with_the_analysis_rule():
    """A planted tensor whose flagged entries are known by hand: |h| is 0.5 almost everywhere (median 0.5, so
    the threshold is max(100, 1000 x 0.5) = 500) and channel 12 is 900 at every token (its median over tokens
    900, so an entry there must exceed 1800)."""
    from lib import outliers
    h = torch.full((20, 16), 0.5)
    h[1::2] *= -1
    h[:, 12] = 900.0  # large for every token: not token-specific
    h[0, 3], h[5, 3], h[7, 9] = 3000.0, -2500.0, 1800.0
    h[9, 12] = 2000.0  # in the channel large everywhere, but more than twice its typical value
    h[2, 4] = 450.0  # under 1000 x the median
    expected = [[0, 3], [5, 3], [7, 9], [9, 12]]
    mask = interventions.outlier_mask(h)
    assert torch.nonzero(mask).tolist() == expected
    assert torch.nonzero(outliers.activation_outlier_mask(h)).tolist() == expected
    found = analysis.massive_entries(h)
    assert found["tokens"] == [0, 5, 7, 9] and found["channels"] == [3, 9, 12]
    assert sorted([t, c] for t, c, _ in found["entries"]) == expected


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_edit_changes_only_the_outlier_entries(mode):
    h = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(1))
    h[0, 0, 2], h[0, 4, 2], h[1, 3, 5], h[1, 6, 7] = 5000.0, 4000.0, -6000.0, 3000.0
    original = h.clone()
    edit = interventions.OutlierEdit(mode, {2: 111.0, 5: -222.0})
    out = edit(h, 0)
    assert torch.equal(h, original)  # returns a new tensor, input untouched
    changed = torch.nonzero(out != original).tolist()
    if mode == "zero":
        assert sorted(changed) == [[0, 0, 2], [0, 4, 2], [1, 3, 5], [1, 6, 7]]
        assert (out[out != original] == 0).all()
        assert edit.edited == 4
    else:  # channel 7 has no calibration mean: left alone and counted
        assert sorted(changed) == [[0, 0, 2], [0, 4, 2], [1, 3, 5]]
        assert out[0, 0, 2] == 111.0 and out[1, 3, 5] == -222.0
        assert edit.edited == 3 and edit.without_mean == 1
    assert edit.tokens == [[0, 4], [3, 6]]


def test_outlier_layer_and_means_on_a_planted_model():
    model = planted_llama()
    text = "Summer is warm. W Winter is cold. W and more text here"
    ids = torch.tensor([CharTokenizer().encode(text)] * 2)
    view = ModelView(model)
    scan = interventions.scan_outliers(model, lambda x: model.model(input_ids=x), ids)
    assert interventions.first_outlier_layer(scan) == interventions.dominant_outlier_layer(scan) == PLANTED
    assert interventions.dominant_channel(scan) == CHANNEL
    means = interventions.calibration_means(scan, PLANTED)
    assert CHANNEL in means and abs(means[CHANNEL]) > 1000
    with torch.no_grad():
        h = model.model(input_ids=ids[:1], output_hidden_states=True).hidden_states[PLANTED + 1][0]
    sinks = [i for i, c in enumerate(text) if c == SINK]
    assert means[CHANNEL] == pytest.approx(h[sinks, CHANNEL].mean().item(), rel=1e-4)


def test_edit_hook_in_a_model_is_removed_afterwards():
    model = planted_llama()
    ids = torch.tensor([CharTokenizer().encode("Summer is warm. W Winter is cold.")])
    view = ModelView(model)
    with torch.no_grad():
        clean = model(ids).logits
        with interventions.edit_outliers(model, PLANTED, "zero") as edit:
            edited = model(ids).logits
        again = model(ids).logits
    assert edit.edited >= 1 and not torch.allclose(clean, edited)
    assert torch.equal(clean, again)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_mask_sink_cuts_later_attention_to_the_outlier_token(family):
    """Independent check: with the sink key masked in every layer after L, the logits of the other tokens no
    longer depend on what token k carries after layer L (attention is the only path between tokens)."""
    model = tiny_model(family)
    view = ModelView(model)
    before = model.config._attn_implementation
    L, k = 0, 3
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(0))

    def plant(noise):
        def hook(module, args, output):
            h = (output[0] if isinstance(output, tuple) else output).clone()
            h[0, k, 0] = 5000.0
            h[0, k, 1:] += noise * torch.randn(h.shape[-1] - 1, generator=torch.Generator().manual_seed(1))
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return view.layers[L].register_forward_hook(hook)

    def logits(noise, masked):
        handle = plant(noise)
        try:
            with torch.no_grad():
                if not masked:
                    return model(ids).logits[0]
                with interventions.mask_sink_keys(model, L) as state:
                    out = model(ids).logits[0]
                assert set(state.keys) == set(range(L + 1, len(view.layers)))
                assert all(rows == [[k]] for rows in state.keys.values())
                return out
        finally:
            handle.remove()

    others = [i for i in range(10) if i != k]
    assert not torch.allclose(logits(0.0, False)[others], logits(200.0, False)[others], atol=1e-3)
    assert torch.allclose(logits(0.0, True)[others], logits(200.0, True)[others], atol=1e-5)
    assert not torch.allclose(logits(0.0, True), logits(0.0, False), atol=1e-4)
    assert model.config._attn_implementation == before  # restored


@pytest.mark.parametrize("variant", ["default", "attn_bias", "ca_softmax", "sigmoid", "clipped"])
def test_mask_sink_in_gpt2_variants_cuts_later_attention_to_the_outlier_token(variant):
    """The same independent check on the gpt-2/ model: after masking, the other tokens' outputs do not depend
    on what token k carries after block L, and every later block gives key k zero weight from other queries."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=12, vocab_size=64, n_layer=3, n_head=2, n_embd=16, attention=variant)).eval()
    L, k = 0, 4
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))

    def plant(noise):
        def hook(module, args, h):
            h = h.clone()
            h[:, k, 0] = 5000.0
            h[:, k, 1:] += noise * torch.randn(h.shape[-1] - 1, generator=torch.Generator().manual_seed(1))
            return h
        return model.transformer.h[L].register_forward_hook(hook)

    def run(noise, masked):
        """(last block's output, each layer's weights on the tokens), captured through the adapter."""
        handle = plant(noise)
        try:
            with torch.no_grad(), Capture(CheckpointLM(model), ["resid_post", "attn.pattern"]) as cap:
                if not masked:
                    model(ids)
                else:
                    with interventions.mask_sink_keys(model, L) as state:
                        model(ids)
                    assert set(state.keys) == {1, 2} and all(r == [[k], [k]] for r in state.keys.values())
            return cap["resid_post", 2], [cap["attn.pattern", i] for i in range(3)]
        finally:
            handle.remove()

    others = [i for i in range(12) if i != k]
    last = lambda out: out[0][:, others]
    unmasked_change = (last(run(0.0, False)) - last(run(3000.0, False))).abs().max()
    masked = run(0.0, True)
    masked_change = (last(masked) - last(run(3000.0, True))).abs().max()
    assert unmasked_change > 1e-4 and masked_change < 1e-6
    for w in masked[1][L + 1:]:  # the weights on the tokens (an extra key k' is captured apart)
        assert torch.all(w[:, :, others, k] == 0)
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())  # cleaned up
    assert all(b.attn.flash == (variant not in ("sigmoid", "clipped")) for b in model.transformer.h)
    with torch.no_grad():  # the fused path is back and unchanged
        with Capture(CheckpointLM(model), "attn.pattern"):
            explicit = model(ids)[0]
        assert torch.allclose(model(ids)[0], explicit, atol=1e-5)


def test_attention_sinks_found_and_masked_in_the_planted_llama():
    """planted.py makes every layer after PLANTED attend to the SINK character; HF's own attention weights
    (output_attentions) must show those keys found there and, under masking, receiving nothing."""
    model = planted_llama()
    model.set_attn_implementation("eager")  # HF returns attention weights from eager attention only
    text = "Summer is warm. W Winter is cold."
    ids = torch.tensor([CharTokenizer().encode(text)])
    sink = text.index(SINK)
    run = lambda x: model.model(input_ids=x)
    found = interventions.attention_sinks(model, run, ids)
    assert all(sink in found[i][0] for i in range(PLANTED + 1, 4))
    logits_fn = lambda x: model(input_ids=x, output_attentions=True).attentions
    masked_fn, state = interventions.mask_attention_sinks(model, run, logits_fn)
    with torch.no_grad():
        weights = masked_fn(ids)
        plain = model(input_ids=ids, output_attentions=True).attentions
    others = [t for t in range(ids.shape[1]) if t != sink]
    for i in range(PLANTED + 1, 4):
        assert plain[i][0, :, others[sink:], sink].mean() > 0.5  # the planted sink, unmasked
        assert torch.all(weights[i][0, :, others, sink] == 0)
    assert state.masked >= 1 and state.masked_layer_keys >= 2
    assert model.config._attn_implementation == "eager"  # restored


def _gpt2_with_a_sink_at_position_0(variant):
    """Every layer's queries are a constant (c_attn bias) and keys read channel 0, which only position 0 carries
    (a large wpe[0] entry): every query attends to position 0."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=12, vocab_size=64, n_layer=2, n_head=2, n_embd=16, bias=True,
                          attention=variant)).eval()
    with torch.no_grad():
        model.transformer.wpe.weight[0, 0] = 50.0
        for block in model.transformer.h:
            w, b = block.attn.c_attn.weight, block.attn.c_attn.bias
            w[:16] = 0.0
            b[:16] = 0.0
            b[[0, 8]] = 4.0  # query dim 0 of both heads
            w[[16, 24]] = 0.0
            w[[16, 24], 0] = 4.0  # key dim 0 of both heads reads channel 0
    return model


def gpt2_weights(model, ids):
    """Each layer's attention weights of a gpt-2/ GPT, captured through the adapter, with an extra key k' first
    where the variant has one."""
    lm = CheckpointLM(model)
    extra = ModelView(lm).has_extra_key()
    with Capture(lm, ["attn.pattern"] + ["attn.extra"] * extra) as cap:
        model(ids)
    return [torch.cat([cap["attn.extra", i][..., None], cap["attn.pattern", i]], dim=-1) if extra
            else cap["attn.pattern", i] for i in range(model.config.n_layer)]


@pytest.mark.parametrize("variant", ["default", "attn_bias", "ca_softmax"])
def test_attention_sinks_found_and_masked_in_gpt2(variant):
    model = _gpt2_with_a_sink_at_position_0(variant)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = gpt2_weights(model, ids)
    extra = plain[0].shape[-1] - 12  # attn_bias reports its extra key k' first
    assert all(w[:, :, 1:, extra].mean() > 0.5 for w in plain)
    found = interventions.attention_sinks(model, lambda x: model(x), ids)
    assert found == {0: [[0], [0]], 1: [[0], [0]]}
    masked_fn, state = interventions.mask_attention_sinks(model, None, lambda x: gpt2_weights(model, x))
    with torch.no_grad():
        masked = masked_fn(ids)
    assert all(torch.all(w[:, :, 1:, extra] == 0) for w in masked) and state.masked == 2
    control_fn, control = interventions.mask_attention_sinks(model, None, lambda x: gpt2_weights(model, x),
                                                             control=True)
    with torch.no_grad():
        controlled = control_fn(ids)
    assert all(w[:, :, 1:, extra].mean() > 0.5 for w in controlled) and control.masked == 2
    assert all(block.attn.flash and not block.attn.hook_scores._forward_hooks for block in model.transformer.h)


def test_outlier_metrics_by_hand():
    metrics = interventions.OutlierMetrics(2)
    x = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 8.0]]])  # kurtosis by hand below
    metrics(x, 0)
    metrics(x * 0.5, 1)
    # row 2: mean 2, deviations -2,-2,-2,6: var 12, 4th moment (3*16 + 1296)/4 = 336 -> 336/144
    k_rows = (1.0 + 336 / 144) / 2
    summary = metrics.summary()
    assert summary["max_inf_norm"] == 8.0 and summary["per_layer_inf_norm"] == [8.0, 4.0]
    assert summary["avg_kurtosis"] == pytest.approx(k_rows, rel=1e-6)


# --- the script -------------------------------------------------------------------------------------------------

def _args(tmp_path, *extra):
    return consequences.parser().parse_args(["--savedir", str(tmp_path), "--calib-samples", "2", *extra])


def test_run_on_a_planted_model_writes_every_number(tmp_path):
    model = planted_llama()
    ids = torch.tensor([CharTokenizer().encode(("Summer is warm. W Winter is cold. W " * 3)[:96])])
    windows, calib = ids[:, :48].repeat(2, 1), ids[:, 48:96].repeat(2, 1)
    subject = consequences.Subject("planted", "Planted Llama", model, ModelView(model).layers, hf_logits(model),
                                   lambda x: model.model(input_ids=x), windows, calib,
                                   {"source": "test", "split": "eval", "seqlen": 48, "windows": 2,
                                    "calib_windows": 2, "calib_split": "calib"})
    lines = []
    report = consequences.run(_args(tmp_path), [subject], command="python consequences.py (test)", log=lines.append)
    saved = json.loads((tmp_path / "consequences.json").read_text())
    assert saved["command"] == "python consequences.py (test)"
    result = saved["results"][0]
    assert set(result["compression"]) == set(compression.METHODS)
    sites = result["interventions"]["sites"]
    assert len(sites) == 1 and sites[0]["layer"] == PLANTED and list(sites[0]["calibration_means"]) == [str(CHANNEL)]
    assert sites[0]["zero"]["edited_entries"] > 0 and sites[0]["mask_sink"]["masked_keys_per_window"] >= 1
    assert result["interventions"]["attention_sinks"]["mask_attn_sink"]["masked_keys_per_window"] >= 1
    numbers = json.dumps(saved)
    for line in lines[:-1]:  # every printed perplexity is in the JSON
        value = line.rsplit(" ", 1)[-1]
        assert any(f"{x:.4g}" == value for x in _floats(saved)), line
    md = (tmp_path / "consequences.md").read_text()
    assert "python consequences.py (test)" in md and "| planted |" in md
    assert (tmp_path / "consequences.png").stat().st_size > 0
    assert "NaN" not in numbers
    # by hand, from the planted model: the outliers are channel CHANNEL of the sink characters at block PLANTED's
    # output; their calibration mean is that entry's mean over the calibration windows' sinks
    sink = lambda ids: ids == ord(SINK)  # noqa: E731
    with torch.no_grad():
        hidden = model.model(input_ids=calib[:, :-1], output_hidden_states=True).hidden_states[PLANTED + 1]
    mean = hidden[..., CHANNEL][sink(calib[:, :-1])].mean().item()
    assert sites[0]["calibration_means"][str(CHANNEL)] == pytest.approx(mean, rel=1e-5)
    assert result["baseline"]["ppl"] == pytest.approx(perplexity_by_hand(lambda x: model(x).logits, windows), rel=1e-5)
    assert sites[0]["zero"]["edited_entries"] == int(sink(windows[:, :-1]).sum())
    # W8A8 rounds activations: the median of jittered runs, the first run as it is, and the band they span
    w8a8 = result["compression"]["w8a8"]
    runs = w8a8["runs"]
    assert len(runs) == evaluation.JITTER_RUNS and w8a8["ppl"] == sorted(runs)[len(runs) // 2]
    with compression.compressed(model, ModelView(model).layers, "w8a8"):
        assert runs[0] == pytest.approx(perplexity_by_hand(lambda x: model(x).logits, windows), rel=1e-6)
    assert w8a8["reproducible_within"]["atol"] == pytest.approx(2 * (math.log(max(runs)) - math.log(min(runs))))

    def sinks_set_to(value):
        def logits(ids):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                h[..., CHANNEL] = torch.where(sink(ids), value, h[..., CHANNEL])
            handle = model.model.layers[PLANTED].register_forward_hook(hook)
            try:
                return model(ids).logits
            finally:
                handle.remove()
        return logits
    for mode, value in (("zero", 0.0), ("mean", sites[0]["calibration_means"][str(CHANNEL)])):
        by_hand = perplexity_by_hand(sinks_set_to(value), windows)
        assert by_hand != pytest.approx(result["baseline"]["ppl"], rel=2e-5)  # the edit shows (the model is small)
        assert sites[0][mode]["ppl"] == pytest.approx(by_hand, rel=1e-6), mode


def perplexity_by_hand(logits_of, windows):
    """exp of the mean next-token cross-entropy over the windows, each window in one forward."""
    with torch.no_grad():
        logits = logits_of(windows)[:, :-1]
    return math.exp(F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten()).item())


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)


def test_run_on_gpt2_checkpoints(tmp_path):
    from test_gpt2_capture import prepare_task
    data = prepare_task(tmp_path / "task")  # a back-copy task: 16 tokens and BOS, 13-token sequences
    paths, models = [], []
    for variant in ("default", "ca_softmax"):
        torch.manual_seed(0)
        args = dict(block_size=8, vocab_size=17, n_layer=2, n_head=2, n_embd=16, attention=variant)
        models.append(GPT(GPTConfig(**args)).eval())
        out = tmp_path / f"out-{variant}"
        out.mkdir()
        torch.save({"model": models[-1].state_dict(), "model_args": args, "iter_num": 5,
                    "config": {"dataset": data}}, out / "ckpt_5.pt")
        paths.append(str(out))
    args = _args(tmp_path / "res", "--gpt2", *paths, "--nsamples", "4", "--methods", "w8_tensor", "prune50",
                 "--interventions", "zero")
    report = consequences.run(args, log=lambda s: None)
    assert [r["name"] for r in report["results"]] == ["default", "ca_softmax"]
    assert report["results"][0]["data"]["seqlen"] == 9 and report["results"][0]["data"]["windows"] == 4
    assert (tmp_path / "res" / "consequences.md").exists()
    # by hand: the first 4 validation sequences from their first token, block_size + 1 tokens each, scored by the
    # model's own loss
    val = np.fromfile(os.path.join(data, "val.bin"), dtype=np.uint16).reshape(-1, 13)[:4, :9]
    windows = torch.from_numpy(val.astype(np.int64))
    for result, model in zip(report["results"], models):
        with torch.no_grad():
            loss = model(windows[:, :-1], targets=windows[:, 1:])[1]
        assert result["baseline"]["ppl"] == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        consequences.main(["--model", "gpt2", "--gpt2", "x", "--savedir", str(tmp_path)])
    assert e.value.code == 2 and "either --model or --gpt2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        consequences.main(["--gpt2", str(tmp_path / "missing.pt"), "--savedir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "not found" in err
    with pytest.raises(SystemExit) as e:
        consequences.main(["--outlier-factor", "1", "--savedir", str(tmp_path)])
    assert e.value.code == 2 and "--outlier-factor must be above 1" in capsys.readouterr().err


def test_a_lower_outlier_factor_flags_a_smaller_peak():
    h = torch.ones(6, 8)
    h[0, 3] = 500.0  # 500 x the median: below the default 1000x, above 100x
    assert not interventions.outlier_mask(h).any()
    lowered = interventions.Rule(factor=100)
    assert torch.nonzero(interventions.outlier_mask(h, lowered)).tolist() == [[0, 3]]
    assert "100 x median" in str(lowered) and str(interventions.DEFAULT_RULE) == analysis.ACTIVATION_RULE


def test_first_and_dominant_outlier_layers_on_a_synthetic_scan():
    """Layer 0: a small outlier in channel 1 in every window; layers 2-3: a huge one in channel 4 in 2 of 3
    windows; layer 1: an outlier in only 1 of 3 windows (not an outlier layer)."""
    def entry(channel=None, value=0.0):
        mask = torch.zeros(3, 6, dtype=torch.bool)
        if channel is not None:
            mask[1, channel] = True
        return mask, torch.tensor([value]) if channel is not None else torch.zeros(0)
    scan = [[entry(1, 500.0), entry(1, 600.0), entry(4, 9e4), entry(4, -1e5)],
            [entry(1, 500.0), entry(), entry(4, 8e4), entry(4, 9e4)],
            [entry(1, 500.0), entry(), entry(), entry()]]
    assert interventions.outlier_layers(scan) == [0, 2, 3]
    assert interventions.first_outlier_layer(scan) == 0
    assert interventions.dominant_channel(scan) == 4
    assert interventions.dominant_outlier_layer(scan) == 2
    assert interventions.calibration_means(scan, 3) == {4: pytest.approx(-5e3)}
    assert interventions.first_outlier_layer([[entry()]]) is None


def test_random_key_control_masks_as_many_other_tokens():
    keys = {1: [[0, 5], [7]], 2: [[0], []]}
    state = interventions.SinkMask(control=True, seed=3)
    state.set({i: [list(r) for r in rows] for i, rows in keys.items()}, 12)
    assert [len(k) for k in state.keys[1]] == [2, 1] and state.masked == 3 and state.masked_layer_keys == 4
    assert not set(state.keys[1][0]) & {0, 5} and 7 not in state.keys[1][1]
    assert set(state.keys[2][0]) < set(state.keys[1][0])  # one swap per window, the same in every layer
    again = interventions.SinkMask(control=True, seed=3)
    again.set({i: [list(r) for r in rows] for i, rows in keys.items()}, 12)
    assert again.keys == state.keys  # seeded
    mask = torch.zeros(2, 1, 12, 12)
    edit = interventions.KeyMaskEdit(state)
    query = key = torch.zeros(2, 4, 12, 8)
    masked = edit.mask(1, query, key, mask)
    for b, row in enumerate(state.keys[1]):
        for k in row:
            blocked = masked[b, 0, :, k] < -1e30
            assert blocked.sum() == 11 and not blocked[k]  # every query but the key itself
    assert (masked == 0).sum() == mask.numel() - 11 * 3
    assert torch.equal(edit.mask(0, query, key, mask), mask)  # nothing at layer 0
    visible = edit.mask(1, query, key, None)  # plain causal (sdpa's None): a causal bool mask with the keys hidden
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    for b, row in enumerate(state.keys[1]):
        expected = causal.clone()
        expected[:, row] = False
        expected[row, row] = True
        assert torch.equal(visible[b, 0], expected)


def test_paired_change_against_the_baseline_by_hand():
    base = {"ppl": 2.0, "nll": 0.7, "window_nll": [1.0, 2.0, 3.0]}
    measured = {"ppl": 3.0, "nll": 1.1, "window_nll": [1.5, 2.1, 3.6]}  # changes 0.5, 0.1, 0.6
    out = summarize(measured, base)
    assert "window_nll" not in out and out["ppl"] == 3.0
    assert out["nll_change"] == pytest.approx(0.4)
    sd = math.sqrt(((0.1) ** 2 + (0.3) ** 2 + (0.2) ** 2) / 2)
    assert out["nll_change_stderr"] == pytest.approx(sd / math.sqrt(3))


# --- the user's perplexity and what each intervention reports -------------------------------------------------

def test_model_perplexity_against_a_token_by_token_loop():
    """lib.perplexity.model_perplexity on a Hugging Face model (one sequence whose first token is a BOS), on a gpt-2/
    GPT and on load_model's wrapper of it (windows): each prediction made from its own prefix, the BOS and the first
    text token never targets."""
    from lib.gpt2_checkpoints import CheckpointLM
    from lib.perplexity import model_perplexity

    def loop(next_logits, rows, prefix):
        nll, count = 0.0, 0
        with torch.no_grad():
            for row in rows:
                for t in range(prefix + 1, row.numel()):
                    nll -= torch.log_softmax(next_logits(row[:t].unsqueeze(0)).double(), -1)[row[t]].item()
                    count += 1
        return math.exp(nll / count)

    model = tiny_model("llama")
    ids = torch.randint(0, 128, (12,), generator=torch.Generator().manual_seed(1))
    expected = loop(lambda x: model(x).logits[0, -1], [ids], prefix=1)
    assert model_perplexity(model, ids, prefix=1)["ppl"] == pytest.approx(expected, rel=1e-4)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)).eval()
    windows = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(2))
    expected = loop(lambda x: gpt(x)[0][0, -1], windows, prefix=0)
    assert model_perplexity(gpt, windows)["ppl"] == pytest.approx(expected, rel=1e-4)
    assert model_perplexity(CheckpointLM(gpt), windows)["ppl"] == pytest.approx(expected, rel=1e-4)


def test_every_intervention_reports_what_it_did():
    """Each report against what the forward shows: the entries edit_outliers reports are exactly those whose value
    changed (the planted sink's channel), and the keys a mask reports are exactly those that later queries no longer
    attend to, in exactly the layers it names."""
    from lib import scale_test
    from monkey_patch import Capture
    model = planted_llama()
    text = "Summer is warm. W Winter is cold."
    ids = torch.tensor([CharTokenizer().encode(text)] * 2)
    sinks, n_layers = [i for i, c in enumerate(text) if c == SINK], 4  # "W" and the W of "Winter"
    sink = sinks[0]
    with torch.no_grad(), Capture(model, "resid_post", layers=[PLANTED]) as clean:
        model(ids)
    with torch.no_grad(), interventions.edit_outliers(model, PLANTED, "zero") as edit, \
            Capture(model, "resid_post", layers=[PLANTED]) as edited:
        model(ids)
    changed = torch.nonzero(edited["resid_post", PLANTED] != clean["resid_post", PLANTED]).tolist()
    report = edit.report()
    assert [[b, t, c] for b, entries in enumerate(report["entries"]) for t, c in entries] == changed == \
        [[b, t, CHANNEL] for b in range(2) for t in sinks]
    assert (report["layer"], report["edited"], report["outlier_tokens"]) == (PLANTED, 4, [sinks, sinks])
    assert f"at layer {PLANTED}" in str(edit) and "4 entries set to zero" in str(edit)

    def attended(state_context):
        """Per layer: is any later query's attention on the first sink nonzero? And the context's state."""
        with torch.no_grad(), state_context as state, Capture(model, "attn.pattern") as cap:
            model(ids)
        return [bool(cap["attn.pattern", i][:, :, sink + 1:, sink].abs().max() > 0) for i in range(n_layers)], state

    seen, state = attended(interventions.mask_keys(model, [sink], layers=[2, 3]))
    assert seen == [True, True, False, False]
    assert state.report()["keys"] == [[{"layers": [2, 3], "keys": [[sink]]}]]  # one list: every sequence's
    assert state.report()["forwards"] == 1 and f"keys [[{sink}]] masked in layers 2-3" in str(state)
    seen, state = attended(interventions.mask_sink_keys(model, PLANTED))
    later = list(range(PLANTED + 1, n_layers))
    assert seen == [layer not in later for layer in range(n_layers)]
    assert state.report()["keys"] == [[{"layers": later, "keys": [sinks, sinks]}]] and state.report()["layers"] == later
    seen, state = attended(interventions.mask_sink_keys(model, PLANTED, control=True))
    groups = state.report()["keys"][0]
    assert all(seen) and len(groups) == 1 and groups[0]["layers"] == later
    assert all(len(row) == 2 and not set(row) & set(sinks) for row in groups[0]["keys"])
    assert "control" in state.report()["intervention"]
    masked_fn, state = interventions.mask_attention_sinks(model, lambda x: model.model(input_ids=x),
                                                          lambda x: model(input_ids=x).logits)
    with torch.no_grad():
        masked_fn(ids[:1])
    found = {layer for g in state.report()["keys"][0] if sink in g["keys"][0] for layer in g["layers"]}
    assert set(later) <= found and state.report()["forwards"] == 1
    test = scale_test.ScaleTest("mask")
    test.keys = {layer: [[sink], [sink]] for layer in later}
    with torch.no_grad(), scale_test.scale_test(model, test):
        model(ids)
    assert test.report()["keys"] == [[{"layers": later, "keys": [[sink], [sink]]}]] and test.report()["forwards"] == 1
    assert test.report()["mode"] == "mask" and "treated in layers" in str(test)
    for state in (edit, state, test):
        json.dumps(state.report())
