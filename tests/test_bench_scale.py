"""bench/bench_scale.py at a reduced size: every mode measured in its own process, the ratios and the 32-layer
estimate written with the command (the full size is LLaMA-2-7B's width at 4096 tokens; see bench/results/)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_scale  # noqa: E402


def test_reduced_size_run_writes_every_ratio(tmp_path):
    out = tmp_path / "scale.json"
    result = bench_scale.main(["--layers", "2", "--tokens", "128", "--hidden", "64", "--intermediate", "160",
                               "--heads", "4", "--vocab", "500", "--repeats", "1", "--memory-repeats", "1",
                               "--reference", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["peak_bytes_above_weights"]) == {"logits", "decoder", "stats", "reference"}
    assert all(v >= 0 for v in saved["peak_bytes_above_weights"].values())
    assert saved["time"]["stats_vs_logits"] > 0 and saved["provenance"]["command"]
    w = result["time"]
    full = w["weights_bytes"] + 30 * w["layer_weights_bytes"]  # 2 layers measured, 32 estimated
    assert result["estimate_32_layers_bytes"]["decoder"] == full + result["peak_bytes_above_weights"]["decoder"]


def test_every_capture_bench_shape_builds_its_config():
    # the default model's shape reads the converted default model's config (an integration check)
    import bench_capture
    for name, config in bench_capture.SHAPES.items():
        assert config().num_hidden_layers >= 2, name


def test_a_count_below_one_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_scale.main(["--repeats", "0"])
    assert exit_.value.code == 2
    assert "--repeats: must be an integer >= 1, got '0'" in capsys.readouterr().err
