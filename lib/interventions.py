"""Interventions on systematic outliers (Sun et al.'s massive-activation experiment, made generic) and the
outlier metrics of Bondarenko et al. 2023, through forward hooks on the decoder blocks.

Detection is lib.analysis' rule (`ACTIVATION_RULE`, lib.outliers.activation_outliers(rule="token")): an
entry h[t, c] of a block output is an outlier when |h| > 100, > 1000 x the median |h| of the tensor and > 2 x
the channel's median |h| over tokens. Every function takes a `Rule` to change those constants. `outlier_mask` returns every flagged entry (those functions list at
most 64).
- `outlier_layers`: over calibration sequences, a block is an outlier layer when its output has outliers
  in at least half of them (the figure scripts' rule). `first_outlier_layer` is the first of them;
  `dominant_outlier_layer` the first where the channel of the largest outlier is flagged (the two differ
  when smaller outliers in another channel come first).
- `calibration_means`: per channel, the mean signed value of the outlier entries of that block over the
  calibration sequences.
- `edit_outliers(blocks, layer, mode)`: at that block's output the outliers detected in each evaluated window
  (on the window's own, unedited activations) are set to zero or to their channel's calibration mean;
  nothing else is touched. An outlier in a channel never flagged during calibration has no mean: it is
  left as it is and counted.
- `mask_sink_keys(model, layer)`: in every block after `layer`, no query may attend to the outlier tokens
  detected at `layer` in that window (each token still attends to itself, so the first row keeps a key).
  Hugging Face models (families on transformers' attention registry): a registered attention function edits
  the eager (additive) mask, then runs the family's eager attention. gpt-2/ models: the later attention
  modules get the tokens as `blocked_keys` (always-visible extra keys k' stay visible).
"""
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lib import analysis, outliers
from monkey_patch.capture import eager_attention, model_configs, register_attention

MASK_ATTN_NAME = "systematic_outliers_sink_mask"


@dataclass(frozen=True)
class Rule:
    """The activation-outlier rule with its constants; the defaults are lib.analysis' (`massive_entries`).
    A small model may need a lower `factor` (the gpt-2 hypothesis test calls top-1/median >= 100 outliers)."""
    factor: float = analysis.MASSIVE_FACTOR
    min_abs: float = analysis.MASSIVE_ABS
    token_factor: float = analysis.TOKEN_FACTOR

    def __str__(self):
        return analysis.activation_rule(self.factor, self.min_abs, self.token_factor)


DEFAULT_RULE = Rule()


def outlier_mask(h: torch.Tensor, rule: Rule = DEFAULT_RULE) -> torch.Tensor:
    """Boolean [tokens, channels]: every entry the rule flags."""
    return outliers.outlier_mask(h, "token", rule.factor, rule.min_abs, rule.token_factor)[0]


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_hidden(output, h):
    if isinstance(output, tuple):
        return (h,) + output[1:]
    if isinstance(output, list):
        return [h] + output[1:]
    return h


@contextmanager
def block_output_hooks(blocks, fn, layers=None):
    """fn(layer, output) on the output of each block in `layers` (all by default); a non-None result
    replaces the output. Hooks are removed on exit."""
    handles = []
    try:
        for i in (range(len(blocks)) if layers is None else layers):
            handles.append(blocks[i].register_forward_hook(lambda m, args, out, i=i: fn(i, out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def scan_outliers(blocks, run, windows, rule: Rule = DEFAULT_RULE):
    """Per window and block: the outlier mask of the block output, as {"masks": [[bool [T, C]] per layer]
    per window, "values": the block outputs at the outliers}. `run(ids)` runs the model on [1, T] ids."""
    per_window = []

    def record(layer, output):
        h = _hidden(output)[0]
        mask = outlier_mask(h, rule)
        per_window[-1].append((mask, h.detach().float()[mask]))

    with block_output_hooks(blocks, record):
        for ids in windows:
            per_window.append([])
            run(ids.unsqueeze(0))
    return per_window


def outlier_layers(scan) -> list[int]:
    """0-based blocks whose output has outliers in at least half of the scanned windows."""
    n_windows, n_layers = len(scan), len(scan[0])
    flagged = [sum(bool(scan[w][layer][0].any()) for w in range(n_windows)) for layer in range(n_layers)]
    return [layer for layer in range(n_layers) if flagged[layer] > 0 and flagged[layer] * 2 >= n_windows]


def first_outlier_layer(scan) -> int | None:
    """0-based first outlier layer (see `outlier_layers`), or None."""
    layers = outlier_layers(scan)
    return layers[0] if layers else None


def dominant_channel(scan) -> int | None:
    """The channel holding the largest |outlier| over every layer and window, or None."""
    best, channel = 0.0, None
    for per_layer in scan:
        for mask, values in per_layer:
            if values.numel() and values.abs().max().item() > best:
                best = values.abs().max().item()
                channel = torch.nonzero(mask)[values.abs().argmax()][1].item()
    return channel


def dominant_outlier_layer(scan) -> int | None:
    """0-based first outlier layer where `dominant_channel` is flagged in at least half of the windows: where
    the largest (systematic) outliers appear, which can come after a layer of smaller outliers (Gemma 3 270M:
    channel 400 on commas at layer 1, the massive channel 163 from layer 4 on)."""
    channel = dominant_channel(scan)
    for layer in outlier_layers(scan):
        flagged = sum(bool(per_layer[layer][0][:, channel].any()) for per_layer in scan)
        if flagged * 2 >= len(scan):
            return layer
    return None


def calibration_means(scan, layer: int) -> dict[int, float]:
    """{channel: mean signed value of the outliers of `layer` in that channel over the scanned windows}."""
    totals: dict[int, list] = {}
    for per_layer in scan:
        mask, values = per_layer[layer]
        channels = torch.nonzero(mask)[:, 1].tolist()
        for channel, value in zip(channels, values.tolist()):
            entry = totals.setdefault(channel, [0.0, 0])
            entry[0] += value
            entry[1] += 1
    return {c: total / count for c, (total, count) in sorted(totals.items())}


class OutlierEdit:
    """Forward hook state for `edit_outliers`: counts what it changed, over all windows."""

    def __init__(self, mode: str, means: dict[int, float] | None = None, rule: Rule = DEFAULT_RULE):
        if mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
        if mode == "mean" and not means:
            raise ValueError("mode 'mean' needs calibration means")
        self.mode, self.means, self.rule = mode, means or {}, rule
        self.edited = 0
        self.without_mean = 0
        self.tokens: list[list[int]] = []  # per sequence (batch row) seen: the outlier tokens

    def __call__(self, layer, output):
        h = _hidden(output).clone()
        for b in range(h.shape[0]):
            mask = outlier_mask(h[b], self.rule)
            self.tokens.append(torch.nonzero(mask.any(dim=1)).flatten().tolist())
            for t, c in torch.nonzero(mask).tolist():
                if self.mode == "zero":
                    h[b, t, c] = 0
                elif c in self.means:
                    h[b, t, c] = self.means[c]
                else:
                    self.without_mean += 1
                    continue
                self.edited += 1
        return _replace_hidden(output, h)


@contextmanager
def edit_outliers(blocks, layer: int, mode: str, means=None, rule: Rule = DEFAULT_RULE):
    edit = OutlierEdit(mode, means, rule)
    with block_output_hooks(blocks, edit, layers=[layer]):
        yield edit


# --- attention-side intervention: mask the sink keys ------------------------------------------------------

_MASKING: dict = {}  # attention module -> SinkMask active on it


class SinkMask:
    """The keys to mask in the current forward. With `control`, as many keys as there are outlier tokens are
    drawn at random among the other tokens instead (a control: what masking that many keys costs anyway)."""

    def __init__(self, layer: int, control: bool = False, seed: int = 0, rule: Rule = DEFAULT_RULE):
        self.layer, self.control, self.rule = layer, control, rule
        self.generator = torch.Generator().manual_seed(seed)
        self.keys: list[list[int]] = []  # per batch row of the current forward
        self.masked = 0  # (window, key) pairs masked, summed over windows

    def detect(self, layer, output):
        h = _hidden(output)
        self.keys = [torch.nonzero(outlier_mask(h[b], self.rule).any(dim=1)).flatten().tolist() for b in range(h.shape[0])]
        if self.control:
            self.keys = [self._random_others(keys, h.shape[1]) for keys in self.keys]
        self.masked += sum(len(k) for k in self.keys)

    def _random_others(self, keys, n_tokens):
        others = torch.tensor([t for t in range(n_tokens) if t not in set(keys)], dtype=torch.long)
        picked = torch.randperm(len(others), generator=self.generator)[:len(keys)]
        return sorted(others[picked].tolist())

    def apply(self, attention_mask, query):
        q_len = query.shape[2]
        mask = attention_mask.clone()
        blocked = torch.finfo(mask.dtype).min
        for b, keys in enumerate(self.keys):
            for k in keys:
                own = mask[b, :, k, k].clone() if k < q_len else None
                mask[b, :, :, k] = blocked
                if own is not None:
                    mask[b, :, k, k] = own
        return mask


def _masked_attention(module, query, key, value, attention_mask, **kwargs):
    state = _MASKING.get(module)
    if state is not None and attention_mask is not None and any(state.keys):
        attention_mask = state.apply(attention_mask, query)
    return eager_attention(module)(module, query, key, value, attention_mask, **kwargs)


def _gpt2_blocks(model):
    """The blocks of a gpt-2/ package GPT (its attention modules take `blocked_keys`), else None."""
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    return blocks if blocks is not None and len(blocks) and hasattr(blocks[0].attn, "blocked_keys") else None


def supports_sink_mask(model) -> bool:
    if _gpt2_blocks(model) is not None:
        return True
    from monkey_patch import ModelView
    view = ModelView(model)
    return bool(view.family.registry) and getattr(sys.modules[type(view.attn(0)).__module__],
                                                  "eager_attention_forward", None) is not None


@contextmanager
def mask_sink_keys(model, layer: int, control: bool = False, seed: int = 0, rule: Rule = DEFAULT_RULE):
    """Within the context, blocks after `layer` cannot attend to the outlier tokens found at `layer` (with
    `control`: to as many other tokens, drawn at random with `seed`)."""
    if _gpt2_blocks(model) is not None:
        with _mask_gpt2_keys(_gpt2_blocks(model), SinkMask(layer, control, seed, rule)) as state:
            yield state
        return
    from monkey_patch import ModelView
    view = ModelView(model)
    if not supports_sink_mask(model):
        raise ValueError(f"{view.model_type}: sink masking needs a family on transformers' attention registry")
    # the eager mask function builds the additive float mask (sliding windows included) that SinkMask edits
    register_attention(MASK_ATTN_NAME, _masked_attention)
    state = SinkMask(layer, control, seed, rule)
    saved = [(c, c._attn_implementation) for c in model_configs(model)]
    try:
        for i in range(layer + 1, view.num_layers):
            _MASKING[view.attn(i)] = state
        for c, _ in saved:
            c._attn_implementation = MASK_ATTN_NAME
        with block_output_hooks(view.layers, state.detect, layers=[layer]):
            yield state
    finally:
        for c, implementation in saved:
            c._attn_implementation = implementation
        for i in range(view.num_layers):
            _MASKING.pop(view.attn(i), None)


@contextmanager
def _mask_gpt2_keys(blocks, state: SinkMask):
    def detect_and_block(layer, output):
        state.detect(layer, output)
        h = _hidden(output)
        blocked = torch.zeros(h.shape[:2], dtype=torch.bool, device=h.device)
        for b, keys in enumerate(state.keys):
            blocked[b, keys] = True
        for block in blocks[layer + 1:]:
            block.attn.blocked_keys = blocked

    try:
        with block_output_hooks(blocks, detect_and_block, layers=[state.layer]):
            yield state
    finally:
        for block in blocks:
            block.attn.blocked_keys = None


# --- Bondarenko et al.'s outlier metrics -------------------------------------------------------------------

class OutlierMetrics:
    """Per block output, over every window it sees: max infinity norm, and kurtosis over channels averaged
    over tokens (lib.outliers.kurtosis, non-excess: a Gaussian gives 3)."""

    def __init__(self, n_layers: int):
        self.inf_norm = [0.0] * n_layers
        self.kurtosis_sum = [0.0] * n_layers
        self.tokens = [0] * n_layers

    def __call__(self, layer, output):
        h = _hidden(output).detach()
        flat = h.reshape(-1, h.shape[-1])
        self.inf_norm[layer] = max(self.inf_norm[layer], outliers.max_inf_norm(flat))
        self.kurtosis_sum[layer] += outliers.kurtosis(flat, dim=-1).double().sum().item()
        self.tokens[layer] += flat.shape[0]

    def summary(self) -> dict:
        kurt = [s / n if n else 0.0 for s, n in zip(self.kurtosis_sum, self.tokens)]
        return {
            "max_inf_norm": max(self.inf_norm),
            "avg_kurtosis": sum(kurt) / len(kurt),
            "per_layer_inf_norm": self.inf_norm,
            "per_layer_kurtosis": kurt,
        }
