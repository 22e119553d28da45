"""Every number in the READMEs and the docs/ pages comes from a committed result or is listed as static, with its
reason.

A claim is a piece of README text rendered here from a committed result file (a function in CLAIMS returns them);
it must appear in its README word for word, so a regenerated result names the sentence to update. Every other
number in a README must lie inside a STATIC entry: a regex for text whose number is history (a run whose result
is not committed), a constant (a paper's, a rule's, a command-line default) or a name. Numbers inside code spans
and code blocks are commands, paths and identifiers, not results. Adding a README number is one line here: a
claim, or a STATIC entry with its reason. Text is matched with its whitespace collapsed, never by line number.
"""
import importlib
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest

from lib import gpt2_pages

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "docs/api.md", "docs/figures.md", "docs/findings.md", "docs/consequences.md", "docs/models.md",
           "gpt-2/README.md", "bench/README.md")  # the pages lib/pages.py renders are checked whole by tests/test_pages.py
# a number: digits with optional thousands commas, decimals and exponent (3e-2), not part of a name (fp32, gpt-2,
# llama2_7b, R^2)
NUMBER = re.compile(r"(?<![\w^.])(?<![A-Za-z]-)\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?")
WORDS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split()))


# --- the committed results, and numbers as the READMEs write them -----------------------------------------------------

def load(path):
    return json.loads((ROOT / path).read_text())


def consequences(folder):
    return load(f"results/consequences/{folder}/consequences.json")


def scale_test_of(folder, name):
    """One model's result in a --scale-test run of consequences.py."""
    return next(r for r in consequences(f"{folder}/scale_test")["results"] if r["name"] == name)


def variant_rows(folder):
    """compare.py's table.json rows of a gpt-2/results folder, by variant, their layers 0-based (lib/gpt2_pages.py)."""
    return gpt2_pages.variant_rows(ROOT, folder)


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


def bench_module(name):
    sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


def ppl(x):
    """Perplexities as the README writes them: one decimal, or mantissa and exponent when huge (5.3e10)."""
    if x < 1e4:
        return f"{x:.1f}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def percent_change(after, before):
    return 100 * (after / before - 1)


def backcopy_sink_changes():
    """Perplexity change (%) of each gpt-2 variant when its attention sinks, or as many random keys, are masked."""
    change = {}
    for r in consequences("gpt2_backcopy")["results"]:
        a = r["interventions"]["attention_sinks"]
        change[r["name"]] = {k: percent_change(v["ppl"], r["baseline"]["ppl"]) for k, v in a.items()}
    return change


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


def gemma_figures():
    """The default model on the Summer prompt: the first outlier, the dominant one, the sink of the layer after."""
    layer = load("results/figures/gemma3_270m/existence_activation_outliers_layer.json")
    attention = load("results/figures/gemma3_270m/existence_attention_outliers.json")
    (token, channel, value), = layer["outlier_entries"]
    d = layer["dominant_outlier"]
    assert d["token"] == token and attention["outlier_keys"] == [token]  # the sentence says "it" of one token
    return [f"the `{layer['tokens'][token]}` gets {value:,.0f} in channel {channel} at layer {layer['layer']} "
            f"({layer['max'] / layer['median']:,.0f} x the median) and, from layer {d['flagged_layers'][0]} on, a massive "
            f"activation in channel {d['channel']} that reaches {d['abs']:,.0f} at layer {d['layer']} "
            f"({d['over_median']:,.0f} x the median); it is the attention sink of layer {attention['layer']}"]


def attention_picture():
    """The sentence above the default model's attention figure: the sink of the layer after the outliers."""
    attention = load("results/figures/gemma3_270m/existence_attention_outliers.json")
    token, = attention["outlier_keys"]
    return [f"the `{attention['tokens'][token]}` (magenta) is\nthe attention sink: it holds {attention['first_token_share']:.2f} of the attention, head-averaged over all\nqueries"]


def calibration_picture():
    """The sentence above the per-layer figure: the channels and the tokens of the calibration windows' outliers."""
    layer = load("results/figures/gemma3_270m/pos_activation_outliers_layer.json")
    valley = load("results/figures/gemma3_270m/pos_compression.json")
    channels = {c for r in layer["layers"] if r["layer"] in layer["outlier_layers"] for c in r["outlier_channels"]}
    c = layer["categories"]
    largest = {w["token"] for w in valley["windows"]}
    assert {w["category"] for w in valley["windows"]} == {"initial_token"} and len(largest) == 1
    return [f"the channels that hold them ({WORDS[len(channels)]} channels carry them all)",
            f"(of the {c['count']} tokens the rule flags, {c['strong_delimiter']:.0%} are delimiters, "
            f"{c['weak_semantic']:.0%} weak-semantic tokens and {c['initial_token']:.0%} the first token; the largest "
            f"outlier of every window sits on the first token, the `{largest.pop()}`)"]


def bos_headroom():
    """The float range paragraph: the default model's largest |h| on the prompt against float16's."""
    room = load("results/figures/gemma3_270m/existence_activation_outliers_layer.json")["headroom"]
    assert not room["fits"]["float16"] and room["fits"]["bfloat16"]
    return [f"On Gemma 3 270M the `<bos>` reaches {room['largest_abs']:,.0f} in channel {room['channel']} at layer "
            f"{room['layer']} on the Summer prompt, {room['share_of_largest_finite']['float16']:.2f} x float16's largest "
            "finite value, so `--dtype float16` ends in that error"]


def figures_time():
    took = re.search(r"the last run took (\d+) s", (ROOT / "results/figures/gemma3_270m/index.md").read_text())
    return [f"took {took.group(1)} s after the model load"]


def gemma_consequences():
    r = consequences("gemma3_270m")["results"][0]
    c = {k: v["ppl"] for k, v in r["compression"].items()}
    row = " | ".join(ppl(v) for v in [r["baseline"]["ppl"], c["w8_tensor"], c["w8_channel"], c["w4_tensor"],
                                       c["w4_channel"], c["w8a8"], c["prune50"]])
    i = r["interventions"]
    d = next(s for s in i["sites"] if s["site"] == "dominant")
    a = i["attention_sinks"]
    return [f"| perplexity | {row} |",
            f"Where channel {i['dominant_channel']}'s massive activations appear (layer {d['layer']}): zeroing them "
            f"raises perplexity to {ppl(d['zero']['ppl'])}, setting\nthem to their calibration mean leaves it at "
            f"{ppl(d['mean']['ppl'])}, masking them as attention keys gives {ppl(d['mask_sink']['ppl'])} against "
            f"{ppl(d['mask_random']['ppl'])}",
            f"gives {ppl(a['mask_attn_sink']['ppl'])} against {ppl(a['mask_attn_random']['ppl'])} for random keys",
            f"changes nothing ({ppl(d['zero_random']['ppl'])})"]


def gemma_windows():
    """The CPU run's windows on the default model, where the README states them."""
    data = consequences("gemma3_270m")["results"][0]
    scale, bos = scale_test_of("gemma3_270m", "gemma3_270m"), scale_test_of("gpt2_emergence_bos", "out-emergence-default")
    sinks = data["interventions"]["attention_sinks"]["mask_attn_sink"]["masked_keys_per_window"]
    return [f"On Gemma 3 270M (CPU: {data['data']['windows']} windows x\n{data['data']['seqlen']} tokens",
            f"({sinks:.1f} keys per window on average)",
            f"| Gemma 3 270M ({scale['data']['windows']} x {scale['data']['seqlen']}) |",
            f"`gpt-2/results/emergence/`, {bos['data']['windows']} x {bos['data']['seqlen']})"]


def backcopy_sinks():
    """Masking the attention sinks of the gpt-2 variants: the paper's softmax variants, then ca_softmax, sigmoid."""
    change = backcopy_sink_changes()
    softmax = [change[v] for v in ("default", "vbias", "cabias", "attn_bias")]
    sink = [c["mask_attn_sink"] for c in softmax]
    rand = [c["mask_attn_random"] for c in softmax]
    return [f"+{min(sink):.0f}% to +{max(sink):.0f}% perplexity (random keys: +{min(rand):.0f}% to +{max(rand):.0f}%) "
            f"and ca_softmax +{change['ca_softmax']['mask_attn_sink']:.0f}%, sigmoid "
            f"{change['sigmoid']['mask_attn_sink']:.0f}%"]


def scale_tests():
    def row(result, fmt):
        modes = result["scale_test"]["modes"]
        return " | ".join(fmt(v) for v in [result["baseline"]["ppl"]] + [modes[k]["ppl"] for k in
                                                                        ("mask", "oracle_scale", "const_scale", "fitted_scale")])
    bos = scale_test_of("gpt2_emergence_bos", "out-emergence-default")
    modes = bos["scale_test"]["modes"]
    undone = 1 - modes["oracle_scale"]["nll_change"] / modes["mask"]["nll_change"]
    return [f"| {row(scale_test_of('gemma3_270m', 'gemma3_270m'), ppl)} |", f"| {row(bos, lambda x: f'{x:.4g}')} |",
            f"undoes {100 * undone:.0f}% of the damage",
            f"(+{modes['oracle_scale']['nll_change']:.2f} nats left of +{modes['mask']['nll_change']:.1f})"]


def scale_test_reading():
    """The bullets under the scale-test table: the small GPT's BOS sink, then Gemma 3 270M's."""
    gpt = scale_test_of("gpt2_emergence_bos", "out-emergence-default")["scale_test"]
    gemma_run = scale_test_of("gemma3_270m", "gemma3_270m")
    gemma, windows = gemma_run["scale_test"], gemma_run["data"]["windows"]
    main = max(gpt["layers"].values(), key=lambda layer: layer["a_s_mean"])  # where the sink holds most attention
    values = [gpt["layers"][layer]["sink_value_ratio_median"] for layer in ("1", "2")]
    modes = gemma["modes"]
    shares = [layer["a_s_mean"] for layer in gemma["layers"].values()]
    dropped, masked = modes["drop_sink_value"], modes["mask"]
    # a difference no larger than the larger of the two paired standard errors is not read as an effect
    within = abs(dropped["nll_change"] - masked["nll_change"]) <= max(dropped["nll_change_stderr"],
                                                                      masked["nll_change_stderr"])
    more = dropped["nll_change"] > masked["nll_change"]
    fits = [layer["fit_r2"] for layer in gemma["layers"].values()]
    gemma_values = [layer["sink_value_ratio_median"] for layer in gemma["layers"].values()]
    scales = {k: modes[k] for k in ("const_scale", "fitted_scale")}
    assert all(m["nll_change"] < masked["nll_change"] for m in scales.values())  # "recover part of the damage"

    def nats(entry):
        return f"+{entry['nll_change']:.3f} ± {entry['nll_change_stderr']:.3f}"
    return [f"(+{gpt['modes']['fitted_scale']['nll_change']:.2f}; held-out R^2 {main['fit_r2']:.2f} in\nthe sink's "
            f"main layer), and one scale per head does much worse (+{gpt['modes']['const_scale']['nll_change']:.2f})",
            f"The sinks' values are small ({min(values):.2f}-{max(values):.2f}\nof the median value norm in layers 1-2)",
            f"the sinks hold {100 * min(shares):.0f}-{100 * max(shares):.0f}% of the attention on average",
            f"dropping their value term costs {'as much as' if within else 'more than' if more else 'less than'} "
            f"renormalising ({nats(dropped)} against {nats(masked)} nats over {windows} windows",
            f"(their norm is {min(gemma_values):.2f}-{max(gemma_values):.2f} of the median value norm)",
            f"One scale per head or a fitted per-token scale recovers part of the damage ({nats(scales['const_scale'])} and "
            f"{nats(scales['fitted_scale'])} nats)",
            f"predicts `1 - a_s` poorly (held-out R^2 {min(fits):.2f} to {max(fits):.2f})"]


def emergence():
    """The README's gpt-2 section: the fixed corpus's peaks and the emergence runs judged from their logs."""
    e = emergence_facts()
    return [f"outliers of\ntop-1/median >= {e['criteria']['ratio']:g} appear only at a high learning rate",
            f"which rule out {e['no']} of {e['total']} runs and cannot decide the other {e['open']}"]


def emergence_figures():
    """The figure suite on the emergence run with the systematic outlier."""
    folder = "gpt-2/results/emergence/figures/out-emergence-rf-default-none"
    born, spread, gone = (load(f"{folder}/{name}.json") for name in
                          ("lifecycle_emergence", "lifecycle_spread", "lifecycle_disappearance"))
    heads = "both heads" if len(spread["head_outlier_ratio"]) == 2 and min(spread["head_outlier_ratio"]) > 0.5 \
        else "some heads"
    values = spread["per_token"][f"v head {spread['head']} (L2)"]
    smallest = "the smallest" if min(range(len(values)), key=values.__getitem__) == born["token"] else "not the smallest"
    steps = gone["values_at_layer"]
    by = "MLP" if abs(steps["MLP adds"]) > 10 * abs(steps["attention adds"]) else "attention"
    return [f"it is written in block {born['layer']} by MLP unit {born['neuron']} on position {born['token']}, read by "
            f"{heads} of block {spread['layer']} (position {born['token']}'s value vector is {smallest} of the "
            f"window), and cancelled by block {gone['layer']}'s {by}"]


def compression_valley():
    from lib import cli
    act_n, act_len = cli.CPU_DEFAULTS["activations"]  # the valley's windows: the CPU's calibration default
    v, no_bos = (load(f"results/figures/{f}/pos_compression.json") for f in ("gemma3_270m", "no_bos/gemma3_270m"))
    rows, found = v["layers"], v["windows"]
    tokens = {(w["token"], w["channel"], w["layer"]) for w in found}
    assert {w["position"] for w in found} == {0} and len(tokens) == 1  # the sentence names one token
    (token, channel, at), = tokens
    values = sorted(w["value"] for w in found)
    first = [r["norm_ratio_first"] for r in rows]
    peak = max(rows[1:], key=lambda r: r["norm_ratio_first"])
    outlier_layers = v["outlier_layers"]
    middle = [r["norm_ratio_first"] for r in rows if 1 < r["layer"] <= outlier_layers[-1]]
    top_rate = max(r["sink_rate_first"] for r in rows)
    raw = [r["entropy"] for r in rows]
    valley = v["valley"]["entropy"]
    lowest = v["valley"]["entropy_centred"]["lowest_layer"]
    mid = rows[lowest - 3:lowest + 1]  # the centred entropy's lowest layer and the three before it
    same = " in every window" if len({w["value"] for w in found}) == 1 else ""
    return [f"{act_n} windows x {act_len} tokens) the outlier",
            f"the outlier token of every window is its `{token}` (channel {channel}, {values[0]:,.0f}{same} at layer {at}",
            f"Its norm is {first[0]:.1f} x the median at layer 1 and {min(middle):.1f}-{max(middle):.1f} x in layers "
            f"2-{outlier_layers[-1]} (largest at layer {peak['layer']})",
            f"reaches {top_rate:.2f} at layers " + ", ".join(str(r["layer"]) for r in rows if r["sink_rate_first"] == top_rate),
            f"({min(raw):.3f} to {max(raw):.3f})",
            f"(layers {', '.join(map(str, valley['layers']))}; depth {valley['depth']:.2f})",
            "falls to " + ", ".join(f"{r['entropy_centred']:.3f}" for r in mid) + f" at layers {mid[0]['layer']}-"
            f"{mid[-1]['layer']}",
            "restores it (" + ", ".join(f"{r['entropy_centred_without_outliers']:.3f}" for r in mid) + ")",
            "the first token's sink\nrate at 0 at every layer"
            if not any(r["sink_rate_first"] for r in no_bos["layers"]) and {w["category"] for w in no_bos["windows"]}
            == {"strong_delimiter"} and {w["token"] for w in no_bos["windows"]} == {"'"} else "without the BOS: rewrite"]


def relocation():
    """The relocation paragraph, from the default model's lifecycle_relocation.json."""
    d = load("results/figures/gemma3_270m/lifecycle_relocation.json")
    w, prompt, after = d["windows"], d["prompt_before"], d["prompt_after"]
    every = w["conditions"]["every_layer"]
    outliers, control = every["outliers"], every["control"]
    base = w["baseline"]["where"]["massive"]
    n = w["windows"]
    others = [len(k) - 1 for k in w["outlier_tokens"]]
    assert all(k[0] == 0 for k in w["outlier_tokens"]) and list(w["conditions"]) == ["every_layer"]
    assert w["first_sink_layer"] == 0 and prompt["massive_token"] == after["massive_token"] == 0

    def nats(e):
        return f"{e['nll_change']:+.3f} ± {e['nll_change_stderr']:.3f}"

    def moved(e, kind="massive"):
        return f"{round(e['moved'][kind + '_moved'] * n)} of {n}"
    return [f"{n} windows x\n{w['seqlen']} tokens", f"its `<bos>` and {min(others)}-{max(others)} later tokens",
            f"flags a sink from layer {w['first_sink_layer']} on",
            f"leaves the massive activation on the `<bos>` in {n - round(outliers['moved']['massive_moved'] * n)} of {n} "
            f"windows", f"(median |h| {base['value_median']:,.0f} before and "
            f"{outliers['where']['massive']['value_median']:,.0f} after, at layer {base['largest_layer']}",
            f"moves the sink in {moved(outliers, 'sink')} windows", f"costs {nats(outliers)} nats against {nats(control)} "
            "for as many random tokens",
            f"keeps its massive activation (|h| {prompt['massive_value']:,.0f} at layer {prompt['massive_layer']}) when it is "
            f"hidden, and the sink moves to {after['sink_token_text']!r} ({after['sink_token']})"]


def cross_model_data():
    """Each offline model's data for lib.cross_model, from the committed figure and consequences JSONs, and its
    sentence, as `reproduce.py --summary` renders them into summary.md/.json."""
    from lib import cross_model as cm
    summary = load("results/figures/summary.json")
    data = [cm.model_data(ROOT / "results/figures" / r["model"], r, ROOT / "results/consequences")
            for r in summary["models"]]
    findings = [cm.finding(d) for d in data]
    assert findings == [r["finding"] for r in summary["models"]], \
        "results/figures/summary.json is stale: python reproduce.py --summary-only --savedir results/figures"
    assert {r["model"] for r in summary["models"]} == {"gemma3_270m", "smollm2_135m"}
    return data, findings


def cross_model():
    """The README's sentence per model under the cross-model picture."""
    return cross_model_data()[1]


def pattern_table():
    """docs/findings.md: each model's comparison with the paper's pattern and its criteria, by lib.cross_model."""
    from lib import cross_model as cm
    return cm.comparison_table(cross_model_data()[0]) + [cm.CRITERIA]


def bos_table():
    """What the missing BOS changes on the default model: the table lib/bos_effect.py renders into summary.md and
    summary.json, from the default consequences run's `bos_removed` and the figures with and without the BOS."""
    from lib import bos_effect
    row = next(r for r in load("results/figures/summary.json")["models"] if r["model"] == "gemma3_270m")
    found = bos_effect.table(consequences("gemma3_270m")["results"][0], ROOT / "results/figures/gemma3_270m")
    assert json.loads(json.dumps(found)) == row["bos_effect"], \
        "results/figures/summary.json is stale: python reproduce.py --summary-only --savedir results/figures"
    return bos_effect.markdown(row["title"], found)


def bos_reading():
    """What the README reads off the table: where the massive activation and the sink go without the <bos>, the
    perplexity over the same targets, and the relocation experiment with and without the <bos>."""
    r = consequences("gemma3_270m")["results"][0]
    removed, base = r["bos_removed"], r["baseline"]
    where, before = removed["where"], base["where"]
    texts = removed["token_text"]["without"]
    delimiters = {"'": "an apostrophe", ".": "a full stop", ",": "a comma"}
    massive = sorted({delimiters[t] for t in texts["massive"]})  # a KeyError names a token the sentence must learn
    sink, = {delimiters[t] for t in texts["sink"]}
    assert where["massive"]["channel"] == before["massive"]["channel"]
    assert where["massive"]["largest_layer"] == before["massive"]["largest_layer"]
    relocated = load("results/figures/gemma3_270m/lifecycle_relocation.json")["windows"]["conditions"]["every_layer"]
    no_bos = load("results/figures/no_bos/gemma3_270m/lifecycle_relocation.json")["windows"]
    hidden = relocated["outliers"]
    successor = no_bos["conditions"]["every_layer"]["outliers"]["moved"]["massive_moved"]
    peak = {k: max(w["per_layer"], key=lambda row: row["sink_share_median"]) for k, w in (("with", before),
                                                                                        ("without", where))}
    change = (removed["nll_change"], removed["nll_change_stderr"])
    return [f"on {' or '.join(massive)} in every window", f"and its sink on {sink} (at the sink's first layer)",
            f"its largest share of the attention of queries 1..T-1 is {peak['without']['sink_share_median']:.2f} against "
            f"{peak['with']['sink_share_median']:.2f}",
            f"perplexity over the same targets rises from {ppl(base['ppl'])} to {ppl(removed['ppl'])} "
            f"({change[0]:+.3f} ± {change[1]:.3f} nats)",
            f"and costs {hidden['nll_change']:+.3f} ± {hidden['nll_change_stderr']:.3f} nats",
            f"moves the massive activation to a successor in {round(successor * no_bos['windows'])} of {no_bos['windows']} "
            "windows"]


def capture_bench():
    claims = []
    for name in ("capture.json", "capture_gemma3-270m.json", "capture_llama-30x576.json",
                 "capture_llama2-7b-2layers.json"):
        b = load(f"bench/results/{name}")
        t, m = b["time"], b["memory"]
        mib = {k: v / 2**20 for k, v in m["peak_bytes"].items()}
        claims += [f"| {t['ratio']:.2f} ({t['capture_s']:.2f} s vs {t['plain_s']:.2f} s; median of pairs "
                   f"{t['ratio_median_of_pairs']:.2f}) |",
                   f"| {m['stats_vs_plain_eager']:.2f} ({mib['stats']:.0f} vs {mib['plain']:.0f} MiB) |",
                   f"| {m['reference_vs_plain_eager']:.1f} ({mib['reference']:.0f} MiB) |"]
    return claims


def capture_bench_load():
    """The machine's load over the capture benches, from their provenance."""
    shares = [load(f"bench/results/{name}")["provenance"]["machine_load"]["others_cpu_share"]
              for name in ("capture.json", "capture_gemma3-270m.json", "capture_llama-30x576.json",
                           "capture_llama2-7b-2layers.json")]
    return [f"(other processes used {100 * min(shares):.1f}-{100 * max(shares):.1f}% of the CPUs over each run"]


def capture_bench_setup():
    """What the capture bench ran: tokens, repeats, processes, and the random-init shapes."""
    bench_capture = bench_module("bench_capture")
    b = load("bench/results/capture.json")
    t, m = b["time"], b["memory"]
    shape = {name: bench_capture.SHAPES[name]() for name in ("llama-30x576", "llama2-7b-2layers")}
    c, seven = shape["llama-30x576"], shape["llama2-7b-2layers"]
    return [f"decoder ({t['tokens']} tokens)", f"column sums at\n{m['tokens']} tokens",
            f"fastest of {len(t['pairs_s'])} alternating plain and captured runs",
            f"with the median of the {len(t['pairs_s'])} pair ratios", f"median of {len(m['peak_bytes_samples']['plain'])}"
            " fresh processes", f"(time, {t['tokens']} tokens)", f"(peak memory, {m['tokens']} tokens)",
            f"llama-30x576 ({c.num_hidden_layers} layers x {c.hidden_size}, {c.num_attention_heads} heads, "
            f"{c.num_key_value_heads} KV heads)", f"LLaMA-2-7B's width, {seven.num_hidden_layers} layers)",
            f"{seven.num_attention_heads} x {t['tokens']} x {t['tokens']} float32 each"]


def variants_bench():
    b = load("bench/results/gpt2_variants.json")
    ratios = [v for k, v in b["variant_vs_default"].items() if k != "default"]
    return [f"(default / plain {b['default_vs_plain_sdpa']:.2f}, variant /\ndefault {min(ratios):.2f}-{max(ratios):.2f})"]


def scale_bench():
    b = load("bench/results/scale.json")
    peak = {k: v / 2**30 for k, v in b["peak_bytes_above_weights"].items()}
    full = {k: v / 2**30 for k, v in b["estimate_32_layers_bytes"].items()}
    return [f"| {peak['logits']:.2f} GiB | {full['logits']:.1f} GiB |", f"| {peak['stats']:.2f} GiB | {full['stats']:.1f} GiB |",
            f"| {peak['reference']:.2f} GiB | {full['reference']:.1f} GiB |",
            f"{b['stats_vs_logits_memory']:.2f}x the plain forward's peak and {b['time']['stats_vs_logits']:.2f}x its time "
            f"(median of the pair ratios {b['time']['stats_vs_logits_median_of_pairs']:.2f}x)"]


def scale_bench_setup():
    b, full = load("bench/results/scale.json"), bench_module("bench_scale").FULL_LAYERS
    s, peak = b["settings"], b["peak_bytes_above_weights"]
    dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[s["dtype"]]
    return [f"({s['hidden']}, MLP {s['intermediate']}, {s['heads']} heads) and {s['layers']} of its {full} layers, "
            f"{dtype}, {s['tokens']} tokens", f"median of {s['memory_repeats']} processes (one for the reference)",
            f"fastest of {s['repeats']} alternating runs in one process",
            f"| LLaMA-2-7B shape, {s['layers']} layers, {s['tokens']} tokens, {dtype}, CPU |",
            ("and so is the memory goal (<= 1.0x): the peaks differ by" if b["stats_vs_logits_memory"] <= 1 else
             "the memory goal (<= 1.0x) is missed: the peaks differ by")
            + f" {(peak['stats'] - peak['logits']) / 1e6:.1f} MB of {peak['logits'] / 1e6:.0f}",
            f"(other processes used {100 * b['provenance']['machine_load']['others_cpu_share']:.1f}% of the CPUs",
            f"({s['heads'] * s['tokens'] * 4 / 2**20:.1f} MiB of column sums per layer",  # float32 per head and key
            f"{s['hidden']} x {s['intermediate']} MLP activations"]


def code_constants():
    """Rules, defaults and limits the README states, from the code that applies them (not results, but a README that
    drifts from its code misleads as much)."""
    from lib import analysis, cli, outliers
    a, paper, g = analysis, cli.PAPER_SAMPLES, f"{analysis.ATTENTION_FACTOR:g}"
    (act_n, act_len), (att_n, att_len) = cli.CPU_DEFAULTS["activations"], cli.CPU_DEFAULTS["attention"]
    return [f"the paper's rules (max > {outliers.DEFAULT_OUTLIER_FACTOR:g} x mean |h|; cumulative attention >= {g} x "
            "length)",
            f"|h| > {a.MASSIVE_ABS:g}, > {a.MASSIVE_FACTOR:g} x the layer's median |h| (Massive\nActivations' rule) and "
            f"> {a.TOKEN_FACTOR:g} x its channel's median",
            f"the paper's\n{g} x length rule", f"it holds\nat least {g} more of their attention",
            f"{act_n} sequences x {act_len} tokens for activations, {att_n} x {att_len} for attention",
            f"{paper['activations']} sequences for activations, {paper['attention']}\nfor attention",
            f"(default {a.MASSIVE_FACTOR:g} x the median)", f"(default |h| > {a.MASSIVE_ABS:g})"]


def statistics_constants():
    """The rules docs/api.md's statistics paragraph names, from the code that applies them."""
    from lib import analysis as a, outliers
    return [f"(the paper's max > {outliers.DEFAULT_OUTLIER_FACTOR:g} x mean rule, Massive\nActivations' "
            f"> {a.MASSIVE_ABS:g} and > {a.MASSIVE_FACTOR:g} x median rule",
            f"the paper's >= {a.ATTENTION_FACTOR:g} x\nlength"]


def check_tolerances():
    """The re-check's tolerances and W8A8's runs, from the code that applies them."""
    from lib import check, evaluation
    runs = evaluation.JITTER_RUNS
    return [f"a relative tolerance of {check.RTOL:g}, and so must", f"a measured value within {check.RTOL:g} or one unit",
            f"897.6; {check.RTOL:g} is far above",
            f"measured over {runs} runs ({runs - 1} with the input embeddings jittered by 1 ± "
            f"2^{math.log2(evaluation.JITTER):.0f})"]


def bench_constants():
    """Limits bench/README.md states, from the code that applies them."""
    from monkey_patch import capture
    bench = bench_module("bench_scale")
    return [f"at most {capture.CHUNK_QUERIES} queries at a time",
            f"chunks of one head and {capture.CHUNK_QUERIES} queries ({capture.CHUNK_ELEMENTS * 4 // 2**20} MiB in "
            "float32", f"| {bench.FULL_LAYERS} layers: weights + peak |",
            f"fits one {bench.GPU_BYTES // 2**30} GB GPU", f"could not hold\n{bench.FULL_LAYERS} layers"]


# --- gpt-2/README.md --------------------------------------------------------------------------------------------------

def gpt2_summary():
    """gpt-2/README.md: the outlier criterion as outlier_stats states it, and the Results section."""
    change, e = backcopy_sink_changes(), emergence_facts()
    criteria = e["criteria"]
    largest = {v: max(variant_rows(f)[v]["ratio"] for f in ("backcopy_peak", "backcopy_peak_lr1e2"))
               for v in variant_rows("backcopy_peak")}
    passing = [v for v, r in largest.items() if r >= criteria["ratio"]]
    return [f"(masking it costs +{change['default']['mask_attn_sink']:.0f}% perplexity), while ca_softmax and sigmoid "
            f"do not (+{change['ca_softmax']['mask_attn_sink']:.0f}%, {change['sigmoid']['mask_attn_sink']:.0f}%)",
            f"activation outliers (top-1/median >= {criteria['ratio']:g})",
            f"in {WORDS[len(passing)]} of the {WORDS[len(largest)]} variants of the search",
            f"{e['no']} of {e['total']} runs are ruled out and {e['open']} cannot be decided",
            f"median |h| for p's top channel c is >= {criteria['ratio']:g}",
            f"(the embedding holds < {100 * criteria['embed_share']:g}% of it",
            f"puts > {criteria['sink_share']:g} of the attention",
            f"holds at {criteria['persistence']} consecutive logged checkpoints",
            f"(each >= {criteria['ratio']:g} x the median at p)", f"({criteria['control_draws']} draws)"]


CLAIMS = [  # (README, function returning its claims rendered from committed results)
    ("README.md", cross_model), ("README.md", emergence),
    ("docs/api.md", statistics_constants),
    ("docs/figures.md", figures_time), ("docs/figures.md", emergence_figures), ("docs/figures.md", gemma_figures),
    ("docs/figures.md", code_constants), ("docs/figures.md", check_tolerances), ("docs/figures.md", bos_headroom),
    ("docs/findings.md", attention_picture), ("docs/findings.md", calibration_picture),
    ("docs/findings.md", pattern_table), ("docs/findings.md", compression_valley), ("docs/findings.md", relocation),
    ("docs/findings.md", bos_table), ("docs/findings.md", bos_reading),
    ("docs/consequences.md", gemma_consequences), ("docs/consequences.md", backcopy_sinks),
    ("docs/consequences.md", scale_tests), ("docs/consequences.md", gemma_windows),
    ("docs/consequences.md", scale_test_reading),
    ("bench/README.md", capture_bench), ("bench/README.md", variants_bench),
    ("bench/README.md", scale_bench), ("bench/README.md", bench_constants), ("bench/README.md", capture_bench_setup),
    ("bench/README.md", capture_bench_load), ("bench/README.md", scale_bench_setup),
    ("gpt-2/README.md", gpt2_summary),
]

EVERY = "*"  # a STATIC entry for every README
STATIC = [  # (README, regex over the text with its whitespace collapsed, why its numbers come from no result)
    (EVERY, r"Gemma 3 270M|Gemma 3\b|Gemma 2/3|gemma3-270m|LLaMA-2-7B|llama2-7b-2layers|llama-30x576|"
     r"SmolLM2-135M-Instruct", "model names"),
    (EVERY, r"3-D|top-1/2/3|\b[01]-based|2-core|2 cores", "names: plot kinds, statistics, indexing, the machine"),
    (EVERY, r"written before 2026-12-07|count(?:s|ing)? (?:layers|blocks)(?: \(blocks\)| and layers)? from [01]|"
     r"counted from 1|counting from 1|counts from 0|\(layer \+ 1\)|0\.\.n_layer-1|\(-1, the default|layer 5 \(the sixth\)|"
     r"the paper's layer 2 of 32, counted from 1: layer 1 here",
     "the layer numbering (lib/layer_numbering.py), the date it changed, and the paper's 1-based layer"),
    (EVERY, r"\b[48]-bit|8- and 4-bit|8 bits|50% (?:smallest|magnitude pruning|pruning|pruned)",
     "the compression methods (lib/compression.py)"),
    ("README.md", r"ICLR 2025|arXiv 2502\.06415", "the paper's venue and arXiv id"),
    ("docs/figures.md", r"float16 \(65,504\)|\(exit status 2\)",
     "float16's largest finite value (torch.finfo), the exit status of a user error (lib/errors.py)"),
    ("docs/findings.md", r"at position 0", "the first position"),
    ("docs/figures.md", r"such as 897\.548 in its fifth digit, which can carry a printed 897\.5 across to 897\.6",
     "an illustration of rounding across a boundary (a value of the default model's figures, as the re-check saw it)"),
    ("gpt-2/README.md", r"0\.05% of the documents become val \(seed 2357\)|\(position 0, or|queries 1\.\.T-1",
     "nanoGPT's OpenWebText split (data/openwebtext/prepare.py); the first position; the queries with a choice"),
    ("docs/findings.md", r"Queipo-de-Llano et al\. 2025|1 for orthogonal tokens of one\s?norm, 0 for rank one|exceeds 0\.3\. The valley|"
     r"below 0\.5 x the largest, its depth 1 - lowest|by the 0\.5\s?x rule|passes 0\.3",
     "a citation; the entropy's range and the valley's definition (lib/outliers.py, lib/paper_figures/valley.py)"),
    ("README.md", r"Python 3\.10\+|torch pinned to 2\.13\.0", "supported versions (pyproject.toml, setup.sh)"),
    ("docs/api.md", r"transformers 4\.57\.x and 5\.x", "supported versions (pyproject.toml, .ci/run)"),
    ("docs/figures.md", r"models at 4096 tokens|from 4 tokens|query 0 can only attend to key 0",
     "the paper's calibration length; properties of the rule and of causal attention"),
    ("bench/README.md", r"\| <= 1\.1 \| <= 1\.0 \||\(<= 1\.1x\)|\(<= 1\.0x\)|<= 1\.1x, memory <= 1\.0x|>= 0\.95x plain|"
     r">= 0\.5x default|about 8 minutes|1e-5", "the benchmarks' goals and tolerances"),
    ("bench/README.md", r"The run took 593 s on the idle|had not finished in 17 minutes",
     "times: the scale bench's wall time on the idle machine (its command's, not recorded in the JSON); history"),
    ("bench/README.md", r"other processes used 0\.1% of the CPUs|had given 2\.17",
     "the committed run's load share (its provenance's machine_load); history: a run on a loaded machine"),
    ("bench/README.md", r"\(4096 tokens, bf16\)|random-init 4-layer model|at 4096 tokens|\(12 x 768, 1024 tokens, batch 16,|"
     r"6 N \+ 12 L d T|exit status 1|more than 10% of the CPUs|vary by up to 15%",
     "the GPU check's settings and the FLOPs formula (bench/gpu_check.py), an exit status, the load limit "
     "(lib/machine_load.py), the machine's spread of single runs"),
    ("gpt-2/README.md", r"paper Section 5|Qiu et al\. 2025|Bondarenko et al\. 2023", "the paper's section; citations"),
    ("gpt-2/README.md", r"\[v′; 0\]|S\(x\) = 2 sigmoid|γ, 0, 1\)|an extra 1 in the denominator|k′ = v′ = 0",
     "the variants' formulas (gpt-2/model.py)"),
    ("gpt-2/README.md", r"position 0 has nothing|peak on position 0|position 0 always predicts|exit code 3",
     "the first position's index; train.py's exit code for a NaN loss"),
]


def flat(readme: str) -> str:
    """The README's text with its whitespace collapsed; an indented code block's lines are marked as code spans."""
    lines, after_blank, in_code = [], True, False
    for line in (ROOT / readme).read_text().splitlines():
        # a code block starts after a blank line and goes on while lines stay indented (a continued command's
        # "--flag" line is code, not a list item's continuation)
        in_code = line.startswith("    ") and (in_code or (after_blank and not line.lstrip().startswith(("-", "|"))))
        if in_code:
            line = "`" + line.strip().replace("`", "") + "`"
        else:
            after_blank = not line.strip()
        lines.append(line)
    return " ".join(" ".join(lines).split())


def spans(text: str, pattern: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(pattern, text, re.DOTALL)]


def code(text: str) -> list[tuple[int, int]]:
    fenced = spans(text, r"```.*?```")
    blanked = re.sub(r"```.*?```", lambda m: " " * len(m.group()), text, flags=re.DOTALL)
    return fenced + spans(blanked, r"`[^`]*`")


def uncovered(readme: str) -> list[str]:
    """Each number of the README outside code, claims and static entries, with the text around it."""
    text = flat(readme)
    covered = code(text)
    for file, claims in CLAIMS:
        if file == readme:
            covered += [span for claim in claims() for span in spans(text, re.escape(" ".join(claim.split())))]
    covered += [span for file, pattern, _ in STATIC if file in (readme, EVERY) for span in spans(text, pattern)]
    return [f"{m.group()!r} in ...{text[max(0, m.start() - 60):m.end() + 30]}..." for m in NUMBER.finditer(text)
            if not any(a <= m.start() and m.end() <= b for a, b in covered)]


@pytest.mark.parametrize("readme, claims", CLAIMS, ids=[f"{f}:{c.__name__}" for f, c in CLAIMS])
def test_readme_quotes_the_committed_results(readme, claims):
    text = flat(readme)
    for claim in claims():
        assert " ".join(claim.split()) in text, f"{readme} should say {claim!r} ({claims.__name__})"


@pytest.mark.parametrize("readme", READMES)
def test_every_readme_number_is_rendered_from_a_result_or_listed_as_static(readme):
    left = uncovered(readme)
    assert not left, f"{len(left)} numbers of {readme} neither come from a claim nor are listed in STATIC:\n" + \
        "\n".join(left)


def test_every_static_entry_still_matches():
    text = {readme: flat(readme) for readme in READMES}
    stale = [(file, pattern) for file, pattern, _ in STATIC
             if not any(re.search(pattern, text[f], re.DOTALL) for f in (READMES if file == EVERY else [file]))]
    assert not stale, f"STATIC entries whose text is gone from the README (remove them): {stale}"
