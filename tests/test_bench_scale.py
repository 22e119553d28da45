"""bench/bench_scale.py at a reduced size: every mode measured in its own process, the ratios and the 32-layer
estimate written with the command (the full size is LLaMA-2-7B's width at 4096 tokens; see bench/results/)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_scale  # noqa: E402


def llama_parameters(layers, hidden, intermediate, vocab):
    """(per layer, whole model) parameter counts of a LLaMA with as many key/value heads as query heads, by hand:
    q, k, v, o (hidden x hidden each), gate, up, down (hidden x intermediate each), two RMSNorm weights per
    layer; an input embedding and an untied LM head (vocab x hidden each) and the final norm."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return per_layer, 2 * vocab * hidden + hidden + layers * per_layer


def test_reduced_size_run_writes_every_ratio(tmp_path):
    out = tmp_path / "scale.json"
    result = bench_scale.main(["--layers", "2", "--tokens", "128", "--hidden", "64", "--intermediate", "160",
                               "--heads", "4", "--vocab", "500", "--repeats", "1", "--memory-repeats", "1",
                               "--reference", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["peak_bytes_above_weights"]) == {"logits", "decoder", "stats", "reference"}
    assert all(v >= 0 for v in saved["peak_bytes_above_weights"].values())
    assert saved["time"]["stats_vs_logits"] > 0 and saved["provenance"]["command"]
    # bf16: two bytes per parameter; the 32-layer estimate swaps the 2 measured layers for 32
    per_layer, whole = llama_parameters(layers=2, hidden=64, intermediate=160, vocab=500)
    assert (saved["time"]["layer_weights_bytes"], saved["time"]["weights_bytes"]) == (2 * per_layer, 2 * whole)
    full = 2 * llama_parameters(layers=32, hidden=64, intermediate=160, vocab=500)[1]
    peaks = result["peak_bytes_above_weights"]
    assert saved["estimate_32_layers_bytes"]["decoder"] == full + peaks["decoder"]
    assert saved["estimate_32_layers_bytes"]["reference"] == full + 16 * peaks["reference"]  # it grows per layer
    assert saved["stats_vs_logits_memory"] == pytest.approx(peaks["stats"] / peaks["logits"])


def test_every_capture_bench_shape_is_the_model_it_is_named_after():
    """llama-30x576: 30 layers x 576; llama2-7b-2layers: LLaMA-2-7B's published width (4096, MLP 11008, 32 heads
    and key/value heads, vocabulary 32000) with 2 layers; gemma3-270m: the default model's GGUF file's own
    metadata, read with the gguf package (an integration check: the shape reads the converted model's config)."""
    import bench_capture
    import gguf

    from lib.gguf_models import default_gguf
    llama = bench_capture.SHAPES["llama-30x576"]()
    assert (llama.num_hidden_layers, llama.hidden_size) == (30, 576)
    seven = bench_capture.SHAPES["llama2-7b-2layers"]()
    assert (seven.num_hidden_layers, seven.hidden_size, seven.intermediate_size, seven.num_attention_heads,
            seven.num_key_value_heads, seven.vocab_size) == (2, 4096, 11008, 32, 32, 32000)
    reader = gguf.GGUFReader(default_gguf())
    meta = lambda key: reader.fields[f"gemma3.{key}"].contents()  # noqa: E731
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")  # [hidden, vocab], GGUF's order
    gemma = bench_capture.SHAPES["gemma3-270m"]()
    assert (gemma.num_hidden_layers, gemma.hidden_size, gemma.intermediate_size, gemma.num_attention_heads,
            gemma.num_key_value_heads, gemma.head_dim) == \
        (meta("block_count"), meta("embedding_length"), meta("feed_forward_length"), meta("attention.head_count"),
         meta("attention.head_count_kv"), meta("attention.key_length"))
    assert gemma.vocab_size == int(embedding.shape[1])


def test_a_count_below_one_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_scale.main(["--repeats", "0"])
    assert exit_.value.code == 2
    assert "--repeats: must be an integer >= 1, got '0'" in capsys.readouterr().err
