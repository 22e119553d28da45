"""Checks of a run against the model's config and the machine, made before the weights load: a layer the model does
not have, a sequence longer than its positions, one sequence's activations larger than the memory of the device
that would hold them. Each mistake is a UserError in one line. A model whose config cannot be read without loading
it (a gpt-2/ checkpoint, a hub id not downloaded yet) is checked once it has loaded, as every model is.

    shape = model_shape("gemma3_270m")             # layers, positions, widths from config.json; None if unknown
    check(shape, layer=999)                        # UserError: --layer 999 out of range: ... has layers 1..18
"""
import os
from dataclasses import dataclass

import torch

from lib.errors import UserError
from lib.layer_numbering import layer_range
from lib.model_spec import check_device, parse_dtype

POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length")
GIB = 2 ** 30


@dataclass(frozen=True)
class ModelShape:
    """What the checks need from a model's config."""
    title: str
    num_layers: int | None
    max_positions: int | None
    hidden: int | None
    intermediate: int | None
    cuda_dtype: str = "float16"


def max_positions(config) -> int | None:
    """The longest sequence a config allows (its position table), or None where it names no limit."""
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _int(config, *names) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_shape(model: str, model_path: str | None = None) -> ModelShape | None:
    """The shape of `model` from its config alone (no weights read), or None where the config is not at hand:
    a gpt-2/ checkpoint, a hub id not downloaded yet. An unknown name or a missing folder is the loader's UserError,
    raised here before anything else."""
    from lib import gpt2_checkpoints
    from lib.models import resolve
    if model and gpt2_checkpoints.is_checkpoint(model):
        return None
    spec = resolve(model, model_path)
    try:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(spec.source, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError):
        return None  # the loader reads it (or downloads it) and says what is wrong
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(title=spec.title, num_layers=_int(text, "num_hidden_layers"),
                      max_positions=max_positions(text) or max_positions(config),
                      hidden=_int(text, "hidden_size"), intermediate=_int(text, "intermediate_size", "ffn_dim", "n_inner"),
                      cuda_dtype=spec.cuda_dtype)


def check(shape: ModelShape | None, layer: int | None = None, seqlen: int | None = None, device: str | None = None,
          dtype: str | None = None) -> None:
    """--layer against the model's layers, --seqlen against its positions and against the memory one
    sequence's activations need at the least. Nothing to check where `shape` is None."""
    if shape is None:
        return
    if layer is not None and shape.num_layers is not None and not 0 <= layer < shape.num_layers:
        raise UserError(f"--layer {layer} out of range: {shape.title} has layers {layer_range(shape.num_layers)}")
    if seqlen is None:
        return
    if shape.max_positions is not None and seqlen > shape.max_positions:
        raise UserError(f"--seqlen has {seqlen} tokens but {shape.title} allows at most {shape.max_positions}")
    check_memory(shape, seqlen, device, dtype)


def check_memory(shape: ModelShape, seqlen: int, device: str | None, dtype: str | None) -> None:
    """One sequence's residual stream and MLP hidden layer are held at once in any forward: seqlen x (hidden +
    intermediate) values, a lower bound of what a run needs. Refused where it exceeds all the memory of the device
    that would hold it (the largest GPU, or the machine's RAM), so no run that could fit is refused."""
    if shape.hidden is None:
        return
    device = check_device(device or ("auto" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.startswith("cuda") or device == "auto"
    chosen = parse_dtype(dtype) or (getattr(torch, shape.cuda_dtype) if on_gpu else torch.float32)
    width = shape.hidden + (shape.intermediate or 0)
    need = seqlen * width * chosen.itemsize
    have, where = total_memory(device)
    if have is not None and need > have:
        raise UserError(f"--seqlen {seqlen}: one sequence's activations need at least {need / GIB:,.1f} GiB ({seqlen} "
                        f"tokens x {width} values of the residual stream and the MLP x {chosen.itemsize} bytes), more "
                        f"than the {have / GIB:,.1f} GiB of {where}")


def total_memory(device: str) -> tuple[int | None, str]:
    """(bytes, in words) of all the memory of the device a forward's activations sit on: the largest GPU for cuda
    and auto, the machine's RAM for the CPU; None where it cannot be read."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        indices = [int(device.split(":")[1])] if ":" in device else range(torch.cuda.device_count())
        sizes = [torch.cuda.get_device_properties(i).total_memory for i in indices]
        return (max(sizes), "the largest GPU") if sizes else (None, "")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's RAM"
    except (ValueError, OSError, AttributeError):
        return None, ""
