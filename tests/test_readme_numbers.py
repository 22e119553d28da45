"""Every number in the READMEs comes from a committed result or is listed as static, with its reason.

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

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "gpt-2/README.md", "results/consequences/README.md", "gpt-2/results/README.md",
           "bench/README.md")
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
    """compare.py's table.json rows of a gpt-2/results folder, by variant."""
    return {r["variant"]: r for r in load(f"gpt-2/results/{folder}/table.json")["rows"]}


def analysis(folder, variant):
    """analyze.py's per-layer statistics of one run (layers and attention_layers are 0-based lists)."""
    return load(f"gpt-2/results/{folder}/{variant}/analysis.json")


def emergence_rows():
    return {r["run"]: r for r in load("gpt-2/results/emergence/table.json")["rows"]}


def log_val_loss(name, step=None):
    """The val loss train.py printed at `step` (the last evaluation by default) in a committed training log."""
    found = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)",
                       (ROOT / "gpt-2/results/pilots" / f"{name}.log").read_text())
    return float(next(v for s, v in reversed(found) if step is None or int(s) == step))


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


def g4(x):
    """A number as consequences.md writes it: 4 significant digits, in exponent form from 1e5."""
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def power_of_ten(x):
    return f"1e{round(math.log10(x))}"


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

def consequences_tables(folder, tables):
    """The rows of consequences.md's tables (compression, sinks, sites) for every model of a results folder."""
    report, rows = consequences(folder), []
    for r in report["results"]:
        base, c, iv = r["baseline"]["ppl"], r["compression"], r["interventions"]
        if "compression" in tables:
            m = r["outlier_metrics"]
            rows.append(f"| {r['name']} | {g4(base)} | " + " | ".join(g4(c[k]["ppl"]) for k in report["methods"])
                        + f" | {g4(m['max_inf_norm'])} | {g4(m['avg_kurtosis'])} |")
        if "sinks" in tables:
            a = iv["attention_sinks"]
            rows.append(f"| {r['name']} | {g4(base)} | {g4(a['mask_attn_sink']['ppl'])} | "
                        f"{g4(a['mask_attn_random']['ppl'])} | {g4(a['mask_attn_sink']['masked_keys_per_window'])} | "
                        f"{g4(a['mask_attn_sink']['masked_layer_keys_per_window'])} |")
        for site in iv.get("sites", []) if "sites" in tables else []:
            where = "first outlier layer" if site["site"] == "first" else \
                f"where channel {iv['dominant_channel']} (largest outliers) appears"
            modes = [m for m in report["interventions"] if m in site]
            rows.append(f"| {r['name']} | {where} | {site['layer']} | {', '.join(site['calibration_means'])} | "
                        f"{g4(base)} | " + " | ".join(g4(site[m]["ppl"]) for m in modes)
                        + f" | {g4(site['zero']['outlier_tokens_per_window'])} |")
    return rows


def variant_table(folder):
    """compare.py's table rows for a gpt-2/results folder, from its table.json; tables made before the per-layer
    verdict have one outliers column (max over layers >= 100)."""
    lines = []
    for r in variant_rows(folder).values():
        if "max_over_layers_outliers" in r:  # systematic outliers (where), then the old column
            found = ", ".join(f"L{x['layer']} t{x['token']} c{x['channel']}" for x in r["outlier_layers"])
            outliers = f" {'yes: ' + found if r['outliers'] else 'no'} | {'yes' if r['max_over_layers_outliers'] else 'no'} |"
        else:
            outliers = f" {'yes' if r['outliers'] else 'no'} |"
        lines.append(f"| {r['variant']} | {r['val_loss']:.4f} | {r['top1']:.2f} | {r['median']:.3f} | {r['ratio']:.1f} "
                     f"({r['ratio_layer']}) | {r['kurtosis']:.1f} | {r['first_token_share']:.3f} | "
                     f"{r['top_key_share']:.3f} | {r['extra_key_share']:.3f} | {r['sink_rate']:.2f} |{outliers} "
                     f"{'yes' if r['sink'] else 'no'} | {r['params']:,} | {r['tokens_per_sec']:,.0f} |")
    return lines


# --- README.md --------------------------------------------------------------------------------------------------------

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
            f"({d['over_median']:,.0f} x the median); it is the attention sink of layer {attention['layer']}",
            f"the `{attention['tokens'][token]}` (magenta) is\nthe attention sink: it holds {attention['first_token_share']:.2f} of the attention, head-averaged over all\nqueries"]


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
    e = emergence_facts()
    longest = max(e["rows"]["out-emergence-rf-default-none"]["over_run"]["logged_peak_streaks"],
                  key=lambda s: s["checkpoints"])
    return [f"ruled out by their logs in {e['no']} of {e['total']} cases and not re-judged in {e['open']}",
            f"the longest on position {longest['position']} of block {longest['layer']} at {steps(longest)} steps",
            f"BOS's own entry stays near {e['bos_ratio']:.0f} x the median",
            f"over {e['persistence']} consecutive logged checkpoints",
            f"(a peak >= {e['criteria']['ratio']:g} x the median at a fixed position",
            f"the figure rule at {e['criteria']['ratio']:g} x the median",
            f"no sink forms at all in {min(e['nobos']) / 1000:.0f}k-{max(e['nobos']) / 1000:.0f}k steps"]

def attn_bias_sink():
    """Where attn_bias puts its sink: on BOS in the 2-layer backcopy model, on k′ in the wider model of the search
    (per layer at lr 1e-2, not only the table's largest layer)."""
    table, change = variant_rows("backcopy"), backcopy_sink_changes()
    peak = analysis("backcopy_peak", "attn_bias")["attention_layers"]
    lr1e2 = [layer["extra_key_share"] for layer in analysis("backcopy_peak_lr1e2", "attn_bias")["attention_layers"]]
    return [f"attn_bias keeps its BOS sink in the 2-layer model ({table['attn_bias']['first_token_share']:.3f} of the "
            f"mass on BOS, at most\n{table['attn_bias']['extra_key_share']:.3f} on its extra key k′; masking BOS costs "
            f"+{change['attn_bias']['mask_attn_sink']:.0f}%) and moves the sink onto k′ only in the wider 4-layer model "
            f"of\nthe search ({peak[0]['extra_key_share']:.3f} of layer 1's mass at lr 3e-2; {min(lr1e2):.3f}-"
            f"{max(lr1e2):.3f} per layer at lr 1e-2)"]


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
    return [f"the outlier token of every window is its `{token}` (channel {channel}, {values[0]:,.0f}{same} at layer {at}",
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
    assert w["first_sink_layer"] == 1 and prompt["massive_token"] == after["massive_token"] == 0

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


def cross_model():
    """The README's sentence per model and its comparison with the paper's pattern, rendered by lib.cross_model from
    the committed figure and consequences JSONs as `reproduce.py --summary` renders them into summary.md/.json."""
    from lib import cross_model as cm
    summary = load("results/figures/summary.json")
    data = [cm.model_data(ROOT / "results/figures" / r["model"], r, ROOT / "results/consequences")
            for r in summary["models"]]
    findings = [cm.finding(d) for d in data]
    assert findings == [r["finding"] for r in summary["models"]], \
        "results/figures/summary.json is stale: python reproduce.py --summary-only --savedir results/figures"
    assert {r["model"] for r in summary["models"]} == {"gemma3_270m", "smollm2_135m"}
    return findings + cm.comparison_table(data) + [cm.CRITERIA]


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
            f"{act_n} windows x {act_len} tokens) the outlier",
            f"{paper['activations']} sequences for activations, {paper['attention']}\nfor attention",
            f"(default {a.MASSIVE_FACTOR:g} x the median)", f"(default |h| > {a.MASSIVE_ABS:g})",
            f"(the paper's max > {outliers.DEFAULT_OUTLIER_FACTOR:g} x mean rule, Massive\nActivations' "
            f"> {a.MASSIVE_ABS:g} and > {a.MASSIVE_FACTOR:g} x median rule",
            f"the paper's >= {g} x\nlength"]


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
    """gpt-2/README.md's closing summary: the backcopy sinks, the peaks of the search, the emergence study."""
    change, e = backcopy_sink_changes(), emergence_facts()
    criteria = e["criteria"]
    peak, lr1e2 = variant_rows("backcopy_peak"), variant_rows("backcopy_peak_lr1e2")
    passing = [v for v in peak if max(peak[v]["ratio"], lr1e2[v]["ratio"]) >= criteria["ratio"]]
    below = [v for v in peak if v not in passing]
    fresh = config("train_emergence.py")
    final = {run: e["rows"][f"out-emergence-{run}"]["at_checkpoint"]["max_over_layers"]
             for run in ("rf-default-none", "rf-default-none-s2")}
    return [f"(masking it costs\n+{change['default']['mask_attn_sink']:.0f}% perplexity), while ca_softmax and sigmoid do "
            f"not (+{change['ca_softmax']['mask_attn_sink']:.0f}%, {change['sigmoid']['mask_attn_sink']:.0f}%)",
            f"attn_bias keeps its BOS sink in the 2-layer\nmodel (masking it costs "
            f"+{change['attn_bias']['mask_attn_sink']:.0f}%)",
            f"(top-1/median >= {criteria['ratio']:g})",
            f"and then in {WORDS[len(passing)]} of the {WORDS[len(peak)]}\nvariants (default {peak['default']['ratio']:.1f}, "
            f"attn_bias {peak['attn_bias']['ratio']:.1f}, ca_softmax {lr1e2['ca_softmax']['ratio']:.1f}; "
            + "; ".join(f"{v} reaches {max(peak[v]['ratio'], lr1e2[v]['ratio']):.1f} at most" for v in below) + ")",
            f"the ratio passes {criteria['ratio']:g} with weight decay {fresh['weight_decay']:g} and lr "
            f"{fresh['learning_rate']:.0e} as well (the position-free ratio\nat the final checkpoint: "
            f"{final['rf-default-none']:.0f} in `rf-default-none`, {final['rf-default-none-s2']:.0f} in its second "
            f"seed)".replace("e-0", "e-"),
            f"{e['no']} of {e['total']} runs are ruled out, {e['open']} stay open",
            f"median |h| for p's top channel c is >= {criteria['ratio']:g}",
            f"(the embedding holds < {100 * criteria['embed_share']:g}% of it",
            f"puts > {criteria['sink_share']:g} of the attention",
            f"holds at {criteria['persistence']} consecutive logged checkpoints",
            f"(each >= {criteria['ratio']:g} x the median at p)", f"({criteria['control_draws']} draws)",
            f"and its {e['rows']['out-emergence-rf-default-none-l6']['n_layer']}-layer model"]


# --- gpt-2/results/emergence/README.md (its claims only: its table and history are not rendered here) --------------

def emergence_stats(run):
    """A run's logged statistics, one dict per logged checkpoint."""
    path = ROOT / "gpt-2/results/emergence/runs" / run / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def second_legs():
    """Steps each nobos run added in its second GPU leg: between the two max_seconds stops of its console log."""
    added = {}
    for log in sorted((ROOT / "gpt-2/results/emergence/runs").glob("nb-*/console.log")):
        first, second = map(int, re.findall(r"max_seconds \(\d+\) reached at iteration (\d+)", log.read_text()))
        added[log.parent.name] = second - first
    return added


def emergence_readme():
    e = emergence_facts()
    rows = e["rows"]
    none_cons = {r["name"]: r for r in consequences("gpt2_emergence_none")["results"]}
    metrics = [r["outlier_metrics"]["max_inf_norm"] for f in ("gpt2_emergence_none", "gpt2_emergence_bos")
               for r in consequences(f)["results"]]
    wd0 = max(rows["out-emergence-default-wd0"]["at_checkpoint"]["layers"], key=lambda layer: layer["top1"])
    figures = "gpt-2/results/emergence/figures/out-emergence-rf-default-none"
    found = {name: load(f"{figures}/{name}.json").get("outliers_found", bool(load(f"{figures}/{name}.json")
                                                                              .get("outlier_layers")))
             for name in ("existence_activation_outliers_down", "pos_activation_outliers_down")}
    spread = load("gpt-2/results/emergence/figures/out-emergence-rf-default-none-l6/lifecycle_spread.json")
    values = spread["per_token"]["v head 1 (L2)"]
    rank = sorted(values).index(values[0])
    controls = [layer for name in ("sigmoid", "out-emergence-rf-default-none-sgd") for layer in
                scale_test_of("gpt2_emergence_none", name)["scale_test"]["layers"].values()]
    costs = [m["nll_change"] for name in ("sigmoid", "out-emergence-rf-default-none-sgd") for k, m in
             scale_test_of("gpt2_emergence_none", name)["scale_test"]["modes"].items() if k != "mask"]
    sgd = [layer["top_key_share"] for layer in rows["out-emergence-rf-default-none-sgd"]["last_logged"]["layers"]]
    legs = second_legs()
    seeds = [r for r in rows if r.endswith("-s2")]
    bos_fit = scale_test_of("gpt2_emergence_bos", "out-emergence-default")["scale_test"]["layers"]["1"]["fit_r2"]
    keys = [(layer["top_key_share"], d["iter"], i + 1, layer["top_key"]) for d in emergence_stats("ca_softmax-w256")
            for i, layer in enumerate(d["layers"])]
    share, step, block, key = max(keys)
    none = {d["iter"]: d["layers"][2]["top_key_share"] for d in emergence_stats("rf-default-none")}
    late = [none[k] for k in none if 90000 <= k <= 120000]
    return [f"`rf-default-none`'s block {none_cons['out-emergence-rf-default-none']['interventions']['outlier_layers'][0]}"
            " passes the whole rule in `gpt2_emergence_none/`",
            f"`default-wd0`'s block {wd0['layer']}\n    peaks at |h| = {wd0['top1']:.1f} at its final checkpoint",
            f"(their largest |h| on these windows is {min(metrics):.0f}-{max(metrics):.0f}",
            "except the two of the down_proj input\n(`existence_activation_outliers_down`, `pos_activation_outliers_down`: "
            "no entry there passes the rule)" if not any(found.values()) else "a down_proj figure finds it",
            f"is the\n{['smallest', 'second smallest', 'third smallest'][rank]} of the window ({values[0]:.2f}; the fixed "
            f"token F at position 1 has {values[1]:.2f}, the other positions {min(values[2:]):.1f}-{max(values[2:]):.1f})",
            f"(values {min(x['sink_value_ratio_median'] for x in controls):.2f}-"
            f"{max(x['sink_value_ratio_median'] for x in controls):.1f} x the median, and no scale recovers\n  them: "
            f"+{min(costs):.2f} to +{max(costs):.1f} nats)",
            f"{sgd[0]:.2f}, {sgd[1]:.2f} and {sgd[2]:.2f} in blocks 1-3 under SGD",
            f"so it added only {min(legs.values()) / 1000:.1f}k-{max(legs.values()) / 1000:.1f}k steps per run",
            f"Seed {gpt2_module('train.py', 'gpt2_train').DEFAULTS['seed']}, except the {WORDS[len(seeds)]} `-s2` runs "
            "(`--seed=1338`)",
            f"(held-out R^2 {bos_fit:.2f} in block 1)",
            f"top key passes {math.ceil(share * 100) / 100:.2f} at any logged checkpoint (the largest: {share:.4f}, block "
            f"{block} on position {key} at {step // 1000}k)",
            f"block 3's share on position 0 {none[86000]:.2f} at 86k and {min(late):.2f}-{max(late):.2f} at\n    90k-120k"]


# --- results/consequences/README.md -----------------------------------------------------------------------------------

def consequences_gemma():
    """results/consequences/README.md on Gemma 3 270M: its tables, then what the numbers say."""
    r, no_bos = (consequences(f)["results"][0] for f in ("gemma3_270m", "gemma3_270m/no_bos"))
    data, base, c, iv, m = r["data"], r["baseline"], r["compression"], r["interventions"], r["outlier_metrics"]
    removed = r["bos_removed"]
    moved = lambda kind: f"{round(removed['moved'][kind + '_moved'] * data['windows'])} of {data['windows']}"  # noqa: E731
    first, dominant = iv["sites"]
    a = iv["attention_sinks"]
    pct = lambda entry: percent_change(entry["ppl"], base["ppl"])  # noqa: E731
    nats = lambda entry: f"{entry['nll_change']:+.3f} ± {entry['nll_change_stderr']:.3f}"  # noqa: E731
    peak_block = max(range(len(m["per_layer_inf_norm"])), key=m["per_layer_inf_norm"].__getitem__) + 1
    layers = iv["outlier_layers"]
    return consequences_tables("gemma3_270m", ("compression", "sinks", "sites")) + [
        f"**{data['windows']} windows x {data['seqlen']} tokens**", f"({base['tokens']:,} predicted tokens",
        f"calibration {data['calib_windows']} windows x {data['seqlen']}",
        f"found at block outputs {layers[0]}-{layers[-1]}",
        f"Block {first['layer']} already has outliers in channel {', '.join(first['calibration_means'])},\non about "
        f"{first['zero']['outlier_tokens_per_window']:.0f} tokens per {data['seqlen']}-token window",
        f"(up to {power_of_ten(m['max_inf_norm'])} by block\n{peak_block}) sit in channel {iv['dominant_channel']} from "
        f"block {dominant['layer']} on, on about {dominant['zero']['outlier_tokens_per_window']:.0f} tokens per window",
        f"|h| = {power_of_ten(m['max_inf_norm'])} with an average kurtosis of {m['avg_kurtosis']:.0f}",
        f"Zeroing the ~{dominant['zero']['outlier_tokens_per_window']:.0f} channel-{iv['dominant_channel']} entries per "
        f"window\nat block {dominant['layer']} raises perplexity from {ppl(base['ppl'])} to "
        f"{ppl(dominant['zero']['ppl'])} (+{pct(dominant['zero']):.0f}%); setting them to their calibration mean "
        f"instead\nleaves it at {ppl(dominant['mean']['ppl'])}",
        f"Masking those ~{dominant['mask_sink']['masked_keys_per_window']:.0f} tokens as keys in every later block costs "
        f"{ppl(dominant['mask_sink']['ppl'])} (+{pct(dominant['mask_sink']):.0f}%), while masking as many\nrandom "
        f"tokens costs {ppl(dominant['mask_random']['ppl'])} (+{pct(dominant['mask_random']):.1f}%)",
        f"At block {first['layer']} (channel {', '.join(first['calibration_means'])}, "
        f"~{first['zero']['outlier_tokens_per_window']:.0f} tokens per\nwindow) the same pattern holds (zero "
        f"{ppl(first['zero']['ppl'])}, mean {ppl(first['mean']['ppl'])}), but masking "
        f"{first['mask_sink']['masked_keys_per_window']:.0f} keys hurts both for the outlier\ntokens "
        f"({ppl(first['mask_sink']['ppl'])}) and for random ones ({ppl(first['mask_random']['ppl'])})",
        f"({a['mask_attn_sink']['masked_keys_per_window']:.1f} keys per window on average, in "
        f"{a['mask_attn_sink']['masked_layer_keys_per_window']:.1f} (layer, key) pairs) costs "
        f"+{pct(a['mask_attn_sink']):.0f}% ({ppl(a['mask_attn_sink']['ppl'])},\n"
        f"{nats(a['mask_attn_sink'])} nats) against +{pct(a['mask_attn_random']):.1f}% for random keys "
        f"({ppl(a['mask_attn_random']['ppl'])})",
        f"costs nothing ({ppl(first['zero_random']['ppl'])} and {ppl(dominant['zero_random']['ppl'])})",
        f"costs +{pct(c['w8_tensor']):.0f}% ({ppl(c['w8_tensor']['ppl'])}), 8-bit per output channel nothing "
        f"({ppl(c['w8_channel']['ppl'])})",
        f"triples perplexity ({c['w4_channel']['ppl']:.0f})",
        f"costs +{pct(c['w8a8']):.0f}% ({ppl(c['w8a8']['ppl'])};\nthe median of {len(c['w8a8']['runs'])} runs, which "
        f"span {ppl(min(c['w8a8']['runs']))} to {ppl(max(c['w8a8']['runs']))}",
        f"with absmax scales of {power_of_ten(m['max_inf_norm'])}",
        f"destroys this small model ({ppl(c['prune50']['ppl'])})",
        f"(channel-{iv['dominant_channel']} zero {nats(dominant['zero'])} nats, its key mask {nats(dominant['mask_sink'])} vs "
        f"random keys {nats(dominant['mask_random'])},\nmean {nats(dominant['mean'])}; w8_tensor {nats(c['w8_tensor'])}, "
        f"w8a8 {nats(c['w8a8'])})",
        f"The same {data['windows']} windows without their `<bos>` (the original code's input, `bos_removed`), scoring the "
        f"same {removed['tokens']:,}\ntargets: {ppl(removed['ppl'])} ({nats(removed)} nats); the massive activation moves "
        f"to another token in {moved('massive')} windows and the\nsink in {moved('sink')}",
        f"(`--no-bos`: windows of {no_bos['data']['seqlen']} text\ntokens, as the earlier runs had; perplexity "
        f"{ppl(no_bos['baseline']['ppl'])})",
        f"Small samples: {data['windows']} windows on Gemma", f"on the same {data['windows']} windows",
        f"but {data['windows']} windows of one held-out text",
        f"where Gemma's channel {iv['dominant_channel']} costs {pct(dominant['zero']):.0f}%"]


def consequences_backcopy():
    """The gpt-2 variants on the backcopy task: tables, the sink masking and the compression reading."""
    report = consequences("gpt2_backcopy")
    r = {x["name"]: x for x in report["results"]}
    data, info, train = r["default"]["data"], r["default"]["info"], config("train_backcopy.py")
    change = backcopy_sink_changes()
    paper = ("default", "vbias", "cabias", "attn_bias")
    sink = [change[v]["mask_attn_sink"] for v in paper]
    rand = [change[v]["mask_attn_random"] for v in paper]
    a = lambda v: r[v]["interventions"]["attention_sinks"]["mask_attn_sink"]  # noqa: E731
    arrow = lambda v: f"{g4(r[v]['baseline']['ppl'])} -> {g4(a(v)['ppl'])}"  # noqa: E731
    metrics = [x["outlier_metrics"] for x in r.values()]
    peaks, kurtosis = [x["max_inf_norm"] for x in metrics], [x["avg_kurtosis"] for x in metrics]
    cost = lambda v, m: percent_change(r[v]["compression"][m]["ppl"], r[v]["baseline"]["ppl"])  # noqa: E731
    eight = max(cost(v, m) for v in r for m in ("w8_tensor", "w8_channel", "w8a8"))
    stderr = sorted(x["compression"][m]["nll_change_stderr"] for x in r.values() for m in ("w4_tensor", "prune50"))
    median = (stderr[len(stderr) // 2 - 1] + stderr[len(stderr) // 2]) / 2
    floor = re.search(r"[|]h[|] > (\d+)", report["outlier_rule"]).group(1)

    def nats(v, method):
        c = r[v]["compression"][method]
        return f"+{c['nll_change']:.3f} ± {c['nll_change_stderr']:.3f}"

    def apart(a, b, method):
        """The difference of two variants' NLL changes in their combined standard errors (independent windows' errors
        treated as independent: the JSON keeps no paired error between variants)."""
        x, y = r[a]["compression"][method], r[b]["compression"][method]
        return abs(x["nll_change"] - y["nll_change"]) / math.hypot(x["nll_change_stderr"], y["nll_change_stderr"])

    def least(method):
        return sorted(r, key=lambda v: r[v]["compression"][method]["nll_change"])
    top3 = least("prune50")[:3]
    spread = max(apart(a, b, "prune50") for a in top3 for b in top3 if a != b)
    return consequences_tables("gpt2_backcopy", ("compression", "sinks")) + [
        f"All {data['windows']} validation sequences ({data['seqlen']} tokens each, from BOS: "
        f"{r['default']['baseline']['tokens']:,} predicted tokens); {info['n_layer']}-layer, {train['n_head']}-head,\n"
        f"{info['n_embd']}-wide models trained {info['iter']:,} steps",
        f"none of the {WORDS[len(r)]} variants has one under the rule (|h| > {floor} is never\nreached",
        f"the largest block output is {min(peaks):.0f}-{max(peaks):.0f}, kurtosis about {min(kurtosis):.1f}-"
        f"{max(kurtosis):.1f}",
        f"+{min(sink):.0f}% to +{max(sink):.0f}% perplexity (e.g. default {arrow('default')}, NLL\nchange "
        f"+{a('default')['nll_change']:.3f} ± {a('default')['nll_change_stderr']:.3f} nats), against "
        f"+{min(rand):.0f}% to +{max(rand):.0f}% for as many random keys",
        f"costs ca_softmax +{change['ca_softmax']['mask_attn_sink']:.1f}%\n({arrow('ca_softmax')}) and sigmoid nothing "
        f"({arrow('sigmoid')}; +{a('sigmoid')['nll_change']:.4f} ± {a('sigmoid')['nll_change_stderr']:.4f} nats), less "
        f"than their random controls (+{change['ca_softmax']['mask_attn_random']:.1f}%, "
        f"+{change['sigmoid']['mask_attn_random']:.1f}%)",
        f"(+{change['gated']['mask_attn_sink']:.1f}%, random +{change['gated']['mask_attn_random']:.1f}%),\nclipped "
        f"softmax needs it partly (+{change['clipped']['mask_attn_sink']:.1f}%, random "
        f"+{change['clipped']['mask_attn_random']:.1f}%) and softmax1 most of all "
        f"(+{change['softmax1']['mask_attn_sink']:.0f}%)",
        f"Here the models are {info['n_layer']}-layer, {info['n_embd']}-wide",
        f"cost every variant under {0.2 if eight < 0.2 else round(eight, 1)}%",
        f"At 4-bit per tensor `{least('w4_tensor')[0]}` degrades least ({g4(r['ca_softmax']['compression']['w4_tensor']['ppl'])} vs\n"
        f"{g4(r['default']['compression']['w4_tensor']['ppl'])} for `default`; {nats('ca_softmax', 'w4_tensor')} against "
        f"{nats('default', 'w4_tensor')} nats)",
        f"loses nearly as much as `default` ({nats('vbias', 'w4_tensor')}) and more than `attn_bias` "
        f"({nats('attn_bias', 'w4_tensor')})" if apart("vbias", "attn_bias", "w4_tensor") > 2 else "vbias as attn_bias",
        f"Under\n50% pruning `{top3[0]}`, `{top3[1]}` and `{top3[2]}` degrade least ({nats(top3[0], 'prune50')}, "
        f"{nats(top3[1], 'prune50')} and {nats(top3[2], 'prune50')} nats; `ca_softmax` "
        f"{g4(r['ca_softmax']['compression']['prune50']['ppl'])} vs {g4(r['default']['compression']['prune50']['ppl'])} "
        f"for `default`), differences among the three of at most {spread:.1f} of their\ncombined standard errors, so "
        "their order is not resolved",
        f"`vbias` prunes worse than `default` ({nats('vbias', 'prune50')}\nagainst {nats('default', 'prune50')}) and "
        f"`cabias` within the error of it ({nats('cabias', 'prune50')})"
        if apart("vbias", "default", "prune50") > 2 and apart("cabias", "default", "prune50") <= 1 else "cabias apart",
        f"over the {data['windows']} sequences: about {median:.3f} nats, {100 * math.expm1(median):.1f}% perplexity"]


def consequences_peak():
    """The activation-outlier search configuration: its tables and what masking and zeroing did."""
    report = consequences("gpt2_backcopy_peak")
    r = {x["name"]: x for x in report["results"]}
    peak, table = config("train_backcopy_peak.py"), variant_rows("backcopy_peak")
    criteria = load("gpt-2/results/emergence/table.json")["criteria"]
    factor = re.search(r"> (\d+) x median", report["outlier_rule"]).group(1)
    sinks = lambda v: r[v]["interventions"]["attention_sinks"]  # noqa: E731
    site = lambda v: r[v]["interventions"]["sites"][0]  # noqa: E731
    zero = [percent_change(site(v)["zero"]["ppl"], r[v]["baseline"]["ppl"]) for v in ("default", "attn_bias")]
    from lib import analysis
    return consequences_tables("gpt2_backcopy_peak", ("compression", "sinks")) + [
        f"{peak['n_layer']} layers x {peak['n_embd']} wide, no weight decay, constant lr {peak['learning_rate']:.0e}, "
        f"{peak['max_iters']:,} steps".replace("e-0", "e-"),
        f"passes top-1/median {criteria['ratio']:g}", f"Same {r['default']['data']['windows']} sequences",
        f"lowered to {factor} x the median (`--outlier-factor {factor}`",
        f"no entry here reaches {analysis.MASSIVE_FACTOR:g} x",
        f"(block {site('default')['layer']}, BOS, in about {100 * site('default')['zero']['outlier_tokens_per_window']:.0f}"
        f"% of the windows for default): zeroing them gives default {g4(site('default')['zero']['ppl'])}\nand attn_bias "
        f"{g4(site('attn_bias')['zero']['ppl'])}, their calibration mean {g4(site('default')['mean']['ppl'])} and "
        f"{g4(site('attn_bias')['mean']['ppl'])}, masking them as keys in block {site('default')['layer'] + 1}",
        f"sends default from {r['default']['baseline']['ppl']:.1f} to {g4(sinks('default')['mask_attn_sink']['ppl'])} "
        f"(random keys: {g4(sinks('default')['mask_attn_random']['ppl'])}); attn_bias, whose extra key k' takes "
        f"{table['attn_bias']['extra_key_share']:.2f} of\nthe mass, loses nothing "
        f"({g4(r['attn_bias']['baseline']['ppl'])} -> {g4(sinks('attn_bias')['mask_attn_sink']['ppl'])}), and neither "
        f"do ca_softmax ({g4(sinks('ca_softmax')['mask_attn_sink']['ppl'])})",
        f"costs default and attn_bias {min(zero):.1f}-{max(zero):.1f}%",
        f"({ppl(r['attn_bias']['outlier_metrics']['max_inf_norm'])} vs "
        f"{ppl(r['default']['outlier_metrics']['max_inf_norm'])})", f"on these {r['default']['data']['seqlen']}-token windows",
        f"(no weight decay, lr {peak['learning_rate']:.0e})".replace("e-0", "e-")]


# --- gpt-2/results/README.md ------------------------------------------------------------------------------------------

def attn_bias_extra_per_layer(folder="backcopy_peak_lr1e2"):
    """attn_bias's share of each layer's attention on its extra key k′ (the tables give the largest layer's)."""
    return [layer["extra_key_share"] for layer in analysis(folder, "attn_bias")["attention_layers"]]


def search_peaks():
    """The variants whose top-1/median passes the criterion in a search configuration, and the largest ratio of each
    that does not."""
    criteria = load("gpt-2/results/emergence/table.json")["criteria"]
    peak, lr1e2 = variant_rows("backcopy_peak"), variant_rows("backcopy_peak_lr1e2")
    largest = {v: max(peak[v]["ratio"], lr1e2[v]["ratio"]) for v in peak}
    return [v for v in peak if largest[v] >= criteria["ratio"]], {v: r for v, r in largest.items()
                                                                    if r < criteria["ratio"]}


def gpt2_results_brief():
    """gpt-2/results/README.md's 'Result in brief'."""
    e = emergence_facts()
    criteria = e["criteria"]
    scale = scale_test_of("gpt2_emergence_bos", "out-emergence-default")
    change, table = backcopy_sink_changes(), variant_rows("backcopy")
    peak, lr1e2 = variant_rows("backcopy_peak"), variant_rows("backcopy_peak_lr1e2")
    extra, (passing, below) = attn_bias_extra_per_layer(), search_peaks()
    assert set(passing) == {"default", "attn_bias", "ca_softmax"}, passing  # the sentence names them
    paper = ("default", "vbias", "cabias", "attn_bias")
    sink, rand = [change[v]["mask_attn_sink"] for v in paper], [change[v]["mask_attn_random"] for v in paper]
    ratios = [r["ratio"] for r in table.values()]
    peak_cons = {r["name"]: r for r in consequences("gpt2_backcopy_peak")["results"]}
    zeroed = [percent_change(peak_cons[v]["interventions"]["sites"][0]["zero"]["ppl"], peak_cons[v]["baseline"]["ppl"])
              for v in ("default", "attn_bias")]
    # gpt-2/results/README.md compares with Gemma 3 270M as its figures then saw it, without its <bos> (the no_bos run
    # reproduces those numbers); the default run, with it, is results/consequences/gemma3_270m/
    gemma = consequences("gemma3_270m/no_bos")["results"][0]
    dominant = gemma["interventions"]["sites"][1]
    return [f"{e['no']} of {e['total']} runs are ruled out and {e['open']} are not re-judged",
            f"at {e['persistence']} or more consecutive checkpoints",
            emergence_streaks(e),
            f"(masking: {scale['baseline']['ppl']:.2f} -> {scale['scale_test']['modes']['mask']['ppl']:.0f}) and BOS's "
            f"own entry stays near {e['bos_ratio']:.0f} x the median",
            f"raises perplexity by {min(sink):.0f}-{max(sink):.0f}% (as many random keys: {min(rand):.0f}-{max(rand):.0f}%)",
            f"weaken the sink ({table['ca_softmax']['first_token_share']:.2f} and "
            f"{table['sigmoid']['first_token_share']:.2f} of the mass against {table['default']['first_token_share']:.2f})"
            f" and do not depend on it (+{change['ca_softmax']['mask_attn_sink']:.0f}% and "
            f"{change['sigmoid']['mask_attn_sink']:.0f}%)",
            f"does not depend on it either (+{change['gated']['mask_attn_sink']:.1f}%)",
            f"({min(extra):.2f}-{max(extra):.2f} of each\nlayer's mass at lr 1e-2",
            f"in softmax variants and ca_softmax alike (" + ", ".join(f"{v} stays below {criteria['ratio']:g}, at "
                                                                      f"{r:.1f} at most" for v, r in below.items()) + ")",
            f"maxima >= {criteria['ratio']:g} on the most frequent position", f"no layer's ratio passes {max(ratios):.1f}",
            f"no variant passes top-1/median {min(ratios):.0f}-{max(ratios):.0f} (the criterion asks for ≥ "
            f"{criteria['ratio']:g})", f"that pass {criteria['ratio']:g}",
            f"changes perplexity by {min(zeroed):.1f}-{max(zeroed):.1f}%, against "
            f"{percent_change(dominant['zero']['ppl'], gemma['baseline']['ppl']):.0f}% for Gemma 3 270M's"]



def emergence_streaks(e) -> str:
    """The four default runs' streaks, as gpt-2/results/README.md lists them."""
    none, = e["streaks"]("out-emergence-rf-default-none")
    seed = [s for s in e["streaks"]("out-emergence-rf-default-none-s2") if s["layer"] == none["layer"]]
    six = e["streaks"]("out-emergence-rf-default-none-l6")
    rope, = e["streaks"]("out-emergence-rf-default-rope")
    return (f"block {none['layer']} on position {none['position']} at {steps(none)} steps (a second seed at "
            + " and ".join(steps(s) for s in seed) + f", a {e['rows']['out-emergence-rf-default-none-l6']['n_layer']}-"
            f"layer model in block {six[0]['layer']} at " + " and ".join(steps(s) for s in six)
            + f"), and with rotary positions block {rope['layer']} on the fixed token at {steps(rope)}")

def gpt2_results_setup():
    """The task, the model and its training, and how the tables are read."""
    task = gpt2_module("data/backcopy/prepare.py", "backcopy_prepare").DEFAULTS
    train, defaults = config("train_backcopy.py"), gpt2_module("train.py", "gpt2_train").DEFAULTS
    stats = gpt2_module("outlier_stats.py", "gpt2_outlier_stats")
    table, default = variant_rows("backcopy"), analysis("backcopy", "default")
    criteria = load("gpt-2/results/emergence/table.json")["criteria"]
    offsets = task["offsets"]
    tokens = train["batch_size"] * train["block_size"] * train["max_iters"]
    return [f"Each sequence is BOS followed by {task['seq_len'] - 1} tokens\nover a {task['vocab']}-token vocabulary. "
            f"{WORDS[task['triggers'] * len(offsets)].capitalize()} trigger tokens in {WORDS[task['triggers']]} groups "
            f"mean \"the next token copies the token\n{', '.join(map(str, offsets[:-1]))} or {offsets[-1]} places before "
            f"me\"", f"(Dirichlet α = {task['alpha']:g} rows)",
            f"writes {task['train_seqs']:,} training sequences and {task['val_seqs']} validation sequences (seed "
            f"{task['seed']})",
            f"{train['n_layer']} layers, {train['n_head']} heads, width {train['n_embd']}, block {train['block_size']}, no "
            f"biases,\n{table['default']['params'] / 1e6:.2f}M parameters. AdamW with lr {train['learning_rate']:.0e} "
            f"decaying to {train['min_lr']:.0e} (cosine, {train['warmup_iters']} warmup steps), weight decay "
            f"{train['weight_decay']:g},\nbetas {defaults['beta1']:g}/{defaults['beta2']:g}, clip "
            f"{defaults['grad_clip']:.1f}, batch {train['batch_size']} × {train['block_size']} tokens, "
            f"{train['max_iters']} steps ({tokens / 1e6:.1f}M tokens), fp32, seed {defaults['seed']}".replace("e-0", "e-"),
            f"-> {table['default']['val_loss']:.4f} for default)",
            f"over {default['n_seqs']} validation sequences ({default['seq_len']} tokens × {train['n_embd']} channels "
            f"each)", f"ratio is ≥ {criteria['ratio']:g}", f"top-key attn > {criteria['sink_share']:g}",
            f"above {stats.SINK_RATE_THRESHOLD:g} (Gu et al.)", "max over layers >= 100 (old)".replace(
                "100", f"{criteria['ratio']:g}")]


def gpt2_results_tables():
    return [line for folder in ("backcopy", "backcopy_peak", "backcopy_peak_lr1e2", "shakespeare_char")
            for line in variant_table(folder)]


def gpt2_results_reading():
    """Per-layer detail and the interpretation of the backcopy table."""
    table, change = variant_rows("backcopy"), backcopy_sink_changes()
    runs = {v: analysis("backcopy", v) for v in ("default", "vbias", "cabias", "attn_bias", "ca_softmax", "sigmoid")}
    per_layer = ", ".join(f"{v} " + " / ".join(f"{layer['ratio']:.1f}" for layer in run["layers"])
                          for v, run in runs.items())
    heads = "; ".join(f"{v} " + " ".join(f"{x:.2f}" for x in runs[v]["attention_layers"][0]["head_first_token_share"])
                      for v in ("default", "attn_bias", "ca_softmax", "sigmoid"))
    second = runs["default"]["layers"][1]
    bias = runs["attn_bias"]["attention_layers"]
    span = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
    cons = {r["name"]: r for r in consequences("gpt2_backcopy")["results"]}
    arrow = lambda v, m="mask_attn_sink": (f"{g4(cons[v]['baseline']['ppl'])} → "  # noqa: E731
                                           f"{g4(cons[v]['interventions']['attention_sinks'][m]['ppl'])}")
    rand = [c["mask_attn_random"] for c in change.values()]
    ratios, losses = [r["ratio"] for r in table.values()], [r["val_loss"] for r in table.values()]
    criteria = load("gpt-2/results/emergence/table.json")["criteria"]
    peak, lr1e2 = variant_rows("backcopy_peak"), variant_rows("backcopy_peak_lr1e2")
    return [f"top-1/median per layer: {per_layer}", f"Mean weight on BOS per head, layer 1:\n{heads}",
            f"layer 2's largest activation sits on {'BOS' if second['top1_token'] == 0 else 'another token'} "
            f"(channel {second['top1_channel']})",
            f"every default head puts about {table['default']['first_token_share']:.2f} of its mass on",
            f"does not form a sink ({table['sigmoid']['first_token_share']:.2f}), and ca_softmax weakens\nit "
            f"({table['ca_softmax']['first_token_share']:.2f}, below the {criteria['sink_share']:g} threshold). vbias "
            f"and cabias keep it ({span([table[v]['first_token_share'] for v in ('vbias', 'cabias')])})",
            f"k′\ntakes only {bias[0]['extra_key_share']:.3f} of the mass in layer 1. In layer 2, k′ does take "
            f"{bias[1]['extra_key_share']:.3f}, and the weight on BOS drops\n(per-head "
            f"{span(bias[1]['head_first_token_share'])}, against default's "
            f"{span(runs['default']['attention_layers'][1]['head_first_token_share'])})",
            f"k′ does take over: {attn_bias_extra_per_layer('backcopy_peak')[0]:.2f} of layer 1's mass at\nlr 3e-2 and "
            f"{min(attn_bias_extra_per_layer()):.2f}-{max(attn_bias_extra_per_layer()):.2f} of each layer's at lr 1e-2",
            f"Perplexity: default {arrow('default')}, vbias {arrow('vbias')}, cabias {arrow('cabias')}, attn_bias "
            f"{arrow('attn_bias')}, but ca_softmax {arrow('ca_softmax')} and sigmoid {arrow('sigmoid')}",
            f"costs every\nvariant {min(rand):.1f}-{max(rand):.1f}%",
            f"keeps a BOS\nsink ({table['gated']['first_token_share']:.3f}) but does not need it ({arrow('gated')}, less "
            f"than its random control {g4(cons['gated']['interventions']['attention_sinks']['mask_attn_random']['ppl'])})",
            f"needs it partly ({arrow('clipped')}, random "
            f"{g4(cons['clipped']['interventions']['attention_sinks']['mask_attn_random']['ppl'])})",
            f"needs it most ({arrow('softmax1')})",
            f"No variant's top-1/median exceeds {max(ratios):.1f}",
            f"but only about {table['default']['ratio']:.0f}× the median. Without the {criteria['ratio']:g}×",
            f"in this column ({min(ratios):.1f}-{max(ratios):.1f})",
            f"Validation losses are comparable ({min(losses):.3f}-{max(losses):.3f})"]


def gpt2_results_search():
    """The activation-outlier search: configuration E (the backcopy_peak default run), its variants, lr 1e-2, natural
    text, what it shows."""
    peak, lr1e2, char = variant_rows("backcopy_peak"), variant_rows("backcopy_peak_lr1e2"), variant_rows("shakespeare_char")
    main, e = variant_rows("backcopy")["default"], analysis("backcopy_peak", "default")
    runs = {v: analysis("backcopy_peak", v) for v in ("attn_bias", "ca_softmax")}
    top = lambda run: run["layers"][run["summary"]["max_ratio_layer"] - 1]  # noqa: E731
    where = lambda run: "on BOS" if top(run)["top1_token"] == 0 else "elsewhere"  # noqa: E731
    heads1, heads2 = (e["attention_layers"][i]["head_first_token_share"] for i in (0, 1))
    late = [layer["first_token_share"] for layer in e["attention_layers"][2:]]
    span = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
    criteria = load("gpt-2/results/emergence/table.json")["criteria"]
    chosen = [v for v in ("default", "attn_bias", "sigmoid")]
    last = analysis("backcopy_peak_lr1e2", "ca_softmax")
    cons = {r["name"]: r for r in consequences("gpt2_backcopy_peak")["results"]}
    zeroed = [percent_change(cons[v]["interventions"]["sites"][0]["zero"]["ppl"], cons[v]["baseline"]["ppl"])
              for v in ("default", "attn_bias")]
    sinks = cons["default"]["interventions"]["attention_sinks"]["mask_attn_sink"]
    text, train, compare = config("train_shakespeare_char.py"), config("train_backcopy.py"), \
        gpt2_module("compare.py", "gpt2_compare").DEFAULTS
    defaults = gpt2_module("train.py", "gpt2_train").DEFAULTS
    characters = text["batch_size"] * text["block_size"] * text["max_iters"]
    shares = [r["first_token_share"] for r in char.values()]
    return [
        f"E's layer {e['summary']['max_ratio_layer']} has top-1 {top(e)['top1']:,.0f} and median {top(e)['median']:,.0f}"
        f", against\nabout {main['top1']:.0f} and {main['median']:.0f} in the main configuration",
        f"In E the peak (layer {e['summary']['max_ratio_layer']}) is **after** the sinks (layer 1: "
        f"{e['attention_layers'][0]['first_token_share']:.2f}, heads {span(heads1)}; layer 2: "
        f"{WORDS[sum(x > 0.5 for x in heads2)]} heads " + " and ".join(f"{x:.2f}" for x in heads2 if x > 0.5)
        + f"). Layers 3 and 4 put only {span(late)} of their mass on BOS",
        f"(in E, layers 3-4 put only {span(late)} of their mass on BOS)",
        f"outliers yes ({peak['default']['ratio']:.1f} in layer {peak['default']['ratio_layer']}, {where(e)}, channel "
        f"{top(e)['top1_channel']}) and sink yes ({peak['default']['first_token_share']:.3f} on BOS in layer 1).\nThe "
        f"ratio clears the threshold by only {peak['default']['ratio'] - criteria['ratio']:.1f} %",
        f"comparable val loss ({peak['attn_bias']['val_loss']:.3f}, "
        f"{peak['attn_bias']['val_loss'] - peak['default']['val_loss']:.3f} nats above default). The sink leaves the "
        f"tokens: k′ takes\n{peak['attn_bias']['extra_key_share']:.3f} of the mass and no token gets more than "
        f"{peak['attn_bias']['top_key_share']:.3f}",
        f"({peak['attn_bias']['ratio']:.1f}, layer {peak['attn_bias']['ratio_layer']},\n{where(runs['attn_bias'])}, "
        f"channel {top(runs['attn_bias'])['top1_channel']} as well)",
        f"**ca_softmax**: {peak['ca_softmax']['ratio']:.1f} (layer {peak['ca_softmax']['ratio_layer']}, "
        f"{where(runs['ca_softmax'])}) and no sink, but "
        f"{peak['ca_softmax']['val_loss'] - peak['default']['val_loss']:.2f} nats worse val loss",
        f"**sigmoid**: {peak['sigmoid']['ratio']:.1f} and no sink, but training is unstable at this learning rate (val "
        f"loss {log_val_loss('peak-sigmoid', 2000):.3f} at step 2000,\n{log_val_loss('peak-sigmoid', 2500):.3f} at step "
        f"2500; compare.py: {peak['sigmoid']['val_loss']:.3f})",
        "(" + ", ".join(f"{lr1e2[v]['val_loss']:.3f}" for v in chosen) + f"), and default is the\nonly one with a sink "
        f"({lr1e2['default']['first_token_share']:.3f} on BOS in layer 1). attn_bias puts "
        + " / ".join(f"{x:.3f}" for x in attn_bias_extra_per_layer()) + " of its layers'\nmass on k′ (the table's "
        f"{lr1e2['attn_bias']['extra_key_share']:.3f} is layer {1 + attn_bias_extra_per_layer().index(max(attn_bias_extra_per_layer()))}'s) "
        f"and at most {lr1e2['attn_bias']['top_key_share']:.3f} on any token",
        "where there are peaks, " + ", ".join(search_peaks()[0][:-1]) + f" and {search_peaks()[0][-1]} have them ("
        + ", ".join(f"{v} stays below {criteria['ratio']:g}" for v in search_peaks()[1]) + ")",
        f"({min(lr1e2[v]['ratio'] for v in chosen):.1f}-{max(lr1e2[v]['ratio'] for v in chosen):.1f}; sigmoid's is the "
        "largest)",
        f"ca_softmax still trains worse ({lr1e2['ca_softmax']['val_loss']:.3f}) and has the largest peak of any run: "
        f"{lr1e2['ca_softmax']['ratio']:.1f}, on BOS, in the last\nlayer, channel {last['layers'][-1]['top1_channel']}",
        f"val loss {log_val_loss('out-lr1e2-ca_softmax-seed7'):.3f}",
        f"{text['n_layer']} layers x {text['n_embd']}, block {text['block_size']}, weight decay {text['weight_decay']:g}, "
        f"lr {text['learning_rate']:.0e} cosine to {text['min_lr']:.0e}, {text['max_iters']:,} steps "
        f"({characters / 1e6:.0f}M\ncharacters".replace("e-0", "e-"),
        f"the first position gets {100 * min(shares):.0f}-{100 * max(shares):.0f}% of the mass, no key more than "
        f"{100 * max(r['top_key_share'] for r in char.values()):.0f}%, and the ratio\nis "
        f"{min(r['ratio'] for r in char.values()):.0f}-{max(r['ratio'] for r in char.values()):.0f}",
        f"predicts for {characters / 1e6:.0f}M tokens",
        f"default {peak['default']['ratio']:.1f} and attn_bias {peak['attn_bias']['ratio']:.1f} at lr 3e-2, ca_softmax "
        f"{lr1e2['ca_softmax']['ratio']:.1f} at lr 1e-2", f"(where default has {lr1e2['default']['ratio']:.1f})",
        f"costs default and attn_bias {min(zeroed):.1f}-{max(zeroed):.1f}% perplexity",
        f"sends default from {cons['default']['baseline']['ppl']:.1f} to\n{g4(sinks['ppl'])}",
        f"falls from\n{peak['default']['ratio']:.1f} to", f"against {peak['default']['first_token_share']:.3f}), at val "
        f"loss\n{log_val_loss('out-peakwd-default'):.3f}; ca_softmax falls from {peak['ca_softmax']['ratio']:.1f} to",
        f"(val loss {log_val_loss('out-peakwd-ca_softmax'):.3f}:",
        f"the study's criterion (default ≥ {criteria['ratio']:g}", f"top-1/median ≥ {criteria['ratio']:g} together",
        f"the ratios pass {criteria['ratio']:g}", f"{defaults['n_layer']} layers x {defaults['n_embd']}, OpenWebText)",
        f"({train['eval_iters']} batches)", f"compare.py's own loss evaluation ({compare['eval_iters']} batches)",
        f"In the wider {config('train_backcopy_peak.py')['n_layer']}-layer model"]


def gpt2_results_speed():
    """The Speed section: the committed bench run of the variants, its settings and ratios."""
    b = load("bench/results/gpt2_variants.json")
    s, ratios = b["settings"], b["variant_vs_default"]
    return [f"CPU, {b['threads']} thread, {s['n_layer']} layers × {s['n_embd']} wide, {s['n_head']} heads, T = "
            f"{s['block_size']}, batch {s['batch_size']}; median of {s['repeats']} interleaved repeats of {s['steps']} steps",
            f"- default / plain SDPA GPT: {b['default_vs_plain_sdpa']:.2f}.",
            "- Each variant / default: " + ", ".join(f"{v} {r:.2f}" for v, r in ratios.items() if v != "default") + "."]


def pilot_val_losses():
    """The pilots' val loss column: the last evaluation in each pilot's committed training log."""
    return [f"| {log_val_loss(f'p{name}'):.3f} |" for name in "ABCDE"]


CLAIMS = [  # (README, function returning its claims rendered from committed results)
    ("README.md", gemma_consequences), ("bench/README.md", capture_bench), ("bench/README.md", variants_bench),
    ("README.md", figures_time), ("README.md", backcopy_sinks), ("README.md", scale_tests),
    ("bench/README.md", scale_bench), ("bench/README.md", bench_constants),
    ("README.md", emergence), ("README.md", emergence_figures), ("README.md", attn_bias_sink), ("README.md", gemma_figures),
    ("README.md", gemma_windows), ("README.md", scale_test_reading), ("bench/README.md", capture_bench_setup),
    ("bench/README.md", capture_bench_load),
    ("bench/README.md", scale_bench_setup), ("README.md", compression_valley), ("README.md", relocation), ("README.md", code_constants),
    ("README.md", check_tolerances), ("README.md", cross_model), ("README.md", calibration_picture),
    ("README.md", bos_headroom), ("README.md", bos_table), ("README.md", bos_reading),
    ("gpt-2/README.md", gpt2_summary),
    ("results/consequences/README.md", consequences_gemma), ("results/consequences/README.md", consequences_backcopy),
    ("results/consequences/README.md", consequences_peak),
    ("gpt-2/results/README.md", gpt2_results_tables), ("gpt-2/results/README.md", gpt2_results_brief),
    ("gpt-2/results/README.md", gpt2_results_setup), ("gpt-2/results/README.md", gpt2_results_reading),
    ("gpt-2/results/README.md", gpt2_results_search), ("gpt-2/results/README.md", pilot_val_losses),
    ("gpt-2/results/README.md", gpt2_results_speed), ("gpt-2/results/emergence/README.md", emergence_readme),
]

EVERY = "*"  # a STATIC entry for every README
STATIC = [  # (README, regex over the text with its whitespace collapsed, why its numbers come from no result)
    (EVERY, r"Gemma 3 270M|Gemma 3\b|Gemma 2/3|gemma3-270m|LLaMA-2-7B|llama2-7b-2layers|llama-30x576|"
     r"SmolLM2-135M-Instruct", "model names"),
    (EVERY, r"3-D|top-1/2/3|\b[01]-based|2-core|2 cores", "names: plot kinds, statistics, indexing, the machine"),
    (EVERY, r"1st-token", "a column name"),
    (EVERY, r"written before 2026-12-07|count(?:s|ing)? (?:layers|blocks)(?: \(blocks\)| and layers)? from [01]|"
     r"counted from 1|counting from 1|counts from 0|\(layer \+ 1\)|0\.\.n_layer-1|\(-1, the default|layer 5 \(the sixth\)|"
     r"the paper's layer 2 of 32, counted from 1: layer 1 here",
     "the layer numbering (lib/layer_numbering.py), the date it changed, and the paper's 1-based layer"),
    (EVERY, r"\b[48]-bit|8- and 4-bit|8 bits|50% (?:smallest|magnitude pruning|pruning|pruned)",
     "the compression methods (lib/compression.py)"),
    (EVERY, r"BOS in about 97% of the windows",
     "history: counted when the run was made; the JSON keeps how many sink keys a window has, not which"),
    ("README.md", r"ICLR 2025|arXiv 2502\.06415", "the paper's venue and arXiv id"),
    ("README.md", r"float16 \(65,504\)|\(exit status 2\)|at position 0",
     "float16's largest finite value (torch.finfo), the exit status of a user error (lib/errors.py), the first position"),
    (EVERY, r"## Corrections .*?(?=## |$)", "history: what earlier versions of the page said, each beside what the "
     "committed result it names says (the sentences they correct are rendered from those results above)"),
    ("README.md", r"the paper's 4096-token setting", "the paper's calibration length"),
    ("README.md", r"such as 897\.548 in its fifth digit, which can carry a printed 897\.5 across to 897\.6",
     "an illustration of rounding across a boundary (a value of the default model's figures, as the re-check saw it)"),
    ("gpt-2/README.md", r"0\.05% of the documents become val \(seed 2357\)|\(position 0, or|queries 1\.\.T-1",
     "nanoGPT's OpenWebText split (data/openwebtext/prepare.py); the first position; the queries with a choice"),
    ("gpt-2/results/README.md", r"\(Gaussian 0\)", "excess kurtosis' value for a Gaussian"),
    ("README.md", r"Queipo-de-Llano et al\. 2025|1 for orthogonal tokens of one\s?norm, 0 for rank one|exceeds 0\.3\. The valley|"
     r"below 0\.5 x the largest, its depth 1 - lowest|by the 0\.5\s?x rule|passes 0\.3",
     "a citation; the entropy's range and the valley's definition (lib/outliers.py, lib/paper_figures/valley.py)"),
    ("README.md", r"Python 3\.10\+|torch pinned to 2\.13\.0|transformers 4\.57\.x and 5\.x",
     "supported versions (pyproject.toml, setup.sh)"),
    ("README.md", r"models at 4096 tokens|from 4 tokens|query 0 can only attend to key 0",
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
    ("results/consequences/README.md", r"Gaussian: 3|a Gaussian's 3", "a Gaussian's kurtosis"),
    ("results/consequences/README.md", r"the 262k-word LM head", "the default model's vocabulary (262,144 tokens)"),
    ("results/consequences/README.md", r"the seventh digit", "the jitter's size"),
    ("results/consequences/README.md", r"\(cumulative attention >= 0\.1 x seqlen and >= 2 x the uniform baseline\)|"
     r"about 1\.5 CPU-hours|145\.5 in the first run", "history: the earlier rule, an estimate, a replaced run"),
    ("results/consequences/README.md", r"GPT-2 124M trained on OpenWebText: 8-bit absmax 93 \(default\) vs 29 "
     r"\(context-aware scaling\) perplexity, 50% sparsity 7,235 vs 39", "the paper's numbers, as quoted"),
    ("gpt-2/results/README.md", r"about 1-2B training tokens for a 60M model|about 10\^7 tokens in a few minutes|"
     r"≥ 1B tokens for a 60M-parameter model|at least a 6-layer model", "the published scale of sink formation; "
     "an estimate"),
    ("gpt-2/results/README.md", r"Guo et al\. 2024|\(Gu et al\.\)", "citations"),
    ("gpt-2/results/README.md", r"retrained on 2026-11-25|val loss 1\.5757 ->",
     "history: the retraining's date and the first training's loss (its checkpoints are not committed)"),
    ("gpt-2/results/README.md", r"queries 1\.\.T-1|position 0|In layer 1, every default head|\"\+1\" is a zero key",
     "definitions: the queries with a choice, the first position, the layer the shares above are of, softmax1"),
    ("gpt-2/results/README.md", r"How the ratio grew here: 8\.2 → 8\.6 → 9\.0 at 1k/2k/3k steps in this configuration, "
     r"and 10 → 14 from 1k to 2k steps in a one-offset, block-32 pilot",
     "history: intermediate checkpoints and a pilot, not committed"),
    ("gpt-2/results/README.md", r"1\. Guo-style back-copy.*?no sink yet\.",
     "history: the runs tried before this configuration (not committed)"),
    ("gpt-2/results/README.md", r"2 cores shared with three other jobs, 1 thread per run, torch 2\.13\.0 CPU\. Each "
     r"variant took about 3 CPU-minutes; wall time was 6-15 minutes each under load, with two runs side by side\. "
     r"compare\.py took 16 s\.|15-25 minutes per variant|about 30 minutes per variant",
     "history: machine, versions and times of the runs"),
    ("gpt-2/results/README.md", r"ratio at 1k / 2k / 3k steps|\| A \| no BOS.*?\| 1\.528 \||"
     r"\| B \| weight decay 0.*?\| 1\.605 \||\| C \| 3 layers.*?\| 1\.602 \||\| D \| 3 layers.*?\| 1\.615 \||"
     r"\| E \| 4 layers.*?\| 1\.622 \|", "history: the pilots' settings and analyses; their checkpoints are not "
     "committed (the val losses are checked against their logs)"),
    ("gpt-2/results/README.md", r"get 0\.07-0\.22 each|plateaued at about 63|327\.1 in layer 4 on BOS \(channel 69\), "
     r"largest first-token share 0\.30|84 characters, 4\.6M training characters|it was 9\.0 at 1,000 steps and 13\.0 "
     r"at 3,000|to 45\.3|\(0\.913 of layer 1's mass|to 18\.9",
     "history: analyses of pilot and follow-up checkpoints that are not committed; the prepared data's size"),
    ("gpt-2/results/README.md", r"at lr 1e-2|at lr 3e-2|lr 1e-2 \(`backcopy_peak_lr1e2/`\)|constant lr 1e-2:|"
     r"with weight decay 0\.1", "the learning rates and weight decay that name the configurations"),
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


def test_the_emergence_page_states_no_verdict_its_table_lacks():
    """A run the table leaves open is not called reproduced (or lost) anywhere on the emergence page."""
    verdicts = {r["over_run"]["verdict"] for r in emergence_facts()["rows"].values()}
    text = flat("gpt-2/results/emergence/README.md")
    if "yes" not in verdicts:
        stated = re.findall(r"\*\*reproduced by the criterion[^*]*\*\*", text)
        assert not stated, stated
