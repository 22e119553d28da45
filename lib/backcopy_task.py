"""The synthetic multi-offset Bigram-Backcopy task (after Guo et al. 2024): the task itself and its samplers.

gpt-2/data/backcopy/prepare.py writes a fixed corpus of it; gpt-2/train.py --fresh_data=True draws new sequences
from the task recorded in meta.pkl at every step instead, so that nothing repeats (Gu et al. 2025 see no sink
when a small corpus is repeated). Sequence designs (meta 'design'):
  bos           [BOS, x1, x2, ...]            the sink candidate is a dedicated first token
  nobos         [x1, x2, ...]                  no special token at all
  random_first  [r, F, x1, ...]                a random ordinary first token r, then a fixed token F (Gu et al.)
F is the token id `vocab` in both bos and random_first.
"""
import numpy as np

DESIGNS = ("bos", "nobos", "random_first")


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


def sample_design(n, length, meta, rng):
    """n sequences of `length` tokens of the task in meta (prepare.py's meta.pkl), in its design."""
    table, offset_of, special = meta["bigram"], np.asarray(meta["offset_of"]), table_special(meta)
    design = meta.get("design", "bos" if meta.get("bos") is not None else "nobos")
    if design == "bos":
        return sample(n, length, table, offset_of, special, rng)
    if design == "nobos":
        return sample(n, length + 1, table, offset_of, special, rng)[:, 1:]
    if design == "random_first":
        first = rng.integers(0, table.shape[0], size=(n, 1))
        return np.concatenate([first, sample(n, length - 1, table, offset_of, special, rng)], axis=1)
    raise ValueError(f"unknown design {design!r}; choose one of {', '.join(DESIGNS)}")


def table_special(meta):
    """The special token id F (BOS, or the fixed token of random_first): the one after the ordinary tokens."""
    return meta["bigram"].shape[0]
