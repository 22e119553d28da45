"""gpt-2/factorial.py on tiny runs: a run's final report (final.json, written by train.py at its last step) holds
the numbers the table reads, checked against a direct computation; the table and the re-check from the
committed weights; the pack of a run's final weights."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lib import outliers
from lib.configurator import UserError
from lib.gpt2_checkpoints import load_gpt

GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2")
sys.path.insert(0, GPT2)
import factorial  # noqa: E402
import train  # noqa: E402
from dataset import Batches  # noqa: E402
from test_gpt2_train import data, tiny_args  # noqa: E402,F401  (the module's dataset fixture)

RUNS = ("default-adamw-layernorm-s1", "ca_softmax-adamw-layernorm-s1", "default-muon-rmsnorm_single-s1")


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):  # noqa: F811
    """Three tiny runs trained to their end, packed as the study commits them: logs, final.json, weights."""
    root = tmp_path_factory.mktemp("factorial")
    for name in RUNS:
        s = factorial.settings_of(name)
        extra = dict(optimizer="muon", muon_lr=2e-2) if s["optimizer"] == "muon" else {}
        out = root / "out" / name
        train.main(tiny_args(data, out, s["attention"], norm=s["norm"], seed=s["seed"], max_iters=12,
                             eval_interval=6, stats_interval=6, stats_seqs=8, **extra))
        dest = root / "runs" / name
        os.makedirs(dest)
        for f in ("stats.jsonl", "train_log.jsonl", "final.json"):
            shutil.copy(out / f, dest / f)
        subprocess.run([sys.executable, os.path.join(GPT2, "results", "factorial", "pack.py"), str(out), str(dest)],
                       check=True)
    return root


def test_final_json_holds_the_peak_a_direct_computation_finds(runs, data):  # noqa: F811
    final = json.load(open(runs / "runs" / RUNS[0] / "final.json"))
    model, ckpt, _ = load_gpt(str(runs / "runs" / RUNS[0] / "ckpt_12.pt"))
    seqs = Batches(data, "val", 1, 16, 0).sequences(8, 16)
    hidden = []  # each block's output, read by plain forward hooks
    hooks = [block.register_forward_hook(lambda m, args, out: hidden.append(out)) for block in model.transformer.h]
    with torch.no_grad():
        model(seqs)
    for hook in hooks:
        hook.remove()
    ratios = [outliers.channel_position_ratios(h).max() for h in hidden[:-1]]  # every block but the last
    numbers = factorial.final_numbers(final)
    assert numbers["peak_ratio"] == pytest.approx(float(max(ratios)), rel=1e-5)
    assert numbers["peak_block"] == int(torch.stack(ratios).argmax())  # 0-based, as final.json says
    assert final["layers_are"] == "0-based"
    assert final["iter"] == 12 and final["provenance"]["versions"]["torch"] == torch.__version__
    zc = numbers["cost_zero_over_control"]
    assert zc["mean"] == pytest.approx(final["largest_peak"]["loss_zeroed"] - final["largest_peak"]["loss_control"],
                                       abs=1e-6)


def test_packed_weights_are_small_and_load_like_a_checkpoint(runs):
    ckpt = torch.load(runs / "runs" / RUNS[2] / "ckpt_12.pt", weights_only=True)
    assert "optimizer" not in ckpt and ckpt["model_args"]["norm"] == "rmsnorm_single"
    assert ckpt["config"]["optimizer"] == "muon"


def test_the_table_reads_every_run_and_says_what_it_cannot_decide(runs, tmp_path):
    table = factorial.main([f"--runs_dir={runs / 'runs'}", f"--results_dir={tmp_path}", "--plot=True"])
    assert [r["run"] for r in table["runs"]] == sorted(RUNS) and all(r["finished"] for r in table["runs"])
    assert all(r["over_run"]["verdict"] in ("yes", "no") for r in table["runs"])
    by = {(c["attention"], c["optimizer"], c["norm"]): c for c in table["cells"]}
    assert by["default", "adamw", "layernorm"]["peak_ratio"]["n"] == 1
    assert by["ca_softmax", "muon", "layernorm"]["peak_ratio"] is None  # no run in that cell
    attention = next(e for e in table["effects"] if e["factor"] == "attention")
    assert len(attention["pairs"]) == 1 and attention["reading"] != "supported"  # 3 of its 4 pairs are missing
    assert (tmp_path / "table.md").exists() and (tmp_path / "trajectories.png").exists()


def test_the_check_passes_on_committed_runs_and_fails_on_a_changed_number(runs, tmp_path):
    shutil.copytree(runs / "runs", tmp_path / "runs")
    assert factorial.main([f"--runs_dir={tmp_path / 'runs'}", "--check=True"]) is None
    path = tmp_path / "runs" / RUNS[1] / "final.json"
    final = json.load(open(path))
    final["largest_peak"]["loss_zeroed"] *= 1.01
    json.dump(final, open(path, "w"))
    with pytest.raises(SystemExit) as e:
        factorial.main([f"--runs_dir={tmp_path / 'runs'}", "--check=True"])
    assert e.value.code == 1


def test_logs_of_the_older_1_based_format_are_read_and_checked_in_their_own_numbering(runs, tmp_path):
    """A run whose stats.jsonl and final.json were written when blocks counted from 1 (no layers_are): the table
    reads the same numbers, and the check compares the recomputed report in the stored file's numbering."""
    from stats_log import shift_blocks
    shutil.copytree(runs / "runs", tmp_path / "runs")
    before = factorial.main([f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'a'}", "--plot=False"])
    folder = tmp_path / "runs" / RUNS[0]
    old = lambda record: {k: v for k, v in shift_blocks(record, +1).items() if k != "layers_are"}  # noqa: E731
    lines = [old(json.loads(line)) for line in open(folder / "stats.jsonl")]
    (folder / "stats.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    json.dump(old(json.load(open(folder / "final.json"))), open(folder / "final.json", "w"))
    assert "layers_are" not in json.load(open(folder / "final.json"))
    after = factorial.main([f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'b'}", "--plot=False"])
    assert after["runs"] == before["runs"] and after["layers_are"] == "0-based"
    assert factorial.main([f"--runs_dir={tmp_path / 'runs'}", "--check=True"]) is None


def test_a_folder_that_is_not_a_factorial_run_is_a_clear_error(tmp_path):
    os.makedirs(tmp_path / "runs" / "default-lamb-layernorm-s1")
    with pytest.raises(UserError, match="not a factorial run name"):
        factorial.main([f"--runs_dir={tmp_path / 'runs'}"])


def synthetic_rows(values, key="kurtosis"):
    """A finished run per cell and seed whose measure `key` is values(attention, optimizer, norm, seed)."""
    import itertools
    rows = []
    for (a, o, n), seed in itertools.product(itertools.product(*factorial.FACTORS.values()), (1, 2)):
        rows.append(dict(run=f"{a}-{o}-{n}-s{seed}", attention=a, optimizer=o, norm=n, seed=seed, finished=True,
                         **{key: values(a, o, n, seed)}))
    return rows


def test_each_measure_is_read_by_the_registered_rule():
    # kurtosis 1 + seed/10 under muon, 5 + seed/10 under adamw: muon is lower in all 4 pairs, by 4 in each
    rows = synthetic_rows(lambda a, o, n, seed: (1 if o == "muon" else 5) + seed / 10)
    optimizer = factorial.effect(rows, "optimizer", "kurtosis")
    assert optimizer["reading"] == "lower in every pair" and len(optimizer["pairs"]) == 4
    assert optimizer["median_change"] == pytest.approx(-4.0)
    assert all(p["change"]["low"] == pytest.approx(-4.1) for p in optimizer["pairs"])
    assert factorial.effect(rows, "norm", "kurtosis")["reading"] == "mixed"  # the norm changes nothing
    # a removing level above every seed of the other level in one pair is the rule's refutation
    rows = synthetic_rows(lambda a, o, n, seed: 9.0 if (a, o, n) == ("ca_softmax", "adamw", "layernorm") else 1.0)
    assert factorial.effect(rows, "attention", "kurtosis")["reading"] == "higher in some pair"
    assert factorial.effect(rows[:-2], "norm", "kurtosis")["reading"] == \
        "provisional, so far mixed (3 of 4 pairs with every seed finished)"


def test_the_peak_ratio_reading_waits_for_every_seed_but_a_verdict_refutes_at_once():
    """Ratios under 100, muon below adamw in every pair: supported only where some adamw run holds a verdict, and
    provisional while a cell lacks a seed; a verdict in a ca_softmax run refutes softmax attention at once."""
    rows = synthetic_rows(lambda a, o, n, seed: (20.0 if o == "muon" else 80.0) + seed, key="peak_ratio")
    for r in rows:
        r["over_run"] = dict(verdict="yes" if r["run"] == "default-adamw-layernorm-s1" else "no")
    assert factorial.effect(rows, "optimizer")["reading"] == "supported"
    no_verdict = [dict(r, over_run=dict(verdict="no")) for r in rows]
    assert factorial.effect(no_verdict, "optimizer")["reading"] == "not decided at this scale"
    one_seed = [r for r in rows if r["seed"] == 1]
    assert factorial.effect(one_seed, "optimizer")["reading"] == \
        "provisional, so far supported (0 of 4 pairs with every seed finished)"
    refuting = [dict(r, over_run=dict(verdict="yes")) if r["run"] == "ca_softmax-muon-rmsnorm_single-s1" else r
                for r in one_seed]
    assert factorial.effect(refuting, "attention")["reading"] == "refuted (a systematic verdict where it predicts none)"


def test_compression_costs_are_read_per_run_and_averaged_per_cell(tmp_path):
    rows = synthetic_rows(lambda a, o, n, seed: 1.0)
    def result(run, change, se):
        return dict(info=dict(checkpoint=f"gpt-2/results/factorial/runs/{run}/ckpt_40000.pt"),
                    compression=dict(fp32=dict(ppl=4.0), w8a8=dict(nll_change=change, nll_change_stderr=se)))
    report = dict(command="python consequences.py --gpt2 ...",
                  results=[result("default-adamw-layernorm-s1", 0.03, 0.003),
                           result("default-adamw-layernorm-s2", 0.05, 0.004)])
    json.dump(report, open(tmp_path / "consequences.json", "w"))
    comp = factorial.compression(str(tmp_path / "consequences.json"), rows)
    cell = next(c for c in comp["cells"] if (c["attention"], c["optimizer"], c["norm"]) == ("default", "adamw",
                                                                                           "layernorm"))
    assert cell["methods"]["w8a8"] == dict(mean=pytest.approx(0.04), se=pytest.approx(0.0025), n=2)  # 0.005 / 2
    assert rows[0]["compression"]["w8a8"] == dict(change=0.03, se=0.003) and rows[2]["compression"] is None
    assert factorial.compression(str(tmp_path / "missing.json"), rows) is None


def test_a_run_that_has_logged_nothing_yet_is_listed_as_running(runs, tmp_path):
    shutil.copytree(runs / "runs", tmp_path / "runs")
    os.makedirs(tmp_path / "runs" / "ca_softmax-muon-layernorm-s1")
    table = factorial.main([f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'out'}", "--plot=False"])
    started = next(r for r in table["runs"] if r["run"] == "ca_softmax-muon-layernorm-s1")
    assert not started["finished"] and started["steps"] == 0
    assert "| ca_softmax-muon-layernorm-s1 | 0 | running |" in (tmp_path / "out" / "table.md").read_text()


def test_the_check_compares_the_committed_table_with_the_runs(runs, tmp_path):
    shutil.copytree(runs / "runs", tmp_path / "runs")
    args = [f"--runs_dir={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'table'}"]
    factorial.main(args + ["--plot=False"])
    assert factorial.main(args + ["--check=True"]) is None
    path = tmp_path / "table" / "table.json"
    table = json.load(open(path))
    table["runs"][0]["peak_ratio"] *= 1.5
    json.dump(table, open(path, "w"))
    with pytest.raises(SystemExit) as e:
        factorial.main(args + ["--check=True"])
    assert e.value.code == 1
    factorial.main(args + ["--plot=False"])
    page = tmp_path / "table" / "table.md"
    page.write_text(page.read_text().replace("registered runs", "runs"))
    with pytest.raises(SystemExit):
        factorial.main(args + ["--check=True"])


def test_the_summary_states_the_largest_ratio_and_the_readings():
    from lib.gpt2_pages import factorial_summary
    run = lambda name, ratio, done=True, **kw: dict(  # noqa: E731
        run=name, finished=done, peak_ratio=ratio, peak_block=1, peak_position=0, sink_share=0.05,
        trajectory=[dict(iter=2000, peak_ratio=ratio / 2), dict(iter=4000, peak_ratio=ratio)],
        over_run=dict(verdict="no"), **kw)
    table = dict(registered_runs=16, criteria=dict(ratio=100, sink_share=0.5, persistence=3),
                 runs=[run("a", 12.5), run("b", 40.25), run("c", 60.0, done=False)],
                 effects=[dict(measure="peak_ratio", explanation="softmax attention", removing_level="ca_softmax",
                               other_level="default", reading="refuted", median_change=0.116),
                          dict(measure="kurtosis", explanation="x", removing_level="y", other_level="z", reading="w",
                               median_change=1.0)],
                 convergence=dict(target_loss=1.53, steps_to_target=dict(a=16000, b=24000)))
    text = " ".join(factorial_summary(table))
    assert text.startswith("2 of the 16 registered runs have finished (1 in progress).")
    assert "No finished run holds a systematic outlier" in text
    assert "largest final fixed-position ratio is 40.2 (b, block 1, position 0)" in text  # 40.25 -> 40.2 (even)
    assert "the largest at any logged step 60.0 (c, step 4,000)" in text
    assert "softmax attention (ca_softmax against default, +0.12): refuted." in text and "x (y against z" not in text
    assert "validation loss of 1.5300 (the largest final one) after 16,000-24,000 steps" in text
    assert factorial_summary(dict(table, runs=[run("c", 60.0, done=False)])) == \
        ["0 of the 16 registered runs have finished (1 in progress)."]
    one = dict(table, runs=[run("a", 120.0)])
    one["runs"][0]["over_run"] = dict(verdict="yes")
    assert "a holds a systematic outlier." in " ".join(factorial_summary(one))
