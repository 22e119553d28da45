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
import functools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F


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
    norm: str = "layernorm"  # one of NORMS

    def __post_init__(self):
        if self.attention not in VARIANTS:
            raise ConfigError(f"unknown attention variant {self.attention!r}; choose one of {', '.join(VARIANTS)}")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
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


# --- positions ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Positions:
    table: bool  # a learned vector per position added to the token embedding (transformer.wpe)
    rotary: bool  # q and k rotated by position in every layer


POSITIONS = {"learned": Positions(table=True, rotary=False), "rope": Positions(table=False, rotary=True),
             "none": Positions(table=False, rotary=False)}


@functools.lru_cache(maxsize=16)
def rotary_angles(T, hd, device, dtype, base):
    """cos and sin (T, hd/2) of the angles t * base^(-2i/hd); cached, since every layer and step needs the same
    (made outside inference mode, so that a first call under it does not poison later training steps)."""
    with torch.inference_mode(False):
        freq = base ** (-torch.arange(0, hd // 2, device=device, dtype=torch.float32) * 2 / hd)
        angle = torch.arange(T, device=device, dtype=torch.float32)[:, None] * freq
        return angle.cos().to(dtype), angle.sin().to(dtype)


def rotate(x, base=10000.0):
    """Rotary position embedding of x (B, nh, T, hd): channel pairs (i, i + hd/2) turned by angle t * base^(-2i/hd)."""
    T, hd = x.shape[-2], x.shape[-1]
    cos, sin = rotary_angles(T, hd, x.device, x.dtype, base)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# --- Muon on the CPU ---------------------------------------------------------------------------------------------
# torch.optim.Muon orthogonalises each update with a Newton-Schulz iteration computed in bfloat16, which the CPUs
# this project trains on emulate about 7x slower than float32 matmuls (at these sizes Muon would cost 10x the model's
# own step). On a CPU the same iteration (same coefficients and steps) runs in float32 instead, which is also the
# more exact of the two; on a GPU torch's own bfloat16 code runs unchanged.

def newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """The quintic Newton-Schulz iteration of torch.optim.Muon, in float32: X <- a X + (b G + c G G) X with
    G = X X^T, starting from the gradient scaled to Frobenius norm 1, on the wide orientation of the matrix."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(grad.dtype)


def _use_float32_newton_schulz_on_cpu():
    import torch.optim._muon as muon
    original = muon._zeropower_via_newtonschulz
    if getattr(original, "float32_on_cpu", False):
        return

    def zeropower(grad, ns_coefficients, ns_steps, eps):
        if grad.device.type == "cpu":
            return newton_schulz_float32(grad, ns_coefficients, ns_steps, eps)
        return original(grad, ns_coefficients, ns_steps, eps)
    zeropower.float32_on_cpu = True
    muon._zeropower_via_newtonschulz = zeropower


# --- normalisation ---------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) times a learned gain: one per channel (`single=False`, as LLaMA's RMSNorm), or one
    scalar for the whole vector (`single=True`: the single-scale norm, which cannot single out a channel)."""

    def __init__(self, ndim, single=False, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1 if single else ndim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


NORMS = {
    "layernorm": lambda config: nn.LayerNorm(config.n_embd, bias=config.bias),  # GPT-2's: per-channel gain
    "rmsnorm": lambda config: RMSNorm(config.n_embd),
    "rmsnorm_single": lambda config: RMSNorm(config.n_embd, single=True),
}


# --- attention: softmax, then one subclass per variant ----------------------------------------------------------

def sdpa_with_extra_key(q, k, v, dropout_p):
    """SDPA of q (B, nh, T, hd) over k, v (B, nh, T+1, hd) whose position 0 is an extra key every query sees, the
    rest causal. A causal pass over T+1 queries [0; q] gives query t (row t+1) exactly k' and tokens 0..t; row 0
    is dropped. A plain causal flag, unlike an explicit (T, T+1) mask, lets SDPA pick its flash kernels."""
    q = F.pad(q, (0, 0, 1, 0))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)[:, :, 1:]


class CausalSelfAttention(nn.Module):
    """The paper's `default`: softmax(Q K^T / sqrt(d)) V. A variant subclasses it and overrides what it changes:
    `fused` (the SDPA path; None where there is no kernel), `explicit` (the same computed step by step, returning
    the weights too), `combine` (heads -> channels) and `init_extra` (its own parameters' initial values).
    `flash` picks the path, as in nanoGPT: True runs `fused` (training), False `explicit`. On the explicit path the
    scores Q K^T / sqrt(d) of the tokens (B, nh, T, T; -inf after the query) pass through `hook_scores` and the
    weights (B, nh, T, T), or (B, nh, T, T + 1) with an extra key k' in column 0 where `extra_key_first`, through
    `hook_pattern`: identity modules, where forward hooks read them and a hook's return value replaces them."""
    extra_key_first = False  # explicit weights hold an always-visible extra key k' in column 0

    def __init__(self, config):
        super().__init__()
        self.variant = config.attention
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = POSITIONS[config.pos_emb].rotary
        self.flash = self.fused is not None
        self.hook_scores = nn.Identity()
        self.hook_pattern = nn.Identity()

    def forward(self, x):
        """x: (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if self.rotary:  # an extra key k' stays unrotated: it has no position
            q, k = rotate(q), rotate(k)
        y = self.fused(q, k, v) if self.flash else self.explicit(q, k, v)[0]
        return self.resid_dropout(self.c_proj(self.combine(y, x)))

    def dropout_p(self):
        return self.attn_dropout if self.training else 0.0

    def scores(self, q, k):
        return (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)

    def causal_scores(self, q, k):
        """The tokens' scores (B, nh, T, T), -inf where the key comes after the query, through hook_scores."""
        T = q.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return self.hook_scores(self.scores(q, k).masked_fill(~causal, float("-inf")))

    def fused(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout_p())

    def explicit(self, q, k, v):
        """(y, weights) with the weights computed explicitly (for analysis and the unfused variants)."""
        w = self.hook_pattern(torch.softmax(self.causal_scores(q, k), dim=-1))
        return F.dropout(w, self.dropout_p(), self.training) @ v, w

    def combine(self, y, x):
        """Per-head outputs (B, nh, T, hd) -> (B, T, C), before the output projection."""
        B, _, T, _ = y.shape
        return y.transpose(1, 2).contiguous().view(B, T, self.n_embd)

    def init_extra(self):
        pass


class VBias(CausalSelfAttention):
    """A V + v' (v' learned, one per head)."""

    def __init__(self, config):
        super().__init__(config)
        self.v_extra = nn.Parameter(torch.zeros(self.n_head, 1, self.head_dim))

    def fused(self, q, k, v):
        return super().fused(q, k, v) + self.v_extra

    def explicit(self, q, k, v):
        y, w = super().explicit(q, k, v)
        return y + self.v_extra, w

    def init_extra(self):
        torch.nn.init.normal_(self.v_extra, std=0.02)


class AttnBias(CausalSelfAttention):
    """softmax(Q [k'; K]^T / sqrt(d)) [v'; V]: an extra key/value every query sees."""
    extra_key_first = True
    learned_extra = True  # k' and v' are parameters

    def __init__(self, config):
        super().__init__(config)
        if self.learned_extra:
            self.k_extra = nn.Parameter(torch.zeros(self.n_head, 1, self.head_dim))
            self.v_extra = nn.Parameter(torch.zeros(self.n_head, 1, self.head_dim))

    def extra(self, q):
        """(k', v'), each (nh, 1, hd), in q's dtype."""
        return self.k_extra.to(q.dtype), self.v_extra.to(q.dtype)

    def with_extra(self, q, k, v):
        k_extra, v_extra = self.extra(q)
        B = k.shape[0]
        return torch.cat([k_extra.expand(B, -1, -1, -1), k], dim=2), torch.cat([v_extra.expand(B, -1, -1, -1), v], dim=2)

    def fused(self, q, k, v):
        return sdpa_with_extra_key(q, *self.with_extra(q, k, v), self.dropout_p())

    def extra_weights(self, q, tokens):
        """softmax over [k'; the tokens' scores]: (B, nh, T, T + 1), k' in column 0."""
        return torch.softmax(torch.cat([self.scores(q, self.extra(q)[0]), tokens], dim=-1), dim=-1)

    def explicit(self, q, k, v):
        w = self.hook_pattern(self.extra_weights(q, self.causal_scores(q, k)))
        v = torch.cat([self.extra(q)[1].expand(q.shape[0], -1, -1, -1), v], dim=2)
        return F.dropout(w, self.dropout_p(), self.training) @ v, w

    def init_extra(self):
        if self.learned_extra:
            torch.nn.init.normal_(self.k_extra, std=0.02)
            torch.nn.init.normal_(self.v_extra, std=0.02)


class Softmax1(AttnBias):
    """exp(s_i) / (1 + sum_j exp(s_j)) V: attn_bias with k' = v' = 0 (a zero key adds exp(0) = 1 to the
    denominator and nothing to the output); no parameters of its own."""
    learned_extra = False

    def extra(self, q):
        zero = q.new_zeros(self.n_head, 1, self.head_dim)
        return zero, zero


class CaBias(AttnBias):
    """A V + softmax(Q [k'; K]^T / sqrt(d)) [v'; 0]; its weights are the plain softmax A on the tokens."""
    extra_key_first = False

    def fused(self, q, k, v):
        p = self.dropout_p()
        bias = sdpa_with_extra_key(q, *self.with_extra(q, k, torch.zeros_like(v)), p)  # p'(q) v'
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p) + bias

    def explicit(self, q, k, v):
        tokens = self.causal_scores(q, k)
        a = self.hook_pattern(torch.softmax(tokens, dim=-1))
        w = self.extra_weights(q, tokens)
        p = self.dropout_p()
        y = F.dropout(a, p, self.training) @ v
        return y + F.dropout(w, p, self.training)[..., :1] * self.extra(q)[1], a


class CaSoftmax(CausalSelfAttention):
    """S(x) * A V with S(x) = 2 sigmoid(Linear(x)), one scale per token and head (zero init: S = 1)."""

    def __init__(self, config):
        super().__init__(config)
        self.scale_proj = nn.Linear(config.n_embd, config.n_head, bias=True)
        self.hook_scale = nn.Identity()  # S(x) (B, T, nh) passes through here, for capture hooks

    def combine(self, y, x):
        scale = self.hook_scale(2 * torch.sigmoid(self.scale_proj(x)))  # (B, T, nh)
        return super().combine(y * scale.transpose(1, 2).unsqueeze(-1), x)

    def init_extra(self):
        torch.nn.init.zeros_(self.scale_proj.weight)
        torch.nn.init.zeros_(self.scale_proj.bias)


class Sigmoid(CausalSelfAttention):
    """sigmoid(Q K^T / sqrt(d) - log T) V, causal (T = sequence length); no fused kernel."""
    fused = None

    def explicit(self, q, k, v):
        w = self.hook_pattern(torch.sigmoid(self.causal_scores(q, k) - math.log(q.shape[2])))  # -inf -> 0
        return F.dropout(w, self.dropout_p(), self.training) @ v, w


class Gated(CausalSelfAttention):
    """(A V) * sigmoid(Linear(x)), an elementwise output gate (Qiu et al. 2025, G1); init gate ~0.95."""

    def __init__(self, config):
        super().__init__(config)
        self.gate_proj = nn.Linear(config.n_embd, config.n_embd, bias=True)

    def combine(self, y, x):
        return super().combine(y, x) * torch.sigmoid(self.gate_proj(x))

    def init_extra(self):
        torch.nn.init.zeros_(self.gate_proj.weight)
        torch.nn.init.constant_(self.gate_proj.bias, 3.0)


class Clipped(CausalSelfAttention):
    """clip((zeta - gamma) A + gamma, 0, 1) V (clipped softmax, Bondarenko et al. 2023); no fused kernel."""
    fused = None

    def __init__(self, config):
        super().__init__(config)
        self.clip_gamma, self.clip_zeta = config.clip_gamma, config.clip_zeta

    def explicit(self, q, k, v):
        a = torch.softmax(self.causal_scores(q, k), dim=-1)
        w = self.hook_pattern(torch.clamp((self.clip_zeta - self.clip_gamma) * a + self.clip_gamma, 0.0, 1.0))
        return F.dropout(w, self.dropout_p(), self.training) @ v, w


ATTENTION = {"default": CausalSelfAttention, "vbias": VBias, "cabias": CaBias, "attn_bias": AttnBias,
             "ca_softmax": CaSoftmax, "sigmoid": Sigmoid, "gated": Gated, "clipped": Clipped, "softmax1": Softmax1}
VARIANTS = tuple(ATTENTION)


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
        self.ln_1 = NORMS[config.norm](config)
        self.attn = ATTENTION[config.attention](config)
        self.ln_2 = NORMS[config.norm](config)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd) if POSITIONS[config.pos_emb].table else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=NORMS[config.norm](config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for block in self.transformer.h:
            block.attn.init_extra()

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

    def forward(self, idx, targets=None):
        """idx (B, T) token ids -> (logits, loss): given targets, the logits (B, T, vocab) and the mean
        cross-entropy over targets other than -1; else the last position's logits (B, 1, vocab) and None."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None  # only the last position at inference
        return logits, loss

    def hidden_matrices(self):
        """The 2-D weights inside the blocks (attention and MLP projections, the variants' own linear maps): what
        Muon orthogonalises. The embedding (tied to the output head) and every 1-D or extra parameter are not."""
        return [p for p in self.transformer.h.parameters() if p.requires_grad and p.dim() == 2]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, kind="adamw", momentum=0.9,
                             muon_lr=None):
        """The optimizer(s) of one training run. 2-D weights (matmuls, embeddings) decay, everything else (norms,
        biases, extra k'/v') does not.
        adamw: AdamW on everything. sgd: SGD with momentum on everything. muon: torch.optim.Muon (at muon_lr, with
        Moonshot's RMS matching, so that its rate and decoupled weight decay mean what AdamW's do) on
        hidden_matrices(), AdamW (at learning_rate) on the rest, as Muon's documentation prescribes. Returns a
        list of torch optimizers, each with an `initial_lr` in every param group (the rate the schedule scales)."""
        params = [p for p in self.parameters() if p.requires_grad]
        muon = {id(p) for p in self.hidden_matrices()} if kind == "muon" else set()
        decay = [p for p in params if p.dim() == 2 and id(p) not in muon]
        no_decay = [p for p in params if p.dim() != 2]
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        if kind == "sgd":
            opts = [torch.optim.SGD(groups, lr=learning_rate, momentum=momentum)]
        else:
            opts = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")]
        if kind == "muon":
            _use_float32_newton_schulz_on_cpu()
            opts.append(torch.optim.Muon([p for p in params if id(p) in muon], lr=muon_lr, weight_decay=weight_decay,
                                         adjust_lr_fn="match_rms_adamw"))
        for opt in opts:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return opts

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
