"""gpt-2/evaluate.py, analyze.py, compare.py, emergence.py and plot_gpt2.py as a user meets them: each names the
checkpoint it reads, no script shadows a module of the standard library or of the environment, the scripts over
several runs check every run before they write and default to scratch folders, the figures say what they show,
and a mistake ends in one line and exit 2 with nothing written."""
import ast
import importlib.machinery
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib.errors import UserError
from test_gpt2_train import GPT2, data, run_script, tiny_args  # noqa: F401  (data: the dataset fixture)

import train  # noqa: E402  (gpt-2/ is on sys.path through test_gpt2_train)

ROOT = Path(GPT2).resolve().parent


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Two tiny 3-layer runs, default and sigmoid attention, with checkpoints at steps 5 and 10."""
    folder = tmp_path_factory.mktemp("runs")
    for variant in ("default", "sigmoid"):
        train.main(tiny_args(data, folder / variant, variant, n_layer=3, max_iters=10, eval_interval=5))
    return folder


def run_copy(runs, tmp_path, variant="default"):
    """A run of its own for a test that writes beside its checkpoints."""
    return Path(shutil.copytree(runs / variant, tmp_path / variant))


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_evaluate_and_analyze_name_the_checkpoint_they_read(runs, tmp_path, capsys):
    import analyze
    import evaluate
    run = run_copy(runs, tmp_path)
    newest = run / "ckpt_10.pt"
    record = dict(path=str(newest), iter=10)
    r = evaluate.main([f"--out_dir={run}", "--eval_iters=1", "--device=auto"])
    assert capsys.readouterr().out.splitlines()[0] == f"checkpoint: {newest} (iter 10)"
    assert r["checkpoint"] == record == json.loads((run / "ckpt_10.eval.json").read_text())["checkpoint"]
    evaluate.main([f"--ckpt={run / 'ckpt_5.pt'}", "--eval_iters=1"])  # an older checkpoint, named as such
    assert capsys.readouterr().out.startswith(f"checkpoint: {run / 'ckpt_5.pt'} (iter 5)\n")
    assert json.loads((run / "ckpt_5.eval.json").read_text())["checkpoint"]["iter"] == 5
    (run / "ckpt_10.eval.json").unlink()
    evaluate.main([f"--ckpt={run}", "--eval_iters=1"])  # a folder: its newest checkpoint, its JSON beside it
    assert (run / "ckpt_10.eval.json").exists() and sorted(p.name for p in run.glob("*.json")) == [
        "ckpt_10.eval.json", "ckpt_5.eval.json"]
    capsys.readouterr()
    a = analyze.main([f"--out_dir={run}", "--n_seqs=2", "--plot=False"])
    assert capsys.readouterr().out.splitlines()[0] == f"checkpoint: {newest} (iter 10)"
    assert a["checkpoint"] == record == json.loads((run / "analysis" / "analysis.json").read_text())["checkpoint"]
    assert evaluate.shown_path(os.path.join(GPT2, "out-x", "ckpt_1.pt")) == os.path.join("out-x", "ckpt_1.pt")


def test_no_gpt2_script_shadows_another_module_and_none_imports_test():
    """A script's name is its module's name for the others: one named like a module of the standard library
    (such as `test`) or of the environment hides that module from every script run in gpt-2/."""
    gpt2 = os.path.realpath(GPT2)
    elsewhere = [p for p in sys.path if p and os.path.realpath(p) != gpt2]
    for path in Path(gpt2).glob("*.py"):
        assert path.stem not in sys.stdlib_module_names, path.name
        assert importlib.machinery.PathFinder.find_spec(path.stem, elsewhere) is None, path.name
    sources = [*Path(gpt2).rglob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "lib").rglob("*.py"),
               *(ROOT / "tests").glob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            assert "test" not in [n.split(".")[0] for n in names], f"{path} imports test"


def test_compare_checks_every_run_before_it_writes(runs, tmp_path):
    """One missing run: a one-line error naming it, nothing on stdout, and the folder compare.py would have made
    is not there."""
    out = tmp_path / "new" / "table"
    missing = tmp_path / "missing"
    r = run_script("compare.py", f"--runs={[str(runs / 'default'), str(missing)]}", f"--results_dir={out}",
                   "--n_seqs=2", "--eval_iters=1")
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [f"compare.py: error: run {missing}: no ckpt_<iter>.pt in {missing}"]
    assert not (tmp_path / "new").exists()


def test_multi_run_mistakes_write_nothing(runs, tmp_path):
    import compare
    import emergence
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ckpt_1.pt").write_text("not a checkpoint")
    halted = shutil.copytree(runs / "sigmoid", tmp_path / "halted")  # stopped while it wrote a log line
    (halted / "stats.jsonl").write_text('{"iter": 0, "layers": []}\n{"iter": 5, "lay')
    twin = shutil.copytree(runs / "default", tmp_path / "twin")  # a second default run
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    default, sigmoid = str(runs / "default"), str(runs / "sigmoid")
    out = f"--results_dir={tmp_path / 'out'}"
    cases = [(compare, [f"--runs={[default, str(broken)]}", out], "is not a train.py checkpoint"),
             (compare, [f"--runs={[default, default]}", out], "listed more than once"),
             (compare, [f"--runs={[default, str(twin)]}", out], "are both default attention"),
             (compare, [f"--runs={[default, str(runs)]}", out], "no ckpt_<iter>.pt"),
             (compare, [f"--runs={[default, str(halted)]}", out], "stats.jsonl: line 2 is not JSON"),
             (compare, [f"--runs={[default, sigmoid]}", f"--results_dir={a_file}"], "is a file, not a folder"),
             (compare, [f"--runs={[default, sigmoid]}", out, "--verdict_seqs=0"], "--verdict_seqs must be at least 1"),
             (compare, [f"--runs={[default, sigmoid]}", out, "--device=tpu"], "unknown device"),
             (compare, ["--runs=[]", out], "give the runs"),
             (compare, ["--runs=[1, 2]", out], "give the runs as a list of folders"),
             (emergence, [f"--runs={[default, str(tmp_path / 'gone')]}", out], "run .*gone: no ckpt_<iter>.pt"),
             (emergence, [f"--runs={[str(halted)]}", out], "stats.jsonl: line 2 is not JSON"),
             (emergence, [f"--runs={[default]}", f"--results_dir={tmp_path}", "--from_logs=True"], "no stats.jsonl"),
             (emergence, [f"--runs={[default]}", out, "--n_seqs=0"], "--n_seqs must be at least 1")]
    before = files_under(tmp_path)
    for module, args, message in cases:
        with pytest.raises(UserError, match=message):
            module.main(args + ["--eval_iters=1", "--plot=False"])
        assert files_under(tmp_path) == before, args
    logs = tmp_path / "logs"  # a committed table judged from its logs, whose table.json was cut short
    (logs / "runs" / "halted").mkdir(parents=True)
    (logs / "runs" / "halted" / "stats.jsonl").write_text('{"iter": 0, "layers": []}\n')
    (logs / "table.json").write_text('{"rows": [')
    with pytest.raises(UserError, match="table.json is not readable JSON"):
        emergence.main([f"--runs={[str(halted)]}", f"--results_dir={logs}", "--from_logs=True"])


def test_default_output_folders_are_scratch_and_ignored():
    import compare
    import emergence
    for module in (compare, emergence):
        folder = module.DEFAULTS["results_dir"]
        assert not folder.startswith("results"), module.__name__
        check = subprocess.run(["git", "check-ignore", "-q", f"gpt-2/{folder}/table.json"], cwd=ROOT)
        assert check.returncode == 0, f"gpt-2/{folder} is not ignored by git"


def test_readme_commands_do_not_write_into_the_committed_results():
    """The commands of gpt-2/'s scripts in the READMEs write into scratch folders: the committed results are
    written only by their own regeneration commands (under gpt-2/results/)."""
    import compare
    import emergence
    defaults = {"compare": compare.DEFAULTS["results_dir"], "emergence": emergence.DEFAULTS["results_dir"]}
    found = 0
    for readme in (ROOT / "README.md", ROOT / "gpt-2" / "README.md"):
        for script, args in re.findall(r"python (?:gpt-2/)?(compare|emergence|analyze|evaluate)\.py([^\n`]*)",
                                       readme.read_text()):
            found += 1
            given = re.search(r"--(?:results_dir|analysis_dir)=(\S+)", args)
            folder = given.group(1) if given else defaults.get(script, "out")
            assert not re.match(r"(gpt-2/)?results\b", folder), f"{readme.name}: python {script}.py{args}"
    assert found >= 5


def drawn_figures(monkeypatch):
    """What each figure plot_gpt2.py saves shows, by file name relative to its folder's parent: per axes its
    title, axis labels, visible x ticks, labelled lines and legend entries, and colour bar labels."""
    import plot_gpt2
    seen = {}
    save = plot_gpt2._save

    def describe(fig, path):
        fig.canvas.draw()
        axes = []
        for ax in fig.axes:
            lo, hi = sorted(ax.get_xlim())
            legend = ax.get_legend()
            axes.append(dict(title=ax.get_title(), xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel(),
                             xticks=[t for t in ax.get_xticks() if lo <= t <= hi],
                             lines=[line.get_label() for line in ax.get_lines()],
                             legend=[t.get_text() for t in legend.get_texts()] if legend else []))
        seen[os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))] = axes
        return save(fig, path)

    monkeypatch.setattr(plot_gpt2, "_save", describe)
    return seen


def test_figures_say_what_they_show(runs, tmp_path, monkeypatch):
    import compare
    seen = drawn_figures(monkeypatch)
    res = tmp_path / "res"
    compare.main([f"--runs={[str(runs / 'default'), str(runs / 'sigmoid')]}", f"--results_dir={res}", "--n_seqs=2",
                  "--eval_iters=1"])
    assert sorted(seen) == sorted([f"{v}/{f}" for v in ("default", "sigmoid")
                                   for f in ("layerwise.png", "view3d.png", "attention.png")] + ["res/compare_layerwise.png"])
    for name, axes in seen.items():
        assert (tmp_path / "res" / name.removeprefix("res/")).exists(), name
        for ax in axes:
            assert all(not label.startswith("_") for label in ax["lines"]), (name, ax)  # every line is named
            assert ax["legend"] == ax["lines"], (name, ax)  # and in the legend
    (compare_ax,) = seen["res/compare_layerwise.png"]
    assert compare_ax["xticks"] == [0, 1, 2] and compare_ax["legend"][:2] == ["default (iter 10)", "sigmoid (iter 10)"]
    assert compare_ax["title"].startswith("top-1 / median |block output| per layer")
    for variant in ("default", "sigmoid"):
        a = json.loads((res / variant / "analysis.json").read_text())
        shares = [layer["top_key_share"] for layer in a["attention_layers"]]
        sink = int(np.argmax(shares))  # the sink's layer: one key takes its largest share there
        assert a["view"]["attention_layer"] == sink
        heatmap, colorbar = seen[f"{variant}/attention.png"]
        assert heatmap["title"].startswith(f"{variant}, iter 10: attention of layer {sink}, mean over heads")
        assert f"takes {shares[sink]:.2f} of the attention" in heatmap["title"].replace("\n", " ")
        assert (heatmap["xlabel"], heatmap["ylabel"], colorbar["ylabel"]) == ("key", "query", "attention weight")
        assert f"|output of block {a['view']['layer']}|" in seen[f"{variant}/view3d.png"][0]["title"]
        (layerwise,) = seen[f"{variant}/layerwise.png"]
        assert layerwise["xticks"] == [0, 1, 2] and layerwise["legend"] == ["top-1", "top-2", "top-3", "median"]


def test_analyze_draws_the_attention_layer_it_is_given(runs, tmp_path):
    import analyze
    a = analyze.main([f"--out_dir={runs / 'default'}", "--n_seqs=2", f"--analysis_dir={tmp_path}",
                      "--attention_layer=0", "--layer=2"])
    assert (a["view"]["attention_layer"], a["view"]["layer"]) == (0, 2) and a["layers_are"] == "0-based"
    assert sorted(os.listdir(tmp_path)) == ["analysis.json", "attention.png", "layerwise.png", "view3d.png"]


@pytest.fixture(scope="module")
def wide_vocabulary(tmp_path_factory):
    """A dataset of 100 token ids, more than the runs' model has."""
    folder = tmp_path_factory.mktemp("wide")
    for split in ("train", "val"):
        (np.arange(2000) % 100).astype(np.uint16).tofile(folder / f"{split}.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump(dict(vocab_size=100), f)
    return folder


@pytest.mark.parametrize("script,args,message", [
    ("evaluate", ["--eval_iters=0"], "--eval_iters must be at least 1, got 0"),
    ("evaluate", ["--batch_size=0"], "--batch_size must be at least 1"),
    ("evaluate", ["--block_size=99"], "--block_size 99 exceeds the model's block_size 16"),
    ("evaluate", ["--block_size=-3"], "--block_size must be at least 0"),
    ("evaluate", ["--dataset={wide}"], "has 100 token ids, more than the checkpoint's 17"),
    ("analyze", ["--n_seqs=0"], "--n_seqs must be at least 1"),
    ("analyze", ["--seq_len=-2"], "--seq_len must be at least 0"),
    ("analyze", ["--prompt_tokens=0"], "--prompt_tokens must be at least 1"),
    ("analyze", ["--attention_layer=3"], r"--attention_layer must be in 0\.\.2 \(-1: chosen from the statistics\)"),
    ("analyze", ["--layer=-2"], "--layer must be at least -1"),
    ("analyze", ["--analysis_dir={file}"], "is a file, not a folder"),
    ("analyze", ["--analysis_dir={file}/below"], "is a file, not a folder"),
    ("analyze", ["--device=auto", "--dataset={wide}"], "more than the checkpoint's"),
    ("plot_gpt2", ["{file}"], "is not readable JSON"),
    ("plot_gpt2", ["{run}/train_log.jsonl"], "is not readable JSON"),
    ("plot_gpt2", ["{json}"], "is not an analyze.py analysis.json"),
    ("plot_gpt2", [], "give one or more analysis.json files"),
])
def test_user_mistakes_end_in_a_user_error_before_anything_is_written(script, args, message, runs, wide_vocabulary,
                                                                     tmp_path):
    run = run_copy(runs, tmp_path)
    (tmp_path / "file").write_text("not JSON")
    (tmp_path / "other.json").write_text('{"rows": []}')
    before = files_under(tmp_path)
    module = __import__(script)
    given = [a.format(wide=wide_vocabulary, file=tmp_path / "file", run=run, json=tmp_path / "other.json")
             for a in args]
    with pytest.raises(UserError, match=message):
        module.main(given + ([f"--out_dir={run}"] if script != "plot_gpt2" else []))
    assert files_under(tmp_path) == before


def test_user_mistakes_on_the_command_line_are_one_line_and_exit_2(runs, tmp_path):
    (tmp_path / "file").write_text("not JSON")
    for script, args, message in (
            ("evaluate.py", [f"--out_dir={runs / 'default'}", "--eval_iters=0"], "--eval_iters must be at least 1"),
            ("emergence.py", [f"--runs={[str(tmp_path / 'gone')]}", f"--results_dir={tmp_path / 'out'}"],
             "no ckpt_<iter>.pt"),
            ("plot_gpt2.py", [str(tmp_path / "file")], "is not readable JSON")):
        r = run_script(script, *args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith(f"{script}: error: ") and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["file"]
