"""Attention through hook points: for families outside transformers' registry whose attention module computes its
scores and weights in the open through identity modules that forward hooks read and replace (the adapter's
`scores` and `pattern`: gpt-2/model.py's hook_scores and hook_pattern, where TransformerLens puts its hook points),
and otherwise runs a fused kernel that gives neither. An attribute of the module picks the path (the adapter's
`fused_flag`: gpt-2's `flash`, as in nanoGPT). Like Hugging Face's eager and sdpa, that is a choice of
implementation: a capture or edit that needs the hook points turns the explicit path on while it needs it, and the
module's own setting comes back when the last of them lets go (in any order).

- `explicit_attention(view)`: within the context every layer runs the explicit path (Capture's attention points).
- `scores_edit(view, edit)`: an AttentionEdit's `mask` (monkey_patch.routing) in every forward, as -inf in the scores
  of the (query, key) pairs it hides. A layer runs the explicit path only in the calls where the edit changes its
  mask, elsewhere its own kernel, as without the edit. The path is chosen before the scores exist, so `mask` gets
  empty stand-ins for query and key ([batch, heads, tokens, 0]: their shapes and device).
"""
from contextlib import ExitStack, contextmanager

from monkey_patch.adapters import get_submodule
from monkey_patch.routing import CaptureError, visible_mask

_HELD: dict = {}  # attention module -> [holders, its flag before the first]


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


@contextmanager
def scores_edit(view, edit):
    """Within the context `edit` (an AttentionEdit that changes masks only) acts on every forward of the model."""
    flag = _flag(view)
    if edit.replaces_kernel:
        raise CaptureError(f"{view.model_type}: {type(edit).__name__} replaces the attention kernel; "
                           "this family's attention takes mask edits only")
    hidden = {}  # layer -> bool (query, key) pairs hidden in the current call

    def choose(layer):
        def pre(module, args):
            x = args[0]
            stand_in = x.new_empty(x.shape[0], view.num_heads, x.shape[1], 0)
            mask = edit.mask(layer, stand_in, stand_in, None) if edit.acts_on(layer) else None
            if mask is not None:
                hidden[layer] = ~visible_mask(mask, stand_in, stand_in)
                _hold(module, flag)
        return pre

    def apply(layer):
        return lambda module, args, scores: scores.masked_fill(hidden[layer], float("-inf")) if layer in hidden else None

    def done(layer):
        def post(module, args, output):
            if hidden.pop(layer, None) is not None:
                _release(module, flag)
        return post

    def let_go():  # a forward that raised inside a layer
        for layer in list(hidden):
            _release(view.attn(layer), flag)
        hidden.clear()

    with ExitStack() as stack:
        stack.callback(let_go)
        for layer in range(view.num_layers):
            attn = view.attn(layer)
            for handle in (attn.register_forward_pre_hook(choose(layer)), attn.register_forward_hook(done(layer)),
                           get_submodule(attn, view.family.scores).register_forward_hook(apply(layer))):
                stack.callback(handle.remove)
        yield
