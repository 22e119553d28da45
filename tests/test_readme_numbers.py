"""Numbers the README quotes must be the committed results' numbers: each claim below is rendered from a result
file and must appear in the README word for word. When a result is regenerated, this test names the README
sentence to update."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(path):
    return json.loads((ROOT / path).read_text())


def ppl(x):
    """Perplexities as the README writes them: one decimal, or mantissa and exponent when huge (5.3e10)."""
    if x < 1e4:
        return f"{x:.1f}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def gemma_consequences():
    r = load("results/consequences/gemma3_270m/consequences.json")["results"][0]
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


def variants_bench():
    def span(path):
        b = load(path)
        ratios = [v for k, v in b["variant_vs_default"].items() if k != "default"]
        return f"{b['default_vs_plain_sdpa']:.2f} and variant / default {min(ratios):.2f}-{max(ratios):.2f}"
    return [f"gave default / plain\n{span('bench/results/gpt2_variants_before_classes.json')}",
            f"after {span('bench/results/gpt2_variants.json').replace(' and variant / default', ' and')}"]


def figures_time():
    took = re.search(r"the last run took (\d+) s", (ROOT / "results/figures/gemma3_270m/index.md").read_text())
    return [f"took {took.group(1)} s after the model load"]


def backcopy_sinks():
    """Masking the attention sinks of the gpt-2 variants: the paper's softmax variants, then ca_softmax, sigmoid."""
    change = {}
    for r in load("results/consequences/gpt2_backcopy/consequences.json")["results"]:
        a, base = r["interventions"]["attention_sinks"], r["baseline"]["ppl"]
        change[r["name"]] = {k: 100 * (v["ppl"] / base - 1) for k, v in a.items()}
    softmax = [change[v] for v in ("default", "vbias", "cabias", "attn_bias")]
    sink = [c["mask_attn_sink"] for c in softmax]
    rand = [c["mask_attn_random"] for c in softmax]
    return [f"+{min(sink):.0f}% to +{max(sink):.0f}% perplexity (random keys: +{min(rand):.0f}% to +{max(rand):.0f}%) "
            f"and ca_softmax +{change['ca_softmax']['mask_attn_sink']:.0f}%, sigmoid "
            f"{change['sigmoid']['mask_attn_sink']:.0f}%"]


def scale_tests():
    def row(path, name, fmt):
        r = next(x for x in load(path)["results"] if x["name"] == name)
        m = r["scale_test"]["modes"]
        return " | ".join(fmt(v) for v in [r["baseline"]["ppl"]] + [m[k]["ppl"] for k in
                                                                   ("mask", "oracle_scale", "const_scale", "fitted_scale")])
    gemma = row("results/consequences/gemma3_270m/scale_test/consequences.json", "gemma3_270m", ppl)
    gpt = row("results/consequences/gpt2_emergence_bos/scale_test/consequences.json", "out-emergence-default",
              lambda x: f"{x:.4g}")
    bos = next(x for x in load("results/consequences/gpt2_emergence_bos/scale_test/consequences.json")["results"]
               if x["name"] == "out-emergence-default")["scale_test"]["modes"]
    undone = 1 - bos["oracle_scale"]["nll_change"] / bos["mask"]["nll_change"]
    return [f"| {gemma} |", f"| {gpt} |", f"undoes {100 * undone:.0f}% of the damage",
            f"(+{bos['oracle_scale']['nll_change']:.2f} nats left of +{bos['mask']['nll_change']:.1f})"]


def scale_bench():
    b = load("bench/results/scale.json")
    peak = {k: v / 2**30 for k, v in b["peak_bytes_above_weights"].items()}
    full = {k: v / 2**30 for k, v in b["estimate_32_layers_bytes"].items()}
    return [f"| {peak['logits']:.2f} GiB | {full['logits']:.1f} GiB |", f"| {peak['stats']:.2f} GiB | {full['stats']:.1f} GiB |",
            f"| {peak['reference']:.2f} GiB | {full['reference']:.1f} GiB |",
            f"{b['stats_vs_logits_memory']:.2f}x the plain forward's peak and {b['time']['stats_vs_logits']:.2f}x its time "
            f"(median of the pair ratios {b['time']['stats_vs_logits_median_of_pairs']:.2f}x)"]


def emergence():
    rows = {r["run"]: r for r in load("gpt-2/results/emergence/table.json")["rows"]}
    verdicts = [r["over_run"]["verdict"] for r in rows.values()]
    longest = max(rows["out-emergence-rf-default-none"]["over_run"]["logged_peak_streaks"], key=lambda s: s["checkpoints"])
    bos = rows["out-emergence-default"]["at_checkpoint"]["layers"][0]
    return [f"ruled out by their logs in {verdicts.count('no')} of {len(verdicts)} cases and not re-judged in "
            f"{verdicts.count('not re-judged')}",
            f"the longest on position {longest['position']} of block {longest['layer']} at {longest['first'] // 1000}k-"
            f"{longest['last'] // 1000}k steps",
            f"BOS's own entry stays near {abs(bos['value']) / bos['median']:.0f} x the median"]


def compression_valley():
    v = load("results/figures/gemma3_270m/pos_compression.json")
    rows, found = v["layers"], v["windows"]
    names = {"'": "an apostrophe"}
    tokens = {(names.get(w["token"], repr(w["token"])), w["channel"], w["layer"]) for w in found}
    values = sorted(w["value"] for w in found)
    first = [r["norm_ratio_first"] for r in rows]
    raw = [r["entropy"] for r in rows]
    mid = rows[7:11]  # layers 8-11
    peak = max(rows, key=lambda r: r["norm_ratio_outlier"])
    heads = len(rows[0]["attention_on_first"])
    sinks = {r["layer"]: round(r["sink_rate_outlier"] * heads) for r in rows if r["sink_rate_outlier"] > 0}
    counts = {1: "one", 2: "two", 3: "three"}
    valley = v["valley"]["entropy"]
    return [" and ".join(f"{name} (channel {channel}, {values[0]:,.0f} to {values[-1]:,.0f} at layer {layer})"
                         for name, channel, layer in tokens),
            f"within {min(first):.2f}-{max(first):.2f} x the median and its sink rate is "
            + ("0 at every layer" if not any(r["sink_rate_first"] for r in rows) else "above 0 at some layer"),
            f"({min(raw):.3f} to {max(raw):.3f})",
            f"except at layer 1 ({rows[0]['entropy']:.3f} to {rows[0]['entropy_without_outliers']:.3f})",
            f"(layers {', '.join(map(str, valley['layers']))}; depth {valley['depth']:.2f})",
            "falls to " + ", ".join(f"{r['entropy_centred']:.3f}" for r in mid) + " at layers 8-11",
            f"({peak['norm_ratio_outlier']:.1f} x the median at layer {peak['layer']})",
            "restores it (" + ", ".join(f"{r['entropy_centred_without_outliers']:.3f}" for r in mid) + ")",
            " / ".join(f"{counts.get(n, n)} head of {heads} passes {v['sink_threshold']:g} on it, at layers "
                       + " and ".join(str(layer) for layer in sinks if sinks[layer] == n) + " only"
                       for n in sorted(set(sinks.values())))]


@pytest.mark.parametrize("claims", [gemma_consequences, capture_bench, variants_bench, figures_time,
                                    backcopy_sinks, scale_tests, scale_bench, emergence, compression_valley])
def test_readme_quotes_the_committed_results(claims):
    readme = (ROOT / "README.md").read_text()
    flat = " ".join(readme.split())
    for claim in claims():
        assert " ".join(claim.split()) in flat, f"README.md should say {claim!r} ({claims.__name__})"
