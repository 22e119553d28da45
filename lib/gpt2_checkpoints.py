"""gpt-2/ checkpoints as models the figure suite and consequences.py can study.

A checkpoint is train.py's `ckpt_<iter>.pt`, or an out dir (its newest checkpoint). `load` returns the GPT behind
the face lib/ and monkey_patch/ expect of a Hugging Face causal LM (`config`, `get_input_embeddings`,
`base_model`; its family in monkey_patch/adapters.py is `nanogpt`), a tokenizer for the dataset it was trained on
and a ModelSpec that names that dataset, so figures calibrate on its validation split by default.
gpt-2/'s scripts list, read and load their checkpoints with the functions here too (checkpoints, read_checkpoint,
load_gpt); of gpt-2/ itself lib/ uses only model.py (gpt2_model).
"""
import importlib.util
import os
import pickle
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from lib.errors import UserError
from lib.gpt2_data import BPE_VOCAB, GPT2_DIR, dataset_windows, gpt2_encoding, load_meta
from lib.model_spec import ModelSpec, check_device, parse_dtype

CKPT_NAME = re.compile(r"ckpt_(\d+)\.pt")
MODEL_MODULE = "gpt2_model"  # the name gpt-2/model.py is loaded under


def gpt2_model():
    """gpt-2/model.py, the one file of gpt-2/ that lib/ uses (it depends on torch alone), loaded from its path once."""
    module = sys.modules.get(MODEL_MODULE)
    if module is None:
        spec = importlib.util.spec_from_file_location(MODEL_MODULE, GPT2_DIR / "model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODEL_MODULE] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return module


def checkpoints(out_dir) -> list[tuple[int, str]]:
    """[(iter, path)] of out_dir/ckpt_<iter>.pt, oldest first."""
    found = [(int(m.group(1)), str(p)) for p in Path(out_dir).glob("ckpt_*.pt") if (m := CKPT_NAME.fullmatch(p.name))]
    return sorted(found)


def is_checkpoint(path: str) -> bool:
    p = Path(path).expanduser()
    if p.is_file():
        return CKPT_NAME.fullmatch(p.name) is not None
    return p.is_dir() and bool(checkpoints(p))


def checkpoint_file(path: str) -> str:
    """The checkpoint itself, or an out dir's newest."""
    if os.path.isdir(path):
        found = checkpoints(path)
        if not found:
            raise UserError(f"no ckpt_<iter>.pt in {path}")
        return found[-1][1]
    if not os.path.isfile(path):
        raise UserError(f"gpt-2 checkpoint not found: {path}")
    return path


def read_checkpoint(path, device="cpu") -> dict:
    """A train.py checkpoint as a dict, loaded with weights_only=True: tensors and plain Python values only, so
    opening a checkpoint someone sent you cannot run code."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused is None:
            raise UserError(f"{path} is not a train.py checkpoint (unreadable)") from None
        raise UserError(f"{path} holds a Python object ({refused.group(1)}) that safe loading refuses; if you trust "
                        "its source, re-save it with plain values: torch.load(path, weights_only=False), then "
                        "torch.save of a dict of tensors, numbers, strings, lists and dicts") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a train.py checkpoint ({type(e).__name__}: {str(e)[:160]})") from None


def load_gpt(path: str, device: str = "cpu"):
    """(GPT in eval mode, checkpoint dict, checkpoint file) of a checkpoint or out dir, on one device ("auto":
    the GPU where there is one)."""
    device = check_device(device)
    device = "cuda" if device == "auto" else device
    file = checkpoint_file(path)
    ckpt = read_checkpoint(file, device)
    model = gpt2_model()
    try:
        gpt = model.GPT(model.GPTConfig.from_dict(ckpt["model_args"]))
        gpt.load_state_dict(ckpt["model"])
    except Exception as e:
        raise UserError(f"{file} is not a train.py checkpoint ({type(e).__name__}: {e})") from None
    return gpt.to(device).eval(), ckpt, file


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
        """The GPT's forward, its `logits` the last position's only (the figures read the hooks, not the logits)."""
        return SimpleNamespace(logits=self.gpt(input_ids)[0])


def as_lm(model: nn.Module) -> nn.Module:
    """A gpt-2/model.py GPT in CheckpointLM, the face monkey_patch sees it through; any other model as it is."""
    return CheckpointLM(model) if getattr(model.config, "model_type", None) is None else model


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
    """The GPT-2 BPE (lib.gpt2_data) with the two methods the figures use."""

    def __init__(self):
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
    name = (ckpt.get("config") or {}).get("dataset")
    meta = load_meta(name) if name else {}
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
