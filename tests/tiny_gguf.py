"""Tiny GGUF files written in the tests, from tiny random-weight HF models, as llama.cpp's converter would write
them: llama.cpp tensor names, llama's q/k rows permuted, the tokenizer in the metadata. Every tensor is F32, so a
model loaded back from the file must equal the one it was written from."""
import string

import gguf
import numpy as np
import torch
import transformers as tf

LLAMA_CONFIG = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-5)


def tiny_hf_model(arch: str, seed: int = 0):
    """A tiny eval-mode llama or qwen2 with seeded random weights (Qwen2 also gets q/k/v biases)."""
    torch.manual_seed(seed)
    config = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[arch](**LLAMA_CONFIG, tie_word_embeddings=False)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def write_gguf(model, path, arch: str, file_type=gguf.LlamaFileType.ALL_F32, extra_uint16=None) -> None:
    """Write `model` (llama or qwen2) and a tiny tokenizer to a GGUF file at `path`. file_type None leaves
    general.file_type out; `extra_uint16` adds metadata keys (llama-gguf-split's split.no, split.count)."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    if file_type is not None:
        writer.add_file_type(file_type)
    for key, value in (extra_uint16 or {}).items():
        writer.add_uint16(key, value)
    _add_shape(writer, config)
    (_add_sentencepiece_vocab if arch == "llama" else _add_byte_level_vocab)(writer, config.vocab_size)
    for name, array in _gguf_tensors(model, arch):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_metadata_only(path, arch: str) -> None:
    """A well-formed GGUF with no tensors, only its architecture: enough to be refused for it."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_shape(writer, config) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_embedding_length(config.hidden_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters")
                              else config.rope_theta)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _gguf_tensors(model, arch: str):
    """(llama.cpp name, array) for every weight, q/k rows permuted the way llama.cpp's converter does for llama."""
    config = model.config
    names = gguf.get_tensor_name_map(_model_arch(arch), config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        array = tensor.detach().float().numpy()
        if arch == "llama" and base.endswith(("q_proj", "k_proj")):
            heads = config.num_attention_heads if base.endswith("q_proj") else config.num_key_value_heads
            array = _llama_cpp_permute(array, heads)
        yield f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(array)


def _model_arch(arch: str):
    return next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Within each head, interleave the two rotary halves (rows 0..d/2 and d/2..d) as llama.cpp stores them."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


SPECIALS = ["<unk>", "<s>", "</s>"]


def _add_sentencepiece_vocab(writer, vocab_size: int) -> None:
    pieces = ["\u2581"] + list(string.ascii_lowercase)
    pieces += [f"\u2581{c}" for c in string.ascii_lowercase]
    tokens = (SPECIALS + pieces + [f"<extra{i}>" for i in range(vocab_size)])[:vocab_size]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(vocab_size)])
    writer.add_token_types([2, 3, 3] + [1] * (vocab_size - 3))  # unknown, control, control, then normal
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def _add_byte_level_vocab(writer, vocab_size: int) -> None:
    letters = list(string.ascii_lowercase) + ["\u0120"]  # GPT-2's byte alphabet spells a space as \u0120
    merges = ["\u0120 a", "\u0120 b"]
    tokens = (["<|endoftext|>"] + letters + ["\u0120a", "\u0120b"] + [f"<x{i}>" for i in range(vocab_size)])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens[:vocab_size])
    writer.add_token_merges(merges)
    writer.add_token_types([3] + [1] * (vocab_size - 1))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
