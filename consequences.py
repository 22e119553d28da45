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
Writes consequences.json, consequences.md and consequences.png under --savedir (default
results/consequences/<model>/, or results/consequences/gpt2_<dataset>/ for gpt-2 checkpoints).
"""
import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib import compression, gpt2_checkpoints, interventions, scale_test
from lib.errors import UserError, user_errors_exit
from lib.files import write_json, write_text
from lib.models import ModelSpec
from lib.provenance import provenance
from lib.perplexity import eval_windows, gpt2_logits, hf_logits, perplexity, summarize

HERE = Path(__file__).resolve().parent
INTERVENTIONS = ("zero", "zero_random", "mean", "mask_sink", "mask_random", "mask_attn_sink", "mask_attn_random")
ATTENTION_INTERVENTIONS = ("mask_attn_sink", "mask_attn_random")  # need no activation outlier
CPU_WINDOWS, CPU_SEQLEN, CALIB_WINDOWS = 8, 512, 4


@dataclass
class Subject:
    """One model under evaluation, with everything the measurements need."""
    name: str
    title: str
    model: torch.nn.Module
    blocks: torch.nn.ModuleList
    logits_fn: object  # inputs [b, L-1] -> logits [b, L-1, V]
    run_fn: object  # ids [b, L] -> anything: a forward pass for the hooks (logits not needed)
    windows: torch.Tensor  # evaluation windows [n, L]
    calib: torch.Tensor  # calibration windows [m, L]
    data: dict
    hf: bool = True
    info: dict = field(default_factory=dict)
    spec: object = None  # lib.models.ModelSpec: where the weights came from (for the provenance block)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Perplexity under outlier interventions and compression.")
    p.add_argument("--model", default=None, help="registry name, HF id or folder (default gemma3_270m)")
    p.add_argument("--model-path", default=None, help="folder holding the weights (or a folder of model folders)")
    p.add_argument("--gpt2", nargs="+", default=None, metavar="CKPT",
                   help="gpt-2/ checkpoints (ckpt_<iter>.pt or out dirs) to evaluate instead of --model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto if a GPU, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp32 on CPU)")
    p.add_argument("--data", default=None, help="evaluation text: gutenberg (offline default), wikitext, c4, pg19 "
                   "or a path; for --gpt2 the default is the val split of the checkpoint's dataset")
    p.add_argument("--seqlen", type=int, default=None,
                   help=f"window length (default {CPU_SEQLEN} on CPU, the paper's on GPU; gpt-2: block_size + 1)")
    p.add_argument("--nsamples", type=int, default=None,
                   help=f"evaluation windows (default {CPU_WINDOWS} on CPU, all on GPU; gpt-2: up to {gpt2_checkpoints.MAX_WINDOWS})")
    p.add_argument("--calib-samples", type=int, default=CALIB_WINDOWS,
                   help="calibration windows for the outlier layer and the mean values")
    p.add_argument("--seed", type=int, default=1, help="seed for sampling calibration windows")
    p.add_argument("--methods", nargs="*", default=list(compression.METHODS), choices=list(compression.METHODS))
    p.add_argument("--interventions", nargs="*", default=list(INTERVENTIONS), choices=list(INTERVENTIONS))
    p.add_argument("--outlier-factor", type=float, default=interventions.analysis.MASSIVE_FACTOR,
                   help="interventions: an outlier must exceed this many times the layer's median |h| (default "
                   "%(default)g, lib.analysis' rule; the gpt-2 hypothesis test's criterion is 100)")
    p.add_argument("--outlier-min-abs", type=float, default=interventions.analysis.MASSIVE_ABS,
                   help="interventions: and exceed this |h| (default %(default)g, Sun et al.'s floor for LLMs)")
    p.add_argument("--scale-test", action="store_true",
                   help="is each attention sink only a context-aware scale? perplexity under "
                   f"{', '.join(scale_test.MODES)} of every layer's sink keys (lib/scale_test.py)")
    p.add_argument("--savedir", default=None, help="output folder (default results/consequences/<name>/)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


# --- loading --------------------------------------------------------------------------------------------------

def hf_subject(args) -> Subject:
    from lib.data import DEFAULT_SOURCE, get_data, get_eval_tokens
    from lib.models import DEFAULT_MODEL, load_model
    from monkey_patch import ModelView
    model, tokenizer, spec = load_model(args.model or DEFAULT_MODEL, args.model_path, args.device, args.dtype)
    on_cpu = model.get_input_embeddings().weight.device.type == "cpu"
    seqlen = args.seqlen or (min(CPU_SEQLEN, spec.seqlen) if on_cpu else spec.seqlen)
    nsamples = args.nsamples or (CPU_WINDOWS if on_cpu else None)
    source = args.data or DEFAULT_SOURCE
    windows = eval_windows(get_eval_tokens(tokenizer, source), seqlen, nsamples)
    calib = get_data(tokenizer, args.calib_samples, seqlen, source=source, seed=args.seed, split="calib")
    data = {"source": source, "split": "eval", "seqlen": seqlen, "windows": windows.shape[0],
            "calib_windows": calib.shape[0], "calib_split": "calib", "seed": args.seed}
    if on_cpu and (args.nsamples is None or args.seqlen is None):
        data["note"] = (f"CPU run: {windows.shape[0]} windows x {seqlen} tokens spread evenly over the held-out "
                        "text; a full evaluation uses every window (--nsamples) at the paper's length (--seqlen)")
    device = model.get_input_embeddings().weight.device
    return Subject(spec.name, spec.title, model, ModelView(model).layers, hf_logits(model),
                   lambda ids: model.base_model(input_ids=ids.to(device), use_cache=False),
                   windows, calib, data, hf=True, spec=spec)


def gpt2_subject(path: str, args) -> Subject:
    dataset, _, _ = gpt2_checkpoints.gpt2_modules()
    model, ckpt, path = gpt2_checkpoints.load_gpt(path, args.device or "cpu")
    block = model.config.block_size
    seqlen = args.seqlen or block + 1
    if seqlen > block + 1:
        raise UserError(f"--seqlen {seqlen}: {path} has block_size {block}, so windows hold at most {block + 1} tokens")
    name = ckpt["config"]["dataset"]
    if args.data:  # a text source, tokenized with the GPT-2 BPE
        from lib.data import get_data, get_eval_tokens
        if model.config.vocab_size < gpt2_checkpoints.BPE_VOCAB:
            raise UserError(f"--data {args.data}: {path} was trained on {name!r} with a {model.config.vocab_size}-token "
                            "vocabulary, not the GPT-2 BPE; leave --data out to use its own validation split")
        encoding = gpt2_checkpoints.BPETokenizer().encoding
        windows = eval_windows(get_eval_tokens(encoding, args.data), seqlen, args.nsamples)
        calib = get_data(encoding, args.calib_samples, seqlen, source=args.data, seed=args.seed)
        data = {"source": args.data, "split": "eval", "calib_split": "calib"}
    else:
        windows = gpt2_checkpoints.dataset_windows(name, "val", seqlen, args.nsamples)
        calib = gpt2_checkpoints.dataset_windows(name, "train", seqlen, args.calib_samples)
        data = {"source": f"gpt-2/data/{name}", "split": "val", "calib_split": "train (first windows)"}
        if dataset.load_meta(name).get("seq_len"):
            data["note"] = "aligned dataset: each window is one whole sequence from its first token"
    data.update(seqlen=seqlen, windows=windows.shape[0], calib_windows=calib.shape[0])
    variant = model.config.attention
    info = {"checkpoint": os.path.relpath(path, HERE) if path.startswith(str(HERE)) else path,
            "iter": ckpt.get("iter_num"), "attention": variant, "dataset": name,
            "n_layer": model.config.n_layer, "n_embd": model.config.n_embd, "block_size": block}
    return Subject(variant, f"GPT ({variant})", model, model.transformer.h, gpt2_logits(model),
                   lambda ids: model(ids), windows, calib, data, hf=False, info=info,
                   spec=ModelSpec(variant, path, f"GPT ({variant})", block, "float32", dataset=name))


# --- measuring --------------------------------------------------------------------------------------------------

def measure(subject: Subject, methods, wanted_interventions, log=print, rule=interventions.DEFAULT_RULE,
            scale=False) -> dict:
    """Every number of one subject: baseline, compression and intervention perplexities, outlier metrics."""
    s = subject
    start = time.time()
    metrics = interventions.OutlierMetrics(len(s.blocks))
    with interventions.block_output_hooks(s.blocks, metrics):
        baseline = perplexity(s.logits_fn, s.windows)
    result = {"name": s.name, "title": s.title, "info": s.info, "data": s.data,
              "baseline": summarize(baseline), "outlier_metrics": metrics.summary(), "compression": {},
              "interventions": {}}
    log(f"{s.title}: fp32 perplexity {baseline['ppl']:.4g}; max inf-norm {metrics.summary()['max_inf_norm']:.4g}, "
        f"avg kurtosis {metrics.summary()['avg_kurtosis']:.4g}")
    for method in methods:
        with compression.compressed(s.model, s.blocks, method):
            measured = perplexity(s.logits_fn, s.windows)
        result["compression"][method] = summarize(measured, baseline)
        log(f"{s.title}: {method} perplexity {measured['ppl']:.4g}")
    if wanted_interventions:
        result["interventions"] = intervene(s, wanted_interventions, log, baseline, rule)
    if scale:
        if interventions.supports_sink_mask(s.model):
            result["scale_test"] = scale_test.measure(s.model, s.run_fn, s.logits_fn, s.windows, s.calib, baseline,
                                                      lambda line: log(f"{s.title}: {line}"))
        else:
            result["scale_test"] = {"note": MASK_UNSUPPORTED}
    result["seconds"] = round(time.time() - start, 1)
    weight = next(s.model.parameters())
    result["provenance"] = provenance(s.spec, data=s.data, device=weight.device, dtype=weight.dtype)
    return result


def intervene(s: Subject, wanted, log=print, baseline=None, rule=interventions.DEFAULT_RULE) -> dict:
    """Interventions at the first outlier layer and, where it differs, where the dominant outlier channel
    appears, and on the attention sinks (lib.interventions); all on the same windows as the baseline."""
    out = {"rule": str(rule), "sites": []}
    attention = [m for m in wanted if m in ATTENTION_INTERVENTIONS]
    if attention:
        out["attention_sinks"] = {m: _attention_intervention(s, m, baseline) for m in attention}
        for m, entry in out["attention_sinks"].items():
            if "ppl" in entry:
                log(f"{s.title}: attention sinks -> {m}: perplexity {entry['ppl']:.4g}")
    wanted = [m for m in wanted if m not in ATTENTION_INTERVENTIONS]
    if not wanted:
        return out
    scan = interventions.scan_outliers(s.blocks, s.run_fn, s.calib[:, :-1], rule)  # what the model sees of a window
    first = interventions.first_outlier_layer(scan)
    out.update(outlier_layers=[i + 1 for i in interventions.outlier_layers(scan)],
               dominant_channel=interventions.dominant_channel(scan))
    if first is None:
        out["note"] = f"no block output has activation outliers in at least half of the {len(scan)} calibration windows"
        log(f"{s.title}: interventions skipped ({out['note']})")
        return out
    dominant = interventions.dominant_outlier_layer(scan)
    sites = [("first", first)]  # the first outlier layer
    if dominant is not None and dominant != first:
        sites.append(("dominant", dominant))  # where the channel of the largest outliers appears
    for site, layer in sites:
        means = interventions.calibration_means(scan, layer)
        entry = {"site": site, "layer": layer + 1, "calibration_means": {str(c): v for c, v in means.items()}}
        for mode in wanted:
            entry[mode] = _intervention(s, mode, layer, means, baseline, rule)
            if "ppl" in entry[mode]:
                log(f"{s.title}: outliers of layer {layer + 1} ({site}) -> {mode}: perplexity {entry[mode]['ppl']:.4g}")
        out["sites"].append(entry)
    return out


MASK_UNSUPPORTED = "key masking needs a gpt-2/ model or a Hugging Face family on transformers' attention registry"


def _attention_intervention(s: Subject, mode: str, baseline=None) -> dict:
    if not interventions.supports_sink_mask(s.model):
        return {"note": MASK_UNSUPPORTED}
    logits_fn, state = interventions.mask_attention_sinks(s.model, s.run_fn, s.logits_fn,
                                                          control=mode == "mask_attn_random")
    measured = perplexity(logits_fn, s.windows)
    n = s.windows.shape[0]
    return {**summarize(measured, baseline), "masked_keys_per_window": state.masked / n,
            "masked_layer_keys_per_window": state.masked_layer_keys / n}


def _intervention(s: Subject, mode: str, layer: int, means: dict, baseline=None,
                  rule=interventions.DEFAULT_RULE) -> dict:
    if mode in ("mask_sink", "mask_random"):
        if not interventions.supports_sink_mask(s.model):
            return {"note": MASK_UNSUPPORTED}
        control = mode == "mask_random"
        with interventions.mask_sink_keys(s.model, layer, control=control, seed=layer, rule=rule) as state:
            measured = perplexity(s.logits_fn, s.windows)
        return {**summarize(measured, baseline), "masked_keys_per_window": state.masked / s.windows.shape[0]}
    with interventions.edit_outliers(s.blocks, layer, mode, means, rule, seed=layer) as edit:
        measured = perplexity(s.logits_fn, s.windows)
    tokens = [len(t) for t in edit.tokens]
    return {**summarize(measured, baseline), "edited_entries": edit.edited, "entries_without_mean": edit.without_mean,
            "outlier_tokens_per_window": sum(tokens) / max(len(tokens), 1)}


# --- output --------------------------------------------------------------------------------------------------------

def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def markdown(report: dict) -> str:
    rows = report["results"]
    methods = report["methods"]
    lines = [f"# Consequences of systematic outliers: {report['title']}", "",
             f"Command: `{report['command']}`", ""]
    if rows and "provenance" in rows[0]:
        from lib.provenance import short
        lines += [f"Made by {short(rows[0]['provenance'])}.", ""]
    for r in rows[:1]:
        d = r["data"]
        lines.append(f"Data: {d['source']} ({d['split']}), {d['windows']} windows x {d['seqlen']} tokens; "
                     f"calibration {d['calib_windows']} windows ({d['calib_split']}).")
        if "note" in d:
            lines.append(f"Note: {d['note']}.")
    title = "Perplexity under compression" if methods else "Perplexity and outlier metrics"
    lines += ["", f"## {title}", "",
              "| model | fp32 | " + "".join(f"{m} | " for m in methods) + "max inf-norm | avg kurtosis |",
              "|---" * (len(methods) + 4) + "|"]
    for r in rows:
        cells = [_fmt(r["baseline"]["ppl"])] + [_fmt(r["compression"][m]["ppl"]) for m in methods]
        cells += [_fmt(r["outlier_metrics"]["max_inf_norm"]), _fmt(r["outlier_metrics"]["avg_kurtosis"])]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += [""] + (["Methods: " + "; ".join(f"{m}: {compression.METHODS[m]}" for m in methods) + "."] if methods else []) + [
              "Outlier metrics (Bondarenko et al. 2023) on the evaluation windows: max |h| over all block outputs; "
              "kurtosis of each token's block output over channels, averaged over tokens and blocks (Gaussian: 3).", ""]
    attention = [m for m in report["interventions"] if m in ATTENTION_INTERVENTIONS]
    if attention:
        lines += ["## Attention sinks masked", "",
                  "| model | fp32 | " + " | ".join(attention) + " | sink keys / window | (layer, key) pairs / window |",
                  "|---" * (len(attention) + 4) + "|"]
        for r in rows:
            found = r["interventions"].get("attention_sinks", {})
            counts = found.get("mask_attn_sink", next(iter(found.values()), {}))
            lines.append(f"| {r['name']} | {_fmt(r['baseline']['ppl'])} | "
                         + " | ".join(_fmt(found.get(m, {}).get("ppl")) for m in attention)
                         + f" | {_fmt(counts.get('masked_keys_per_window'))}"
                         + f" | {_fmt(counts.get('masked_layer_keys_per_window'))} |")
        lines += ["", "Sinks are found in each window from an unmasked forward: in every layer, the keys with "
                  + interventions.analysis.ATTENTION_RULE
                  + " (cumulative attention: the head average summed over queries)"
                  + ". mask_attn_sink: each layer's sink keys are masked in that layer (every query but the key's own "
                  "token loses them); mask_attn_random: each sink key swapped for another token drawn at random, the "
                  "same swap in every layer (a control). No activation outlier is needed.", ""]
        for r in rows:
            for m, entry in r["interventions"].get("attention_sinks", {}).items():
                if entry.get("note"):
                    lines.append(f"- {r['name']}, {m}: {entry['note']}")
    wanted = [m for m in report["interventions"] if m not in ATTENTION_INTERVENTIONS]
    if wanted:
        lines += ["## Interventions on the activation outliers", "",
                  "| model | site | layer (1-based) | outlier channels (calibration) | fp32 | " + " | ".join(wanted)
                  + " | outlier tokens / window |", "|---" * (len(wanted) + 6) + "|"]
        for r in rows:
            iv = r["interventions"]
            if not iv.get("sites"):
                lines.append(f"| {r['name']} | none found | - | - | {_fmt(r['baseline']['ppl'])} | "
                             + " | ".join("n/a" for _ in wanted) + " | 0 |")
            for site in iv.get("sites", []):
                per_window = next((site[m]["outlier_tokens_per_window"] for m in ("zero", "mean") if m in site), None)
                channels = ", ".join(site["calibration_means"])
                where = "first outlier layer" if site["site"] == "first" else \
                    f"where channel {iv['dominant_channel']} (largest outliers) appears"
                lines.append(f"| {r['name']} | {where} | {site['layer']} | {channels} | "
                             f"{_fmt(r['baseline']['ppl'])} | "
                             + " | ".join(_fmt(site.get(m, {}).get("ppl")) for m in wanted) + f" | {_fmt(per_window)} |")
        lines += ["", "Detection rule: " + report["outlier_rule"] + ". An outlier layer has outliers "
                  "in at least half of the calibration windows. zero / mean: the outlier entries of that block's "
                  "output, detected in each evaluation window, set to 0 / to their channel's mean over the "
                  "calibration windows; zero_random: as many other entries of that output, drawn at random, set to 0 (the control). "
                  "mask_sink: every later block may not attend to that window's outlier tokens "
                  "(each token still sees itself); mask_random: the same number of other tokens, drawn at random, masked "
                  "the same way (a control).", ""]
        for r in rows:
            iv = r["interventions"]
            if iv.get("outlier_layers"):
                lines.append(f"- {r['name']}: outlier layers (1-based) {iv['outlier_layers']}; "
                             f"largest outliers in channel {iv['dominant_channel']}")
            if iv.get("note"):
                lines.append(f"- {r['name']}: {iv['note']}")
            for site in iv.get("sites", []):
                for m in wanted:
                    if site.get(m, {}).get("note"):
                        lines.append(f"- {r['name']}, {m}: {site[m]['note']}")
    if report.get("scale_test"):
        lines += scale_test.markdown(rows)
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> None:
    from lib import plotting
    rows = report["results"]
    sites = [site for site in ("first", "dominant")
             if any(x["site"] == site for r in rows for x in r["interventions"].get("sites", []))]
    attention = [m for m in report["interventions"] if m in ATTENTION_INTERVENTIONS]
    groups = ["fp32"] + report["methods"] + [f"{site}:{m}" for site in sites for m in report["interventions"]
                                             if m not in attention] + attention

    def value(r, g):
        if g == "fp32":
            return r["baseline"]["ppl"]
        if g in attention:
            return r["interventions"].get("attention_sinks", {}).get(g, {}).get("ppl")
        if ":" in g:
            site, mode = g.split(":")
            found = [x for x in r["interventions"].get("sites", []) if x["site"] == site]
            return found[0].get(mode, {}).get("ppl") if found else None
        return r["compression"][g]["ppl"]

    fig, (ax,) = plotting.figure(size=(max(6.0, 0.55 * len(groups) * max(1, len(rows)) ** 0.5 + 3), 4.2))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
        ys = [value(r, g) or float("nan") for g in groups]
        bars = ax.bar(xs, ys, width=width, label=r["name"])
        if len(rows) <= 2:  # few bars: print their values, the interventions differ by less than the axis shows
            ax.bar_label(bars, labels=[_fmt(y) if y == y else "" for y in ys], fontsize=7, rotation=90, padding=2)
    shown = [v for r in rows for g in groups if (v := value(r, g))]
    if max(shown) / min(shown) > 10:  # else a log axis would start the bars at an arbitrary value
        ax.set_yscale("log")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_ylabel("perplexity" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"{report['title']}: perplexity per method")
    top = max(shown)
    ax.set_ylim(top=top * 1e3 if ax.get_yscale() == "log" else top * 1.2)  # headroom for the legend and labels
    ax.legend(fontsize=7, ncol=min(len(rows), 6), loc="upper left")
    plotting.save(fig, path.with_suffix(""), ["png"])


def save(report: dict, savedir: Path) -> list[Path]:
    savedir.mkdir(parents=True, exist_ok=True)
    write_json(savedir / "consequences.json", report)
    write_text(savedir / "consequences.md", markdown(report))
    figure(report, savedir / "consequences.png")
    return [savedir / f"consequences.{ext}" for ext in ("json", "md", "png")]


# --- entry point ---------------------------------------------------------------------------------------------------

def check_args(args) -> None:
    if args.gpt2 and args.model:
        raise UserError("give either --model or --gpt2, not both")
    for name in ("seqlen", "nsamples", "calib_samples", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.seqlen is not None and args.seqlen < 2:
        raise UserError("--seqlen must be at least 2")
    if not args.outlier_factor > 1:
        raise UserError(f"--outlier-factor must be above 1, got {args.outlier_factor:g}")
    if args.outlier_min_abs < 0:
        raise UserError(f"--outlier-min-abs must be at least 0, got {args.outlier_min_abs:g}")


def run(args, subjects=None, command=None, log=print) -> dict:
    """Measure `subjects` (loaded from args when None) and write the outputs; returns the report."""
    check_args(args)
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
    rule = interventions.Rule(factor=args.outlier_factor, min_abs=args.outlier_min_abs)
    results = [measure(s, args.methods, args.interventions, log, rule, args.scale_test) for s in subjects]
    report = {"command": command or "python " + " ".join(shlex.quote(a) for a in sys.argv), "title": title,
              "methods": list(args.methods), "interventions": list(args.interventions), "outlier_rule": str(rule),
              "scale_test": bool(args.scale_test),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "results": results, "seconds": round(time.time() - start, 1)}
    report["provenance"] = provenance(command=report["command"])
    savedir = Path(args.savedir) if args.savedir else HERE / "results" / "consequences" / group
    paths = save(report, savedir)
    log("wrote " + ", ".join(str(p) for p in paths))
    return report


def main(argv=None) -> None:
    with user_errors_exit("consequences"):
        run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
