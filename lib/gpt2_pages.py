"""gpt-2/results/README.md, rendered from the committed results of gpt-2/results/ (compare.py's table.json,
analyze.py's <variant>/analysis.json, the emergence study's table.json), results/consequences/gpt2_backcopy*/ and
the settings the runs used (gpt-2/config/, data/backcopy/prepare.py's DEFAULTS, run_backcopy_peak_lr1e2.sh). The
files of backcopy*/ and shakespeare_char/ count layers from 1 (no `layers_are`); the page gives them 0-based.
lib/pages.py writes the page; nothing of gpt-2/ is imported, its files are read.
"""
import ast
import json
import re
from pathlib import Path

from lib.layer_numbering import written_one_based

GPT2 = Path("gpt-2")
RESULTS = GPT2 / "results"
PAGE = RESULTS / "README.md"
PEAK_FOLDERS = ("backcopy_peak", "backcopy_peak_lr1e2")
SOFTMAX_LIKE = ("default", "vbias", "cabias", "attn_bias")  # the variants whose need of a sink the page states
PROSE_NAMES = {"clipped": "clipped softmax"}
WORSE_BY = 0.05  # validation loss above default's by more than this: "trains worse"


# --- the committed files ---------------------------------------------------------------------------------------------

def load(root: Path, path) -> dict:
    """A committed JSON file, by its path under root."""
    return json.loads((root / path).read_text())


def variant_rows(root: Path, folder: str) -> dict:
    """compare.py's table.json rows of a gpt-2/results folder, by variant, with the layer of the ratio 0-based."""
    table = load(root, RESULTS / folder / "table.json")
    shift = int(written_one_based(table))
    return {r["variant"]: {**r, "ratio_layer": r["ratio_layer"] - shift} for r in table["rows"]}


def analysis(root: Path, folder: str, variant: str) -> dict:
    return load(root, RESULTS / folder / variant / "analysis.json")


def consequences(root: Path, folder: str) -> dict:
    """The results of a consequences.py run, by model name."""
    report = load(root, Path("results/consequences") / folder / "consequences.json")
    return {r["name"]: r for r in report["results"]}


def config(root: Path, name: str) -> dict:
    """The settings of a gpt-2/config file (plain assignments)."""
    values = {}
    exec((root / GPT2 / "config" / name).read_text(), {}, values)
    return values


def literal_defaults(root: Path, path) -> dict:
    """The literal entries of a gpt-2/ file's `DEFAULTS = dict(...)`, read from its source (nothing is imported)."""
    tree = ast.parse((root / path).read_text())
    call = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "DEFAULTS" for t in node.targets))
    found = {}
    for keyword in call.keywords:
        try:
            found[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            continue
    return found


def task_defaults(root: Path) -> dict:
    """data/backcopy/prepare.py's DEFAULTS."""
    return literal_defaults(root, GPT2 / "data/backcopy/prepare.py")


def search_lrs(root: Path) -> dict:
    """The constant learning rates of the two search folders: the config file's and the flag
    run_backcopy_peak_lr1e2.sh adds."""
    script = (root / RESULTS / "run_backcopy_peak_lr1e2.sh").read_text()
    lr1e2 = float(re.search(r"--learning_rate=(\S+)", script).group(1))
    return dict(zip(PEAK_FOLDERS, map(lr, (config(root, "train_backcopy_peak.py")["learning_rate"], lr1e2))))


def emergence(root: Path) -> dict:
    """How many runs of the emergence study the logs rule out or leave open, and the study's ratio criterion."""
    table = load(root, RESULTS / "emergence/table.json")
    verdicts = [r["over_run"]["verdict"] for r in table["rows"]]
    return dict(no=verdicts.count("no"), open=verdicts.count("not re-judged"), total=len(verdicts),
                ratio=table["criteria"]["ratio"])


# --- numbers and words as the page writes them -----------------------------------------------------------------------

WORDS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                       "sixteen".split()))


def lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def g4(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def listed(names: list[str]) -> str:
    """a, b and c."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def percent_change(after: float, before: float) -> float:
    return 100 * (after / before - 1)


def span(values, fmt: str, scale: float = 1) -> str:
    """The smallest and the largest value (times scale): 0.17-0.24."""
    return f"{format(scale * min(values), fmt)}-{format(scale * max(values), fmt)}"


# --- the page --------------------------------------------------------------------------------------------------------

INTRO = """\
Small GPTs with each attention variant (`../README.md`) were trained on a synthetic task on a 2-core CPU, to see
whether default attention forms attention sinks and systematic outliers that ca_softmax, attn_bias and sigmoid do
not. Four sets of runs: the main configuration on a fixed corpus (`backcopy/`), a search for activation outliers
at high learning rates (`backcopy_peak/`, `backcopy_peak_lr1e2/`, training logs in `pilots/`), character-level
Shakespeare (`shakespeare_char/`), and long runs on fresh data (`emergence/README.md`). Each number below is in
its folder's `table.json` or `<variant>/analysis.json`, or in `results/consequences/` at the repository root.
Layers are 0-based here as everywhere in the project; the files of `backcopy*/` and `shakespeare_char/` were
written when they were counted from 1 (their JSON has no `layers_are`), and the tables below give them 0-based."""

TASK_WHY = """\
random bigram table (Dirichlet α = {alpha:g} rows), which needs no attention. Each copy head must be active on its
triggers and dormant elsewhere, the situation in which softmax heads park their mass on a sink (after Guo et al.
2024)."""

PILOTS = """\
`pilots/` holds training logs, losses only: the default-attention pilots that led to this configuration
(`pA.log`-`pE.log`; pilot E is the default run of `backcopy_peak/`), the search runs, the Shakespeare runs, and
two runs that no committed file analyses (`out-peakwd-*.log`: this configuration with weight decay 0.1;
`out-lr1e2-ca_softmax-seed7.log`: ca_softmax at lr 1e-2 with another seed)."""

REGENERATE = """\
## Regenerate
From `gpt-2/`, one CPU thread per run (`OMP_NUM_THREADS=1`):
```
bash results/run_backcopy.sh               # backcopy/: prepare.py, train.py per variant, compare.py
bash results/run_backcopy_peak.sh          # backcopy_peak/
bash results/run_backcopy_peak_lr1e2.sh    # backcopy_peak_lr1e2/
python train.py config/train_shakespeare_char.py --attention=<v> --out_dir=out-char-<v>   # default, ca_softmax
python compare.py --runs="['out-char-default','out-char-ca_softmax']" --results_dir=results/shakespeare_char
```
The variants' training speed is in `bench/README.md` at the repository root."""


def search_peaks(root: Path) -> tuple[list[str], list[str]]:
    """The variants whose largest top-1/median over the high-learning-rate search passes the emergence criterion's
    ratio, and every variant of the search; raises where the main configuration (backcopy/) passes it too, since
    the pages say the peaks appear only at a high learning rate."""
    ratio = emergence(root)["ratio"]
    searched = variant_rows(root, PEAK_FOLDERS[0])
    largest = {v: max(variant_rows(root, f)[v]["ratio"] for f in PEAK_FOLDERS) for v in searched}
    if any(r["ratio"] >= ratio for r in variant_rows(root, "backcopy").values()):
        raise ValueError("the pages say top-1/median passes the criterion only at a high learning rate; a backcopy/ "
                         "run passes it")
    return [v for v, r in largest.items() if r >= ratio], list(largest)


def in_short(root: Path) -> list[str]:
    e = emergence(root)
    passing, _ = search_peaks(root)
    return ["**In short.** The sink half of the paper's claim shows at comparable loss: default attention forms a "
            "sink on BOS\nand needs it, ca_softmax and sigmoid do not. The activation half was not shown: on the fixed "
            f"corpus, top-1/median\npasses {e['ratio']:g} only with no weight decay and a high constant learning rate, "
            f"in {listed(passing)}\nalike, and zeroing those peaks costs almost nothing; the logs of "
            f"the long runs on fresh data rule out {e['no']} of {e['total']}\nruns and cannot decide the other "
            f"{e['open']}. The registered test is the factorial study (`factorial/README.md`).", ""]


def task(root: Path) -> list[str]:
    t, train = task_defaults(root), config(root, "train_backcopy.py")
    offsets = t["offsets"]
    params = variant_rows(root, "backcopy")["default"]["params"]
    return ["## The task and the main configuration (`backcopy/`)",
            f"Each sequence is BOS followed by {t['seq_len'] - 1} tokens over a {t['vocab']}-token vocabulary. "
            f"{WORDS[t['triggers'] * len(offsets)].capitalize()} trigger tokens in {WORDS[t['triggers']]} groups mean",
            f"\"the next token copies the token {', '.join(map(str, offsets[:-1]))} or {offsets[-1]} places before "
            "me\"; every other token is followed by a draw from a fixed", TASK_WHY.format(alpha=t["alpha"]) +
            f" `data/backcopy/prepare.py` writes {t['train_seqs']:,} training sequences and {t['val_seqs']} "
            f"validation sequences (seed {t['seed']}).",
            f"`config/train_backcopy.py`: {train['n_layer']} layers, {train['n_head']} heads, width {train['n_embd']}, "
            f"block {train['block_size']}, no biases, {params / 1e6:.2f}M parameters, AdamW with lr",
            f"{lr(train['learning_rate'])} decaying to {lr(train['min_lr'])} (cosine, {train['warmup_iters']} warmup "
            f"steps), weight decay {train['weight_decay']:g}, {train['max_iters']} steps; only the attention changes.",
            ""]


def main_table(root: Path) -> list[str]:
    cons = consequences(root, "gpt2_backcopy")
    lines = ["| variant | val loss | top-1/median (layer) | attention on BOS | on k′ | perplexity: sinks masked | "
             "random keys masked |", "|---|---|---|---|---|---|---|"]
    for v, r in variant_rows(root, "backcopy").items():
        sinks = cons[v]["interventions"]["attention_sinks"]
        lines.append(f"| {v} | {r['val_loss']:.4f} | {r['ratio']:.1f} ({r['ratio_layer']}) | "
                     f"{r['first_token_share']:.3f} | {r['extra_key_share']:.3f} | "
                     f"{g4(cons[v]['baseline']['ppl'])} → {g4(sinks['mask_attn_sink']['ppl'])} | "
                     f"{g4(sinks['mask_attn_random']['ppl'])} |")
    return lines + [""]


def sink_need(root: Path) -> dict:
    """Each variant's need of its sink: masking the sinks costs over 5x (yes), over 2x (partly) or at most 2x (no)
    what masking as many random keys costs."""
    need = {}
    for name, r in consequences(root, "gpt2_backcopy").items():
        masked = {k: percent_change(v["ppl"], r["baseline"]["ppl"])
                  for k, v in r["interventions"]["attention_sinks"].items()}
        ratio = masked["mask_attn_sink"] / masked["mask_attn_random"]
        need[name] = "yes" if ratio > 5 else "partly" if ratio > 2 else "no"
    return need


def sink_sentence(root: Path) -> str:
    need = sink_need(root)
    if need.get("gated") != "no":
        raise ValueError(f"the page says gated attention does not need its sink; its masking says {need['gated']}")
    named = {k: [PROSE_NAMES.get(v, v) for v, n in need.items() if n == k and v != "gated"]
             for k in ("yes", "partly", "no")}
    return (f"{listed(named['yes'])} need their BOS sink, {listed(named['partly'])} partly,\nand "
            f"{listed(named['no'])} do not; gated attention keeps a sink it does not need, as Qiu et al.'s output gate")


def main_reading(root: Path) -> list[str]:
    rows = variant_rows(root, "backcopy")
    n_seqs = analysis(root, "backcopy", "default")["n_seqs"]
    return [f"Top-1/median is of |block output| over {n_seqs} validation sequences, attention on BOS and on attn_bias' "
            "extra key k′ the\nmean over heads and queries 1..T-1, each at the layer where it is largest (`table.md` "
            "has every column). The\nperplexities (`results/consequences/gpt2_backcopy/`) mask each window's "
            "attention-outlier keys, or as many random\nkeys. " + sink_sentence(root) +
            f"\npredicts. No variant's top-1/median passes {max(r['ratio'] for r in rows.values()):.1f}.", ""]


def search_intro(root: Path) -> list[str]:
    peak, lrs = config(root, "train_backcopy_peak.py"), search_lrs(root)
    return ["## Searching for activation outliers (`backcopy_peak/`, `backcopy_peak_lr1e2/`)",
            f"`config/train_backcopy_peak.py`: the same task with {peak['n_layer']} layers x {peak['n_embd']} wide, "
            f"no weight decay, constant lr {lrs['backcopy_peak']},",
            f"{peak['max_iters']:,} steps (`run_backcopy_peak.sh`); `backcopy_peak_lr1e2/` the same at lr "
            f"{lrs['backcopy_peak_lr1e2']} (`run_backcopy_peak_lr1e2.sh`).", ""]


def search_table(root: Path) -> list[str]:
    lrs = search_lrs(root)
    return ["| lr | variant | val loss | top-1/median (layer) | attention on BOS | on k′ |",
            "|---|---|---|---|---|---|"] + [
        f"| {lrs[folder]} | {v} | {r['val_loss']:.4f} | {r['ratio']:.1f} ({r['ratio_layer']}) | "
        f"{r['first_token_share']:.3f} | {r['extra_key_share']:.3f} |"
        for folder in PEAK_FOLDERS for v, r in variant_rows(root, folder).items()] + [""]


def peaks_on_bos(root: Path) -> bool:
    """Whether every search run's largest top-1/median sits on the first token."""
    for folder in PEAK_FOLDERS:
        for v in variant_rows(root, folder):
            a = analysis(root, folder, v)
            if a["layers"][a["summary"]["max_ratio_layer"] - written_one_based(a)]["top1_token"] != 0:
                return False
    return True


def pass_sentence(root: Path) -> str:
    ratio = emergence(root)["ratio"]
    rows = [variant_rows(root, folder) for folder in PEAK_FOLDERS]
    largest = {v: max(r[v]["ratio"] for r in rows) for v in rows[0]}
    passing = [v for v, x in largest.items() if x >= ratio]
    failing = [v for v in largest if v not in passing]
    return (f"{listed(passing).capitalize()} pass {ratio:g}, {listed(failing)} "
            f"{'does' if len(failing) == 1 else 'do'} not")


def worse_sentence(root: Path) -> str:
    """The variants whose validation loss lies over default's by more than WORSE_BY, and at which rates."""
    lrs = search_lrs(root)
    worse = {}
    for folder in PEAK_FOLDERS:
        rows = variant_rows(root, folder)
        for v, r in rows.items():
            if r["val_loss"] > rows["default"]["val_loss"] + WORSE_BY:
                worse.setdefault(v, []).append(lrs[folder])
    at = [f"at lr {rates[0]}" if len(rates) == 1 else "at both rates" for rates in worse.values()]
    phrases = [f"{v} {where}" for v, where in zip(worse, at)]
    phrases[0] = phrases[0].replace(" at", "\ntrains worse at", 1)
    return listed(phrases) + ", so those rows do not compare at equal loss"


def search_reading(root: Path) -> list[str]:
    if not peaks_on_bos(root):
        raise ValueError("the page says every search peak sits on BOS; an analysis.json has one elsewhere")
    lrs = search_lrs(root)
    layers = analysis(root, "backcopy_peak_lr1e2", "attn_bias")["attention_layers"]
    extra = [layer["extra_key_share"] for layer in layers]
    cons = consequences(root, "gpt2_backcopy_peak")
    zeroed = [percent_change(cons[v]["interventions"]["sites"][0]["zero"]["ppl"], cons[v]["baseline"]["ppl"])
              for v in ("default", "attn_bias")]
    masked = cons["default"]["interventions"]["attention_sinks"]["mask_attn_sink"]["ppl"]
    return [f"Every one of these peaks sits on BOS. {pass_sentence(root)}; {worse_sentence(root)}. attn_bias moves "
            "its sink onto k′\nin this wider model "
            f"({span(extra, '.2f')} of each layer's mass at lr {lrs['backcopy_peak_lr1e2']}). Zeroing the peaks costs "
            f"default and attn_bias\n{span(zeroed, '.1f')}% perplexity, while masking default's sinks takes it from "
            f"{cons['default']['baseline']['ppl']:.1f} to {masked:.0f}\n(`results/consequences/gpt2_backcopy_peak/`): "
            "these peaks do no work the loss needs.", "", PILOTS, ""]


def natural_text(root: Path) -> list[str]:
    text, rows = config(root, "train_shakespeare_char.py"), variant_rows(root, "shakespeare_char").values()
    return ["## Natural text without a dedicated BOS (`shakespeare_char/`)",
            f"`config/train_shakespeare_char.py`: character-level Shakespeare, windows starting at arbitrary "
            f"characters, {text['n_layer']}\nlayers x {text['n_embd']}, block {text['block_size']}, "
            f"{text['max_iters']:,} steps. Neither default nor ca_softmax forms a sink or outliers: the first position"
            f"\ngets {span([r['first_token_share'] for r in rows], '.0f', 100)}% of the attention, no key more than "
            f"{100 * max(r['top_key_share'] for r in rows):.0f}%, and top-1/median is "
            f"{span([r['ratio'] for r in rows], '.0f')}. A run this short is no test of the\nclaim.", ""]


def page(root: Path, rendered: str) -> str:
    lines = ["# Hypothesis test at CPU scale: synthetic multi-offset Bigram-Backcopy", "", rendered, "", INTRO, ""]
    for part in (in_short, task, main_table, main_reading, search_intro, search_table, search_reading, natural_text):
        lines += part(root)
    return "\n".join(lines + [REGENERATE]) + "\n"


# --- the factorial study (gpt-2/results/factorial/table.json, written by gpt-2/factorial.py) -------------------------

FACTORIAL = RESULTS / "factorial"


def factorial_summary(table: dict) -> list[str]:
    """The factorial study's answer in a few sentences, from its table.json: how many registered runs finished,
    whether any holds a systematic outlier and the largest fixed-position ratio reached, what the registered rule
    reads of each explanation, and the steps to the common validation loss. factorial.py opens table.md with them;
    the READMEs quote them."""
    runs, criteria = table["runs"], table["criteria"]
    done = [r for r in runs if r["finished"]]
    lines = [f"{len(done)} of the {table['registered_runs']} registered runs have finished"
             + (f" ({len(runs) - len(done)} in progress)." if len(runs) > len(done) else ".")]
    if not done:
        return lines
    held = [r["run"] for r in done if r.get("over_run", {}).get("verdict") == "yes"]
    top = max(done, key=lambda r: r["peak_ratio"])
    logged = [(p["peak_ratio"], p["iter"], r["run"]) for r in runs for p in r["trajectory"]]
    ratio, step, where = max(logged)
    lines.append(
        (f"{listed(held)} {'holds' if len(held) == 1 else 'hold'} a systematic outlier." if held else
         "No finished run holds a systematic outlier (the registered criterion, in short: a fixed-position ratio >= "
         f"{criteria['ratio']:g} written by an MLP, on which a head of a later block puts > {criteria['sink_share']:g} "
         f"of its attention, at {criteria['persistence']} consecutive logged checkpoints; `criteria` in table.json "
         "states it in full).")
        + f" The largest final fixed-position ratio is {top['peak_ratio']:.1f} ({top['run']}, block "
        f"{top['peak_block']}, position {top['peak_position']}); the largest at any logged step {ratio:.1f} ({where}, "
        f"step {step:,}); the largest final sink share on a run's peak position "
        f"{max(r['sink_share'] for r in done):.2f}.")
    readings = [e for e in table["effects"] if e["measure"] == "peak_ratio"]
    lines.append("The registered rule on the final peak ratio reads (median change of log10 ratio over the pairs of "
                 "cells that differ in the factor only): " + "; ".join(
                     f"{e['explanation']} ({e['removing_level']} against {e['other_level']}"
                     + (f", {e['median_change']:+.2f}" if e["median_change"] is not None else "") + f"): {e['reading']}"
                     for e in readings) + ".")
    conv = table.get("convergence")
    if conv:
        reached = [s for s in conv["steps_to_target"].values() if s is not None]
        lines.append(f"The finished runs reach a validation loss of {conv['target_loss']:.4f} (the largest final one) "
                     f"after {min(reached):,}-{max(reached):,} steps.")
    return lines
