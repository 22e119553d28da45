"""Copy a finished factorial run's final weights into the committed results, compactly: the checkpoint of its last
step without the optimizer state, generator states or per-step extras (weights, model settings, training config,
iteration, final losses), which evaluate.py, analyze.py and factorial.py load like any checkpoint.

    python results/factorial/pack.py OUT_DIR DEST_DIR
"""
import os
import sys

import torch

from lib.files import write_atomically
from lib.gpt2_checkpoints import checkpoints, read_checkpoint

KEPT = ("model", "model_args", "config", "iter_num", "best_val_loss", "losses")


def main(out_dir, dest):
    it, path = checkpoints(out_dir)[-1]
    ckpt = read_checkpoint(path)
    compact = {k: ckpt[k] for k in KEPT if k in ckpt}
    os.makedirs(dest, exist_ok=True)
    write_atomically(os.path.join(dest, f"ckpt_{it}.pt"), lambda f: torch.save(compact, f), binary=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
