"""Attention through hook points: for families outside transformers' registry whose attention module computes its
scores and weights in the open through identity modules that forward hooks read and replace (the adapter's
`scores` and `pattern`: gpt-2/model.py's hook_scores and hook_pattern, where TransformerLens puts its hook points),
and otherwise runs a fused kernel that gives neither. An attribute of the module picks the path (the adapter's
`fused_flag`: gpt-2's `flash`, as in nanoGPT). Like Hugging Face's eager and sdpa, that is a choice of
implementation: a capture or edit that needs the hook points turns the explicit path on while it needs it, and the
module's own setting comes back when the last of them lets go (in any order).

- `explicit_attention(view)`: within the context every layer runs the explicit path (Capture's attention points).
- `attention_edit(view, edit)`: an AttentionEdit (monkey_patch.routing) in every forward; monkey_patch.edit_attention
  enters it for these families. A layer runs the explicit path only in the calls the edit acts on, elsewhere its
  own kernel, as without the edit. Its `mask` becomes -inf in the scores of the (query, key) pairs it hides, in
  every call of the layer's explicit path. The path is chosen before the scores exist, so `mask` gets empty
  stand-ins for query and key ([batch, heads, tokens, 0]: their shapes and device). Its `kernel` (where the edit
  `replaces_kernel`) replaces the explicit path's output: the module's method that computes it (the adapter's
  `explicit`: gpt-2's `explicit`, which its forward calls for the path) is wrapped for that call only, and is the
  class's own again once the call returns. The kernel gets query, key and value as the explicit path does ([batch, heads, tokens, d],
  after rotary embedding), mask None (the edits' masks act on the scores whatever it passes on) and `run(query,
  key, value, mask)`: the layer's own explicit path (or the later edits' kernels around it) with the pairs `mask`
  hides masked too, which returns (output [batch, tokens, heads, d], the weights on the tokens [batch, heads,
  tokens, tokens], an extra key k' left out as in attn.pattern); the kernel returns its output in that layout.
"""
from contextlib import ExitStack, contextmanager

from monkey_patch.adapters import get_submodule
from monkey_patch.routing import CaptureError, visible_mask
from monkey_patch.sites import reads_last

_HELD: dict = {}  # attention module -> [holders, its flag before the first]
_KERNELS: dict = {}  # attention module -> [(layer, edit)]: the kernels replacing its explicit path in this call


def _hold(module, flag: str) -> None:
    _HELD.setdefault(module, [0, getattr(module, flag)])[0] += 1
    setattr(module, flag, False)


def _release(module, flag: str) -> None:
    held = _HELD[module]
    held[0] -= 1
    if not held[0]:
        setattr(module, flag, held[1])
        del _HELD[module]


def _flag(view) -> str:
    flag = view.family.fused_flag
    if flag is None or get_submodule(view.attn(0), view.family.scores) is None:
        raise CaptureError(f"{view.model_type}: its attention has no explicit path with hook points")
    return flag


@contextmanager
def explicit_attention(view):
    """Within the context every attention module of the model (a ModelView) runs its explicit path."""
    flag, modules = _flag(view), [view.attn(i) for i in range(view.num_layers)]
    for module in modules:
        _hold(module, flag)
    try:
        yield
    finally:
        for module in modules:
            _release(module, flag)


def replaced(module) -> bool:
    """True while an edit's kernel replaces the output of `module`'s explicit path (in the call under way): its
    scores and weights are then those of the kernel's inner runs, not the layer's attention."""
    return module in _KERNELS


def _mask_scores(scores_module, mask, query, key):
    """A hook handle that sets the scores of the pairs `mask` hides to -inf (None where it hides none)."""
    if mask is None:
        return None
    hidden = ~visible_mask(mask, query, key)
    return scores_module.register_forward_hook(lambda m, args, scores: scores.masked_fill(hidden, float("-inf")))


def _run(module, own, scores_module, edits, query, key, value, mask):
    """The first of `edits` around the rest, the innermost around the explicit path `own`."""
    if edits:
        (layer, edit), rest = edits[0], edits[1:]
        inner = lambda q, k, v, m: _run(module, own, scores_module, rest, q, k, v, m)  # noqa: E731
        return edit.kernel(layer, inner, module, query, key, value, mask)
    handle = _mask_scores(scores_module, mask, query, key)  # on the scores, where the edits' masks act too
    try:
        y, weights = own(query, key, value)
    finally:
        if handle is not None:
            handle.remove()
    return y.transpose(1, 2), weights[..., -key.shape[2]:]


def _push_kernel(module, family, layer: int, edit) -> None:
    """`edit.kernel` replaces the explicit path of `module` in this call, after the kernels pushed before it."""
    if module not in _KERNELS:
        own = getattr(type(module), family.explicit).__get__(module)
        scores_module = get_submodule(module, family.scores)

        def explicit(query, key, value):
            out, _ = _run(module, own, scores_module, tuple(_KERNELS[module]), query, key, value, None)
            return out.transpose(1, 2), None
        _KERNELS[module] = []
        setattr(module, family.explicit, explicit)  # an instance attribute for this call only: the class's stays
    _KERNELS[module].append((layer, edit))


def _pop_kernel(module, family, edit) -> None:
    kernels = _KERNELS[module]
    kernels.pop(next(i for i, (_, e) in enumerate(kernels) if e is edit))
    if not kernels:
        del _KERNELS[module]
        delattr(module, family.explicit)


@contextmanager
def attention_edit(view, edit):
    """Within the context `edit` (an AttentionEdit) acts on every forward of the model (the module docstring)."""
    flag = _flag(view)
    if edit.replaces_kernel and view.family.explicit is None:
        raise CaptureError(f"{view.model_type}: {type(edit).__name__} replaces the attention kernel; this family's "
                           "adapter names no method of its explicit path to replace")
    hidden = {}  # layer -> bool (query, key) pairs hidden in the current call
    kernels = set()  # layers whose explicit path the edit's kernel replaces in the current call

    def choose(layer):
        def pre(module, args):
            if layer in hidden or layer in kernels:  # left by a call that raised before its end
                end(layer, module)
            if not edit.acts_on(layer):
                return
            x = args[0]
            stand_in = x.new_empty(x.shape[0], view.num_heads, x.shape[1], 0)
            mask = edit.mask(layer, stand_in, stand_in, None)
            if mask is not None:
                hidden[layer] = ~visible_mask(mask, stand_in, stand_in)
                _hold(module, flag)
            if edit.replaces_kernel:
                _push_kernel(module, view.family, layer, edit)
                kernels.add(layer)
                _hold(module, flag)
        return pre

    def apply(layer):
        return lambda module, args, scores: scores.masked_fill(hidden[layer], float("-inf")) if layer in hidden else None

    def done(layer):
        def post(module, args, output):
            end(layer, module)
        return post

    def end(layer, module):
        if hidden.pop(layer, None) is not None:
            _release(module, flag)
        if layer in kernels:
            kernels.discard(layer)
            _pop_kernel(module, view.family, edit)
            _release(module, flag)

    def let_go():  # a forward that raised inside a layer
        for layer in set(hidden) | kernels:
            end(layer, view.attn(layer))

    with ExitStack() as stack:
        stack.callback(let_go)
        for layer in range(view.num_layers):
            attn = view.attn(layer)
            scores = get_submodule(attn, view.family.scores)
            for handle in (attn.register_forward_pre_hook(choose(layer)), attn.register_forward_hook(done(layer)),
                           scores.register_forward_hook(apply(layer))):
                stack.callback(handle.remove)
            reads_last(scores)  # a capture of attn.scores reads the scores this edit masked
        yield
