"""Where each hook-served point lives, shared by Capture (which reads it) and Edit (which replaces it).

A `Site` names the module whose input or output holds a point, how the point's tensor is cut out of it (per-head
views, one part of a fused projection) and how an edited tensor is put back. `Hooks` installs the forward hooks
that read or write through sites, so that a read and an edit of the same point act on the same tensor at the same
moment of the forward. Points made by capture itself beside attention (attn.q_rot, attn.k_rot, attn.scores,
attn.pattern, attn.extra) have no site: attention is edited through monkey_patch.routing's AttentionEdit.
"""
import weakref
from typing import Callable, NamedTuple

import torch
from torch import nn

from monkey_patch.adapters import get_submodule, split_qkv
from monkey_patch.routing import CaptureError

LAYERLESS = ("input_ids", "embed", "ln_final", "logits")  # points of the whole model, not of a layer
_READERS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()  # module -> its read hooks
UNFLATTENED = ("ln2",)  # with every mlp point: may arrive as [batch * tokens, F] (OPT on transformers 5.x)


class Site(NamedTuple):
    """A point's place in the forward: `module`'s input (`pre`: its first argument or hidden_states) or output;
    `view(x)` cuts the point's tensor out of that; `put(x, new)` gives what the module passes on (or receives) once
    the point's tensor is `new`."""
    module: nn.Module
    pre: bool = False
    view: Callable = lambda x: x
    put: Callable = lambda x, new: new


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_first(output, new):
    if isinstance(output, tuple):
        return (new,) + output[1:]
    if isinstance(output, list):
        return [new] + output[1:]
    return new


def _hidden_states_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def per_head(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[batch, pos, heads*d] or [batch, heads, pos, d] (after a per-head norm) -> [batch, pos, heads, d]."""
    if x.dim() == 4:
        return x.transpose(1, 2)
    return x.view(*x.shape[:2], -1, head_dim)


def _from_heads(x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return new.transpose(1, 2) if x.dim() == 4 else new.reshape(x.shape)


def _part_site(module, cut) -> Site:
    """A part of a fused projection's output: edited in a copy of the whole output, where `cut` gives a view."""
    def put(x, new):
        whole = x.clone()
        part = cut(whole)
        if part.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr():
            raise CaptureError("this fused projection's layout gives no view of the part: it cannot be edited")
        part.copy_(new)
        return whole
    return Site(module, view=cut, put=put)


def output_head(model: nn.Module) -> nn.Module | None:
    """The output head (logits): the model's output embeddings, else a module named lm_head."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is not None:
        return head
    return next((m for name, m in model.named_modules() if name.split(".")[-1] == "lm_head"), None)


def input_embeddings(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_input_embeddings", None)
    return getter() if callable(getter) else None


def model_site(view, point: str) -> Site:
    """The site of a layer-less point."""
    if point == "input_ids":
        return Site(input_embeddings(view.model), pre=True)
    if point == "embed":
        return Site(input_embeddings(view.model))
    if point == "ln_final":
        return Site(view.final_norm())
    return Site(output_head(view.model))


def layer_site(view, point: str, layer: int) -> Site | None:
    """The site of `point` at `layer`; None for the points capture makes beside attention."""
    f = view.family
    if point == "resid_pre":
        return Site(view.layers[layer], pre=True)
    if point == "resid_post":
        return Site(view.layers[layer])
    if point in ("ln1", "ln2"):
        return Site(view.module(layer, point))
    if point == "attn_in":
        return Site(view.attn(layer), pre=True)
    if point in ("attn.q", "attn.k", "attn.v"):
        return _qkv_site(view, point[-1], layer)
    if point == "attn.z":
        return Site(view.module(layer, "o"), pre=True, view=lambda x: per_head(x, view.head_dim), put=_from_heads)
    if point == "attn_out":
        return Site(view.module(layer, "o"))
    if point == "attn.scale":
        return Site(get_submodule(view.attn(layer), f.scale))
    if point in ("mlp.gate_out", "mlp.up_out") and f.gate_up is not None:
        index = 0 if point == "mlp.gate_out" else 1
        return _part_site(view.module(layer, "gate_up"), lambda x: x.chunk(2, dim=-1)[index])
    if point in ("mlp.gate_out", "mlp.up_out", "mlp.act_out"):
        return Site(view.module(layer, {"mlp.gate_out": "gate", "mlp.up_out": "up", "mlp.act_out": "act"}[point]))
    if point == "mlp_in":  # the MLP module's input; where the layer is its own MLP (OPT), its first projection's
        return Site(view.mlp(layer) if f.mlp is not None else view.module(layer, "up"), pre=True)
    if point == "mlp.down_in":
        return Site(view.module(layer, "down"), pre=True)
    if point == "mlp.down_out":
        return Site(view.module(layer, "down"))
    if point == "mlp_out":  # what the MLP writes to the residual: after the sandwich norm where there is one
        post = get_submodule(view.layers[layer], f.mlp_out_norm)
        return Site(view.module(layer, "down") if post is None else post)
    return None


def _qkv_site(view, role: str, layer: int) -> Site:
    f = view.family
    if f.qkv is not None:
        index = "qkv".index(role)
        return _part_site(view.module(layer, "qkv"), lambda x: split_qkv(x, f.qkv_layout, view.config)[index])
    normed = view.module(layer, role + "_norm") if role in "qk" else None  # after the per-head q/k norm, if any
    source = view.module(layer, role) if normed is None else normed
    return Site(source, view=lambda x: per_head(x, view.head_dim), put=_from_heads)


class Hooks:
    """The forward hooks one Capture or Edit installs on a model, removed together by `remove()`."""

    def __init__(self, view):
        self.view = view
        self.handles: list = []
        self._block_shapes: dict = {}  # layer -> (batch, tokens) of its input in the current forward

    def add(self, module: nn.Module, fn, pre: bool = False, prepend: bool = False):
        if module is None:
            raise CaptureError(f"{self.view.model_type}: the adapter names a module this model does not have")
        if pre:
            handle = module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend)
        else:
            handle = module.register_forward_hook(fn, prepend=prepend)
        self.handles.append(handle)
        return handle

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def read(self, site: Site, point: str, layer, fn) -> None:
        """fn(the point's tensor) in every forward."""
        shaped = self._shaping(point, layer)
        if site.pre:
            handle = self.add(site.module, lambda m, args, kwargs: fn(site.view(shaped(_hidden_states_arg(args, kwargs)))),
                              pre=True)
        else:
            handle = self.add(site.module, lambda m, args, output: fn(site.view(shaped(_first(output)))))
        _READERS.setdefault(site.module, []).append(handle)

    def write(self, site: Site, point: str, layer, fn) -> None:
        """fn(the point's tensor) -> its replacement, or None to leave it; after the hooks already on the module
        (earlier edits, other code's hooks) but ahead of every read there, so that a capture sees the edited tensor
        whichever was entered first."""
        shaped = self._shaping(point, layer)

        def replaced(x):
            whole = shaped(x)
            part = site.view(whole)
            new = fn(part)
            if new is None:
                return None
            if not torch.is_tensor(new) or new.shape != part.shape:
                raise CaptureError(f"the edit of {point} at layer {layer} returned "
                                   f"{getattr(new, 'shape', type(new).__name__)}, not a tensor of shape {tuple(part.shape)}")
            return site.put(whole, new).reshape(x.shape)

        def pre_hook(module, args, kwargs):
            new = replaced(_hidden_states_arg(args, kwargs))
            if new is None:
                return None
            return ((new,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        def hook(module, args, output):
            new = replaced(_first(output))
            return None if new is None else _with_first(output, new)
        self.add(site.module, pre_hook if site.pre else hook, pre=site.pre)
        reads_last(site.module)

    def _shaping(self, point: str, layer):
        """x -> x, or for a point that may arrive flattened a [batch * tokens, F] tensor as [batch, tokens, F] (some
        families' forwards flatten the hidden states before the MLP norm and the MLP). The layer's input shape is
        read by a pre-hook on its block, installed once per layer."""
        if point not in UNFLATTENED and not point.startswith("mlp"):
            return lambda x: x
        if layer not in self._block_shapes:
            self._block_shapes[layer] = None

            def keep_shape(module, args, kwargs):
                self._block_shapes[layer] = tuple(_hidden_states_arg(args, kwargs).shape[:2])
            self.add(self.view.layers[layer], keep_shape, pre=True, prepend=True)

        def unflattened(x):
            shape = self._block_shapes[layer]
            if shape is not None and x.dim() == 2 and x.shape[0] == shape[0] * shape[1]:
                return x.view(*shape, x.shape[-1])
            return x
        return unflattened


def reads_last(module: nn.Module) -> None:
    """Move the module's read hooks (a capture's) behind every other hook on it: torch runs a module's hooks in the
    order of their dict, so an edit entered after a capture still runs before the capture reads."""
    alive = []
    for handle in _READERS.get(module, []):
        hooks = handle.hooks_dict_ref()
        if hooks is not None and handle.id in hooks:
            hooks.move_to_end(handle.id)
            alive.append(handle)
    _READERS[module] = alive
