"""Interventions on systematic outliers (Sun et al.'s massive-activation experiment, made generic) and the
outlier metrics of Bondarenko et al. 2023, through monkey_patch's named points (Edit, Capture, AttentionEdit).

Detection is lib.analysis' rule (`ACTIVATION_RULE`, lib.outliers.activation_outliers(rule="token")): an
entry h[t, c] of a block output is an outlier when |h| > 100, > 1000 x the median |h| of the tensor and > 2 x
the channel's median |h| over tokens; a `Rule` changes those constants. `outlier_mask` returns every flagged
entry (those functions list at most 64).
- `outlier_layers`: over calibration sequences, a block is an outlier layer when its output has outliers
  in at least half of them (the figure scripts' rule). `first_outlier_layer` is the first of them;
  `dominant_outlier_layer` the first where the channel of the largest outlier is flagged (the two differ
  when smaller outliers in another channel come first).
- `calibration_means`: per channel, the mean signed value of the outlier entries of that block over the
  calibration sequences.
- `edit_outliers(model, layer, mode)`: at that block's output the outliers detected in each evaluated window
  (on the window's own, unedited activations) are set to zero or to their channel's calibration mean;
  nothing else is touched. An outlier in a channel never flagged during calibration has no mean: it is
  left as it is and counted. Mode `zero_random` is their control: as many entries of the same block output,
  drawn at random among the unflagged ones, set to zero.
- `mask_sink_keys(model, layer)`: in every block after `layer`, no query may attend to the outlier tokens
  detected at `layer` in that window (each token still attends to itself, so the first row keeps a key).
  Hugging Face models (families on transformers' attention registry): a registered attention function edits
  the eager (additive) mask, then runs the family's eager attention. gpt-2/ models (seen through
  lib.gpt2_checkpoints.CheckpointLM): the same edit sets the masked keys' scores to -inf on the explicit path of
  the later attention modules (monkey_patch.hook_points; always-visible extra keys k' stay visible).
- `mask_attention_sinks(model, run, logits_fn)`: the sink itself, found from attention rather than from
  activations: in each window, every layer's attention-outlier keys (lib.analysis.ATTENTION_RULE, from an
  unmasked forward) are masked in that layer. Also for models whose sinks carry no activation outlier.
Both have a control that masks as many other tokens, drawn at random.
Every intervention object says what it did: `report()` (JSON-ready: layers, keys or entries, per sequence or
forward, and a summary in words; layers 0-based, as in Capture) and str() (the summary).
"""
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lib import analysis, outliers, reducers
from lib.gpt2_checkpoints import as_lm
from monkey_patch import AttentionEdit, Capture, CaptureError, Edit, ModelView, edit_attention, paused
from monkey_patch.routing import hide


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
    return outliers.activation_outlier_mask(h, "token", rule.factor, rule.min_abs, rule.token_factor)



@torch.no_grad()
def scan_outliers(model, run, windows, rule: Rule = DEFAULT_RULE):
    """Per window and block: (the outlier mask of the block output, bool [T, C]; the block output's values there),
    as [[(mask, values)] per layer] per window. `run(ids)` runs `model` on [1, T] ids."""
    model = as_lm(model)

    def record(point, layer, h):
        mask = outlier_mask(h[0], rule)
        return mask, h[0].float()[mask]

    with Capture(model, "resid_post", reduce=record) as cap:
        for ids in windows:
            run(ids.unsqueeze(0))
    layers = range(ModelView(model).num_layers)
    return [[cap.reduced("resid_post", layer)[w] for layer in layers] for w in range(len(windows))]


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


LAYERS_ARE = "0-based"  # as Capture and every output count layers (lib/layer_numbering.py)
SHOWN = 8  # sequences or forwards a summary names one by one


def _span(layers) -> str:
    """Consecutive layers as first-last."""
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


class OutlierEdit:
    """The edit function of `edit_outliers` (`fn(h, layer)`, monkey_patch.Edit's form) and what it changed, per
    sequence seen (`entries`: [token, channel] of each entry set; `tokens`: the outlier tokens) and in total
    (`edited`, `without_mean`); `report()` says it."""

    def __init__(self, mode: str, means: dict[int, float] | None = None, rule: Rule = DEFAULT_RULE, seed: int = 0):
        if mode not in ("zero", "mean", "zero_random"):
            raise ValueError(f"mode must be 'zero', 'mean' or 'zero_random', got {mode!r}")
        if mode == "mean" and not means:
            raise ValueError("mode 'mean' needs calibration means")
        self.mode, self.means, self.rule = mode, means or {}, rule
        self.layer: int | None = None  # the block whose output it edits (0-based)
        self.edited = 0
        self.without_mean = 0
        self.tokens: list[list[int]] = []  # per sequence (batch row) seen: the outlier tokens
        self.entries: list[list[list[int]]] = []  # per sequence seen: [token, channel] of every entry changed
        self.gen = torch.Generator().manual_seed(seed)  # zero_random: which entries

    def __call__(self, h, layer):
        self.layer = layer
        h = h.clone()
        for b in range(h.shape[0]):
            mask = outlier_mask(h[b], self.rule)
            self.tokens.append(torch.nonzero(mask.any(dim=1)).flatten().tolist())
            changed = []
            if self.mode == "zero_random":  # the control: as many entries, drawn among the unflagged ones
                others = torch.nonzero(~mask.flatten().cpu()).flatten()
                pick = others[torch.randperm(len(others), generator=self.gen)[: int(mask.sum())]]
                h[b].view(-1)[pick.to(h.device)] = 0
                self.edited += len(pick)
                self.entries.append([list(divmod(int(i), h.shape[-1])) for i in pick])
                continue
            for t, c in torch.nonzero(mask).tolist():
                if self.mode == "zero":
                    h[b, t, c] = 0
                elif c in self.means:
                    h[b, t, c] = self.means[c]
                else:
                    self.without_mean += 1
                    continue
                self.edited += 1
                changed.append([t, c])
            self.entries.append(changed)
        return h

    def report(self) -> dict:
        """What the edit did, JSON-ready: the layer, the mode and rule, per sequence seen the outlier tokens and the
        [token, channel] entries it set, the totals, and a summary in words."""
        what = {"zero": "set to zero", "mean": "set to their channel's calibration mean",
                "zero_random": "set to zero at random among the entries the rule does not flag (the control)"}
        channels = sorted({c for per in self.entries for _, c in per})
        summary = [f"edit_outliers ({self.mode}) at layer {self.layer} ({LAYERS_ARE}): {self.edited} entries "
                   f"{what[self.mode]} in {len(self.entries)} sequence(s), channels {channels}"]
        summary += [f"sequence {i}: outlier tokens {tokens}, entries set {entries}"
                    for i, (tokens, entries) in enumerate(zip(self.tokens[:SHOWN], self.entries))]
        if self.without_mean:
            summary.append(f"{self.without_mean} outlier(s) left as they were: their channel has no calibration mean")
        return {"intervention": "edit_outliers", "mode": self.mode, "layer": self.layer, "layers_are": LAYERS_ARE,
                "rule": str(self.rule), "sequences": len(self.entries), "edited": self.edited,
                "without_mean": self.without_mean, "outlier_tokens": self.tokens, "entries": self.entries,
                "summary": summary}

    def __str__(self) -> str:
        return "\n".join(self.report()["summary"])


@contextmanager
def edit_outliers(model, layer: int, mode: str, means=None, rule: Rule = DEFAULT_RULE, seed: int = 0):
    """Within the context, the activation outliers of decoder layer `layer`'s output (0-based, as in Capture and
    every output) are edited in every forward: `mode` "zero" sets them to 0, "mean" to their channel's
    calibration mean (`means`, {channel: value}, from `calibration_means`), "zero_random" zeroes as many other
    entries of the same output (the control). Outliers are detected per sequence on the unedited output with
    `rule`. `model` is any supported family or a gpt-2/ GPT. Yields the OutlierEdit: `edited` (entries changed),
    `tokens` (the outlier tokens of each sequence seen), `without_mean` (outliers in a channel that has no
    calibration mean, left as they were)."""
    model = as_lm(model)
    n_layers = ModelView(model).num_layers
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
    edit = OutlierEdit(mode, means, rule, seed)
    with Edit(model, "resid_post", edit, layers=[layer]):
        yield edit


# --- attention-side interventions: mask the sink keys ----------------------------------------------------


def key_mask(rows, batch: int, n_tokens: int, device) -> torch.Tensor | None:
    """Bool [batch, tokens], True at the token positions rows[b] lists (one row: the same for every sequence); None
    when no row lists any."""
    if not rows or not any(rows):
        return None
    if len(rows) == 1:
        rows = rows * batch
    out = torch.zeros(batch, n_tokens, dtype=torch.bool, device=device)
    for b, keys in enumerate(rows):
        out[b, keys] = True
    return out


def layer_groups(keys: dict) -> list[dict]:
    """{layer: per sequence the token positions} -> [{"layers": [...], "keys": per sequence}], consecutive layers
    with the same keys in one group; layers without a key left out."""
    groups = []
    for layer in sorted(keys):
        rows = [sorted(int(k) for k in row) for row in keys[layer]]
        if not any(rows):
            continue
        if groups and groups[-1]["keys"] == rows and groups[-1]["layers"][-1] == layer - 1:
            groups[-1]["layers"].append(int(layer))
        else:
            groups.append({"layers": [int(layer)], "keys": rows})
    return groups


class KeyRecord:
    """The attention keys an intervention acts on, and its record: `keys` ({layer: per sequence (batch row) the
    token positions}) each time it is set (`history`: once for every forward, or once per forward or window) and the
    forwards that ran under it (`forwards`); `report()` says which keys, in which layers."""
    kind = "mask_keys"
    acts = "masked"

    def __init__(self):
        self._keys: dict[int, list[list[int]]] = {}
        self.history: list[dict] = []
        self.forwards = 0

    @property
    def keys(self) -> dict:
        return self._keys

    @keys.setter
    def keys(self, value: dict) -> None:
        self._keys = value
        self.history.append(value)

    def details(self) -> dict:
        """What a subclass adds to the report."""
        return {}

    def report(self) -> dict:
        """JSON-ready: each time the keys were set, the layers and the keys per sequence (consecutive layers with the
        same keys grouped), the forwards run, and a summary in words."""
        sets = [layer_groups(keys) for keys in self.history]
        details = self.details()
        extra = "".join(f", {k} {v}" for k, v in details.items())
        summary = [f"{self.kind}{extra}: {self.forwards} forward(s) ran; keys set {len(sets)} time(s) "
                   f"(layers {LAYERS_ARE}; keys: token positions per sequence, one list: every sequence's)"]
        for i, groups in enumerate(sets[:SHOWN]):
            where = "; ".join(f"keys {g['keys']} {self.acts} in layers {_span(g['layers'])}" for g in groups)
            summary.append(f"set {i}: {where or 'no key'}")
        if len(sets) > SHOWN:
            summary.append(f"... {len(sets) - SHOWN} more (report()['keys'])")
        return {"intervention": self.kind, **details, "layers_are": LAYERS_ARE, "forwards": self.forwards,
                "keys": sets, "layers": sorted({layer for groups in sets for g in groups for layer in g["layers"]}),
                "summary": summary}

    def __str__(self) -> str:
        return "\n".join(self.report()["summary"])


class SinkMask(KeyRecord):
    """The keys to mask in the current forward: keys[layer][row] = token positions. Every query but the key's own
    token loses that key. With `control`, each key is swapped for another token drawn at random (one swap per
    window, the same in every layer): what masking as many keys costs anyway. `report()` says which keys it masked
    in which layers."""

    def __init__(self, control: bool = False, seed: int = 0, kind: str = "mask_keys"):
        super().__init__()
        self.control = control
        self.kind = kind + (" (control: random keys)" if control else "")
        self.generator = torch.Generator().manual_seed(seed)
        self.masked = 0  # (window, key) pairs masked, summed over windows
        self.masked_layer_keys = 0  # (window, layer, key) triples

    def set(self, keys: dict[int, list[list[int]]], n_tokens: int) -> None:
        rows = len(next(iter(keys.values()), []))
        for b in range(rows):
            chosen = sorted({k for per_row in keys.values() for k in per_row[b]})
            if self.control:
                swap = dict(zip(chosen, self._random_others(chosen, n_tokens)))
                for per_row in keys.values():
                    per_row[b] = sorted(swap[k] for k in per_row[b])
            self.masked += len(chosen)
        self.masked_layer_keys += sum(len(k) for per_row in keys.values() for k in per_row)
        self.keys = keys

    def _random_others(self, keys, n_tokens):
        others = torch.tensor([t for t in range(n_tokens) if t not in set(keys)], dtype=torch.long)
        picked = torch.randperm(len(others), generator=self.generator)[:len(keys)]
        return others[picked].tolist()

    def blocked(self, layer: int, batch: int, n_tokens: int, device) -> torch.Tensor | None:
        """Bool [batch, tokens]: the keys masked at `layer`, or None."""
        return key_mask(self.keys.get(layer), batch, n_tokens, device)



class KeyMaskEdit(AttentionEdit):
    """SinkMask's keys as an attention edit (monkey_patch.routing): in each layer, every query but the key's own
    token loses the keys `state` names for that layer. Raises when a forward ends with a layer that had keys to mask
    never reached through the router (the mask would otherwise not have applied): `start_forward` and
    `check_applied` are Edit functions that only look, at the first layer's input and the last layer's output."""

    def __init__(self, state: SinkMask):
        self.state = state
        self.reached: set[int] = set()

    def mask(self, layer, query, key, mask):
        self.reached.add(layer)
        n_keys = key.shape[-2]
        rows = self.state.keys.get(layer)
        if rows and max((k for r in rows for k in r), default=-1) >= n_keys:
            raise CaptureError(f"layer {layer}: a masked key lies beyond the {n_keys} keys of this forward")
        blocked = key_mask(rows, query.shape[0], n_keys, query.device)
        if blocked is None:
            return mask
        positions = torch.arange(n_keys, device=query.device)
        own = positions[n_keys - query.shape[-2]:, None] == positions[None, :]  # each query's own key
        return hide(mask, query, key, blocked[:, None, None, :] & ~own)

    def start_forward(self, h, layer):
        self.reached.clear()
        self.state.forwards += 1

    def check_applied(self, h, layer):
        missed = [layer for layer, rows in self.state.keys.items() if any(rows) and layer not in self.reached]
        if missed:
            raise CaptureError(f"key mask not applied: layers {missed} did not call attention through the router")


def _gpt2_blocks(model):
    """The blocks of a gpt-2/ package GPT, else None."""
    gpt2 = hasattr(model, "config") and getattr(model.config, "model_type", None) is None
    return model.transformer.h if gpt2 else None


def supports_sink_mask(model) -> bool:
    view = ModelView(as_lm(model))
    return view.family.scores is not None or bool(view.family.registry) and getattr(
        sys.modules[type(view.attn(0)).__module__], "eager_attention_forward", None) is not None


def decoder_blocks(model):
    """The decoder blocks of a supported Hugging Face model or of a gpt-2/ GPT."""
    return ModelView(as_lm(model)).layers


@contextmanager
def masking(model, state: SinkMask):
    """Within the context, every forward masks the keys `state.keys` names (read when each layer runs)."""
    if not supports_sink_mask(model):
        raise ValueError(f"{model.config.model_type}: sink masking needs a family on transformers' attention registry")
    view = ModelView(as_lm(model))
    edit = KeyMaskEdit(state)
    last = view.num_layers - 1
    # Hugging Face families mask through the attention router, gpt-2/ GPTs on the scores of their explicit path
    with edit_attention(view.model, edit), Edit(view.model, "resid_pre", edit.start_forward, layers=[0]), \
            Edit(view.model, "resid_post", edit.check_applied, layers=[last]):
        yield state


@contextmanager
def mask_keys(model, keys, layers=None):
    """Within the context, in each of `layers` (0-based, as in Capture; None: every layer) no query but the key's
    own token may attend to the token positions `keys` (one list for every sequence, or a list per sequence).
    Works on Hugging Face families on transformers' attention registry and on gpt-2/ models; composes with
    Capture in either nesting order. Yields the SinkMask (`report()`: the keys and layers, the forwards run);
    anything it cannot apply raises.

    >>> with mask_keys(model, [3], layers=range(4, 18)):       # doctest: +SKIP
    ...     logits = model(ids).logits
    """
    n_layers = len(decoder_blocks(model))
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    bad = [layer for layer in layers if not isinstance(layer, int) or not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    rows = [list(keys)] if keys and isinstance(keys[0], int) else [list(r) for r in keys]
    state = SinkMask()
    state.keys = {layer: rows for layer in layers}  # the same keys for every forward
    with masking(model, state):
        yield state


@contextmanager
def mask_sink_keys(model, layer: int, control: bool = False, seed: int = 0, rule: Rule = DEFAULT_RULE):
    """Within the context, blocks after `layer` cannot attend to the outlier tokens found at `layer` in each
    forward (with `control`: to as many other tokens, drawn at random with `seed`). Yields the SinkMask: its
    `report()` has the keys found in each forward and the layers they were masked in."""
    state = SinkMask(control, seed, kind=f"mask_sink_keys (found at layer {layer})")
    blocks = decoder_blocks(model)

    def detect(h, i):
        rows = [torch.nonzero(outlier_mask(h[b], rule).any(dim=1)).flatten().tolist() for b in range(h.shape[0])]
        state.set({j: [list(r) for r in rows] for j in range(layer + 1, len(blocks))}, h.shape[1])

    with masking(model, state), Edit(as_lm(model), "resid_post", detect, layers=[layer]):
        yield state


@torch.no_grad()
def attention_sinks(model, run, ids) -> dict[int, list[list[int]]]:
    """Per layer and batch row: the attention-outlier keys (lib.analysis.ATTENTION_RULE on the head-averaged
    cumulative attention) of an unmasked forward on ids [b, L]. `run(ids)` is the HF model's forward; gpt-2/
    models are run with their attention weights, each row divided by its total (sigmoid rows do not sum to 1),
    the extra key k' left out."""
    with paused(model):  # a capture open around the intervention records only the intervened forward
        return _attention_sinks(model, run, ids)


def _attention_sinks(model, run, ids):
    if _gpt2_blocks(model) is not None:
        lm = as_lm(model)
        extra = ModelView(lm).has_extra_key()
        with Capture(lm, ["attn.pattern"] + ["attn.extra"] * extra) as cap:
            model(ids)
        weights = [torch.cat([cap["attn.extra", i][..., None], cap["attn.pattern", i]], dim=-1) if extra
                   else cap["attn.pattern", i] for i in range(len(decoder_blocks(model)))]
        sums = []
        for w in weights:
            w = w / w.sum(dim=-1, keepdim=True)
            sums.append([outliers.column_sums(row[..., -ids.shape[1]:]) for row in w])
    else:
        with Capture(model, "attn.pattern", reduce=reducers.attention_column_sums) as cap:
            run(ids)
        sums = [cap.reduced("attn.pattern", i)[0] for i in range(len(decoder_blocks(model)))]
    return {i: [analysis.excess_attention_keys(c.mean(dim=0)) for c in per_layer] for i, per_layer in enumerate(sums)}


def mask_attention_sinks(model, run, logits_fn, control: bool = False, seed: int = 0):
    """(logits_fn', state): logits_fn' first finds each window's attention sinks (`attention_sinks`), then runs
    `logits_fn` with each layer's sink keys masked in that layer (with `control`: as many other keys). `state.report()`
    has the keys of each window and the layers they were masked in."""
    state = SinkMask(control, seed, kind="mask_attention_sinks")

    def masked_logits(ids):
        state.set(attention_sinks(model, run, ids), ids.shape[1])
        with masking(model, state):
            return logits_fn(ids)
    return masked_logits, state


# --- Bondarenko et al.'s outlier metrics -------------------------------------------------------------------

class OutlierMetrics:
    """Per block output, over every window it sees: max infinity norm, and kurtosis over channels averaged
    over tokens (lib.outliers.kurtosis, non-excess: a Gaussian gives 3). An Edit function that only looks:
    `with Edit(model, "resid_post", metrics)`."""

    def __init__(self, n_layers: int):
        self.inf_norm = [0.0] * n_layers
        self.kurtosis_sum = [0.0] * n_layers
        self.tokens = [0] * n_layers

    def __call__(self, h, layer):
        h = h.detach()
        flat = h.reshape(-1, h.shape[-1])
        self.inf_norm[layer] = max(self.inf_norm[layer], outliers.max_inf_norm(flat))
        self.kurtosis_sum[layer] += outliers.kurtosis(flat, dim=-1).sum().item()
        self.tokens[layer] += flat.shape[0]

    def summary(self) -> dict:
        kurt = [s / n if n else 0.0 for s, n in zip(self.kurtosis_sum, self.tokens)]
        return {
            "max_inf_norm": max(self.inf_norm),
            "avg_kurtosis": sum(kurt) / len(kurt),
            "per_layer_inf_norm": self.inf_norm,
            "per_layer_kurtosis": kurt,
        }
