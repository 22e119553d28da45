"""A GPT (nanoGPT-style, pre-LayerNorm, no biases by default) whose attention is picked by config.

Attention variants (An et al. 2025, Section 5; A = softmax(Q K^T / sqrt(d)) with a causal mask):
  default     A V
  vbias       A V + v'                                       (v' learned, one per head: head_dim wide)
  cabias      A V + softmax(Q [k'; K]^T / sqrt(d)) [v'; 0]   (extra key k' always visible)
  attn_bias   softmax(Q [k'; K]^T / sqrt(d)) [v'; V]         (extra key/value always visible)
  ca_softmax  S(x) * A V,  S(x) = 2 sigmoid(Linear(x)), one scale per token and head
  sigmoid     sigmoid(Q K^T / sqrt(d) - log T) V              (causal, T = sequence length)
Positions (`pos_emb`): learned (GPT-2's absolute position embedding), rope (rotary, applied to q and k in
every layer) or none (causal masking alone tells positions apart). A learned position-0 vector is itself a
free, content-independent sink; rope and none leave position 0 nothing of its own.
Beyond the paper, behind the same switch:
  gated       (A V) * sigmoid(Linear(x)), elementwise output gate (Qiu et al. 2025, G1)
  clipped     clip((zeta - gamma) A + gamma, 0, 1) V  (clipped softmax, Bondarenko et al. 2023)
  softmax1    exp(s_i) / (1 + sum_j exp(s_j)) V  ("softmax plus one" = attn_bias with k' = v' = 0)
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

VARIANTS = ("default", "vbias", "cabias", "attn_bias", "ca_softmax", "sigmoid", "gated", "clipped", "softmax1")
POSITIONS = ("learned", "rope", "none")


class ConfigError(ValueError):
    """A bad model configuration (unknown variant, inconsistent sizes...)."""


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers
    attention: str = "default"  # one of VARIANTS
    clip_gamma: float = -0.03  # clipped softmax: lower stretch (gamma < 0)
    clip_zeta: float = 1.0  # clipped softmax: upper stretch (zeta >= 1)
    pos_emb: str = "learned"  # one of POSITIONS

    def __post_init__(self):
        if self.attention not in VARIANTS:
            raise ConfigError(f"unknown attention variant {self.attention!r}; choose one of {', '.join(VARIANTS)}")
        if self.pos_emb not in POSITIONS:
            raise ConfigError(f"unknown pos_emb {self.pos_emb!r}; choose one of {', '.join(POSITIONS)}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError("pos_emb 'rope' needs an even head dimension (n_embd / n_head)")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.clip_gamma > 0 or self.clip_zeta < 1:
            raise ConfigError("clipped softmax needs clip_gamma <= 0 and clip_zeta >= 1")

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model setting(s): {', '.join(unknown)}")
        return cls(**d)


def extra_key_mask(T, device):
    """Boolean mask (T, T+1): column 0 is an extra key every query sees, the rest is causal."""
    mask = torch.ones(T, T + 1, dtype=torch.bool, device=device)
    mask[:, 1:] = torch.tril(mask[:, 1:])
    return mask


def rotate(x, base=10000.0):
    """Rotary position embedding of x (B, nh, T, hd): channel pairs (i, i + hd/2) turned by angle t * base^(-2i/hd)."""
    T, hd = x.shape[-2], x.shape[-1]
    freq = base ** (-torch.arange(0, hd // 2, device=x.device, dtype=torch.float32) * 2 / hd)
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freq  # (T, hd/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.variant = config.attention
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.clip_gamma, self.clip_zeta = config.clip_gamma, config.clip_zeta
        self.rope = config.pos_emb == "rope"
        shape = (self.n_head, 1, self.head_dim)  # one extra key / value per head
        if self.variant in ("vbias", "cabias", "attn_bias"):
            self.v_extra = nn.Parameter(torch.zeros(shape))
        if self.variant in ("cabias", "attn_bias"):
            self.k_extra = nn.Parameter(torch.zeros(shape))
        if self.variant == "ca_softmax":  # S(x) = 2 sigmoid(Linear(x)); zero init -> S = 1 (plain softmax)
            self.scale_proj = nn.Linear(config.n_embd, config.n_head, bias=True)
            self.hook_scale = nn.Identity()  # S(x) (B, T, nh) passes through here, for capture hooks
        if self.variant == "gated":  # zero weights, bias 3 -> gate ~0.95 at init
            self.gate_proj = nn.Linear(config.n_embd, config.n_embd, bias=True)
        self.blocked_keys = None  # bool (B, T), set by interventions: tokens no other query may attend to
        self.extra_key_first = self.variant in ("attn_bias", "softmax1")  # explicit weights: column 0 is k'

    def forward(self, x, need_weights=False):
        """x: (B, T, C). Returns y (B, T, C) and, if need_weights, the attention weights (B, nh, T, T[+1])."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if self.rope:  # the extra key k' (attn_bias, cabias) stays unrotated: it has no position
            q, k = rotate(q), rotate(k)
        if need_weights or self.blocked_keys is not None:
            y, w = self.explicit_attention(q, k, v)
        else:
            y, w = self.fused_attention(q, k, v), None
        if self.variant == "ca_softmax":
            scale = self.hook_scale(2 * torch.sigmoid(self.scale_proj(x)))  # (B, T, nh)
            y = y * scale.transpose(1, 2).unsqueeze(-1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        if self.variant == "gated":
            y = y * torch.sigmoid(self.gate_proj(x))
        return self.resid_dropout(self.c_proj(y)), w

    def with_extra(self, k, v, k_extra, v_extra):
        """Prepend one always-visible key/value per head to k and v."""
        B = k.shape[0]
        return (torch.cat([k_extra.expand(B, -1, -1, -1).to(k.dtype), k], dim=2),
                torch.cat([v_extra.expand(B, -1, -1, -1).to(v.dtype), v], dim=2))

    def fused_attention(self, q, k, v):
        T = q.shape[2]
        p = self.attn_dropout if self.training else 0.0
        sdpa = F.scaled_dot_product_attention
        if self.variant in ("default", "ca_softmax", "gated"):
            return sdpa(q, k, v, is_causal=True, dropout_p=p)
        if self.variant == "vbias":
            return sdpa(q, k, v, is_causal=True, dropout_p=p) + self.v_extra
        if self.variant in ("attn_bias", "softmax1"):
            if self.variant == "attn_bias":
                ke, ve = self.with_extra(k, v, self.k_extra, self.v_extra)
            else:  # a zero key has logit 0 -> contributes exp(0) = 1 to the denominator, and a zero value
                zero = q.new_zeros(self.n_head, 1, self.head_dim)
                ke, ve = self.with_extra(k, v, zero, zero)
            return sdpa(q, ke, ve, attn_mask=extra_key_mask(T, q.device), dropout_p=p)
        if self.variant == "cabias":
            ke, ve = self.with_extra(k, torch.zeros_like(v), self.k_extra, self.v_extra)
            bias = sdpa(q, ke, ve, attn_mask=extra_key_mask(T, q.device), dropout_p=p)  # p'(q) v'
            return sdpa(q, k, v, is_causal=True, dropout_p=p) + bias
        # sigmoid and clipped softmax have no fused kernel: explicit weights
        return self.explicit_attention(q, k, v)[0]

    def explicit_attention(self, q, k, v):
        """The same attention computed with explicit weights (for analysis and the unfused variants).
        Returns (y, w); w holds the weights applied to the keys, with the extra key first where there is one."""
        T, hd = q.shape[2], self.head_dim
        visible = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        if self.blocked_keys is not None:  # (B, 1, T, T): a blocked token stays visible to itself only
            eye = torch.eye(T, dtype=torch.bool, device=q.device)
            visible = visible & (~self.blocked_keys.to(q.device)[:, None, None, :] | eye)
        drop = lambda w: F.dropout(w, self.attn_dropout, self.training)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        if self.variant == "sigmoid":
            w = torch.sigmoid(scores - math.log(T)).masked_fill(~visible, 0.0)
            return drop(w) @ v, w
        if self.variant in ("attn_bias", "softmax1", "cabias"):
            if self.variant == "softmax1":
                k_extra = v_extra = q.new_zeros(self.n_head, 1, hd)
            else:
                k_extra, v_extra = self.k_extra, self.v_extra
            s_extra = (q @ k_extra.transpose(-2, -1).to(q.dtype)) / math.sqrt(hd)  # (B, nh, T, 1)
            w = torch.softmax(torch.cat([s_extra, scores.masked_fill(~visible, float("-inf"))], dim=-1), dim=-1)
            if self.variant == "cabias":  # A V + p' v'; report the plain softmax A as the attention to tokens
                a = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
                return drop(a) @ v + drop(w)[..., :1] * v_extra.to(v.dtype), a
            return drop(w) @ torch.cat([v_extra.expand(q.shape[0], -1, -1, -1).to(v.dtype), v], dim=2), w
        w = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        if self.variant == "clipped":
            w = torch.clamp((self.clip_zeta - self.clip_gamma) * w + self.clip_gamma, 0.0, 1.0)
        y = drop(w) @ v
        if self.variant == "vbias":
            y = y + self.v_extra
        return y, w


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, need_weights=False):
        a, w = self.attn(self.ln_1(x), need_weights=need_weights)  # by keyword: capture hooks may set it
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, w


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for block in self.transformer.h:
            attn = block.attn
            if hasattr(attn, "k_extra"):
                torch.nn.init.normal_(attn.k_extra, std=0.02)
            if hasattr(attn, "v_extra"):
                torch.nn.init.normal_(attn.v_extra, std=0.02)
            if hasattr(attn, "scale_proj"):
                torch.nn.init.zeros_(attn.scale_proj.weight)
                torch.nn.init.zeros_(attn.scale_proj.bias)
            if hasattr(attn, "gate_proj"):
                torch.nn.init.zeros_(attn.gate_proj.weight)
                torch.nn.init.constant_(attn.gate_proj.bias, 3.0)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.transformer.wpe is not None:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, return_hidden=False, need_weights=False):
        """idx (B, T) token ids. Returns (logits, loss) or, with return_hidden / need_weights, a dict that also
        holds 'hidden' (list of block outputs, each (B, T, C)) and 'attn' (list of per-layer weights)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))
        x = self.transformer.drop(x)
        hidden, weights = [], []
        for block in self.transformer.h:
            x, w = block(x, need_weights)
            if return_hidden:
                hidden.append(x)
            if need_weights:
                weights.append(w)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None  # only the last position at inference
        if return_hidden or need_weights:
            return dict(logits=logits, loss=loss, hidden=hidden, attn=weights)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, kind="adamw", momentum=0.9):
        """AdamW (or SGD with momentum, kind='sgd'); 2-D weights (matmuls, embeddings) decay, everything else
        (norms, biases, extra k'/v') does not."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() == 2]
        no_decay = [p for p in params if p.dim() != 2]
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        if kind == "sgd":
            return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum)
        fused = device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx
