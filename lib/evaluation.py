"""Perplexity-based measurements of one model (a Hugging Face LM or a gpt-2/ checkpoint): the evaluation and
calibration windows, the baseline with Bondarenko et al.'s outlier metrics, compression, the interventions of
lib.interventions and the scale test of lib.scale_test. consequences.py is the command line over it;
lib.evaluation_report renders what it measures.
"""
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib import analysis, compression, finite, gpt2_checkpoints, interventions, outliers, relocation, scale_test
from lib.data import DEFAULT_SOURCE, InputConvention, get_data, get_eval_tokens, special_tokens
from lib.errors import UserError
from lib.gpt2_data import BPE_VOCAB, dataset_windows, gpt2_encoding, load_meta
from lib.models import DEFAULT_MODEL, ModelSpec, load_model, placement
from lib.perplexity import eval_windows, gpt2_logits, hf_logits, perplexity, summarize
from lib.provenance import provenance
from monkey_patch import Edit, ModelView
from monkey_patch.weights import execution_device

ROOT = Path(__file__).resolve().parents[1]
INTERVENTIONS = ("zero", "zero_random", "mean", "mask_sink", "mask_random", "mask_attn_sink", "mask_attn_random")
ATTENTION_INTERVENTIONS = ("mask_attn_sink", "mask_attn_random")  # need no activation outlier
CPU_WINDOWS, CPU_SEQLEN, CALIB_WINDOWS = 8, 512, 4
# methods that round activations (lib.compression.ROUNDS_ACTIVATIONS) are measured over JITTER_RUNS runs: the
# first as it is, the others with every input embedding multiplied entrywise by 1 +- JITTER (seeded signs), a
# change of the size that another reduction order makes in float32
JITTER_RUNS, JITTER = 5, 2.0 ** -20


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
    prefix: int = 0  # special tokens every window starts with (a BOS): never perplexity targets
    token_text: object = None  # ids -> token strings (to name where the outlier and the sink sit)


def hf_subject(args) -> Subject:
    model, tokenizer, spec = load_model(args.model or DEFAULT_MODEL, args.model_path, args.device, args.dtype,
                                        max_memory=args.max_memory, offload_folder=args.offload_folder)
    device = execution_device(model.get_input_embeddings())
    on_cpu = device.type == "cpu"
    seqlen = args.seqlen or (min(CPU_SEQLEN, spec.seqlen) if on_cpu else spec.seqlen)
    nsamples = args.nsamples or (CPU_WINDOWS if on_cpu else None)
    source = args.data or DEFAULT_SOURCE
    convention = special_tokens(tokenizer, not args.no_bos)  # the tokenizer's BOS starts every window, unless --no-bos
    prefix = convention.prefix
    windows = eval_windows(get_eval_tokens(tokenizer, source), seqlen, nsamples, prefix=prefix)
    calib = get_data(tokenizer, args.calib_samples, seqlen, source=source, seed=args.seed, split="calib", prefix=prefix)
    data = {"source": source, "split": "eval", "seqlen": seqlen, "windows": windows.shape[0],
            "calib_windows": calib.shape[0], "calib_split": "calib", "seed": args.seed, "input": convention.record()}
    if on_cpu and (args.nsamples is None or args.seqlen is None):
        data["note"] = (f"CPU run: {windows.shape[0]} windows x {seqlen} tokens spread evenly over the held-out "
                        "text; a full evaluation uses every window (--nsamples) at the paper's length (--seqlen)")
    return Subject(spec.name, spec.title, model, ModelView(model).layers, hf_logits(model),
                   lambda ids: model.base_model(input_ids=ids.to(device), use_cache=False),
                   windows, calib, data, hf=True, spec=spec, prefix=len(prefix),
                   token_text=lambda ids: [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])])


def gpt2_subject(path: str, args) -> Subject:
    model, ckpt, path = gpt2_checkpoints.load_gpt(path, args.device or "cpu")
    block = model.config.block_size
    seqlen = args.seqlen or block + 1
    if seqlen > block + 1:
        raise UserError(f"--seqlen {seqlen}: {path} has block_size {block}, so windows hold at most {block + 1} tokens")
    name = ckpt["config"]["dataset"]
    if args.data:  # a text source, tokenized with the GPT-2 BPE
        if model.config.vocab_size < BPE_VOCAB:
            raise UserError(f"--data {args.data}: {path} was trained on {name!r} with a {model.config.vocab_size}-token "
                            "vocabulary, not the GPT-2 BPE; leave --data out to use its own validation split")
        encoding = gpt2_encoding()
        windows = eval_windows(get_eval_tokens(encoding, args.data), seqlen, args.nsamples)
        calib = get_data(encoding, args.calib_samples, seqlen, source=args.data, seed=args.seed)
        data = {"source": args.data, "split": "eval", "calib_split": "calib",
                "input": special_tokens(encoding, not args.no_bos).record()}
    else:
        windows = dataset_windows(name, "val", seqlen, args.nsamples)
        calib = dataset_windows(name, "train", seqlen, args.calib_samples)
        data = {"source": f"gpt-2/data/{name}", "split": "val", "calib_split": "train (first windows)",
                "input": {**InputConvention(False).record(), "text": "the dataset's sequences as stored (a BOS design "
                          "stores its BOS in the data): nothing prepended"}}
        if load_meta(name).get("seq_len"):
            data["note"] = "aligned dataset: each window is one whole sequence from its first token"
    data.update(seqlen=seqlen, windows=windows.shape[0], calib_windows=calib.shape[0])
    variant = model.config.attention
    info = {"checkpoint": os.path.relpath(path, ROOT) if path.startswith(str(ROOT)) else path,
            "iter": ckpt.get("iter_num"), "attention": variant, "dataset": name,
            "n_layer": model.config.n_layer, "n_embd": model.config.n_embd, "block_size": block}
    return Subject(variant, f"GPT ({variant})", model, model.transformer.h, gpt2_logits(model),
                   lambda ids: model(ids), windows, calib, data, hf=False, info=info,
                   spec=ModelSpec(variant, path, f"GPT ({variant})", block, "float32", dataset=name))


def outlier_rule(subjects, factor=None, min_abs=None) -> interventions.Rule:
    """The interventions' activation-outlier rule for these subjects; a given factor or floor wins. Hugging Face
    models: lib.analysis' rule (|h| > 100 and > 1000 x the median). gpt-2/ models: the emergence verdict's ratio
    (> SYSTEMATIC_RATIO x the median) and no absolute floor: their block outputs are O(1), so Sun et al.'s
    |h| > 100, an LLM scale, would hide any peak of theirs whatever its ratio."""
    small = bool(subjects) and not any(s.hf for s in subjects)
    if factor is None:
        factor = analysis.SYSTEMATIC_RATIO if small else analysis.MASSIVE_FACTOR
    if min_abs is None:
        min_abs = 0.0 if small else analysis.MASSIVE_ABS
    return interventions.Rule(factor=factor, min_abs=min_abs)


# --- measuring --------------------------------------------------------------------------------------------------

def measure(subject: Subject, methods, wanted_interventions, log=print, rule=interventions.DEFAULT_RULE,
            scale=False) -> dict:
    """Every number of one subject: baseline, compression and intervention perplexities, outlier metrics."""
    token_text = (lambda i: subject.token_text([i])[0]) if subject.token_text else None
    with finite.guard(subject.model, token_text):  # a block output or logit that is not finite stops
        return _measure(subject, methods, wanted_interventions, log, rule, scale)


def _measure(s: Subject, methods, wanted_interventions, log, rule, scale) -> dict:
    start = time.time()
    metrics = interventions.OutlierMetrics(len(s.blocks))
    with Edit(gpt2_checkpoints.as_lm(s.model), "resid_post", metrics), relocation.track(s.model) as where:
        baseline = perplexity(s.logits_fn, s.windows, prefix=s.prefix)
    baseline["where"] = where.summary(rule)
    with_prefix = relocation.window_values(where.windows(), baseline["where"]) if s.prefix else None
    del where
    result = {"name": s.name, "title": s.title, "info": s.info, "data": s.data,
              "baseline": {**summarize(baseline), "where": baseline["where"]},
              "outlier_metrics": {**metrics.summary(), "kurtosis_variant": outliers.KURTOSIS_PER_TOKEN},
              "compression": {}, "interventions": {}}
    log(f"{s.title}: fp32 perplexity {baseline['ppl']:.4g}; max inf-norm {metrics.summary()['max_inf_norm']:.4g}, "
        f"avg kurtosis {metrics.summary()['avg_kurtosis']:.4g}")
    for method in methods:
        if method in compression.ROUNDS_ACTIVATIONS:
            result["compression"][method] = jittered(s, method, baseline)
        else:
            with compression.compressed(s.model, s.blocks, method):
                result["compression"][method] = summarize(perplexity(s.logits_fn, s.windows, prefix=s.prefix), baseline)
        log(f"{s.title}: {method} perplexity {result['compression'][method]['ppl']:.4g}")
    if wanted_interventions:
        result["interventions"] = intervene(s, wanted_interventions, log, baseline, rule)
    if s.prefix:
        result["bos_removed"] = without_prefix(s, baseline, with_prefix, rule)
        log(f"{s.title}: without the prepended {', '.join(t['token'] for t in s.data['input']['prepended'])}: "
            f"perplexity {result['bos_removed']['ppl']:.4g} over the same targets")
    if scale:
        if interventions.supports_sink_mask(s.model):
            result["scale_test"] = scale_test.measure(s.model, s.run_fn, s.logits_fn, s.windows, s.calib, baseline,
                                                      lambda line: log(f"{s.title}: {line}"), rule=rule, prefix=s.prefix)
        else:
            result["scale_test"] = {"note": MASK_UNSUPPORTED}
    result["seconds"] = round(time.time() - start, 1)
    weight = next(s.model.parameters())
    embeddings = gpt2_checkpoints.as_lm(s.model).get_input_embeddings()
    result["provenance"] = provenance(s.spec, data=s.data, device=execution_device(embeddings),
                                      dtype=weight.dtype, placement=placement(s.model, s.blocks))
    return result


def without_prefix(s: Subject, baseline: dict, with_prefix: dict, rule=interventions.DEFAULT_RULE) -> dict:
    """The BOS as an intervention: the evaluation windows without the special tokens they start with (the original
    code's input), scoring the same targets (every text token but the first of each window), paired against the
    baseline; where the massive activation and the sink went (token positions counted in the full windows, so a
    token keeps its number; `moved` against the baseline), the tokens they sit on, and per window the massive
    activation's |h| and the sink's share with and without the prefix (`with_prefix`: the baseline's,
    lib.relocation.window_values)."""
    stripped = s.windows[:, s.prefix:]
    with relocation.track(s.model) as where:
        measured = perplexity(s.logits_fn, stripped)
    summary = relocation.shift(where.summary(rule), s.prefix)
    without = relocation.window_values(where.windows(), summary)

    def texts(found: dict) -> dict:
        return {kind: [s.token_text([int(s.windows[w, t])])[0] for w, t in enumerate(found[kind]["tokens"])]
                for kind in ("massive", "sink") if kind in found}
    return {"removed": s.data["input"]["prepended"], **summarize(measured, baseline), "where": summary,
            "moved": relocation.compare(baseline["where"], summary),
            "token_text": {"with": texts(baseline["where"]), "without": texts(summary)},
            "per_window": {key: {"with": with_prefix[key], "without": without[key]} for key in without},
            "targets": "the baseline's: every text token of a window but the first (the prepended tokens and the first "
                       "text token are never targets)"}


def jittered(s: Subject, method: str, baseline: dict) -> dict:
    """A compression method that rounds activations, over JITTER_RUNS runs (the first unjittered): the run of
    median perplexity, every run's perplexity, and the band within which a re-run is expected to land."""
    runs = []
    for run in range(JITTER_RUNS):
        generator = torch.Generator().manual_seed(run)

        def jitter(embedded, layer):
            signs = torch.randint(0, 2, embedded.shape, generator=generator).to(embedded) * 2 - 1
            return embedded * (1 + JITTER * signs)
        with ExitStack() as stack:
            if run:
                stack.enter_context(Edit(gpt2_checkpoints.as_lm(s.model), "embed", jitter))
            stack.enter_context(compression.compressed(s.model, s.blocks, method))
            runs.append(perplexity(s.logits_fn, s.windows, prefix=s.prefix))
    median = sorted(runs, key=lambda r: r["nll"])[len(runs) // 2]
    nlls = [r["nll"] for r in runs]
    spread = max(nlls) - min(nlls)
    return {**summarize(median, baseline), "runs": [r["ppl"] for r in runs],
            "jitter": f"{JITTER_RUNS} runs, the first as it is, the others with the input embeddings multiplied "
                      f"entrywise by 1 +- {JITTER:.2g}; the median run is reported",
            # twice the measured spread: a re-run's median falls in it far more often than 999 times in 1000
            "reproducible_within": {"atol": 2 * spread, "rtol": math.expm1(2 * spread)}}


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
    scan = interventions.scan_outliers(s.model, s.run_fn, s.calib[:, :-1], rule)  # what the model sees of a window
    first = interventions.first_outlier_layer(scan)
    out.update(outlier_layers=interventions.outlier_layers(scan),
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
        entry = {"site": site, "layer": layer, "calibration_means": {str(c): v for c, v in means.items()}}
        for mode in wanted:
            entry[mode] = _intervention(s, mode, layer, means, baseline, rule)
            if "ppl" in entry[mode]:
                log(f"{s.title}: outliers of layer {layer} ({site}) -> {mode}: perplexity {entry[mode]['ppl']:.4g}")
        out["sites"].append(entry)
    return out


MASK_UNSUPPORTED = "key masking needs a gpt-2/ model or a Hugging Face family on transformers' attention registry"


def _attention_intervention(s: Subject, mode: str, baseline=None) -> dict:
    if not interventions.supports_sink_mask(s.model):
        return {"note": MASK_UNSUPPORTED}
    logits_fn, state = interventions.mask_attention_sinks(s.model, s.run_fn, s.logits_fn,
                                                          control=mode == "mask_attn_random")
    measured, where = tracked(s, logits_fn, baseline)
    n = s.windows.shape[0]
    return {**summarize(measured, baseline), "masked_layers": "each layer: its own attention-outlier keys",
            "masked_keys_per_window": state.masked / n,
            "masked_layer_keys_per_window": state.masked_layer_keys / n, **where}


def tracked(s: Subject, logits_fn, baseline=None, rule=interventions.DEFAULT_RULE, attention=True):
    """Perplexity under an intervention, and where the massive activation and the sink went in the same forwards
    (lib.relocation): {"where": summary, "moved": against the baseline's}."""
    with relocation.track(s.model, attention=attention) as where:
        measured = perplexity(logits_fn, s.windows, prefix=s.prefix)
    summary = where.summary(rule)
    moved = relocation.compare(baseline["where"], summary) if baseline and "where" in baseline else {}
    return measured, {"where": summary, "moved": moved}


def _intervention(s: Subject, mode: str, layer: int, means: dict, baseline=None,
                  rule=interventions.DEFAULT_RULE) -> dict:
    if mode in ("mask_sink", "mask_random"):
        if not interventions.supports_sink_mask(s.model):
            return {"note": MASK_UNSUPPORTED}
        control = mode == "mask_random"
        with interventions.mask_sink_keys(s.model, layer, control=control, seed=layer, rule=rule) as state:
            measured, where = tracked(s, s.logits_fn, baseline, rule)
        return {**summarize(measured, baseline), "masked_layers": list(range(layer + 1, len(s.blocks))),
                "masked_keys_per_window": state.masked / s.windows.shape[0], **where}
    with interventions.edit_outliers(s.model, layer, mode, means, rule, seed=layer) as edit:
        measured, where = tracked(s, s.logits_fn, baseline, rule)
    tokens = [len(t) for t in edit.tokens]
    return {**summarize(measured, baseline), "edited_layer": layer, "edited_entries": edit.edited,
            "entries_without_mean": edit.without_mean, "outlier_tokens_per_window": sum(tokens) / max(len(tokens), 1),
            **where}
