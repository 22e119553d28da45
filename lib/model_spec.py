"""What the loaders return besides the model (ModelSpec), and the device and dtype choices they share.

lib/models.py (Hugging Face models, GGUF files) and lib/gpt2_checkpoints.py (gpt-2/ checkpoints) both build on
this module; lib/models.py hands gpt-2 checkpoints on to lib/gpt2_checkpoints.py.
"""
from dataclasses import dataclass

import torch

from lib.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str      # registry name, or a name derived from the id/folder (used for output folders)
    source: str    # local folder or hub id handed to from_pretrained
    title: str     # display title for figures
    seqlen: int
    cuda_dtype: str
    dataset: str | None = None             # gpt-2 checkpoints: the dataset whose val split is the default data
    default_prompt: tuple | None = None    # token ids used when no --prompt is given (text means nothing to it)
    num_layers: int | None = None          # decoder layers, set by lib.models.load_model once the model is loaded


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "auto"):
        return None
    options = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in options:
        raise UserError(f"unknown dtype {name!r}: use one of {', '.join(options)}")
    return options[name]


def check_device(device: str) -> str:
    """The device, checked: cpu, mps, cuda, cuda:N or auto ("auto" becomes cpu where there is no GPU)."""
    if device not in ("cpu", "auto", "mps") and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but no CUDA GPU is available; use --device cpu")
    return device
