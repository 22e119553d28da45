"""Synthetic multi-offset Bigram-Backcopy task (after Guo et al. 2024, "Active-Dormant Attention Heads").

Every sequence starts with a BOS token. Triggers come in groups, one group of `triggers` tokens per copy
offset o in `offsets`: the token after a trigger at position t copies the token at t - o (with offsets=[1]
this is Guo et al.'s back-copy: the token just before the trigger). After any other token the next one is
drawn from a fixed random bigram table, which needs no attention at all. So every copy head must be active
on its triggers and dormant elsewhere: the setting where softmax heads learn to park their mass on a sink.
The bigram table is a Dirichlet(alpha) draw per row (Guo et al. estimate theirs from real text instead).
--bos=False drops the BOS token: sequences then start at an arbitrary ordinary token.

    python data/backcopy/prepare.py [--vocab=64 --triggers=3 --offsets=[1,2,3] --seq_len=33 --alpha=0.05 --train_seqs=60000]

Writes train.bin / val.bin (uint16) and meta.pkl (vocab_size, bos, triggers, seq_len, bigram table).
"""
import os
import pickle
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from configurator import configure, resolve_path  # noqa: E402
from lib.errors import UserError, user_errors_exit  # noqa: E402

DEFAULTS = dict(vocab=64, triggers=3, offsets=[1, 2, 3], seq_len=33, bos=True, train_seqs=60000, val_seqs=500, alpha=0.05, seed=0,
                out_dir=HERE)


def make_task(vocab, n_triggers, offsets, alpha, rng):
    """Bigram table (vocab x vocab, rows sum to 1) over the ordinary tokens 0..vocab-1, and the copy offset of
    every token (0 = not a trigger): tokens j * n_triggers .. (j + 1) * n_triggers - 1 copy from offsets[j]."""
    table = rng.dirichlet(np.full(vocab, alpha), size=vocab)
    offset_of = np.zeros(vocab + 1, dtype=np.int64)  # + BOS
    for j, o in enumerate(offsets):
        offset_of[j * n_triggers:(j + 1) * n_triggers] = o
    return table, offset_of


def sample(n, seq_len, table, offset_of, bos, rng):
    """n sequences of seq_len tokens: BOS, a random non-trigger token, then bigram steps and back-copies
    (a trigger whose source would be BOS or before falls back to a bigram step)."""
    vocab = table.shape[0]
    cdf = np.cumsum(table, axis=1)
    seq = np.empty((n, seq_len), dtype=np.int64)
    seq[:, 0] = bos
    seq[:, 1] = rng.choice(np.flatnonzero(offset_of[:vocab] == 0), size=n)
    rows = np.arange(n)
    for t in range(1, seq_len - 1):
        cur = seq[:, t]
        drawn = np.minimum((cdf[cur] < rng.random((n, 1))).sum(axis=1), vocab - 1)
        src = t - offset_of[cur]
        copy = (offset_of[cur] > 0) & (src >= 1)
        seq[:, t + 1] = np.where(copy, seq[rows, np.maximum(src, 0)], drawn)
    return seq


def main(argv):
    c = configure(DEFAULTS, argv)
    offsets = c["offsets"]
    if not offsets or any(not isinstance(o, int) or o < 1 for o in offsets):
        raise UserError(f"offsets must be a list of positive integers, got {offsets!r}")
    if c["triggers"] < 1 or c["triggers"] * len(offsets) >= c["vocab"] or c["seq_len"] < 3:
        raise UserError("need 1 <= triggers * len(offsets) < vocab and seq_len >= 3")
    rng = np.random.default_rng(c["seed"])
    table, offset_of = make_task(c["vocab"], c["triggers"], offsets, c["alpha"], rng)
    triggers = np.flatnonzero(offset_of)
    bos = c["vocab"]
    c["out_dir"] = resolve_path(c["out_dir"])  # relative to gpt-2/
    os.makedirs(c["out_dir"], exist_ok=True)
    for split, n in (("train", c["train_seqs"]), ("val", c["val_seqs"])):
        if c["bos"]:
            seq = sample(n, c["seq_len"], table, offset_of, bos, rng).astype(np.uint16)
        else:  # same process, BOS dropped: sequences start at an arbitrary ordinary token
            seq = sample(n, c["seq_len"] + 1, table, offset_of, bos, rng)[:, 1:].astype(np.uint16)
        path = os.path.join(c["out_dir"], f"{split}.bin")
        seq.tofile(path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"{split}: {n} sequences, {seq.size:,} tokens")
    # bigram-step entropy: the loss floor on the non-copy positions
    entropy = float(-(table * np.log(np.clip(table, 1e-30, None))).sum(axis=1).mean())
    meta = dict(vocab_size=c["vocab"] + 1, bos=bos if c["bos"] else None, triggers=triggers.tolist(), offset_of=offset_of.tolist(), seq_len=c["seq_len"],
                bigram=table, bigram_entropy=entropy)
    with open(os.path.join(c["out_dir"], "meta.pkl.tmp"), "wb") as f:
        pickle.dump(meta, f)
    os.replace(os.path.join(c["out_dir"], "meta.pkl.tmp"), os.path.join(c["out_dir"], "meta.pkl"))
    print(f"vocab {c['vocab']} + BOS, triggers {triggers.tolist()}, mean bigram entropy {entropy:.3f} nats")


if __name__ == "__main__":
    with user_errors_exit("prepare.py"):
        main(sys.argv[1:])
