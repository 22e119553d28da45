"""Figures from analyze.py's JSON (the numbers always live in the JSON beside each figure).

    python plot_gpt2.py out-backcopy-default/analysis/analysis.json [more.json ...]

Per analysis: layerwise.png (top-1/2/3 and median of |block output| per layer, log scale), view3d.png
(wireframe of |h| over tokens x channels at the chosen layer), attention.png (head-averaged attention
of the next layer). With several JSONs also compare_layerwise.png (top-1/median per layer, one line each).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    tmp = path[:-4] + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_analysis(r, out_dir):
    paths = []
    layers = np.arange(1, len(r["layers"]) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, style in (("top1", "o-"), ("top2", "s-"), ("top3", "^-"), ("median", "x--")):
        ax.plot(layers, [l[key] for l in r["layers"]], style, label=key)
    ax.set(yscale="log", xlabel="layer", ylabel="|block output|", title=f"{r['attention']} (iter {r['iter']})")
    ax.set_xticks(layers)
    ax.legend()
    paths.append(_save(fig, os.path.join(out_dir, "layerwise.png")))

    v = r["view"]
    h = np.array(v["abs_hidden"])  # (T, C)
    fig = plt.figure(figsize=(6, 4.5))
    ax = fig.add_subplot(projection="3d")
    X, Y = np.meshgrid(np.arange(h.shape[1]), np.arange(h.shape[0]))
    ax.plot_wireframe(X, Y, h, rstride=1, cstride=1, linewidth=0.4)
    ax.set(xlabel="channel", ylabel="token", zlabel="|h|", title=f"{r['attention']}: layer {v['layer']} output")
    ax.set_yticks(range(len(v["tokens"])))
    ax.set_yticklabels([repr(t)[1:-1] for t in v["tokens"]], fontsize=5)
    paths.append(_save(fig, os.path.join(out_dir, "view3d.png")))

    a = np.array(v["attention"])
    labels = (["k'"] if v["has_extra_key"] else []) + [repr(t)[1:-1] for t in v["tokens"]]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(a, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=5)
    ax.set_yticks(range(len(v["tokens"])))
    ax.set_yticklabels(labels[-len(v["tokens"]):], fontsize=5)
    ax.set_title(f"{r['attention']}: attention, layer {v['attention_layer']}")
    fig.colorbar(im, ax=ax)
    paths.append(_save(fig, os.path.join(out_dir, "attention.png")))
    return paths


def plot_compare(results, path):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in results:
        ax.plot(np.arange(1, len(r["layers"]) + 1), [l["ratio"] for l in r["layers"]], "o-", label=r["attention"])
    ax.axhline(100, color="gray", linestyle=":", label="ratio 100")
    ax.set(yscale="log", xlabel="layer", ylabel="top-1 / median |block output|")
    ax.legend(fontsize=7)
    return _save(fig, path)


if __name__ == "__main__":
    results = []
    for p in sys.argv[1:]:
        if not os.path.isfile(p):
            print(f"plot_gpt2.py: error: no such analysis JSON: {p}", file=sys.stderr)
            sys.exit(2)
        with open(p) as f:
            results.append(json.load(f))
        print("\n".join(plot_analysis(results[-1], os.path.dirname(p))))
    if len(results) > 1:
        print(plot_compare(results, os.path.join(os.path.dirname(sys.argv[1]), "..", "compare_layerwise.png")))
