"""The sink-as-scale counterfactuals (lib/scale_test.py): the algebra on a hand-built attention, the identities
between modes on tiny Hugging Face and gpt-2 models, a planted zero-value sink that masking plus the oracle scale
must undo exactly, the calibration fits, and the consequences.py wiring."""
import math
import os
import sys

import numpy as np
import pytest
import torch

from lib import interventions, scale_test
from lib.perplexity import hf_logits
from lib.tiny_models import tiny_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2"))
from model import GPT, GPTConfig  # noqa: E402



def hand_attention(q, k, v):
    """run(value, hidden) of plain causal softmax attention, for apply()."""
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def run(new_value, hidden):
        visible = causal if hidden is None else causal & ~hidden
        w = torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~visible, float("-inf")), dim=-1)
        return w @ (v if new_value is None else new_value), w
    return run


def state_for(mode, keys, heads=2):
    state = scale_test.ScaleTest(mode)
    state.keys = keys
    state.const = {0: torch.full((heads,), 0.5)}
    state.fitted = {0: (torch.zeros(heads, 4), torch.zeros(heads))}  # 2 sigmoid(0) = 1
    return state


def test_the_modes_on_a_hand_built_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g) for _ in range(3))
    k[:, :, 0] = q.mean(dim=2) * 3  # key 0 draws attention: a sink
    run, x = hand_attention(q, k, v), torch.randn(1, 6, 4, generator=g)
    out = {m: scale_test.apply(state_for(m, {0: [[0]]}), 0, run, q, v, x) for m in scale_test.MODES}
    full, w = run(None, None)
    a_s = w[..., 0].clone()
    a_s[..., 0] = 0.0  # the sink's own row keeps it
    torch.testing.assert_close(out["oracle_scale"], out["drop_sink_value"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["sink_value_only"], out["drop_sink_value"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["drop_sink_value"][:, :, 1:], (full - w[..., :1] * v[:, :, :1])[:, :, 1:])
    torch.testing.assert_close(out["oracle_scale"], (1 - a_s)[..., None] * out["mask"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["const_scale"][:, :, 1:], 0.5 * out["mask"][:, :, 1:])
    torch.testing.assert_close(out["fitted_scale"], out["mask"])
    for m in scale_test.MODES:  # the first row can only see key 0, its own: untouched by every mode
        torch.testing.assert_close(out[m][:, :, 0], full[:, :, 0])
    v_zero = v.clone()
    v_zero[:, :, 0] = 0.0  # a sink whose value is exactly zero: masking plus the oracle scale is the identity
    run_zero = hand_attention(q, k, v_zero)
    torch.testing.assert_close(scale_test.apply(state_for("oracle_scale", {0: [[0]]}), 0, run_zero, q, v_zero, x),
                               run_zero(None, None)[0], atol=1e-6, rtol=1e-5)


def gpt2_tiny(variant="default", vocab_size=37):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16,
                          attention=variant)).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(10)  # sharp attention, so a wrong mask shows
    return model


def logits_with(model, mode, keys, fn):
    state = state_for(mode, keys)
    with scale_test.scale_test(model, state), torch.no_grad():
        return fn()


@pytest.mark.parametrize("kind", ["hf", "gpt2", "gpt2_attn_bias"])
def test_mode_identities_on_tiny_models(kind):
    ids = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(1))
    if kind == "hf":
        model = tiny_model("llama")
        fn = lambda: model(input_ids=ids).logits  # noqa: E731
    else:
        model = gpt2_tiny("attn_bias" if kind.endswith("attn_bias") else "default")
        fn = lambda: model(ids, targets=torch.full_like(ids, -1))[0]  # noqa: E731
    with torch.no_grad():
        plain = fn()
    keys = {layer: [[0, 3], [0]] for layer in range(2)}
    out = {m: logits_with(model, m, keys, fn) for m in ("mask", "oracle_scale", "drop_sink_value", "sink_value_only")}
    torch.testing.assert_close(out["oracle_scale"], out["drop_sink_value"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["sink_value_only"], out["drop_sink_value"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out["mask"], plain, atol=1e-3)
    torch.testing.assert_close(logits_with(model, "mask", {}, fn), plain)  # no sink keys: nothing changes
    masking = interventions.SinkMask()  # the existing masking gives the same masked forward
    masking.keys = {layer: [list(r) for r in rows] for layer, rows in keys.items()}
    with interventions.masking(model, masking), torch.no_grad():
        torch.testing.assert_close(out["mask"], fn(), atol=1e-4, rtol=1e-4)


def _attributes(model):
    """Each module's public attributes and how many hooks it holds."""
    return {name: ({k: v for k, v in vars(m).items() if not k.startswith("_")}, len(m._forward_hooks),
                   len(m._forward_pre_hooks)) for name, m in model.named_modules()}


@pytest.mark.parametrize("variant", ["default", "attn_bias", "ca_softmax"])
def test_a_gpt2_scale_test_sets_nothing_on_the_model(variant):
    """lib/ sets no attribute on the GPT's modules: between forwards the modules are as before (monkey_patch wraps
    an attention module's explicit path only while that module runs), and after the test as well."""
    model = gpt2_tiny(variant)
    ids = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(1))
    before = _attributes(model)
    seen = []
    with torch.no_grad(), scale_test.scale_test(model, state_for("oracle_scale", {0: [[0]], 1: [[0, 2]]})):
        attn = model.transformer.h[1].attn
        handle = attn.c_proj.register_forward_hook(lambda m, args, out: seen.append(
            {k for k in vars(attn) if not k.startswith("_")} - set(before["transformer.h.1.attn"][0])))
        model(ids)
        handle.remove()
        assert _attributes(model) != before  # the test's hooks are on
        assert {n: a[0] for n, a in _attributes(model).items()} == {n: a[0] for n, a in before.items()}
    assert seen == [{"explicit"}]  # within the layer's call, monkey_patch's wrapper of its explicit path
    assert _attributes(model) == before


def test_a_planted_zero_value_sink_is_only_a_scale():
    """Token 0's value zeroed in every layer of a tiny Llama: masking it and scaling by 1 - a_s changes nothing."""
    model = tiny_model("llama")
    handles = [layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor([0]), 0.0))
               for layer in model.model.layers]
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            plain = model(input_ids=ids).logits
        keys = {layer: [[0]] for layer in range(len(model.model.layers))}
        scaled = logits_with(model, "oracle_scale", keys, lambda: model(input_ids=ids).logits)
        masked = logits_with(model, "mask", keys, lambda: model(input_ids=ids).logits)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(scaled, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked, plain, atol=1e-4)


def test_measure_calibrates_and_reports_every_mode():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(3)
    windows, calib = torch.randint(0, 128, (3, 17), generator=g), torch.randint(0, 128, (4, 17), generator=g)
    from lib.perplexity import perplexity
    run = lambda ids: model(input_ids=ids)  # noqa: E731
    baseline = perplexity(hf_logits(model), windows)
    report = scale_test.measure(model, run, hf_logits(model), windows, calib, baseline, log=lambda s: None)
    assert set(report["modes"]) == set(scale_test.MODES)
    assert all("nll_change_stderr" in m for m in report["modes"].values())
    for layer in report["layers"].values():
        assert 0 <= layer["a_s_mean"] <= 1 and len(layer["const_scale"]) == 4 and layer["fit_held_out"]
        assert layer["queries"] > 0 and layer["sink_value_ratio_median"] > 0
    assert report["modes"]["oracle_scale"]["ppl"] == pytest.approx(report["modes"]["drop_sink_value"]["ppl"], rel=1e-4)
    # by hand, from HF's eager attention weights on each calibration window (what the model sees of it) and that
    # window's sink keys: a_s is a query's attention on the sink keys before it, over the queries that have one
    eager = tiny_model("llama", attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    kept = {}
    for window in calib[:, :-1]:
        ids = window[None]
        sinks = interventions.attention_sinks(model, run, ids)
        with torch.no_grad():
            attentions = eager(ids, output_attentions=True).attentions
        for layer, weights in enumerate(attentions):
            keys = torch.zeros(ids.shape[1], dtype=torch.bool)
            keys[sinks[layer][0]] = True
            before = keys[None, :] & torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril(-1)  # [query, key]
            queries = before.any(dim=1)
            a_s = (weights[0] * before).sum(dim=-1)[:, queries]  # [heads, queries with a sink key]
            kept.setdefault(layer, []).append(1 - a_s.T)
    assert set(report["layers"]) == {layer for layer, rows in kept.items() if sum(len(r) for r in rows)}
    for layer, entry in report["layers"].items():
        by_hand = torch.cat(kept[layer])  # [queries, heads]
        assert entry["queries"] == by_hand.shape[0]
        assert entry["a_s_mean"] == pytest.approx(1 - by_hand.mean().item(), rel=1e-4)
        assert entry["const_scale"] == pytest.approx(by_hand.mean(dim=0).tolist(), abs=1e-4)


def test_consequences_runs_the_scale_test_on_gpt2_checkpoints(tmp_path):
    import consequences
    from test_evaluation import _gpt2_with_a_sink_at_position_0
    from test_gpt2_capture import prepare_task
    data = prepare_task(tmp_path / "task")  # 16 tokens and BOS; sequences of 13 = block_size + 1
    model = _gpt2_with_a_sink_at_position_0("default")  # every query attends to position 0
    out = tmp_path / "out-default"
    out.mkdir()
    args = dict(block_size=12, vocab_size=64, n_layer=2, n_head=2, n_embd=16, bias=True, attention="default")
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 1, "config": {"dataset": data}},
               out / "ckpt_1.pt")
    parsed = consequences.parser().parse_args(["--gpt2", str(out), "--savedir", str(tmp_path / "res"), "--methods",
                                               "--interventions", "--scale-test", "--nsamples", "4",
                                               "--calib-samples", "4"])
    report = consequences.run(parsed, log=lambda s: None)
    test = report["results"][0]["scale_test"]
    assert set(test["modes"]) == set(scale_test.MODES)
    assert "Is the sink only a scale?" in (tmp_path / "res" / "consequences.md").read_text()
    # by hand: mask mode on the first 4 validation sequences (read with numpy) is the model with each layer's sink
    # keys, found per window, hidden from every other query (the existing masking), scored by its own loss
    val = np.fromfile(os.path.join(data, "val.bin"), dtype=np.uint16).reshape(-1, 13)[:4]
    windows = torch.from_numpy(val.astype(np.int64))
    losses = []
    for window in windows[:, None]:
        masking = interventions.SinkMask()
        masking.keys = interventions.attention_sinks(model, None, window[:, :-1])
        with interventions.masking(model, masking), torch.no_grad():
            losses.append(model(window[:, :-1], targets=window[:, 1:])[1].item())
    assert test["modes"]["mask"]["ppl"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert test["modes"]["mask"]["ppl"] != pytest.approx(report["results"][0]["baseline"]["ppl"], rel=1e-3)
