"""gpt-2/: the optimizer switch (adamw, sgd, muon) and the norm switch (layernorm, rmsnorm, rmsnorm_single),
each checked against a hand computation; checkpoints resume with the same choice; a fresh run never writes
into another run's folder."""
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from lib.configurator import UserError
from lib.gpt2_checkpoints import read_checkpoint

GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2")
sys.path.insert(0, GPT2)
import train  # noqa: E402
from model import GPT, NORMS, VARIANTS, GPTConfig  # noqa: E402
from test_gpt2_train import data, tiny_args  # noqa: E402,F401  (the module's dataset fixture)


def tiny(norm="layernorm", attention="default"):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, norm=norm, attention=attention))


@pytest.mark.parametrize("norm", NORMS)
def test_norms_match_a_hand_computation(norm):
    model = tiny(norm)
    ln = model.transformer.h[0].ln_1
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(0.5, 2.0, ln.weight.numel()))
    x = torch.randn(3, 5, 8)
    xd = x.double().numpy()
    g = ln.weight.detach().double().numpy()
    if norm == "layernorm":
        want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * g
    else:
        want = xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6) * g
    assert ln.weight.numel() == (1 if norm == "rmsnorm_single" else 8)
    np.testing.assert_allclose(ln(x).detach().double().numpy(), want, rtol=1e-5, atol=1e-6)


def one_step(model, kind, lr=1e-2, wd=0.1, muon_lr=2e-2):
    """Parameters before and after one optimizer step on a fixed batch, and their gradients."""
    opts = model.configure_optimizers(wd, lr, (0.9, 0.95), "cpu", kind, 0.9, muon_lr)
    x = torch.randint(0, 11, (2, 8))
    model(x, x)[1].backward()
    before = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone().double() for n, p in model.named_parameters()}
    for opt in opts:
        opt.step()
    after = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    return before, grads, after


def adamw_first_step(p, g, lr, wd, eps=1e-8):
    """AdamW's first update: the bias-corrected moments are g and g^2, so the step is lr * g / (|g| + eps)."""
    return p * (1 - lr * wd) - lr * g / (g.abs() + eps)


def newton_schulz_by_hand(m, steps=5, coefficients=(3.4445, -4.7750, 2.0315)):
    """Muon's quintic iteration in float64 numpy, on the wide orientation of m."""
    a, b, c = coefficients
    x = m.numpy().astype(np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(np.linalg.norm(x), 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_adamw_step_by_hand():
    before, grads, after = one_step(tiny(), "adamw")
    for name in before:
        wd = 0.1 if before[name].dim() == 2 else 0.0
        want = adamw_first_step(before[name], grads[name], 1e-2, wd)
        torch.testing.assert_close(after[name], want, rtol=1e-5, atol=1e-7)


def test_sgd_step_by_hand():
    before, grads, after = one_step(tiny(), "sgd")
    for name in before:  # the first momentum buffer is the gradient itself; SGD's decay is added to it
        wd = 0.1 if before[name].dim() == 2 else 0.0
        torch.testing.assert_close(after[name], before[name] - 1e-2 * (grads[name] + wd * before[name]),
                                   rtol=1e-5, atol=1e-7)


def test_muon_step_by_hand_on_hidden_matrices_and_adamw_on_the_rest():
    model = tiny("rmsnorm_single", "ca_softmax")
    hidden = {id(p) for p in model.hidden_matrices()}
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight"} <= names
    assert "lm_head.weight" not in names and all(".h." in n for n in names)
    before, grads, after = one_step(model, "muon", lr=1e-2, wd=0.1, muon_lr=2e-2)
    for name in before:
        if name in names:
            # momentum buffer g, Nesterov g + 0.95 g (the scale cancels in the normalisation), orthogonalised;
            # Moonshot's rate 0.2 * lr * sqrt(max(A, B)); decoupled decay lr * wd.
            o = torch.from_numpy(newton_schulz_by_hand(1.95 * grads[name]))
            rate = 0.2 * 2e-2 * math.sqrt(max(before[name].shape))
            want = before[name] * (1 - 2e-2 * 0.1) - rate * o
            torch.testing.assert_close(after[name], want, rtol=1e-4, atol=1e-6)
            # what makes it Muon: the gradient's singular vectors with singular values pulled towards 1
            u, s, vh = torch.linalg.svd(grads[name], full_matrices=False)
            d = u.T @ o @ vh.T
            assert (d - torch.diag(torch.diag(d))).abs().max() < 1e-6 * d.abs().max()
            pulled = torch.diag(d)[s > 0.1 * s.max()]  # directions the gradient really has
            assert pulled.min() > 0.3 and pulled.max() < 1.5, torch.diag(d)
        else:
            wd = 0.1 if before[name].dim() == 2 else 0.0
            torch.testing.assert_close(after[name], adamw_first_step(before[name], grads[name], 1e-2, wd),
                                       rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_with_muon_and_single_scale_norm(variant, data, tmp_path):  # noqa: F811
    history = train.main(tiny_args(data, tmp_path, variant, optimizer="muon", muon_lr=2e-2, norm="rmsnorm_single",
                                   max_iters=12, eval_interval=6))
    assert np.mean([history[i] for i in range(9, 12)]) < np.mean([history[i] for i in range(3)])
    ckpt = read_checkpoint(str(tmp_path / "ckpt_12.pt"), "cpu")
    assert ckpt["model_args"]["norm"] == "rmsnorm_single" and len(ckpt["optimizer"]) == 2


@pytest.mark.parametrize("optimizer,norm", [("muon", "rmsnorm_single"), ("sgd", "rmsnorm"), ("adamw", "layernorm")])
def test_resume_continues_with_the_same_choice(optimizer, norm, data, tmp_path):  # noqa: F811
    kw = dict(optimizer=optimizer, norm=norm, learning_rate=1e-2 if optimizer != "sgd" else 0.1)
    history = train.main(tiny_args(data, tmp_path / "a", "default", max_iters=20, **kw))
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "ckpt_10.pt", tmp_path / "b" / "ckpt_10.pt")
    # the checkpoint's architecture wins over the command line's, so the norm need not be repeated
    resumed = train.main(tiny_args(data, tmp_path / "b", "default", init_from="resume", max_iters=13,
                                   **{k: v for k, v in kw.items() if k != "norm"}))
    for i in (10, 11, 12):
        assert resumed[i] == pytest.approx(history[i], abs=1e-6)
    other = "adamw" if optimizer != "adamw" else "sgd"
    with pytest.raises(UserError, match=f"resume it with that optimizer"):
        train.main(tiny_args(data, tmp_path / "b", "default", init_from="resume", optimizer=other))


def test_muon_lr_without_muon_is_refused(data, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="only with --optimizer=muon"):
        train.main(tiny_args(data, tmp_path, "default", muon_lr=0.02))


def test_a_fresh_run_refuses_a_folder_holding_another_run(data, tmp_path):  # noqa: F811
    train.main(tiny_args(data, tmp_path / "run", "default", max_iters=20))
    before = {f: (tmp_path / "run" / f).read_bytes() for f in os.listdir(tmp_path / "run")}
    with pytest.raises(UserError, match="holds another run .*--init_from=resume.*--overwrite=True"):
        train.main(tiny_args(data, tmp_path / "run", "default", max_iters=10))
    assert {f: (tmp_path / "run" / f).read_bytes() for f in os.listdir(tmp_path / "run")} == before
    train.main(tiny_args(data, tmp_path / "run", "default", max_iters=10, overwrite=True))
    assert sorted(os.listdir(tmp_path / "run")) == ["ckpt_10.pt", "train_log.jsonl"]
    aside = [d for d in os.listdir(tmp_path) if d.startswith("run.old-")]
    assert len(aside) == 1
    assert {f: (tmp_path / aside[0] / f).read_bytes() for f in os.listdir(tmp_path / aside[0])} == before


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(data, tmp_path, monkeypatch):  # noqa: F811
    train.main(tiny_args(data, tmp_path, "default", max_iters=10))

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies after writing the temporary file, before the rename
    monkeypatch.setattr(train.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_args(data, tmp_path, "default", init_from="resume", max_iters=20))
    monkeypatch.undo()
    assert [f for f in os.listdir(tmp_path) if f.startswith("ckpt_") and f.endswith(".pt")] == ["ckpt_10.pt"]
    assert read_checkpoint(str(tmp_path / "ckpt_10.pt"), "cpu")["iter_num"] == 10
    resumed = train.main(tiny_args(data, tmp_path, "default", init_from="resume", max_iters=12))
    assert sorted(resumed) == [10, 11]
