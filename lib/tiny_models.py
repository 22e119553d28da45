"""Tiny random-weight models, one per supported family, built from transformers configs (no download), and a
character tokenizer that needs no files either: what tests and benches run without weights or a hub."""
import torch
import transformers as tf

SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)


def _configs():
    gqa = dict(SMALL, num_key_value_heads=2)
    return {
        "llama": lambda: tf.LlamaConfig(**gqa),
        "mistral": lambda: tf.MistralConfig(**gqa, sliding_window=6),
        "mixtral": lambda: tf.MixtralConfig(**gqa, num_local_experts=4, num_experts_per_tok=2),
        "qwen2": lambda: tf.Qwen2Config(**gqa),
        "gemma": lambda: tf.GemmaConfig(**gqa, head_dim=8),
        "gemma2": lambda: tf.Gemma2Config(**gqa, head_dim=8, sliding_window=6, attn_logit_softcapping=20.0),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**gqa, head_dim=8, sliding_window=6),
        "phi": lambda: tf.PhiConfig(**SMALL, partial_rotary_factor=0.5),
        "phi3": lambda: tf.Phi3Config(**gqa, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "opt": lambda: tf.OPTConfig(vocab_size=128, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                                    num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=64),
        "falcon": lambda: tf.FalconConfig(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                          multi_query=True, parallel_attn=True),
        "falcon_new": lambda: tf.FalconConfig(vocab_size=128, hidden_size=32, num_hidden_layers=3,
                                              num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True),
        "mpt": lambda: tf.MptConfig(vocab_size=128, d_model=32, n_heads=4, n_layers=3, expansion_ratio=2,
                                    max_seq_len=64),
        "gpt2": lambda: tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                    bos_token_id=0, eos_token_id=0),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**SMALL, rotary_pct=0.5),
    }


FAMILY_CONFIGS = _configs()


def tiny_model(family: str, attn_implementation: str | None = None, seed: int = 0):
    """A tiny eval-mode model of `family` with seeded random weights (same seed -> same weights)."""
    torch.manual_seed(seed)
    config = FAMILY_CONFIGS[family]()
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()


class CharTokenizer:
    """One token per ASCII character (others map to '?'). The interface the figure code uses:
    encode(text) -> ids, convert_ids_to_tokens(ids) -> strings, decode(ids) -> text."""

    vocab_size = 128

    def encode(self, text, add_special_tokens=False):
        return [ord(c) if ord(c) < 128 else ord("?") for c in text]

    def convert_ids_to_tokens(self, ids):
        return [chr(int(i)) for i in ids]

    def decode(self, ids):
        return "".join(self.convert_ids_to_tokens(ids))


def char_tokenizer_hf():
    """CharTokenizer as a Hugging Face fast tokenizer (same ids, no special tokens), to save beside a model folder."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    backend = Tokenizer(models.WordLevel({chr(i): i for i in range(CharTokenizer.vocab_size)}, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="?")


def save_folder(model, folder) -> str:
    """`model` with a character tokenizer as a Hugging Face model folder (safetensors), as a user's local weights."""
    model.save_pretrained(folder)
    char_tokenizer_hf().save_pretrained(folder)
    return str(folder)


def layer_bytes(model) -> list[int]:
    """Bytes of each decoder layer's parameters."""
    from monkey_patch import ModelView
    return [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in ModelView(model).layers]


def memory_for_layers(model, layers: int) -> int:
    """A max_memory for the first device of accelerate's device map that keeps `layers` decoder layers there and sends
    the others on: what comes before the first layer (the embeddings), `layers` layers, the largest layer (the room
    accelerate keeps on a device it offloads from) and half a layer to spare."""
    from monkey_patch import ModelView
    view = ModelView(model)
    first = f"{view.family.layers}.0."
    before = 0
    for name, p in model.named_parameters():
        if name.startswith(first):
            break
        before += p.numel() * p.element_size()
    sizes = layer_bytes(model)
    return before + sum(sizes[:layers]) + max(sizes) + max(sizes) // 2
