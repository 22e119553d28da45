"""Consequences of systematic outliers, measured: perplexity under interventions and under compression.

    python consequences.py                                   # the default model (Gemma 3 270M), offline text
    python consequences.py --model llama2_7b --data wikitext --seqlen 4096
    python consequences.py --gpt2 gpt-2/out-backcopy-default gpt-2/out-backcopy-ca_softmax ...

For each model (or gpt-2 checkpoint: a ckpt_<iter>.pt or an out dir, whose newest checkpoint is taken):
- perplexity on non-overlapping windows (lib.perplexity) and Bondarenko et al.'s outlier metrics (max
  infinity norm and average kurtosis of the block outputs) on the same windows;
- perplexity under each compression method of lib.compression (weights restored afterwards);
- interventions (lib.interventions) at the first block whose output has activation outliers over the
  calibration sequences and, where it differs, at the block where the channel of the largest outliers
  appears: outliers (detected per window) set to zero or to their calibration mean, with a control that zeroes
  as many random entries of the same output; the outlier tokens
  masked as attention keys in every later block, with a control that masks as many random tokens;
- the attention sinks themselves (each layer's attention-outlier keys, found per window) masked in their
  layer, with the same random control; this needs no activation outlier. Same windows as the baseline.
Every window starts with the special tokens the model's tokenizer adds to a text (a BOS for Gemma, LLaMA, Mistral;
none for SmolLM2, Qwen2, GPT-2), never scored: where it adds any, the same windows are also measured without them
(`bos_removed`: the same targets, paired). --no-bos tokenizes as the original code does, with no special tokens.
Writes consequences.json, consequences.md and consequences.png under --savedir (default the scratch folder
consequences-out/<model>/, or consequences-out/gpt2_<dataset>/ for gpt-2 checkpoints); the committed results under
results/consequences/ are written only where --savedir names them.
"""
import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from lib import check, compression, gpt2_data, interventions, preflight, scale_test
from lib.data import add_no_bos
from lib.errors import UserError, user_errors_exit
from lib.evaluation import (CALIB_WINDOWS, CPU_SEQLEN, CPU_WINDOWS, INTERVENTIONS, Subject, gpt2_subject,  # noqa: F401
                            hf_subject, measure, outlier_rule)
from lib.evaluation_report import save
from lib.files import check_writable
from lib.layer_numbering import LAYERS_ARE
from lib.models import DEFAULT_MODEL, add_placement_flags
from lib.provenance import provenance

SCRATCH = "consequences-out"  # the default output folder (git-ignored), relative to where the command runs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Perplexity under outlier interventions and compression.")
    p.add_argument("--model", default=None, help="registry name, HF id or folder (default gemma3_270m)")
    p.add_argument("--model-path", default=None, help="folder holding the weights (or a folder of model folders)")
    p.add_argument("--gpt2", nargs="+", default=None, metavar="CKPT",
                   help="gpt-2/ checkpoints (ckpt_<iter>.pt or out dirs) to evaluate instead of --model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto if a GPU, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp32 on CPU)")
    add_placement_flags(p)
    p.add_argument("--data", default=None, help="evaluation text: gutenberg (offline default), wikitext, c4, pg19 "
                   "or a path; for --gpt2 the default is the val split of the checkpoint's dataset")
    p.add_argument("--seqlen", type=int, default=None,
                   help=f"window length (default {CPU_SEQLEN} on CPU, the paper's on GPU; gpt-2: block_size + 1)")
    p.add_argument("--nsamples", type=int, default=None,
                   help=f"evaluation windows (default {CPU_WINDOWS} on CPU, all on GPU; gpt-2: up to {gpt2_data.MAX_WINDOWS})")
    p.add_argument("--calib-samples", type=int, default=CALIB_WINDOWS,
                   help="calibration windows for the outlier layer and the mean values")
    p.add_argument("--seed", type=int, default=1, help="seed for sampling calibration windows")
    add_no_bos(p)
    p.add_argument("--methods", nargs="*", default=list(compression.METHODS), choices=list(compression.METHODS))
    p.add_argument("--interventions", nargs="*", default=list(INTERVENTIONS), choices=list(INTERVENTIONS))
    p.add_argument("--outlier-factor", type=float, default=None,
                   help="interventions: an outlier must exceed this many times the layer's median |h| (default "
                   f"{interventions.analysis.MASSIVE_FACTOR:g}, lib.analysis' rule; for --gpt2 the emergence "
                   f"verdict's {interventions.analysis.SYSTEMATIC_RATIO:g})")
    p.add_argument("--outlier-min-abs", type=float, default=None,
                   help=f"interventions: and exceed this |h| (default {interventions.analysis.MASSIVE_ABS:g}, Sun et "
                   "al.'s floor for LLMs; for --gpt2 none)")
    p.add_argument("--scale-test", action="store_true",
                   help="is each attention sink only a context-aware scale? perplexity under "
                   f"{', '.join(scale_test.MODES)} of every layer's sink keys (lib/scale_test.py)")
    p.add_argument("--savedir", default=None, help=f"output folder (default {SCRATCH}/<name>/, a scratch folder; the "
                   "committed results/consequences/<name>/ is written only when --savedir names it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--check", metavar="FOLDER", default=None,
                   help="re-run the command recorded in FOLDER/consequences.json and report every number that differs "
                   "beyond the tolerance (lib/check.py); exit 1 if any does")
    return p


# --- loading --------------------------------------------------------------------------------------------------

def check_args(args) -> None:
    if args.gpt2 and args.model:
        raise UserError("give either --model or --gpt2, not both")
    if args.gpt2 and (args.max_memory or args.offload_folder):
        raise UserError("--max-memory and --offload-folder are for --model: a gpt-2/ checkpoint loads whole on one device")
    for name in ("seqlen", "nsamples", "calib_samples", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.seqlen is not None and args.seqlen < 2:
        raise UserError("--seqlen must be at least 2")
    if args.outlier_factor is not None and not args.outlier_factor > 1:
        raise UserError(f"--outlier-factor must be above 1, got {args.outlier_factor:g}")
    if args.outlier_min_abs is not None and args.outlier_min_abs < 0:
        raise UserError(f"--outlier-min-abs must be at least 0, got {args.outlier_min_abs:g}")


def run(args, subjects=None, command=None, log=print) -> dict:
    """Measure `subjects` (loaded from args when None) and write the outputs; returns the report."""
    check_args(args)
    check_writable(Path(args.savedir or SCRATCH))
    if subjects is None and not args.gpt2:  # what the config can tell is checked before the weights load
        preflight.check(preflight.model_shape(args.model or DEFAULT_MODEL, args.model_path), seqlen=args.seqlen,
                        device=args.device, dtype=args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    if subjects is None:
        subjects = [gpt2_subject(p, args) for p in args.gpt2] if args.gpt2 else [hf_subject(args)]
    names = [s.name for s in subjects]
    for s in subjects:  # two runs of one variant (other settings): name them by their run folder
        if names.count(s.name) > 1 and s.info.get("checkpoint"):
            s.name = os.path.basename(os.path.dirname(s.info["checkpoint"]))
            s.title = f"GPT ({s.name})"
    if args.gpt2 or (subjects and not subjects[0].hf):
        datasets = sorted({s.info.get("dataset", "") for s in subjects})
        group, title = "gpt2_" + "_".join(datasets), "GPT-2 variants on " + ", ".join(datasets)
    else:
        group, title = subjects[0].name, subjects[0].title
    savedir = check_writable(Path(args.savedir) if args.savedir else Path(SCRATCH) / group)
    rule = outlier_rule(subjects, args.outlier_factor, args.outlier_min_abs)
    results = [measure(s, args.methods, args.interventions, log, rule, args.scale_test) for s in subjects]
    report = {"command": command or "python " + " ".join(shlex.quote(a) for a in sys.argv), "title": title,
              "layers_are": LAYERS_ARE,
              "methods": list(args.methods), "interventions": list(args.interventions), "outlier_rule": str(rule),
              "scale_test": bool(args.scale_test),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "results": results, "seconds": round(time.time() - start, 1)}
    report["provenance"] = provenance(command=report["command"])
    paths = save(report, savedir)
    log("wrote " + ", ".join(str(p) for p in paths))
    return report


def main(argv=None) -> None:
    with user_errors_exit("consequences"):
        args = parser().parse_args(argv)
        if args.check:
            sys.exit(check.main(args.check))
        run(args)


if __name__ == "__main__":
    main()
