"""The factorial study's answer: attention x optimizer x norm, judged from what the runs logged.

    python factorial.py --runs_dir=results/factorial/runs --results_dir=results/factorial     # the committed table
    python factorial.py --runs_dir=results/factorial/runs --check=True                          # re-derive final.json

Each run is a folder <runs_dir>/<attention>-<optimizer>-<norm>-s<seed>/ holding what train.py wrote while it
trained (stats.jsonl, train_log.jsonl), the report on its final step (final.json: outlier_stats.final_report)
and its final weights (ckpt_<iter>.pt, weights only). Nothing is re-judged: the verdict over the run comes from
stats.jsonl (outlier_stats.persistence), everything at the final step from final.json. Writes into results_dir:
table.json (per run, per cell over seeds, the effect of each factor and what it says of each explanation, the
convergence and the criteria), table.md, trajectories.png (the largest fixed-position ratio against steps per
cell) and convergence.png (validation loss against steps per cell). Where `compression` names consequences.py
--gpt2's report on the runs' final weights, the table adds each compression method's cost per run and cell.

--check=True recomputes every final.json from its committed checkpoint (the same sequences train.py used) and
compares every number within lib/check.py's tolerance; it exits 1 on a difference.
"""
import itertools
import json
import math
import os
import shlex
import sys

import numpy as np
from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.gpt2_checkpoints import checkpoints, load_gpt
from lib.files import write_json, write_text
from lib.gpt2_pages import factorial_summary
from compare import one_per_iter, read_json, read_jsonl
from dataset import Batches
from outlier_stats import SYSTEMATIC_RATIO, criteria, final_report, persistence
from stats_log import LAYERS_ARE, as_stored, as_zero_based

DEFAULTS = dict(runs_dir="results/factorial/runs", sweep_dir="results/factorial/sweep", results_dir="factorial-out",
                compression="results/factorial/compression/consequences.json", check=False, plot=True,
                sweep_only=False)
FACTORS = dict(attention=("default", "ca_softmax"), optimizer=("adamw", "muon"), norm=("layernorm", "rmsnorm_single"))
SEEDS = (1337, 1338)  # the registered design: every cell of FACTORS with each seed
# the level each explanation says removes the outliers, and its name
REMOVES = dict(attention=("ca_softmax", "softmax attention"), optimizer=("muon", "the optimizer (Adam)"),
               norm=("rmsnorm_single", "the per-channel norm gain"))


def read_log(path):
    """A stats.jsonl's lines or a final.json, blocks 0-based whatever code wrote them (stats_log.as_zero_based)."""
    if path.endswith(".jsonl"):
        return [as_zero_based(line) for line in read_jsonl(path)]
    with open(path) as f:
        return as_zero_based(json.load(f))


def run_names(runs_dir):
    if not os.path.isdir(runs_dir):
        raise UserError(f"runs_dir not found: {runs_dir}")
    names = sorted(d for d in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, d)))
    if not names:
        raise UserError(f"no runs in {runs_dir}")
    return names


def settings_of(name):
    """attention, optimizer, norm and seed from a run's name <attention>-<optimizer>-<norm>-s<seed>."""
    try:
        attention, optimizer, norm, seed = name.rsplit("-", 3)
        assert attention in FACTORS["attention"] and optimizer in FACTORS["optimizer"] and norm in FACTORS["norm"]
        return dict(attention=attention, optimizer=optimizer, norm=norm, seed=int(seed.removeprefix("s")))
    except (ValueError, AssertionError):
        raise UserError(f"{name}: not a factorial run name (<attention>-<optimizer>-<norm>-s<seed>)") from None


def peak_of(report):
    """The largest fixed-position ratio over the blocks before the last: (block layer dict, its judged row)."""
    layer = max(report["layers"][:-1], key=lambda l: l["position_ratio"])
    row = next(r for r in layer["positions"] if r["position"] == layer["position"])
    return layer, row


def final_numbers(final):
    """The table's numbers at the final step, from final.json."""
    layer, row = peak_of(final["report"])
    later = [s for shares in row["head_shares"][layer["layer"] + 1:] for s in shares]  # heads of strictly later blocks
    lp = final["largest_peak"]
    return dict(peak_ratio=layer["position_ratio"], peak_block=layer["layer"], peak_position=layer["position"],
                peak_channel=layer["channel"], peak_writer=row["writer"], sink_share=max(later) if later else None,
                kurtosis=max(l["kurtosis"] for l in final["report"]["layers"]),
                cost_zero=lp["cost_zero"], cost_mean=lp["cost_mean"], cost_control=lp["cost_control"],
                cost_zero_over_control=lp["cost_zero_over_control"], load_bearing=lp["load_bearing"],
                channels_rule=lp["channels_rule"], val_loss=final["losses"]["val"],
                systematic_at_final=final["report"]["verdict"]["outliers"])


def trajectory(stats):
    """Per logged step: the largest fixed-position ratio over the blocks before the last."""
    return [dict(iter=s["iter"], peak_ratio=max(l["position_ratio"] for l in s["layers"][:-1])) for s in stats]


def sweep(sweep_dir):
    """The learning-rate sweep: each run <optimizer>-lr<rate>/'s validation loss at its last evaluation, and each
    optimizer's choice (the lowest), flagged when it sits at the edge of the rates tried."""
    rows = []
    for name in sorted(os.listdir(sweep_dir)) if os.path.isdir(sweep_dir) else []:
        log_path = os.path.join(sweep_dir, name, "train_log.jsonl")
        if "-lr" not in name or not os.path.exists(log_path):
            continue
        optimizer, rate = name.split("-lr")
        last = read_jsonl(log_path)[-1]
        rows.append(dict(optimizer=optimizer, lr=float(rate), step=last["iter"], val_loss=last["eval"]["val"]))
    choice = {}
    for optimizer in sorted({r["optimizer"] for r in rows}):
        mine = sorted((r for r in rows if r["optimizer"] == optimizer), key=lambda r: r["lr"])
        best = min(mine, key=lambda r: r["val_loss"])
        choice[optimizer] = dict(lr=best["lr"], val_loss=best["val_loss"], at_edge=best in (mine[0], mine[-1]))
    return dict(rows=sorted(rows, key=lambda r: (r["optimizer"], r["lr"])), choice=choice)


def run_row(runs_dir, name):
    folder = os.path.join(runs_dir, name)
    # a run that has just started has logged nothing yet
    stats, log = (reader(path) if os.path.exists(path) else []
                  for reader, path in ((read_log, os.path.join(folder, "stats.jsonl")),
                                       (read_jsonl, os.path.join(folder, "train_log.jsonl"))))
    row = dict(run=name, **settings_of(name), steps=stats[-1]["iter"] if stats else 0, finished=False,
               trajectory=trajectory(stats),
               val_curve=[dict(iter=line["iter"], val=line["eval"]["val"]) for line in one_per_iter(log)])
    if stats:
        held = persistence(stats)  # every line carries the per-position verdict (outlier_positions)
        row["over_run"] = dict(verdict="yes" if held["held"] else "no", first_held=held["first_held"],
                               streaks=held["streaks"])
    final_path = os.path.join(folder, "final.json")
    if os.path.exists(final_path):
        row.update(finished=True, **final_numbers(read_log(final_path)))
    return row


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return dict(median=float(np.median(values)), low=float(min(values)), high=float(max(values)), n=len(values))


def cells(rows):
    """Per cell (attention, optimizer, norm), over its finished seeds: median and range of each final number."""
    out = []
    for attention, optimizer, norm in itertools.product(*FACTORS.values()):
        mine = [r for r in rows if (r["attention"], r["optimizer"], r["norm"]) == (attention, optimizer, norm)
                and r["finished"]]
        out.append(dict(attention=attention, optimizer=optimizer, norm=norm, seeds=[r["seed"] for r in mine],
                        verdicts=[r.get("over_run", {}).get("verdict") for r in mine],
                        **{k: spread([r[k] for r in mine]) for k in ("peak_ratio", "sink_share", "kurtosis",
                                                                     "val_loss")},
                        cost_zero_over_control=spread([r["cost_zero_over_control"]["mean"] for r in mine])))
    return out


MEASURES = dict(peak_ratio="final peak ratio (log10)", sink_share="sink share",
                cost_zero_over_control="load-bearing cost, zero - control (nats)", kurtosis="kurtosis")


def measure_of(row, key):
    value = row[key]["mean"] if key == "cost_zero_over_control" else row[key]
    return None if value is None else math.log10(value) if key == "peak_ratio" else value


def effect(rows, factor, key="peak_ratio"):
    """The factor's effect on one measure (the log10 final peak ratio by default) over the pairs of cells that
    differ in it only (every seed combination of a pair), and what it says of the explanation that names it (the
    study README's rule; for the other measures its ordering parts: lower in every pair, higher in some). The rule
    speaks of every seed of a cell: a reading that rests on the ordering of the runs is provisional until every
    pair has all of SEEDS in both cells; a systematic verdict where the explanation predicts none refutes at once."""
    removes, name = REMOVES[factor]
    other = next(level for level in FACTORS[factor] if level != removes)
    rest = [f for f in FACTORS if f != factor]
    yes = lambda rs: any(r.get("over_run", {}).get("verdict") == "yes" for r in rs)  # noqa: E731
    pairs, below_everywhere, above_somewhere, verdict_refutes, verdict_elsewhere, complete = [], True, False, False, \
        False, 0
    for levels in itertools.product(*(FACTORS[f] for f in rest)):
        fixed = dict(zip(rest, levels))
        match = lambda r, level: r["finished"] and r[factor] == level and all(r[f] == v for f, v in fixed.items())
        a = [r for r in rows if match(r, removes) and measure_of(r, key) is not None]
        b = [r for r in rows if match(r, other) and measure_of(r, key) is not None]
        verdict_refutes |= key == "peak_ratio" and yes(a)
        verdict_elsewhere |= yes(b)
        if not a or not b:
            below_everywhere = False
            continue
        complete += len(a) == len(b) == len(SEEDS)
        va, vb = [measure_of(r, key) for r in a], [measure_of(r, key) for r in b]
        below = max(va) < min(vb)
        pairs.append(dict(**fixed, change=spread([x - y for x in va for y in vb]), removing_level_below=below))
        below_everywhere &= below
        above_somewhere |= min(va) > max(vb)
        if key == "peak_ratio":
            below_everywhere &= max(r["peak_ratio"] for r in a) < SYSTEMATIC_RATIO
    if key == "peak_ratio":
        word = ("refuted" if above_somewhere else
                "supported" if below_everywhere and verdict_elsewhere else "not decided at this scale")
    else:
        word = "higher in some pair" if above_somewhere else "lower in every pair" if below_everywhere else "mixed"
    if verdict_refutes:
        word = "refuted (a systematic verdict where it predicts none)"
    elif complete < 4:
        word = f"provisional, so far {word} ({complete} of 4 pairs with every seed finished)"
    changes = [p["change"]["median"] for p in pairs]
    return dict(factor=factor, explanation=name, measure=key, removing_level=removes, other_level=other,
                pairs=pairs, median_change=float(np.median(changes)) if changes else None, reading=word)


COMPRESSION = ("w8_tensor", "w8_channel", "w4_tensor", "w4_channel", "w8a8", "prune50")


def compression(path, rows):
    """consequences.py --gpt2's compression of each run's final weights (its consequences.json, when there is
    one): per run, each method's change of the validation loss over the run's own float32 loss (nats) with its
    paired standard error; per cell, their mean over seeds with the standard error of that mean. None without
    the file."""
    if not os.path.exists(path):
        return None
    report = json.load(open(path))
    by_run = {}
    for result in report["results"]:
        run = os.path.basename(os.path.dirname(result["info"]["checkpoint"]))
        by_run[run] = {m: dict(change=v["nll_change"], se=v["nll_change_stderr"])
                       for m, v in result["compression"].items() if "nll_change" in v}
    for r in rows:
        r["compression"] = by_run.get(r["run"])
    per_cell = []
    for a, o, n in itertools.product(*FACTORS.values()):
        mine = [r["compression"] for r in rows if r["compression"] and (r["attention"], r["optimizer"], r["norm"])
                == (a, o, n)]
        methods = {}
        for m in COMPRESSION:
            got = [c[m] for c in mine if m in c]
            if got:
                methods[m] = dict(mean=float(np.mean([g["change"] for g in got])),
                                  se=math.sqrt(sum(g["se"] ** 2 for g in got)) / len(got), n=len(got))
        per_cell.append(dict(attention=a, optimizer=o, norm=n, methods=methods))
    return dict(file=os.path.relpath(path, resolve_path(".")), command=report.get("command"), cells=per_cell)


def convergence(rows):
    """L*: the largest final validation loss over the finished runs (provisional until every run has finished); the
    first logged step at which each run's validation loss is <= L*."""
    finished = [r for r in rows if r["finished"]]
    if not finished:
        return None
    target = max(r["val_loss"] for r in finished)
    steps = {r["run"]: next((p["iter"] for p in r["val_curve"] if p["val"] <= target), None) for r in finished}
    per_cell = [dict(attention=a, optimizer=o, norm=n,
                     steps=spread([steps[r["run"]] for r in finished if (r["attention"], r["optimizer"], r["norm"])
                                   == (a, o, n)]))
                for a, o, n in itertools.product(*FACTORS.values())]
    return dict(target_loss=target, steps_to_target=steps, cells=per_cell)


def check(runs_dir, names):
    """Recompute each committed final.json from its committed checkpoint; the differences, one line each."""
    from lib.check import differences
    problems, checked = [], 0
    for name in names:
        folder = os.path.join(runs_dir, name)
        found = checkpoints(folder)
        if not found or not os.path.exists(os.path.join(folder, "final.json")):
            continue
        checked += 1
        model, ckpt, _ = load_gpt(found[-1][1])
        c = ckpt["config"]
        val = Batches(c["dataset"], "val", 1, c["block_size"], 0)
        n = min(c["stats_seqs"], val.available(c["block_size"]) // 2)
        both = val.sequences(2 * n, c["block_size"])
        old = json.load(open(os.path.join(folder, "final.json")))
        new = as_stored(final_report(model, both[:n], both[n:]), old)  # compared in the stored file's numbering
        problems += [f"{name}: {d}" for d in differences({k: old[k] for k in new}, new)]
        print(f"checked {name} ({found[-1][1]}): {'same' if not problems else 'differs'}")
    print(f"{checked} finished run(s) checked; {len(names) - checked} without final weights yet (still training)")
    return problems


def markdown(table):
    """table.md: the sweep, the runs, the cells over seeds, each factor's effect and reading, the steps to L* and
    the compression costs per cell."""
    rows, cell_rows, effects = table["runs"], table["cells"], table["effects"]
    conv, swept, comp = table["convergence"], table["sweep"], table["compression"]
    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    def rng(s, fmt="{:.1f}"):
        return "-" if s is None else f"{f(s['median'], fmt)} ({f(s['low'], fmt)}-{f(s['high'], fmt)})"
    lines = ["Blocks are 0-based, as everywhere in the project.", "",
             "| sweep: optimizer | rate | validation loss at the last step |", "|---|---|---|"]
    lines += [f"| {r['optimizer']} | {r['lr']:.2e} | {r['val_loss']:.4f} (step {r['step']})"
              + (" **chosen**" if swept["choice"][r["optimizer"]]["lr"] == r["lr"] else "") + " |"
              for r in swept["rows"]]
    lines += ["", "| run | steps | peak ratio (block, position, channel) | sink share | zero - control (nats) "
                  "| mean (nats) | kurtosis | val loss | verdict over run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["finished"]:
            lines.append(f"| {r['run']} | {r['steps']} | running | | | | | | |")
            continue
        zc, mean = r["cost_zero_over_control"], r["cost_mean"]
        lines.append(f"| {r['run']} | {r['steps']} | {r['peak_ratio']:.1f} (block {r['peak_block']}, position "
                     f"{r['peak_position']}, channel {r['peak_channel']}) | {f(r['sink_share'], '{:.2f}')} | "
                     f"{zc['mean']:+.4f} ± {zc['se']:.4f} | {mean['mean']:+.4f} ± {mean['se']:.4f} | "
                     f"{r['kurtosis']:.1f} | {r['val_loss']:.4f} | {r.get('over_run', {}).get('verdict', '-')} |")
    lines += ["", "| attention | optimizer | norm | seeds | peak ratio | sink share | zero - control | kurtosis | "
                  "val loss |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cell_rows:
        lines.append(f"| {c['attention']} | {c['optimizer']} | {c['norm']} | {len(c['seeds'])} | "
                     f"{rng(c['peak_ratio'])} | {rng(c['sink_share'], '{:.2f}')} | "
                     f"{rng(c['cost_zero_over_control'], '{:+.4f}')} | {rng(c['kurtosis'])} | "
                     f"{rng(c['val_loss'], '{:.4f}')} |")
    lines += ["", "Each factor over the pairs of cells that differ in it only: the change (removing level - other) per "
              "pair, its median and range over the pair's seed combinations, and the reading: on the peak ratio the "
              "registered rule (README), on the other measures whether the removing level is lower in every pair, "
              "higher in some or mixed; provisional until every pair has both seeds.", "",
              "| explanation | measure | removing level | change per pair: median (range) | median over pairs | "
              "reading |", "|---|---|---|---|---|---|"]
    for e in effects:
        fmt = "{:+.3f}"
        per_pair = "; ".join(f"{'/'.join(str(v) for k, v in p.items() if k in FACTORS)} {rng(p['change'], fmt)}"
                             for p in e["pairs"]) or "-"
        lines.append(f"| {e['explanation']} | {MEASURES[e['measure']]} | {e['removing_level']} | {per_pair} | "
                     f"{f(e['median_change'], fmt)} | {e['reading']} |")
    if conv:
        lines += ["", f"| attention | optimizer | norm | steps to a validation loss of {conv['target_loss']:.4f} "
                      "(the largest final one) |", "|---|---|---|---|"]
        lines += [f"| {c['attention']} | {c['optimizer']} | {c['norm']} | {rng(c['steps'], '{:.0f}')} |"
                  for c in conv["cells"]]
    if comp:
        lines += ["", "Compression: the change of the validation loss (nats) over each run's own float32 loss, the mean "
                  "over a cell's seeds ± the standard error within runs (paired over sequences; the spread between "
                  "seeds is in table.json's runs).", "",
                  "| attention | optimizer | norm | " + " | ".join(COMPRESSION) + " |",
                  "|---|---|---|" + "---|" * len(COMPRESSION)]
        for c in comp["cells"]:
            cols = [f"{c['methods'][m]['mean']:+.4f} ± {c['methods'][m]['se']:.4f}" if m in c["methods"] else "-"
                    for m in COMPRESSION]
            lines.append(f"| {c['attention']} | {c['optimizer']} | {c['norm']} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, results_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for key, fname, ylabel, log in (("trajectory", "trajectories.png", "largest fixed-position ratio, blocks "
                                     "before the last", True),
                                    ("val_curve", "convergence.png", "validation loss", False)):
        fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True, sharey=True)
        for ax, (attention, optimizer, norm) in zip(axes.flat, itertools.product(*FACTORS.values())):
            for r in rows:
                if (r["attention"], r["optimizer"], r["norm"]) != (attention, optimizer, norm) or not r[key]:
                    continue
                y = [p["peak_ratio" if key == "trajectory" else "val"] for p in r[key]]
                ax.plot([p["iter"] for p in r[key]], y, label=f"seed {r['seed']}")
            if log:
                ax.set_yscale("log")
                ax.axhline(SYSTEMATIC_RATIO, color="grey", ls="--", lw=0.8, label=f"{SYSTEMATIC_RATIO:g} (criterion)")
            ax.set_title(f"{attention}, {optimizer}, {norm}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        for ax in axes[-1]:
            ax.set_xlabel("training step")
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel, fontsize=8)
        fig.suptitle(f"factorial study: {ylabel} against steps, per cell (attention, optimizer, norm)")
        fig.tight_layout()
        fig.savefig(os.path.join(results_dir, fname), dpi=110)
        plt.close(fig)


def main(argv):
    c = configure(DEFAULTS, argv)
    swept = sweep(resolve_path(c["sweep_dir"]))
    if c["sweep_only"]:
        for r in swept["rows"]:
            print(f"{r['optimizer']:>6} lr {r['lr']:.2e}: val loss {r['val_loss']:.4f} at step {r['step']}")
        for optimizer, best in swept["choice"].items():
            print(f"{optimizer}: lr {best['lr']:.2e}" + (" (at the edge of the rates tried: extend)" if best["at_edge"]
                                                         else ""))
        return swept
    runs_dir = resolve_path(c["runs_dir"])
    names = run_names(runs_dir)
    for name in names:
        settings_of(name)
    if c["check"]:
        problems = check(runs_dir, names) + check_table(c, names)
        for p in problems:
            print(p)
        if problems:
            sys.exit(1)
        return None
    table = make_table(c, swept, [run_row(runs_dir, n) for n in names], argv)
    results_dir = resolve_path(c["results_dir"])
    write_json(os.path.join(results_dir, "table.json"), table)
    page = table_page(table)
    write_text(os.path.join(results_dir, "table.md"), page)
    if c["plot"]:
        plot(table["runs"], results_dir)
    print(page)
    return table


def make_table(c, swept, rows, argv):
    """table.json: the runs, the cells over seeds, each factor's effects, the convergence and compression."""
    from lib.provenance import provenance
    comp = compression(resolve_path(c["compression"]), rows)
    effects = [effect(rows, f, key) for key in MEASURES for f in FACTORS]
    registered = len(SEEDS) * math.prod(len(levels) for levels in FACTORS.values())
    return dict(layers_are=LAYERS_ARE, registered_runs=registered, sweep=swept, runs=rows, cells=cells(rows),
                effects=effects, convergence=convergence(rows), compression=comp, criteria=criteria(),
                provenance=provenance(command=shlex.join(["python", "factorial.py", *argv])))


def table_page(table):
    """table.md: the answer in sentences (lib.gpt2_pages.factorial_summary), then the tables."""
    return "\n".join(factorial_summary(table)) + "\n\n" + markdown(table)


def check_table(c, names):
    """The committed table.json in results_dir (when there is one) against the table the committed runs make now,
    and its table.md against the page that table.json makes: the differences, one line each."""
    from lib.check import differences
    path = os.path.join(resolve_path(c["results_dir"]), "table.json")
    if not os.path.exists(path):
        return []
    runs_dir = resolve_path(c["runs_dir"])
    fresh = make_table(c, sweep(resolve_path(c["sweep_dir"])), [run_row(runs_dir, n) for n in names], [])
    stored = read_json(path)  # a damaged committed table is a one-line error
    found = differences(stored, fresh) + differences(stored["runs"], fresh["runs"], "/runs")  # "runs" is skipped
    # at the top level (lib.check.SKIP: a consequences.json's list of results), so it is compared on its own
    with open(os.path.join(os.path.dirname(path), "table.md")) as f:
        if f.read() != table_page(stored):
            found.append("table.md is not what its table.json makes (run factorial.py with --results_dir)")
    print(f"checked {path} against the committed runs: {'same' if not found else 'differs'}")
    return [f"table.json: {d}" for d in found]


if __name__ == "__main__":
    with user_errors_exit("factorial.py"):
        main(sys.argv[1:])
