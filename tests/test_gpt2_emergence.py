"""The emergence study's pieces (gpt-2/): the per-layer verdict on planted activations, the position switch,
fresh-data training that resumes exactly, the random-entry control of the zeroing intervention, and
emergence.py's table."""
import json
import os
import sys

import numpy as np
import pytest
import torch

GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2")
sys.path.insert(0, GPT2)
import train  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from outlier_stats import key_shares, layer_report, peak_ablation, verdict  # noqa: E402
from task import sample_design  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def prepare(path, design="bos", seq_len=17):
    sys.path.insert(0, os.path.join(GPT2, "data", "backcopy"))
    import prepare as prep
    prep.main([f"--out_dir={path}", "--vocab=16", f"--seq_len={seq_len}", "--train_seqs=200", "--val_seqs=40",
               "--offsets=[1, 2]", "--triggers=1", f"--design={design}"])
    return str(path)


def tiny(n_layer=3, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=17, n_layer=n_layer, n_head=2, n_embd=32, **kw)).eval()


# --- the verdict ---------------------------------------------------------------------------------------------

def planted_report(layer, writer, n_layer=3):
    """Block `layer` (0-based) writes a 500-high entry at position 0, channel 5, through its MLP (writer
    'mlp') or the embedding carries it (writer 'embed'); position 0 is made a sink of block 2 by hooks."""
    model = tiny(n_layer)
    seqs = torch.randint(0, 17, (4, 16), generator=torch.Generator().manual_seed(1))

    def plant(module, args, out):
        out = out.clone()
        out[:, 0, 5] += 500.0
        return out
    hooks = []
    if writer == "mlp":
        hooks.append(model.transformer.h[layer].mlp.register_forward_hook(plant))
    else:
        hooks.append(model.transformer.h[0].register_forward_pre_hook(lambda m, a: (plant(m, a, a[0]),) + a[1:]))

    def sink(module, args, out):  # block 2's attention: all mass of every query on key 0
        y, w = out
        w = torch.zeros_like(w)
        w[..., 0] = 1.0
        return y, w
    hooks.append(model.transformer.h[n_layer - 1].attn.register_forward_hook(sink))
    try:
        return layer_report(model, seqs)
    finally:
        for h in hooks:
            h.remove()


def test_an_mlp_written_peak_on_a_sink_token_before_the_last_block_is_a_systematic_outlier():
    r = planted_report(layer=0, writer="mlp")
    first = r["layers"][0]
    assert first["token"] == 0 and first["channel"] == 5 and first["writer"] == "mlp1"
    assert first["ratio"] > 100 and first["embed_share"] < 0.1
    assert first["token_attention"][2] == pytest.approx(1.0)
    assert r["verdict"]["outliers"] and [v["layer"] for v in r["verdict"]["layers"]] == [1, 2]
    assert r["verdict"]["layers"][0]["sink_layers"] == [3]
    assert "last block" in r["verdict"]["rejected"][3]


def test_peak_ablation_zeroes_the_planted_peak_and_nothing_else():
    """Block 0's MLP plants 500 at position 0, channel 5 (and 300 in channel 9: a peak over two channels); the
    ablation must zero exactly those two entries: its loss equals the loss with both set to 0 by hand."""
    model = tiny(3)
    seqs = torch.randint(0, 17, (4, 16), generator=torch.Generator().manual_seed(1))

    def plant(value5, value9):
        def hook(module, args, out):
            out = out.clone()
            out[:, 0, 5] += value5
            out[:, 0, 9] += value9
            return out
        return model.transformer.h[0].mlp.register_forward_hook(hook)

    def loss_with_block0_output_zeroed_at(channels):
        def hook(module, args, out):
            out[0][:, 0, channels] = 0.0
        h = model.transformer.h[0].register_forward_hook(hook)
        try:
            return float(model(seqs[:, :-1], targets=seqs[:, 1:]).loss.detach())
        finally:
            h.remove()
    handle = plant(500.0, 300.0)
    try:
        report = layer_report(model, seqs)
        rows = peak_ablation(model, seqs, report)
        by_hand = loss_with_block0_output_zeroed_at([5, 9])
        planted = float(model(seqs[:, :-1], targets=seqs[:, 1:]).loss.detach())
    finally:
        handle.remove()
    first = rows[0]
    assert [r["layer"] for r in rows] == [1, 2] and first["token"] == 0 and first["channels"] == [5, 9]
    assert first["loss"] == pytest.approx(planted, abs=1e-6)
    assert first["loss_zeroed"] == pytest.approx(by_hand, abs=1e-6) and first["loss_zeroed"] != pytest.approx(planted)
    assert len(first["share_before"]) == len(first["share_after"]) == 3


def test_a_last_block_peak_is_not_counted_even_on_a_sink():
    r = planted_report(layer=2, writer="mlp")
    assert r["layers"][2]["ratio"] > 100 and r["layers"][2]["writer"] == "mlp3"
    assert not r["verdict"]["outliers"] and "last block" in r["verdict"]["rejected"][3]
    assert r["max_over_layers"] > 100  # the old max-over-layers column would have called it an outlier


def test_an_embedding_peak_is_not_counted():
    r = planted_report(layer=0, writer="embed")
    assert r["layers"][0]["embed_share"] > 0.9
    assert not r["verdict"]["outliers"] and "embedding" in r["verdict"]["rejected"][1]


def test_a_peak_on_a_token_that_is_no_sink_is_not_counted():
    layers = [dict(layer=1, ratio=300.0, token=0, channel=1, embed_share=0.0, writer="mlp1", token_attention=[0.2, 0.3, 0.1]),
              dict(layer=2, ratio=20.0, token=4, channel=1, embed_share=0.0, writer="mlp2", token_attention=[0.0, 0.0, 0.0]),
              dict(layer=3, ratio=20.0, token=4, channel=1, embed_share=0.0, writer="mlp3", token_attention=[0.0, 0.0, 0.0])]
    v = verdict(layers)
    assert not v["outliers"] and "no sink" in v["rejected"][1]


def test_key_shares_is_the_mean_weight_over_queries_after_the_first():
    T = 5
    w = torch.tril(torch.ones(T, T))
    w = (w / w.sum(-1, keepdim=True))[None, None]  # uniform causal attention
    s = key_shares(w, T)
    expected = [sum(1 / (q + 1) for q in range(max(k, 1), T)) / (T - 1) for k in range(T)]
    assert s.tolist() == pytest.approx(expected)


def test_writer_decomposition_sums_to_the_peak():
    model = tiny()
    seqs = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(2))
    for r in layer_report(model, seqs)["layers"]:
        assert sum(r["contributions"].values()) == pytest.approx(r["value"], rel=1e-4, abs=1e-5)


# --- the position switch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos_emb", ["rope", "none"])
def test_rope_and_none_have_no_position_vector_and_position_0_sees_only_itself(pos_emb):
    model = tiny(pos_emb=pos_emb)
    assert model.transformer.wpe is None and "transformer.wpe.weight" not in model.state_dict()
    a = torch.tensor([[3, 1, 4, 1, 5, 9]])
    b = torch.tensor([[3, 2, 7, 1, 8, 2]])
    ha = model(a, return_hidden=True).hidden
    hb = model(b, return_hidden=True).hidden
    for x, y in zip(ha, hb):  # position 0's output depends only on its own token, never on a position vector
        assert torch.allclose(x[0, 0], y[0, 0], atol=1e-6)
    moved = model(torch.tensor([[5, 3, 1, 4]]), return_hidden=True).hidden  # token 3 at position 1
    if pos_emb == "none":  # without positions a lone token is the same at any position it is first...
        assert torch.allclose(ha[-1][0, 0], model(torch.tensor([[3]]), return_hidden=True).hidden[-1][0, 0], atol=1e-6)
    assert not torch.allclose(moved[-1][0, 1], ha[-1][0, 0], atol=1e-4)  # ...but not after another token


def test_rope_rotates_scores_by_relative_position_only():
    from model import rotate
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def score(i, j):
        qs = rotate(q.expand(1, 1, 10, 8).clone())[..., i, :]
        ks = rotate(k.expand(1, 1, 10, 8).clone())[..., j, :]
        return float((qs * ks).sum())
    assert score(5, 3) == pytest.approx(score(4, 2), abs=1e-5) == pytest.approx(score(9, 7), abs=1e-5)
    assert score(5, 3) != pytest.approx(score(5, 1), abs=1e-3)


@pytest.mark.parametrize("pos_emb", ["learned", "rope", "none"])
def test_each_position_setting_trains_saves_and_loads(pos_emb, tmp_path):
    data = prepare(tmp_path / "d")
    out = tmp_path / "o"
    args = [f"--dataset={data}", f"--out_dir={out}", "--block_size=16", "--batch_size=8", "--gradient_accumulation_steps=1",
            "--n_layer=2", "--n_head=2", "--n_embd=16", f"--pos_emb={pos_emb}", "--max_iters=20", "--eval_interval=10",
            "--eval_iters=2", "--learning_rate=1e-2", "--warmup_iters=2", "--lr_decay_iters=20", "--device=cpu"]
    history = train.main(args)
    assert np.mean([history[i] for i in range(15, 20)]) < history[0]
    from outlier_stats import load_model
    model, ckpt = load_model(str(out / "ckpt_20.pt"))
    assert model.config.pos_emb == pos_emb and ckpt["model_args"]["pos_emb"] == pos_emb


def test_old_checkpoints_without_pos_emb_load_as_learned():
    cfg = GPTConfig.from_dict(dict(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=8))
    assert cfg.pos_emb == "learned"


# --- fresh data, SGD, stats during training -----------------------------------------------------------------

@pytest.mark.parametrize("design", ["bos", "nobos", "random_first"])
def test_designs_put_the_special_token_where_they_say(design, tmp_path):
    import pickle
    meta = pickle.load(open(os.path.join(prepare(tmp_path, design), "meta.pkl"), "rb"))
    seqs = sample_design(50, 17, meta, np.random.default_rng(0))
    special = seqs == 16
    assert seqs.shape == (50, 17)
    if design == "bos":
        assert special[:, 0].all() and not special[:, 1:].any()
    elif design == "nobos":
        assert not special.any()
    else:
        assert special[:, 1].all() and not special[:, 0].any() and not special[:, 2:].any()
        assert len(set(seqs[:, 0].tolist())) > 5  # the first token varies


def fresh_args(data, out, **kw):
    args = dict(dataset=data, out_dir=str(out), fresh_data=True, block_size=16, batch_size=8, gradient_accumulation_steps=1,
                n_layer=2, n_head=2, n_embd=16, learning_rate=1e-2, warmup_iters=2, lr_decay_iters=30, max_iters=30,
                eval_interval=10, eval_iters=2, stats_interval=10, stats_seqs=8, log_interval=100, device="cpu")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fresh_data_training_resumes_exactly_and_logs_stats(optimizer, tmp_path):
    data = prepare(tmp_path / "d", seq_len=17)
    kw = dict(optimizer=optimizer) if optimizer == "adamw" else dict(optimizer="sgd", learning_rate=0.1, weight_decay=0.0)
    history = train.main(fresh_args(data, tmp_path / "a", **kw))
    train.main(fresh_args(data, tmp_path / "b", max_iters=20, **kw))
    resumed = train.main(fresh_args(data, tmp_path / "b", init_from="resume", max_iters=30, **kw))
    assert sorted(resumed) == list(range(20, 30))
    for i in resumed:
        assert resumed[i] == pytest.approx(history[i], abs=1e-6)
    stats = [json.loads(line) for line in open(tmp_path / "b" / "stats.jsonl")]
    assert [s["iter"] for s in stats] == [0, 10, 20, 30]  # the resumed run rewrote step 20 and went on
    assert len(stats[0]["layers"]) == 2 and "outliers" in stats[0]


def test_fresh_data_batches_do_not_repeat(tmp_path):
    from dataset import FreshBatches
    data = prepare(tmp_path)
    batches = FreshBatches(data, 8, 16, seed=0, chunk=4)
    seen = {tuple(row.tolist()) for _ in range(20) for row in batches.next()[0]}
    assert len(seen) > 150  # 160 rows drawn from a process with far more possible sequences


def test_max_seconds_stops_and_saves(tmp_path):
    data = prepare(tmp_path / "d")
    history = train.main(fresh_args(data, tmp_path / "o", max_iters=100000, max_seconds=1.0, stats_interval=0))
    assert 0 < len(history) < 100000
    assert train.checkpoints(str(tmp_path / "o"))[-1][0] == len(history)


def test_fresh_data_needs_a_synthetic_task(tmp_path):
    from configurator import UserError
    d = tmp_path / "plain"
    d.mkdir()
    np.arange(5000, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(5000, dtype=np.uint16).tofile(d / "val.bin")
    with pytest.raises(UserError, match="bigram"):
        train.main(fresh_args(str(d), tmp_path / "o"))


# --- the zeroing control and the table ----------------------------------------------------------------------

def test_zero_random_zeroes_as_many_unflagged_entries():
    sys.path.insert(0, os.path.join(GPT2, ".."))
    from lib import interventions
    h = torch.randn(1, 16, 32)
    h[0, 0, 3] = 5000.0
    h[0, 7, 3] = 4000.0
    edit = interventions.OutlierEdit("zero_random", rule=interventions.Rule(factor=100))
    out = edit(0, h)
    assert edit.edited == 2
    assert out[0, 0, 3] == 5000.0 and out[0, 7, 3] == 4000.0  # the outliers themselves are kept
    assert int((out == 0).sum()) == 2


def test_emergence_table_judges_each_run(tmp_path):
    import emergence
    data = prepare(tmp_path / "d")
    for variant in ("default", "ca_softmax"):
        train.main(fresh_args(data, tmp_path / variant, attention=variant, max_iters=20))
    rows = emergence.main([f"--runs={[str(tmp_path / 'default'), str(tmp_path / 'ca_softmax')]}",
                           f"--results_dir={tmp_path / 'res'}", "--n_seqs=8", "--eval_iters=2", "--plot=True"])
    assert [r["attention"] for r in rows] == ["default", "ca_softmax"]
    table = json.load(open(tmp_path / "res" / "table.json"))
    assert table["criteria"]["ratio"] == 100.0 and len(table["rows"]) == 2
    assert table["rows"][0]["trajectory"]["steps"] == [0, 10, 20]
    for name in ("table.md", "trajectories.png", "convergence.png"):
        assert (tmp_path / "res" / name).exists()
    assert "max over layers (old)" in open(tmp_path / "res" / "table.md").read()


def test_pack_runs_bundles_weights_without_optimizer_state(tmp_path):
    import subprocess
    import tarfile
    data = prepare(tmp_path / "d")
    run = tmp_path / "out-emergence-default"
    train.main(fresh_args(data, run, max_iters=10))
    dest = tmp_path / "packed"
    subprocess.run([sys.executable, os.path.join(GPT2, "results", "emergence", "pack_runs.py"), str(dest), str(run),
                    "--max_mb=0.01"], check=True, capture_output=True)
    files = sorted(os.listdir(dest))
    assert len(files) >= 2  # the limit splits the bundle
    names = [m for f in files for m in tarfile.open(dest / f).getnames()]
    assert sorted(names) == sorted(["out-emergence-default/ckpt_10.pt", "out-emergence-default/train_log.jsonl",
                                    "out-emergence-default/stats.jsonl"])
    import io
    found = [(f, m) for f in files for m in tarfile.open(dest / f).getmembers() if m.name.endswith(".pt")]
    assert len(found) == 1
    with tarfile.open(dest / found[0][0]) as tar:
        ckpt = torch.load(io.BytesIO(tar.extractfile(found[0][1]).read()), weights_only=True)
    assert "optimizer" not in ckpt and ckpt["iter_num"] == 10 and "model" in ckpt
