"""Attention edits and captures compose: every pair (edit x capture point x nesting order) on every registry family's
tiny model gives the edited model's numbers inside the capture, and leaving both leaves the model as it was."""
from contextlib import ExitStack

import pytest
import torch

from lib import interventions, scale_test
from monkey_patch import Capture, CaptureError, ModelView
from monkey_patch.routing import _ROUTERS
from monkey_patch.sites import LAYERLESS
from lib.tiny_models import FAMILY_CONFIGS, tiny_model

REGISTRY_FAMILIES = [f for f in FAMILY_CONFIGS if ModelView(tiny_model(f)).family.registry]
OTHER_FAMILIES = [f for f in FAMILY_CONFIGS if f not in REGISTRY_FAMILIES]
MASKED_KEY = 3
MAP_POINTS = ("attn.scores", "attn.pattern")


def _ids():
    return torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(5))


def _key_mask(model):
    """Key MASKED_KEY masked in every layer, for both sequences."""
    state = interventions.SinkMask()
    state.keys = {i: [[MASKED_KEY], [MASKED_KEY]] for i in range(ModelView(model).num_layers)}
    return interventions.masking(model, state)


def _scale(model):
    """The scale test's oracle_scale on key MASKED_KEY in every layer (replaces each layer's attention output)."""
    state = scale_test.ScaleTest("oracle_scale")
    state.keys = {i: [[MASKED_KEY], [MASKED_KEY]] for i in range(ModelView(model).num_layers)}
    return scale_test.scale_test(model, state)


EDITS = {"key_mask": _key_mask, "scale_test": _scale}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _run(model, ids, edit, point, capture_outside):
    """Logits with `edit` and a capture of `point` entered in the given order, and the capture."""
    with ExitStack() as stack, torch.no_grad():
        capture = Capture(model, point)
        contexts = [capture, EDITS[edit](model)] if capture_outside else [EDITS[edit](model), capture]
        for context in contexts:
            stack.enter_context(context)
        return model(ids).logits, capture


@pytest.mark.parametrize("capture_outside", [False, True], ids=["edit_outside", "capture_outside"])
@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("family", REGISTRY_FAMILIES)
def test_edits_and_captures_compose_in_either_order(family, edit, capture_outside):
    model = tiny_model(family)
    view = ModelView(model)
    ids = _ids()
    impl, hooks = model.config._attn_implementation, _hooks(model)
    with torch.no_grad():
        plain = model(ids).logits
        with EDITS[edit](model):
            edited = model(ids).logits
    assert not torch.allclose(edited, plain, atol=1e-4)  # the edit changes the model
    for point in view.supported_points():
        if edit == "scale_test" and point in MAP_POINTS:
            with pytest.raises(CaptureError, match="replaces this layer's attention output"):
                _run(model, ids, edit, point, capture_outside)
            continue
        logits, cap = _run(model, ids, edit, point, capture_outside)
        assert torch.equal(logits, edited), point  # the edited model, bit for bit, inside the capture
        for layer in [None] if point in LAYERLESS else range(view.num_layers):
            assert (point, layer) in cap.keys(), point  # and the capture saw every layer
        if point == "attn.pattern":
            for layer in range(view.num_layers):
                pattern = cap["attn.pattern", layer]
                others = [q for q in range(ids.shape[1]) if q != MASKED_KEY]
                assert torch.all(pattern[:, :, others, MASKED_KEY] == 0)  # no query but the key's own sees it
                assert torch.all(pattern[:, :, MASKED_KEY, MASKED_KEY] > 0)
                torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)  # leaving both leaves the model as it was
    assert model.config._attn_implementation == impl and _hooks(model) == hooks and not _ROUTERS


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_key_mask_under_a_capture_matches_eager_with_the_mask_by_hand(family):
    """Independent oracle: eager attention's own output_attentions under an additive mask built by hand."""
    model = tiny_model(family, attn_implementation="eager")
    ids = _ids()
    with torch.no_grad(), _key_mask(model), Capture(model, "attn.pattern") as cap:
        out = model(ids, output_attentions=True)
    for layer, weights in enumerate(out.attentions):
        torch.testing.assert_close(cap["attn.pattern", layer], weights.float(), atol=1e-6, rtol=1e-5)
        assert torch.all(weights[:, :, MASKED_KEY + 1:, MASKED_KEY] == 0)


def test_a_sink_search_inside_a_users_capture_stays_out_of_it():
    """mask_attention_sinks runs its own unmasked forward to find the sinks: a capture open around it records only
    the masked forward the user ran."""
    model = tiny_model("llama")
    ids = _ids()[:1]
    run = lambda x: model.model(input_ids=x)  # noqa: E731
    masked_fn, state = interventions.mask_attention_sinks(model, run, lambda x: model(x).logits)
    with torch.no_grad(), Capture(model, ["resid_post", "attn.pattern"], reduce=lambda p, i, t: t.shape) as cap:
        masked_fn(ids)
    assert all(len(cap.reduced("resid_post", i)) == 1 for i in range(3))
    assert all(len(cap.reduced("attn.pattern", i)) == 1 for i in range(3))


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_key_masks_refuse_families_outside_the_registry(family):
    model = tiny_model(family)
    with pytest.raises(ValueError, match="attention registry"):
        with _key_mask(model):
            pass


def test_a_key_mask_that_never_reaches_attention_raises():
    """A model whose attention bypasses the router (here: switched back to sdpa inside the context) must not run
    unmasked silently."""
    model = tiny_model("llama")
    with pytest.raises(CaptureError, match="not applied"), torch.no_grad():
        with _key_mask(model):
            model.config._attn_implementation = "sdpa"
            model(_ids())


def test_capture_works_with_autograd_and_gradients_flow():
    """A captured forward with autograd on: the maps are made, and gradients reach the weights as without it."""
    model = tiny_model("llama")
    ids = _ids()
    model.zero_grad()
    model(ids).logits.sum().backward()
    plain = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    with Capture(model, ["resid_post", "mlp.down_in", "attn.pattern", "attn.scores"], layers=[1, 2]) as cap:
        model(ids).logits.sum().backward()
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight.grad, plain)
    assert not cap["attn.pattern", 1].requires_grad and cap["attn.pattern", 1].shape == (2, 4, 10, 10)
