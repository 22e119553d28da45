"""Edit at named points, checked against plain hooks that make the same change on the modules themselves."""
import pytest
import torch

from lib.tiny_models import tiny_model
from monkey_patch import AttentionEdit, Capture, CaptureError, Edit, ModelView, edit_attention
from monkey_patch.hook_points import explicit_attention
from monkey_patch.routing import hide

# point -> (module of the layer whose output or input a plain hook changes, True where it is the input)
PLAIN_HOOKS = {
    "resid_post": (lambda view, layer: view.layers[layer], False),
    "resid_pre": (lambda view, layer: view.layers[layer], True),
    "ln1": (lambda view, layer: view.module(layer, "ln1"), False),
    "attn_out": (lambda view, layer: view.module(layer, "o"), False),
    "mlp.down_in": (lambda view, layer: view.module(layer, "down"), True),
    "mlp.act_out": (lambda view, layer: view.module(layer, "act"), False),
}
LAYER = 1


def _ids():
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def _scaled(x, layer=None):
    return x * 3.0 - 0.5


def _plain_hook(module, pre: bool):
    if pre:
        return module.register_forward_pre_hook(lambda m, args, kwargs: (
            ((_scaled(args[0]),) + args[1:], kwargs) if args else (args, {**kwargs, "hidden_states": _scaled(
                kwargs["hidden_states"])})), with_kwargs=True)
    return module.register_forward_hook(lambda m, args, out: (_scaled(out[0]),) + tuple(out[1:])
                                        if isinstance(out, tuple) else _scaled(out))


@pytest.mark.parametrize("point", list(PLAIN_HOOKS))
@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_an_edit_changes_what_a_plain_hook_changes(family, point):
    model = tiny_model(family)
    view, ids = ModelView(model), _ids()
    module, pre = PLAIN_HOOKS[point]
    with torch.no_grad():
        plain = model(ids).logits
        handle = _plain_hook(module(view, LAYER), pre)
        try:
            by_hand = model(ids).logits
        finally:
            handle.remove()
        with Edit(model, point, _scaled, layers=[LAYER]):
            edited = model(ids).logits
        after = model(ids).logits
    assert not torch.equal(by_hand, plain)
    assert torch.equal(edited, by_hand)
    assert torch.equal(after, plain)  # leaving the block leaves the model bit-identical


def test_per_head_and_model_points_match_plain_hooks():
    """attn.v (per head, [batch, pos, head, d]) and embed (of the whole model, layer None)."""
    model = tiny_model("llama")
    view, ids = ModelView(model), _ids()
    head = 1

    def zero_head(v, layer):
        v = v.clone()
        v[:, :, head] = 0
        return v

    def zero_head_by_hand(m, args, out):
        out = out.clone()
        out[..., head * view.head_dim:(head + 1) * view.head_dim] = 0
        return out
    layers = []
    with torch.no_grad():
        for module, fn, point, edit in [(view.module(LAYER, "v"), zero_head_by_hand, "attn.v", zero_head),
                                        (model.get_input_embeddings(), lambda m, a, o: _scaled(o), "embed", _scaled)]:
            handle = module.register_forward_hook(fn)
            try:
                by_hand = model(ids).logits
            finally:
                handle.remove()
            with Edit(model, point, lambda x, layer: (layers.append(layer), edit(x, layer))[1],
                      layers=None if point == "embed" else [LAYER]):
                assert torch.equal(model(ids).logits, by_hand), point
    assert layers == [LAYER, None]


@pytest.mark.parametrize("capture_first", [True, False])
def test_a_capture_of_the_edited_point_sees_the_edit_in_either_order(capture_first):
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True).hidden_states
        edit = Edit(model, "resid_post", _scaled, layers=[LAYER])
        capture = Capture(model, ["resid_post", "resid_pre"], layers=[LAYER, LAYER + 1])
        first, second = (capture, edit) if capture_first else (edit, capture)
        with first, second:
            model(ids)
    expected = _scaled(plain[LAYER + 1])
    assert torch.equal(capture["resid_post", LAYER], expected)
    assert torch.equal(capture["resid_pre", LAYER + 1], expected)  # the next layer reads the edited stream
    assert torch.equal(capture["resid_pre", LAYER], plain[LAYER])


def test_edits_of_one_point_compose_in_the_order_entered():
    model = tiny_model("llama")
    ids = _ids()
    with torch.no_grad(), Edit(model, "resid_post", lambda h, i: h + 1, layers=[0]), \
            Edit(model, "resid_post", lambda h, i: h * 2, layers=[0]), Capture(model, "resid_post", layers=[0]) as cap:
        model(ids)
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True).hidden_states[1]
    assert torch.equal(cap["resid_post", 0], (plain + 1) * 2)


def test_edits_that_cannot_apply_raise():
    model = tiny_model("llama")
    ids = _ids()
    with pytest.raises(CaptureError, match="unknown capture point"):
        Edit(model, "resid_middle", _scaled)
    with pytest.raises(CaptureError, match="out of range"):
        Edit(model, "resid_post", _scaled, layers=[9])
    with pytest.raises(CaptureError, match="AttentionEdit"):
        Edit(model, "attn.pattern", _scaled)
    with pytest.raises(CaptureError, match="takes no layers"):
        Edit(model, "embed", _scaled, layers=[0])
    with pytest.raises(CaptureError, match="non-gated"):
        Edit(tiny_model("gpt2"), "mlp.gate_out", _scaled)
    with pytest.raises(CaptureError, match="not a tensor of shape"):
        with torch.no_grad(), Edit(model, "resid_post", lambda h, i: h[:, :1], layers=[0]):
            model(ids)
    layers = model.model.layers
    with pytest.raises(CaptureError, match="did not apply"):  # a forward that never reaches the edited module
        with torch.no_grad(), Edit(model, "resid_post", _scaled, layers=[2]):
            model.model.layers = layers[:2]
            try:
                model(ids)
            finally:
                model.model.layers = layers
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


# --- attention edits of gpt-2/'s GPT (monkey_patch.hook_points) ---------------------------------------------------

def _gpt2_lm(variant="default"):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2"))
    from model import GPT, GPTConfig
    from lib.gpt2_checkpoints import CheckpointLM
    torch.manual_seed(0)
    return CheckpointLM(GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16,
                                      attention=variant)).eval())


def _gpt2_logits(lm, ids):
    return lm.gpt(ids, targets=torch.full_like(ids, -1))[0]


def _first_key_hidden(ids):
    """Bool [batch, 1, queries, keys]: every query after the first loses key 0."""
    hidden = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1], dtype=torch.bool)
    hidden[:, :, 1:, 0] = True
    return hidden


class _Doubled(AttentionEdit):
    """The layer's own attention output, doubled; with `hidden`, the pairs it names hidden through run's mask."""
    replaces_kernel = True
    layers = [1]

    def __init__(self, hidden=None):
        self.hidden = hidden

    def kernel(self, layer, run, module, query, key, value, mask, **kwargs):
        if self.hidden is not None:
            mask = hide(mask, query, key, self.hidden)
        out, weights = run(query, key, value, mask)
        assert weights.shape[-2:] == (query.shape[2], key.shape[2])  # the tokens' weights
        return out * (1 if self.hidden is not None else 2), None


class _HideFirstKey(AttentionEdit):
    layers = [1]

    def mask(self, layer, query, key, mask):
        return hide(mask, query, key, _first_key_hidden(torch.zeros(query.shape[0], query.shape[2])))


@pytest.mark.parametrize("variant", ["default", "attn_bias"])
def test_a_kernel_edit_of_a_gpt2_model_replaces_its_explicit_paths_output(variant):
    lm = _gpt2_lm(variant)
    ids = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(4))
    view = ModelView(lm)
    with torch.no_grad():
        with edit_attention(lm, _Doubled()):
            doubled = _gpt2_logits(lm, ids)
        with explicit_attention(view), Edit(lm, "attn.z", lambda z, layer: z * 2, layers=[1]):  # layer 0 too
            torch.testing.assert_close(doubled, _gpt2_logits(lm, ids), rtol=1e-5, atol=1e-6)
        with edit_attention(lm, _Doubled(_first_key_hidden(ids))):  # run's mask hides as a mask edit does
            hidden_by_kernel = _gpt2_logits(lm, ids)
        with edit_attention(lm, _HideFirstKey()):
            assert torch.equal(hidden_by_kernel, _gpt2_logits(lm, ids))
        with explicit_attention(view):
            plain = _gpt2_logits(lm, ids)
        assert not torch.allclose(hidden_by_kernel, plain)
        assert torch.equal(_gpt2_logits(lm, ids), lm.gpt(ids, targets=torch.full_like(ids, -1))[0])
    assert all("explicit" not in vars(view.attn(i)) and view.attn(i).flash for i in range(2))


def test_gpt2_attention_scores_under_edits():
    lm = _gpt2_lm()
    ids = torch.randint(0, 37, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for capture_first in (True, False):  # the captured scores are the masked ones, in either nesting order
            capture, edit = Capture(lm, "attn.scores", layers=[1]), edit_attention(lm, _HideFirstKey())
            with (capture if capture_first else edit), (edit if capture_first else capture):
                lm(ids)
            assert capture["attn.scores", 1][:, :, 1:, 0].eq(float("-inf")).all()
            assert capture["attn.scores", 1][:, :, 0, 0].isfinite().all()
        with edit_attention(lm, _Doubled()), pytest.raises(CaptureError, match="not defined"):
            with Capture(lm, "attn.pattern", layers=[1]):
                lm(ids)
