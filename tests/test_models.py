"""Model registry, resolution of local weights, loading and its user errors."""

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from lib.errors import UserError
from lib.models import DEFAULT_MODEL, MODELS_ENV, REGISTRY, load_model, parse_dtype, resolve
from lib.tiny_models import tiny_model

REFERENCE_NAMES = ["llama2_7b", "llama2_13b", "llama2_70b", "llama2_7b_chat", "llama2_13b_chat", "llama2_70b_chat",
                   "llama3_8b", "mistral_7b", "mistral_7b_instruct", "mistral_moe", "mistral_moe_instruct", "phi2",
                   "falcon_7b", "falcon_40b", "mpt_7b", "mpt_30b", "opt_125m", "opt_350m", "opt_1.3b", "opt_2.7b",
                   "opt_6.7b", "opt_13b", "opt_30b", "opt_66b", "gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl"]


def _save_tiny(folder, family="llama"):
    """A tiny model folder with a word-level tokenizer, as a user's local weights would look."""
    model = tiny_model(family)
    model.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(model.config.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0").save_pretrained(folder)
    return model


def test_registry_has_every_reference_name_and_the_default():
    assert set(REFERENCE_NAMES) <= set(REGISTRY)
    assert DEFAULT_MODEL == "gemma3_270m" and REGISTRY[DEFAULT_MODEL].hf_id == "google/gemma-3-270m"
    assert REGISTRY["llama2_7b"].hf_id == "meta-llama/Llama-2-7b-hf" and REGISTRY["llama2_7b"].title == "LLaMA2-7B"


def test_unknown_model_lists_the_registry():
    with pytest.raises(UserError, match="unknown model 'llama9'.*llama2_7b"):
        resolve("llama9")
    with pytest.raises(UserError, match="empty"):
        resolve("  ")


def test_hub_ids_pass_through_and_registry_names_map_to_hub_ids(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert resolve("org/some-model").source == "org/some-model"
    spec = resolve("opt_1.3b")
    assert (spec.source, spec.title, spec.seqlen) == ("facebook/opt-1.3b", "OPT-1.3B", 2048)


def test_local_weights_are_found_by_registry_name_or_hub_id(tmp_path, monkeypatch):
    _save_tiny(tmp_path / "llama2_7b")
    assert resolve("llama2_7b", str(tmp_path)).source == str(tmp_path / "llama2_7b")
    _save_tiny(tmp_path / "mistralai" / "Mistral-7B-v0.1")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert resolve("mistral_7b").source == str(tmp_path / "mistralai" / "Mistral-7B-v0.1")


def test_missing_local_weights_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(UserError, match=f"weights for 'llama2_13b' not found; looked in: {tmp_path}"):
        resolve("llama2_13b", str(tmp_path))


def test_load_a_local_folder_reads_the_architecture_from_its_config(tmp_path):
    original = _save_tiny(tmp_path / "my-model", "qwen2")
    model, tokenizer, spec = load_model(str(tmp_path / "my-model"), device="cpu")
    assert spec.name == "my-model" and model.config.model_type == "qwen2" and not model.training
    assert tokenizer is not None
    ids = torch.tensor([[5, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    assert next(model.parameters()).dtype == torch.float32


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    torch.manual_seed(0)
    bloom = tf.AutoModelForCausalLM.from_config(tf.BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2))
    bloom.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="unsupported architecture 'bloom'.*llama"):
        load_model(str(tmp_path), device="cpu")


def test_bad_device_and_dtype_are_user_errors(tmp_path):
    _save_tiny(tmp_path)
    with pytest.raises(UserError, match="unknown dtype"):
        parse_dtype("float8")
    with pytest.raises(UserError, match="unknown device"):
        load_model(str(tmp_path), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            load_model(str(tmp_path), device="cuda")
    model, _, _ = load_model(str(tmp_path), device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path))


def test_a_missing_file_or_folder_is_a_user_error_not_a_hub_lookup(tmp_path):
    for missing in (str(tmp_path / "model.gguf"), str(tmp_path / "absent"), "missing.gguf", "./absent"):
        with pytest.raises(UserError, match="no such file or folder"):
            resolve(missing)


def test_a_value_whose_first_component_is_a_local_folder_is_a_path_not_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "gpt-2" / "out-backcopy-ca_softmax").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no such file or folder .did you mean out-backcopy-ca_softmax"):
        resolve("gpt-2/out-backcopy-ca_softmx")


def test_an_unknown_registry_name_suggests_the_nearest():
    with pytest.raises(UserError, match="did you mean gemma3_270m"):
        resolve("gemma3_270")
