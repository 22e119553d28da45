"""gpt-2/results/emergence/README.md, rendered from the committed files: the emergence table (table.json, written
by gpt-2/emergence.py from the runs' logs), the settings the runs used (gpt-2/config/train_emergence.py and
train.py's DEFAULTS, read from their source) and the consequences of three of its runs
(results/consequences/gpt2_emergence_bos/, gpt2_emergence_none/). lib/pages.py writes the page; nothing of gpt-2/
is imported, its files are read.
"""
import math
from pathlib import Path

from lib.gpt2_pages import GPT2, RESULTS, WORDS, config, consequences, listed, literal_defaults, load, lr
from lib.page_values import require
from lib.page_values import wrapped as fill

FOLDER = RESULTS / "emergence"
PAGE = FOLDER / "README.md"
PREFIX = "out-emergence-"


def table(root: Path) -> dict:
    """The emergence table with its rows by run name."""
    t = load(root, FOLDER / "table.json")
    return {**t, "by_run": {r["run"]: r for r in t["rows"]}}


def streaks(t: dict, run: str) -> list[dict]:
    """The stretches of at least `persistence` consecutive logged checkpoints at which a run's logged peak passes
    every check a log can make."""
    need = t["criteria"]["persistence"]
    return [s for s in t["by_run"][run]["over_run"]["logged_peak_streaks"] if s["checkpoints"] >= need]


def steps(streak: dict) -> str:
    return f"{streak['first'] // 1000}k-{streak['last'] // 1000}k"


def short(run: str) -> str:
    return run.removeprefix(PREFIX)


def verdicts(t: dict) -> dict:
    """The runs by their verdict over the run."""
    out = {}
    for r in t["rows"]:
        out.setdefault(r["over_run"]["verdict"], []).append(r["run"])
    return out


def intro(t: dict) -> list[str]:
    judged = verdicts(t)
    decided = ("the logs do not decide the question for any run" if not judged.get("yes") else
               f"the logs find systematic outliers in {listed([f'`{short(r)}`' for r in judged['yes']])}")
    return [f"{len(t['rows'])} small GPTs were trained for tens of thousands of steps on the Bigram-Backcopy task, "
            "with new sequences drawn\nat every step, to see whether default attention grows systematic outliers "
            "that ca_softmax, attn_bias and sigmoid\ndo not. Their checkpoints were not kept, so each run is judged "
            f"here from its training logs, and {decided}. The registered test of the hypothesis is the factorial "
            "study\n(`../factorial/README.md`).", ""]


def what_was_run(root: Path, t: dict) -> list[str]:
    fresh, defaults = config(root, "train_emergence.py"), literal_defaults(root, GPT2 / "train.py")
    rows = t["rows"]
    count = lambda key, value: sum(r[key] == value for r in rows)  # noqa: E731
    adamw = [r for r in rows if r["optimizer"] == "adamw"]
    (sgd_lr,), (sgd_wd,) = {r["lr"] for r in rows if r["optimizer"] == "sgd"}, \
        {r["weight_decay"] for r in rows if r["optimizer"] == "sgd"}
    wide = [r for r in rows if r["width"] != fresh["n_embd"]]
    (width,), (heads,) = {r["width"] for r in wide}, {r["heads"] for r in wide}
    decays = sorted({r["weight_decay"] for r in adamw} - {fresh["weight_decay"]})
    (other_lr,) = {r["lr"] for r in adamw} - {fresh["learning_rate"]}
    (deep,) = {r["n_layer"] for r in rows if r["n_layer"] != fresh["n_layer"]}
    iters = [r["iter"] for r in rows]
    no_decay = "no weight decay" if sgd_wd == 0 else f"weight decay {sgd_wd:g}"
    return [
        "## What was run",
        f"- **Setting** (`config/train_emergence.py`): {fresh['n_layer']} layers x {fresh['n_embd']} wide, "
        f"{fresh['n_head']} heads, block {fresh['block_size']}, {fresh['batch_size']} sequences per step drawn\n  "
        f"afresh from the task (`--fresh_data=True`: nothing repeats), AdamW at a constant lr "
        f"{lr(fresh['learning_rate'])} after {fresh['warmup_iters']} warmup\n  steps, weight decay "
        f"{fresh['weight_decay']:g}, fp32. Every {fresh['stats_interval']} steps `train.py` logged per-block "
        f"statistics on the first {defaults['stats_seqs']}\n  validation sequences (`runs/<name>/stats.jsonl`) "
        "and its val loss (`train_log.jsonl`).",
        f"- **Designs** (`design` in `table.json`): `bos` (BOS, then the task's tokens; {count('design', 'bos')} runs), "
        "`random_first` (a random\n  first token, then a fixed token F; learned, rotary or no position embedding; "
        f"{count('design', 'random_first')} runs) and `nobos` (no BOS and no\n  fixed token; rotary or no position "
        f"embedding; {count('design', 'nobos')} runs).",
        f"- **Changes**, named in each run's name: the attention variant ({count('attention', 'default')} default, "
        f"{count('attention', 'ca_softmax')} ca_softmax, {count('attention', 'attn_bias')}\n  attn_bias, "
        f"{count('attention', 'sigmoid')} sigmoid runs), weight decay {' or '.join(f'{d:g}' for d in decays)}, lr "
        f"{lr(other_lr)}, width {width} with {heads} heads, SGD (momentum {defaults['momentum']:g}, lr {sgd_lr:g},\n  "
        f"{no_decay}), a second seed (`-s2`), {deep} layers (`-l{deep}`). The runs stopped at {min(iters):,}-"
        f"{max(iters):,} steps.", ""]


def how_judged(t: dict) -> list[str]:
    c, bounds = t["criteria"], t["log_bounds"]
    return [
        "## How the runs are judged",
        "A block before the last holds a **systematic outlier** at position p (`outlier_stats.criteria()`, written "
        "into\n`table.json` as `criteria`) when the median over sequences of |h[p, c]| / median |h| for p's top "
        f"channel c is\n>= {c['ratio']:g}, p holds the block's largest entry in more than half of the sequences or "
        f"is fixed by the design, an MLP\nwrote the entry (the embedding holds < {100 * c['embed_share']:g}% of it), "
        f"and some head of a strictly later block puts > {c['sink_share']:g} of the\nattention of queries 1..T-1 on "
        f"p, at {c['persistence']} consecutive logged checkpoints. It is **load-bearing** when zeroing its\nmassive "
        f"channels costs at least {100 * (math.exp(c['load_bearing_nats']) - 1):.0f}% perplexity more than zeroing as "
        f"many channels at another position\n(mean of {c['control_draws']} draws).", "",
        "The logs hold less: per block a position-free ratio (each sequence's largest |h| over its median, wherever "
        "it\nsits, averaged over the sequences), the most frequent position of that maximum and its writer; per "
        "layer the most\nattended key and its head-averaged share. `emergence.py --from_logs=True` uses two bounds: "
        f"a block whose logged\nratio is under {bounds['ratio_floor']:.1f} (`outlier_stats.ratio_floor("
        f"{bounds['stats_seqs']})`) cannot pass the ratio, and a layer whose heads x top-key\nshare is <= "
        f"{bounds['sink_share']:g} has no head above {bounds['sink_share']:g}. A run is **no** when these bounds "
        f"leave no block open at {c['persistence']} consecutive\ncheckpoints, and **not re-judged** otherwise.", ""]


def candidates(t: dict) -> str:
    """The runs whose logged peak passes every check a log can make, with where and when."""
    parts = []
    for run in (r["run"] for r in t["rows"]):
        found = streaks(t, run)
        if not found:
            continue
        at = {}
        for s in found:
            at.setdefault((s["layer"], s["position"]), []).append(steps(s))
        where = ", ".join(f"block {layer} on position {position} at {' and '.join(when)}"
                          for (layer, position), when in at.items())
        parts.append(f"`{short(run)}`, {where}")
    return "; ".join(parts)


def logs_show(root: Path, t: dict) -> list[str]:
    c, judged = t["criteria"], verdicts(t)
    opened = [f"`{short(r)}`" for r in judged.get("not re-judged", [])]
    found = [r["run"] for r in t["rows"] if streaks(t, r["run"])]
    nobos = [r for r in t["rows"] if r["design"] == "nobos"]
    nobos_share = max(share for r in nobos for layer in r["trajectory"]["sink_share"] for share in layer)
    bos = consequences(root, "gpt2_emergence_bos")
    masks = {name: r["interventions"]["attention_sinks"] for name, r in bos.items()}
    default = bos[PREFIX + "default"]
    at = t["by_run"][PREFIX + "default"]["at_checkpoint"]["layers"][0]
    scale = consequences(root, "gpt2_emergence_bos/scale_test")[PREFIX + "default"]["scale_test"]["modes"]
    none = consequences(root, "gpt2_emergence_none")
    labels = (("default", PREFIX + "rf-default-none"), ("ca_softmax", "ca_softmax"), ("attn_bias", "attn_bias"))
    w8a8 = ", ".join(f"{label} from {none[name]['baseline']['ppl']:.3f} to {none[name]['compression']['w8a8']['ppl']:.3f}"
                     for label, name in labels)
    pruned = listed([f"{none[name]['compression']['prune50']['ppl']:.3f}" for _, name in labels])
    sink = lambda name: f"{masks[name]['mask_attn_sink']['ppl']:.3f}"  # noqa: E731
    require(nobos_share <= c["sink_share"], "no sink forms in the nobos runs (no key above the sink share)")
    require(at["token"] == 0 and abs(at["value"]) / at["median"] < c["ratio"],
            "BOS's own entry at default's final checkpoint is no massive activation")
    require(scale["oracle_scale"]["nll_change"] < scale["mask"]["nll_change"] / 4
            and scale["fitted_scale"]["nll_change"] < scale["const_scale"]["nll_change"],
            "the BOS sink acts as a context-aware scale (the measured scale undoes most of the mask's cost, a "
            "per-token one more than one per head)")
    headline = ("**No run is shown to hold a systematic outlier.**" if not judged.get("yes") else
                f"**{len(judged['yes'])} run(s) hold a systematic outlier by the logs.**")
    return [
        "## What the logs show",
        f"- {headline} The logs rule out {len(judged.get('no', []))} of the {len(t['rows'])} runs and leave "
        f"{len(opened)} not re-judged:\n  {listed(opened)} (`table.md`: their open blocks and steps).",
        f"- In {WORDS[len(found)]} of them the logged peak passes every check a log can make (position-free ratio >= "
        f"{c['ratio']:g} on a position\n  the design fixes, written by an MLP, a strictly later layer's head-averaged "
        f"share on it > {c['sink_share']:g}) at {c['persistence']} or more\n  consecutive checkpoints "
        f"(`logged_peak_streaks`): {candidates(t)}. These are the candidates a checkpoint\n  would have confirmed or "
        "refuted.",
        f"- **Without a token that the embedding sets apart** (the {len(nobos)} `nobos` runs) no layer's most attended "
        f"key takes more\n  than {nobos_share:.2f} of the head-averaged attention at any logged checkpoint: no sink "
        "forms.",
        f"- **With BOS**, default's sink is vital: masking it raises perplexity from {default['baseline']['ppl']:.3f} "
        f"to {masks[PREFIX + 'default']['mask_attn_sink']['ppl']:.1f} (as many random keys:\n  "
        f"{masks[PREFIX + 'default']['mask_attn_random']['ppl']:.3f}); masking ca_softmax's, attn_bias' and "
        f"sigmoid's gives {sink('ca_softmax')}, {sink('attn_bias')} and {sink('sigmoid')}\n  "
        "(`results/consequences/gpt2_emergence_bos/` at the repository root). BOS's own "
        f"block-{at['layer']} entry at default's final\n  checkpoint is |h| = {abs(at['value']):.1f} against a mean "
        f"median of {at['median']:.2f}, about {abs(at['value']) / at['median']:.0f} x (`at_checkpoint`, measured "
        "while the\n  checkpoint existed): no massive activation.",
        "- **The BOS sink acts as a context-aware scale** (`consequences.py --scale-test`, "
        f"`gpt2_emergence_bos/scale_test/`):\n  masking it costs +{scale['mask']['nll_change']:.1f} nats; masking it "
        f"and scaling each head's output by the measured 1 - a_s leaves +{scale['oracle_scale']['nll_change']:.2f}, a\n"
        f"  per-token scale of ca_softmax's form fitted per head +{scale['fitted_scale']['nll_change']:.2f}, one "
        f"constant scale per head +{scale['const_scale']['nll_change']:.2f}.",
        "- **Compression, no-position design, one run each** (`gpt2_emergence_none/`): W8A8 takes "
        f"{w8a8}; 50% magnitude pruning gives {pruned}.", ""]


def undecided(t: dict) -> list[str]:
    judged = verdicts(t)
    seeds = [short(r["run"]) for r in t["rows"] if r["run"].endswith("-s2")]
    return [
        "## What the study could not decide",
        "Whether any run holds a systematic outlier: the ratio at a fixed position and the per-head sinks were never\n"
        "logged, and the checkpoints that give them are gone, so the "
        f"{len(judged.get('not re-judged', []))} open runs can be decided only by retraining (runs\ntrained now log "
        "the per-position verdict, `outlier_stats.compact_report`). Whether any peak is load-bearing: the\ntest "
        "needs the checkpoints and was not run. Differences between variants: one seed per configuration, except "
        f"the\n{len(seeds)} `-s2` runs ({listed([f'`{s}`' for s in seeds])}). The factorial study "
        "(`../factorial/README.md`) is the registered test: its criteria were written\nbefore its runs, which log the "
        "per-position verdict and keep their final weights.", ""]


def files(root: Path) -> list[str]:
    suites = sorted((root / FOLDER / "figures").glob("out-emergence-*/existence_activation_outliers_layer.json"))
    rules = {load(root, path.relative_to(root))["rule"] for path in suites}
    (rule,) = rules  # one rule for every suite, or the sentence below would need one per folder
    return [
        "## Files",
        "`table.md`, `table.json` (per run: settings, logged ratios, positions, writers and most attended keys, the "
        "verdict\nwith its open stretches, the logged-peak streaks, val losses; under `at_checkpoint`, labelled, the "
        "final checkpoints'\nnumbers measured under an earlier rule), `trajectories.png`, `convergence.png`, "
        f"`runs/<name>/` (each run's logs),\n`figures/out-emergence-*/index.md` (the LLM figure suite on {len(suites)} "
        f"checkpoints with the figure rule, {rule}, not the criterion above), and "
        "at the repository root `results/consequences/gpt2_emergence_bos/` and\n`gpt2_emergence_none/` (each "
        "`consequences.md` starts with its command).", ""]


REGENERATE = """\
## Regenerate
From `gpt-2/`: `run_gpu.sh` trains the runs a plan lists (`plan_first.sh`, `plan_nobos.sh`) at once on one GPU;
the table as committed is the command in `table.json` (`emergence.py --from_logs=True` over the runs' logs).
```
USE_MPS=1 BUDGET=450 bash results/emergence/run_gpu.sh      # plan_first.sh; then again with RESUME=1 BUDGET=165
USE_MPS=1 BUDGET=480 PLAN=results/emergence/plan_nobos.sh KEEP_OPTIMIZER=nb-default-rope bash results/emergence/run_gpu.sh
# ... then again with RESUME=1 BUDGET=210
python train.py config/train_emergence.py --device=cpu --dataset=backcopy_rf65 --pos_emb=none \\
    --attention=ca_softmax --max_iters=100000 --out_dir=out-emergence-rf-ca_softmax-none
# likewise --attention=attn_bias and --attention=sigmoid; SGD: --optimizer=sgd --learning_rate=0.1 --min_lr=0.1
# --weight_decay=0.0 (out-emergence-rf-default-none-sgd); --max_iters=130000 with --seed=1338 (-s2) or --n_layer=6 (-l6)
```"""


def wrapped(paragraph: str) -> str:
    """A paragraph or list item filled to the page's width (headings and blank lines as they are)."""
    if not paragraph or paragraph.startswith("#"):
        return paragraph
    return fill(" ".join(paragraph.split()), rest="  " if paragraph.startswith("- ") else "")


def page(root: Path, rendered: str) -> str:
    t = table(root)
    parts = intro(t) + what_was_run(root, t) + how_judged(t) + logs_show(root, t) + undecided(t) + files(root)
    lines = ["# Emergence runs: small GPTs trained long on fresh Bigram-Backcopy data", "", rendered, ""]
    return "\n".join(lines + [wrapped(p) for p in parts] + [REGENERATE]) + "\n"
