"""gpt-2 checkpoints through the capture adapter (lib/gpt2_checkpoints.py, family `nanogpt`): captured tensors
against a forward pass written out by hand from the checkpoint's weights, the variant-only capture points, the
figure suite end to end on a checkpoint folder, and bad prompts."""
import argparse
import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from lib import cli, gpt2_checkpoints, gpt2_data
from lib.errors import UserError
from lib.models import load_model
from lib.paper_figures import FIGURES
from monkey_patch import Capture, CaptureError

GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2")
sys.path.insert(0, GPT2)
from model import GPT, GPTConfig  # noqa: E402

POINTS = ["resid_pre", "resid_post", "ln1", "ln2", "attn.v", "attn.scores", "attn.pattern", "attn.z", "attn_out", "mlp.up_out",
          "mlp.act_out", "mlp.down_in", "mlp.down_out"]


def save_checkpoint(out, variant, dataset=None, pos_emb="learned", seed=0):
    """A random-weight GPT (its extra parameters random too) saved as train.py saves one."""
    torch.manual_seed(seed)
    args = dict(block_size=12, vocab_size=17, n_layer=2, n_head=2, n_embd=16, attention=variant, pos_emb=pos_emb)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in ("k_extra", "v_extra", "scale_proj")):
                p.copy_(torch.randn(p.shape) * 0.7)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 7, "config": {"dataset": dataset}},
               out / "ckpt_7.pt")
    return out


def rotary_by_hand(x):
    """Rotary embedding of x (1, nh, T, hd), written out per position: dims i and i + hd/2 are turned together by
    the angle t / 10000^(2i/hd) (the pairing gpt-2/model.py documents)."""
    hd = x.shape[-1]
    out = torch.empty_like(x)
    for t in range(x.shape[2]):
        for i in range(hd // 2):
            angle = t / 10000 ** (2 * i / hd)
            a, b = x[:, :, t, i], x[:, :, t, i + hd // 2]
            out[:, :, t, i] = a * math.cos(angle) - b * math.sin(angle)
            out[:, :, t, i + hd // 2] = a * math.sin(angle) + b * math.cos(angle)
    return out


def hand_forward(sd, cfg, ids):
    """Every capture point of every layer, computed from the state dict with plain tensor algebra."""
    T, C, nh = ids.shape[1], cfg["n_embd"], cfg["n_head"]
    hd = C // nh
    pos_emb = cfg.get("pos_emb", "learned")
    x = sd["transformer.wte.weight"][ids] + (sd["transformer.wpe.weight"][:T] if pos_emb == "learned" else 0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    out = []
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        got = {"resid_pre": x}
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"])
        got["ln1"] = h
        q, k, v = (h @ sd[p + "attn.c_attn.weight"].T).split(C, dim=-1)
        got["attn.v"] = v.view(1, T, nh, hd)
        q, k, v = (t.view(1, T, nh, hd).transpose(1, 2) for t in (q, k, v))
        if pos_emb == "rope":
            q, k = rotary_by_hand(q), rotary_by_hand(k)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~causal, float("-inf"))
        got["attn.scores"] = scores  # the tokens' scores: an extra key k' has its own column in the weights only
        if cfg["attention"] == "attn_bias":
            extra = q @ sd[p + "attn.k_extra"].transpose(-1, -2) / math.sqrt(hd)  # (1, nh, T, 1)
            weights = torch.softmax(torch.cat([extra, scores], dim=-1), dim=-1)
            got["attn.extra"], pattern = weights[..., 0], weights[..., 1:]
            z = weights[..., :1] * sd[p + "attn.v_extra"] + pattern @ v
        else:
            pattern = torch.softmax(scores, dim=-1)
            z = pattern @ v
        got["attn.pattern"] = pattern
        if cfg["attention"] == "ca_softmax":
            scale = 2 * torch.sigmoid(h @ sd[p + "attn.scale_proj.weight"].T + sd[p + "attn.scale_proj.bias"])
            got["attn.scale"] = scale
            z = z * scale.transpose(1, 2)[..., None]
        got["attn.z"] = z.transpose(1, 2)
        a = z.transpose(1, 2).reshape(1, T, C) @ sd[p + "attn.c_proj.weight"].T
        got["attn_out"] = a
        x = x + a
        h2 = F.layer_norm(x, (C,), sd[p + "ln_2.weight"])
        got["ln2"] = h2
        up = h2 @ sd[p + "mlp.c_fc.weight"].T
        act = 0.5 * up * (1 + torch.erf(up / math.sqrt(2)))
        down = act @ sd[p + "mlp.c_proj.weight"].T
        got.update({"mlp.up_out": up, "mlp.act_out": act, "mlp.down_in": act, "mlp.down_out": down})
        x = x + down
        got["resid_post"] = x
        out.append(got)
    return out


@pytest.mark.parametrize("variant, pos_emb", [("default", "learned"), ("attn_bias", "learned"),
                                              ("ca_softmax", "learned"), ("default", "rope"), ("attn_bias", "rope"),
                                              ("default", "none")])
def test_captured_tensors_equal_a_hand_computed_forward(variant, pos_emb, tmp_path):
    path = save_checkpoint(tmp_path / "out", variant, pos_emb=pos_emb)
    model, _, spec = load_model(str(path))
    assert spec.name == "out" and spec.seqlen == 12 and model.config.model_type == "nanogpt"
    ckpt = torch.load(path / "ckpt_7.pt", weights_only=True)
    ids = torch.tensor([[16, 3, 5, 1, 9, 9, 2, 14, 0, 7]])
    extra = {"default": [], "attn_bias": ["attn.extra"], "ca_softmax": ["attn.scale"]}[variant]
    with Capture(model, POINTS + extra) as cap:
        model.base_model(ids)
    expected = hand_forward(ckpt["model"], ckpt["model_args"], ids)
    for layer, want in enumerate(expected):
        for point in POINTS + extra:
            torch.testing.assert_close(cap[point, layer], want[point].float(), atol=2e-5, rtol=1e-4,
                                       msg=f"{point} at layer {layer}")
    if variant == "attn_bias":  # attention on the tokens plus on k' makes one
        total = cap["attn.pattern", 0].sum(-1) + cap["attn.extra", 0]
        torch.testing.assert_close(total, torch.ones_like(total))


def test_weights_and_variant_only_points(tmp_path):
    model, _, _ = load_model(str(save_checkpoint(tmp_path / "d", "default")))
    view = Capture(model, ["resid_post"]).view
    gpt = model.gpt
    torch.testing.assert_close(view.weight(1, "down"), gpt.transformer.h[1].mlp.c_proj.weight)
    torch.testing.assert_close(view.weight(0, "k"), gpt.transformer.h[0].attn.c_attn.weight[16:32])
    assert "attn.scale" not in view.supported_points() and "attn.extra" not in view.supported_points()
    assert "attn.scores" in view.supported_points()  # on the explicit path's hook point
    for point in ("attn.scale", "attn.extra", "attn.q_rot", "attn.k_rot"):
        with pytest.raises(CaptureError):
            Capture(model, [point])
    model, _, _ = load_model(str(save_checkpoint(tmp_path / "c", "ca_softmax") / "ckpt_7.pt"))
    assert "attn.scale" in Capture(model, ["resid_post"]).view.supported_points()


def prepare_task(path):
    """A small back-copy task (gpt-2/data/backcopy/prepare.py) under `path`: 16 tokens and BOS (16), 13 per sequence."""
    sys.path.insert(0, os.path.join(GPT2, "data", "backcopy"))
    import prepare as prep
    prep.main([f"--out_dir={path}", "--vocab=16", "--seq_len=13", "--train_seqs=50", "--val_seqs=20",
               "--offsets=[1, 2]", "--triggers=1", "--design=bos"])
    return str(path)


def test_figure_suite_runs_on_a_checkpoint_folder(tmp_path):
    data = prepare_task(tmp_path / "task")
    out = save_checkpoint(tmp_path / "out-tiny", "attn_bias", dataset=data)
    args = cli.parser().parse_args(["--model", str(out), "--savedir", str(tmp_path / "figs"), "--nsamples", "3",
                                    "--outlier-factor", "10", "--outlier-min-abs", "0"])
    results = cli.run(list(FIGURES), args)
    assert set(results) == set(FIGURES)
    layer = json.loads((tmp_path / "figs" / "out-tiny" / "pos_activation_outliers_layer.json").read_text())
    assert layer["calibration"]["data"].endswith("(val)") and layer["calibration"]["nsamples"] == 3
    assert layer["rule"].startswith("|h| > 0 and > 10 x median")
    emergence = results["lifecycle_emergence"]
    first = gpt2_data.dataset_windows(data, "val", 12, 1)[0]
    assert emergence["token_text"] == ("<bos>" if emergence["token"] == 0 else str(int(first[emergence["token"]])))
    assert int(first[0]) == 16  # the default prompt is the first validation sequence, BOS first


def test_task_prompts_and_bad_checkpoints_are_clear_errors(tmp_path):
    data = prepare_task(tmp_path / "task")
    _, tokenizer, spec = load_model(str(save_checkpoint(tmp_path / "o", "default", dataset=data)))
    assert tokenizer.encode("<bos> 3 15") == [16, 3, 15]
    assert tokenizer.convert_ids_to_tokens([16, 4]) == ["<bos>", "4"]
    with pytest.raises(UserError, match="space-separated list of token ids 0..16 or <bos>"):
        tokenizer.encode("Summer is warm")
    assert spec.default_prompt[0] == 16 and len(spec.default_prompt) == 12
    with pytest.raises(UserError, match="unknown device 'foo'"):  # not blamed on the checkpoint
        load_model(str(tmp_path / "o"), device="foo")
    with pytest.raises(UserError, match="unknown device 'foo'"):  # consequences.py --gpt2 loads through here
        gpt2_checkpoints.load_gpt(str(tmp_path / "o"), "foo")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "ckpt_3.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a train.py checkpoint"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "pickled").mkdir()  # a Python object in a checkpoint: safe loading refuses to run its code
    torch.save({"model_args": argparse.Namespace(n_layer=1)}, tmp_path / "pickled" / "ckpt_1.pt")
    with pytest.raises(UserError, match="safe loading refuses"):
        load_model(str(tmp_path / "pickled"))
    with pytest.raises(SystemExit) as e:
        cli.main("lifecycle_emergence", ["--model", str(tmp_path / "o"), "--prompt", "hello",
                                         "--savedir", str(tmp_path / "f")])
    assert e.value.code == 2


def test_reproduce_runs_several_models_and_summarizes_them(tmp_path):
    data = prepare_task(tmp_path / "task")
    a = save_checkpoint(tmp_path / "out-a", "default", dataset=data)
    b = save_checkpoint(tmp_path / "out-b", "ca_softmax", dataset=data, seed=1)
    cli.reproduce_main(["--model", f"{a},{b}", "--savedir", str(tmp_path / "figs"), "--nsamples", "2",
                        "--summary", "--consequences-dir", str(tmp_path / "none")])
    assert (tmp_path / "figs" / "out-a" / "index.md").is_file() and (tmp_path / "figs" / "out-b" / "index.md").is_file()
    rows = json.loads((tmp_path / "figs" / "summary.json").read_text())["models"]
    assert [r["model"] for r in rows] == ["out-a", "out-b"]
    with pytest.raises(SystemExit) as e:
        cli.reproduce_main(["--model", f"{a},", "--savedir", str(tmp_path / "figs")])
    assert e.value.code == 2
