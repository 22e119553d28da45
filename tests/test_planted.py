"""Planted outliers: capture + detectors must find exactly the planted layer, column, channel, token and sink."""
import torch

from lib import outliers
from monkey_patch import Capture, ModelView
from planted import CHANNEL, NEURON, PLANTED, SINK, CharTokenizer, planted_llama, random_llama

PROMPT = "Summer is warm. Winter is cold.\n"


def _run(model):
    ids = torch.tensor([CharTokenizer().encode(PROMPT)])
    with torch.no_grad(), Capture(model, ["resid_post", "mlp.down_in", "attn.pattern"]) as cap:
        model(ids)
    return cap


def test_activation_detector_finds_the_planted_layer_token_and_channel():
    cap = _run(planted_llama())
    sink = PROMPT.index(SINK)
    found = {layer: outliers.activation_outliers(cap["resid_post", layer][0], rule="median")
             for layer in range(4)}
    assert [layer for layer, f in found.items() if f["tokens"]] == [PLANTED, PLANTED + 1]  # cancelled in the last
    assert found[PLANTED]["tokens"] == [sink] and found[PLANTED]["channels"] == [CHANNEL]
    top = outliers.topk_magnitudes(cap["mlp.down_in", PLANTED][0], k=1)
    assert (top["tokens"][0], top["channels"][0]) == (sink, NEURON)


def test_weight_detector_finds_the_planted_column():
    view = ModelView(planted_llama())
    stats = outliers.weight_column_stats(view.weight(PLANTED, "down"))
    assert stats["top_columns"][0] == NEURON
    assert stats["max_ratio"] == torch.tensor(float(view.config.hidden_size)).item()  # one non-zero entry
    assert int(view.weight(PLANTED, "down")[:, NEURON].abs().argmax()) == CHANNEL


def test_attention_detector_finds_the_sink_after_the_planted_layer():
    cap = _run(planted_llama())
    sink = PROMPT.index(SINK)
    probs = cap["attn.pattern", PLANTED + 1][0]
    cumulative = outliers.cumulative_attention(probs)
    assert int(cumulative.argmax()) == sink
    assert sink in outliers.paper_attention_keys(cumulative)
    # the queries that can see the sink (positions >= sink) put nearly all their mass there
    seeing = (len(PROMPT) - sink) / len(PROMPT)
    assert outliers.head_outlier_ratio(probs, [sink]).min() > 0.9 * seeing


def test_random_weights_have_no_planted_outlier():
    cap = _run(random_llama())
    assert all(not outliers.activation_outliers(cap["resid_post", layer][0], rule="median")["tokens"]
               for layer in range(4))
