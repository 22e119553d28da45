"""One table across attention variants: val loss, outlier statistics, attention sinks, size and speed.

    python compare.py --runs="['out-backcopy-default', 'out-backcopy-sigmoid']" --results_dir=results/backcopy

Each run is a train.py out_dir (its newest checkpoint is used). For each run this evaluates the loss
(test.py), runs the analysis (analyze.py, figures and JSON into <results_dir>/<variant>/), then writes
<results_dir>/table.md and table.json. Criteria:
  systematic outliers = outlier_stats' verdict (outlier_stats.criteria(): per block and position, on the first
             verdict_seqs validation sequences) at the checkpoint, and over the run's logged checkpoints where
             training logged them (stats.jsonl); a run without that log is judged at one checkpoint only, and
             the table says so;
  max over layers >= 100 = the earlier, looser column (any layer, any token), kept beside it;
  sink = some token gets > 50% of the head-averaged attention of queries 1..T-1 in some layer.
The statistics' variants are outlier_stats.VARIANTS, written into table.json.
"""
import json
import os
import sys

import torch

import analyze
from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.files import write_json, write_text
from lib.gpt2_checkpoints import load_gpt
from lib.provenance import provenance
from dataset import Batches
from outlier_stats import VARIANTS, criteria, layer_report, run_verdict
from test import evaluate, find_checkpoint

DEFAULTS = dict(runs=[], results_dir="results/compare", n_seqs=3, verdict_seqs=64, eval_iters=50, batch_size=16,
                device="cpu", plot=True)
OUTLIER_RATIO = 100.0
SINK_SHARE = 0.5


def row_for(run, c):
    path = find_checkpoint("", run)
    model, ckpt, _ = load_gpt(path, c["device"])
    variant = model.config.attention
    dataset = ckpt["config"]["dataset"]
    losses = evaluate(model, dataset, c["batch_size"], model.config.block_size, c["eval_iters"], 1000, c["device"])
    out_dir = os.path.join(resolve_path(c["results_dir"]), variant)
    r = analyze.main([f"--ckpt={path}", f"--analysis_dir={out_dir}", f"--n_seqs={c['n_seqs']}", f"--plot={c['plot']}"])
    s = r["summary"]
    T = model.config.block_size
    val = Batches(dataset, "val", 1, T, 0)
    seqs = val.sequences(min(c["verdict_seqs"], val.available(T)), T).to(c["device"])
    judged = layer_report(model, seqs)["verdict"]
    log = os.path.join(os.path.dirname(path), "train_log.jsonl")
    stats = read_jsonl(os.path.join(os.path.dirname(path), "stats.jsonl"))
    over_run = run_verdict(stats, model.config.n_head, ckpt["config"].get("stats_seqs", 64)) if stats else None
    return dict(variant=variant, run=os.path.relpath(os.path.dirname(path), resolve_path(".")), iter=ckpt["iter_num"],
                val_loss=losses["val"]["loss"], train_loss=losses["train"]["loss"],
                top1=s["max_top1"], median=s["median_at_max_ratio"], ratio=s["max_ratio"], ratio_layer=s["max_ratio_layer"],
                kurtosis=s["max_kurtosis"], first_token_share=s["max_first_token_share"],
                top_key_share=s["max_top_key_share"], extra_key_share=s["max_extra_key_share"], sink_rate=s["sink_rate"],
                params=model.get_num_params(), tokens_per_sec=ckpt.get("tokens_per_sec"),
                ratio_per_layer=[l["ratio"] for l in r["layers"]],
                outliers=judged["outliers"], outlier_positions=judged["found"], rejected_peaks=judged["rejected"],
                attention_written=judged["attention_written"], over_run=over_run,
                max_over_layers_outliers=s["max_ratio"] >= OUTLIER_RATIO, sink=s["max_top_key_share"] > SINK_SHARE,
                train_log=os.path.relpath(log, resolve_path(".")) if os.path.exists(log) else None)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def systematic(r):
    """The verdict cell: at the checkpoint, then over the logged checkpoints (or why not)."""
    now = "yes: " + ", ".join(f"L{x['layer']} t{x['position']} c{x['channel']}" for x in r["outlier_positions"]) \
        if r["outliers"] else "no"
    over = r["over_run"]
    if over is None:
        return f"{now} at this checkpoint (no logged checkpoints: persistence not judged)"
    return f"{now} at this checkpoint; over {over['checkpoints']} logged checkpoints: {over['verdict']}"


def markdown(rows):
    head = ("| variant | val loss | top-1 | median | top-1/median (layer) | kurtosis (excess, all entries) "
            "| 1st-token attn (queries 1..T-1) | top-key attn | extra-key attn | sink rate (queries 1..T-1) "
            "| systematic outliers | max over layers >= 100 (old) | sink | params | tok/s (train) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        tps = f"{r['tokens_per_sec']:,.0f}" if r["tokens_per_sec"] else "-"
        lines.append(f"| {r['variant']} | {r['val_loss']:.4f} | {r['top1']:.2f} | {r['median']:.3f} | {r['ratio']:.1f} ({r['ratio_layer']}) "
                     f"| {r['kurtosis']:.1f} | {r['first_token_share']:.3f} | {r['top_key_share']:.3f} | {r['extra_key_share']:.3f} "
                     f"| {r['sink_rate']:.2f} | {systematic(r)} | {'yes' if r['max_over_layers_outliers'] else 'no'} "
                     f"| {'yes' if r['sink'] else 'no'} "
                     f"| {r['params']:,} | {tps} |")
    return "\n".join(lines) + "\n"


def table_over_runs(c, row_for, markdown, criteria, script):
    """The frame compare.py and emergence.py share: one row per run (c['runs']), then table.md and table.json
    (with the criteria and the command) in c['results_dir']. Returns (rows, results_dir)."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if not c["runs"]:
        raise UserError("give the runs: --runs=\"['out-a', 'out-b']\"")
    rows = [row_for(run, c) for run in c["runs"]]
    results_dir = resolve_path(c["results_dir"])
    os.makedirs(results_dir, exist_ok=True)
    table = markdown(rows)
    write_text(os.path.join(results_dir, "table.md"), table)
    command = " ".join(["python", script] + sys.argv[1:])
    write_json(os.path.join(results_dir, "table.json"),
               dict(criteria=criteria, command=command, rows=rows, provenance=provenance(command=command)))
    print(table)
    return rows, results_dir


def main(argv):
    c = configure(DEFAULTS, argv)
    judged = dict(outlier_ratio=OUTLIER_RATIO, sink_share=SINK_SHARE, systematic=criteria(), variants=VARIANTS)
    rows, results_dir = table_over_runs(c, row_for, markdown, judged, "compare.py")
    if c["plot"] and len(rows) > 1:
        import plot_gpt2
        plot_gpt2.plot_compare([json.load(open(os.path.join(results_dir, r["variant"], "analysis.json"))) for r in rows],
                               os.path.join(results_dir, "compare_layerwise.png"))
    return rows


if __name__ == "__main__":
    with user_errors_exit("compare.py"):
        main(sys.argv[1:])
