"""A projection's weight values wherever the model keeps them: on the module, in accelerate's offload map, or packed
by a quantization library.

A model dispatched with accelerate's device map (`device_map="auto"` with `max_memory` / `offload_folder`) keeps
the weights of its offloaded modules off the module: the parameter is a meta tensor, and the module's
AlignDevicesHook loads the values from its `weights_map` (a dict of CPU tensors for CPU offload, safetensors or
memory-mapped files for disk offload) onto its execution device for each forward, and drops them after it.
`values(module)` does what that hook does for one parameter, without a forward: the parameter itself where the
module holds it, else a fresh copy on the module's execution device that is freed as soon as the caller drops it,
so reading every layer's weights in turn holds one module's offloaded weights at a time.
Packed weights (bitsandbytes 4/8-bit, GPTQ, AWQ, float8 with scales...) are dequantized where the library offers a
dequantization (bitsandbytes); any other packed weight raises PackedWeights: statistics of packed integers or of
unscaled float8 values would describe the packing, not the model.
"""
import weakref
from collections.abc import Mapping
from contextlib import contextmanager

import torch
from torch import nn

from monkey_patch.routing import CaptureError

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# what quantization libraries keep beside (or instead of) a plain weight: packed integers, their scales, zero points
PACKED_ATTRIBUTES = ("qweight", "qzeros", "scales", "weight_scale", "weight_scale_inv", "g_idx")
UNPACK_HINT = ("load the unquantized checkpoint instead; with --device auto, --max-memory and --offload-folder "
               "accelerate fits it by offloading what the GPUs cannot hold to CPU memory or disk")


class PackedWeights(CaptureError):
    """A projection whose weights are packed by a quantization library that offers no dequantization here."""


def offload_hook(module: nn.Module):
    """The accelerate hook that keeps `module`'s own parameters off it (offload, with a weights map), or None."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        if h is not None and getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            return h
    return None


def is_offloaded(module: nn.Module) -> bool:
    """Whether accelerate keeps some of `module`'s own parameters off it (meta tensors on the module)."""
    return offload_hook(module) is not None and any(p.device.type == "meta" for p in module.parameters(recurse=False))


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device where it has one, else its first parameter's
    device (the CPU for a module without parameters)."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)  # an index is the accelerator's (cuda:N), as accelerate means it
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def values(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """`module`'s parameter `name` with its values: the parameter itself where the module holds it; where accelerate
    offloaded it, a copy from the hook's weights map on the module's execution device, in the parameter's dtype."""
    param = getattr(module, name)
    if param.device.type != "meta":
        return param
    hook = offload_hook(module)
    try:
        stored = hook.weights_map[name] if hook is not None else None
    except KeyError:
        stored = None
    if stored is None:
        raise CaptureError(f"the {name} of a {type(module).__name__} is on the meta device and no accelerate offload "
                           "map holds its values")
    return stored.to(device=execution_device(module), dtype=param.dtype)


def packed(module: nn.Module) -> str | None:
    """Why `module`'s weight is not a plain float matrix (packed integers, a separate scale), or None where it is."""
    kind = type(module).__name__
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return f"{kind} keeps no plain weight" + (" (packed qweight)" if hasattr(module, "qweight") else "")
    if weight.dtype not in FLOATS:
        return f"{kind} keeps its weight as {str(weight.dtype).replace('torch.', '')} ({type(weight).__name__})"
    extra = [a for a in PACKED_ATTRIBUTES if isinstance(getattr(module, a, None), torch.Tensor)]
    if extra:
        return f"{kind} keeps its weight with {', '.join(extra)}: the values alone are not the weight"
    return None


def _bitsandbytes(module: nn.Module, weight: torch.Tensor) -> torch.Tensor | None:
    """bitsandbytes' own dequantization of a 4-bit (Params4bit) or 8-bit (Int8Params) weight; None for others."""
    kind = type(weight).__name__
    if kind not in ("Params4bit", "Int8Params"):
        return None
    import bitsandbytes.functional as F
    if kind == "Params4bit":
        return F.dequantize_4bit(weight.data, weight.quant_state)
    scales = getattr(weight, "SCB", None)
    if scales is None:
        scales = getattr(getattr(module, "state", None), "SCB", None)
    if scales is None:
        raise PackedWeights(f"{type(module).__name__}: an 8-bit bitsandbytes weight without its row scales (SCB) "
                            f"cannot be dequantized; {UNPACK_HINT}")
    return F.int8_vectorwise_dequant(weight.data, scales)


def matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a projection as [out_features, in_features] float values (GPT-2's Conv1D stores it transposed),
    wherever it is kept (see `values`), dequantized where bitsandbytes packed it; PackedWeights where another
    library packed it."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        dequantized = _bitsandbytes(module, weight)
        if dequantized is not None:
            return dequantized
    why = packed(module)
    if why is not None:
        raise PackedWeights(f"{why}: weight statistics of it would describe the packing, not the model; {UNPACK_HINT}")
    w = values(module)
    return w.T if type(module).__name__ == "Conv1D" else w


class _Transformed(Mapping):
    """A weights map whose entries `keys` (every entry where None) come out through `fn`; the others as stored."""

    def __init__(self, stored: Mapping, fn, keys=("weight",)):
        self.stored, self.fn, self.keys = stored, fn, keys

    def __getitem__(self, key):
        value = self.stored[key]
        return self.fn(key, value) if self.keys is None or key in self.keys else value

    def __iter__(self):
        return iter(self.stored)

    def __len__(self):
        return len(self.stored)


@contextmanager
def offloaded_weight_as(module: nn.Module, fn):
    """Within the context, each forward of the offloaded `module` loads fn(stored weight) instead of its weight; the
    stored weight is never changed. fn sees and returns the weight as stored (Conv1D: [in, out])."""
    hook = offload_hook(module)
    if hook is None:
        raise CaptureError(f"{type(module).__name__}: its weights are not offloaded by accelerate")
    stored = hook.weights_map
    hook.weights_map = _Transformed(stored, lambda key, w: fn(w))
    try:
        yield
    finally:
        hook.weights_map = stored


class Held:
    """The offloaded weights loaded at once: every storage a weights map hands out that the map does not keep itself
    (a disk load, not a CPU-offload dict's own tensor) is counted until it is freed, wherever the loaded copy went
    (a forward's parameter, a caller of `values`). `peak`: the most bytes held at any moment; `loads`: how many."""

    def __init__(self):
        self.now = self.peak = self.loads = 0
        self._live: dict[int, int] = {}  # data_ptr -> bytes of each counted storage still alive

    def _freed(self, ptr: int) -> None:
        self.now -= self._live.pop(ptr)

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if not nbytes or ptr in self._live:
            return
        self._live[ptr] = nbytes
        self.now += nbytes
        self.loads += 1
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._freed, ptr)


@contextmanager
def count_offloaded(model: nn.Module):
    """Within the context, a `Held` counts the offloaded weights of `model` loaded at once (by forwards and by
    `values`)."""
    held, hooks = Held(), []

    def counted(stored):
        def fetch(key, value):
            if isinstance(value, torch.Tensor):
                again = stored[key]  # the same storage twice: the map keeps it (CPU offload), nothing is loaded
                if again.untyped_storage().data_ptr() != value.untyped_storage().data_ptr():
                    held.add(value)
            return value
        return fetch

    for module in model.modules():
        hook = offload_hook(module)
        if hook is not None:
            hooks.append((hook, hook.weights_map))
            hook.weights_map = _Transformed(hook.weights_map, counted(hook.weights_map), keys=None)
    try:
        yield held
    finally:
        for hook, stored in hooks:
            hook.weights_map = stored
