"""Train/val loss and perplexity of a checkpoint.

    python test.py --ckpt=out-backcopy-default/ckpt_3000.pt [--eval_iters=50 --batch_size=16]
    python test.py config/eval_gpt2_default.py

Omitting --ckpt takes the newest ckpt_<iter>.pt of out_dir. Batches are drawn with fixed seeds, so two
checkpoints are compared on the same tokens. Writes <ckpt>.eval.json next to the checkpoint.
"""
import math
import os
import sys

import torch

from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.files import write_json
from lib.gpt2_checkpoints import checkpoints, load_gpt
from dataset import Batches
from outlier_stats import checkpoint_provenance

DEFAULTS = dict(ckpt="", out_dir="out", dataset="", batch_size=16, block_size=0, eval_iters=50, device="cpu",
                seed=1000,
                n_seqs=3, layer=0)  # analysis settings: read by analyze.py, accepted so one eval config serves both


def find_checkpoint(ckpt, out_dir):
    if ckpt:
        return resolve_path(ckpt)
    found = checkpoints(resolve_path(out_dir))
    if not found:
        raise UserError(f"no ckpt_<iter>.pt in {resolve_path(out_dir)}; pass --ckpt=PATH")
    return found[-1][1]


def open_checkpoint(c):
    """(path, model, checkpoint, dataset) for the settings' --ckpt or newest checkpoint in --out_dir."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    path = find_checkpoint(c["ckpt"], c["out_dir"])
    model, ckpt, _ = load_gpt(path, c["device"])
    return path, model, ckpt, c["dataset"] or ckpt["config"]["dataset"]


@torch.no_grad()
def evaluate(model, dataset, batch_size, block_size, eval_iters, seed, device):
    result = {}
    for split in ("train", "val"):
        batches = Batches(dataset, split, batch_size, block_size, seed + (split == "val"), device)
        losses = [model(*batches.next()).loss.item() for _ in range(eval_iters)]
        loss = sum(losses) / len(losses)
        result[split] = dict(loss=loss, perplexity=math.exp(loss))
    return result


def main(argv):
    c = configure(DEFAULTS, argv)
    path, model, ckpt, dataset = open_checkpoint(c)
    block_size = c["block_size"] or model.config.block_size
    result = evaluate(model, dataset, c["batch_size"], block_size, c["eval_iters"], c["seed"], c["device"])
    result.update(ckpt=os.path.basename(path), iter=ckpt["iter_num"], attention=model.config.attention,
                  dataset=dataset, tokens=c["eval_iters"] * c["batch_size"] * block_size)
    for split in ("train", "val"):
        print(f"{split}: loss {result[split]['loss']:.4f}, perplexity {result[split]['perplexity']:.3f}")
    result["provenance"] = checkpoint_provenance(path, ckpt, data=dict(dataset=dataset, eval_batches=c["eval_iters"],
                                                                       seed=c["seed"]))
    write_json(path[:-3] + ".eval.json", result)
    return result


if __name__ == "__main__":
    with user_errors_exit("test.py"):
        main(sys.argv[1:])
