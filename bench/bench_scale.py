"""Do the paper's GPU settings fit? LLaMA-2-7B's shape at 4096 tokens, simulated without a GPU.

    python bench/bench_scale.py                     # 2 of LLaMA-2-7B's 32 layers, bf16, 4096 tokens
    python bench/bench_scale.py --layers 4 --device cuda

A random-init LLaMA with LLaMA-2-7B's width (4096, MLP 11008, 32 heads, vocabulary 32000) and --layers of its
layers. Peak memory above the loaded weights, each mode in its own processes (the median of --memory-repeats;
resident memory on a CPU, the allocator's peak on a GPU), in the steady state (bench_capture.peak_bytes):
  logits     a plain forward (SDPA) that computes the LM head's logits, as a user's forward does
  decoder    the same without the LM head: all that the statistics need
  stats      the figures' all-layer statistics (top-3 and median of resid_post and mlp.down_in, attention column
             sums per head), decoder only, reduced on the fly
  reference  (--reference) every layer's full tensors and attention maps kept in fp64, as the original code does
Time: stats / logits, the fastest of --repeats alternating runs of each in one process (and the median of the
pair ratios). The 32-layer estimate adds the weights of 32 layers to each mode's peak: the statistics keep a few
numbers per layer, so their peak does not grow with depth; the reference keeps every layer's tensors, so its
per-layer growth is multiplied by 32.
Writes bench/results/scale.json with the command and provenance.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_capture import at_least_one, fastest_ratio, median_peak, peak_bytes, statistics_pass  # noqa: E402
from lib import machine_load  # noqa: E402
from lib.errors import user_errors_exit  # noqa: E402
from lib.files import write_json  # noqa: E402
from lib.provenance import provenance  # noqa: E402

FULL_LAYERS, GPU_BYTES = 32, 80 * 2**30


def build(args, attn_implementation="sdpa"):
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=args.layers, hidden_size=args.hidden,
                                      intermediate_size=args.intermediate, num_attention_heads=args.heads,
                                      num_key_value_heads=args.heads, vocab_size=args.vocab,
                                      max_position_embeddings=max(4096, args.tokens))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype),
                                                          attn_implementation=attn_implementation)
    return model.to(args.device).eval()


def run_mode(model, mode, ids) -> list:
    """One pass of a mode; returns the tensors it keeps (the reference's)."""
    if mode == "logits":
        model(ids)
        return []
    if mode == "decoder":
        model.base_model(ids)
        return []
    return statistics_pass(model, ids, mode)


def memory_mode(args) -> int:
    """Peak bytes above the loaded weights of one mode, in this process."""
    model = build(args, "eager" if args.memory_mode == "reference" else "sdpa")
    ids = torch.randint(0, args.vocab, (1, args.tokens), generator=torch.Generator().manual_seed(1)).to(args.device)
    return peak_bytes(model, ids, lambda x: run_mode(model, args.memory_mode, x))


def bench_time(args) -> dict:
    model = build(args)
    ids = torch.randint(0, args.vocab, (1, args.tokens), generator=torch.Generator().manual_seed(1)).to(args.device)

    def seconds(mode):
        start = time.perf_counter()
        run_mode(model, mode, ids)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.no_grad():
        seconds("logits"), seconds("stats")  # warm up
        pairs = [(seconds("logits"), seconds("stats")) for _ in range(args.repeats)]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    summary = fastest_ratio(pairs)
    return {"logits_s": summary["fastest_s"][0], "stats_s": summary["fastest_s"][1],
            "stats_vs_logits": summary["ratio"], "stats_vs_logits_median_of_pairs": summary["ratio_median_of_pairs"],
            "pairs_s": pairs, "weights_bytes": weights,
            "layer_weights_bytes": sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=at_least_one, default=2)
    p.add_argument("--tokens", type=at_least_one, default=4096)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=at_least_one, default=5)
    p.add_argument("--reference", action="store_true", help="also the reference mode (memory heavy)")
    p.add_argument("--memory-repeats", type=at_least_one, default=3,
                   help="processes per memory mode (the median; one for the reference)")
    p.add_argument("--hidden", type=at_least_one, default=4096)
    p.add_argument("--intermediate", type=at_least_one, default=11008)
    p.add_argument("--heads", type=at_least_one, default=32)
    p.add_argument("--vocab", type=at_least_one, default=32000)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    p.add_argument("--memory-mode", choices=("logits", "decoder", "stats", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--allow-loaded", action="store_true", help=machine_load.ALLOW_LOADED_HELP)
    args = p.parse_args(argv)
    if args.memory_mode:
        print(memory_mode(args))
        return None
    load = machine_load.check_before(args.out, args.allow_loaded)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    shape = ["--layers", str(args.layers), "--tokens", str(args.tokens), "--dtype", args.dtype, "--device", args.device,
             "--hidden", str(args.hidden), "--intermediate", str(args.intermediate), "--heads", str(args.heads),
             "--vocab", str(args.vocab)]
    peaks, samples = {}, {}
    for mode in ("logits", "decoder", "stats") + (("reference",) if args.reference else ()):
        peaks[mode], samples[mode] = median_peak([sys.executable, __file__, "--memory-mode", mode, *shape],
                                                 1 if mode == "reference" else args.memory_repeats)
    timing = bench_time(args)
    layer_w, other_w = timing["layer_weights_bytes"], timing["weights_bytes"] - args.layers * timing["layer_weights_bytes"]
    full_weights = other_w + FULL_LAYERS * layer_w
    estimate = {mode: full_weights + peak * (FULL_LAYERS / args.layers if mode == "reference" else 1)
                for mode, peak in peaks.items()}
    result = {"settings": vars(args), "peak_bytes_above_weights": peaks, "peak_bytes_samples": samples,
              "stats_vs_logits_memory": peaks["stats"] / peaks["logits"],
              "decoder_vs_logits_memory": peaks["decoder"] / peaks["logits"],
              "time": timing, "estimate_32_layers_bytes": estimate,
              "estimate_fits_80GB": {mode: bytes_ <= GPU_BYTES for mode, bytes_ in estimate.items()},
              "command": "python " + " ".join(sys.argv if argv is None else [__file__, *argv]),
              "provenance": provenance(device=args.device, dtype=args.dtype)}
    result["provenance"]["machine_load"] = machine_load.check_after(args.out, load, args.allow_loaded)
    gib = {k: v / 2**30 for k, v in peaks.items()}
    print(f"{args.layers} layers of LLaMA-2-7B's shape, {args.tokens} tokens, {args.dtype}, {args.device}: peak above "
          "the weights " + ", ".join(f"{k} {v:.2f} GiB" for k, v in gib.items()))
    print(f"stats / logits: memory {result['stats_vs_logits_memory']:.3f}x (goal <= 1.0), time "
          f"{timing['stats_vs_logits']:.3f}x (goal <= 1.1; median of the pair ratios "
          f"{timing['stats_vs_logits_median_of_pairs']:.3f}x); skipping the LM head saves "
          f"{(peaks['logits'] - peaks['decoder']) / 2**30:.2f} GiB")
    print("32 layers (weights + peak): " + ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in estimate.items())
          + " against 80 GiB")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    with user_errors_exit("bench_scale"):
        main()
