"""Figures from analyze.py's JSON (the numbers always live in the JSON beside each figure).

    python plot_gpt2.py out-backcopy-default/analysis/analysis.json [more.json ...]

Per analysis, beside its JSON: layerwise.png (top-1/2/3 and median of |block output| per layer, log scale),
view3d.png (wireframe of |h| over tokens x channels at the view's layer), attention.png (head-averaged
attention of the sink's layer: analyze.py's attention_layer, by default the layer where one key takes the
largest share; the title gives that share and where the largest is). With several JSONs also
compare_layerwise.png (top-1/median per layer, one line each) in the folder above the first JSON's.
"""
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path):
    tmp = path[:-4] + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def iteration(r):
    """The checkpoint's step (analyses written before the `checkpoint` record keep it as `iter`)."""
    return r["checkpoint"]["iter"] if "checkpoint" in r else r["iter"]


def title(ax, head, detail):
    """The run and what is plotted on the first line, the details wrapped below it."""
    ax.set_title(head + "\n" + textwrap.fill(detail, 72), fontsize=8)


def plot_analysis(r, out_dir):
    paths = []
    run = f"{r['attention']}, iter {iteration(r)}"
    layers = np.arange(len(r["layers"]))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, style, label in (("top1", "o-", "top-1"), ("top2", "s-", "top-2"), ("top3", "^-", "top-3"),
                              ("median", "x--", "median")):
        ax.plot(layers, [l[key] for l in r["layers"]], style, label=label)
    ax.set(yscale="log", xlabel="layer", ylabel="|block output|")
    title(ax, f"{run}: |block output| per layer",
          f"mean over {r['n_seqs']} validation sequences of {r['seq_len']} tokens")
    ax.set_xticks(layers)
    ax.legend()
    paths.append(_save(fig, os.path.join(out_dir, "layerwise.png")))

    v = r["view"]
    h = np.array(v["abs_hidden"])  # (T, C)
    fig = plt.figure(figsize=(6, 4.8))
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(np.arange(h.shape[1]), np.arange(h.shape[0]))
    ax.plot_wireframe(X, Y, h, rstride=1, cstride=1, linewidth=0.4)
    ax.set(xlabel="channel", ylabel="token", zlabel="|h|")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    largest = " (the largest top-1/median)" if v["layer"] == r["summary"]["max_ratio_layer"] else ""
    title(ax, f"{run}: |output of block {v['layer']}|{largest}", f"on {v['source']}")
    ax.set_yticks(range(len(v["tokens"])))
    ax.set_yticklabels([repr(t)[1:-1] for t in v["tokens"]], fontsize=5)
    paths.append(_save(fig, os.path.join(out_dir, "view3d.png")))

    a = np.array(v["attention"])
    labels = (["k'"] if v["has_extra_key"] else []) + [repr(t)[1:-1] for t in v["tokens"]]
    fig, ax = plt.subplots(figsize=(5, 4.6))
    im = ax.imshow(a, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=5)
    ax.set_yticks(range(len(v["tokens"])))
    ax.set_yticklabels(labels[-len(v["tokens"]):], fontsize=5)
    ax.set(xlabel="key" + (" (k': the extra key)" if v["has_extra_key"] else ""), ylabel="query")
    shares = [l["top_key_share"] for l in r["attention_layers"]]
    layer, sink = v["attention_layer"], int(np.argmax(shares))
    here = r["attention_layers"][layer]
    where = "the largest top-key share of any layer" if layer == sink else \
        f"layer {sink} has the largest top-key share, {shares[sink]:.2f}"
    title(ax, f"{run}: attention of layer {layer}, mean over heads",
          f"on {v['source']}. Over {r['n_seqs']} validation sequences, key t{here['top_key']} takes "
          f"{here['top_key_share']:.2f} of the attention of queries 1..T-1 in this layer ({where}).")
    fig.colorbar(im, ax=ax, label="attention weight")
    paths.append(_save(fig, os.path.join(out_dir, "attention.png")))
    return paths


def plot_compare(results, path):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in results:
        ax.plot(np.arange(len(r["layers"])), [l["ratio"] for l in r["layers"]], "o-",
                label=f"{r['attention']} (iter {iteration(r)})")
    ax.axhline(100, color="gray", linestyle=":", label="ratio 100")
    ax.set(yscale="log", xlabel="layer", ylabel="top-1 / median |block output|")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    counts = sorted({r["n_seqs"] for r in results})
    if len(counts) == 1:
        detail = f"mean over {counts[0]} validation sequences per run"
    else:
        detail = "mean over each run's validation sequences (" + ", ".join(
            f"{r['attention']}: {r['n_seqs']}" for r in results) + ")"
    title(ax, "top-1 / median |block output| per layer", detail)
    ax.legend(fontsize=7)
    return _save(fig, path)


ANALYSIS_KEYS = ("attention", "layers", "attention_layers", "summary", "view", "n_seqs", "seq_len")


def read_analysis(path):
    """An analyze.py JSON, checked: a missing, unreadable or other file is a UserError."""
    from lib.errors import UserError
    if not os.path.isfile(path):
        raise UserError(f"no such analysis JSON: {path}")
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(r, dict) or any(k not in r for k in ANALYSIS_KEYS) or not ("checkpoint" in r or "iter" in r):
        raise UserError(f"{path} is not an analyze.py analysis.json")
    if "layers_are" not in r:
        raise UserError(f"{path} counts layers from 1 (written before layers were 0-based): run analyze.py on its "
                        "checkpoint again")
    return r


def main(argv):
    """Every JSON and every output folder is checked before the first figure is drawn."""
    from lib.errors import UserError
    from evaluate import check_output_dir
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip())
        return []
    if not argv:
        raise UserError("give one or more analysis.json files")
    results = [read_analysis(p) for p in argv]
    folders = [os.path.dirname(os.path.abspath(p)) for p in argv]
    for folder in folders:
        check_output_dir(folder, "the JSON's folder")
    if len(results) > 1:
        check_output_dir(os.path.dirname(folders[0]), "the folder above the first JSON's")
    paths = [path for r, folder in zip(results, folders) for path in plot_analysis(r, folder)]
    if len(results) > 1:
        paths.append(plot_compare(results, os.path.join(os.path.dirname(folders[0]), "compare_layerwise.png")))
    print("\n".join(paths))
    return paths


if __name__ == "__main__":
    from lib.errors import user_errors_exit
    with user_errors_exit("plot_gpt2.py"):
        main(sys.argv[1:])
