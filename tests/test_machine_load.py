"""lib/machine_load.py: the other processes' share of the CPUs by hand from two /proc/stat readings, and the
benches' refusal to overwrite a committed result from a loaded machine."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib import machine_load
from lib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def stat_file(tmp_path, name, user, system, idle, iowait):
    """A /proc/stat with two CPUs; ticks: user nice system idle iowait irq softirq steal."""
    path = tmp_path / name
    path.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0\n"
                    "intr 1\n")
    return str(path)


def test_the_others_share_is_busy_time_less_this_process_over_all_cpus_time(tmp_path, monkeypatch):
    """Two CPUs for 10 s: 2000 ticks (100 per second). Between the readings 1000 busy ticks (800 user, 200
    system), 1000 idle and iowait; this process used 4 s: others 10 s - 4 s of 20 s = 0.3."""
    before = stat_file(tmp_path, "a", 5000, 1000, 9000, 500)
    after = stat_file(tmp_path, "b", 5800, 1200, 9900, 600)
    assert machine_load.cpu_ticks(before) == (6000, 15500, 2)
    readings = iter([before, after])
    monkeypatch.setattr(machine_load, "STAT", None)
    monkeypatch.setattr(machine_load, "cpu_ticks", lambda path=None, real=machine_load.cpu_ticks: real(next(readings)))
    own = iter([100.0, 104.0])
    monkeypatch.setattr(machine_load, "own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(machine_load.os, "sysconf", lambda name: 100)
    load = machine_load.MachineLoad().read()
    assert load["others_cpu_share"] == pytest.approx(0.3) and load["loaded"] and load["cpus"] == 2
    assert load["own_cpu_s"] == 4.0 and load["loaded_above"] == machine_load.LOADED_SHARE


def test_no_proc_stat_leaves_the_load_unknown(monkeypatch):
    monkeypatch.setattr(machine_load, "cpu_ticks", lambda path=None: None)
    load = machine_load.MachineLoad().read()
    assert load["others_cpu_share"] is None and load["loaded"] is None and load["seconds"] >= 0


def committed(tmp_path):
    """A git repository with one committed result file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    (repo / "result.json").write_text("{}")
    subprocess.run(["git", "-C", str(repo), "add", "result.json"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "r"], check=True)
    return repo / "result.json"


def test_a_committed_result_is_not_overwritten_from_a_loaded_or_unmeasured_machine(tmp_path):
    result = committed(tmp_path)
    loaded = dict(loaded=True, others_cpu_share=0.42, cpus=2, load_average_end=[3.1, 2.0, 1.5])
    idle = dict(loaded=False, others_cpu_share=0.01, cpus=2, load_average_end=[0.1, 0.1, 0.1])
    unknown = dict(loaded=None, others_cpu_share=None, cpus=2, load_average_end=None)
    with pytest.raises(UserError, match="other processes used 42% of the 2 CPUs.*--allow-loaded"):
        machine_load.refuse_loaded_overwrite(result, loaded, allow_loaded=False)
    with pytest.raises(UserError, match="cannot be measured"):
        machine_load.refuse_loaded_overwrite(result, unknown, allow_loaded=False)
    machine_load.refuse_loaded_overwrite(result, loaded, allow_loaded=True)
    machine_load.refuse_loaded_overwrite(result, idle, allow_loaded=False)
    machine_load.refuse_loaded_overwrite(tmp_path / "repo" / "new.json", loaded, allow_loaded=False)  # not committed
    machine_load.refuse_loaded_overwrite(tmp_path / "elsewhere.json", loaded, allow_loaded=False)


TINY_VARIANTS = ["--n_layer=1", "--n_head=1", "--n_embd=8", "--block_size=8", "--batch_size=1", "--vocab_size=16",
                 "--steps=1", "--repeats=1", "--variants=default", "--device=cpu"]


def test_a_bench_records_the_load_and_refuses_a_loaded_overwrite(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_gpt2_variants
    out = tmp_path / "variants.json"
    bench_gpt2_variants.main(TINY_VARIANTS + ["--out", str(out)])
    load = json.loads(out.read_text())["provenance"]["machine_load"]
    assert load["seconds"] > 0 and load["loaded_above"] == machine_load.LOADED_SHARE and "others_cpu_share" in load
    result = committed(tmp_path)
    monkeypatch.setattr(machine_load, "LOADED_SHARE", -1.0)  # every machine counts as loaded
    with pytest.raises(UserError, match="not overwriting the committed result"):
        bench_gpt2_variants.main(TINY_VARIANTS + ["--out", str(result)])
    assert result.read_text() == "{}"
    bench_gpt2_variants.main(TINY_VARIANTS + ["--out", str(result), "--allow-loaded"])
    assert json.loads(result.read_text())["provenance"]["machine_load"]["loaded"]


@pytest.mark.parametrize("bench", ["bench_capture", "bench_scale", "bench_gpt2_variants"])
def test_every_bench_takes_allow_loaded(bench, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    module = __import__(bench)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0 and "--allow-loaded" in capsys.readouterr().out
