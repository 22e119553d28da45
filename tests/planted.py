"""A character-level tokenizer and a tiny Llama with hand-planted outliers, for the figure tests.

The planted model (4 layers, hidden 32, MLP 64, 4 heads, 2 kv heads) carries the paper's whole lifecycle:
  * embedding channel TRIGGER is 10 for the sink character SINK ('W') and 0 for every other token;
  * layer PLANTED's MLP unit NEURON reads TRIGGER (gate and up rows) and its down_proj column NEURON writes
    20 into residual channel CHANNEL: the sink token gets a massive activation there (about 10,000);
  * every later layer's heads put their attention on the token that holds CHANNEL (queries read a constant
    channel CONSTANT, keys read CHANNEL, on the lowest-frequency rotary pair so position barely matters),
    and its value ignores CHANNEL (a sink with a near-zero value);
  * the last layer's MLP unit CANCEL reads CHANNEL (gated off through CONSTANT for ordinary tokens) and writes
    the sink's CHANNEL back to about zero (disappearance).
Every other weight keeps its small random initialisation.
"""
import torch
import transformers as tf

from lib.models import ModelSpec
from lib.tiny_models import CharTokenizer

SINK = "W"
PLANTED = 1          # 0-based layer whose down_proj writes the outlier
CHANNEL = 11         # residual channel of the massive activation
NEURON = 37          # down_proj input column (MLP unit) that writes it
TRIGGER = 5          # embedding channel that marks the sink token
CONSTANT = 7         # embedding channel equal for every token (gives every query the same direction)
CANCEL = 50          # last layer's MLP unit that removes the outlier
LAYERS, HIDDEN, HEAD_DIM = 4, 32, 8
ROTARY_SLOW = 3      # head dimension paired with 3 + HEAD_DIM/2: the slowest rotary frequency


def spec(name: str, title: str) -> ModelSpec:
    return ModelSpec(name=name, source="(built in the test)", title=title, seqlen=64, cuda_dtype="float32")


def random_llama(seed: int = 0, vocab_size: int = 128):
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return tf.AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def planted_llama(seed: int = 0, write: float = 20.0):
    """`write`: the planted down_proj weight (20 gives the sink about 10,000 in CHANNEL; 200 about 1e5, above
    float16's largest finite value 65,504)."""
    model = random_llama(seed)
    sink = ord(SINK)
    emb = model.model.embed_tokens.weight
    emb[:, TRIGGER] = 0.0
    emb[sink, TRIGGER] = 10.0
    emb[:, CONSTANT] = 1.0
    layers = model.model.layers
    for layer in layers:  # no layer other than PLANTED may write into the outlier channel by much
        layer.mlp.down_proj.weight[CHANNEL] *= 0.01
        layer.self_attn.o_proj.weight[CHANNEL] *= 0.01
    _write_unit(layers[PLANTED].mlp, NEURON, read=TRIGGER, write=CHANNEL, amount=write)
    for layer in layers[PLANTED + 1:]:
        attn = layer.self_attn
        for head in range(4):
            row = head * HEAD_DIM + ROTARY_SLOW
            attn.q_proj.weight[row] = 0.0
            attn.q_proj.weight[row, CONSTANT] = 2.0
        for kv_head in range(2):
            row = kv_head * HEAD_DIM + ROTARY_SLOW
            attn.k_proj.weight[row] = 0.0
            attn.k_proj.weight[row, CHANNEL] = 2.0
        attn.v_proj.weight[:, CHANNEL] = 0.0  # the sink carries no value, as in the paper
    last = layers[-1].mlp
    _write_unit(last, CANCEL, read=CHANNEL, write=CHANNEL, amount=0.0)
    last.gate_proj.weight[CANCEL, CONSTANT] = -4.0  # a bias through the constant channel: fires for the sink only
    # Size the cancelling write from the actual residual value of the sink token before the last MLP.
    ids = torch.tensor([CharTokenizer().encode("Summer is warm. Winter is cold.\n")])
    seen = {}
    hook = last.down_proj.register_forward_pre_hook(lambda m, args: seen.setdefault("act", args[0]))
    out = model(ids, output_hidden_states=True)
    hook.remove()
    position = ids[0].tolist().index(sink)
    residual = out.hidden_states[-2][0, position, CHANNEL]  # input of the last layer
    last.down_proj.weight[CHANNEL, CANCEL] = -residual / seen["act"][0, position, CANCEL]
    return model


def _write_unit(mlp, unit, read, write, amount):
    for proj in (mlp.gate_proj, mlp.up_proj):
        proj.weight[unit] = 0.0
        proj.weight[unit, read] = 4.0
    mlp.down_proj.weight[:, unit] = 0.0
    mlp.down_proj.weight[write, unit] = amount
