"""Bundle training runs for transfer: each run's newest checkpoint without optimizer state (weights, model
settings, config, losses), its train_log.jsonl, stats.jsonl and console log, into DEST/runs_<k>.tar.gz of at
most --max_mb each (the optimizer state is left out to keep them small: such a checkpoint evaluates and
analyses, but cannot resume training exactly, unless --keep_optimizer names the run).

    python results/emergence/pack_runs.py DEST out-emergence-* [--logs=logs-emergence] [--max_mb=15] [--keep_optimizer=a,b]
"""
import argparse
import io
import os
import tarfile

import torch

from lib.gpt2_checkpoints import checkpoints


def members(run, logs, keep_optimizer=()):
    name = os.path.basename(run.rstrip("/"))
    short = name.removeprefix("out-emergence-")  # as run_gpu.sh names the run (and its log)
    found = checkpoints(run)
    if found:
        it, path = found[-1]
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if short not in keep_optimizer:
            ckpt.pop("optimizer", None)
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        yield f"{name}/ckpt_{it}.pt", buf.getvalue()
    for fname in ("train_log.jsonl", "stats.jsonl"):
        if os.path.exists(os.path.join(run, fname)):
            yield f"{name}/{fname}", open(os.path.join(run, fname), "rb").read()
    log = os.path.join(logs, short + ".log") if logs else None
    if log and os.path.exists(log):
        yield f"{name}/console.log", open(log, "rb").read()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dest"); p.add_argument("runs", nargs="+")
    p.add_argument("--logs", default=None); p.add_argument("--max_mb", type=float, default=15.0)
    p.add_argument("--keep_optimizer", default="", help="comma-separated run names (without out-emergence-) whose "
                   "optimizer state is packed too, so that they resume exactly")
    a = p.parse_args()
    os.makedirs(a.dest, exist_ok=True)
    k, size, tar = 0, 0, None
    for run in sorted(a.runs):
        for arcname, data in members(run, a.logs, a.keep_optimizer.split(",")):
            if tar is None or size + len(data) > a.max_mb * 2 ** 20:
                if tar is not None:
                    tar.close()
                k, size = k + 1, 0
                tar = tarfile.open(os.path.join(a.dest, f"runs_{k}.tar.gz"), "w:gz")
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            size += len(data)
    if tar is not None:
        tar.close()
    print(f"packed {len(a.runs)} runs into {k} file(s) in {a.dest}")


if __name__ == "__main__":
    main()
