"""gpt-2/ checkpoints as models the figure suite and consequences.py can study.

A checkpoint is train.py's `ckpt_<iter>.pt`, or an out dir (its newest checkpoint). `load` returns the GPT behind
the face lib/ and monkey_patch/ expect of a Hugging Face causal LM (`config`, `get_input_embeddings`,
`base_model`; its family in monkey_patch/adapters.py is `nanogpt`), a tokenizer for the dataset it was trained on
and a ModelSpec that names that dataset, so figures calibrate on its validation split by default.
"""
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from lib.errors import UserError
from lib.models import ModelSpec, check_device, parse_dtype
from lib.perplexity import eval_windows

GPT2_DIR = Path(__file__).resolve().parent.parent / "gpt-2"
MAX_WINDOWS = 512
CKPT_NAME = re.compile(r"ckpt_(\d+)\.pt")
BPE_VOCAB = 50257


def gpt2_modules():
    """gpt-2/'s dataset, outlier_stats and train modules (gpt-2/ goes on sys.path once)."""
    if str(GPT2_DIR) not in sys.path:
        sys.path.insert(0, str(GPT2_DIR))
    import dataset
    import outlier_stats
    import train
    return dataset, outlier_stats, train


def is_checkpoint(path: str) -> bool:
    p = Path(path).expanduser()
    if p.is_file():
        return CKPT_NAME.fullmatch(p.name) is not None
    return p.is_dir() and any(CKPT_NAME.fullmatch(f.name) for f in p.glob("ckpt_*.pt"))


def checkpoint_file(path: str) -> str:
    """The checkpoint itself, or an out dir's newest."""
    _, _, train = gpt2_modules()
    if os.path.isdir(path):
        found = train.checkpoints(path)
        if not found:
            raise UserError(f"no ckpt_<iter>.pt in {path}")
        return found[-1][1]
    if not os.path.isfile(path):
        raise UserError(f"gpt-2 checkpoint not found: {path}")
    return path


def load_gpt(path: str, device: str = "cpu"):
    """(GPT in eval mode, checkpoint dict, checkpoint file) of a checkpoint or out dir, on one device ("auto":
    the GPU where there is one)."""
    device = check_device(device)
    device = "cuda" if device == "auto" else device
    _, outlier_stats, _ = gpt2_modules()
    file = checkpoint_file(path)
    model, ckpt = outlier_stats.load_model(file, device)
    return model, ckpt, file


def dataset_windows(name: str, split: str, seqlen: int, limit: int | None) -> torch.LongTensor:
    """Windows [n, seqlen] of a gpt-2 dataset split: for a dataset of independent sequences the first
    `limit` sequences from their first token, else `limit` windows spread evenly over the split."""
    dataset, _, _ = gpt2_modules()
    data = dataset.open_split(name, split)
    aligned = dataset.load_meta(name).get("seq_len")
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


class CheckpointLM(nn.Module):
    """A gpt-2/model.py GPT with the attributes lib/ and monkey_patch/ read from a Hugging Face causal LM."""

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt
        c = gpt.config
        self.config = SimpleNamespace(model_type="nanogpt", num_attention_heads=c.n_head, hidden_size=c.n_embd,
                                      num_hidden_layers=c.n_layer, max_position_embeddings=c.block_size,
                                      vocab_size=c.vocab_size, attention=c.attention, pos_emb=c.pos_emb)

    @property
    def base_model(self):
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.gpt.transformer.wte

    def forward(self, input_ids, **unused):
        """The GPT's forward (last position's logits only: the figures read the hooks, not the logits)."""
        return self.gpt(input_ids)


class TaskTokenizer:
    """Token names of a synthetic-task dataset: ordinary tokens are their ids, the dataset's special token (id
    `vocab`: BOS in the bos design, the fixed token F in random_first) is <bos> or <F>. A prompt is a
    space-separated list of those names."""

    def __init__(self, meta: dict, name: str):
        self.name, self.vocab_size = name, meta["vocab_size"]
        design = meta.get("design", "bos" if meta.get("bos") is not None else "nobos")
        special = {"bos": "<bos>", "random_first": "<F>"}.get(design)
        self.names = {self.vocab_size - 1: special} if special else {}
        self.ids = {v: k for k, v in self.names.items()}

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in text.split():
            i = self.ids.get(piece, int(piece) if piece.isdigit() else -1)
            if not 0 <= i < self.vocab_size:
                raise UserError(f"--prompt for a checkpoint trained on {self.name} is a space-separated list of "
                                f"token ids 0..{self.vocab_size - 1}{''.join(' or ' + n for n in self.ids)}; "
                                f"got {piece!r}")
            ids.append(i)
        return ids

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.names.get(int(i), str(int(i))) for i in ids]


class BPETokenizer:
    """The GPT-2 BPE (gpt-2/tokenizer.py) with the two methods the figures use."""

    def __init__(self):
        gpt2_modules()
        from tokenizer import gpt2_encoding
        self.encoding = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.encoding.decode_single_token_bytes(int(i)).decode("utf-8", errors="replace") for i in ids]


def load(path: str, device: str = "cpu", dtype=None):
    """(CheckpointLM, tokenizer, ModelSpec) of a gpt-2 checkpoint or out dir on `device`, like lib.models.load_model
    (which loads it through here)."""
    gpt, ckpt, file = load_gpt(str(Path(path).expanduser()), device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype)
    if torch_dtype is not None:
        gpt = gpt.to(torch_dtype)
    dataset, _, _ = gpt2_modules()
    name = (ckpt.get("config") or {}).get("dataset")
    meta = dataset.load_meta(name) if name else {}
    c = gpt.config
    task = "bigram" in meta or c.vocab_size < BPE_VOCAB
    tokenizer = TaskTokenizer(meta or {"vocab_size": c.vocab_size}, name or "its dataset") if task else BPETokenizer()
    prompt = None
    if task and name:  # the text prompt means nothing here: the first validation sequence stands in for it
        prompt = tuple(dataset_windows(name, "val", c.block_size, 1)[0].tolist())
    folder = Path(file).parent
    label = folder.name if os.path.isdir(path) else f"{folder.name}_{Path(file).stem}"
    steps = ckpt.get("iter_num")
    title = f"GPT {c.attention} ({name or 'unknown data'}{f', {steps:,} steps' if steps is not None else ''})"
    spec = ModelSpec(label, file, title, c.block_size, "float32", dataset=name, default_prompt=prompt)
    return CheckpointLM(gpt).eval(), tokenizer, spec
