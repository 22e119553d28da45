"""gpt-2/model.py: every attention variant against a hand-written reference of its formula (the paper's),
causal masking, identity checks against the default variant, config errors, and the model as nanoGPT writes it
(forward gives (logits, loss); hidden states, weights and key masks reach it through monkey_patch's adapter)."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gpt-2"))
from model import GPT, VARIANTS, ConfigError, GPTConfig  # noqa: E402
from lib.gpt2_checkpoints import CheckpointLM  # noqa: E402
from lib.interventions import mask_keys  # noqa: E402
from monkey_patch import Capture  # noqa: E402



def tiny(variant, **kw):
    args = dict(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16, attention=variant)
    args.update(kw)
    return GPTConfig(**args)


def randomize_extras(model, seed=0):
    """The extra parameters start at identity-like values; give them random ones so the checks bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("k_extra", "v_extra", "scale_proj", "gate_proj")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model


def reference_attention(attn, x, blocked=()):
    """(output, weights) of the variant's formula for one attention layer, written query by query with no fused
    kernel; the weights (B, nh, T, T), with k' in an extra first column for attn_bias and softmax1. No query but
    the key's own token sees the keys `blocked`."""
    B, T, C = x.shape
    nh, hd = attn.n_head, attn.head_dim
    q, k, v = attn.c_attn(x).split(C, dim=2)
    heads = lambda t: t.view(B, T, nh, hd).transpose(1, 2)
    q, k, v = heads(q), heads(k), heads(v)
    out = torch.zeros(B, nh, T, hd)
    extra = attn.variant in ("attn_bias", "softmax1")
    weights = torch.zeros(B, nh, T, T + extra)
    for t in range(T):
        s = q[:, :, t:t + 1] @ k[:, :, :t + 1].transpose(-2, -1) / math.sqrt(hd)  # (B, nh, 1, t+1)
        s = s[:, :, 0]
        for j in blocked:
            if j < t:
                s[..., j] = float("-inf")
        A = torch.exp(s - s.amax(-1, keepdim=True))
        A = A / A.sum(-1, keepdim=True)
        V = v[:, :, :t + 1]
        av = torch.einsum("bhk,bhkd->bhd", A, V)
        weights[:, :, t, extra:extra + t + 1] = A
        if attn.variant in ("default", "ca_softmax", "gated"):
            y = av
        elif attn.variant == "vbias":
            y = av + attn.v_extra[:, 0]
        elif attn.variant in ("cabias", "attn_bias", "softmax1"):
            if attn.variant == "softmax1":
                ke, ve = torch.zeros(nh, hd), torch.zeros(nh, hd)
            else:
                ke, ve = attn.k_extra[:, 0], attn.v_extra[:, 0]
            se = torch.einsum("bhd,hd->bh", q[:, :, t], ke) / math.sqrt(hd)
            full = torch.cat([se[..., None], s], dim=-1)
            P = torch.exp(full - full.amax(-1, keepdim=True))
            P = P / P.sum(-1, keepdim=True)
            if attn.variant == "cabias":  # A V + softmax(Q[k';K])[v'; 0]
                y = av + P[..., :1] * ve
            else:  # softmax(Q[k';K])[v'; V]
                y = P[..., :1] * ve + torch.einsum("bhk,bhkd->bhd", P[..., 1:], V)
                weights[:, :, t, :t + 2] = P
        elif attn.variant == "sigmoid":
            W = 1 / (1 + torch.exp(-(s - math.log(T))))
            y = torch.einsum("bhk,bhkd->bhd", W, V)
            weights[:, :, t, :t + 1] = W
        elif attn.variant == "clipped":
            W = torch.clamp((attn.clip_zeta - attn.clip_gamma) * A + attn.clip_gamma, 0, 1)
            y = torch.einsum("bhk,bhkd->bhd", W, V)
            weights[:, :, t, :t + 1] = W
        out[:, :, t] = y
    if attn.variant == "ca_softmax":
        S = 2 / (1 + torch.exp(-attn.scale_proj(x)))  # (B, T, nh)
        out = out * S.transpose(1, 2)[..., None]
    out = out.transpose(1, 2).reshape(B, T, C)
    if attn.variant == "gated":
        out = out * (1 / (1 + torch.exp(-attn.gate_proj(x))))
    return attn.c_proj(out), weights


def explicit_run(attn, x):
    """(output, weights) of one attention module on its explicit path (`flash` off, as nanoGPT's switch), the
    weights read by a forward hook on hook_pattern."""
    seen = []
    handle = attn.hook_pattern.register_forward_hook(lambda m, args, w: seen.append(w))
    flash, attn.flash = attn.flash, False
    try:
        return attn(x), seen[0]
    finally:
        attn.flash = flash
        handle.remove()


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_matches_reference_formula(variant):
    torch.manual_seed(0)
    model = randomize_extras(GPT(tiny(variant, clip_gamma=-0.1, clip_zeta=1.1))).eval()
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight.mul_(20)  # sharper attention than at init, so mistakes show
        x = torch.randn(3, 9, 16)
        fused = attn(x)
        explicit, w = explicit_run(attn, x)
        ref, ref_w = reference_attention(attn, x)
    assert torch.allclose(fused, ref, atol=1e-5), (fused - ref).abs().max()
    assert torch.allclose(explicit, ref, atol=1e-5), (explicit - ref).abs().max()
    assert w.shape == ref_w.shape and torch.allclose(w, ref_w, atol=1e-6), (w - ref_w).abs().max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_causal_masking(variant):
    torch.manual_seed(1)
    model = randomize_extras(GPT(tiny(variant))).eval()
    idx = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        out = model(idx, targets=idx)
        assert type(out) is tuple and len(out) == 2  # nanoGPT's (logits, loss)
        logits, loss = out
        assert logits.shape == (2, 12, 37) and loss.ndim == 0
        logits, loss = model(idx)
        assert logits.shape == (2, 1, 37) and loss is None
        changed = idx.clone()
        changed[:, 7:] = (changed[:, 7:] + 5) % 37  # change the future
        a, b = model(idx, targets=idx)[0], model(changed, targets=changed)[0]
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def copy_shared(src, dst):
    """Load the default model's weights into a variant (the variant's extra parameters keep theirs)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(any(s in m for s in ("extra", "scale_proj", "gate_proj")) for m in missing)


def test_attn_bias_with_zero_value_and_very_negative_key_logit_equals_default():
    torch.manual_seed(2)
    default = GPT(tiny("default", bias=True)).eval()
    biased = GPT(tiny("attn_bias", bias=True)).eval()
    copy_shared(default, biased)
    u = torch.ones(8) / math.sqrt(8)  # a unit vector in each head's 8-dim query/key space
    with torch.no_grad():
        for bd, bb in zip(default.transformer.h, biased.transformer.h):
            # the same query bias 100 u in both models; k' = -100 u gives q.k'/sqrt(8) ~ -3500 for every query
            for m in (bd, bb):
                m.attn.c_attn.bias[:16].copy_(torch.cat([100 * u, 100 * u]))
            bb.attn.k_extra.copy_((-100 * u).expand(2, 1, 8))
            bb.attn.v_extra.zero_()
        idx = torch.randint(0, 37, (2, 10))
        a, b = default(idx, idx)[1], biased(idx, idx)[1]
        with Capture(CheckpointLM(biased), "attn.extra") as cap:
            biased(idx)
    assert max(float(cap["attn.extra", i].max()) for i in range(2)) < 1e-30  # the extra key really gets nothing
    assert torch.allclose(a, b, atol=1e-5)


def test_ca_softmax_with_scale_one_equals_default_and_not_otherwise():
    torch.manual_seed(3)
    default = GPT(tiny("default")).eval()
    ca = GPT(tiny("ca_softmax")).eval()
    copy_shared(default, ca)
    idx = torch.randint(0, 37, (2, 10))
    with torch.no_grad():
        for block in ca.transformer.h:  # S(x) = 2 sigmoid(0) = 1
            block.attn.scale_proj.weight.zero_()
            block.attn.scale_proj.bias.zero_()
        assert torch.allclose(default(idx, idx)[0], ca(idx, idx)[0], atol=1e-6)
        for block in ca.transformer.h:
            block.attn.scale_proj.bias.fill_(1.0)
        assert not torch.allclose(default(idx, idx)[1], ca(idx, idx)[1], atol=1e-4)


def test_vbias_adds_a_per_head_vector():
    """The reference broadcast a d-wide bias onto per-head outputs; here v' is one head_dim vector per head: with the
    default model's weights and an identity output projection, vbias's attention output is default's plus head h's
    v' in channels h*8..h*8+7, at every token (A's rows sum to one, so A (V + v') = A V + v')."""
    torch.manual_seed(4)
    default, vbias = GPT(tiny("default")).eval(), GPT(tiny("vbias")).eval()
    copy_shared(default, vbias)
    planted = torch.arange(16, dtype=torch.float32).view(2, 1, 8) - 7.5  # head 0: -7.5..-0.5, head 1: 0.5..7.5
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        vbias.transformer.h[0].attn.v_extra.copy_(planted)
        for model in (default, vbias):
            model.transformer.h[0].attn.c_proj.weight.copy_(torch.eye(16))
        difference = vbias.transformer.h[0].attn(x) - default.transformer.h[0].attn(x)
    torch.testing.assert_close(difference, (torch.arange(16.0) - 7.5).expand(2, 5, 16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [dict(attention="softmax2"), dict(n_embd=15), dict(n_layer=0), dict(dropout=1.5),
                                 dict(clip_gamma=0.2)])
def test_bad_model_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        tiny("default", **bad) if "attention" not in bad else GPTConfig(attention=bad["attention"])
    with pytest.raises(ConfigError, match="unknown model setting"):
        GPTConfig.from_dict(dict(n_layers=3))


def test_parameter_names_stay_those_of_existing_checkpoints():
    """Checkpoints written before the variants became classes load only if every name stays the same."""
    expected = {"default": set(), "vbias": {"v_extra"}, "cabias": {"k_extra", "v_extra"},
                "attn_bias": {"k_extra", "v_extra"}, "softmax1": set(), "sigmoid": set(), "clipped": set(),
                "ca_softmax": {"scale_proj.weight", "scale_proj.bias"},
                "gated": {"gate_proj.weight", "gate_proj.bias"}}
    assert set(expected) == set(VARIANTS)
    for variant, extra in expected.items():
        names = {n[len("transformer.h.0.attn."):] for n in GPT(tiny(variant)).state_dict()
                 if n.startswith("transformer.h.0.attn.")}
        assert names == {"c_attn.weight", "c_proj.weight"} | extra, variant
    for pos, has_table in (("learned", True), ("rope", False), ("none", False)):
        assert ("transformer.wpe.weight" in GPT(tiny("default", pos_emb=pos)).state_dict()) == has_table


FUSED = [v for v in VARIANTS if GPT(tiny(v)).transformer.h[0].attn.fused is not None]


@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("variant", FUSED)
def test_fused_path_equals_explicit_path_in_training(variant, T):
    """Training runs the fused (SDPA) path; its output and every gradient must be those of the explicit path."""
    torch.manual_seed(4)
    attn = randomize_extras(GPT(tiny(variant))).train().transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight.mul_(20)
    x = torch.randn(3, T, 16, requires_grad=True)
    grad_out = torch.randn(3, T, 16)
    results, explicit_calls = [], []
    attn.hook_pattern.register_forward_hook(lambda m, args, w: explicit_calls.append(len(results)))
    for flash in (True, False):
        attn.flash = flash
        y = attn(x)
        params = [x, *attn.parameters()]
        results.append((y, torch.autograd.grad(y, params, grad_out)))
    assert explicit_calls == [1]  # the fused path really ran, then the explicit one
    (fused, fused_grads), (explicit, explicit_grads) = results
    assert torch.allclose(fused, explicit, atol=1e-5), (fused - explicit).abs().max()
    for (name, _), a, b in zip([("x", x), *attn.named_parameters()], fused_grads, explicit_grads):
        assert torch.allclose(a, b, atol=1e-4), (name, (a - b).abs().max())


@pytest.mark.parametrize("variant", FUSED)
def test_fused_paths_give_sdpa_the_causal_flag_and_no_mask(variant, monkeypatch):
    """An explicit mask rules out SDPA's flash kernels on a GPU; every fused path passes is_causal instead."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    model = GPT(tiny(variant)).eval()
    with torch.no_grad():
        model(torch.randint(0, 37, (2, 8)))
    assert calls and all(c.get("attn_mask") is None and c.get("is_causal") for c in calls), calls


def plain_attributes(model):
    """Every module's attributes other than submodules, parameters, buffers and hooks, by module name."""
    return {name: {k: v for k, v in vars(m).items() if not k.startswith("_")} for name, m in model.named_modules()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_capture_and_key_masks_through_the_adapter_equal_a_hand_computation(variant):
    """Through monkey_patch (the nanogpt adapter on CheckpointLM) with keys 2 and 4 masked in layer 1: each layer's
    captured weights and attention output equal the reference formula on the captured attention input, masked by
    hand; the first block's output equals the block written out from its modules; the model comes back as it was."""
    torch.manual_seed(5)
    gpt = randomize_extras(GPT(tiny(variant))).eval()
    with torch.no_grad():
        for block in gpt.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    before = plain_attributes(gpt)
    extra = variant in ("attn_bias", "softmax1")
    ids = torch.randint(0, 37, (2, 9))
    points = ["ln1", "attn.pattern", "attn_out", "resid_post"] + ["attn.extra"] * extra
    with torch.no_grad(), Capture(CheckpointLM(gpt), points) as cap, mask_keys(gpt, [2, 4], layers=[1]):
        gpt(ids)
    for layer, blocked in ((0, ()), (1, (2, 4))):
        with torch.no_grad():
            y, w = reference_attention(gpt.transformer.h[layer].attn, cap["ln1", layer], blocked)
        got = cap["attn.pattern", layer]
        if extra:
            got = torch.cat([cap["attn.extra", layer][..., None], got], dim=-1)
        torch.testing.assert_close(got, w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cap["attn_out", layer], y, atol=1e-5, rtol=1e-4)
    block = gpt.transformer.h[0]
    with torch.no_grad():
        x = gpt.transformer.wte(ids) + gpt.transformer.wpe(torch.arange(9))
        x = x + reference_attention(block.attn, block.ln_1(x))[0]
        x = x + block.mlp(block.ln_2(x))
    torch.testing.assert_close(cap["resid_post", 0], x, atol=1e-5, rtol=1e-4)
    assert plain_attributes(gpt) == before
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in gpt.modules())


def test_the_model_holds_no_intervention_state():
    """Each attention module's own attributes are its configuration and nanoGPT's `flash` switch, nothing an
    intervention sets; `flash` is on exactly where there is a fused kernel."""
    for variant in VARIANTS:
        for block in GPT(tiny(variant)).transformer.h:
            attn = block.attn
            own = {k for k in vars(attn) if not k.startswith("_")}
            assert own <= {"training", "variant", "n_head", "n_embd", "head_dim", "attn_dropout", "rotary", "flash",
                           "clip_gamma", "clip_zeta"}, own
            assert attn.flash == (variant not in ("sigmoid", "clipped"))
