"""gpt-2/model.py: every attention variant against a hand-written reference of its formula (the paper's),
causal masking, identity checks against the default variant, and config errors."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "gpt-2"))
from model import GPT, VARIANTS, ConfigError, GPTConfig  # noqa: E402



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


def reference_attention(attn, x):
    """The variant's formula for one attention layer, written query by query with no fused kernel."""
    B, T, C = x.shape
    nh, hd = attn.n_head, attn.head_dim
    q, k, v = attn.c_attn(x).split(C, dim=2)
    heads = lambda t: t.view(B, T, nh, hd).transpose(1, 2)
    q, k, v = heads(q), heads(k), heads(v)
    out = torch.zeros(B, nh, T, hd)
    for t in range(T):
        s = q[:, :, t:t + 1] @ k[:, :, :t + 1].transpose(-2, -1) / math.sqrt(hd)  # (B, nh, 1, t+1)
        s = s[:, :, 0]
        A = torch.exp(s - s.amax(-1, keepdim=True))
        A = A / A.sum(-1, keepdim=True)
        V = v[:, :, :t + 1]
        av = torch.einsum("bhk,bhkd->bhd", A, V)
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
        elif attn.variant == "sigmoid":
            y = torch.einsum("bhk,bhkd->bhd", 1 / (1 + torch.exp(-(s - math.log(T)))), V)
        elif attn.variant == "clipped":
            W = torch.clamp((attn.clip_zeta - attn.clip_gamma) * A + attn.clip_gamma, 0, 1)
            y = torch.einsum("bhk,bhkd->bhd", W, V)
        out[:, :, t] = y
    if attn.variant == "ca_softmax":
        S = 2 / (1 + torch.exp(-attn.scale_proj(x)))  # (B, T, nh)
        out = out * S.transpose(1, 2)[..., None]
    out = out.transpose(1, 2).reshape(B, T, C)
    if attn.variant == "gated":
        out = out * (1 / (1 + torch.exp(-attn.gate_proj(x))))
    return attn.c_proj(out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_matches_reference_formula(variant):
    torch.manual_seed(0)
    model = randomize_extras(GPT(tiny(variant, clip_gamma=-0.1, clip_zeta=1.1))).eval()
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight.mul_(20)  # sharper attention than at init, so mistakes show
        x = torch.randn(3, 9, 16)
        fused, _ = attn(x)
        explicit, w = attn(x, need_weights=True)
        ref = reference_attention(attn, x)
    assert torch.allclose(fused, ref, atol=1e-5), (fused - ref).abs().max()
    assert torch.allclose(explicit, ref, atol=1e-5), (explicit - ref).abs().max()
    assert w.shape[-1] == 9 + (variant in ("attn_bias", "softmax1"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_causal_masking(variant):
    torch.manual_seed(1)
    model = randomize_extras(GPT(tiny(variant))).eval()
    idx = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        out = model(idx, targets=idx, return_hidden=True)
        assert out.logits.shape == (2, 12, 37) and out.loss.ndim == 0
        assert len(out.hidden) == 2 and out.hidden[0].shape == (2, 12, 16) and out.attn is None
        plain = model(idx)
        assert plain.logits.shape == (2, 1, 37) and plain.loss is None and plain.hidden is None
        changed = idx.clone()
        changed[:, 7:] = (changed[:, 7:] + 5) % 37  # change the future
        a = model(idx, targets=idx, return_hidden=True).hidden[-1]
        b = model(changed, targets=changed, return_hidden=True).hidden[-1]
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
        a, b = default(idx, idx).loss, biased(idx, idx).loss
        s = biased(idx, need_weights=True).attn
    assert max(float(w[..., 0].max()) for w in s) < 1e-30  # the extra key really gets nothing
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
        assert torch.allclose(default(idx, idx, return_hidden=True).hidden[-1],
                              ca(idx, idx, return_hidden=True).hidden[-1], atol=1e-6)
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
        difference = vbias.transformer.h[0].attn(x)[0] - default.transformer.h[0].attn(x)[0]
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
    results = []
    for need_weights in (False, True):
        y, w = attn(x, need_weights=need_weights)
        assert (w is None) != need_weights  # the fused path really ran, then the explicit one
        params = [x, *attn.parameters()]
        results.append((y, torch.autograd.grad(y, params, grad_out)))
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
