"""What lib.evaluation measured, as consequences.md, consequences.png and consequences.json."""
from pathlib import Path

from lib import compression, interventions, scale_test
from lib.evaluation import ATTENTION_INTERVENTIONS
from lib.files import write_json, write_text
from lib.layer_numbering import STATEMENT


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def markdown(report: dict) -> str:
    """consequences.md: what was run, every table with its definitions, and where the outlier and the sink went."""
    return "\n".join(header(report) + tables(report) + where_section(report["results"])) + "\n"


def header(report: dict) -> list[str]:
    rows = report["results"]
    lines = [f"# Consequences of systematic outliers: {report['title']}", "",
             f"Command: `{report['command']}`", "", STATEMENT, ""]
    if rows and rows[0]["data"].get("input"):
        lines += [f"Input: {rows[0]['data']['input']['text']}.", ""]
    if rows and "provenance" in rows[0]:
        from lib.provenance import short
        lines += [f"Made by {short(rows[0]['provenance'])}.", ""]
    for r in rows[:1]:
        lines.append(data_line(r["data"]))
        if "note" in r["data"]:
            lines.append(f"Note: {r['data']['note']}.")
    return lines


def data_line(d: dict) -> str:
    return (f"Data: {d['source']} ({d['split']}), {d['windows']} windows x {d['seqlen']} tokens; "
            f"calibration {d['calib_windows']} windows ({d['calib_split']}).")


def tables(report: dict, brief: bool = False) -> list[str]:
    """Every table of consequences.md; brief: without the definitions under each and the scale test's per-layer
    table (a page that states the definitions once)."""
    return (_compression(report, brief) + _attention(report, brief) + _sites(report, brief) + _bos(report, brief)
            + (scale_test.markdown(report["results"], brief) if report.get("scale_test") else []))


def _compression(report: dict, brief: bool) -> list[str]:
    rows, methods = report["results"], report["methods"]
    title = "Perplexity under compression" if methods else "Perplexity and outlier metrics"
    lines = ["", f"## {title}", "",
             "| model | fp32 | " + "".join(f"{m} | " for m in methods) + "max inf-norm | avg kurtosis |",
             "|---" * (len(methods) + 4) + "|"]
    for r in rows:
        cells = [_fmt(r["baseline"]["ppl"])] + [_fmt(r["compression"][m]["ppl"]) for m in methods]
        cells += [_fmt(r["outlier_metrics"]["max_inf_norm"]), _fmt(r["outlier_metrics"]["avg_kurtosis"])]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    for r in rows:
        for m in methods:
            if "runs" in r["compression"][m]:
                runs = r["compression"][m]["runs"]
                lines.append(f"\n{r['name']}, {m}: {r['compression'][m]['jitter']} (runs {_fmt(min(runs))} to "
                             f"{_fmt(max(runs))}: it rounds activations, so it is unstable by nature).")
    if brief:
        return lines + [""]
    return lines + [""] + (["Methods: " + "; ".join(f"{m}: {compression.METHODS[m]}" for m in methods) + "."]
                           if methods else []) + [METRICS, ""]


METRICS = ("Outlier metrics (Bondarenko et al. 2023) on the evaluation windows: max |h| over all block outputs; "
           "kurtosis of each token's block output over channels, averaged over tokens and blocks (Gaussian: 3).")
SINKS = ("Sinks are found in each window from an unmasked forward: in every layer, the keys with "
         + interventions.analysis.ATTENTION_RULE + " (cumulative attention: the head average summed over queries)"
         ". mask_attn_sink: each layer's sink keys are masked in that layer (every query but the key's own "
         "token loses them); mask_attn_random: each sink key swapped for another token drawn at random, the "
         "same swap in every layer (a control). No activation outlier is needed.")
SITES = ("An outlier layer has outliers in at least half of the calibration windows. zero / mean: the outlier "
         "entries of that block's output, detected in each evaluation window, set to 0 / to their channel's mean over "
         "the calibration windows; zero_random: as many other entries of that output, drawn at random, set to 0 (the "
         "control). mask_sink: every later block may not attend to that window's outlier tokens (each token still sees "
         "itself); mask_random: the same number of other tokens, drawn at random, masked the same way (a control).")
WITHOUT_BOS = ("The same evaluation windows without the special tokens the tokenizer prepends (the original code's "
               "input), scoring the same targets: every text token of a window but the first.")


def _attention(report: dict, brief: bool) -> list[str]:
    rows = report["results"]
    attention = [m for m in report["interventions"] if m in ATTENTION_INTERVENTIONS]
    if not attention:
        return []
    lines = ["## Attention sinks masked", "",
             "| model | fp32 | " + " | ".join(attention) + " | sink keys / window | (layer, key) pairs / window |",
             "|---" * (len(attention) + 4) + "|"]
    for r in rows:
        found = r["interventions"].get("attention_sinks", {})
        counts = found.get("mask_attn_sink", next(iter(found.values()), {}))
        lines.append(f"| {r['name']} | {_fmt(r['baseline']['ppl'])} | "
                     + " | ".join(_fmt(found.get(m, {}).get("ppl")) for m in attention)
                     + f" | {_fmt(counts.get('masked_keys_per_window'))}"
                     + f" | {_fmt(counts.get('masked_layer_keys_per_window'))} |")
    lines += [""] + ([] if brief else [SINKS, ""])
    for r in rows:
        for m, entry in r["interventions"].get("attention_sinks", {}).items():
            if entry.get("note"):
                lines.append(f"- {r['name']}, {m}: {entry['note']}")
    return lines


def _sites(report: dict, brief: bool) -> list[str]:
    rows = report["results"]
    wanted = [m for m in report["interventions"] if m not in ATTENTION_INTERVENTIONS]
    if not wanted:
        return []
    lines = ["## Interventions on the activation outliers", "",
             "| model | site | layer | outlier channels (calibration) | fp32 | " + " | ".join(wanted)
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
    lines += [""] + ([] if brief else ["Detection rule: " + report["outlier_rule"] + ". " + SITES, ""])
    for r in rows:
        iv = r["interventions"]
        if iv.get("outlier_layers"):
            lines.append(f"- {r['name']}: outlier layers {iv['outlier_layers']}; "
                         f"largest outliers in channel {iv['dominant_channel']}")
        if iv.get("note"):
            lines.append(f"- {r['name']}: {iv['note']}")
        for site in iv.get("sites", []):
            for m in wanted:
                if site.get(m, {}).get("note"):
                    lines.append(f"- {r['name']}, {m}: {site[m]['note']}")
    return lines


def _bos(report: dict, brief: bool) -> list[str]:
    removed = [r for r in report["results"] if r.get("bos_removed")]
    if not removed:
        return []
    lines = ["## Without the BOS", "", "| model | removed | fp32 | without | NLL change (nats) | massive moved | "
             "sink moved |", "|---" * 7 + "|"]
    for r in removed:
        e = r["bos_removed"]
        lines.append(f"| {r['name']} | {', '.join(t['token'] for t in e['removed'])} | {_fmt(r['baseline']['ppl'])} | "
                     f"{_fmt(e['ppl'])} | {e['nll_change']:+.3f} ± {e['nll_change_stderr'] or 0:.3f} | "
                     f"{_fmt(e['moved'].get('massive_moved'))} | {_fmt(e['moved'].get('sink_moved'))} |")
    return lines + [""] + ([] if brief else [WITHOUT_BOS, ""])


def _entries(r: dict):
    """(label, entry) of every measured condition of one model that records where the outlier and sink went."""
    yield "none (fp32)", r["baseline"]
    iv = r["interventions"]
    for m, entry in iv.get("attention_sinks", {}).items():
        yield m, entry
    for site in iv.get("sites", []):
        for m, entry in site.items():
            if isinstance(entry, dict) and "where" in entry:
                yield f"{m} (layer {site['layer']})", entry
    for m, entry in r.get("scale_test", {}).get("modes", {}).items():
        yield f"scale test: {m}", entry
    if r.get("bos_removed"):
        yield "the BOS removed", r["bos_removed"]


def _layers(layers) -> str:
    if isinstance(layers, str) or not layers:
        return layers or "-"
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else ", ".join(map(str, layers))


def where_section(rows) -> list[str]:
    """Per model and condition: the masked or edited layers, and where the massive activation and the sink sat in
    the same forwards (lib.relocation), with the share of windows where each moved to another token."""
    table = []
    for r in rows:
        for label, entry in _entries(r):
            where = entry.get("where")
            if not where:
                continue
            massive, sink, moved = where["massive"], where.get("sink"), entry.get("moved", {})
            layers = entry.get("masked_layers", entry.get("edited_layer"))
            layers = layers if isinstance(layers, (list, str)) else [] if layers is None else [layers]
            first = "-" if not sink or sink["first_layer"] is None else sink["first_layer"]
            sink_cell = "-" if not sink else f"{first} / {_fmt(sink['share_median'])}"
            table.append(f"| {r['name']} | {label} | {_layers(layers)} | {massive['largest_layer']} / "
                         f"{massive['channel']} / {_fmt(massive['value_median'])} | {_fmt(moved.get('massive_moved'))} "
                         f"| {sink_cell} | {_fmt(moved.get('sink_moved'))} |")
    if not table:
        return []
    return ["## Where the outlier and the sink went", "",
            "| model | intervention | masked / edited layers | massive: layer / channel / median |h| "
            "| massive moved | sink: first layer / share | sink moved |", "|---" * 7 + "|"] + table + [
            "", "Measured in the intervened forwards themselves (the same evaluation windows). Massive: the layer "
            "with the largest |h| (median over windows) among those where the rule flags the layer's largest entry in "
            "at least half of the windows, that entry's most common channel and its median |h|. Sink: the "
            "first layer where the attention rule flags a key in at least half of the windows, and the share of the "
            "attention of queries 1..T-1 (head-averaged) that its most attended flagged key holds. "
            "Moved: the share of windows where the massive activation (at its layer) or the sink (at its layer) sits "
            "on another token than in the unedited model; the scale test replaces attention's output, so no sink is "
            "tracked there.", ""]


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
