"""The measured numbers of the hand-written pages, read from the committed files and formatted as the pages write
them: each function returns {field: text} for one topic, and VALUES names, per page, the functions its template's
fields come from (lib/templates.py fills them, `python -m lib.pages` writes the pages). A new number on a page is a
{{field}} in its template and an entry in one of its functions. A number of a rule or a default is read from the code
that applies it (a page that drifts from its code misleads as much as one that drifts from a result). Where a
sentence states something of the results beyond its numbers, its function raises ValueError once the results no
longer bear it out. Nothing of gpt-2/ is imported.
"""
import math
import re
import textwrap
from pathlib import Path

from lib import analysis, bos_effect, check, cli, evaluation, gpt2_pages, outliers
from lib import cross_model as cm
from lib.gpt2_pages import load, span
from lib.layer_numbering import as_zero_based
from lib.paper_figures import FIGURES

WIDTH = 115  # the pages' line width, where a value is a whole wrapped paragraph or list item
WORDS = gpt2_pages.WORDS


# --- the committed files, and numbers as the pages write them ---------------------------------------------------------

def consequences(root: Path, folder: str) -> dict:
    """The consequences.json of a folder under results/consequences/."""
    return load(root, f"results/consequences/{folder}/consequences.json")


def scale_test_of(root: Path, folder: str, name: str) -> dict:
    """One model's result in a --scale-test run of consequences.py, its layers 0-based whatever the file counts."""
    return next(r for r in as_zero_based(consequences(root, f"{folder}/scale_test"))["results"] if r["name"] == name)


def ppl(x: float) -> str:
    """A perplexity as the pages write it: one decimal, or mantissa and exponent when huge (5.3e10)."""
    if x < 1e4:
        return f"{x:.1f}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def nats(entry: dict) -> str:
    """An NLL change with its paired standard error: +0.293 ± 0.013."""
    return f"{entry['nll_change']:+.3f} ± {entry['nll_change_stderr']:.3f}"


def wrapped(text: str, first: str = "", rest: str = "") -> str:
    """A paragraph or list item filled to the pages' line width."""
    return textwrap.fill(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
                         break_long_words=False)


def require(holds: bool, statement: str) -> None:
    """Stop where the results no longer bear out what a page's sentence says around its numbers."""
    if not holds:
        raise ValueError(f"the page says {statement}; the committed results no longer do: rewrite the template")


def backcopy_sink_changes(root: Path) -> dict:
    """Perplexity change (%) of each gpt-2 variant when its attention sinks, or as many random keys, are masked."""
    change = {}
    for r in consequences(root, "gpt2_backcopy")["results"]:
        masked = r["interventions"]["attention_sinks"]
        change[r["name"]] = {k: gpt2_pages.percent_change(v["ppl"], r["baseline"]["ppl"]) for k, v in masked.items()}
    return change


def cross_model_data(root: Path) -> list[dict]:
    """Each offline model's data for lib.cross_model, from the committed figure and consequences JSONs of the models
    results/figures/summary.json lists."""
    rows = load(root, "results/figures/summary.json")["models"]
    return [cm.model_data(root / "results/figures" / r["model"], r, root / "results/consequences") for r in rows]


# --- README.md --------------------------------------------------------------------------------------------------------

def model_findings(root: Path) -> dict:
    """The sentence per offline model under the cross-model picture (lib.cross_model.finding), as list items."""
    data = cross_model_data(root)
    require({d["model"] for d in data} == {"gemma3_270m", "smollm2_135m"}, "the two offline models")
    return {"model_findings": "\n".join(wrapped(cm.finding(d), "- ", "  ") for d in data)}


def emergence_verdicts(root: Path) -> dict:
    """The emergence study's ratio criterion and how many runs its logs rule out or leave open
    (gpt-2/results/emergence/table.json)."""
    e = gpt2_pages.emergence(root)
    return {"emergence_ratio": f"{e['ratio']:g}", "runs_ruled_out": str(e["no"]), "runs": str(e["total"]),
            "runs_open": str(e["open"])}


# --- docs/api.md, docs/figures.md: rules, defaults, tolerances --------------------------------------------------------

def outlier_rules(root: Path) -> dict:
    """The paper's rules and Massive Activations' (lib/outliers.py, lib/analysis.py)."""
    return {"paper_factor": f"{outliers.DEFAULT_OUTLIER_FACTOR:g}", "massive_abs": f"{analysis.MASSIVE_ABS:g}",
            "massive_factor": f"{analysis.MASSIVE_FACTOR:g}", "attention_factor": f"{analysis.ATTENTION_FACTOR:g}"}


def calibration_defaults(root: Path) -> dict:
    """The figures' token rule and their sample counts on a CPU and the paper's (lib/analysis.py, lib/cli.py)."""
    (act_n, act_len), (att_n, att_len) = cli.CPU_DEFAULTS["activations"], cli.CPU_DEFAULTS["attention"]
    return {"token_factor": f"{analysis.TOKEN_FACTOR:g}", "cpu_activation_sequences": str(act_n),
            "cpu_activation_tokens": str(act_len), "cpu_attention_sequences": str(att_n),
            "cpu_attention_tokens": str(att_len), "paper_activation_sequences": str(cli.PAPER_SAMPLES["activations"]),
            "paper_attention_sequences": str(cli.PAPER_SAMPLES["attention"])}


def check_tolerances(root: Path) -> dict:
    """The re-check's tolerance and W8A8's jittered runs (lib/check.py, lib/evaluation.py)."""
    runs = evaluation.JITTER_RUNS
    return {"check_rtol": f"{check.RTOL:g}", "jitter_runs": str(runs), "jittered_runs": str(runs - 1),
            "jitter": f"1 ± 2^{math.log2(evaluation.JITTER):.0f}"}


# --- docs/figures.md --------------------------------------------------------------------------------------------------

def figures_time(root: Path) -> dict:
    """How long the committed figures of the default model took, as their index page records it."""
    took = re.search(r"the last run took (\d+) s", (root / "results/figures/gemma3_270m/index.md").read_text())
    return {"figures_seconds": took.group(1)}


def prompt_outliers(root: Path) -> dict:
    """The default model on the Summer prompt: the first outlier, the dominant one, the sink of the layer after."""
    layer = load(root, "results/figures/gemma3_270m/existence_activation_outliers_layer.json")
    attention = load(root, "results/figures/gemma3_270m/existence_attention_outliers.json")
    (token, channel, value), = layer["outlier_entries"]
    d = layer["dominant_outlier"]
    require(d["token"] == token and attention["outlier_keys"] == [token], "one token holds the outliers and the sink")
    return {"prompt_token": layer["tokens"][token], "first_outlier_value": f"{value:,.0f}",
            "first_outlier_channel": str(channel), "first_outlier_layer": str(layer["layer"]),
            "first_outlier_over_median": f"{layer['max'] / layer['median']:,.0f}",
            "prompt_massive_from_layer": str(d["flagged_layers"][0]), "prompt_massive_channel": str(d["channel"]),
            "prompt_massive_value": f"{d['abs']:,.0f}", "prompt_massive_layer": str(d["layer"]),
            "prompt_massive_over_median": f"{d['over_median']:,.0f}", "prompt_sink_layer": str(attention["layer"])}


def bos_headroom(root: Path) -> dict:
    """The float range paragraph: the default model's largest |h| on the prompt against float16's."""
    room = load(root, "results/figures/gemma3_270m/existence_activation_outliers_layer.json")["headroom"]
    require(not room["fits"]["float16"] and room["fits"]["bfloat16"], "float16 overflows and bfloat16 holds it")
    return {"headroom_value": f"{room['largest_abs']:,.0f}", "headroom_channel": str(room["channel"]),
            "headroom_layer": str(room["layer"]),
            "headroom_share": f"{room['share_of_largest_finite']['float16']:.2f}"}


def emergence_peak_figures(root: Path) -> dict:
    """The figure suite on the emergence run with the systematic outlier. Its files count layers from 1
    (`layers_are` "1-based"); the sentence gives them 0-based, as the page counts."""
    folder = "gpt-2/results/emergence/figures/out-emergence-rf-default-none"
    born, spread, gone = (as_zero_based(load(root, f"{folder}/{name}.json")) for name in
                          ("lifecycle_emergence", "lifecycle_spread", "lifecycle_disappearance"))
    ratios = spread["head_outlier_ratio"]
    values = spread["per_token"][f"v head {spread['head']} (L2)"]
    smallest = min(range(len(values)), key=values.__getitem__) == born["token"]
    steps = gone["values_at_layer"]
    require(len(ratios) == 2 and min(ratios) > 0.5, "both heads of the reading block read the peak")
    require(abs(steps["MLP adds"]) > 10 * abs(steps["attention adds"]), "the block's MLP cancels it (10 x attention)")
    return {"peak_block": str(born["layer"]), "peak_unit": str(born["neuron"]), "peak_position": str(born["token"]),
            "peak_reader_block": str(spread["layer"]),
            "peak_value_rank": "the smallest" if smallest else "not the smallest",
            "peak_canceller_block": str(gone["layer"])}


# --- docs/findings.md -------------------------------------------------------------------------------------------------

def calibration_picture(root: Path) -> dict:
    """The per-layer figure's sentence: the channels and the tokens of the calibration windows' outliers."""
    layer = load(root, "results/figures/gemma3_270m/pos_activation_outliers_layer.json")
    valley = load(root, "results/figures/gemma3_270m/pos_compression.json")
    channels = {c for r in layer["layers"] if r["layer"] in layer["outlier_layers"] for c in r["outlier_channels"]}
    c = layer["categories"]
    largest = {w["token"] for w in valley["windows"]}
    require({w["category"] for w in valley["windows"]} == {"initial_token"} and len(largest) == 1,
            "the largest outlier of every window sits on the first token")
    return {"outlier_channels": WORDS[len(channels)], "flagged_tokens": str(c["count"]),
            "delimiter_share": f"{c['strong_delimiter']:.0%}", "weak_semantic_share": f"{c['weak_semantic']:.0%}",
            "first_token_share": f"{c['initial_token']:.0%}", "window_outlier_token": largest.pop()}


def attention_picture(root: Path) -> dict:
    """The sentence above the default model's attention figure: the sink of the layer after the outliers."""
    attention = load(root, "results/figures/gemma3_270m/existence_attention_outliers.json")
    token, = attention["outlier_keys"]
    return {"sink_token": attention["tokens"][token], "sink_share": f"{attention['first_token_share']:.2f}"}


def pattern_table(root: Path) -> dict:
    """Each model against the paper's pattern (lib.cross_model), and the numbers of its criteria."""
    return {"pattern_table": "\n".join(cm.comparison_table(cross_model_data(root))),
            "top_columns": str(cm.TOP_COLUMNS), "early_share": f"{cm.EARLY:.0%}",
            "late_share": f"{1 - cm.LATE:.0%}", "significant": f"{cm.SIGNIFICANT:g}"}


def compression_valley(root: Path) -> dict:
    """The compression valley paragraph, from the default model's pos_compression.json with and without the BOS."""
    act_n, act_len = cli.CPU_DEFAULTS["activations"]  # the valley's windows: the CPU's calibration default
    v, no_bos = (load(root, f"results/figures/{f}/pos_compression.json") for f in ("gemma3_270m", "no_bos/gemma3_270m"))
    rows, found = v["layers"], v["windows"]
    tokens = {(w["token"], w["channel"], w["layer"]) for w in found}
    require({w["position"] for w in found} == {0} and len(tokens) == 1, "one token at position 0 in every window")
    (token, channel, at), = tokens
    values = sorted(w["value"] for w in found)
    peak = max(rows[1:], key=lambda r: r["norm_ratio_first"])
    middle = [r for r in rows[1:] if r["layer"] <= v["outlier_layers"][-1]]  # after the first layer, to the last flagged
    top_rate = max(r["sink_rate_first"] for r in rows)
    raw = [r["entropy"] for r in rows]
    valley = v["valley"]["entropy"]
    lowest = v["valley"]["entropy_centred"]["lowest_layer"]
    by_layer = {r["layer"]: r for r in rows}
    mid = [by_layer[layer] for layer in range(lowest - 3, lowest + 1)]  # the centred valley's lowest layer, 3 before
    require(all(r["entropy_centred_without_outliers"] > r["entropy_centred"] for r in mid),
            "leaving the outlier tokens out raises the centred entropy")
    require(min(r["layer"] for r in rows if r["sink_rate_first"] == top_rate) > peak["layer"],
            "the first token's sink rate peaks after its norm")
    no_bos_rates = [r["sink_rate_first"] for r in no_bos["layers"]]
    require(not any(no_bos_rates) and {w["category"] for w in no_bos["windows"]} == {"strong_delimiter"}
            and {w["token"] for w in no_bos["windows"]} == {"'"},
            "without the BOS every window's outlier sits on an apostrophe and the first token never sinks")
    return {"valley_windows": str(act_n), "valley_tokens": str(act_len), "valley_token": token,
            "valley_channel": str(channel),
            "valley_value": f"{values[0]:,.0f}" + (" in every window" if len({w["value"] for w in found}) == 1 else ""),
            "valley_layer": str(at), "first_norm": f"{rows[0]['norm_ratio_first']:.1f} x the median at layer {rows[0]['layer']}",
            "middle_norms": span([r["norm_ratio_first"] for r in middle], ".1f"),
            "middle_layers": f"{middle[0]['layer']}-{middle[-1]['layer']}", "norm_peak_layer": str(peak["layer"]),
            "top_sink_rate": f"{top_rate:.2f}",
            "top_sink_rate_layers": ", ".join(str(r["layer"]) for r in rows if r["sink_rate_first"] == top_rate),
            "entropy_range": f"{min(raw):.3f} to {max(raw):.3f}", "valley_first_layer": str(valley["layers"][0]),
            "valley_later_layers": ", ".join(map(str, valley["layers"][1:])),
            "valley_depth": f"{valley['depth']:.2f}",
            "centred_entropy": ", ".join(f"{r['entropy_centred']:.3f}" for r in mid),
            "centred_layers": f"{mid[0]['layer']}-{mid[-1]['layer']}",
            "centred_valley_layers": ", ".join(map(str, v["valley"]["entropy_centred"]["layers"])),
            "centred_valley_depth": f"{v['valley']['entropy_centred']['depth']:.2f}", "centred_lowest_layer": str(lowest),
            "centred_without_outliers": ", ".join(f"{r['entropy_centred_without_outliers']:.3f}" for r in mid),
            "no_bos_first_sink_rate": f"{max(no_bos_rates):g}"}


def relocation(root: Path) -> dict:
    """The relocation paragraph, from the default model's lifecycle_relocation.json."""
    d = load(root, "results/figures/gemma3_270m/lifecycle_relocation.json")
    w, prompt, after = d["windows"], d["prompt_before"], d["prompt_after"]
    every = w["conditions"]["every_layer"]
    hidden, control = every["outliers"], every["control"]
    base = w["baseline"]["where"]["massive"]
    n = w["windows"]
    others = [len(k) - 1 for k in w["outlier_tokens"]]
    require(all(k[0] == 0 for k in w["outlier_tokens"]) and list(w["conditions"]) == ["every_layer"]
            and w["first_sink_layer"] == 0 and prompt["massive_token"] == after["massive_token"] == 0,
            "the first token carries the outliers, the sink starts at layer 0 and every layer is masked")
    no_bos = load(root, "results/figures/no_bos/gemma3_270m/lifecycle_relocation.json")["windows"]
    require(hidden["nll_change"] - control["nll_change"] > 2 * math.hypot(hidden["nll_change_stderr"],
                                                                          control["nll_change_stderr"]),
            "hiding the <bos> costs more than hiding as many random tokens (by 2 standard errors of the difference)")
    early = no_bos["conditions"]["before_sink_layer"]["outliers"]
    no_bos_base = no_bos["baseline"]["where"]["massive"]
    require(early["moved"]["massive_moved"] == 1 and early["where"]["massive"]["channel"] == no_bos_base["channel"]
            and abs(early["where"]["massive"]["value_median"] / no_bos_base["value_median"] - 1) < 0.1,
            "without the <bos>, hiding the outlier tokens early moves the massive activation in every window to a "
            "token of the same channel and size (within 10%)")
    return {"relocation_windows": str(n), "relocation_tokens": str(w["seqlen"]), "later_tokens": span(others, "d"),
            "relocation_channel": str(base["channel"]),
            "no_bos_relocation_channel": str(no_bos["baseline"]["where"]["massive"]["channel"]),
            "first_sink_layer": str(w["first_sink_layer"]),
            "massive_stays": f"{n - round(hidden['moved']['massive_moved'] * n)} of {n}",
            "massive_before": f"{base['value_median']:,.0f}",
            "massive_after": f"{hidden['where']['massive']['value_median']:,.0f}",
            "relocation_massive_layer": str(base["largest_layer"]),
            "sink_moves": f"{round(hidden['moved']['sink_moved'] * n)} of {n}",
            "hidden_cost": nats(hidden), "control_cost": nats(control),
            "prompt_massive_value": f"{prompt['massive_value']:,.0f}",
            "prompt_massive_layer": str(prompt["massive_layer"]),
            "prompt_sink": f"{after['sink_token_text']!r} ({after['sink_token']})"}


def bos_table(root: Path) -> dict:
    """What the missing BOS changes on the default model: the table lib/bos_effect.py renders into summary.md, from
    the default consequences run's `bos_removed` and the figures with and without the BOS."""
    row = next(r for r in load(root, "results/figures/summary.json")["models"] if r["model"] == "gemma3_270m")
    found = bos_effect.table(consequences(root, "gemma3_270m")["results"][0], root / "results/figures/gemma3_270m")
    *table, blank, caption = bos_effect.markdown(row["title"], found)
    return {"bos_table": "\n".join(table + [blank, wrapped(caption)])}


def bos_reading(root: Path) -> dict:
    """What the page reads off the BOS table: where the massive activation and the sink go without the <bos>, the
    perplexity over the same targets, and the relocation experiment with and without the <bos>."""
    r = consequences(root, "gemma3_270m")["results"][0]
    removed, base = r["bos_removed"], r["baseline"]
    where, before = removed["where"], base["where"]
    texts = removed["token_text"]["without"]
    delimiters = {"'": ("an", "apostrophe"), ".": ("a", "full stop"), ",": ("a", "comma")}
    require(set(texts["massive"]) | set(texts["sink"]) <= set(delimiters),
            "the massive activation and the sink move to delimiters")
    massive = sorted({" ".join(delimiters[t]) for t in texts["massive"]})
    sinks = {delimiters[t] for t in texts["sink"]}
    require(len(sinks) == 1, "the sink moves to one kind of delimiter")
    (article, sink), = sinks
    require(where["massive"]["channel"] == before["massive"]["channel"]
            and where["massive"]["largest_layer"] == before["massive"]["largest_layer"]
            and abs(where["massive"]["value_median"] / before["massive"]["value_median"] - 1) < 0.1,
            "the massive activation keeps its channel and layer and nearly its size (within 10%)")
    relocated = load(root, "results/figures/gemma3_270m/lifecycle_relocation.json")["windows"]
    no_bos = load(root, "results/figures/no_bos/gemma3_270m/lifecycle_relocation.json")["windows"]
    hidden = relocated["conditions"]["every_layer"]["outliers"]
    successor = no_bos["conditions"]["every_layer"]["outliers"]["moved"]["massive_moved"]
    peak = {k: max(w["per_layer"], key=lambda row: row["sink_share_median"])["sink_share_median"]
            for k, w in (("with", before), ("without", where))}
    require(0.1 < hidden["nll_change"] / removed["nll_change"] < 10, "hiding the <bos> costs the same order as "
            "removing it (within a factor of 10)")
    return {"no_bos_massive_tokens": " or ".join(massive), "no_bos_sink_article": article, "no_bos_sink_token": sink,
            "no_bos_sink_share": f"{peak['without']:.2f}", "bos_sink_share": f"{peak['with']:.2f}",
            "bos_ppl": ppl(base["ppl"]), "no_bos_ppl": ppl(removed["ppl"]), "no_bos_cost": nats(removed),
            "bos_hidden_cost": nats(hidden),
            "successor_windows": f"{round(successor * no_bos['windows'])} of {no_bos['windows']}"}


# --- docs/consequences.md ---------------------------------------------------------------------------------------------

def gemma_consequences(root: Path) -> dict:
    """The default model's perplexity under compression and under the interventions on its outliers and sinks."""
    r = consequences(root, "gemma3_270m")["results"][0]
    c = {k: v["ppl"] for k, v in r["compression"].items()}
    i = r["interventions"]
    d = next(s for s in i["sites"] if s["site"] == "dominant")
    a = i["attention_sinks"]
    return {"compression_row": " | ".join(ppl(v) for v in [r["baseline"]["ppl"], c["w8_tensor"], c["w8_channel"],
                                                           c["w4_tensor"], c["w4_channel"], c["w8a8"], c["prune50"]]),
            "dominant_channel": str(i["dominant_channel"]), "dominant_layer": str(d["layer"]),
            "zeroed_ppl": ppl(d["zero"]["ppl"]), "mean_ppl": ppl(d["mean"]["ppl"]),
            "masked_outliers_ppl": ppl(d["mask_sink"]["ppl"]), "masked_random_ppl": ppl(d["mask_random"]["ppl"]),
            "masked_sinks_ppl": ppl(a["mask_attn_sink"]["ppl"]),
            "masked_sink_control_ppl": ppl(a["mask_attn_random"]["ppl"]),
            "zeroed_random_ppl": ppl(d["zero_random"]["ppl"])}


def gemma_windows(root: Path) -> dict:
    """The windows of the CPU runs the page quotes, and the sinks masked per window."""
    data = consequences(root, "gemma3_270m")["results"][0]
    scale = scale_test_of(root, "gemma3_270m", "gemma3_270m")
    bos = scale_test_of(root, "gpt2_emergence_bos", "out-emergence-default")
    sinks = data["interventions"]["attention_sinks"]["mask_attn_sink"]["masked_keys_per_window"]
    return {"windows": str(data["data"]["windows"]), "window_tokens": str(data["data"]["seqlen"]),
            "sink_keys_per_window": f"{sinks:.1f}",
            "scale_test_windows": f"{scale['data']['windows']} x {scale['data']['seqlen']}",
            "gpt_scale_test_windows": f"{bos['data']['windows']} x {bos['data']['seqlen']}"}


def backcopy_sinks(root: Path) -> dict:
    """Masking the attention sinks of the gpt-2 variants: the paper's softmax variants, then ca_softmax, sigmoid."""
    change = backcopy_sink_changes(root)
    softmax = [change[v] for v in ("default", "vbias", "cabias", "attn_bias")]
    sink = [c["mask_attn_sink"] for c in softmax]
    rand = [c["mask_attn_random"] for c in softmax]
    return {"softmax_sink_cost": f"+{min(sink):.0f}% to +{max(sink):.0f}%",
            "softmax_random_cost": f"+{min(rand):.0f}% to +{max(rand):.0f}%",
            "ca_softmax_sink_cost": f"+{change['ca_softmax']['mask_attn_sink']:.0f}%",
            "sigmoid_sink_cost": f"{change['sigmoid']['mask_attn_sink']:.0f}%"}


def scale_tests(root: Path) -> dict:
    """The scale-test table's perplexities and how much of the small GPT's damage the measured scale undoes."""
    def row(result, fmt):
        modes = result["scale_test"]["modes"]
        shown = [result["baseline"]["ppl"]] + [modes[k]["ppl"] for k in ("mask", "oracle_scale", "const_scale",
                                                                          "fitted_scale")]
        return " | ".join(fmt(v) for v in shown)
    bos = scale_test_of(root, "gpt2_emergence_bos", "out-emergence-default")
    modes = bos["scale_test"]["modes"]
    undone = 1 - modes["oracle_scale"]["nll_change"] / modes["mask"]["nll_change"]
    return {"gemma_scale_row": row(scale_test_of(root, "gemma3_270m", "gemma3_270m"), ppl),
            "gpt_scale_row": row(bos, lambda x: f"{x:.4g}"), "oracle_undoes": f"{100 * undone:.0f}%",
            "oracle_left": f"+{modes['oracle_scale']['nll_change']:.2f}",
            "mask_cost": f"+{modes['mask']['nll_change']:.1f}"}


def scale_test_reading(root: Path) -> dict:
    """The bullets under the scale-test table: the small GPT's BOS sink, then Gemma 3 270M's. The GPT's file counts
    layers from 1 (no `layers_are`); the sentence gives its layers 0-based."""
    gpt = scale_test_of(root, "gpt2_emergence_bos", "out-emergence-default")["scale_test"]
    gemma_run = scale_test_of(root, "gemma3_270m", "gemma3_270m")
    gemma, windows = gemma_run["scale_test"], gemma_run["data"]["windows"]
    main = max(gpt["layers"].values(), key=lambda layer: layer["a_s_mean"])  # where the sink holds most attention
    value_layers = sorted(gpt["layers"], key=int)
    modes = gemma["modes"]
    dropped, masked = modes["drop_sink_value"], modes["mask"]
    # a difference no larger than the larger of the two paired standard errors is not read as an effect
    within = abs(dropped["nll_change"] - masked["nll_change"]) <= max(dropped["nll_change_stderr"],
                                                                      masked["nll_change_stderr"])
    more = dropped["nll_change"] > masked["nll_change"]
    scales = {k: modes[k] for k in ("const_scale", "fitted_scale")}
    require(all(m["nll_change"] < masked["nll_change"] for m in scales.values()),
            "one scale per head and the fitted scale recover part of the damage")
    gemma_layers = gemma["layers"].values()
    return {"gpt_fitted_left": f"+{gpt['modes']['fitted_scale']['nll_change']:.2f}",
            "gpt_main_fit_r2": f"{main['fit_r2']:.2f}",
            "gpt_const_left": f"+{gpt['modes']['const_scale']['nll_change']:.2f}",
            "gpt_sink_values": gpt2_pages.listed([f"{gpt['layers'][layer]['sink_value_ratio_median']:.2f}"
                                                  for layer in value_layers]),
            "gpt_value_layers": gpt2_pages.listed(value_layers),
            "gemma_sink_shares": span([100 * layer["a_s_mean"] for layer in gemma_layers], ".0f"),
            "drop_against_mask": "as much as" if within else "more than" if more else "less than",
            "dropped_cost": nats(dropped), "masked_cost": nats(masked), "gemma_windows": str(windows),
            "gemma_sink_values": span([layer["sink_value_ratio_median"] for layer in gemma_layers], ".2f"),
            "const_cost": nats(scales["const_scale"]), "fitted_cost": nats(scales["fitted_scale"]),
            "gemma_fits_r2": f"{min(layer['fit_r2'] for layer in gemma_layers):.2f} to "
                             f"{max(layer['fit_r2'] for layer in gemma_layers):.2f}"}


# --- gpt-2/README.md --------------------------------------------------------------------------------------------------

def gpt2_results(root: Path) -> dict:
    """The Results section's sink costs and search count (gpt-2/results/, results/consequences/gpt2_backcopy/)."""
    change = backcopy_sink_changes(root)
    passing, searched = gpt2_pages.search_peaks(root)
    return {"default_sink_cost": f"+{change['default']['mask_attn_sink']:.0f}%",
            "ca_softmax_sink_cost": f"+{change['ca_softmax']['mask_attn_sink']:.0f}%",
            "sigmoid_sink_cost": f"{change['sigmoid']['mask_attn_sink']:.0f}%",
            "search_passing": WORDS[len(passing)], "search_variants": WORDS[len(searched)]}


def emergence_criteria(root: Path) -> dict:
    """The emergence study's criteria other than the ratio (gpt-2/results/emergence/table.json)."""
    criteria = load(root, "gpt-2/results/emergence/table.json")["criteria"]
    return {"embed_share": f"{100 * criteria['embed_share']:g}%", "sink_share": f"{criteria['sink_share']:g}",
            "persistence": str(criteria["persistence"]), "control_draws": str(criteria["control_draws"])}


def figure_count(root: Path) -> dict:
    """How many figure scripts there are (lib.paper_figures.FIGURES), in words."""
    return {"figure_count": WORDS[len(FIGURES)]}


def search_peaks(root: Path) -> dict:
    """The variants whose search peaks pass the emergence criterion's ratio (lib.gpt2_pages.search_peaks)."""
    return {"search_passing_names": gpt2_pages.listed(gpt2_pages.search_peaks(root)[0])}


def factorial_sentences(root: Path) -> list[str]:
    """The factorial study's answer so far in sentences (gpt-2/results/factorial/table.json;
    lib.gpt2_pages.factorial_summary): the runs finished and the outliers found, then what the registered rule reads
    of each explanation and the steps to the common loss."""
    return gpt2_pages.factorial_summary(load(root, gpt2_pages.FACTORIAL / "table.json"))


def factorial_outliers(root: Path) -> dict:
    """The runs finished and the outliers found, as a paragraph of its own."""
    return {"factorial_outliers": wrapped(" ".join(factorial_sentences(root)[:2]))}


def factorial_item(root: Path) -> dict:
    """Every sentence of the answer, as the continuation of a list item."""
    return {"factorial_answer": wrapped(" ".join(factorial_sentences(root)), "  ", "  ")}


VALUES = {  # page: the functions its template's fields come from
    "README.md": (model_findings, emergence_verdicts, factorial_outliers, search_peaks, figure_count),
    "docs/api.md": (outlier_rules,),
    "docs/figures.md": (figure_count, figures_time, emergence_peak_figures, prompt_outliers, outlier_rules, calibration_defaults,
                        check_tolerances, bos_headroom),
    "docs/findings.md": (attention_picture, calibration_picture, pattern_table, compression_valley, relocation,
                         bos_table, bos_reading),
    "docs/consequences.md": (gemma_consequences, backcopy_sinks, scale_tests, gemma_windows, scale_test_reading),
    "docs/models.md": (),
    "gpt-2/README.md": (gpt2_results, emergence_verdicts, emergence_criteria, factorial_item),
}
