"""Cost of capture, printed as ratios.

1. time: capturing every point the figure scripts need at one layer vs a plain forward pass (target <= 1.1x);
2. memory: per-layer top-k/median statistics and attention column sums for ALL layers vs a plain eager
   forward pass (target <= 1.0x), and vs the reference code's approach (full fp64 copies of every layer's
   activations and full attention maps). Peak memory above the loaded model: CUDA's allocator statistics on a
   GPU, the process's resident memory sampled every millisecond on the CPU (each mode in its own process).

    python bench/bench_capture.py                      # default model, 2048 tokens for memory, 512 for time
    python bench/bench_capture.py --model llama2_7b --model-path /models --device cuda
    python bench/bench_capture.py --shape llama-30x576   # a random-init model of that shape (no download)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.errors import user_errors_exit  # noqa: E402
from lib import machine_load  # noqa: E402
from lib.provenance import provenance  # noqa: E402
from lib.models import DEFAULT_MODEL, load_model  # noqa: E402
from monkey_patch import Capture, ModelView  # noqa: E402
from lib import reducers  # noqa: E402

ACTIVATIONS = ("resid_post", "mlp.down_in")
# Each memory mode runs in a fresh process whose glibc hands blocks over 64 KiB out as their own mappings: freed,
# they leave the resident set at once. Otherwise freed memory stays in the heap and the resident peak depends
# on allocation timing (the same run measured 695 and 1192 MiB); this way repeats agree within 0.1%.
MEMORY_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
STAT_POINTS = ["resid_post", "mlp.down_in", "attn.pattern"]  # what the figures' all-layer statistics capture


def _llama(**kw):
    import transformers
    return transformers.LlamaConfig(**kw)


def _default_shape():
    import transformers
    from lib.models import default_model_folder
    return transformers.AutoConfig.from_pretrained(default_model_folder())


# Random-init shapes: weights do not matter for time or memory, so no download is needed.
SHAPES = {
    "llama-30x576": lambda: _llama(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
    "llama2-7b-2layers": lambda: _llama(num_hidden_layers=2, hidden_size=4096, intermediate_size=11008,
                                        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "gemma3-270m": _default_shape,
    "llama-2x256": lambda: _llama(num_hidden_layers=2, hidden_size=256, intermediate_size=688,  # quick CPU checks
                                  num_attention_heads=4, num_key_value_heads=4, vocab_size=1024),
}


def _load(args, attn_implementation=None):
    """The model to bench: a registry/folder model, or a random-init one of --shape."""
    if not args.shape:
        return load_model(args.model, args.model_path, args.device, args.dtype, attn_implementation=attn_implementation)[0]
    import transformers
    torch.manual_seed(0)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = transformers.AutoModelForCausalLM.from_config(SHAPES[args.shape](), **kwargs)
    return model.to(args.device or "cpu").eval()


def _inputs(model, tokens, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (1, tokens), generator=g).to(model.device)


def bench_time(args):
    model = _load(args)
    view = ModelView(model)
    ids = _inputs(model, args.time_tokens)
    layer = view.num_layers // 2

    decoder = model.base_model  # the figure scripts need internals, not the vocabulary head

    def plain():
        decoder(ids)

    def captured():
        with Capture(model, view.supported_points(), layers=[layer]):
            decoder(ids)

    def seconds(fn):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.no_grad():
        plain(), captured()  # warm up
        # alternated, so that a busy machine slows both alike
        pairs = [(seconds(plain), seconds(captured)) for _ in range(args.repeats)]
    summary = fastest_ratio(pairs)
    return {"tokens": args.time_tokens, "layer": layer, "plain_s": summary["fastest_s"][0],
            "capture_s": summary["fastest_s"][1], "ratio": summary["ratio"],
            "ratio_median_of_pairs": summary["ratio_median_of_pairs"], "pairs_s": pairs}


class _PeakRSS:
    """Sample this process's resident memory every millisecond while active."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def statistics_pass(model, ids, mode: str) -> list:
    """One decoder pass over ids capturing STAT_POINTS in every layer. 'stats': reduced on the fly (top-3 and
    median, attention column sums); 'reference': the full tensors kept as fp64 CPU copies, as the reference code
    keeps them (returned, so they stay alive while memory is measured)."""
    if mode == "stats":
        reduce = reducers.by_point({"attn.pattern": reducers.attention_column_sums}, default=reducers.topk_median(3))
        with Capture(model, STAT_POINTS, reduce=reduce):
            model.base_model(ids)
        return []
    with Capture(model, STAT_POINTS) as cap:
        model.base_model(ids)
    kept = [cap[key].double() for key in cap.keys()]
    cap.clear()
    return kept


def peak_bytes(model, ids, run) -> int:
    """Peak memory above the loaded model while run(ids) runs; run returns the CPU tensors it keeps (counted beside
    a GPU's peak, where they do not show). The steady state: run(ids) goes once first, so that what a mode needs
    once per process does not count, for any mode: memory-mapped weights, code and modules, and the kernels
    oneDNN caches for each matrix shape (about 15 MiB for the attention chunks' bf16 products)."""
    cuda = next(model.parameters()).device.type == "cuda"
    with torch.no_grad():
        run(ids).clear()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with _PeakRSS() as rss:
            kept = run(ids)
        if cuda:
            return torch.cuda.max_memory_allocated() - base + sum(t.numel() * 8 for t in kept)
    return rss.peak - rss.base


def bench_memory_mode(args) -> int:
    """Peak bytes above the loaded model for one mode: plain | stats | reference."""
    attn = "eager" if args.memory_mode in ("plain", "reference") else None
    model = _load(args, attn)
    ids = _inputs(model, args.memory_tokens)
    def run(x):
        if args.memory_mode == "plain":
            model.base_model(x)
            return []
        return statistics_pass(model, x, args.memory_mode)
    return peak_bytes(model, ids, run)


def at_least_one(text: str) -> int:
    """argparse type of the benches' counts (tokens, layers, repeats): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def median_peak(cmd: list, repeats: int) -> tuple[int, list]:
    """Run a memory-mode command ([python, script, "--memory-mode", mode, ...]: it prints its peak bytes last) in
    `repeats` fresh processes under MEMORY_ENV: (the median peak, every sample)."""
    samples = []
    for _ in range(repeats):
        out = subprocess.run(cmd, capture_output=True, text=True, env=MEMORY_ENV)
        if out.returncode != 0:
            raise SystemExit(f"memory run {cmd[3]} failed: {out.stderr.strip().splitlines()[-1:]}")
        samples.append(int(out.stdout.strip().splitlines()[-1]))
    return int(statistics.median(samples)), samples


def fastest_ratio(pairs) -> dict:
    """Alternating (baseline, measured) times: a machine's noise only ever adds time, so the ratio of the fastest
    of each, with the median of the pair ratios beside it."""
    fastest = min(a for a, _ in pairs), min(b for _, b in pairs)
    return {"fastest_s": fastest, "ratio": fastest[1] / fastest[0],
            "ratio_median_of_pairs": statistics.median(b / a for a, b in pairs), "pairs_s": pairs}


def bench_memory(args, reference=True):
    """Each mode's peak in fresh processes: the median of --memory-repeats runs for plain and stats (a CPU's
    resident-memory peak varies by a quarter from run to run with the allocator's timing), one for the reference
    (left out with reference=False)."""
    results, samples = {}, {}
    for mode in ("plain", "stats") + (("reference",) if reference else ()):
        cmd = [sys.executable, __file__, "--memory-mode", mode, "--model", args.model, "--memory-tokens",
               str(args.memory_tokens)]
        for flag, value in (("--model-path", args.model_path), ("--device", args.device), ("--dtype", args.dtype),
                            ("--shape", args.shape)):
            if value:
                cmd += [flag, value]
        results[mode], samples[mode] = median_peak(cmd, 1 if mode == "reference" else args.memory_repeats)
    summary = {"tokens": args.memory_tokens, "peak_bytes": results, "peak_bytes_samples": samples,
               "stats_vs_plain_eager": results["stats"] / results["plain"]}
    if reference:
        summary.update(reference_vs_plain_eager=results["reference"] / results["plain"],
                       reference_vs_stats=results["reference"] / results["stats"])
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--model-path")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random-init model of this shape instead of --model")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--time-tokens", type=at_least_one, default=1024)
    p.add_argument("--memory-tokens", type=at_least_one, default=2048)
    p.add_argument("--repeats", type=at_least_one, default=21)
    p.add_argument("--memory-repeats", type=at_least_one, default=3, help="processes per memory mode (plain, stats)")
    p.add_argument("--memory-mode", choices=("plain", "stats", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="default bench/results/capture.json, or capture_<shape>.json")
    p.add_argument("--allow-loaded", action="store_true", help=machine_load.ALLOW_LOADED_HELP)
    args = p.parse_args(argv)
    args.out = args.out or f"bench/results/capture{'_' + args.shape if args.shape else ''}.json"
    with user_errors_exit("bench_capture"):
        if args.memory_mode:
            print(bench_memory_mode(args))
            return
        load = machine_load.check_before(args.out, args.allow_loaded)
        timing = bench_time(args)
        print(f"time, one layer, all figure points, {timing['tokens']} tokens: capture / plain forward = "
              f"{timing['ratio']:.3f}x  (target <= 1.1x; fastest of {args.repeats}: {timing['capture_s']:.3f}s vs "
              f"{timing['plain_s']:.3f}s; median of the pair ratios {timing['ratio_median_of_pairs']:.3f}x)")
        memory = bench_memory(args)
        mib = {k: v / 2**20 for k, v in memory["peak_bytes"].items()}
        print(f"memory, all layers, {memory['tokens']} tokens, peak above the loaded model: "
              f"plain eager {mib['plain']:.0f} MiB, on-the-fly stats {mib['stats']:.0f} MiB, "
              f"reference (full fp64 tensors) {mib['reference']:.0f} MiB")
        print(f"  stats / plain eager = {memory['stats_vs_plain_eager']:.3f}x  (target <= 1.0x)")
        print(f"  reference / plain eager = {memory['reference_vs_plain_eager']:.3f}x; "
              f"reference / stats = {memory['reference_vs_stats']:.1f}x")
        prov = provenance(device=args.device, dtype=args.dtype)
        prov["machine_load"] = machine_load.check_after(args.out, load, args.allow_loaded)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": args.model if not args.shape else f"random-init {args.shape}", "shape": args.shape, "device": args.device or "default", "time": timing,
                                   "memory": memory,
                                   "command": " ".join(sys.argv if argv is None else [__file__, *argv]),
                                   "provenance": prov}, indent=2))
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
