"""Train/val loss and perplexity of a checkpoint.

    python evaluate.py --ckpt=out-backcopy-default/ckpt_3000.pt [--eval_iters=50 --batch_size=16]
    python evaluate.py config/eval_gpt2_default.py

Omitting --ckpt takes the newest ckpt_<iter>.pt of out_dir. Batches are drawn with fixed seeds, so two
checkpoints are compared on the same tokens. Prints the checkpoint it reads (path and iteration) and writes
<ckpt>.eval.json next to the checkpoint, whose `checkpoint` names it too.

Also the checkpoint and output helpers analyze.py, compare.py and emergence.py share.
"""
import math
import os
import sys

import torch

from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.files import write_json
from lib.gpt2_checkpoints import checkpoints, load_gpt
from lib.gpt2_data import BPE_VOCAB, GPT2_DIR, load_meta
from lib.model_spec import check_device
from dataset import Batches
from outlier_stats import checkpoint_provenance

# n_seqs, layer and attention_layer are analyze.py's settings, accepted here so that one eval config serves both
DEFAULTS = dict(ckpt="", out_dir="out", dataset="", batch_size=16, block_size=0, eval_iters=50, device="cpu",
                seed=1000, n_seqs=3, layer=0, attention_layer=0)


def at_least(c, minimum, *keys):
    """Each of the settings `keys` is an integer >= minimum."""
    for key in keys:
        if c[key] < minimum:
            raise UserError(f"--{key} must be at least {minimum}, got {c[key]}")


def use_threads():
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def resolve_device(device):
    """cpu, cuda, cuda:N or mps as given; auto: the GPU where there is one, else cpu."""
    device = check_device(device)
    return "cuda" if device == "auto" else device


def check_output_dir(path, flag):
    """A folder a script is about to write into, checked without creating it (so a run that stops on a later
    mistake leaves no empty folder): it is a folder, or its nearest existing parent is one, and writable."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write into {existing}")


def shown_path(path):
    """A path as a user finds it: relative to gpt-2/ when inside it, else absolute."""
    path = os.path.abspath(path)
    inside = os.path.commonpath([path, str(GPT2_DIR)]) == str(GPT2_DIR)
    return os.path.relpath(path, GPT2_DIR) if inside else path


def announce(path, ckpt):
    """Print which checkpoint a result comes from; return the `checkpoint` record of the result's JSON."""
    record = dict(path=shown_path(path), iter=ckpt["iter_num"])
    print(f"checkpoint: {record['path']} (iter {record['iter']})")
    return record


def find_checkpoint(ckpt, out_dir):
    if ckpt:
        return resolve_path(ckpt)
    found = checkpoints(resolve_path(out_dir))
    if not found:
        raise UserError(f"no ckpt_<iter>.pt in {resolve_path(out_dir)}; pass --ckpt=PATH")
    return found[-1][1]


def check_vocabulary(dataset, model):
    """The dataset's tokens fit the model's embedding (a --dataset other than the one it was trained on may not)."""
    vocab = load_meta(dataset).get("vocab_size", BPE_VOCAB)
    if vocab > model.config.vocab_size:
        raise UserError(f"{dataset} has {vocab} token ids, more than the checkpoint's {model.config.vocab_size}: "
                        "give a --dataset of its own vocabulary")


def load_checkpoint(path, device):
    """(file, model, checkpoint dict) of a checkpoint or out dir (its newest checkpoint)."""
    model, ckpt, file = load_gpt(path, device)
    missing = [key for key in ("iter_num", "config") if key not in ckpt]
    if missing:
        raise UserError(f"{file} is not a train.py checkpoint (it has no {', '.join(missing)})")
    return file, model, ckpt


def open_checkpoint(c):
    """(path, model, checkpoint, dataset, record) for the settings' --ckpt or newest checkpoint in --out_dir; sets
    c['device'] to the device used and prints the checkpoint (record: its path and iteration)."""
    use_threads()
    c["device"] = resolve_device(c["device"])
    path, model, ckpt = load_checkpoint(find_checkpoint(c["ckpt"], c["out_dir"]), c["device"])
    dataset = c["dataset"] or ckpt["config"].get("dataset") or ""
    if not dataset:
        raise UserError(f"{path} does not name its dataset: pass --dataset=NAME")
    check_vocabulary(dataset, model)
    return path, model, ckpt, dataset, announce(path, ckpt)


@torch.no_grad()
def evaluate(model, dataset, batch_size, block_size, eval_iters, seed, device):
    result = {}
    for split in ("train", "val"):
        batches = Batches(dataset, split, batch_size, block_size, seed + (split == "val"), device)
        losses = [model(*batches.next())[1].item() for _ in range(eval_iters)]
        loss = sum(losses) / len(losses)
        result[split] = dict(loss=loss, perplexity=math.exp(loss))
    return result


def main(argv):
    c = configure(DEFAULTS, argv)
    at_least(c, 1, "batch_size", "eval_iters")
    at_least(c, 0, "block_size")
    path, model, ckpt, dataset, record = open_checkpoint(c)
    check_output_dir(os.path.dirname(path), "the checkpoint's folder")
    block_size = c["block_size"] or model.config.block_size
    if block_size > model.config.block_size:
        raise UserError(f"--block_size {block_size} exceeds the model's block_size {model.config.block_size}")
    result = evaluate(model, dataset, c["batch_size"], block_size, c["eval_iters"], c["seed"], c["device"])
    result.update(checkpoint=record, attention=model.config.attention, dataset=dataset,
                  tokens=c["eval_iters"] * c["batch_size"] * block_size)
    for split in ("train", "val"):
        print(f"{split}: loss {result[split]['loss']:.4f}, perplexity {result[split]['perplexity']:.3f}")
    result["provenance"] = checkpoint_provenance(path, ckpt, data=dict(dataset=dataset, eval_batches=c["eval_iters"],
                                                                       seed=c["seed"]))
    json_path = path[:-3] + ".eval.json"
    write_json(json_path, result)
    print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    with user_errors_exit("evaluate.py"):
        main(sys.argv[1:])
