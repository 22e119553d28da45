"""The paper-scale path checked on one GPU: capture, the figure suite and gpt-2/'s variants, each against its targets.

    python bench/gpu_check.py                         # CUDA, full sizes (meant to fit in about 8 minutes)
    python bench/gpu_check.py --device cpu --quick    # every part at reduced sizes, on a CPU
    python bench/gpu_check.py --parts gpt2 --out /tmp/check
    python bench/gpu_check.py --parts offload          # the figure suite with layers offloaded to CPU memory

Parts (each check has a target and a pass/fail verdict):
  capture_exact  every family's tiny model (lib/tiny_models.py): logits inside a capture of every point equal those
                 outside, bit for bit where attention goes through transformers' attention registry (within 1e-5
                 for the other families, whose probabilities come from a forced eager path); in bf16 the captured
                 attention maps and their column sums equal eager's output_attentions within bf16 precision.
  capture_cost   bench_capture at llama2-7b-2layers (all figure points at one layer vs a plain forward, 1024 tokens;
                 all-layer statistics vs a plain eager forward, 2048 tokens) and bench_scale's settings (LLaMA-2-7B
                 width, 2 layers, 4096 tokens, bf16, with --reference): time ratio the fastest of N alternating runs
                 (the median of the pair ratios beside it), peak memory ratio (torch.cuda.max_memory_allocated on a
                 GPU, resident memory on a CPU). Targets: time <= 1.1x, memory <= 1.0x.
  figures        reproduce.py's eleven figures on a random-init 4-layer model of LLaMA-2-7B's width in bf16, with
                 the paper's sample counts at 4096 tokens of synthetic text and a character tokenizer (no download):
                 completes, with its wall time.
  offload        the same suite on a model bigger than the memory it is given: the figure model's shape (4 layers)
                 saved to a folder and loaded twice with lib.models.load_model, whole on the device and with
                 accelerate's device map (--max-memory keeps 2 layers on the device; on a GPU the other 2 and the
                 LM head are offloaded to CPU memory, on a CPU to disk through --offload-folder), fewer calibration
                 sequences (4 x 1024 tokens). Targets: every figure's JSON equal to the whole model's within
                 lib/check.py's tolerance; 2 layers offloaded; the offloaded weights held at once at most one layer's
                 bytes (on a GPU: the offloaded run's peak memory above its resident weights less the whole run's,
                 torch.cuda.max_memory_allocated; on a CPU: the bytes loaded from the offload files, counted until
                 freed).
  gpt2           gpt-2/ training throughput at GPT-2-small shape (12 x 768, 1024 tokens, bf16 autocast, each block
                 compiled with torch.compile, fullgraph): tokens/s and model FLOPs utilisation of every variant, its
                 ratio to `default`, and `default`'s ratio to a plain SDPA GPT of the same shape. Targets: default
                 >= 0.95x the plain GPT, every variant >= 0.5x default.
Writes OUT/gpu_check.json (with provenance) and OUT/gpu_check.md, atomically, after every part, so a run cut short
keeps what it measured. --quick shrinks every size (and on a CPU compiles with dynamo's eager backend: inductor
needs minutes per variant there), so its verdicts say nothing about a GPU. Exit status 1 when a part could not run
(its error is in the report), else 0 whatever the verdicts.
"""
import argparse
import contextlib
import io
import math
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "gpt-2"))
import bench_capture  # noqa: E402
import bench_gpt2_variants  # noqa: E402
import bench_scale  # noqa: E402
from lib.errors import UserError, user_errors_exit  # noqa: E402
from lib.files import write_json, write_text  # noqa: E402
from lib.provenance import provenance  # noqa: E402

TIME_TARGET, MEMORY_TARGET = 1.1, 1.0
DEFAULT_VS_PLAIN_TARGET, VARIANT_VS_DEFAULT_TARGET = 0.95, 0.5
LOGITS_ATOL, LOGITS_RTOL = 1e-5, 1e-4  # families outside the registry: a forced eager path, equal up to rounding
BF16_MAPS = dict(atol=1e-2, rtol=1e-2)  # bf16 keeps 8 bits of mantissa: probabilities agree to about 4e-3
BF16_SUMS = dict(atol=5e-2, rtol=1e-2)  # a column sum adds up to 33 such probabilities
# Dense bf16 tensor-core peaks in FLOP/s, from NVIDIA's H100/H200 and A100 datasheets (which print twice these
# figures "with sparsity"); the first name found in torch.cuda.get_device_name() wins. Others: --peak-tflops.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("NVL", None), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12))

# Sizes of each part: the paper-scale ones, and the reduced ones of --quick
SIZES = {
    "full": dict(capture_shape="llama2-7b-2layers", time_tokens=1024, memory_tokens=2048, repeats=21,
                 scale=["--tokens", "4096", "--repeats", "11", "--reference"],
                 figure_dims=dict(hidden=4096, intermediate=11008, heads=32, vocab=32000), figure_flags=[],
                 figure_seqlen=4096, offload_flags=["--nsamples", "4", "--seqlen", "1024"],
                 gpt2=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, batch_size=16,
                           steps=10, repeats=3)),
    "quick": dict(capture_shape="llama-2x256", time_tokens=128, memory_tokens=256, repeats=3,
                  scale=["--tokens", "256", "--repeats", "3", "--hidden", "256", "--intermediate", "688", "--heads",
                         "4", "--vocab", "1024"],
                  figure_dims=dict(hidden=256, intermediate=688, heads=4, vocab=1024),
                  figure_flags=["--nsamples", "2", "--seqlen", "128"], figure_seqlen=128,
                  offload_flags=["--nsamples", "2", "--seqlen", "128"],
                  gpt2=dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=256, batch_size=2, steps=2,
                            repeats=1)),
}


# --- verdicts ---------------------------------------------------------------------------------------------------

def check(name, value, op, target, detail="") -> dict:
    """One row of the report: `value op target` decides the verdict; a missing or non-finite value fails."""
    finite = isinstance(value, (bool, int, float)) and (isinstance(value, bool) or math.isfinite(value))
    passed = finite and {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
    return {"check": name, "value": value, "target": f"{op} {target}", "passed": bool(passed), "detail": detail}


def compare(name, got, want, exact=False, atol=0.0, rtol=0.0) -> dict:
    """A row for two tensors: bit for bit (exact) or within atol + rtol * |want|; the value is the largest
    absolute difference."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    if got.shape != want.shape:
        return {"check": name, "value": None, "target": "same shape", "passed": False,
                "detail": f"shapes {tuple(got.shape)} and {tuple(want.shape)}"}
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    close = torch.equal(got, want) if exact else torch.allclose(got, want, atol=atol, rtol=rtol)
    target = "bit for bit" if exact else f"within atol {atol:g}, rtol {rtol:g}"
    return {"check": name, "value": diff, "target": target, "passed": bool(close), "detail": "largest |difference|"}


# --- 1. capture on every family's tiny model --------------------------------------------------------------------

def capture_exact(args, sizes) -> dict:
    from lib.tiny_models import FAMILY_CONFIGS
    ids = torch.randint(0, 128, (2, 33), generator=torch.Generator().manual_seed(1)).to(args.device)
    checks = []
    for family in FAMILY_CONFIGS:
        checks.append(logits_inside_capture(family, ids))
        checks += bf16_maps(family, ids)
    return {"families": list(FAMILY_CONFIGS), "tokens": list(ids.shape), "checks": checks}


@torch.no_grad()
def logits_inside_capture(family, ids) -> dict:
    from lib.tiny_models import tiny_model
    from monkey_patch import Capture, ModelView
    model = tiny_model(family).to(ids.device)
    view = ModelView(model)
    outside = model(ids).logits
    with Capture(model, view.supported_points()):
        inside = model(ids).logits
    registry = view.family.registry
    return compare(f"{family}: logits inside a capture of every point", inside, outside, exact=registry,
                   atol=LOGITS_ATOL, rtol=LOGITS_RTOL)


@torch.no_grad()
def bf16_maps(family, ids) -> list:
    """Captured bf16 attention maps and column sums against eager's output_attentions (same weights)."""
    from lib import reducers
    from lib.tiny_models import tiny_model
    from monkey_patch import Capture
    model = tiny_model(family).to(ids.device, torch.bfloat16)
    eager = tiny_model(family, attn_implementation="eager").to(ids.device, torch.bfloat16)
    eager.load_state_dict(model.state_dict())
    ref = eager(ids, output_attentions=True).attentions
    with Capture(model, ["attn.pattern"]) as maps:
        model(ids)
    with Capture(model, ["attn.pattern"], reduce=reducers.attention_column_sums) as sums:
        model(ids)
    layers = range(len(ref))
    got_maps = torch.stack([maps["attn.pattern", layer].cpu() for layer in layers])
    got_sums = torch.stack([torch.stack(sums.reduced("attn.pattern", layer)[0]) for layer in layers])
    want = torch.stack([probs.float().cpu() for probs in ref])
    return [compare(f"{family}: bf16 attention maps vs eager", got_maps, want, **BF16_MAPS),
            compare(f"{family}: bf16 column sums vs eager", got_sums, want.sum(-2), **BF16_SUMS)]


# --- 2. what a capture costs ------------------------------------------------------------------------------------

def capture_cost(args, sizes) -> dict:
    ns = argparse.Namespace(model=bench_capture.DEFAULT_MODEL, model_path=None, shape=sizes["capture_shape"],
                            device=args.device, dtype=None, time_tokens=sizes["time_tokens"],
                            memory_tokens=sizes["memory_tokens"], repeats=sizes["repeats"],
                            memory_repeats=memory_repeats(args))
    timing = bench_capture.bench_time(ns)
    memory = bench_capture.bench_memory(ns, reference=False)
    with tempfile.TemporaryDirectory() as tmp:
        scale = bench_scale.main(["--device", args.device, "--memory-repeats", str(memory_repeats(args)),
                                  "--out", os.path.join(tmp, "scale.json"), *sizes["scale"]])
    where = sizes["capture_shape"]
    checks = [
        check(f"bench_capture {where}: time, one layer, every point / plain ({timing['tokens']} tokens)",
              timing["ratio"], "<=", TIME_TARGET, ratio_detail(timing["ratio_median_of_pairs"], ns.repeats)),
        check(f"bench_capture {where}: memory, all-layer statistics / plain eager ({memory['tokens']} tokens)",
              memory["stats_vs_plain_eager"], "<=", MEMORY_TARGET, peaks_detail(memory["peak_bytes"])),
        check(f"bench_scale ({scale['settings']['tokens']} tokens, {scale['settings']['dtype']}): time, "
              "statistics / logits", scale["time"]["stats_vs_logits"], "<=", TIME_TARGET,
              ratio_detail(scale["time"]["stats_vs_logits_median_of_pairs"], scale["settings"]["repeats"])),
        check(f"bench_scale ({scale['settings']['tokens']} tokens, {scale['settings']['dtype']}): memory, "
              "statistics / logits", scale["stats_vs_logits_memory"], "<=", MEMORY_TARGET,
              peaks_detail(scale["peak_bytes_above_weights"]))]
    scale.pop("provenance")
    return {"memory_measure": "torch.cuda.max_memory_allocated" if on_cuda(args) else "resident set, sampled",
            "bench_capture": {"shape": ns.shape, "time": timing, "memory": memory}, "bench_scale": scale,
            "checks": checks}


def memory_repeats(args) -> int:
    """Processes per memory mode: one on a GPU (the allocator's peak repeats exactly) and in --quick, else three
    (a CPU's resident peak varies with the allocator's timing)."""
    return 1 if on_cuda(args) or args.quick else 3


def ratio_detail(median_of_pairs, repeats) -> str:
    return f"fastest of {repeats}; median of the pair ratios {median_of_pairs:.3f}x"


def peaks_detail(peaks) -> str:
    return "peaks above the weights: " + ", ".join(f"{mode} {b / 2**20:.1f} MiB" for mode, b in peaks.items())


# --- 3. the figure suite ----------------------------------------------------------------------------------------

def synthetic_text(chars, seed=0) -> str:
    """Sentences of common English words, `chars` characters: calibration text that needs no download."""
    words = ("the of and to in is was that for it with as his on be at by this had not are but from or have an "
             "they which one you were her all she there would their we him been has when who will more no if out "
             "so said what up its about into than them can only other new some could time these two may then do "
             "first any my now such like our over man me even most made after also did many before must through "
             "back years where much your way well down should because each just those people how too little state "
             "good very make world still own see men work long get here between both life being under never day "
             "same another know while last might us great old year off come since against go came right used take "
             "three").split()
    rng, parts, length = random.Random(seed), [], 0
    while length < chars:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 16))).capitalize() + ". "
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)[:chars]


def figures(args, sizes) -> dict:
    from lib import cli
    from lib.models import ModelSpec
    from lib.paper_figures import FIGURES
    from lib.tiny_models import CharTokenizer
    dims = sizes["figure_dims"]
    shape = argparse.Namespace(layers=4, tokens=sizes["figure_seqlen"], dtype="bfloat16", device=args.device, **dims)
    model = bench_scale.build(shape)
    spec = ModelSpec(name="random-llama2-7b-width-4-layers", source="random init (bench/gpu_check.py)",
                     title=f"random-init LLaMA, 4 layers of width {dims['hidden']}", seqlen=sizes["figure_seqlen"],
                     cuda_dtype="bfloat16")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "calibration.txt"
        # the paper's largest calibration set: 100 sequences of the model's length, with room to draw them
        data.write_text(synthetic_text(110 * max(sizes["figure_seqlen"], 512)))
        fig_args = cli.parser().parse_args(["--savedir", str(Path(tmp) / "figures"), "--data", str(data),
                                            *sizes["figure_flags"]])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # each figure's summary lines: not what this check reports
            results = cli.run(list(FIGURES), fig_args, model=model, tokenizer=CharTokenizer(), spec=spec)
        seconds = time.perf_counter() - start
        written = [name for name in FIGURES
                   if (Path(tmp) / "figures" / spec.name / f"{name}.json").is_file() and results[name]["files"]]
    per_figure = {name: results[name]["seconds"] for name in results}
    return {"model": spec.title, "dtype": "bfloat16", "seconds": seconds, "seconds_per_figure": per_figure,
            "calibration": " ".join(sizes["figure_flags"]) or "the suite's GPU defaults (the paper's sample counts)",
            "checks": [check("figures written (JSON and figure files)", len(written), "==", len(FIGURES),
                             f"{seconds:.1f} s for the suite")]}


# --- 4. the figure suite with accelerate's offload --------------------------------------------------------------

OFFLOAD_LAYERS, ON_DEVICE = 4, 2


def offload(args, sizes) -> dict:
    import gc

    from lib import check as results_check
    from lib import cli
    from lib.models import load_model, placement
    from lib.paper_figures import FIGURES
    from lib.tiny_models import layer_bytes, memory_for_layers, save_folder
    from monkey_patch.weights import count_offloaded
    cuda = on_cuda(args)
    shape = argparse.Namespace(layers=OFFLOAD_LAYERS, tokens=sizes["figure_seqlen"], dtype="bfloat16", device="cpu",
                               **sizes["figure_dims"])
    model = bench_scale.build(shape)
    layer, total = max(layer_bytes(model)), sum(p.numel() * p.element_size() for p in model.parameters())
    budget = memory_for_layers(model, ON_DEVICE)
    gpu = torch.device(args.device).index or 0 if cuda else None
    max_memory = f"{gpu}={budget},cpu={2 * total}" if cuda else f"cpu={budget}"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_folder(model, Path(tmp) / "model")
        del model
        data = Path(tmp) / "calibration.txt"
        data.write_text(synthetic_text(110 * 1024))
        loads = {"whole": dict(device=args.device),
                 "offloaded": dict(device="auto", max_memory=max_memory,
                                   offload_folder=None if cuda else str(Path(tmp) / "offload"))}
        for name, load in loads.items():
            net, tokenizer, spec = load_model(folder, dtype="bfloat16", **load)
            if cuda:
                torch.cuda.synchronize()
                resident = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            fig_args = cli.parser().parse_args(["--savedir", str(Path(tmp) / name), "--data", str(data),
                                                *sizes["offload_flags"]])
            start = time.perf_counter()
            with count_offloaded(net) as held, contextlib.redirect_stdout(io.StringIO()):
                results = cli.run(list(FIGURES), fig_args, model=net, tokenizer=tokenizer, spec=spec)
            runs[name] = {"seconds": time.perf_counter() - start, "placement": placement(net),
                          "results": results, "loaded_peak_bytes": held.peak,
                          "peak_above_resident_bytes": torch.cuda.max_memory_allocated() - resident if cuda else None}
            del net, results
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    differ = {name: results_check.differences(runs["whole"]["results"][name], runs["offloaded"]["results"][name])
              for name in FIGURES}
    differ = {name: found for name, found in differ.items() if found}
    where = runs["offloaded"]["placement"]
    if cuda:
        held = runs["offloaded"]["peak_above_resident_bytes"] - runs["whole"]["peak_above_resident_bytes"]
        measure = "GPU peak above the resident weights, offloaded run less whole run"
    else:
        held, measure = runs["offloaded"]["loaded_peak_bytes"], "bytes loaded from the offload files, held at once"
    first = next(iter(differ.items()), None)
    checks = [
        check("figures whose JSON differs from the whole model's (lib/check.py tolerance)", len(differ), "==", 0,
              f"{first[0]}{first[1][0]}" if first else f"{len(FIGURES)} figures compared"),
        check(f"layers offloaded (of {OFFLOAD_LAYERS})", where["offloaded_layers"], "==", OFFLOAD_LAYERS - ON_DEVICE,
              f"--max-memory {max_memory}: {where['layers']}"),
        check("offloaded weights held at once (bytes), against one layer's", held, "<=", layer, measure)]
    for run in runs.values():
        run.pop("results")
    return {"model": f"random-init LLaMA, {OFFLOAD_LAYERS} layers of width {sizes['figure_dims']['hidden']}, bfloat16",
            "max_memory": max_memory, "layer_bytes": layer, "model_bytes": total, "runs": runs,
            "differences": differ, "calibration": " ".join(sizes["offload_flags"]), "checks": checks}


# --- 5. gpt-2/ throughput ---------------------------------------------------------------------------------------

def flops_per_token(model, n_layer, n_embd, block_size) -> int:
    """Training FLOPs per token, PaLM's estimate as nanoGPT's estimate_mfu: 6 N + 12 L d T, N the parameters
    without the position table (the tied embedding counted once, for the LM head's matmul)."""
    positions = model.transformer.wpe if hasattr(model, "transformer") else model.pos
    n = sum(p.numel() for p in model.parameters()) - (positions.weight.numel() if positions is not None else 0)
    return 6 * n + 12 * n_layer * n_embd * block_size


def peak_flops(args) -> tuple:
    """(peak bf16 FLOP/s, where the figure comes from) of this device; (None, why) when unknown."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if not on_cuda(args):
        return None, "no peak for a CPU: MFU is reported only on a GPU"
    name = torch.cuda.get_device_name(torch.device(args.device))
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops, f"NVIDIA datasheet, dense bf16 tensor cores ({name})" if flops else f"unknown peak for {name}"
    return None, f"unknown peak for {name}: pass --peak-tflops"


def gpt2_throughput(args, sizes) -> dict:
    from model import GPT, VARIANTS, GPTConfig
    s = argparse.Namespace(**sizes["gpt2"])
    torch.manual_seed(0)
    models = {"plain_sdpa": bench_gpt2_variants.PlainGPT(s.vocab_size, s.block_size, s.n_layer, s.n_embd, s.n_head)}
    for v in VARIANTS:
        models[v] = GPT(GPTConfig(block_size=s.block_size, vocab_size=s.vocab_size, n_layer=s.n_layer,
                                  n_head=s.n_head, n_embd=s.n_embd, attention=v))
    backend = "inductor" if on_cuda(args) or not args.quick else "eager"
    torch._dynamo.config.recompile_limit = 4 * len(models)  # each variant's Block is one more compiled graph
    for m in models.values():
        m.to(args.device).train()
        for block in (m.blocks if hasattr(m, "blocks") else m.transformer.h):
            block.compile(backend=backend, fullgraph=True)
    tps = bench_gpt2_variants.measure(models, s, args.device, torch.bfloat16)
    peak, peak_source = peak_flops(args)
    table = {}
    for name, m in models.items():
        fpt = flops_per_token(m, s.n_layer, s.n_embd, s.block_size)
        table[name] = {"tokens_per_s": tps[name], "flops_per_token": fpt,
                       "mfu": fpt * tps[name] / peak if peak else None, "vs_default": tps[name] / tps["default"]}
    checks = [check("default / plain SDPA GPT, tokens/s", tps["default"] / tps["plain_sdpa"], ">=",
                    DEFAULT_VS_PLAIN_TARGET)]
    checks += [check(f"{v} / default, tokens/s", table[v]["vs_default"], ">=", VARIANT_VS_DEFAULT_TARGET)
               for v in VARIANTS if v != "default"]
    return {"settings": vars(s), "dtype": "bfloat16 autocast",
            "compile": f"torch.compile of each block, fullgraph, backend {backend}",
            "flops_formula": "6 * N + 12 * n_layer * n_embd * block_size per token, N = parameters without the "
                             "position table (PaLM, Appendix B; nanoGPT's estimate_mfu)",
            "peak_flops": peak, "peak_flops_source": peak_source, "throughput": table, "checks": checks}


# --- the run ----------------------------------------------------------------------------------------------------

PARTS = {"capture_exact": capture_exact, "capture_cost": capture_cost, "figures": figures, "offload": offload,
         "gpt2": gpt2_throughput}


def on_cuda(args) -> bool:
    return torch.device(args.device).type == "cuda"


def run_part(fn, args, sizes) -> dict:
    """One part, timed; an exception is reported as the part's failure (the other parts still run)."""
    start = time.perf_counter()
    try:
        result = fn(args, sizes)
    except Exception as e:  # a GPU run is scarce: record what broke, go on with the next part
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=-3), "checks": []}
    result["seconds"] = time.perf_counter() - start
    result["passed"] = "error" not in result and all(c["passed"] for c in result["checks"])
    return result


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"


def markdown(report) -> str:
    lines = [f"# GPU check: {report['device_name']}", "",
             f"Command: `{report['command']}`" + ("  (--quick: reduced sizes; verdicts say nothing about a GPU)"
                                                 if report["quick"] else ""), "",
             "| part | check | value | target | verdict | detail |", "| --- | --- | --- | --- | --- | --- |"]
    for part, result in report["parts"].items():
        if "error" in result:
            lines.append(f"| {part} | ran | - | completes | FAIL | {result['error'].splitlines()[0]} |")
        for c in result["checks"]:
            lines.append(f"| {part} | {c['check']} | {fmt(c['value'])} | {c['target']} | "
                         f"{'pass' if c['passed'] else 'FAIL'} | {c['detail']} |")
        lines.append(f"| {part} | wall time | {result['seconds']:.1f} s | | | |")
    gpt2 = report["parts"].get("gpt2", {})
    if "throughput" in gpt2:
        lines += ["", f"gpt-2/ training throughput ({gpt2['dtype']}, {gpt2['compile']}; MFU: {gpt2['flops_formula']}"
                  f"; peak: {gpt2['peak_flops_source']})", "",
                  "| model | tokens/s | MFU | vs default |", "| --- | --- | --- | --- |"]
        for name, row in gpt2["throughput"].items():
            lines.append(f"| {name} | {row['tokens_per_s']:,.0f} | {fmt(row['mfu'])} | {row['vs_default']:.3f} |")
    lines += ["", f"Targets met: {'all' if report['passed'] else 'not all'}.", ""]
    return "\n".join(lines)


def write(report, out: Path) -> None:
    write_json(out / "gpu_check.json", report)
    write_text(out / "gpu_check.md", markdown(report))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="reduced sizes (a CPU run, or a first smoke test)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s, for MFU")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for gpu_check.json and .md")
    args = p.parse_args(argv)
    parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in parts if name not in PARTS]
    if unknown or not parts:
        raise UserError(f"--parts: unknown part(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(PARTS)}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UserError(f"--peak-tflops must be positive, got {args.peak_tflops:g}")
    args.parts = parts
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device: not a device: {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device here; on a CPU run `--device cpu --quick`")
    return args


def main(argv=None) -> int:
    with user_errors_exit("gpu_check"):
        args = parse(argv)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        sizes = SIZES["quick" if args.quick else "full"]
        report = {"device": args.device, "device_name": torch.cuda.get_device_name(torch.device(args.device))
                  if on_cuda(args) else "CPU", "quick": args.quick, "sizes": sizes, "parts": {},
                  "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(sys.argv[1:] if argv is None
                                                                                        else argv)])}
        out = Path(args.out)
        for name in args.parts:
            print(f"{name} ...", flush=True)
            report["parts"][name] = run_part(PARTS[name], args, sizes)
            report["passed"] = all(r["passed"] for r in report["parts"].values())
            report["provenance"] = provenance(device=args.device, dtype="bfloat16", command=report["command"])
            write(report, out)
        print(markdown(report))
        print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
        return 1 if any("error" in r for r in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
