"""The command line every figure script shares, and the runner that computes figures on one loaded model.

    python existence_activation_outliers_layer.py --model gemma3_270m --format both

`run(names, args, model=..., tokenizer=..., spec=...)` also takes an already-built model, which is how tests
run tiny models. The tokenizer then needs `encode(text) -> list[int]` and `convert_ids_to_tokens(ids)`
(a Hugging Face tokenizer has both; `lib.data` also uses `encode` for non-HF tokenizers).
Layers, heads, tokens, channels and columns are 0-based on the command line and in every output
(lib/layer_numbering.py).
"""
import argparse
import gc
import json
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lib import check, finite, plotting, preflight
from lib.analysis import MASSIVE_ABS, MASSIVE_FACTOR, activation_rule
from lib.data import DEFAULT_SOURCE, add_no_bos, get_data, special_tokens
from lib.errors import UserError, user_errors_exit
from lib.files import check_writable, write_json, write_text
from lib.gpt2_data import dataset_windows
from lib.layer_numbering import LAYERS_ARE, STATEMENT, layer_range
from lib.models import DEFAULT_MODEL, add_placement_flags, load_model, placement
from lib.paper_figures import FIGURES
from lib.paper_figures.figure import json_of
from lib.paper_figures.scan import dominant_outlier
from lib.provenance import provenance, short
from lib.summary import write_summary
from monkey_patch import CaptureError, ModelView
from monkey_patch.weights import execution_device

SUMMER = "Summer is warm. Winter is cold.\n"
FORMATS = {"pdf": ["pdf"], "png": ["png"], "both": ["pdf", "png"]}
# CPU defaults keep the figure suite under 10 minutes on 2 cores; on a GPU the paper's settings apply.
CPU_DEFAULTS = {"activations": (4, 512), "attention": (8, 256)}
PAPER_SAMPLES = {"activations": 10, "attention": 100}


# Flags beyond the model and output ones, in groups; each figure takes only the groups it registers (`flags`).
FLAG_GROUPS = {
    "prompt": [("--prompt", dict(default=None, help="prompt of the single-prompt figures, tokenized as the model's "
                                 "tokenizer does it, its special tokens included unless --no-bos (default: "
                                 f"{SUMMER.strip()!r}; a gpt-2 checkpoint of a synthetic task: its first validation "
                                 "sequence)"))],
    "calibration": [
        ("--data", dict(default=None, help="calibration text: gutenberg (offline default), redpajama, wikitext, c4, "
                        "pg19 or a path (a gpt-2 checkpoint: the val split of its dataset by default)")),
        ("--nsamples", dict(type=int, default=None, help="calibration sequences (default: paper's on GPU, fewer on CPU)")),
        ("--seqlen", dict(type=int, default=None, help="calibration sequence length (default: paper's on GPU, 512/256 "
                          "on CPU)")),
        ("--seed", dict(type=int, default=1, help="seed for sampling calibration sequences"))],
    "layer": [("--layer", dict(type=int, default=None, help="layer to show instead of the detected one (0-based: 0 is the first)"))],
    "head": [("--head", dict(type=int, default=None, help="0-based head to show instead of the detected one"))],
    "rule": [
        ("--outlier-factor", dict(type=float, default=MASSIVE_FACTOR,
                                  help="an activation outlier exceeds this many times its layer's median |h| (default "
                                  "%(default)g, lib.analysis' rule; the gpt-2 hypothesis test's criterion is 100)")),
        ("--outlier-min-abs", dict(type=float, default=MASSIVE_ABS,
                                   help="and exceeds this |h| (default %(default)g, Sun et al.'s floor for LLMs)"))],
}


def parser(description: str = "", groups=None, affects=None, epilog=None) -> argparse.ArgumentParser:
    """The figure command line with the model and output flags and the flag `groups` (default: all of them);
    `affects` maps a group to the figures it changes, added to each flag's help (reproduce.py)."""
    raw = epilog is not None  # keep the epilog's line breaks (one figure a line); wrap the description by hand
    p = argparse.ArgumentParser(description=textwrap.fill(description, 100) if raw else description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registry name, Hugging Face id, model folder, or a gpt-2/ checkpoint (ckpt_<iter>.pt or out dir)")
    p.add_argument("--model-path", default=None, help="folder holding the weights (or a folder of model folders)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto if a GPU, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp32 on CPU, else the model's)")
    add_placement_flags(p)
    p.add_argument("--savedir", default="figures", help="figures and JSON go to SAVEDIR/<model>/")
    p.add_argument("--format", default="png", choices=sorted(FORMATS), help="figure file format")
    add_no_bos(p)
    for group in FLAG_GROUPS if groups is None else groups:
        for flag, kwargs in FLAG_GROUPS[group]:
            if affects:
                kwargs = dict(kwargs, help=kwargs["help"] + f" [figures: {', '.join(affects[group])}]")
            p.add_argument(flag, **kwargs)
    return p


def parse_figure_args(name: str, argv=None) -> argparse.Namespace:
    """One figure script's flags; a flag the figure does not use is a UserError naming the ones it takes. Flags of
    other groups get their defaults, so the namespace is the same as reproduce.py's."""
    p = parser(FIGURES[name].description, FIGURES[name].flags)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        taken = [a.option_strings[0] for a in p._actions if a.option_strings and a.option_strings[0] != "-h"]
        raise UserError(f"{unknown[0]} is not a flag of {name}, which does not use it; it takes {', '.join(taken)}")
    full = vars(parser().parse_args([]))
    return argparse.Namespace(**{**full, **vars(args)})


def check_args(args) -> None:
    """Mistakes that can be caught before the model loads."""
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty")
    for name in ("nsamples", "seqlen"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if args.seqlen is not None and args.seqlen < 2:
        raise UserError("--seqlen must be at least 2")
    if args.layer is not None and args.layer < 0:
        raise UserError(f"--layer is 0-based (0 is the first layer): got {args.layer}")
    if args.outlier_factor <= 1:
        raise UserError(f"--outlier-factor must be above 1, got {args.outlier_factor:g}")
    if args.outlier_min_abs < 0:
        raise UserError(f"--outlier-min-abs must be at least 0, got {args.outlier_min_abs:g}")
    if args.head is not None and args.head < 0:
        raise UserError(f"--head is 0-based: got {args.head}")
    check_writable(Path(args.savedir))


@dataclass
class Context:
    """What one figure needs: the model, its tokenizer and spec, the parsed arguments, where to write."""
    model: object
    tokenizer: object
    spec: object
    args: argparse.Namespace
    outdir: Path
    cache: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    figure: object = None  # the Figure being computed (lib.paper_figures.figure)

    def __post_init__(self):
        self.view = ModelView(self.model)
        self.formats = FORMATS[self.args.format]
        # the special tokens every prompt and window gets: the tokenizer's (a BOS where it adds one), none with --no-bos
        self.input = special_tokens(self.tokenizer, not self.args.no_bos)

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def rule(self) -> dict:
        """The activation-outlier rule's constants (keyword arguments of lib.analysis.massive_entries)."""
        return {"factor": self.args.outlier_factor, "min_abs": self.args.outlier_min_abs}

    @property
    def rule_text(self) -> str:
        return activation_rule(self.args.outlier_factor, self.args.outlier_min_abs)

    @property
    def input_device(self):
        return execution_device(self.model.get_input_embeddings())

    def forward(self, ids: torch.Tensor):
        """Run the decoder only: the figures need no logits (Gemma's 262k-word head would dominate the time)."""
        with torch.no_grad():
            return self.model.base_model(ids.to(self.input_device))

    # --- user choices, checked against the model ---------------------------------------------------------------
    def layer_choice(self) -> int | None:
        """--layer, checked against the model, or None."""
        if self.args.layer is None:
            return None
        if not 0 <= self.args.layer < self.view.num_layers:
            raise UserError(f"--layer {self.args.layer} out of range: {self.title} has layers "
                            f"{layer_range(self.view.num_layers)}")
        return self.args.layer

    def head_choice(self) -> int | None:
        if self.args.head is None:
            return None
        if not 0 <= self.args.head < self.view.num_heads:
            raise UserError(f"--head {self.args.head} out of range: {self.title} has heads 0..{self.view.num_heads - 1}")
        return self.args.head

    def max_length(self) -> int | None:
        return preflight.max_positions(self.model.config)

    def check_length(self, length: int, what: str) -> None:
        limit = self.max_length()
        if limit is not None and length > limit:
            raise UserError(f"{what} has {length} tokens but {self.title} allows at most {limit}")

    # --- inputs ------------------------------------------------------------------------------------------------
    def prompt(self):
        """(ids [1, tokens], token strings) of --prompt, with the special tokens the tokenizer adds (none with
        --no-bos); cached."""
        if "prompt" not in self.cache:
            if self.args.prompt is None and self.spec.default_prompt:
                ids = list(self.spec.default_prompt)
            else:
                ids = encode(self.tokenizer, self.args.prompt or SUMMER, self.input.special_tokens)
            if not ids:
                raise UserError("--prompt encodes to no tokens")
            self.check_length(len(ids), "--prompt")
            tokens = [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids)]
            self.cache["prompt"] = (torch.tensor([ids], dtype=torch.long), tokens)
        return self.cache["prompt"]

    def settings(self, kind: str) -> tuple[int, int]:
        """(nsamples, seqlen) for calibration of `kind` ("activations" or "attention")."""
        on_cpu = self.input_device.type == "cpu"
        if on_cpu:
            nsamples, seqlen = CPU_DEFAULTS[kind]
            seqlen = min(seqlen, self.spec.seqlen)
        else:
            nsamples, seqlen = PAPER_SAMPLES[kind], self.spec.seqlen
        nsamples = self.args.nsamples or nsamples
        seqlen = self.args.seqlen or seqlen
        self.check_length(seqlen, "--seqlen")
        if on_cpu and (self.args.nsamples is None or self.args.seqlen is None):
            note = (f"CPU defaults for {kind}: {nsamples} sequences x {seqlen} tokens "
                    f"(the paper: {PAPER_SAMPLES[kind]} x {self.spec.seqlen} on a GPU)")
            if note not in self.notes:
                self.notes.append(note)
                print(note)
        return nsamples, seqlen

    def calibration(self):
        """(ids [nsamples, seqlen], settings dict) of the figure's registered calibration; cached per
        (nsamples, seqlen)."""
        nsamples, seqlen = self.settings(self.figure.calibration)
        key = ("calibration", nsamples, seqlen)
        own = self.args.data is None and self.spec.dataset  # a gpt-2 checkpoint's own validation split
        source = f"gpt-2/data/{self.spec.dataset} (val)" if own else self.args.data or DEFAULT_SOURCE
        if key not in self.cache:
            if own:
                self.cache[key] = dataset_windows(self.spec.dataset, "val", seqlen, nsamples)
            else:
                self.cache[key] = get_data(self.tokenizer, nsamples, seqlen, source=source, seed=self.args.seed,
                                           prefix=self.input.prefix)
        info = {"data": source, "nsamples": int(self.cache[key].shape[0]), "seqlen": seqlen, "seed": self.args.seed}
        if self.input.prefix and not own:
            info["prepended"] = self.input.record()["prepended"]
        return self.cache[key], info

    def headroom(self) -> dict | None:
        """The largest |h| of the current figure's inputs (the prompt where it reads it, its calibration windows)
        against float16's, bfloat16's and the run's largest finite value (lib.finite); None for a figure that reads
        no input. Cached per input."""
        inputs = []
        if "prompt" in self.figure.flags:
            inputs.append(("prompt", [self.prompt()[0]]))
        if self.figure.calibration is not None:
            ids, info = self.calibration()
            inputs.append((f"calibration {info['nsamples']} x {info['seqlen']}", [ids[s: s + 1] for s in range(len(ids))]))
        if not inputs:
            return None
        dtype = next(self.model.parameters()).dtype
        found = []
        for name, batches in inputs:
            key = ("headroom", name)
            if key not in self.cache:
                self.cache[key] = finite.headroom(self.model, self.forward, batches, dtype)
            found.append(self.cache[key])
        best = max(found, key=lambda r: r["largest_abs"])
        return {"inputs": [name for name, _ in inputs], **best}

    def tokens_of(self, ids) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])]

    # --- outputs -----------------------------------------------------------------------------------------------
    def save(self, fig, stem: str) -> list[str]:
        paths = plotting.save(fig, self.outdir / stem, self.formats)
        self.files += paths
        return paths


def encode(tokenizer, text: str, special_tokens: bool = True) -> list[int]:
    """Token ids of `text` as `tokenizer(text)` gives them: with the special tokens it adds (a BOS...), unless
    `special_tokens` is False (the original code's add_special_tokens=False). A tokenizer that is not a Hugging
    Face one adds none."""
    if hasattr(tokenizer, "model_max_length") and callable(tokenizer):  # Hugging Face
        return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
    return list(tokenizer.encode(text))


def run(names, args, model=None, tokenizer=None, spec=None, progress: bool = False) -> dict:
    """Compute, draw and save each figure in `names` on one model; returns {name: result dict}."""
    check_args(args)
    if model is None:  # what the config can tell is checked before the weights load
        preflight.check(preflight.model_shape(args.model, args.model_path), layer=args.layer, seqlen=args.seqlen,
                        device=args.device, dtype=args.dtype)
        model, tokenizer, spec = load_model(args.model, args.model_path, args.device, args.dtype,
                                            max_memory=args.max_memory, offload_folder=args.offload_folder)
    try:  # SAVEDIR/<model>/ is made by the first file written: a run that fails before leaves no empty folder
        ctx = Context(model, tokenizer, spec, args, check_writable(Path(args.savedir) / spec.name))
    except CaptureError as e:
        raise UserError(str(e)) from None
    with finite.guard(model, token_text=lambda i: ctx.tokens_of([i])[0]):
        return _run_figures(ctx, names, progress)


def _run_figures(ctx, names, progress: bool) -> dict:
    spec = ctx.spec
    steps = names
    if progress:
        steps = tqdm(names, desc=f"figures on {spec.title}", unit="figure", file=sys.stderr)
    results = {}
    for name in steps:
        start = time.time()
        ctx.figure, ctx.files = FIGURES[name], []
        try:
            data = ctx.figure.compute(ctx)
            headroom = ctx.headroom()  # before anything is drawn or written: a forward that overflows raises
            ctx.figure.render(data, ctx.title, ctx.save, figure_inputs(ctx))
        except CaptureError as e:
            raise UserError(f"{name}: {e}") from None
        result = {"script": name, "model": spec.name, "title": spec.title, "layers_are": LAYERS_ARE,
                  **json_of(data), "input": ctx.input.record(), "notes": list(ctx.notes),
                  "files": [Path(f).name for f in ctx.files], "seconds": round(time.time() - start, 2)}
        if headroom is not None:
            result["headroom"] = headroom
            result["summary"] = result.get("summary", []) + [headroom["text"]]
        if ctx.figure.dominant:  # beside the layer it draws: the prompt's largest outlier, and where the rule sees it
            result["dominant_outlier"] = dominant_outlier(ctx)
            result["summary"] = result.get("summary", []) + [result["dominant_outlier"]["text"]]
        result["provenance"] = figure_provenance(ctx, name, result)
        write_json(ctx.outdir / f"{name}.json", result)
        results[name] = result
        if not progress:
            for line in result.get("summary", []):
                print(line)
            print(f"wrote {ctx.outdir / name}.json and {len(ctx.files)} figure file(s)")
    return results


def figure_inputs(ctx) -> dict:
    """In words, for the figure titles: the prompt (its text and token count), the calibration text (sequences x
    tokens, source, seed) and one of its sequences where the figure read them, and the weights; with the special
    tokens the inputs start with."""
    record = ctx.input.record()
    named = "/".join(p["token"] for p in record["prepended"])
    would = "/".join(p["token"] for p in record["tokenizer_prepends"])
    start = f", each starting with {named}" if named else f", without the {would} (--no-bos)" if would else ""
    inputs = {"weights": "input: none, the weights alone"}
    if "prompt" in ctx.cache:
        ids, tokens = ctx.cache["prompt"]
        own = ctx.args.prompt is None and ctx.spec.default_prompt
        text = " ".join(tokens) if own else (ctx.args.prompt or SUMMER)
        text = text.replace("\n", "\\n")
        text = text if len(text) <= 160 else text[:159] + "\u2026"
        first = f", {named} first" if named else f", without the {would} (--no-bos)" if would else ""
        inputs["prompt"] = f'prompt "{text}": {ids.shape[1]} tokens{first}'
    if ctx.figure is not None and ctx.figure.calibration is not None:
        _, info = ctx.calibration()
        inputs["calibration"] = (f"calibration text: {info['nsamples']} sequences x {info['seqlen']} tokens of "
                                 f"{info['data']} (seed {info['seed']}){start}")
        inputs["sequence"] = (f"calibration sequence 0 of {info['nsamples']}: {info['seqlen']} tokens of {info['data']} "
                              f"(seed {info['seed']}){start}")
    return inputs


def main(name: str, argv=None) -> None:
    """Entry point of one figure script."""
    with user_errors_exit(name):
        run([name], parse_figure_args(name, argv))


def figure_provenance(ctx, name, result) -> dict:
    """lib.provenance's block for one figure: the flags of the groups it uses, the prompt's token ids where it
    read the prompt, the calibration windows where it read those."""
    flags = {}
    for group in FIGURES[name].flags:
        for flag, _ in FLAG_GROUPS[group]:
            key = flag[2:].replace("-", "_")
            flags[key] = getattr(ctx.args, key)
    data = {"flags": {**flags, "no_bos": ctx.args.no_bos}, "input": ctx.input.record()}
    if "prompt" in FIGURES[name].flags and "prompt" in ctx.cache:
        data["prompt_ids"] = ctx.cache["prompt"][0][0].tolist()
    if "calibration" in result:
        data["calibration"] = result["calibration"]
    dtype = next(ctx.model.parameters()).dtype
    return provenance(ctx.spec, data=data, device=ctx.input_device, dtype=dtype, placement=placement(ctx.model))


def write_index(outdir: Path, title: str, seconds: float, notes) -> Path:
    """index.md next to the figures: every figure whose JSON is in outdir, with its key numbers."""
    results = {name: json.loads((outdir / f"{name}.json").read_text()) for name in FIGURES
               if (outdir / f"{name}.json").is_file()}
    lines = [f"# Systematic outliers in {title}", "",
             f"{len(results)} figures; the last run took {seconds:.0f} s. " + STATEMENT, ""]
    lines += [f"- {note}" for note in notes] + [""]
    block = next((r["provenance"] for r in results.values() if "provenance" in r), None)
    if block is not None:
        lines += [f"Made by {short(block)}; command: `{block['command']}`.", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", FIGURES[name].description[0].upper() + FIGURES[name].description[1:] + ".", ""]
        lines += [f"- {line}" for line in result.get("summary", [])]
        lines += ["", f"Numbers: [{name}.json]({name}.json)", ""]
        for file in result.get("files", []):
            if file.endswith(".png"):
                lines += [f"![{file}]({file})", ""]
            else:
                lines += [f"[{file}]({file})", ""]
    path = outdir / "index.md"
    write_text(path, "\n".join(lines))
    return path


def figure_list() -> str:
    """The registered figures, one line each, with the calibration they read (reproduce.py --help)."""
    lines = ["figures (--only):"]
    for name, figure in FIGURES.items():
        kind = figure.calibration
        reads = "" if kind is None else (f" [calibration: {kind}, {CPU_DEFAULTS[kind][0]} x {CPU_DEFAULTS[kind][1]} "
                                          f"tokens on CPU, {PAPER_SAMPLES[kind]} sequences on GPU]")
        lines.append(textwrap.fill(f"{name}: {figure.description}{reads}", 100, initial_indent="  ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def reproduce_main(argv=None) -> None:
    """Every registered figure per model, one model load each, with a progress bar and an index page; several
    models one after the other (--model a,b,c); a table across models (--summary)."""
    with user_errors_exit("reproduce"):
        affects = {g: [n for n, f in FIGURES.items() if g in f.flags] for g in FLAG_GROUPS}
        p = parser("Reproduce every LLM figure of the paper, and the compression valley beside them, on one model "
                   "(one model load) or several (--model a,b,c: one at a time).", affects=affects,
                   epilog=figure_list())
        p.add_argument("--only", nargs="+", choices=list(FIGURES), default=None, metavar="FIGURE",
                       help="a subset of the figures (listed below)")
        p.add_argument("--summary", action="store_true",
                       help="also write SAVEDIR/summary.md and summary.json: one row per model folder in SAVEDIR")
        p.add_argument("--summary-only", action="store_true", help="only write the summary of the folders there")
        p.add_argument("--check", metavar="FOLDER", default=None,
                       help="re-run what the results in FOLDER record (their provenance) and report every number that "
                       "differs; exit 1 if any does")
        p.add_argument("--consequences-dir", default="results/consequences",
                       help="the summary adds the perplexities of <dir>/<model>/consequences.json where it exists")
        args = p.parse_args(argv)
        if args.check:
            sys.exit(check.main(args.check))
        if not args.summary_only:
            models = [m.strip() for m in args.model.split(",")] if "," in args.model else [args.model]
            if not all(models):
                raise UserError(f"--model {args.model!r} has an empty name in its list")
            for model in models:
                args.model = model
                start = time.time()
                results = run(args.only or list(FIGURES), args, progress=True)
                seconds = time.time() - start
                first = next(iter(results.values()))
                index = write_index(Path(args.savedir) / first["model"], first["title"], seconds,
                                    first.get("notes", []))
                for result in results.values():
                    for line in result.get("summary", []):
                        print(line)
                print(f"{len(results)} figures in {seconds:.0f} s; index: {index}")
                del results
                gc.collect()  # the model goes before the next one loads
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if args.summary or args.summary_only:
            md, _, rows = write_summary(args.savedir, args.consequences_dir)
            print(f"summary of {len(rows)} model(s): {md}")
