"""The datasets gpt-2/ trains on: token files on disk, the GPT-2 BPE, and windows of a split for the figures.

A dataset is a folder gpt-2/data/<name>/ (or an absolute path) holding train.bin and val.bin (uint16 token ids)
and an optional meta.pkl. meta.pkl may give vocab_size and, for datasets made of independent sequences (the
synthetic task, lib/backcopy_task.py), seq_len: then every sequence starts at its first token (BOS).
The GPT-2 BPE is tiktoken's "gpt2", built offline from the ranks file shipped in the openai-whisper sdist.
"""
import os
import pickle
from pathlib import Path

import numpy as np
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe

from lib.errors import UserError
from lib.perplexity import eval_windows
from lib.sdist import sdist_files

GPT2_DIR = Path(__file__).resolve().parent.parent / "gpt-2"
MAX_WINDOWS = 512
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = 50256
BPE_VOCAB = 50257


def data_dir(dataset: str) -> str:
    return dataset if os.path.isabs(dataset) else str(GPT2_DIR / "data" / dataset)


def load_meta(dataset: str) -> dict:
    path = os.path.join(data_dir(dataset), "meta.pkl")
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        return pickle.load(f)


def open_split(dataset: str, split: str) -> np.memmap:
    path = os.path.join(data_dir(dataset), f"{split}.bin")
    if not os.path.exists(path):
        raise UserError(f"missing data file {path}; run data/{os.path.basename(dataset)}/prepare.py first")
    return np.memmap(path, dtype=np.uint16, mode="r")


def dataset_windows(name: str, split: str, seqlen: int, limit: int | None) -> torch.LongTensor:
    """Windows [n, seqlen] of a dataset split: for a dataset of independent sequences the first `limit`
    sequences from their first token, else `limit` windows spread evenly over the split."""
    data = open_split(name, split)
    aligned = load_meta(name).get("seq_len")
    if aligned:
        if seqlen > aligned:
            raise UserError(f"--seqlen {seqlen} is longer than the {aligned}-token sequences of {name}")
        n = min(len(data) // aligned, limit or MAX_WINDOWS)
        rows = torch.from_numpy(data[: n * aligned].astype("int64")).view(n, aligned)
        return rows[:, :seqlen].clone()
    tokens = torch.from_numpy(data[:].astype("int64"))
    n_windows = len(tokens) // seqlen
    if n_windows < 1:
        raise UserError(f"the {split} split of {name} has {len(tokens)} tokens, fewer than --seqlen {seqlen}")
    return eval_windows(tokens, seqlen, min(limit or MAX_WINDOWS, n_windows))


def gpt2_encoding() -> tiktoken.Encoding:
    try:
        path = sdist_files("openai-whisper", "20250625", "whisper/assets/gpt2.tiktoken")[0]
    except Exception:  # no PyPI either: let tiktoken try its own download
        return tiktoken.get_encoding("gpt2")
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=BPE_VOCAB)
