"""What the missing BOS changes (beyond the paper): the BOS as an intervention.

A model whose tokenizer prepends a BOS was trained with it at position 0. `consequences.py` measures, beside its
default run, the same evaluation windows with the BOS removed (`bos_removed`, lib/evaluation.py): the perplexity over
the same targets, and where the massive activation and the sink sit, window by window. `reproduce.py --no-bos
--savedir <figures>/no_bos` draws every figure without it. This module turns both into one table per model: the
massive activation and the sink (token, channel, layer, magnitude) with and without the BOS, on the evaluation
windows (the numbers with their paired standard error over the windows) and on the prompt, and the perplexity over
the same targets with its paired standard error. The same question `lifecycle_relocation.py` asks by hiding the
outlier tokens as keys, asked of the token the model was trained to use.
"""
import math
from collections import Counter
from pathlib import Path

from lib.layer_numbering import read_current
from lib.text_numbers import sig

NO_BOS = "no_bos"  # the subfolder of a figures folder (and of a model's consequences folder) made with --no-bos


def paired(with_: list, without: list) -> tuple[float, float | None]:
    """Mean of without - with over the windows and its standard error."""
    diffs = [b - a for a, b in zip(with_, without)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def _change(mean: float, stderr: float | None, unit: str = "") -> str:
    return f"{mean:+.3g}" + (f" ± {stderr:.2g}" if stderr is not None else "") + unit


def _tokens(texts: list[str], positions: list[int]) -> str:
    """Which token the windows' outlier or sink sits on: "'<bos>' (position 0) in 8 of 8 windows", or the most
    common tokens first."""
    n = len(texts)
    if len(set(texts)) == 1 and len(set(positions)) == 1:
        return f"{texts[0]!r} (position {positions[0]}) in {n} of {n} windows"
    common = Counter(texts).most_common(3)
    rest = n - sum(count for _, count in common)
    return (", ".join(f"{text!r} in {count}" for text, count in common) + (f", others in {rest}" if rest else "")
            + f" of {n} windows (positions {min(positions)}-{max(positions)})")


def _or_none(layer) -> str:
    """A layer, or "none" where there is none (layer 0 is a layer)."""
    return "none" if layer is None else str(layer)


def _peak(where: dict) -> str:
    layer = max(where["per_layer"], key=lambda r: r["sink_share_median"])
    return f"{sig(layer['sink_share_median'], 3)} (layer {layer['layer']})"


def _read(path: Path) -> dict:
    return read_current(path) if path.is_file() else {}


def _prompt(result: dict) -> tuple[str, str] | None:
    """(massive activation, sink) on the prompt, from a lifecycle_relocation.json's unmasked forward."""
    before = result.get("prompt_before")
    if not before:
        return None
    massive = (f"{before['massive_token_text']!r} ({before['massive_token']}), channel {before['massive_channel']}, "
               f"layer {before['massive_layer']}, |h| {sig(before['massive_value'], 3)}")
    sink = "-"
    if "sink_token" in before:
        first = before["sink_first_layer"]
        start = f"from layer {first}" if first is not None else "(no layer's rule flags it)"
        sink = f"{before['sink_token_text']!r} ({before['sink_token']}) {start}, share {sig(before['sink_share'], 2)}"
    return massive, sink


def table(consequences: dict, figures: Path | None = None) -> dict | None:
    """The table of one model: `consequences` its consequences.json result (the one with `bos_removed`), `figures`
    its figure folder (the prompt rows come from <figures>/lifecycle_relocation.json and
    <figures>/../no_bos/<model>/lifecycle_relocation.json where both exist). None where nothing was removed."""
    removed = consequences.get("bos_removed")
    if not removed:
        return None
    base, without = consequences["baseline"]["where"], removed["where"]
    texts, per_window, n = removed["token_text"], removed["per_window"], len(removed["per_window"]["massive_abs"]["with"])
    tokens = ", ".join(repr(t["token"]) for t in removed["removed"])
    rows = []

    def row(quantity, with_, without_, change=""):
        rows.append({"quantity": quantity, "with": with_, "without": without_, "change": change})

    moved = removed["moved"]
    row("massive activation: token", _tokens(texts["with"]["massive"], base["massive"]["tokens"]),
        _tokens(texts["without"]["massive"], without["massive"]["tokens"]),
        f"moved in {round(moved['massive_moved'] * n)} of {n} windows")
    row("massive activation: channel, layer", f"channel {base['massive']['channel']}, layer "
        f"{base['massive']['largest_layer']}", f"channel {without['massive']['channel']}, layer "
        f"{without['massive']['largest_layer']}")
    mean, err = paired(per_window["massive_abs"]["with"], per_window["massive_abs"]["without"])
    row("massive activation: |h| (median over windows)", sig(base["massive"]["value_median"], 3),
        sig(without["massive"]["value_median"], 3), _change(mean, err))
    if "sink" in base and "sink" in without:
        row("sink: token (at its first layer)", _tokens(texts["with"]["sink"], base["sink"]["tokens"]),
            _tokens(texts["without"]["sink"], without["sink"]["tokens"]),
            f"moved in {round(moved['sink_moved'] * n)} of {n} windows")
        row("sink: first layer (the attention rule in half of the windows)", _or_none(base["sink"]["first_layer"]),
            _or_none(without["sink"]["first_layer"]))
        mean, err = paired(per_window["sink_share"]["with"], per_window["sink_share"]["without"])
        row("sink: its largest share of the attention of queries 1..T-1 (median over windows, at the layer)",
            _peak(base), _peak(without), _change(mean, err))
    row(f"perplexity over the same {removed['tokens']:,} targets", sig(consequences["baseline"]["ppl"], 4),
        sig(removed["ppl"], 4), _change(removed["nll_change"], removed["nll_change_stderr"], " nats"))
    if figures is not None:
        model = Path(figures).name
        prompts = [_prompt(_read(Path(folder) / "lifecycle_relocation.json"))
                   for folder in (figures, Path(figures).parent / NO_BOS / model)]
        if all(prompts):
            row("prompt: massive activation (the largest |h| of a layer the rule flags)", prompts[0][0], prompts[1][0])
            row("prompt: sink", prompts[0][1], prompts[1][1])
    data = consequences["data"]
    return {"removed": removed["removed"], "windows": n, "seqlen": data["seqlen"], "rows": rows,
            "caption": f"{n} evaluation windows x {data['seqlen']} tokens of {data['source']} with {tokens} at "
                       f"position 0 and the same windows without it (positions counted with it); change: without - "
                       f"with, the mean over the windows ± its standard error (paired)"}


def markdown(title: str, found: dict) -> list[str]:
    """The table as Markdown lines."""
    tokens = ", ".join(f"`{t['token']}`" for t in found["removed"])
    lines = [f"| {title} | with {tokens} | without (`--no-bos`) | change |", "|---|---|---|---|"]
    cells = [[r[k].replace("|", "\\|") for k in ("quantity", "with", "without", "change")] for r in found["rows"]]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return lines + ["", found["caption"] + "."]
