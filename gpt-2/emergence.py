"""The emergence table: runs of any settings side by side, judged per layer (issue 17's criteria).

    python emergence.py --runs="['out-emergence-default', 'out-emergence-ca_softmax']" --results_dir=results/emergence

Each run is a train.py out_dir with its newest checkpoint and, where training logged them (stats_interval),
stats.jsonl (per-layer statistics against steps) and train_log.jsonl (losses against steps). For each run:
the val loss of the checkpoint (test.py's evaluation), outlier_stats.layer_report on the first n_seqs
validation sequences (per block: peak ratio, its position, channel and writer, the attention each layer
pays that position, the verdict), outlier_stats.peak_ablation (do the loss and the sinks need the peaks?),
and from stats.jsonl the step at which the verdict first held and the growth of each layer's ratio per 1k steps
over the last half of the run. Writes <results_dir>/table.md,
table.json, trajectories.png (ratio per layer and sink share against steps, one panel per run) and
convergence.png (val loss against steps). The criteria are outlier_stats' constants, fixed before the runs.
"""
import json
import os
import sys

import numpy as np
from lib.configurator import configure, resolve_path, user_errors_exit
from lib.gpt2_checkpoints import load_gpt
from lib.gpt2_data import load_meta
from compare import table_over_runs
from dataset import Batches
from outlier_stats import EMBED_SHARE, SINK_SHARE, SYSTEMATIC_RATIO, layer_report, peak_ablation
from test import evaluate, find_checkpoint

DEFAULTS = dict(runs=[], results_dir="results/emergence", n_seqs=64, eval_iters=50, batch_size=16, device="cpu",
                plot=True)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def slope_per_1k(steps, values):
    """Least-squares growth of values per 1000 steps over the last half of the run (None with < 3 points)."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    half = steps >= steps[-1] / 2 if len(steps) else steps
    if half.sum() < 3:
        return None
    return float(np.polyfit(steps[half], values[half], 1)[0] * 1000)


def settings(ckpt):
    c, m = ckpt["config"], ckpt["model_args"]
    return dict(design=load_meta(c["dataset"]).get("design", "bos"), attention=m["attention"],
                pos_emb=m.get("pos_emb", "learned"), optimizer=c.get("optimizer", "adamw"), lr=c["learning_rate"],
                weight_decay=c["weight_decay"], width=m["n_embd"], n_layer=m["n_layer"], heads=m["n_head"],
                fresh_data=c.get("fresh_data", False))


def row_for(run, c):
    path = find_checkpoint("", run)
    model, ckpt, _ = load_gpt(path, c["device"])
    dataset, T = ckpt["config"]["dataset"], model.config.block_size
    losses = evaluate(model, dataset, c["batch_size"], T, c["eval_iters"], 1000, c["device"])
    val = Batches(dataset, "val", 1, T, 0)
    seqs = val.sequences(min(c["n_seqs"], val.available(T)), T).to(c["device"])
    report = layer_report(model, seqs)
    out_dir = os.path.dirname(path)
    stats = read_jsonl(os.path.join(out_dir, "stats.jsonl"))
    log = read_jsonl(os.path.join(out_dir, "train_log.jsonl"))
    steps = [s["iter"] for s in stats]
    per_layer = [[s["layers"][i]["ratio"] for s in stats] for i in range(model.config.n_layer)]
    first = next((s["iter"] for s in stats if s["outliers"]), None)
    return dict(run=os.path.basename(os.path.normpath(out_dir)), checkpoint=os.path.relpath(path, resolve_path(".")),
                iter=ckpt["iter_num"], **settings(ckpt), val_loss=losses["val"]["loss"], train_loss=losses["train"]["loss"],
                layers=report["layers"], verdict=report["verdict"], max_over_layers=report["max_over_layers"],
                ablation=peak_ablation(model, seqs, report),
                first_outlier_step=first, slope_per_1k=[slope_per_1k(steps, v) for v in per_layer],
                peak_over_run=[max(v) if v else None for v in per_layer],
                trajectory=dict(steps=steps, ratio=per_layer,
                                sink_share=[[s["layers"][i]["top_key_share"] for s in stats] for i in range(model.config.n_layer)],
                                sink_key=[[s["layers"][i]["top_key"] for s in stats] for i in range(model.config.n_layer)]),
                val_curve=dict(steps=[e["iter"] for e in log], val=[e["eval"]["val"] for e in log]))


def layer_cell(r):
    text = f"{r['ratio']:.0f} (t{r['token']} c{r['channel']}, {r['writer']}"
    return text + (f" unit {r['unit']}" if "unit" in r else "") + ")"


def sink_cell(row):
    """Per layer, the most-attended key position and its share (bold where > SINK_SHARE)."""
    cells = []
    for r in row["layers"]:
        s = f"t{r['top_key']} {r['top_key_share']:.2f}"
        cells.append(f"**{s}**" if r["top_key_share"] > SINK_SHARE else s)
    return " / ".join(cells)


def ablation_cell(row):
    """The largest peak before the last block zeroed: loss change (control's), its position's share per layer."""
    a = max(row["ablation"], key=lambda x: x["ratio"])
    shares = " / ".join(f"{b:.2f}→{c:.2f}" for b, c in zip(a["share_before"], a["share_after"]))
    return (f"L{a['layer']} t{a['token']} ({len(a['channels'])} ch): {a['loss_zeroed'] - a['loss']:+.4f} "
            f"({a['loss_control'] - a['loss']:+.4f}); {shares}")


CURVE_STEPS = (2000, 10000, 50000)


def loss_at(curve, step):
    """train.py's val loss at the evaluation nearest `step` (None when the run has none within 10%)."""
    pairs = [(abs(s - step), v) for s, v in zip(curve["steps"], curve["val"]) if abs(s - step) <= 0.1 * step]
    return min(pairs)[1] if pairs else None


def markdown(rows):
    head = ("| run | design | attention | pos | opt | lr | wd | width | steps | val loss | top-1/median per layer "
            "(token, channel, writer) | most-attended key per layer | growth per 1k steps (last half) "
            "| systematic outliers (first held at step) | max over layers (old) | val loss at 2k / 10k / 50k steps "
            "| largest peak before the last block zeroed: loss change in nats (random control); its position's "
            "attention share per layer, before → after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        v = r["verdict"]
        found = ", ".join(f"L{x['layer']} t{x['token']} (sink in L{','.join(map(str, x['sink_layers']))})" for x in v["layers"])
        slopes = " / ".join("-" if s is None else f"{s:+.2f}" for s in r["slope_per_1k"])
        lines.append(f"| {r['run']} | {r['design']} | {r['attention']} | {r['pos_emb']} | {r['optimizer']} | {r['lr']:g} "
                     f"| {r['weight_decay']:g} | {r['width']} | {r['iter']} | {r['val_loss']:.4f} "
                     f"| {' / '.join(layer_cell(x) for x in r['layers'])} | {sink_cell(r)} | {slopes} "
                     f"| {'**yes**: ' + found if v['outliers'] else 'no'} ({r['first_outlier_step'] if r['first_outlier_step'] is not None else 'never'}) | {r['max_over_layers']:.0f} "
                     f"| {' / '.join('-' if x is None else f'{x:.3f}' for x in (loss_at(r['val_curve'], s) for s in CURVE_STEPS))} "
                     f"| {ablation_cell(r)} |")
    return "\n".join(lines) + "\n"


def criteria():
    return dict(ratio=SYSTEMATIC_RATIO, sink_share=SINK_SHARE, embed_share=EMBED_SHARE,
                text=(f"a block before the last whose peak top-1/median >= {SYSTEMATIC_RATIO:g} sits on a position that "
                      f"takes > {SINK_SHARE:g} of the attention in some layer, and whose embedding holds < "
                      f"{EMBED_SHARE:.0%} of the peak entry"))


def plot(rows, results_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(rows)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    for ax, r in zip(axes.flat, rows):
        t = r["trajectory"]
        for i, ratio in enumerate(t["ratio"]):
            ax.plot(np.array(t["steps"]) / 1000, ratio, label=f"L{i + 1} ratio", color=f"C{i}")
        ax.axhline(SYSTEMATIC_RATIO, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(r["run"].replace("out-emergence-", ""), fontsize=9)
        ax.set_xlabel("steps (k)")
        ax2 = ax.twinx()
        for i, share in enumerate(t["sink_share"]):
            ax2.plot(np.array(t["steps"]) / 1000, share, color=f"C{i}", ls="--", lw=0.8)
        ax2.set_ylim(0, 1)
        ax2.tick_params(labelsize=7)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("top-1/median |block output|")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle("solid: peak ratio per layer (log, left); dashed: share of the most-attended key per layer (right)",
                 fontsize=9)
    fig.tight_layout()
    paths = [os.path.join(results_dir, "trajectories.png"), os.path.join(results_dir, "convergence.png")]
    fig.savefig(paths[0], dpi=90)
    plt.close(fig)
    designs = sorted({r["design"] for r in rows})
    fig, axes = plt.subplots(1, len(designs), figsize=(6.5 * len(designs), 4), squeeze=False)
    colors = plt.get_cmap("tab20")
    for ax, design in zip(axes[0], designs):
        mine = [r for r in rows if r["design"] == design]
        for i, r in enumerate(mine):
            ax.plot(np.array(r["val_curve"]["steps"]) / 1000, r["val_curve"]["val"], lw=0.9, color=colors(i % 20),
                    label=r["run"].replace("out-emergence-", ""))
        ax.set_xscale("log")
        ax.set_xlabel("steps (k, log)")
        ax.set_ylabel("val loss (train.py's estimate)")
        ax.set_title(f"design {design}", fontsize=9)
        low = min((min(r["val_curve"]["val"]) for r in mine if r["val_curve"]["val"]), default=None)
        if low is not None:
            ax.set_ylim(low - 0.01, low + 0.25)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=90)
    plt.close(fig)
    return paths


def main(argv):
    c = configure(DEFAULTS, argv)
    rows, results_dir = table_over_runs(c, row_for, markdown, criteria(), "emergence.py")
    if c["plot"]:
        plot(rows, results_dir)
    return rows


if __name__ == "__main__":
    with user_errors_exit("emergence.py"):
        main(sys.argv[1:])
