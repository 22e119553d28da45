"""Where the massive activation and the sink sit, checked against HF's own hidden states and attention maps, and
where a key mask moves them on a planted model."""
import pytest
import torch

from lib import interventions, reducers, relocation
from lib.tiny_models import tiny_model

PLANTED_TOKEN, PLANTED_LAYER, CHANNEL = 2, 0, 5


def _ids():
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def test_tracker_matches_hidden_states_and_attentions_by_hand():
    model = tiny_model("llama", attn_implementation="eager")
    ids = _ids()
    with torch.no_grad(), relocation.track(model) as where:
        out = model(ids, output_hidden_states=True, output_attentions=True)
    windows = where.windows()
    assert len(windows) == 2 and len(windows[0]) == 3
    for w in range(2):
        for layer in range(3):
            h = out.hidden_states[layer + 1][w]
            if layer == 2:  # the last hidden state is after the final norm; the block output is what is tracked
                continue
            entry = windows[w][layer]
            token, channel = divmod(int(h.abs().argmax()), h.shape[-1])
            assert (entry["token"], entry["channel"]) == (token, channel)
            assert entry["value"] == pytest.approx(float(h[token, channel]), rel=1e-5)
            assert entry["median"] == pytest.approx(float(h.abs().median()), rel=1e-5)
            attn = out.attentions[layer][w].mean(dim=0)  # [queries, keys], head-averaged
            n = attn.shape[-1]
            by_hand = torch.tensor([float(attn[k + 1:, k].mean()) if k < n - 1 else 0.0 for k in range(n)])
            torch.testing.assert_close(entry["received"], by_hand, atol=1e-6, rtol=1e-5)


def test_attention_received_leaves_out_the_keys_own_query():
    probs = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])[None]  # [1, 1 head, 3, 3]
    got = reducers.attention_received("attn.pattern", 0, probs)[0]
    torch.testing.assert_close(got, torch.tensor([[0.35, 0.3, 0.0]]))


def _plant(model):
    """Token PLANTED_TOKEN carries a massive value in CHANNEL from layer PLANTED_LAYER's output on."""
    def hook(module, args, output):
        h = (output[0] if isinstance(output, tuple) else output).clone()
        h[:, PLANTED_TOKEN, CHANNEL] = 4000.0
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
    return model.model.layers[PLANTED_LAYER].register_forward_hook(hook)


def test_summary_finds_the_planted_outlier_and_compare_sees_a_mask_move_the_sink():
    model = tiny_model("llama")
    ids = _ids()
    handle = _plant(model)
    try:
        with torch.no_grad(), relocation.track(model) as before:
            model(ids)
        with torch.no_grad(), interventions.mask_keys(model, [PLANTED_TOKEN]), relocation.track(model) as after:
            model(ids)
    finally:
        handle.remove()
    b, a = before.summary(), after.summary()
    assert b["massive"]["tokens"] == [PLANTED_TOKEN, PLANTED_TOKEN] and b["massive"]["channel"] == CHANNEL
    assert PLANTED_LAYER in b["massive"]["layers"]
    for row in a["per_layer"]:  # no later query attends to the masked token in any layer
        assert all(w[row["layer"]]["received"][PLANTED_TOKEN] == 0 for w in after.windows())
    assert all(t != PLANTED_TOKEN for t in a["sink"]["tokens"])
    moved = relocation.compare(b, a)
    assert moved["massive_moved"] == 0.0  # the planted value stays where it was planted
    assert moved["sink_moved"] == (sum(t != u for t, u in zip(b["sink"]["tokens"], a["sink"]["tokens"])) / 2)


def test_mask_keys_refuses_layers_out_of_range():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="out of range"):
        with interventions.mask_keys(model, [1], layers=[3]):
            pass


def test_relocation_measures_every_condition_and_its_control_on_a_planted_model():
    from lib.interventions import Rule
    from lib.perplexity import hf_logits
    model = tiny_model("llama")
    windows = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(4))
    handle = _plant(model)
    try:
        out = relocation.measure(model, model.model.layers, hf_logits(model), lambda x: model.model(input_ids=x),
                                 windows, rule=Rule(factor=100.0))
    finally:
        handle.remove()
    assert out["outlier_tokens"] == [[PLANTED_TOKEN], [PLANTED_TOKEN]]
    assert all(len(c) == 1 and c[0] != PLANTED_TOKEN for c in out["control_tokens"])
    first = out["first_sink_layer"]
    if first is None or first == 0:
        assert list(out["conditions"]) == ["every_layer"]
    else:
        assert set(out["conditions"]) == set(relocation.CONDITIONS)
        assert out["conditions"]["before_sink_layer"]["outliers"]["masked_layers"] == list(range(first))
    every = out["conditions"]["every_layer"]
    assert every["outliers"]["masked_layers"] == [0, 1, 2]
    for kind in ("outliers", "control"):
        entry = every[kind]
        assert entry["ppl"] > 0 and "nll_change_stderr" in entry and "moved" in entry


def test_conditions_that_mask_nothing_new_are_left_out():
    """A sink from the first layer on (a BOS): nothing lies before it and "from it on" is every layer, so only the
    every-layer condition is measured, and the note says why."""
    kept, skipped = relocation.defined_conditions(0, 4)
    assert kept == {"every_layer": [0, 1, 2, 3]}
    assert skipped == ["masked from the first sink layer on masks the same layers as masked in every layer",
                       "masked only in the layers before the first sink layer masks no layer"]
    kept, skipped = relocation.defined_conditions(2, 4)
    assert kept == {"every_layer": [0, 1, 2, 3], "from_sink_layer": [2, 3], "before_sink_layer": [0, 1]} and not skipped
    assert relocation.defined_conditions(None, 4) == ({"every_layer": [0, 1, 2, 3]}, [])
