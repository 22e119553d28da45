"""bench/gpu_check.py at reduced sizes on the CPU (--device cpu --quick): every part runs and reports values that
agree with its own raw measurements and with independent counts, and a comparison that does not hold is a failure."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.paper_figures import FIGURES
from lib.tiny_models import FAMILY_CONFIGS, tiny_model
from monkey_patch import ModelView

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "gpt-2"))
import gpu_check  # noqa: E402
from model import VARIANTS, GPT, GPTConfig  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    return report, (out / "gpu_check.md").read_text()


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_capture_is_exact_on_every_family(quick):
    part = quick[0]["parts"]["capture_exact"]
    assert "error" not in part and part["families"] == list(FAMILY_CONFIGS)
    rows = {c["check"]: c for c in part["checks"]}
    for family in FAMILY_CONFIGS:
        logits = rows[f"{family}: logits inside a capture of every point"]
        assert logits["passed"] and logits["value"] < gpu_check.LOGITS_ATOL
        if ModelView(tiny_model(family)).family.registry:  # the model's own kernel ran: nothing may differ
            assert logits["target"] == "bit for bit" and logits["value"] == 0
        for what in ("attention maps", "column sums"):
            row = rows[f"{family}: bf16 {what} vs eager"]
            assert row["passed"] and 0 <= row["value"] < 0.05
    assert part["passed"]


def test_capture_cost_ratios_are_those_of_the_measurements(quick):
    part = quick[0]["parts"]["capture_cost"]
    assert "error" not in part and len(part["checks"]) == 4
    timing, memory = part["bench_capture"]["time"], part["bench_capture"]["memory"]
    scale = part["bench_scale"]
    expected = [timing["capture_s"] / timing["plain_s"], memory["peak_bytes"]["stats"] / memory["peak_bytes"]["plain"],
                scale["time"]["stats_s"] / scale["time"]["logits_s"],
                scale["peak_bytes_above_weights"]["stats"] / scale["peak_bytes_above_weights"]["logits"]]
    targets = [gpu_check.TIME_TARGET, gpu_check.MEMORY_TARGET] * 2
    for row, value, target in zip(part["checks"], expected, targets):
        assert positive(row["value"]) and row["value"] == pytest.approx(value)
        assert row["target"] == f"<= {target}" and row["passed"] == (value <= target)
    assert timing["plain_s"] == min(plain for plain, _ in timing["pairs_s"])  # the fastest of the runs
    assert timing["capture_s"] == min(captured for _, captured in timing["pairs_s"])
    assert part["memory_measure"] == "resident set, sampled"


def test_figure_suite_completes(quick):
    part = quick[0]["parts"]["figures"]
    assert "error" not in part and part["passed"]
    assert part["checks"][0]["value"] == len(FIGURES)
    assert set(part["seconds_per_figure"]) == set(FIGURES)
    assert positive(part["seconds"]) and part["seconds"] >= sum(part["seconds_per_figure"].values()) - 1


def test_offload_part_compares_every_figure_with_the_whole_model(quick):
    part = quick[0]["parts"]["offload"]
    assert "error" not in part and part["passed"] and part["differences"] == {}
    runs = part["runs"]
    assert runs["whole"]["placement"] == {"layers": {"cpu": 4}, "offloaded_layers": 0}
    assert runs["offloaded"]["placement"] == {"layers": {"cpu": 2, "disk": 2}, "offloaded_layers": 2}
    figures, layers, held = part["checks"]
    assert figures["value"] == 0 and layers["value"] == 2
    s = gpu_check.SIZES["quick"]["figure_dims"]  # one layer's bf16 bytes, counted by hand: q, k, v, o, MLP, 2 norms
    one_layer = 2 * (4 * s["hidden"] ** 2 + 3 * s["hidden"] * s["intermediate"] + 2 * s["hidden"])
    assert part["layer_bytes"] == one_layer and held["target"] == f"<= {one_layer}"
    assert 0 < held["value"] == runs["offloaded"]["loaded_peak_bytes"] <= one_layer  # read from disk, a module at a time
    assert runs["whole"]["loaded_peak_bytes"] == 0


def test_gpt2_table_names_every_variant_with_its_ratio(quick):
    report, md = quick
    part = report["parts"]["gpt2"]
    assert "error" not in part
    table = part["throughput"]
    assert list(table) == ["plain_sdpa", *VARIANTS]
    for name, row in table.items():
        assert positive(row["tokens_per_s"]) and row["mfu"] is None  # no peak FLOPs for a CPU
        assert row["vs_default"] == pytest.approx(row["tokens_per_s"] / table["default"]["tokens_per_s"])
        assert f"| {name} |" in md
    s = part["settings"]  # FLOPs per token, counted independently: 6 N + 12 L d T
    model = GPT(GPTConfig(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], block_size=s["block_size"],
                          vocab_size=s["vocab_size"]))
    n = model.get_num_params()  # without the position table
    assert table["default"]["flops_per_token"] == 6 * n + 12 * s["n_layer"] * s["n_embd"] * s["block_size"]
    rows = {c["check"]: c for c in part["checks"]}
    assert rows["default / plain SDPA GPT, tokens/s"]["value"] == pytest.approx(
        table["default"]["tokens_per_s"] / table["plain_sdpa"]["tokens_per_s"])
    assert {f"{v} / default, tokens/s" for v in VARIANTS if v != "default"} < set(rows)
    assert "backend eager" in part["compile"]  # the CPU run says that inductor was left out


def test_report_carries_provenance_and_one_row_per_check(quick):
    report, md = quick
    assert report["quick"] and report["device"] == "cpu"
    assert report["provenance"]["project"] and report["provenance"]["versions"]["torch"] == torch.__version__
    assert report["passed"] == all(p["passed"] for p in report["parts"].values())
    checks = sum(len(p["checks"]) for p in report["parts"].values())
    assert md.count("| pass |") + md.count("| FAIL |") == checks


def test_a_comparison_that_does_not_hold_is_a_failure():
    a = torch.randn(2, 3, 5)
    b = a.clone()
    b[1, 2, 4] += 1e-3
    exact = gpu_check.compare("logits", b, a, exact=True)
    assert not exact["passed"] and exact["value"] == pytest.approx(1e-3, rel=1e-2)
    assert not gpu_check.compare("maps", b, a, atol=1e-4)["passed"]
    assert gpu_check.compare("maps", b, a, atol=1e-2)["passed"]
    assert gpu_check.compare("same", a, a.clone(), exact=True)["passed"]
    assert not gpu_check.compare("shape", a, a[:1])["passed"]
    assert not gpu_check.check("time", 1.2, "<=", 1.1)["passed"]
    assert gpu_check.check("time", 1.05, "<=", 1.1)["passed"]
    assert not gpu_check.check("ratio", 0.4, ">=", 0.5)["passed"]
    assert not gpu_check.check("ratio", float("nan"), "<=", 1.1)["passed"]
    assert not gpu_check.check("ratio", None, "<=", 1.1)["passed"]


def test_a_part_that_breaks_is_reported_and_the_report_says_so():
    def broken(args, sizes):
        raise RuntimeError("kernel launch failed")

    def failing(args, sizes):
        return {"checks": [gpu_check.check("variant / default", 0.3, ">=", 0.5)]}

    report = {"device_name": "CPU", "command": "python bench/gpu_check.py", "quick": True,
              "parts": {"broken": gpu_check.run_part(broken, None, None),
                        "failing": gpu_check.run_part(failing, None, None)}, "passed": False}
    assert not report["parts"]["broken"]["passed"] and "kernel launch failed" in report["parts"]["broken"]["error"]
    assert not report["parts"]["failing"]["passed"]
    md = gpu_check.markdown(report)
    assert "| broken | ran | - | completes | FAIL | RuntimeError: kernel launch failed |" in md
    assert "| failing | variant / default | 0.3 | >= 0.5 | FAIL |" in md


@pytest.mark.parametrize("argv, message", [(["--parts", "capture,gpt2"], "unknown part(s) capture"),
                                           (["--device", "gpu0"], "not a device"),
                                           (["--peak-tflops", "0"], "must be positive")])
def test_bad_flags_are_one_line_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main([*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
