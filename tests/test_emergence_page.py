"""gpt-2/results/emergence/README.md, a hand-written page, quotes the committed results word for word: each claim
below is text rendered from a committed file (the emergence table, the runs' logs, the consequences runs, the
settings of gpt-2/) that must appear on the page, and every other number of the page lies in code, a claim or a
static entry (lib.templates.STATIC, and the page's own below). Text is matched with its whitespace collapsed."""
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

from lib import templates

ROOT = Path(__file__).resolve().parents[1]
PAGE = "gpt-2/results/emergence/README.md"
WORDS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split()))
STATIC = templates.STATIC + [
    (PAGE, r"queries 1\.\.T-1", "definition: the queries with a choice of key"),
]


def load(path):
    return json.loads((ROOT / path).read_text())


def consequences(folder):
    return load(f"results/consequences/{folder}/consequences.json")


def scale_test_of(folder, name):
    """One model's result in a --scale-test run of consequences.py."""
    return next(r for r in consequences(f"{folder}/scale_test")["results"] if r["name"] == name)


def config(name):
    """The settings of a gpt-2/config file (plain assignments)."""
    values = {}
    exec((ROOT / "gpt-2" / "config" / name).read_text(), {}, values)
    return values


def gpt2_module(path, name):
    """A module of gpt-2/ (its defaults are what the README states), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "gpt-2" / path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "gpt-2"))
    spec.loader.exec_module(module)
    return module


def emergence_facts():
    """What the READMEs quote of the emergence study (gpt-2/results/emergence/table.json, judged from the runs' logs):
    how many runs the logs rule out or leave open, the streaks of consecutive checkpoints where the logged peak passes
    every check a log can make, and the BOS run's own entry over the median."""
    table = load("gpt-2/results/emergence/table.json")
    rows = {r["run"]: r for r in table["rows"]}
    verdicts = [r["over_run"]["verdict"] for r in rows.values()]
    persistence = table["criteria"]["persistence"]

    def streaks(run):
        return [s for s in rows[run]["over_run"]["logged_peak_streaks"] if s["checkpoints"] >= persistence]
    bos = rows["out-emergence-default"]["at_checkpoint"]["layers"][0]
    return dict(rows=rows, criteria=table["criteria"], no=verdicts.count("no"), open=verdicts.count("not re-judged"),
                nobos=[r["iter"] for r in rows.values() if r["design"] == "nobos"],
                total=len(verdicts), streaks=streaks, bos_ratio=abs(bos["value"]) / bos["median"],
                persistence=persistence)


def steps(streak) -> str:
    return f"{streak['first'] // 1000}k-{streak['last'] // 1000}k"


def emergence_stats(run):
    """A run's logged statistics, one dict per logged checkpoint."""
    path = ROOT / "gpt-2/results/emergence/runs" / run / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def emergence_readme():
    """The emergence page: what was run (table.json's rows, the setting), how the logs judge it, what they show."""
    e = emergence_facts()
    rows, criteria = e["rows"], e["criteria"]
    fresh, defaults = config("train_emergence.py"), gpt2_module("train.py", "gpt2_train").DEFAULTS
    stats = gpt2_module("outlier_stats.py", "gpt2_outlier_stats")
    count = lambda key, value: sum(r[key] == value for r in rows.values())  # noqa: E731
    adamw = [r for r in rows.values() if r["optimizer"] == "adamw"]
    sgd = [r for r in rows.values() if r["optimizer"] == "sgd"]
    wide = [r for r in rows.values() if r["width"] != fresh["n_embd"]]
    decays = sorted({r["weight_decay"] for r in adamw} - {fresh["weight_decay"]})
    (lr,) = {r["lr"] for r in adamw} - {fresh["learning_rate"]}
    assert {r["lr"] for r in sgd} == {0.1} and {r["weight_decay"] for r in sgd} == {0.0}  # the SGD runs' settings
    (width,), (heads,) = {r["width"] for r in wide}, {r["heads"] for r in wide}
    iters = [r["iter"] for r in rows.values()]
    opened = [name.removeprefix("out-emergence-") for name, r in rows.items() if r["over_run"]["verdict"] != "no"]
    candidates = [name for name in rows if e["streaks"](name)]
    none, = e["streaks"]("out-emergence-rf-default-none")
    seed = [s for s in e["streaks"]("out-emergence-rf-default-none-s2") if s["layer"] == none["layer"]]
    six = e["streaks"]("out-emergence-rf-default-none-l6")
    rope, = e["streaks"]("out-emergence-rf-default-rope")
    nobos = [name for name, r in rows.items() if r["design"] == "nobos"]
    nobos_share = max(x["top_key_share"] for name in nobos for line in emergence_stats(name.removeprefix("out-emergence-"))
                      for x in line["layers"])
    bos = {r["name"]: r for r in consequences("gpt2_emergence_bos")["results"]}
    masks = lambda r: r["interventions"]["attention_sinks"]  # noqa: E731
    at = rows["out-emergence-default"]["at_checkpoint"]["layers"][0]
    modes = scale_test_of("gpt2_emergence_bos", "out-emergence-default")["scale_test"]["modes"]
    none_cons = {r["name"]: r for r in consequences("gpt2_emergence_none")["results"]}
    w8a8 = ", ".join(f"{label} from {none_cons[name]['baseline']['ppl']:.3f} to "
                     f"{none_cons[name]['compression']['w8a8']['ppl']:.3f}" for label, name in
                     (("default", "out-emergence-rf-default-none"), ("ca_softmax", "ca_softmax"),
                      ("attn_bias", "attn_bias")))
    return [f"{e['total']} small GPTs were trained",
            f"{fresh['n_layer']} layers x {fresh['n_embd']} wide, {fresh['n_head']} heads, block {fresh['block_size']}, "
            f"{fresh['batch_size']} sequences per step",
            f"AdamW at a constant lr {fresh['learning_rate']:.0e} after {fresh['warmup_iters']} warmup\nsteps, weight "
            f"decay {fresh['weight_decay']:g}, fp32. Every {fresh['stats_interval']} steps".replace("e-0", "e-"),
            f"on the first {defaults['stats_seqs']}\nvalidation sequences",
            f"{count('design', 'bos')} runs)", f"position embedding; {count('design', 'random_first')} runs)",
            f"rotary or no position embedding; {count('design', 'nobos')} runs)",
            f"({count('attention', 'default')} default, {count('attention', 'ca_softmax')} ca_softmax, "
            f"{count('attention', 'attn_bias')} attn_bias, {count('attention', 'sigmoid')} sigmoid runs), weight decay "
            + " or ".join(f"{d:g}" for d in decays) + f", lr {lr:.0e}, width {width} with {heads} heads, SGD (momentum "
            f"{defaults['momentum']:g}, lr 0.1, no weight decay)".replace("e-0", "e-"),
            f"{rows['out-emergence-rf-default-none-l6']['n_layer']} layers (`-l6`). The runs stopped at {min(iters):,}-"
            f"{max(iters):,} steps",
            f"for p's top channel c is\n>= {criteria['ratio']:g}", f"(the embedding holds < {100 * criteria['embed_share']:g}% "
            "of it)", f"puts > {criteria['sink_share']:g} of the\nattention",
            f"at {criteria['persistence']} consecutive logged checkpoints",
            f"costs at least {100 * (math.exp(criteria['load_bearing_nats']) - 1):.0f}% perplexity more",
            f"(mean of {criteria['control_draws']} draws)",
            f"ratio is under {stats.ratio_floor(defaults['stats_seqs']):.1f} (`outlier_stats.ratio_floor("
            f"{defaults['stats_seqs']})`)", f"top-key\nshare is <= {criteria['sink_share']:g} has no head above "
            f"{criteria['sink_share']:g}", f"leave no block open at {criteria['persistence']} consecutive",
            f"The logs rule out {e['no']} of the {e['total']} runs and leave {e['open']} not re-judged: "
            + ", ".join(f"`{n}`" for n in opened[:-1]) + f" and `{opened[-1]}`",
            f"In {WORDS[len(candidates)]} of them the logged peak passes every check a log can make (position-free ratio "
            f">= {criteria['ratio']:g} on a position", f"share on it > {criteria['sink_share']:g}) at "
            f"{criteria['persistence']} or more consecutive checkpoints",
            f"`rf-default-none`, block {none['layer']} on position {none['position']} at {steps(none)} steps; its second "
            f"seed, block {seed[0]['layer']} on position {seed[0]['position']} at " + " and ".join(steps(s) for s in seed)
            + f"; its {rows['out-emergence-rf-default-none-l6']['n_layer']}-layer model, block {six[0]['layer']} on "
            f"position {six[0]['position']} at " + " and ".join(steps(s) for s in six) + f"; `rf-default-rope`, block "
            f"{rope['layer']} on F at {steps(rope)}",
            f"(the {len(nobos)} `nobos` runs) no layer's most attended key takes more\nthan {nobos_share:.2f}",
            f"raises perplexity from {bos['out-emergence-default']['baseline']['ppl']:.3f} to "
            f"{masks(bos['out-emergence-default'])['mask_attn_sink']['ppl']:.1f} (as many random keys:\n"
            f"{masks(bos['out-emergence-default'])['mask_attn_random']['ppl']:.3f}); masking ca_softmax's, attn_bias' and "
            f"sigmoid's gives " + ", ".join(f"{masks(bos[v])['mask_attn_sink']['ppl']:.3f}" for v in ("ca_softmax",))
            + f", {masks(bos['attn_bias'])['mask_attn_sink']['ppl']:.3f} and "
            f"{masks(bos['sigmoid'])['mask_attn_sink']['ppl']:.3f}",
            f"BOS's own block-{at['layer']} entry at default's final\ncheckpoint is "
            f"|h| = {abs(at['value']):.1f} against a mean median of {at['median']:.2f}, about "
            f"{abs(at['value']) / at['median']:.0f} x",
            f"masking it costs +{modes['mask']['nll_change']:.1f} nats; masking it and scaling each head's output by the "
            f"measured 1 - a_s leaves +{modes['oracle_scale']['nll_change']:.2f}, a per-token scale of ca_softmax's form "
            f"fitted per head +{modes['fitted_scale']['nll_change']:.2f}, one constant scale per head "
            f"+{modes['const_scale']['nll_change']:.2f}",
            f"W8A8 takes {w8a8}; 50% magnitude pruning gives " + ", ".join(
                f"{none_cons[name]['compression']['prune50']['ppl']:.3f}" for name in
                ("out-emergence-rf-default-none", "ca_softmax")) + f" and "
            f"{none_cons['attn_bias']['compression']['prune50']['ppl']:.3f}",
            f"so the {e['open']} open runs can be decided only by retraining",
            f"with the figure rule at {criteria['ratio']:g} x the median"]


def flat_page() -> str:
    """The page's text with its whitespace collapsed (lib.templates.flat)."""
    return templates.flat((ROOT / PAGE).read_text())


def test_the_emergence_page_quotes_the_committed_results():
    text = flat_page()
    for claim in emergence_readme():
        assert " ".join(claim.split()) in text, f"{PAGE} should say {claim!r}"


def test_every_number_of_the_emergence_page_is_quoted_or_listed_as_static():
    left = templates.uncovered((ROOT / PAGE).read_text(), PAGE, STATIC, emergence_readme())
    assert not left, f"{len(left)} numbers of {PAGE} neither come from a claim nor are listed as static:\n" + \
        "\n".join(left)


def test_the_emergence_page_static_entries_still_match():
    stale = templates.stale({PAGE: (ROOT / PAGE).read_text()}, [entry for entry in STATIC if entry[0] == PAGE])
    assert not stale, f"static entries whose text is gone from {PAGE} (remove them): {stale}"


def test_the_emergence_page_states_no_verdict_its_table_lacks():
    """A run the table leaves open is not called reproduced (or lost) anywhere on the emergence page."""
    verdicts = {r["over_run"]["verdict"] for r in emergence_facts()["rows"].values()}
    text = flat_page()
    if "yes" not in verdicts:
        stated = re.findall(r"\*\*reproduced by the criterion[^*]*\*\*", text)
        assert not stated, stated
