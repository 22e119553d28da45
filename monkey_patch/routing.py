"""One attention function per model, through which every attention edit and every capture acts.

Families on transformers' attention registry call `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` in each
layer. While any edit or capture is active on a model, its configs name `ROUTED_NAME`, whose function, for each
layer's call:

1. applies the active edits' masks (`AttentionEdit.mask`: which keys each query may see), in the order the edits
   were entered;
2. hands query, key and the edited mask to the active capture (which makes attn.scores / attn.pattern from them,
   so the captured maps are those of the edited model);
3. runs the model's own kernel (eager where the model was set to eager, else sdpa) on the edited mask, or the
   edits' replacement kernels (`AttentionEdit.kernel`, the scale test's modes) wrapped around it.

Edits and captures enter and leave in any order: the function reads what is active at each call, and the model's
own implementation is restored when the last one leaves. An edit or capture on a family outside the registry
raises `CaptureError`; the router never passes a forward through unedited.
"""
import sys
from contextlib import contextmanager

import torch
from torch import nn

from monkey_patch.adapters import get_submodule

ROUTED_NAME = "systematic_outliers"
_ROUTERS: dict[nn.Module, "Router"] = {}  # attention module -> the router of its model


class CaptureError(ValueError):
    """A capture or attention edit this model cannot serve (unknown point, layer out of range, unsupported family,
    an edit whose attention maps are not defined)."""


class AttentionEdit:
    """An edit to a model's attention, applied in every forward while it is active (`route(model, edit)`).

    Subclasses override `mask` (which keys each query may see) and/or `kernel` (replace the attention output).
    `layers`: the 0-based layers it acts on (None: every layer)."""

    layers = None
    replaces_kernel = False  # True where `kernel` computes something other than attention under `mask`

    def acts_on(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def mask(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask):
        """The mask the kernel sees, in sdpa's form: None (plain causal), bool [batch|1, 1, queries, keys] (True:
        attend) or an additive float mask. Default: unchanged."""
        return mask

    def kernel(self, layer: int, run, module, query, key, value, mask, **kwargs):
        """The attention output [batch, queries, heads, d] (and weights or None); `run(query, key, value, mask)` is
        the model's own kernel (with the later edits' replacements). Default: run it."""
        return run(query, key, value, mask)


def visible_mask(mask, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """A bool mask (True: attend) from what the mask function gave; None means plain causal."""
    if mask is None:
        queries, keys = query.shape[-2], key.shape[-2]
        last = torch.arange(queries, device=query.device)[:, None] + (keys - queries)
        return (torch.arange(keys, device=query.device)[None, :] <= last)[None, None]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def hide(mask, query: torch.Tensor, key: torch.Tensor, hidden: torch.Tensor):
    """`mask` with the (query, key) pairs `hidden` (bool, broadcastable to [batch, 1, queries, keys]) blocked, in the
    mask's own form (bool stays bool, an additive float mask gets the dtype's minimum there)."""
    if mask is not None and mask.dtype != torch.bool:
        return torch.where(hidden, torch.finfo(mask.dtype).min, mask)
    return visible_mask(mask, query, key) & ~hidden


def model_configs(model: nn.Module) -> list:
    """Every distinct config object in the model (sub-models may hold their own)."""
    seen = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
    return list(seen.values())


def eager_attention(module):
    """The family's own eager attention function (transformers' `eager_attention_forward` of its module)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise CaptureError(f"{type(module).__name__}: its module has no eager_attention_forward")
    return fn


def additive_mask(mask, query, key, rows=slice(None), columns=slice(None)):
    """The additive float mask that eager attention adds to its scores (its query rows `rows` and key columns
    `columns`, of the keys up to key's length), from what sdpa's mask function gave: None (plain causal, which sdpa
    runs as is_causal), a boolean mask (True: attend) or already a float one."""
    queries, keys = query.shape[-2], key.shape[-2]
    if mask is not None:
        mask = mask[:, :, rows, :keys][..., columns]
        if mask.dtype != torch.bool:
            return mask
    else:
        last_key = torch.arange(queries, device=query.device)[rows, None] + (keys - queries)
        mask = (torch.arange(keys, device=query.device)[columns] <= last_key)[None, None]
    blocked = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
    return blocked.masked_fill_(~mask, torch.finfo(query.dtype).min)


def run_kernel(name: str, module, query, key, value, mask, **kwargs):
    """Attention implementation `name` on a mask in sdpa's form (eager gets it as its additive float mask)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    if name == "eager":
        return eager_attention(module)(module, query, key, value, additive_mask(mask, query, key), **kwargs)
    return ALL_ATTENTION_FUNCTIONS[name](module, query, key, value, mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    AttentionInterface.register(ROUTED_NAME, _routed_attention)
    AttentionMaskInterface.register(ROUTED_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


class Router:
    """The active edits and capture of one model, and the implementation its configs had before."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, attn_name: str):
        self.model = model
        self.modules = [get_submodule(block, attn_name) for block in layers]
        self.layer_of = {module: i for i, module in enumerate(self.modules)}
        self.configs = model_configs(model)
        self.saved = [(c, c._attn_implementation) for c in self.configs]
        implementations = {impl for _, impl in self.saved}
        self.kernel_name = "eager" if "eager" in implementations else "sdpa"  # flash kernels take no key masks
        self.edits: list[AttentionEdit] = []
        self.captures: list = []  # captures of attention points (monkey_patch.Capture); one records at a time

    @property
    def capture(self):
        """The capture that records now: the newest one that is not paused (see monkey_patch.capture.paused)."""
        recording = [c for c in self.captures if not c._paused]
        return recording[-1] if recording else None

    def install(self) -> None:
        _register()
        for module in self.modules:
            _ROUTERS[module] = self
        for config in self.configs:
            config._attn_implementation = ROUTED_NAME

    def uninstall(self) -> None:
        for config, implementation in self.saved:
            config._attn_implementation = implementation
        for module in self.modules:
            if _ROUTERS.get(module) is self:
                del _ROUTERS[module]

    def idle(self) -> bool:
        return not self.edits and not self.captures

    def attend(self, module, query, key, value, attention_mask, **kwargs):
        layer = self.layer_of[module]
        edits = [edit for edit in self.edits if edit.acts_on(layer)]
        mask = attention_mask
        for edit in edits:
            mask = edit.mask(layer, query, key, mask)
        replaced = [edit for edit in edits if edit.replaces_kernel]
        pattern = None
        if self.capture is not None:
            pattern = self.capture._capture_attention(module, layer, query, key, mask, replaced=replaced, **kwargs)

        def run(q, k, v, m, edits=tuple(replaced)):
            if not edits:
                return run_kernel(self.kernel_name, module, q, k, v, m, **kwargs)
            inner = lambda q2, k2, v2, m2: run(q2, k2, v2, m2, edits[1:])  # noqa: E731
            return edits[0].kernel(layer, inner, module, q, k, v, m, **kwargs)
        out, weights = run(query, key, value, mask)
        return out, pattern if weights is None else weights


def _routed_attention(module, query, key, value, attention_mask, **kwargs):
    router = _ROUTERS.get(module)
    if router is None:  # a model left on our name outside any context: behave like sdpa
        return run_kernel("sdpa", module, query, key, value, attention_mask, **kwargs)
    return router.attend(module, query, key, value, attention_mask, **kwargs)


def router_of(model: nn.Module) -> Router | None:
    """The router active on `model`, if any."""
    for module in model.modules():
        router = _ROUTERS.get(module)
        if router is not None:
            return router
    return None


@contextmanager
def route(model: nn.Module, layers: nn.ModuleList, attn_name: str, edit: AttentionEdit | None = None, capture=None):
    """Within the context, `edit` (and/or `capture`) acts on every attention call of `model`, whose decoder `layers`
    hold their attention module at `attn_name`. Any number of edits compose; one capture at a time."""
    router = router_of(model)
    if router is None:
        router = Router(model, layers, attn_name)
        router.install()
    if capture is not None and router.capture is not None:
        if router.idle():
            router.uninstall()
        raise CaptureError("another Capture of attention points is already active on this model: "
                           "ask for all points in one Capture instead of nesting them")
    if edit is not None:
        router.edits.append(edit)
    if capture is not None:
        router.captures.append(capture)
    try:
        yield router
    finally:
        if edit is not None:
            router.edits.remove(edit)
        if capture is not None:
            router.captures.remove(capture)
        if router.idle():
            router.uninstall()
