"""Simulated compression: absmax quantization (quantize-dequantize), W8A8 and unstructured magnitude pruning.

Every method acts on the linear layers inside the decoder blocks (attention and MLP projections: nn.Linear,
and GPT-2's Conv1D); embeddings, norms and the LM head stay in full precision, as in GPTQ / Wanda / SmoothQuant
comparisons. `compressed(model, method)` edits the weights in place and restores them on exit, so a loaded
model is never left corrupted. A module whose weights accelerate offloads (to CPU memory or disk) is compressed as
its weights are loaded for each forward: its stored weights are never changed, and no copy of them is kept.
Quantized (packed) weights are refused: rounding packed integers again says nothing about the model.

Quantization, b bits, symmetric absmax: q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1), w' = q * s with
s = max|w| / (2^(b-1) - 1) over the whole tensor ("tensor") or over each output channel ("channel": one
scale per row of the [out, in] weight).
W8A8: weights 8-bit per output channel; the input of every such layer quantized 8-bit per tensor (absmax
over the whole input of the call, i.e. over one evaluation window: dynamic per-tensor) by a forward pre-hook.
Pruning: in each layer the round(sparsity * numel) weights of smallest |w| are set to zero (per-layer
magnitude pruning; ties broken by position).

Methods that round activations (ROUNDS_ACTIVATIONS: W8A8) are unstable by nature on a model with massive
activations: one outlier sets the per-tensor scale (|h| 1e4-1e5 over 127 levels), so most entries of the other
tokens sit within a few quantization steps of zero and a change in the seventh digit of an input (another thread
count, another CPU) flips which way they round; on Gemma 3 270M that moves W8A8's perplexity by several percent.
lib.evaluation therefore measures them over jittered runs and reports the median run with the spread.
"""
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from lib.errors import UserError
from monkey_patch import CaptureError, Edit, ModelView
from monkey_patch.weights import UNPACK_HINT, is_offloaded, offloaded_weight_as, packed

METHODS = {
    "w8_tensor": "weights 8-bit absmax per tensor",
    "w8_channel": "weights 8-bit absmax per output channel",
    "w4_tensor": "weights 4-bit absmax per tensor",
    "w4_channel": "weights 4-bit absmax per output channel",
    "w8a8": "weights 8-bit per channel + inputs of every linear 8-bit absmax per tensor",
    "prune50": "unstructured 50% magnitude pruning per layer",
}
ROUNDS_ACTIVATIONS = {"w8a8"}


def quantize_absmax(x: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` symmetrically; per_channel: one scale per row (dim 0) of a 2-D weight."""
    if bits < 2:
        raise ValueError(f"bits must be at least 2, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    x32 = x.detach().float()
    if per_channel:
        absmax = x32.abs().amax(dim=tuple(range(1, x32.dim())), keepdim=True)
    else:
        absmax = x32.abs().amax()
    scale = absmax / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero slice stays zero
    return (torch.clamp(torch.round(x32 / scale), -qmax, qmax) * scale).to(x.dtype)


def prune_magnitude(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of `w` with exactly round(sparsity * numel) smallest-magnitude entries set to zero."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    n_zero = round(sparsity * w.numel())
    flat = w.detach().flatten().clone()
    if n_zero:
        # stable sort: equal magnitudes are pruned in order of position, so the count is exact
        order = torch.sort(flat.abs().float(), stable=True).indices
        flat[order[:n_zero]] = 0
    return flat.view_as(w)


def block_linears(model: nn.Module, blocks) -> list[tuple[str, nn.Module]]:
    """(name, module) of every nn.Linear / Conv1D inside the decoder `blocks` (an nn.ModuleList), and of every
    projection a quantization library packed (qweight: GPTQ, AWQ), which `compressed` refuses."""
    found = []
    for i, block in enumerate(blocks):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D" or hasattr(module, "qweight"):
                found.append((f"{i}.{name}", module))
    return found


def weight_2d(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (a view: writes reach the module)."""
    w = module.weight.data
    return w.T if type(module).__name__ == "Conv1D" else w


def compress_weight(w: torch.Tensor, method: str) -> torch.Tensor:
    """The compressed version of one [out, in] weight for `method` (a new tensor)."""
    if method == "prune50":
        return prune_magnitude(w, 0.5)
    if method == "w8a8":
        return quantize_absmax(w, 8, per_channel=True)
    bits, granularity = method[1], method.split("_")[1]
    return quantize_absmax(w, int(bits), per_channel=granularity == "channel")


# the named points that are the inputs of a layer's projections (monkey_patch.Edit), by the projections they feed
INPUT_POINTS = {"attn_in": ("q", "k", "v", "qkv"), "attn.z": ("o",), "mlp_in": ("gate", "up", "gate_up"),
                "mlp.down_in": ("down",)}


def _round_input(x, layer=None):
    return quantize_absmax(x, 8, per_channel=False)


def round_linear_inputs(model: nn.Module, linears, stack: ExitStack) -> None:
    """W8A8's activations: the input of every linear layer in `linears` rounded to 8 bits (absmax per tensor), in
    every forward until `stack` closes. On transformers' attention-registry families the attention and MLP modules
    read their input only through their projections, so rounding it once at the named point (monkey_patch.Edit)
    rounds each projection's input exactly as rounding it per projection would."""
    covered = set()
    view = _registry_view(model)
    for point, roles in INPUT_POINTS.items() if view is not None else ():
        if point not in view.supported_points():
            continue
        stack.enter_context(Edit(model, point, _round_input))
        covered |= {id(view.module(layer, role)) for layer in range(view.num_layers) for role in roles}
    for _, module in linears:
        if id(module) not in covered:
            # no named point is this linear's input: a projection the adapter table does not name (a mixture of
            # experts), or a gpt-2/ attention, which also reads its input outside its projections (the scale and
            # gate variants), so its input can be rounded only where each linear receives it
            hook = module.register_forward_pre_hook(lambda m, args: (_round_input(args[0]),) + tuple(args[1:]))
            stack.callback(hook.remove)


def _registry_view(model) -> ModelView | None:
    if getattr(model, "config", None) is None:  # a bare list of blocks
        return None
    try:
        view = ModelView(model)
    except CaptureError:  # a gpt-2/ GPT
        return None
    return view if view.family.registry else None


def _compress_loaded(module: nn.Module, method: str):
    """For an offloaded module: its stored weight (Conv1D: [in, out]) -> the compressed one, in the module's dtype."""
    dtype, conv = module.weight.dtype, type(module).__name__ == "Conv1D"

    def fn(stored):
        w = stored.to(dtype)
        return compress_weight(w.T, method).T if conv else compress_weight(w, method)
    return fn


@contextmanager
def compressed(model: nn.Module, blocks, method: str):
    """Within the context, every linear layer of `blocks` is compressed with `method`; restored on exit."""
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}: choose from {', '.join(METHODS)}")
    layers = block_linears(model, blocks)
    for name, module in layers:
        why = packed(module)
        if why is not None:
            raise UserError(f"cannot simulate {method} on block {name}: {why}; {UNPACK_HINT}")
    saved = []
    try:
        with ExitStack() as offloaded:
            if method == "w8a8":
                round_linear_inputs(model, layers, offloaded)
            for _, module in layers:
                if is_offloaded(module):
                    offloaded.enter_context(offloaded_weight_as(module, _compress_loaded(module, method)))
                    continue
                w = weight_2d(module)
                saved.append((w, w.to("cpu", copy=True)))  # on the CPU: a GPU model need not fit twice
                w.copy_(compress_weight(w, method))
            yield layers
    finally:
        for w, original in saved:
            w.copy_(original)
