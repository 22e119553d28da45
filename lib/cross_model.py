"""One picture and one comparison across models, from the figure JSONs reproduce.py wrote (and the consequences
where consequences.py ran): `reproduce.py --summary` draws SAVEDIR/summary.png beside summary.md and adds to both
one sentence per model and the paper's pattern, property by property, with the numbers it rests on.

Depth is a fraction of the model (`depth`: (layer + 1) / number of layers, layers 0-based, so the last layer is at
depth 1), so models of different depth share an axis. Nothing here is set per model: every number is read from the
model's own results.
"""
from collections import Counter
from pathlib import Path

from lib.layer_numbering import read_current

# the token each model's outlier sits on, in the three groups the picture shows
GROUPS = {"first token": ("initial_token",), "delimiter": ("strong_delimiter",), "other": ("weak_semantic", "other")}
GROUP_OF = {c: g for g, cats in GROUPS.items() for c in cats}
TOKEN_NAMES = {"initial_token": "the first token", "strong_delimiter": "a delimiter", "weak_semantic": "a weak-semantic token",
               "other": "an ordinary token"}
SIGNIFICANT = 2.0  # a perplexity change counts where it exceeds this many paired standard errors
TOP_COLUMNS = 3  # the writer column counts as a weight outlier among its layer's top-3 column ratios (pos_weight_outliers)
EARLY = 0.25  # written early: in the first quarter of the layers (LLaMA-2-7B: the paper's layer 2 of 32, counted from 1)
LATE = 0.75  # removed in the last layers: in the last quarter


def depth(layer: int, num_layers: int) -> float:
    """Where a 0-based layer sits in the model, as a fraction: (layer + 1) / num_layers (the first layer at
    1 / num_layers, the last at 1)."""
    return (layer + 1) / num_layers


def _layer_of(layer: int, num_layers: int) -> str:
    """A layer among the model's, in words: 'layer 5 of layers 0-17 (0.33 of the depth)'."""
    return f"layer {layer} of layers 0-{num_layers - 1} ({depth(layer, num_layers):.2f} of the depth)"


def _read(folder: Path, name: str) -> dict:
    path = folder / f"{name}.json"
    return read_current(path) if path.is_file() else {}


def model_data(folder: Path, row: dict, consequences_dir: Path | None = None) -> dict:
    """Everything the picture and the sentences need of one model folder, read from its JSONs."""
    folder = Path(folder)
    layer_json = _read(folder, "pos_activation_outliers_layer")
    valley = _read(folder, "pos_compression")
    layers = layer_json.get("layers", [])
    n = len(layers)
    windows = [w for w in valley.get("windows", []) if w.get("category")]
    cons = None
    path = Path(consequences_dir) / row["model"] / "consequences.json" if consequences_dir else None
    if path is not None and path.is_file():
        cons = read_current(path)["results"][0]
    return {
        "model": row["model"], "title": row["title"], "num_layers": n,
        "depth": [depth(r["layer"], n) for r in layers],
        "top1_over_median": [r["top"][0] / r["median"] if r["median"] else None for r in layers],
        "outlier_layers": layer_json.get("outlier_layers", []), "layer_rows": layers,
        "categories": layer_json.get("categories", {}),
        "sink_rate_outlier": [r.get("sink_rate_outlier") for r in valley.get("layers", [])],
        "sink_rate_first": [r.get("sink_rate_first") for r in valley.get("layers", [])],
        "sink_threshold": valley.get("sink_threshold"),
        "windows": windows,
        "attention": _read(folder, "existence_attention_outliers"),
        "weights": _read(folder, "existence_weight_outliers"),
        "disappearance": _read(folder, "lifecycle_disappearance"),
        "row": row, "consequences": cons, "headroom": row.get("headroom"),
    }


def dominant_token(d: dict) -> tuple[str | None, list[str], list[int]]:
    """The category most windows' largest outlier sits on, its token texts and channels."""
    if not d["windows"]:
        return None, [], []
    category = Counter(w["category"] for w in d["windows"]).most_common(1)[0][0]
    texts = sorted({w["token"] for w in d["windows"] if w["category"] == category})
    channels = sorted({w["channel"] for w in d["windows"]})
    return category, texts, channels


def _channel_since(d: dict, channels: list[int]) -> tuple[int, float] | None:
    """(the first layer at which every window's top-3 values sit in the dominant channel, its top-1 over the median
    there); None where that never happens."""
    if len(channels) != 1:
        return None
    for r in d["layer_rows"]:
        if r.get("top_channels") and all(c == channels[0] for seq in r["top_channels"] for c in seq):
            return r["layer"], d["top1_over_median"][r["layer"]]
    return None


def _layers(layers: list[int]) -> str:
    if not layers:
        return "none"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ", ".join(map(str, layers))


def _peak(values: list) -> tuple[float, int]:
    i = max(range(len(values)), key=lambda k: values[k] or 0)
    return values[i], i


def finding(d: dict) -> str:
    """One sentence: what the figures find on this model."""
    n, title = d["num_layers"], d["title"]
    category, texts, channels = dominant_token(d)
    if category is None or not d["outlier_layers"]:
        return f"{title} ({n} layers): the activation rule flags no outlier on the calibration text."
    ratio, at = _peak(d["top1_over_median"])
    row = d["row"]
    sink, sink_at = _peak(d["sink_rate_outlier"]) if d["sink_rate_outlier"] else (None, None)
    where = (f"{TOKEN_NAMES[category]} ({', '.join(repr(t) for t in texts)})"
             if category != "initial_token" or len(texts) == 1 else TOKEN_NAMES[category])
    text = (f"{title} ({n} layers): the largest outlier of each of its {len(d['windows'])} calibration windows sits on "
            f"{where} in channel{'s' if len(channels) > 1 else ''} {', '.join(map(str, channels))}; outlier layers "
            f"{_layers(d['outlier_layers'])} (depth {depth(d['outlier_layers'][0], n):.2f}-"
            f"{depth(d['outlier_layers'][-1], n):.2f}), "
            f"top-1 up to {ratio:,.0f} x the median at layer {at}")
    if row.get("writer_column") is not None:
        written = (d["weights"].get("writer") or {}).get("channel")
        what = "it" if written is None or written in channels else f"the prompt's first outlier (channel {written})"
        text += (f"; on the Summer prompt down_proj column {row['writer_column']} writes {what} at layer "
                 f"{row.get('emergence_layer')} (max/mean ratio {row['writer_column_ratio']:.1f}, rank "
                 f"{row['writer_column_rank']})")
    if sink is not None:
        text += (f"; the share of heads whose mean attention on it passes {d['sink_threshold']:g} peaks at {sink:.2f} "
                 f"(layer {sink_at})")
    room = d.get("headroom")
    if room:
        share = room["share_of_largest_finite"]["float16"]
        text += (f"; its largest |h| ({room['largest_abs']:,.0f}, layer {room['layer']}) is {share:.2f} x float16's "
                 f"largest finite value ({room['largest_finite']['float16']:,.0f})"
                 + (": float16 overflows, bfloat16 holds it" if share > 1 else ""))
    return text + "."


# --- the paper's pattern, property by property --------------------------------------------------------------------

def _change(entry: dict) -> str:
    return f"{entry['nll_change']:+.3f} ± {entry['nll_change_stderr']:.3f} nats"


def _significant(entry: dict) -> bool:
    return entry["nll_change"] > SIGNIFICANT * entry["nll_change_stderr"]


def properties(d: dict) -> list[tuple[str, str, str]]:
    """(property, verdict, the numbers) for each of the paper's stated properties on this model."""
    n, row = d["num_layers"], d["row"]
    category, texts, channels = dominant_token(d)
    cats = d["categories"]
    out = []
    # fixed channels: every window's largest outlier and the prompt's in the same channel(s); the prompt's are those of
    # its first outlier layer and its largest outlier's (they differ where a smaller outlier comes first, as channel
    # 400 before the massive channel 163 on Gemma 3's <bos>)
    prompt_channels = row.get("prompt_outlier_channels") or []
    largest = (row.get("dominant_outlier") or {}).get("channel")
    known = set(prompt_channels) | ({largest} if largest is not None else set())
    same = bool(channels) and set(channels) <= known and len(channels) <= 2
    out.append(("fixed channels", "holds" if same else "does not hold",
                f"windows' largest outlier in channel(s) {', '.join(map(str, channels)) or 'none'} "
                f"({len(d['windows'])} windows); prompt outlier channel(s) {', '.join(map(str, prompt_channels)) or 'none'}"
                + (f", its largest outlier in channel {largest}" if largest is not None else "")))
    # first token and delimiter
    first, delim = cats.get("initial_token", 0.0), cats.get("strong_delimiter", 0.0)
    verdict = "holds" if first > 0 and delim > 0 else ("first token only" if first > 0 else
                                                       ("delimiter only" if delim > 0 else "does not hold"))
    out.append(("first token and delimiter", verdict,
                f"flagged outlier tokens ({cats.get('count', 0)}): first token {first:.0%}, delimiter {delim:.0%}, "
                f"other {1 - first - delim:.0%}; largest per window: {TOKEN_NAMES.get(category, 'none')}"))
    # written by a down_proj column with an outlier ratio, early
    weights, emergence = d["weights"], row.get("emergence_layer")
    writer = weights.get("writer") or {}
    if row.get("writer_column") is not None and emergence is not None:
        share = writer.get("share_of_down_proj_output")
        written = writer.get("channel")
        it = "it" if written is None or written in channels else f"the prompt's first outlier (channel {written})"
        out.append(("written by a down_proj column with an outlier ratio",
                    "holds" if row["writer_column_rank"] <= TOP_COLUMNS else "partly",
                    f"column {row['writer_column']} of layer {emergence} writes "
                    + (f"{share:.0%} of {it}, " if share is not None else f"{it}, ")
                    + f"max/mean ratio {row['writer_column_ratio']:.1f}, rank {row['writer_column_rank']} (the layer's "
                    f"median column {weights.get('median_ratio', float('nan')):.2f})"))
        early = depth(emergence, n) <= EARLY
        text = _layer_of(emergence, n)
        since = _channel_since(d, channels)
        if since is not None and since[0] < emergence:
            text += (f"; channel {channels[0]} already holds every window's top-3 values at layer {since[0]} "
                     f"(top-1 {since[1]:,.0f} x the median)")
        out.append(("written early", "holds" if early else "does not hold", text))
    else:
        out.append(("written by a down_proj column with an outlier ratio", "not found", "no writer column"))
    # sink in the layer after
    att = d["attention"]
    token = (att.get("dominant_outlier") or {}).get("token")
    keys = att.get("outlier_keys", [])
    out.append(("sink in the layer after", "holds" if token is not None and token in keys else "does not hold",
                f"layer {att.get('layer')}: attention outlier keys {keys} ({', '.join(repr(att['tokens'][k]) for k in keys)}); "
                f"the prompt's outlier token {token}"))
    # removed in the last layers
    gone = row.get("disappearance_layer")
    traced = d.get("disappearance", {}).get("channel")
    largest = _largest_shrinks(d)
    if traced is not None and traced not in channels and largest is not None:
        # the lifecycle figures follow the prompt's first outlier; where the massive one is another, judge that one
        layer, channel, flagged = largest
        out.append(("removed in the last layers", "holds" if depth(layer, n) >= LATE else "does not hold",
                    f"the layer that shrinks the prompt's largest outlier (channel {channel}) most: "
                    f"{_layer_of(layer, n)}; the rule flags it up to layer {flagged}; its first outlier "
                    f"(channel {traced}): layer {gone}"))
    else:
        found = gone is not None
        out.append(("removed in the last layers", "holds" if found and depth(gone, n) >= LATE else "does not hold",
                    f"the layer that shrinks it most: {_layer_of(gone, n)}" if found else "not found"))
    cons = d["consequences"]
    if cons is None:
        out += [("zeroing hurts and the mean does not", "not measured", "no consequences.json"),
                ("compression hurt by the outliers", "not measured", "no consequences.json")]
        return out
    sites = cons.get("interventions", {}).get("sites", [])  # "dominant" where the largest outliers' channel appears later
    site = next((s for s in sites if s["site"] == "dominant"), sites[0] if sites else None)
    if site is None or not all("nll_change" in site.get(m, {}) for m in ("zero", "mean", "zero_random")):
        out.append(("zeroing hurts and the mean does not", "not measured", "no zero and mean interventions"))
    else:
        zero, mean = site["zero"], site["mean"]
        holds = _significant(zero) and not _significant(mean)
        out.append(("zeroing hurts and the mean does not", "holds" if holds else "does not hold",
                    f"at layer {site['layer']}: zero {_change(zero)}, mean {_change(mean)}, "
                    f"zeroing as many random entries {_change(site['zero_random'])}"))
    comp = cons.get("compression", {})
    if not all("nll_change" in comp.get(m, {}) for m in ("w8a8", "w8_tensor", "w8_channel")):
        out.append(("compression hurt by the outliers", "not measured", "no W8A8 and 8-bit weight runs"))
        return out
    base = cons["baseline"]["ppl"]
    hurt = _significant(comp["w8a8"]) and comp["w8_tensor"]["nll_change"] > comp["w8_channel"]["nll_change"]
    out.append(("compression hurt by the outliers", "holds" if hurt else "does not hold",
                f"perplexity {base:.1f}; W8A8 {comp['w8a8']['ppl']:.1f} ({_change(comp['w8a8'])}); 8-bit weights per "
                f"tensor {comp['w8_tensor']['ppl']:.1f}, per channel {comp['w8_channel']['ppl']:.1f}"))
    return out


def _largest_shrinks(d: dict) -> tuple[int, int, int | None] | None:
    """(the layer that shrinks the prompt's largest outlier most after its peak, its channel, the last layer the rule
    flags it), from the prompt figures' dominant_outlier trace; None where there is none."""
    dominant = d["attention"].get("dominant_outlier") or {}
    trace = [r["abs"] for r in dominant.get("per_layer", [])]
    peak = max(range(len(trace)), key=trace.__getitem__) if trace else None
    if peak is None or peak + 1 >= len(trace):
        return None
    layer = max(range(peak + 1, len(trace)), key=lambda i: trace[i - 1] - trace[i])
    flagged = dominant.get("flagged_layers") or [None]
    return layer, dominant["channel"], flagged[-1]


def comparison_table(data: list[dict]) -> list[str]:
    """The paper's pattern against each model, as Markdown lines."""
    table = {d["title"]: dict((p, (v, x)) for p, v, x in properties(d)) for d in data}
    names = list(dict.fromkeys(p for d in data for p, _, _ in properties(d)))
    lines = ["| the paper's property (LLaMA-2-7B) | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    for p in names:
        cells = [f"**{table[t][p][0]}**: {table[t][p][1]}" if p in table[t] else "-" for t in table]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


CRITERIA = (f"Criteria: fixed channels = every window's largest outlier in at most two channels, all among the "
            f"prompt's (the outlier channels of its first outlier layer and its largest outlier's); an outlier ratio = the writer column among its layer's {TOP_COLUMNS} largest max/mean ratios; "
            f"early = the rule's emergence layer in the first {EARLY:.0%} of the layers (LLaMA-2-7B: the paper's layer 2 of 32, counted from 1: layer 1 here); "
            f"removed in the last layers = the layer that shrinks it most in the last {1 - LATE:.0%} (the prompt's "
            f"largest outlier where the lifecycle figures follow a first, smaller one); a perplexity change "
            f"counts above {SIGNIFICANT:g} paired standard errors; compression is hurt where W8A8 counts and "
            f"8-bit weights per tensor cost more than per channel (a correlation: no run quantizes the model with its "
            f"outliers removed).")


# --- the picture ----------------------------------------------------------------------------------------------------

def draw(data: list[dict], path: Path) -> Path:
    """Three panels: top-1 |h| over the median per layer (outlier layers marked), the sink rate on each window's
    dominant outlier token (dashed: on the first token), and the token the outliers sit on."""
    from lib import plotting
    import matplotlib.pyplot as plt
    fig, axes = plotting.figure(3, 1, (5.2, 4.0), False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, d in enumerate(data):
        c = colors[i % len(colors)]
        axes[0].plot(d["depth"], d["top1_over_median"], color=c, label=f"{d['title']} ({d['num_layers']} layers)")
        marked = d["outlier_layers"]
        axes[0].scatter([d["depth"][k] for k in marked], [d["top1_over_median"][k] for k in marked], color=c, s=18,
                        zorder=3)
        if d["sink_rate_outlier"]:
            axes[1].plot(d["depth"], d["sink_rate_outlier"], color=c, label=d["title"])
            axes[1].plot(d["depth"], d["sink_rate_first"], color=c, linestyle="--", alpha=0.6)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("depth ((layer + 1) / layers)")
    axes[0].set_ylabel("top-1 |h| / median |h| (calibration)")
    axes[0].set_title("massive activations (dots: outlier layers)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("depth ((layer + 1) / layers)")
    axes[1].set_ylabel("share of heads attending > 0.3")
    axes[1].set_ylim(-0.03, 1.03)
    axes[1].set_title("sink rate on the dominant outlier token\n(dashed: on the first token)", fontsize=9)
    groups = list(GROUPS)
    left = [0.0] * len(data)
    for g, color in zip(groups, ("#d62728", "#1f77b4", "#7f7f7f")):
        shares = [sum(d["categories"].get(c, 0.0) for c in GROUPS[g]) for d in data]
        axes[2].barh(range(len(data)), shares, left=left, color=color, label=g)
        left = [a + b for a, b in zip(left, shares)]
    axes[2].set_yticks(range(len(data)), [f"{d['title']}\n({d['categories'].get('count', 0)} tokens)" for d in data],
                       fontsize=8)
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("share of the flagged outlier tokens")
    axes[2].set_title("which token the outliers sit on", fontsize=9)
    axes[2].legend(fontsize=7, loc="lower right")
    plotting.title(fig, "Systematic outliers across models (reproduce.py --summary)")
    plotting.save(fig, Path(path).with_suffix(""), ["png"])
    plt.close(fig)
    return Path(path)


def markdown(data: list[dict], picture: str) -> list[str]:
    """What summary.md adds: the picture, one sentence per model, the comparison with the paper's pattern."""
    return (["", "## Across models", "", f"![systematic outliers across models]({picture})", ""]
            + [f"- {finding(d)}" for d in data]
            + ["", "## The paper's pattern, property by property", ""] + comparison_table(data) + ["", CRITERIA])

