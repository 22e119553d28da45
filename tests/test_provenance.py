"""The provenance block (lib/provenance.py) in the result files: complete, stable between two runs of the same
thing except for the time, with a weights hash that follows the weights."""
import hashlib
import json
import re
import subprocess
from pathlib import Path

import torch

from lib import cli
from lib.models import ModelSpec
from lib.provenance import file_sha256, model_source, provenance, short

ROOT = Path(__file__).resolve().parents[1]


def test_block_names_code_versions_model_and_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SYSTEMATIC_OUTLIERS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "notes.txt").write_bytes(b"not weights")
    spec = ModelSpec("m", str(folder), "M", 8, "float32")
    a = provenance(spec, data={"windows": 2}, device="cpu", dtype=torch.float32, command="python x.py")
    b = provenance(spec, data={"windows": 2}, device="cpu", dtype=torch.float32, command="python x.py")
    assert {k: v for k, v in a.items() if k != "utc"} == {k: v for k, v in b.items() if k != "utc"}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert a["project"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)  # None outside git
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert a["project"]["version"] == version
    assert a["versions"]["torch"] == torch.__version__ and a["data"] == {"windows": 2}
    assert a["dtype"] == "torch.float32" and a["device"] == "cpu" and a["command"] == "python x.py"
    # the weights hash: one "name:sha256 of its bytes" line per weight file (sha256("abc") is a published test
    # vector), hashed again; other files in the folder are not weights
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hashlib.sha256(b"abc").hexdigest() == abc
    assert a["model"]["weights_sha256"] == hashlib.sha256(f"model.safetensors:{abc}\n".encode()).hexdigest()
    (folder / "model.safetensors").write_bytes(b"abd")  # other weights, other hash
    abd = hashlib.sha256(b"abd").hexdigest()
    assert file_sha256(folder / "model.safetensors") == abd
    assert model_source(spec)["weights_sha256"] == hashlib.sha256(f"model.safetensors:{abd}\n".encode()).hexdigest()
    assert "weights sha256 " + a["model"]["weights_sha256"][:12] in short(a) and "python" not in short(a)


def test_every_figure_json_and_the_index_carry_it(tmp_path):
    import planted
    args = cli.parser().parse_args(["--savedir", str(tmp_path / "out"), "--nsamples", "2", "--seqlen", "32",
                                    "--data", str(tmp_path / "t.txt")])
    (tmp_path / "t.txt").write_text("Summer is warm. Winter is cold. " * 40)
    results = cli.run(["lifecycle_emergence", "pos_activation_outliers_layer"], args, model=planted.planted_llama(),
                      tokenizer=planted.CharTokenizer(), spec=planted.spec("planted", "Planted"))
    emergence, layer = results["lifecycle_emergence"], results["pos_activation_outliers_layer"]
    assert emergence["provenance"]["data"]["prompt_ids"] and "calibration" not in emergence["provenance"]["data"]
    assert layer["provenance"]["data"]["calibration"]["nsamples"] == 2
    assert layer["provenance"]["data"]["flags"]["seed"] == 1
    saved = json.loads((tmp_path / "out" / "planted" / "lifecycle_emergence.json").read_text())
    assert saved["provenance"]["command"].startswith("python")
    index = cli.write_index(tmp_path / "out" / "planted", "Planted", 1.0, [])
    assert "Made by systematic-outliers" in index.read_text()


def test_check_reruns_a_results_folder_and_finds_what_changed(tmp_path, monkeypatch):
    import sys

    import pytest
    from test_gpt2_capture import prepare_task, save_checkpoint

    from lib import check
    data = prepare_task(tmp_path / "task")
    out = save_checkpoint(tmp_path / "out-c", "default", dataset=data)
    figs = tmp_path / "figs"
    argv = ["--model", str(out), "--savedir", str(figs), "--only", "lifecycle_emergence",
            "pos_activation_outliers_layer", "--nsamples", "2"]
    monkeypatch.setattr(sys, "argv", ["reproduce.py", *argv])
    cli.reproduce_main(argv)
    folder = figs / "out-c"
    assert check.check_folder(folder, log=lambda s: None) == []  # the same code and weights: clean
    path = folder / "lifecycle_emergence.json"
    result = json.loads(path.read_text())
    result["channel"] += 1  # a tampered number
    result["value_after"] *= 1.5
    path.write_text(json.dumps(result))
    found = check.check_folder(folder, log=lambda s: None)
    assert any("/channel:" in d for d in found) and any("/value_after:" in d for d in found) and len(found) == 2
    assert check.main(folder, log=lambda s: None) == 1
    save_checkpoint(tmp_path / "out-c", "default", dataset=data, seed=5)  # other weights in the same place
    notes = []
    check.check_folder(folder, log=notes.append)
    assert any("not the ones" in n for n in notes)
    with pytest.raises(Exception, match="no result files"):
        check.check_folder(tmp_path / "task")


def test_rewritten_results_do_not_make_the_code_dirty(tmp_path, monkeypatch):
    import subprocess
    from lib import provenance as P

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "result.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(P, "ROOT", tmp_path)
    states = []
    for path, text in (("result.json", '{"a": 1}\n'), ("code.py", "x = 2\n")):
        (tmp_path / path).write_text(text)
        P.git_state.cache_clear()
        states.append(P.git_state()["dirty"])
    P.git_state.cache_clear()
    assert states == [False, True]
