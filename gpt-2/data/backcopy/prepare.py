"""Synthetic multi-offset Bigram-Backcopy task (after Guo et al. 2024, "Active-Dormant Attention Heads").

Every sequence starts with a BOS token. Triggers come in groups, one group of `triggers` tokens per copy
offset o in `offsets`: the token after a trigger at position t copies the token at t - o (with offsets=[1]
this is Guo et al.'s back-copy: the token just before the trigger). After any other token the next one is
drawn from a fixed random bigram table, which needs no attention at all. So every copy head must be active
on its triggers and dormant elsewhere: the setting where softmax heads learn to park their mass on a sink.
The bigram table is a Dirichlet(alpha) draw per row (Guo et al. estimate theirs from real text instead).
--bos=False drops the BOS token: sequences then start at an arbitrary ordinary token (design nobos).
--design=random_first puts a random ordinary token first and a fixed token second (Gu et al.'s setting).
The task and its samplers are in lib/backcopy_task.py; train.py --fresh_data=True samples it afresh at every step.

    python data/backcopy/prepare.py [--vocab=64 --triggers=3 --offsets=[1,2,3] --seq_len=33 --alpha=0.05 --train_seqs=60000]

Writes train.bin / val.bin (uint16) and meta.pkl (vocab_size, design, bos, triggers, seq_len, bigram table).
"""
import os
import pickle
import sys

import numpy as np

from lib.backcopy_task import DESIGNS, make_task, sample_design
from lib.configurator import configure, resolve_path
from lib.errors import UserError, user_errors_exit

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULTS = dict(vocab=64, triggers=3, offsets=[1, 2, 3], seq_len=33, bos=True, design="bos", train_seqs=60000, val_seqs=500, alpha=0.05, seed=0,
                out_dir=HERE)


def main(argv):
    c = configure(DEFAULTS, argv)
    offsets = c["offsets"]
    if not offsets or any(not isinstance(o, int) or o < 1 for o in offsets):
        raise UserError(f"offsets must be a list of positive integers, got {offsets!r}")
    if c["triggers"] < 1 or c["triggers"] * len(offsets) >= c["vocab"] or c["seq_len"] < 3:
        raise UserError("need 1 <= triggers * len(offsets) < vocab and seq_len >= 3")
    design = "nobos" if not c["bos"] else c["design"]
    if design not in DESIGNS:
        raise UserError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")
    rng = np.random.default_rng(c["seed"])
    table, offset_of = make_task(c["vocab"], c["triggers"], offsets, c["alpha"], rng)
    triggers = np.flatnonzero(offset_of)
    meta = dict(vocab_size=c["vocab"] + 1, design=design, bos=c["vocab"] if design == "bos" else None,
                triggers=triggers.tolist(), offset_of=offset_of.tolist(), seq_len=c["seq_len"], bigram=table)
    c["out_dir"] = resolve_path(c["out_dir"])  # relative to gpt-2/
    os.makedirs(c["out_dir"], exist_ok=True)
    for split, n in (("train", c["train_seqs"]), ("val", c["val_seqs"])):
        seq = sample_design(n, c["seq_len"], meta, rng).astype(np.uint16)
        path = os.path.join(c["out_dir"], f"{split}.bin")
        seq.tofile(path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"{split}: {n} sequences, {seq.size:,} tokens")
    # bigram-step entropy: the loss floor on the non-copy positions
    entropy = float(-(table * np.log(np.clip(table, 1e-30, None))).sum(axis=1).mean())
    meta["bigram_entropy"] = entropy
    with open(os.path.join(c["out_dir"], "meta.pkl.tmp"), "wb") as f:
        pickle.dump(meta, f)
    os.replace(os.path.join(c["out_dir"], "meta.pkl.tmp"), os.path.join(c["out_dir"], "meta.pkl"))
    print(f"design {design}, vocab {c['vocab']} + 1 special, triggers {triggers.tolist()}, mean bigram entropy {entropy:.3f} nats")


if __name__ == "__main__":
    with user_errors_exit("prepare.py"):
        main(sys.argv[1:])
