"""Where each model family keeps its layers, norms and projections: the only family-specific facts in the project.

Each entry names submodules relative to the model (`layers`, `final_norm`) or to one decoder layer (the rest).
A tuple lists alternative names across transformers releases; the first that exists is used. `None` means the
family has no such module (a parallel block has no separate MLP norm; a non-gated MLP has no gate).
For non-gated MLPs `up` is fc1 and `down` is fc2, so `down_in`/`down_out` mean the same thing in every family.
`qkv` names a fused projection and `qkv_layout` says how to split it (see `split_qkv`).
`q`, `k`, `v`, `qkv`, `qk_norm` and `o` live inside `attn`; `gate`, `up`, `gate_up`, `down` and `act` inside `mlp` (the layer
itself when `mlp` is None, as in OPT). Mixtral's experts are not described, so its MLP internals are not captured.
`registry`: the family's attention goes through transformers' attention-function registry. Families outside
it return probabilities from their attention module (always, or when `weights_flag` is passed as True).
`nanogpt` is gpt-2/model.py's GPT as lib/gpt2_checkpoints.py wraps it (the GPT under `gpt`). Its attention computes
scores and weights in the open only on its explicit path, which the attention attribute `fused_flag` turns on when
False; there they pass through the identity modules `scores` and `pattern` inside `attn` (monkey_patch.hook_points),
and `explicit` names the attention method that computes that path ((q, k, v) -> (per-head output, weights)), which
an attention edit's kernel replaces.
Two of its attention variants have more to capture: `scale` names the module inside `attn` that a per-token,
per-head output scale passes through (ca_softmax's S(x)), and `extra_key` the attention attribute that is True when
the weights hold an always-visible extra key k' in column 0 (attn_bias, softmax1).
"""
from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    layers: str
    final_norm: str | tuple
    ln1: str | tuple
    ln2: str | tuple | None
    attn: str
    o: str
    mlp: str | tuple | None
    up: str | None
    down: str | None
    act: str | None
    gate: str | None = None
    gate_up: str | None = None          # fused gate|up projection (gate first)
    q: str | None = None                 # separate projections
    k: str | None = None
    v: str | None = None
    qk_norm: tuple | None = None         # per-head norms applied to q and k after the projections, if any
    qkv: str | None = None
    qkv_layout: str = "concat"
    registry: bool = True
    weights_flag: str | None = None     # outside the registry: the kwarg that makes attention return probabilities
    fused_flag: str | None = None        # attn attribute: False runs the explicit path through `scores` and `pattern`
    scores: str | None = None            # module inside attn the scores pass through (explicit path)
    pattern: str | None = None           # module inside attn the probabilities pass through (explicit path)
    explicit: str | None = None          # attn method that computes the explicit path (an edit's kernel replaces it)
    scale: str | None = None             # module inside attn whose output is a [batch, pos, head] output scale
    extra_key: str | None = None         # attn attribute: True when probabilities carry an extra key in column 0
    mlp_out_norm: str | None = None      # sandwich norms: the norm between the MLP's output and the residual
    copies: tuple = ()                   # points the family's forward changes in place after capture: copied


_LLAMA = Family(layers="model.layers", final_norm="model.norm", ln1="input_layernorm", ln2="post_attention_layernorm",
                attn="self_attn", q="q_proj", k="k_proj", v="v_proj", o="o_proj", mlp="mlp",
                gate="gate_proj", up="up_proj", down="down_proj", act="act_fn")
_QK_NORM = dict(qk_norm=("q_norm", "k_norm"))

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": replace(_LLAMA, **_QK_NORM),
    "gemma": _LLAMA,
    "gemma2": replace(_LLAMA, ln2="pre_feedforward_layernorm", mlp_out_norm="post_feedforward_layernorm"),
    "gemma3_text": replace(_LLAMA, ln2="pre_feedforward_layernorm", mlp_out_norm="post_feedforward_layernorm",
                           **_QK_NORM),
    "mixtral": replace(_LLAMA, mlp=None, gate=None, up=None, down=None, act=None),
    "phi": Family(layers="model.layers", final_norm="model.final_layernorm", ln1="input_layernorm", ln2=None,
                  attn="self_attn", q="q_proj", k="k_proj", v="v_proj", qk_norm=("q_layernorm", "k_layernorm"), o="dense",
                  mlp="mlp", up="fc1", down="fc2", act="activation_fn"),
    "phi3": Family(layers="model.layers", final_norm="model.norm", ln1="input_layernorm",
                   ln2="post_attention_layernorm", attn="self_attn", qkv="qkv_proj", o="o_proj", mlp="mlp",
                   gate_up="gate_up_proj", up=None, down="down_proj", act="activation_fn"),
    "opt": Family(layers="model.decoder.layers", final_norm="model.decoder.final_layer_norm",
                  ln1="self_attn_layer_norm", ln2="final_layer_norm", attn="self_attn", q="q_proj", k="k_proj",
                  v="v_proj", o="out_proj", mlp=None, up="fc1", down="fc2", act="activation_fn"),
    "gpt2": Family(layers="transformer.h", final_norm="transformer.ln_f", ln1="ln_1", ln2="ln_2", attn="attn",
                   qkv="c_attn", o="c_proj", mlp="mlp", up="c_fc", down="c_proj", act="act"),
    "gpt_neox": Family(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", ln1="input_layernorm",
                       ln2="post_attention_layernorm", attn="attention", qkv="query_key_value", qkv_layout="neox",
                       o="dense", mlp="mlp", up="dense_h_to_4h", down="dense_4h_to_h", act="act"),
    "falcon": Family(layers="transformer.h", final_norm="transformer.ln_f", ln1=("input_layernorm", "ln_attn"),
                     ln2=("post_attention_layernorm", "ln_mlp"), attn="self_attention", qkv="query_key_value",
                     qkv_layout="falcon", o="dense", mlp="mlp", up="dense_h_to_4h", down="dense_4h_to_h", act="act",
                     registry=False, weights_flag="output_attentions", copies=("mlp.down_out", "mlp_out")),  # out += attn
    "nanogpt": Family(layers="gpt.transformer.h", final_norm="gpt.transformer.ln_f", ln1="ln_1", ln2="ln_2",
                      attn="attn", qkv="c_attn", o="c_proj", mlp="mlp", up="c_fc", down="c_proj", act="gelu",
                      registry=False, fused_flag="flash", scores="hook_scores", pattern="hook_pattern", explicit="explicit",
                      scale="hook_scale", extra_key="extra_key_first"),
    "mpt": Family(layers="transformer.blocks", final_norm="transformer.norm_f", ln1="norm_1", ln2="norm_2",
                  attn="attn", qkv="Wqkv", o="out_proj", mlp="ffn", up="up_proj", down="down_proj", act="act",
                  registry=False),
}

# llama.cpp's name for a family's GGUF architecture, where it is not the model_type (GGUF files of Gemma 3 hold
# only the text model, which transformers calls gemma3_text)
GGUF_ARCHITECTURES = {"gemma3_text": "gemma3"}


def get_submodule(root: nn.Module, names) -> nn.Module | None:
    """The first of `names` (a dotted path or a tuple of alternatives) that exists under `root`, else None."""
    if names is None:
        return None
    for name in (names,) if isinstance(names, str) else names:
        module = root
        for part in name.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module
    return None


def head_counts(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) from a config, whatever the family calls them."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", None)
    if config.model_type == "falcon":
        kv = config.num_kv_heads if config.new_decoder_architecture else (1 if config.multi_query else heads)
    return heads, kv or heads, head_dim


def split_qkv(fused: torch.Tensor, layout: str, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused qkv projection output [batch, seq, *] into q, k, v of shape [batch, seq, heads, head_dim]."""
    heads, kv, d = head_counts(config)
    b, s = fused.shape[:2]
    if layout == "concat":  # q | k | v along the feature axis
        q, k, v = fused.split([heads * d, kv * d, kv * d], dim=-1)
        return q.view(b, s, heads, d), k.view(b, s, kv, d), v.view(b, s, kv, d)
    if layout == "neox":  # per head: q | k | v
        return fused.view(b, s, heads, 3 * d).chunk(3, dim=-1)
    if layout == "falcon":
        if config.new_decoder_architecture:  # per kv group: the group's queries, then one k and one v
            grouped = fused.view(b, s, kv, heads // kv + 2, d)
            return grouped[:, :, :, :-2].reshape(b, s, heads, d), grouped[:, :, :, -2], grouped[:, :, :, -1]
        if config.multi_query:  # all queries, then one k and one v
            flat = fused.view(b, s, heads + 2, d)
            return flat[:, :, :-2], flat[:, :, -2:-1], flat[:, :, -1:]
        per_head = fused.view(b, s, heads, 3, d)
        return per_head[..., 0, :], per_head[..., 1, :], per_head[..., 2, :]
    raise ValueError(f"unknown qkv layout {layout!r}")
