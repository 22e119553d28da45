"""The emergence table: runs of any settings side by side, judged per block and position.

    python emergence.py --runs="['out-emergence-default', 'out-emergence-ca_softmax']"    # into emergence-out/
    python emergence.py --runs="[...]" --results_dir=results/emergence --from_logs=True  # the committed table

Each run is a train.py out_dir with its newest checkpoint and, where training logged them (stats_interval),
stats.jsonl (per-layer statistics against steps) and train_log.jsonl (losses against steps). From a checkpoint,
each row holds: the val loss (evaluate.py's evaluation), outlier_stats.layer_report on the first n_seqs validation
sequences (per block and judged position: ratio, how often it holds the block's maximum, writer, per-head
attention on it, the verdict), outlier_stats.peak_ablation (is each judged peak load-bearing? calibration means
from the next n_seqs validation sequences), and from stats.jsonl the verdict over the logged checkpoints
(outlier_stats.run_verdict) and the growth of each layer's position-free ratio per 1k steps over the last half.

--from_logs=True judges runs whose checkpoints are gone from what they committed: <results_dir>/runs/<name>/
(stats.jsonl, train_log.jsonl; <name> without the out-emergence- prefix) and, for the numbers only the final
checkpoint gave (val loss, the report and ablation of the rule in force then), the run's row in the existing
<results_dir>/table.json, carried over under `at_checkpoint` and labelled as such. What only a checkpoint can
decide is marked "not re-judged". Writes <results_dir>/table.md, table.json, trajectories.png (position-free
ratio per layer and sink share against steps, one panel per run) and convergence.png (val loss against steps).
The criteria are outlier_stats.criteria(). Every run is checked (from a checkpoint: its newest checkpoint
loads) and so is the output folder before anything is computed, and nothing is written before every row is made.
"""
import os
import sys
import textwrap

import numpy as np
from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.gpt2_data import load_meta
from lib import outliers
from compare import check_runs, one_per_iter, open_run, read_json, read_jsonl, read_stats, write_table
from dataset import Batches
from evaluate import at_least, evaluate
from outlier_stats import SINK_SHARE, SYSTEMATIC_RATIO, criteria, layer_report, peak_ablation, ratio_floor, run_verdict
from stats_log import shift_blocks

DEFAULTS = dict(runs=[], results_dir="emergence-out", n_seqs=64, eval_iters=50, batch_size=16, device="cpu",
                plot=True, from_logs=False, stats_seqs=64)
DESIGN_FIXED = dict(bos=(0,), random_first=(0, 1), nobos=(0,))  # positions whose token the design fixes
PREFIX = "out-emergence-"
NOT_REJUDGED = ("the per-position verdict at any checkpoint (fixed-position ratio, how often a position holds the "
                "maximum, the writer of each passing position, per-head sinks) and the load-bearing test (massive "
                "channels zeroed and set to their calibration mean, five control draws): they need the checkpoints")
AT_CHECKPOINT = ("measured at the final checkpoint by the report in force before the per-position verdict: the "
                 "most frequent position of each sequence's maximum, the mean of per-sequence maxima over medians "
                 "('ratio'), head-averaged attention shares, a verdict with a sink in any layer, and an ablation that "
                 "zeroed every channel at least half the peak's against one random control")


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


SETTINGS = ("design", "attention", "pos_emb", "optimizer", "lr", "weight_decay", "width", "n_layer", "heads",
            "fresh_data")


def logged_ratio(layer):
    """A stats.jsonl layer entry's position-free top-1/median (its key before the per-position verdict: 'ratio')."""
    return layer["top1_ratio_mean"] if "top1_ratio_mean" in layer else layer["ratio"]


def from_the_logs(stats, log, n_layer):
    """What the table plots and tabulates from stats.jsonl and train_log.jsonl."""
    log = one_per_iter(log)
    steps = [s["iter"] for s in stats]
    per_layer = [[logged_ratio(s["layers"][i]) for s in stats] for i in range(n_layer)]
    return dict(slope_per_1k=[slope_per_1k(steps, v) for v in per_layer],
                peak_over_run=[max(v) if v else None for v in per_layer],
                trajectory=dict(steps=steps, top1_ratio_mean=per_layer,
                                sink_share=[[s["layers"][i]["top_key_share"] for s in stats] for i in range(n_layer)],
                                sink_key=[[s["layers"][i]["top_key"] for s in stats] for i in range(n_layer)]),
                val_curve=dict(steps=[e["iter"] for e in log], val=[e["eval"]["val"] for e in log]))


def row_for(run, c):
    if c["from_logs"]:
        return logged_row(run, c)
    path, model, ckpt = open_run(run, c["device"])
    dataset, T = ckpt["config"]["dataset"], model.config.block_size
    losses = evaluate(model, dataset, c["batch_size"], T, c["eval_iters"], 1000, c["device"])
    val = Batches(dataset, "val", 1, T, 0)
    available = val.available(T)
    if available < 2:
        raise UserError(f"{dataset}'s val split holds {available} sequence(s); the report and the calibration need 2")
    n = min(c["n_seqs"], available - 1)
    both = val.sequences(min(2 * n, available), T).to(c["device"])
    seqs, calib = both[:n], both[n:]  # calibration means from sequences the ablation is not measured on
    report = layer_report(model, seqs)
    out_dir = os.path.dirname(path)
    stats = read_stats(os.path.join(out_dir, "stats.jsonl"))
    log = read_jsonl(os.path.join(out_dir, "train_log.jsonl"))
    row = settings(ckpt)
    over = run_verdict(stats, row["heads"], ckpt["config"].get("stats_seqs", 64), DESIGN_FIXED.get(row["design"], (0,)))
    return dict(run=os.path.basename(os.path.normpath(out_dir)), source="checkpoint",
                checkpoint=os.path.relpath(path, resolve_path(".")), iter=ckpt["iter_num"], **row,
                val_loss=losses["val"]["loss"], train_loss=losses["train"]["loss"], layers=report["layers"],
                verdict=report["verdict"], over_run=over, max_over_layers=report["max_over_layers"],
                ablation=peak_ablation(model, seqs, report, calib), **from_the_logs(stats, log, row["n_layer"]))


def previous_rows(results_dir):
    """The rows of the table.json already in results_dir, by run name, blocks 0-based (a table written when blocks
    counted from 1 says nothing in `layers_are`: its rows are converted)."""
    path = os.path.join(results_dir, "table.json")
    if not os.path.exists(path):
        return {}
    table = read_json(path)
    if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
        raise UserError(f"{path} is not an emergence.py table")
    return {r["run"]: r if "layers_are" in table else shift_blocks(r, -1) for r in table["rows"]}


def logged_row(run, c):
    """A run judged from its committed logs, with the final checkpoint's numbers carried from the table."""
    results_dir = resolve_path(c["results_dir"])
    name = os.path.basename(os.path.normpath(run))
    folder = os.path.join(results_dir, "runs", name.removeprefix(PREFIX))
    stats = read_stats(os.path.join(folder, "stats.jsonl"))
    if not stats:
        raise UserError(f"{name}: no stats.jsonl in {folder}")
    before = previous_rows(results_dir).get(name)
    if before is None:
        raise UserError(f"{name}: no row in {os.path.join(results_dir, 'table.json')} to carry the final checkpoint's "
                        "numbers from; judge it from its checkpoint (without --from_logs)")
    at_checkpoint = before.get("at_checkpoint") or dict(
        note=AT_CHECKPOINT, **{k: before[k] for k in ("checkpoint", "iter", "val_loss", "train_loss", "layers",
                                                        "verdict", "max_over_layers", "ablation")})
    row = {k: before[k] for k in SETTINGS}
    over = run_verdict(stats, row["heads"], c["stats_seqs"], DESIGN_FIXED.get(row["design"], (0,)))
    return dict(run=name, source="logs", logs=os.path.relpath(folder, resolve_path(".")), iter=at_checkpoint["iter"],
                **row, val_loss=at_checkpoint["val_loss"], over_run=over, not_re_judged=NOT_REJUDGED,
                at_checkpoint=at_checkpoint, last_logged=stats[-1],
                **from_the_logs(stats, read_jsonl(os.path.join(folder, "train_log.jsonl")), row["n_layer"]))


def block_cells(row):
    """Per block: from a checkpoint, the largest position's ratio (position, how often it holds the maximum,
    writer); from the logs, the last logged checkpoint's position-free ratio and peak position."""
    if row["source"] == "checkpoint":
        cells = []
        for r in row["layers"]:
            p = next(x for x in r["positions"] if x["position"] == r["position"])
            cells.append(f"{r['position_ratio']:.0f} (t{r['position']} c{r['channel']}, {r['holds_max']:.0%}, "
                         f"{p['writer']})")
        return " / ".join(cells)
    return " / ".join(f"{logged_ratio(r):.0f} (t{r.get('token', r.get('position'))}, {r.get('writer', '-')})"
                      for r in row["last_logged"]["layers"])


def sink_cell(row):
    """Per layer, the most-attended key position and its head-averaged share (bold where > SINK_SHARE)."""
    layers = row["layers"] if row["source"] == "checkpoint" else row["last_logged"]["layers"]
    cells = []
    for r in layers:
        s = f"t{r['top_key']} {r['top_key_share']:.2f}"
        cells.append(f"**{s}**" if r["top_key_share"] > SINK_SHARE else s)
    return " / ".join(cells)


def steps_cell(row):
    """The checkpoint's step; for a row from the logs, also the last logged step its per-block cells are from."""
    if row["source"] == "logs" and row["last_logged"]["iter"] != row["iter"]:
        return f"{row['iter']} (logged to {row['last_logged']['iter']})"
    return str(row["iter"])


def streak_text(s):
    where = "a position" if s["position"] is None else f"t{s['position']}"
    return f"L{s['layer']} {where} {s['first'] // 1000}k-{s['last'] // 1000}k ({s['checkpoints']})"


def verdict_cell(row):
    """The run's verdict over its logged checkpoints, with the runs of checkpoints that decide or leave it open."""
    over = row["over_run"]
    if over["verdict"] == "yes":
        held = [s for s in over["held"] if s["checkpoints"] >= 3]
        return "**yes**: " + ", ".join(streak_text(s) for s in held)
    if over["verdict"] == "no":
        return "no"
    return "not re-judged; open: " + ", ".join(streak_text(s) for s in over["possible"])


def peak_streaks_cell(row):
    """Where the logged peak passed every logged check (lines logged before the per-position verdict)."""
    runs = row["over_run"]["logged_peak_streaks"]
    return ", ".join(streak_text(s) for s in runs) if runs else "-"


def ablation_cell(row):
    """The load-bearing test: each judged peak's massive channels zeroed (calibration mean; control's mean)."""
    if row["source"] == "logs":
        return "not re-judged"
    if not row["ablation"]:
        return "no peak passes the ratio"
    return "; ".join(f"L{a['layer']} t{a['position']} ({len(a['channels'])} ch): {a['loss_zeroed'] - a['loss']:+.4f} "
                     f"(mean {a['loss_mean'] - a['loss']:+.4f}; control {a['loss_control'] - a['loss']:+.4f})"
                     f"{', load-bearing' if a['load_bearing'] else ''}" for a in row["ablation"])


CURVE_STEPS = (2000, 10000, 50000)


def loss_at(curve, step):
    """train.py's val loss at the evaluation nearest `step` (None when the run has none within 10%)."""
    pairs = [(abs(s - step), v) for s, v in zip(curve["steps"], curve["val"]) if abs(s - step) <= 0.1 * step]
    return min(pairs)[1] if pairs else None


def markdown(rows):
    head = ("| run | design | attention | pos | opt | lr | wd | width | steps | val loss | top-1/median per block "
            "(position, how often it holds the maximum, writer) | most-attended key per layer (head average) "
            "| growth per 1k steps (last half, position-free) | systematic outlier over the logged checkpoints "
            "(block, position, steps, checkpoints) | logged peak passes the logged checks | val loss at 2k / 10k / "
            "50k steps | load-bearing: massive channels zeroed, loss change in nats (mean-set; control) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        slopes = " / ".join("-" if s is None else f"{s:+.2f}" for s in r["slope_per_1k"])
        curve = " / ".join("-" if x is None else f"{x:.3f}" for x in (loss_at(r["val_curve"], s) for s in CURVE_STEPS))
        lines.append(f"| {r['run'].removeprefix(PREFIX)} | {r['design']} | {r['attention']} | {r['pos_emb']} "
                     f"| {r['optimizer']} | {r['lr']:g} | {r['weight_decay']:g} | {r['width']} | {steps_cell(r)} "
                     f"| {r['val_loss']:.4f} | {block_cells(r)} | {sink_cell(r)} | {slopes} | {verdict_cell(r)} "
                     f"| {peak_streaks_cell(r)} | {curve} | {ablation_cell(r)} |")
    notes = ["", "Blocks and layers (L) are 0-based, as everywhere in the project.",
             "Rows judged from a checkpoint: top-1/median is the ratio at a fixed position "
             f"({outliers.POSITION_RATIO}).",
             "Rows judged from the committed logs (the checkpoints are gone): the last logged checkpoint's "
             f"position-free ratio ({outliers.TOP1_RATIO_MEAN}) and the most frequent position of each sequence's "
             f"maximum; their attention shares of late keys (t2 and later) are over the queries that see the key, "
             f"so larger than the share of queries 1..T-1 (positions 0 and 1: the same); 'not re-judged' marks what "
             f"only a checkpoint can decide: {NOT_REJUDGED}. The logged peak passes the logged checks where the "
             f"old report's numbers pass every check they can: position-free ratio >= {SYSTEMATIC_RATIO:g}, on "
             "a position the design fixes, MLP writer, embedding share under 10%, and a strictly later layer "
             f"whose most attended key it is with a head-averaged share > {SINK_SHARE:g}."]
    return "\n".join(lines + notes) + "\n"


def plot(rows, results_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    n = len(rows)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((n + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    for ax, r in zip(axes.flat, rows):
        t = r["trajectory"]
        for i, ratio in enumerate(t["top1_ratio_mean"]):
            ax.plot(np.array(t["steps"]) / 1000, ratio, label=f"L{i}", color=f"C{i}")
        ax.axhline(SYSTEMATIC_RATIO, color="grey", lw=0.8, ls=":", label=f"ratio {SYSTEMATIC_RATIO:g}")
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
    shares = Line2D([], [], color="grey", ls="--", lw=0.8, label="most-attended key's share (right)")
    axes[0, 0].legend(handles=axes[0, 0].get_lines() + [shares], fontsize=7, loc="upper left")
    fig.suptitle(textwrap.fill("solid: per layer, top-1/median of each sequence wherever its maximum sits, mean over "
                               "sequences (log, left); dashed: head-averaged share of the most-attended key per layer "
                               "(right)", int(60 * cols)), fontsize=9)
    fig.tight_layout()
    paths = [os.path.join(results_dir, "trajectories.png"), os.path.join(results_dir, "convergence.png")]
    fig.savefig(paths[0], dpi=90, bbox_inches="tight")
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
    fig.savefig(paths[1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return paths


def log_bounds(stats_seqs):
    """The bounds a log written before the per-position verdict gives (outlier_stats.logged_status)."""
    return dict(stats_seqs=stats_seqs, ratio_floor=ratio_floor(stats_seqs), sink_share=SINK_SHARE,
                text=f"a block whose logged position-free ratio is under {ratio_floor(stats_seqs):.1f} (over "
                     f"{stats_seqs} sequences) cannot pass the ratio; a layer whose heads x top-key share is <= "
                     f"{SINK_SHARE:g} has no head above {SINK_SHARE:g}")


def loads(run, c):
    """A run to judge from its checkpoint: its newest checkpoint loads."""
    open_run(run, "cpu")


def main(argv):
    c = configure(DEFAULTS, argv)
    at_least(c, 1, "n_seqs", "eval_iters", "batch_size", "stats_seqs")
    check_runs(c, None if c["from_logs"] else loads)
    rows = [row_for(run, c) for run in c["runs"]]
    results_dir = write_table(c, rows, markdown, criteria(), "emergence.py", log_bounds=log_bounds(c["stats_seqs"]))
    if c["plot"]:
        plot(rows, results_dir)
    return rows


if __name__ == "__main__":
    with user_errors_exit("emergence.py"):
        main(sys.argv[1:])
