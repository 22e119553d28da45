"""bench/README.md, rendered from its template (docs/templates/bench/README.md, lib/templates.py) with the numbers
of bench/results/ and the settings of the benches that made them. lib/ imports nothing of bench/, so this page has
its own command:

    python bench/pages.py          # writes bench/README.md; tests/test_pages.py checks the committed one
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import bench_capture  # noqa: E402
import bench_scale  # noqa: E402
from lib.files import write_text  # noqa: E402
from lib.page_values import load, require, span  # noqa: E402
from lib.templates import render_page  # noqa: E402
from monkey_patch import capture  # noqa: E402

PAGE = Path("bench/README.md")
CAPTURE_RUNS = {  # field prefix: the capture bench's result file, a row of the page's table each
    "default_model": "capture.json", "gemma3_270m_shape": "capture_gemma3-270m.json",
    "llama_30x576": "capture_llama-30x576.json", "llama2_7b_2layers": "capture_llama2-7b-2layers.json"}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def capture_bench(root: Path) -> dict:
    """The capture bench's table: per model or shape, time, peak memory and the reference's memory."""
    values = {}
    for row, name in CAPTURE_RUNS.items():
        b = load(root, f"bench/results/{name}")
        t, m = b["time"], b["memory"]
        mib = {k: v / 2**20 for k, v in m["peak_bytes"].items()}
        values[f"{row}_time"] = (f"{t['ratio']:.2f} ({t['capture_s']:.2f} s vs {t['plain_s']:.2f} s; median of pairs "
                                 f"{t['ratio_median_of_pairs']:.2f})")
        values[f"{row}_memory"] = f"{m['stats_vs_plain_eager']:.2f} ({mib['stats']:.0f} vs {mib['plain']:.0f} MiB)"
        values[f"{row}_reference"] = f"{m['reference_vs_plain_eager']:.1f} ({mib['reference']:.0f} MiB)"
    return values


def capture_bench_load(root: Path) -> dict:
    """The machine's load over the capture benches, from their provenance."""
    shares = [100 * load(root, f"bench/results/{name}")["provenance"]["machine_load"]["others_cpu_share"]
              for name in CAPTURE_RUNS.values()]
    return {"capture_load": span(shares, ".1f") + "%"}


def capture_bench_setup(root: Path) -> dict:
    """What the capture bench ran: tokens, repeats, processes, and the random-init shapes (bench_capture.SHAPES)."""
    b = load(root, "bench/results/capture.json")
    t, m = b["time"], b["memory"]
    c, seven = (bench_capture.SHAPES[name]() for name in ("llama-30x576", "llama2-7b-2layers"))
    return {"capture_time_tokens": str(t["tokens"]), "capture_memory_tokens": str(m["tokens"]),
            "capture_pairs": str(len(t["pairs_s"])), "capture_processes": str(len(m["peak_bytes_samples"]["plain"])),
            "llama_30x576_shape": f"{c.num_hidden_layers} layers x {c.hidden_size}, {c.num_attention_heads} heads, "
                                  f"{c.num_key_value_heads} KV heads",
            "llama2_7b_2layers_layers": str(seven.num_hidden_layers),
            "captured_map": f"{seven.num_attention_heads} x {t['tokens']} x {t['tokens']}"}


def variants_bench(root: Path) -> dict:
    """The gpt-2 variants' training speed against default, and default's against a plain SDPA GPT."""
    b = load(root, "bench/results/gpt2_variants.json")
    ratios = [v for k, v in b["variant_vs_default"].items() if k != "default"]
    return {"default_vs_plain": f"{b['default_vs_plain_sdpa']:.2f}", "variant_vs_default": span(ratios, ".2f"),
            "variants_load": f"{100 * b['provenance']['machine_load']['others_cpu_share']:.1f}%"}


def scale_bench(root: Path) -> dict:
    """The scale bench's table and its ratios."""
    b = load(root, "bench/results/scale.json")
    peak = {k: v / 2**30 for k, v in b["peak_bytes_above_weights"].items()}
    full = {k: v / 2**30 for k, v in b["estimate_32_layers_bytes"].items()}
    values = {f"{mode}_peak": f"{peak[mode]:.2f} GiB" for mode in ("logits", "stats", "reference")}
    values |= {f"{mode}_full": f"{full[mode]:.1f} GiB" for mode in ("logits", "stats", "reference")}
    return values | {"stats_vs_logits_memory": f"{b['stats_vs_logits_memory']:.2f}x",
                     "stats_vs_logits_time": f"{b['time']['stats_vs_logits']:.2f}x",
                     "stats_vs_logits_pairs": f"{b['time']['stats_vs_logits_median_of_pairs']:.2f}x"}


def scale_bench_setup(root: Path) -> dict:
    """What the scale bench ran (its settings, bench_scale.FULL_LAYERS), its goals and the machine's load."""
    b = load(root, "bench/results/scale.json")
    s, peak = b["settings"], b["peak_bytes_above_weights"]
    require(b["time"]["stats_vs_logits"] <= 1.1, "the time goal (<= 1.1x) is met")
    return {"hidden": str(s["hidden"]), "intermediate": str(s["intermediate"]), "heads": str(s["heads"]),
            "layers": str(s["layers"]), "full_layers": str(bench_scale.FULL_LAYERS), "dtype": DTYPES[s["dtype"]],
            "tokens": str(s["tokens"]), "memory_repeats": str(s["memory_repeats"]), "repeats": str(s["repeats"]),
            "memory_goal": "and so is the memory goal (<= 1.0x)" if b["stats_vs_logits_memory"] <= 1 else
                           "the memory goal (<= 1.0x) is missed",
            "peak_difference": f"{(peak['stats'] - peak['logits']) / 1e6:.1f}",
            "logits_peak_mb": f"{peak['logits'] / 1e6:.0f}",
            "scale_load": f"{100 * b['provenance']['machine_load']['others_cpu_share']:.1f}%",
            "scale_seconds": f"{b['provenance']['machine_load']['seconds']:.0f}",
            "column_sums": f"{s['heads'] * s['tokens'] * 4 / 2**20:.1f}"}  # float32 per head and key


def bench_constants(root: Path) -> dict:
    """Limits the page states, from the code that applies them (monkey_patch/capture.py, bench/bench_scale.py)."""
    return {"chunk_queries": str(capture.CHUNK_QUERIES), "chunk_mib": str(capture.CHUNK_ELEMENTS * 4 // 2**20),
            "gpu_gb": str(bench_scale.GPU_BYTES // 2**30)}


VALUES = (capture_bench, capture_bench_load, capture_bench_setup, variants_bench, scale_bench, scale_bench_setup,
          bench_constants)


def page(root: Path = ROOT) -> str:
    """bench/README.md as its template and the committed results make it."""
    return render_page(root, PAGE, VALUES)


if __name__ == "__main__":
    write_text(ROOT / PAGE, page())
    print(ROOT / PAGE, file=sys.stderr)
