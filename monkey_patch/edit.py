"""Edit named internals of a Hugging Face causal LM: the point names Capture reads, given a function that returns
the replacement; and attention edits (masks, replaced kernels) through the same router as attention captures.

    with Edit(model, "resid_post", lambda h, layer: h * 0.5, layers=[1]):
        model(input_ids)           # layer 1's output halved: every later layer, and any capture, sees it

An Edit acts at the hook Capture reads its point from, ahead of any capture there, so a capture of the same point
sees the edited tensor whether it was entered before or after the edit. Edits of the same point compose in the order
they were entered (after any hook other code put on the module before). The points capture makes beside attention (attn.q_rot, attn.k_rot, attn.scores,
attn.pattern, attn.extra) are no tensors of the forward to replace: attention is edited with an AttentionEdit
(monkey_patch.routing: which keys each query may see, or a replacement of the attention output), entered with
`edit_attention`.
"""
from contextlib import contextmanager

from torch import nn

from monkey_patch.adapters import get_submodule
from monkey_patch.capture import REGISTRY_POINTS, ModelView, check_points, layer_keys
from monkey_patch.hook_points import attention_edit
from monkey_patch.routing import AttentionEdit, CaptureError, route
from monkey_patch.sites import LAYERLESS, Hooks, layer_site, model_site

NOT_EDITABLE = REGISTRY_POINTS + ("attn.extra",)  # made beside attention: edit attention with an AttentionEdit


class Edit:
    """Replace a named internal of `model` in every forward run inside the `with` block.

    Args:
        model: a Hugging Face causal LM of a supported family (monkey_patch.ModelView), or a gpt-2/ checkpoint
            loaded with lib.models.load_model.
        point: a point Capture reads (monkey_patch.capture's docstring), but for those made beside attention.
        fn: `fn(tensor, layer) -> tensor or None`: gets the model's own tensor at the point (its dtype and device,
            in Capture's shape: per-head points [batch, pos, head, d_head]; layer None for a point of the whole
            model) and returns its replacement, of the same shape, or None to leave it as it is (a function that
            only looks: a running statistic, a check that raises).
        layers: 0-based layer indices (an int or a list; default: every layer); not for points of the whole model.

    An edit that cannot apply raises CaptureError: an unknown point or one the family cannot serve, a layer out of
    range, a replacement of another shape, and a forward of the model that ends without reaching every edited
    point. Leaving the block removes every hook: the model computes exactly what it did before.

    >>> import torch, transformers
    >>> torch.manual_seed(0) and None
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                                   num_attention_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(config).eval()
    >>> ids = torch.tensor([[1, 5, 9, 3]])
    >>> from monkey_patch import Capture
    >>> with Edit(model, "mlp.down_in", lambda x, layer: torch.zeros_like(x), layers=[0]), \\
    ...         Capture(model, ["mlp.down_out", "resid_post"], layers=[0]) as cap:
    ...     logits = model(ids).logits
    >>> bool(cap["mlp.down_out", 0].eq(0).all())     # the down projection (no bias) of a zero input
    True
    >>> def zero_first_token(h, layer):
    ...     h = h.clone()
    ...     h[:, 0] = 0
    ...     return h
    >>> with Edit(model, "resid_post", zero_first_token, layers=0), Capture(model, "resid_pre", layers=1) as cap:
    ...     _ = model(ids)
    >>> bool(cap["resid_pre", 1][:, 0].eq(0).all())  # the next layer reads the edited stream
    True
    """

    def __init__(self, model: nn.Module, point: str, fn, layers=None):
        self.view = ModelView(model)
        check_points(self.view, [point])
        if point in NOT_EDITABLE:
            raise CaptureError(f"{point} is made beside attention, not a tensor of the forward: edit attention with "
                               "an AttentionEdit (monkey_patch.edit_attention)")
        if point in LAYERLESS and layers is not None:
            raise CaptureError(f"{point} is a point of the whole model: it takes no layers")
        self.point, self.fn = point, fn
        self._keys = layer_keys(self.view, [point], layers)
        self._hooks = Hooks(self.view)
        self._reached: set = set()  # the (point, layer) pairs edited in the forward under way
        self._outer = None  # the outermost module whose forward is under way

    def __enter__(self):
        try:
            modules = {}
            for point, layer in self._keys:
                site = model_site(self.view, point) if layer is None else layer_site(self.view, point, layer)
                self._hooks.write(site, point, layer, self._applying(point, layer))
                modules[(point, layer)] = site.module
            self._watch_reach(modules)
        except BaseException:
            self._hooks.remove()
            raise
        return self

    def __exit__(self, *exc):
        self._hooks.remove()
        return False

    def _applying(self, point: str, layer):
        def apply(tensor):
            self._reached.add((point, layer))
            return self.fn(tensor, layer)
        return apply

    def _watch_reach(self, modules: dict) -> None:
        """At the end of a forward of the model or of a module between it and its layers (a decoder called on its
        own), every edited point inside that module must have been reached."""
        for root in self._roots():
            inside = {id(m) for m in root.modules()}
            keys = [key for key, module in modules.items() if id(module) in inside]
            if keys:
                self._hooks.add(root, self._start, pre=True)
                self._hooks.add(root, lambda m, args, output, keys=keys: self._check_reached(m, keys))

    def _roots(self) -> list[nn.Module]:
        path = self.view.family.layers.split(".")
        roots = [get_submodule(self.view.model, ".".join(path[:i])) if i else self.view.model for i in range(len(path))]
        return [root for root in roots if root is not None]

    def _start(self, module, args, kwargs):
        nested = self._outer is not None and self._outer is not module and any(
            m is module for m in self._outer.modules())
        if not nested:  # a new forward (also after one that raised before its end)
            self._outer = module
            self._reached.clear()

    def _check_reached(self, module, keys) -> None:
        if module is not self._outer:
            return
        self._outer = None
        missed = [key for key in keys if key not in self._reached]
        if missed:
            point, layer = missed[0]
            raise CaptureError(f"the edit of {point}{'' if layer is None else f' at layer {layer}'} did not apply: "
                               f"this forward of {type(module).__name__} never reached its module")

    def __repr__(self) -> str:
        layers = [layer for _, layer in self._keys]
        return f"Edit({self.point!r}, layers={layers})"


@contextmanager
def edit_attention(model: nn.Module, edit: AttentionEdit):
    """Within the context, `edit` (an AttentionEdit: which keys each query may see, or a replacement of the attention
    output) acts on every attention call of `model`; attention captures see the edited attention. Families on
    transformers' attention registry are edited through its router (monkey_patch.routing), families with hook
    points on an explicit path (gpt-2/'s GPT) there (monkey_patch.hook_points: how their kernels are called);
    raises CaptureError for any other family."""
    view = ModelView(model)
    if view.family.registry:
        with route(model, view.layers, view.family.attn, edit=edit) as router:
            yield router
    elif view.family.scores is not None:
        with attention_edit(view, edit):
            yield None
    else:
        raise CaptureError(f"{view.model_type} does not use transformers' attention registry: its attention cannot "
                           "be edited")
