"""The emergence study's pieces (gpt-2/): the per-layer verdict on planted activations, the position switch,
fresh-data training that resumes exactly, the random-entry control of the zeroing intervention, and
emergence.py's table."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch

from lib.backcopy_task import sample_design
from lib.errors import UserError
from lib.gpt2_checkpoints import checkpoints, load_gpt

GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2")
sys.path.insert(0, GPT2)
import train  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from outlier_stats import (Ablator, captured, compact_report, key_shares, layer_report,  # noqa: E402
                           peak_ablation, persistence, ratio_floor, run_verdict)
from stats_log import as_zero_based  # noqa: E402

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


# --- the verdict, one planted model per loophole -------------------------------------------------------------
# A tiny GPT's block outputs are O(0.01-0.1), so a planted 300-1000 is thousands of times the median; forward
# hooks add the peaks (to an MLP's or an attention's output) and replace a layer's attention weights on its
# explicit path (a head putting every query's mass on one key) where a sink is wanted.

def seqs_of(n=8, seed=1):
    return torch.randint(0, 17, (n, 16), generator=torch.Generator().manual_seed(seed))


def add_at(module, position, channel, value, rows=None):
    """Forward hook on an output projection (an MLP's or an attention's c_proj, whose outputs capture reads as the
    block's parts): value added at its output's [rows, position, channel]."""
    def hook(m, args, out):
        y = out.clone()
        y[slice(None) if rows is None else rows, position, channel] += value
        return y
    return module.register_forward_hook(hook)


def sink_on(attn, keys):
    """Forward hook on a block's attention weights (its explicit path, which the attention captures run): head k
    puts all the mass of every query that sees keys[k] on it (keys[k] None: each query's own token)."""
    def hook(m, args, w):
        w = torch.zeros_like(w)
        T = w.shape[-2]
        for k, key in enumerate(keys):
            if key is None:
                w[:, k] = torch.eye(T)
            else:
                w[:, k, key:, key] = 1.0
                w[:, k, :key] = torch.eye(T)[:key]
        return w
    return attn.hook_pattern.register_forward_hook(hook)


def planted(model, seqs, hooks, fn=layer_report, *args):
    """fn(model, seqs, *args) with the hooks that `hooks(model)` registers in place."""
    handles = hooks(model)
    try:
        return fn(model, seqs, *args)
    finally:
        for h in handles:
            h.remove()


def found(report):
    return [(x["layer"], x["position"]) for x in report["verdict"]["found"]]


def rejected(report, layer, position):
    return next(x["why"] for x in report["verdict"]["rejected"] if (x["layer"], x["position"]) == (layer, position))


def test_an_mlp_written_peak_that_a_later_head_sinks_on_is_a_systematic_outlier():
    r = planted(tiny(), seqs_of(), lambda m: [add_at(m.transformer.h[0].mlp.c_proj, 0, 5, 500.0),
                                               sink_on(m.transformer.h[2].attn, [0, 0])])
    first = next(x for x in r["layers"][0]["positions"] if x["position"] == 0)
    assert first["channel"] == 5 and first["channels"] == [5] and first["writer"] == "mlp0"
    assert first["position_ratio"] > 1000 and first["holds_max"] == 1.0 and first["fixed"]
    assert first["sink_heads"] == [[2, 0, pytest.approx(1.0)], [2, 1, pytest.approx(1.0)]]
    assert found(r) == [(0, 0), (1, 0)]  # block 1 carries the same entry, still MLP 0's
    assert "last block" in rejected(r, 2, 0)


def test_key_shares_divide_each_row_by_its_total_and_leave_the_extra_key_out():
    """attn_bias-style weights [k'; 3 tokens] for queries 0..2; the same rows doubled (sigmoid rows need not sum
    to 1) give the same shares. Queries 1 and 2: key 0 (0.4 + 0.5) / 2, key 1 (0.4 + 0.25) / 2, key 2 0.25 / 2."""
    w = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.4, 0.4, 0.0], [0.0, 0.5, 0.25, 0.25]])[None, None]
    assert key_shares(w, 3).tolist() == pytest.approx([0.45, 0.325, 0.125])
    assert key_shares(2 * w, 3).tolist() == pytest.approx([0.45, 0.325, 0.125])


def test_a_peak_in_a_tenth_of_the_sequences_is_not_counted():
    """Position 5 has a 500 in 2 of 20 sequences (the old ratio, a mean of per-sequence maxima, passes)."""
    r = planted(tiny(), seqs_of(20), lambda m: [add_at(m.transformer.h[0].mlp.c_proj, 5, 3, 500.0, rows=[0, 1]),
                                                 sink_on(m.transformer.h[2].attn, [5, 5])])
    assert r["layers"][0]["top1_ratio_mean"] > 100
    assert all(x["position"] != 5 or x["position_ratio"] < 100 for x in r["layers"][0]["positions"])
    assert not r["verdict"]["outliers"]


def test_every_passing_position_is_judged_and_must_hold_the_maximum_in_most_sequences():
    """300 at position 5 in every sequence; 1000 at position 7 in 60% of them: both pass the ratio, position 7
    holds the block's maximum in 60% of the sequences, position 5 in 40% (and the design does not fix it).
    (A key k is seen by 16 - k of the 15 queries 1..15, so a sink needs k <= 7.)"""
    rows = list(range(6))
    r = planted(tiny(), seqs_of(10), lambda m: [add_at(m.transformer.h[0].mlp.c_proj, 5, 3, 300.0),
                                                 add_at(m.transformer.h[0].mlp.c_proj, 7, 4, 1000.0, rows=rows),
                                                 sink_on(m.transformer.h[2].attn, [5, 7])])
    assert (1, 7) in found(r) and (1, 5) not in found(r)
    assert "holds the block's maximum in 40%" in rejected(r, 1, 5)


def test_a_smaller_peak_on_the_sink_position_is_found_behind_a_larger_one():
    r = planted(tiny(), seqs_of(), lambda m: [add_at(m.transformer.h[0].mlp.c_proj, 3, 5, 1000.0),
                                               add_at(m.transformer.h[0].mlp.c_proj, 0, 9, 300.0),
                                               sink_on(m.transformer.h[2].attn, [0, 0])])
    assert r["layers"][0]["position"] == 3  # the block's largest peak
    assert (1, 0) in found(r)  # position 0 holds the maximum in no sequence, but the design fixes it
    assert "no head of a later block" in rejected(r, 1, 3)


def test_a_sink_in_an_earlier_block_or_the_writers_own_block_does_not_count():
    def hooks(later):
        def register(m):
            h = m.transformer.h
            handles = [add_at(h[1].mlp.c_proj, 0, 5, 500.0), sink_on(h[0].attn, [0, 0]), sink_on(h[1].attn, [0, 0])]
            return handles + ([sink_on(h[2].attn, [0, 0])] if later else [])
        return register
    r = planted(tiny(), seqs_of(), hooks(later=False))
    assert not r["verdict"]["outliers"] and "no head of a later block" in rejected(r, 1, 0)
    assert found(planted(tiny(), seqs_of(), hooks(later=True))) == [(1, 0)]


def test_an_attention_written_peak_is_reported_not_counted():
    r = planted(tiny(), seqs_of(), lambda m: [add_at(m.transformer.h[0].attn.c_proj, 0, 5, 500.0),
                                               sink_on(m.transformer.h[2].attn, [0, 0])])
    assert not r["verdict"]["outliers"] and "written by attn0" in rejected(r, 0, 0)
    assert [(x["layer"], x["position"], x["writer"]) for x in r["verdict"]["attention_written"]] == \
        [(0, 0, "attn0"), (1, 0, "attn0"), (2, 0, "attn0")]


def test_one_head_of_two_on_the_key_is_a_sink():
    """Head 0 puts everything on key 0, head 1 on each query's own token: the head average is 0.5, not > 0.5."""
    r = planted(tiny(), seqs_of(), lambda m: [add_at(m.transformer.h[0].mlp.c_proj, 0, 5, 500.0),
                                               sink_on(m.transformer.h[2].attn, [0, None])])
    assert r["layers"][2]["top_key_share"] == pytest.approx(0.5)
    assert (0, 0) in found(r)
    assert r["verdict"]["found"][0]["sink_heads"] == [[2, 0, pytest.approx(1.0)]]


def test_an_embedding_peak_is_not_counted():
    def plant(m, args):
        x = args[0].clone()
        x[:, 0, 5] += 500.0
        return (x,) + args[1:]
    r = planted(tiny(), seqs_of(), lambda m: [m.transformer.h[0].register_forward_pre_hook(plant),
                                               sink_on(m.transformer.h[2].attn, [0, 0])])
    assert not r["verdict"]["outliers"] and "the embedding holds" in rejected(r, 1, 0)


def test_writer_decomposition_sums_to_the_entry():
    model = tiny()
    for layer in layer_report(model, seqs_of(3, seed=2))["layers"]:
        for r in layer["positions"]:
            assert sum(r["contributions"].values()) == pytest.approx(r["value"], rel=1e-4, abs=1e-5)


def median_of_block1(model, seqs):
    with torch.no_grad():
        h = captured(model, seqs, ["resid_post"])[1]["resid_post"][0]
    return float(h.abs().flatten(1).median(dim=1).values.mean())


def test_a_diffuse_position_state_is_no_massive_activation_and_is_not_ablated():
    """Every channel of position 0 raised to about 60 x the median: a large state, no channel 100 x the median."""
    model, seqs = tiny(), seqs_of()
    m = median_of_block1(model, seqs)
    hooks = lambda mod: [add_at(mod.transformer.h[0].mlp.c_proj, 0, list(range(32)), 60 * m),
                         sink_on(mod.transformer.h[2].attn, [0, 0])]
    report = planted(model, seqs, hooks)
    assert report["layers"][0]["position"] == 0 and 30 < report["layers"][0]["position_ratio"] < 100
    assert not report["verdict"]["outliers"]
    assert planted(model, seqs, hooks, peak_ablation, report, seqs_of(4, seed=9)) == []


def test_peak_ablation_zeroes_only_the_massive_channels_and_sets_them_to_their_calibration_mean():
    """Position 0: channel 5 at 1000 x the median, channel 9 at 150 x, every other channel at 60 x. The massive
    channels are 5 and 9 (each >= 100 x the median); zeroing them, or setting them to their mean over the
    calibration sequences, is checked against the same edit made by hand."""
    model, seqs, calib = tiny(), seqs_of(), seqs_of(6, seed=7)
    m = median_of_block1(model, seqs)
    others = [c for c in range(32) if c not in (5, 9)]
    hooks = lambda mod: [add_at(mod.transformer.h[0].mlp.c_proj, 0, others, 60 * m),
                         add_at(mod.transformer.h[0].mlp.c_proj, 0, 5, 1000 * m),
                         add_at(mod.transformer.h[0].mlp.c_proj, 0, 9, 150 * m), sink_on(mod.transformer.h[2].attn, [0, 0])]
    report = planted(model, seqs, hooks)
    rows = planted(model, seqs, hooks, peak_ablation, report, calib)
    first = next(a for a in rows if a["layer"] == 0)
    assert first["position"] == 0 and first["channels"] == [5, 9] and first["systematic"]

    def loss_with(values):
        y = torch.cat([seqs[:, 1:], torch.full_like(seqs[:, :1], -1)], dim=1)

        def edit(mod, args, out):
            out[:, 0, [5, 9]] = values
        def register(mod):
            return hooks(mod) + [mod.transformer.h[0].register_forward_hook(edit)]
        with torch.no_grad():
            return planted(model, seqs, register, lambda mod, x: float(captured(mod, x, ["attn.pattern"], y)[0][1]))
    with torch.no_grad():
        planted_calib = planted(model, calib, hooks, lambda mod, x: captured(mod, x, ["resid_post"])[1]["resid_post"][0])
    means = planted_calib[:, 0, [5, 9]].mean(0)
    assert first["calibration_means"] == pytest.approx(means.tolist(), rel=1e-5)
    assert first["loss_zeroed"] == pytest.approx(loss_with(0.0), abs=1e-6)
    assert first["loss_mean"] == pytest.approx(loss_with(means), abs=1e-6)
    assert len(first["share_before"]) == 3 and first["share_before"][2] == [pytest.approx(1.0)] * 2


def test_the_control_is_five_draws_at_positions_with_a_target():
    model, seqs = tiny(), seqs_of()
    hooks = lambda mod: [add_at(mod.transformer.h[0].mlp.c_proj, 0, 5, 500.0), sink_on(mod.transformer.h[2].attn, [0, 0])]
    report = planted(model, seqs, hooks)
    for a in planted(model, seqs, hooks, peak_ablation, report, seqs_of(4, seed=9)):
        assert len(a["loss_control_draws"]) == 5
        assert a["loss_control"] == pytest.approx(np.mean(a["loss_control_draws"]))
        assert all(0 <= q <= 14 and q != a["position"] for q in a["control_positions"])  # T = 16: 15 has no target


def test_a_single_checkpoint_blip_does_not_hold_and_three_in_a_row_do():
    model, seqs = tiny(), seqs_of()

    def line(step, on):
        hooks = lambda m: ([add_at(m.transformer.h[0].mlp.c_proj, 0, 5, 500.0)] if on else []) + \
            [sink_on(m.transformer.h[2].attn, [0, 0])]
        return dict(iter=step, **compact_report(planted(model, seqs, hooks)))
    on = {s: line(s, True) for s in (0, 1)}
    off = line(2, False)

    def at(step, holds):
        return dict(on[0] if holds else off, iter=step)
    blip = persistence([at(0, False), at(1, True), at(2, False), at(3, False)])
    assert not blip["held"] and [(s["layer"], s["position"], s["checkpoints"]) for s in blip["streaks"]] == \
        [(0, 0, 1), (1, 0, 1)]
    assert not persistence([at(0, True), at(1, True), at(2, False), at(3, True), at(4, True)])["held"]
    lasting = persistence([at(0, False), at(1, True), at(2, True), at(3, True)])
    assert lasting["held"] and lasting["first_held"] == 1
    assert run_verdict([at(0, False), at(1, True), at(2, True), at(3, True)], 2, 8)["verdict"] == "yes"
    assert run_verdict([at(0, False), at(1, True), at(2, False), at(3, True)], 2, 8)["verdict"] == "no"


def old_line(step, ratios, tokens, shares, top_keys=None, writers=None):
    """A stats.jsonl line as logged before the per-position verdict (3 blocks, counted from 1 as then), read as the
    readers read it (stats_log.as_zero_based)."""
    top_keys = top_keys or [0, 0, 0]
    writers = writers or ["mlp1", "mlp2", "mlp3"]
    return as_zero_based(dict(iter=step, outliers=False, outlier_layers=[], layers=[
        dict(ratio=r, token=t, channel=1, embed_share=0.0, writer=w, top_key=k, top_key_share=s)
        for r, t, w, k, s in zip(ratios, tokens, writers, top_keys, shares)]))


def test_logs_written_before_the_per_position_verdict_decide_what_they_can():
    # 64 sequences: a passing position needs 33 sequences whose maximum is >= 100, so a logged mean >= 51.5625
    assert ratio_floor(64) == pytest.approx(100 * 33 / 64)
    small = [old_line(s, [51.5, 51.0, 300.0], [0, 0, 0], [0.9, 0.9, 0.9]) for s in range(4)]
    assert run_verdict(small, 2, 64)["verdict"] == "no"  # the blocks before the last are under the floor
    no_sink = [old_line(s, [300.0, 300.0, 20.0], [0, 0, 0], [0.9, 0.25, 0.25]) for s in range(4)]
    assert run_verdict(no_sink, 2, 64)["verdict"] == "no"  # two heads x 0.25: no head of block 1 or 2 > 0.5
    assert run_verdict(no_sink, 4, 64)["verdict"] == "not re-judged"  # four heads: one of them may hold 1.0
    open_lines = [old_line(s, [300.0, 30.0, 20.0], [0, 7, 7], [0.2, 0.3, 0.6]) for s in (0, 2000, 4000)]
    judged = run_verdict(open_lines, 2, 64)
    assert judged["verdict"] == "not re-judged" and judged["possible"] == [
        dict(layer=0, position=None, first=0, last=4000, checkpoints=3)]
    assert judged["logged_peak_streaks"] == [dict(layer=0, position=0, first=0, last=4000, checkpoints=3)]
    attention_written = [old_line(s, [300.0, 30.0, 20.0], [0, 7, 7], [0.2, 0.3, 0.6], writers=["attn1", "mlp2", "mlp3"])
                         for s in (0, 2000, 4000)]
    assert run_verdict(attention_written, 2, 64)["logged_peak_streaks"] == []
    two = open_lines[:2] + [old_line(4000, [40.0, 30.0, 20.0], [0, 7, 7], [0.2, 0.3, 0.6])]
    assert run_verdict(two, 2, 64)["verdict"] == "no"  # two checkpoints in a row are not three


# --- the position switch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos_emb", ["rope", "none"])
def test_rope_and_none_have_no_position_vector_and_position_0_sees_only_itself(pos_emb):
    model = tiny(pos_emb=pos_emb)
    assert model.transformer.wpe is None and "transformer.wpe.weight" not in model.state_dict()
    a = torch.tensor([[3, 1, 4, 1, 5, 9]])
    b = torch.tensor([[3, 2, 7, 1, 8, 2]])
    hidden = lambda ids: captured(model, ids, ["resid_post"])[1]["resid_post"]  # noqa: E731
    ha, hb = hidden(a), hidden(b)
    for x, y in zip(ha, hb):  # position 0's output depends only on its own token, never on a position vector
        assert torch.allclose(x[0, 0], y[0, 0], atol=1e-6)
    moved = hidden(torch.tensor([[5, 3, 1, 4]]))  # token 3 at position 1
    if pos_emb == "none":  # without positions a lone token is the same at any position it is first...
        assert torch.allclose(ha[-1][0, 0], hidden(torch.tensor([[3]]))[-1][0, 0], atol=1e-6)
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
    model, ckpt, _ = load_gpt(str(out / "ckpt_20.pt"))
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
    assert all(s["layers_are"] == "0-based" for s in stats)
    log = [json.loads(line)["iter"] for line in open(tmp_path / "b" / "train_log.jsonl")]
    assert log == [10, 20, 30]  # the resume step's evaluation logged once


def test_a_log_with_a_resume_step_twice_is_read_once():
    from compare import one_per_iter
    lines = [dict(iter=0, v=1), dict(iter=10, v=2), dict(iter=10, v=3), dict(iter=20, v=4)]
    assert one_per_iter(lines) == [dict(iter=0, v=1), dict(iter=10, v=3), dict(iter=20, v=4)]


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
    assert checkpoints(str(tmp_path / "o"))[-1][0] == len(history)


def test_a_run_resumed_between_evaluations_keeps_the_last_steps_evaluation(tmp_path):
    """A run that stopped at a step where no evaluation is due (as a max_seconds stop does) evaluated and saved
    there; resumed, it keeps that line and writes none twice."""
    data = prepare(tmp_path / "d")
    kw = dict(stats_interval=0, always_save_checkpoint=True)
    train.main(fresh_args(data, tmp_path / "o", max_iters=23, **kw))
    train.main(fresh_args(data, tmp_path / "o", init_from="resume", max_iters=30, **kw))
    log = [json.loads(line)["iter"] for line in open(tmp_path / "o" / "train_log.jsonl")]
    assert log == [10, 20, 23, 30]


def test_fresh_data_needs_a_synthetic_task(tmp_path):
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
    out = edit(h, 0)
    assert edit.edited == 2
    assert out[0, 0, 3] == 5000.0 and out[0, 7, 3] == 4000.0  # the outliers themselves are kept
    assert int((out == 0).sum()) == 2


def test_emergence_table_judges_each_run_from_its_checkpoint_and_again_from_its_logs(tmp_path):
    import shutil
    import emergence
    data = prepare(tmp_path / "d")
    runs = [str(tmp_path / v) for v in ("default", "ca_softmax")]
    for variant, run in zip(("default", "ca_softmax"), runs):
        train.main(fresh_args(data, run, attention=variant, max_iters=20))
    res = tmp_path / "res"
    rows = emergence.main([f"--runs={runs}", f"--results_dir={res}", "--n_seqs=8", "--eval_iters=2", "--plot=True"])
    assert [r["attention"] for r in rows] == ["default", "ca_softmax"]
    table = json.load(open(res / "table.json"))
    assert table["criteria"]["ratio"] == 100.0 and table["criteria"]["persistence"] == 3 and len(table["rows"]) == 2
    first = table["rows"][0]
    assert first["source"] == "checkpoint" and first["trajectory"]["steps"] == [0, 10, 20]
    assert first["over_run"]["checkpoints"] == 3 and first["over_run"]["logged_before_rule"] == 0
    assert first["over_run"]["verdict"] in ("yes", "no")  # logs with the per-position verdict decide
    for name in ("table.md", "trajectories.png", "convergence.png"):
        assert (res / name).exists()
    # the checkpoints gone, the committed logs and the table's numbers judge the runs again
    for run in runs:
        os.makedirs(res / "runs" / os.path.basename(run))
        for f in ("stats.jsonl", "train_log.jsonl"):
            shutil.copy(os.path.join(run, f), res / "runs" / os.path.basename(run) / f)
        shutil.rmtree(run)
    again = emergence.main([f"--runs={runs}", f"--results_dir={res}", "--from_logs=True", "--plot=False"])
    assert [r["source"] for r in again] == ["logs", "logs"]
    assert again[0]["over_run"]["verdict"] == first["over_run"]["verdict"]
    assert again[0]["at_checkpoint"]["val_loss"] == first["val_loss"]
    assert "not re-judged" in open(res / "table.md").read()
    twice = emergence.main([f"--runs={runs}", f"--results_dir={res}", "--from_logs=True", "--plot=False"])
    assert twice[0]["at_checkpoint"] == again[0]["at_checkpoint"]  # a second pass carries the same numbers


def test_emergence_from_logs_needs_the_logs_and_the_tables_row(tmp_path):
    import emergence
    from lib.configurator import UserError
    with pytest.raises(UserError, match="no stats.jsonl"):
        emergence.main([f"--runs={[str(tmp_path / 'gone')]}", f"--results_dir={tmp_path}", "--from_logs=True"])
    (tmp_path / "runs" / "gone").mkdir(parents=True)
    (tmp_path / "runs" / "gone" / "stats.jsonl").write_text(json.dumps(old_line(0, [1, 1, 1], [0, 0, 0], [0, 0, 0])))
    with pytest.raises(UserError, match="no row"):
        emergence.main([f"--runs={[str(tmp_path / 'gone')]}", f"--results_dir={tmp_path}", "--from_logs=True"])


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


def test_interventions_on_a_gpt2_model_use_the_verdicts_ratio_and_no_absolute_floor():
    """A block output of O(0.1) with one entry 150 x its median: |h| = 15 is far under the LLM floor of 100, so
    lib.analysis' rule misses it; the rule lib.evaluation picks for gpt-2/ subjects finds it."""
    from types import SimpleNamespace
    from lib import evaluation, interventions
    h = torch.full((16, 8), 0.1)
    h[0, 3] = 15.0
    gpt2, hf = [SimpleNamespace(hf=False)], [SimpleNamespace(hf=True)]
    small = evaluation.outlier_rule(gpt2)
    assert (small.factor, small.min_abs) == (100.0, 0.0)
    assert torch.nonzero(interventions.outlier_mask(h, small)).tolist() == [[0, 3]]
    large = evaluation.outlier_rule(hf)
    assert (large.factor, large.min_abs) == (1000.0, 100.0) and not interventions.outlier_mask(h, large).any()
    given = evaluation.outlier_rule(gpt2, factor=200.0, min_abs=10.0)
    assert (given.factor, given.min_abs) == (200.0, 10.0) and not interventions.outlier_mask(h, given).any()


# --- the emergence README quotes its table and its runs' logs ---------------------------------------------------
EMERGENCE = os.path.join(GPT2, "results", "emergence")


def logged(name):
    with open(os.path.join(EMERGENCE, "runs", name, "stats.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_the_emergence_page_states_what_the_logs_hold():
    """The page is rendered from table.json (tests/test_pages.py): the nobos runs' largest most-attended-key share
    it states is held against the runs' own logs, and every streak of 3 or more consecutive checkpoints at which a
    run's logged peak passes the log's checks (table.json's logged_peak_streaks) is named with its block, position
    and steps."""
    from lib import emergence_page
    from lib.provenance import ROOT
    with open(os.path.join(EMERGENCE, "table.json")) as f:
        table = json.load(f)
    text = " ".join((ROOT / emergence_page.PAGE).read_text().split())
    nobos = max(x["top_key_share"] for r in table["rows"] if r["design"] == "nobos"
                for line in logged(r["run"].removeprefix("out-emergence-")) for x in line["layers"])
    assert f"takes more than {nobos:.2f} of the head-averaged attention" in text
    for r in table["rows"]:
        for s in r["over_run"]["logged_peak_streaks"]:
            if s["checkpoints"] >= table["criteria"]["persistence"]:
                name = r["run"].removeprefix("out-emergence-")
                assert re.search(rf"`{re.escape(name)}`, [^`]*block {s['layer']} on position {s['position']} at "
                                 rf"[^`]*{s['first'] // 1000}k-{s['last'] // 1000}k", text), (name, s)


def test_the_ablators_edit_equals_a_hand_edited_forward():
    """Ablator.run's edit of a block's output (monkey_patch.Edit of resid_post) against the blocks run by hand, the
    same entries set between them, every layer on its explicit path as under the Ablator's capture."""
    from lib.gpt2_checkpoints import CheckpointLM
    from monkey_patch import ModelView
    from monkey_patch.hook_points import explicit_attention
    model = tiny()
    seqs = torch.randint(0, 17, (3, 10), generator=torch.Generator().manual_seed(4))
    ablator = Ablator(model, seqs)
    channels = [1, 5, 7]
    for values in (0.0, torch.tensor([0.5, -2.0, 3.0])):
        loss, _ = ablator.run(1, 2, channels, values)
        with torch.no_grad(), explicit_attention(ModelView(CheckpointLM(model))):
            x = model.transformer.wte(seqs) + model.transformer.wpe(torch.arange(seqs.shape[1]))
            for i, block in enumerate(model.transformer.h):
                x = block(x)
                if i == 1:
                    x[:, 2, channels] = values
            logits = model.lm_head(model.transformer.ln_f(x))
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ablator.y.flatten(), ignore_index=-1,
                                                reduction="none").view(ablator.y.shape)
        assert torch.equal(loss, nll.sum(1) / (ablator.y >= 0).sum(1))
        assert not torch.equal(loss, ablator.base)
