"""Is an attention sink only a context-aware scale? Counterfactuals on the sink keys.

Per head and query, softmax attention splits into the sink keys S and the rest:
    o = sum_{j in S} w_j v_j + (1 - a_s) o_rest,    a_s = sum_{j in S} w_j,
o_rest being the output renormalised over the other keys (what masking S gives). If the sinks' values v_s are
negligible, the sink only scales the head's output by 1 - a_s. The modes, each applied in every layer to that
layer's sink keys (lib.interventions.attention_sinks: the keys mask_attn_sink masks), per head and query:
  mask             o_rest (S masked, renormalised)
  oracle_scale     (1 - a_s) o_rest, a_s measured on the unmasked forward
  drop_sink_value  o - sum_{j in S} w_j v_j (nothing renormalised; equal to oracle_scale in exact arithmetic)
  sink_value_only  the forward with v_j = 0 for j in S (computed that way; again equal in exact arithmetic)
  const_scale      c o_rest, c = the head's mean 1 - a_s over the calibration windows (a context-free scale)
  fitted_scale     s(x) o_rest, s(x) = 2 sigmoid(w . x + b) (ca_softmax's form) on the attention input x of that
                   token, one (w, b) per head fitted on calibration windows to the measured 1 - a_s
A query's own token is never one of its sink keys (masking keeps every token's own key, as mask_attn_sink
does), so the sink tokens' own rows, and the first token's, stay as they are.
"""
from contextlib import contextmanager

import torch

from lib import relocation
from lib.gpt2_checkpoints import as_lm
from lib.interventions import DEFAULT_RULE, KeyRecord, attention_sinks, key_mask, supports_sink_mask
from lib.perplexity import perplexity, summarize
from lib.text_numbers import sig
from monkey_patch import AttentionEdit, Edit, ModelView, edit_attention
from monkey_patch.routing import additive_mask, eager_attention, hide

MODES = ("mask", "oracle_scale", "drop_sink_value", "sink_value_only", "const_scale", "fitted_scale")
RIDGE = 1e-2  # fitted_scale: ridge penalty relative to the mean squared input (keeps the fit stable)


class ScaleTest(KeyRecord):
    """The state of one pass: the mode, each layer's sink keys for the current windows (keys[layer][row]), the
    context-free and fitted scales, and (mode 'record') the calibration measurements. `report()` says which sink
    keys the mode acted on in which layers, window by window."""
    acts = "treated"

    def __init__(self, mode: str):
        if mode not in MODES + ("record",):
            raise ValueError(f"unknown scale-test mode {mode!r}")
        super().__init__()
        self.mode = mode
        self.kind = "scale_test"
        self.const: dict[int, torch.Tensor] = {}  # layer -> [heads]
        self.fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (w [heads, dim], b [heads])
        self.inputs: dict[int, torch.Tensor] = {}  # layer -> this forward's attention input [batch, tokens, dim]
        self.records: dict[int, list] = {}  # layer -> [(x [n, dim], 1 - a_s [n, heads], seen [n, heads])]
        self.value_ratio: dict[int, list[float]] = {}  # layer -> |v_s| / median |v| per (window, sink key, head)
        self.uncalibrated = 0  # (forward, layer) pairs with sinks but no calibrated scale (left masked)

    def details(self) -> dict:
        return {"mode": self.mode, "uncalibrated": self.uncalibrated}

    def sinks(self, layer: int, batch: int, n_tokens: int, device) -> torch.Tensor | None:
        """Bool [batch, queries, keys]: key j is a sink of query i (j in S, j != i, j <= i), or None."""
        keys = key_mask(self.keys.get(layer), batch, n_tokens, device)
        if keys is None:
            return None
        causal = torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=device).tril(-1)  # j < i
        return keys[:, None, :] & causal


def apply(state: ScaleTest, layer: int, run, q, v, x):
    """The mode's per-head output [batch, heads, queries, d] for one layer.

    run(value, hidden) -> (output [b, h, T, d], weights [b, h, T, T]) is the layer's own attention with the values
    replaced by `value` and, where `hidden` [b, 1|h, T, T] is given, those (query, key) pairs masked. v is the
    value per query head [b, h, T, d]; x the attention input [b, T, dim]."""
    full, w = run(None, None)
    S = state.sinks(layer, q.shape[0], q.shape[2], q.device)
    if S is None:
        return full
    S4 = S[:, None].to(w.dtype)
    a_s = (w * S4).sum(-1)  # [b, h, T]
    if state.mode == "record":
        _record(state, layer, x, a_s, S, v)
        return full
    if state.mode == "drop_sink_value":
        return full - (w * S4) @ v
    if state.mode == "sink_value_only":
        zeroed = v.clone()
        sink_keys = S.any(dim=1)  # [b, T]
        zeroed[sink_keys[:, None, :, None].expand_as(v)] = 0.0
        own = torch.diag_embed(sink_keys.to(w.dtype))[:, None]  # the sink tokens' own rows keep their own value
        return run(zeroed, None)[0] + (w * own) @ v
    masked, _ = run(None, S[:, None])
    if state.mode == "mask":
        return masked
    seen = S.any(dim=-1)[:, None, :, None]  # queries that have a sink key to lose
    if state.mode in ("const_scale", "fitted_scale") and layer not in state.const:
        state.uncalibrated += 1  # this layer had no sink in the calibration windows: nothing to scale with
        return masked
    if state.mode == "oracle_scale":
        scale = (1 - a_s)[..., None]
    elif state.mode == "const_scale":
        scale = state.const[layer].to(masked.device, masked.dtype)[None, :, None, None]
    else:  # calibrated on the CPU; the layer may run on another device
        weight, bias = (t.to(x.device) for t in state.fitted[layer])
        scale = (2 * torch.sigmoid(x.float() @ weight.T + bias)).transpose(1, 2)[..., None].to(masked.dtype)
    return torch.where(seen, scale * masked, masked)


def _record(state, layer, x, a_s, S, v):
    seen = S.any(dim=-1)  # [b, T]
    kept = 1 - a_s.transpose(1, 2)  # [b, T, h]
    state.records.setdefault(layer, []).append((x.reshape(-1, x.shape[-1]).float().cpu(),
                                               kept.reshape(-1, kept.shape[-1]).float().cpu(),
                                               seen.reshape(-1).cpu()))
    norms = v.float().norm(dim=-1)  # [b, h, T]
    median = norms.median(dim=-1).values  # [b, h]
    keys = S.any(dim=1)  # [b, T]
    for b in range(keys.shape[0]):
        ratio = norms[b][:, keys[b]] / median[b][:, None].clamp_min(1e-12)
        state.value_ratio.setdefault(layer, []).extend(ratio.flatten().tolist())


def calibrate(state: ScaleTest) -> dict:
    """From the recorded calibration passes: each head's mean 1 - a_s (const_scale), a fitted 2 sigmoid(w.x + b)
    per head on the first half of the recorded windows with its R^2 on the second half (fitted_scale), and the
    distributions of a_s and of |v_s| / median |v| per layer."""
    report = {}
    for layer, records in sorted(state.records.items()):
        x = torch.cat([r[0] for r in records])
        kept = torch.cat([r[1] for r in records])
        seen = torch.cat([r[2] for r in records])
        x, kept = x[seen], kept[seen]
        state.const[layer] = kept.mean(dim=0)
        half = max(1, len(records) // 2)
        n_fit = sum(int(r[2].sum()) for r in records[:half])
        weight, bias = _fit(x[:n_fit], kept[:n_fit])
        state.fitted[layer] = (weight, bias)
        test_x, test_y = (x[n_fit:], kept[n_fit:]) if n_fit < len(x) else (x, kept)
        predicted = 2 * torch.sigmoid(test_x @ weight.T + bias)
        ratios = torch.tensor(state.value_ratio.get(layer, [float("nan")]))
        a_s = 1 - kept
        report[layer] = {
            "queries": int(len(x)), "a_s_mean": float(a_s.mean()),
            "a_s_quantiles": [float(q) for q in torch.quantile(a_s.flatten(), torch.tensor([0.1, 0.5, 0.9]))],
            "const_scale": [round(float(c), 4) for c in state.const[layer]],
            "fit_r2": _r2(predicted, test_y), "fit_r2_const": _r2(state.const[layer].expand_as(test_y), test_y),
            "fit_held_out": n_fit < len(x),
            "sink_value_ratio_median": float(ratios.median()),
            "sink_value_ratio_quantiles": [float(q) for q in torch.quantile(ratios, torch.tensor([0.1, 0.9]))],
        }
    return report


def _fit(x, kept):
    """Per head: (w, b) with 2 sigmoid(w.x + b) ~ kept, by ridge regression of logit(kept / 2) on x."""
    target = torch.logit((kept / 2).clamp(1e-4, 0.5 - 1e-4))  # [n, heads]
    mean_x, mean_t = x.mean(dim=0), target.mean(dim=0)
    xc = x - mean_x
    gram = xc.T @ xc
    penalty = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    weight = torch.linalg.solve(gram + penalty * torch.eye(x.shape[1]), xc.T @ (target - mean_t)).T  # [heads, dim]
    return weight, mean_t - weight @ mean_x


def _r2(predicted, actual) -> float:
    residual = ((actual - predicted) ** 2).sum()
    total = ((actual - actual.mean(dim=0)) ** 2).sum()
    return float(1 - residual / total) if total > 0 else float("nan")


# --- wiring: Hugging Face families on the attention registry, and gpt-2/ checkpoints ------------------------------

class ScaleEdit(AttentionEdit):
    """The scale test as an attention edit (monkey_patch.edit_attention): it replaces each layer's attention output
    with the mode's (`apply`), computed with attention weights of the layer: for Hugging Face families (`eager`)
    the family's eager attention on the mask the router hands it (the model's own kernel, sdpa or flash, may give
    none); for gpt-2/ GPTs `run`, the layer's own explicit path (monkey_patch.hook_points), which gives them."""
    replaces_kernel = True

    def __init__(self, state: ScaleTest, eager: bool = True):
        self.state, self.eager = state, eager

    def kernel(self, layer, run, module, query, key, value, mask, **kwargs):
        groups = query.shape[1] // value.shape[1]
        attend = (_eager_attention(module, query, key, value, mask, groups, kwargs) if self.eager
                  else _own_attention(run, query, key, value, mask))
        v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
        out = apply(self.state, layer, attend, query, v, self.state.inputs.get(layer))
        return out.transpose(1, 2).contiguous(), None


def _eager_attention(module, query, key, value, mask, groups, kwargs):
    """apply()'s run(value, hidden) through the family's eager attention."""
    eager = eager_attention(module)
    additive = additive_mask(mask, query, key)

    def run_eager(new_value, hidden):
        masked = additive if hidden is None else torch.where(hidden, torch.finfo(additive.dtype).min, additive)
        vals = value if new_value is None else new_value[:, ::groups]
        out, w = eager(module, query, key, vals, masked, **kwargs)
        return out.transpose(1, 2), w
    return run_eager


def _own_attention(run, query, key, value, mask):
    """apply()'s run(value, hidden) through the model's own attention `run`, which returns its weights."""
    def run_own(new_value, hidden):
        masked = mask if hidden is None else hide(mask, query, key, hidden)
        out, w = run(query, key, value if new_value is None else new_value, masked)
        return out.transpose(1, 2), w
    return run_own


@contextmanager
def scale_test(model, state: ScaleTest):
    """Within the context every forward runs `state.mode` on the sink keys `state.keys` names."""
    if not supports_sink_mask(model):
        raise ValueError("the scale test needs a gpt-2/ model or a Hugging Face family on the attention registry")
    lm = as_lm(model)

    def keep_input(x, layer):
        state.inputs[layer] = x
        state.forwards += layer == 0
    with edit_attention(lm, ScaleEdit(state, eager=ModelView(lm).family.registry)), Edit(lm, "attn_in", keep_input):
        try:
            yield state
        finally:
            state.inputs.clear()


def logits_under(model, run, logits_fn, state: ScaleTest, sinks: dict | None = None):
    """logits_fn' that finds each window's sink keys (unmodified forward), then runs logits_fn under the test.
    `sinks` caches them by window across calls (every mode tests the same windows: one search per window)."""
    sinks = {} if sinks is None else sinks

    def scaled_logits(ids):
        key = (tuple(ids.shape), ids.cpu().numpy().tobytes())
        if key not in sinks:
            sinks[key] = attention_sinks(model, run, ids)
        state.keys = sinks[key]  # only read by the test
        with scale_test(model, state):
            return logits_fn(ids)
    return scaled_logits


def measure(model, run, logits_fn, windows, calib, baseline, log=print, rule=None, prefix: int = 0) -> dict:
    """Calibrate on `calib` windows (const and fitted scales, a_s and |v_s| statistics), then the perplexity of
    every mode on `windows`, each with its paired change against `baseline` (lib.perplexity.summarize) and where
    the massive activation went (lib.relocation; the modes replace attention's output, so no sink is tracked).
    `prefix`: the special tokens each window starts with (lib.perplexity.perplexity)."""
    rule = rule or DEFAULT_RULE
    record = ScaleTest("record")
    recording = logits_under(model, run, logits_fn, record)
    with torch.no_grad():
        for i in range(calib.shape[0]):
            recording(calib[i: i + 1, :-1])
    out, sinks = {"layers": calibrate(record), "modes": {}}, {}
    for mode in MODES:
        state = ScaleTest(mode)
        state.const, state.fitted = record.const, record.fitted
        scaled = logits_under(model, run, logits_fn, state, sinks)
        with relocation.track(model, attention=False) as where:
            measured = perplexity(scaled, windows, prefix=prefix)
        summary = where.summary(rule)
        out["modes"][mode] = {**summarize(measured, baseline), "masked_layers": "each layer: its own sink keys",
                              "where": summary, "moved": relocation.compare(baseline.get("where", {}), summary)}
        if mode in ("const_scale", "fitted_scale"):
            out["modes"][mode]["uncalibrated_layer_windows"] = state.uncalibrated
        log(f"scale test: {mode}: perplexity {sig(out['modes'][mode]['ppl'])}")
    return out


DEFINITIONS = ("Perplexity (change of the mean token NLL against fp32 ± its paired standard error over windows). "
               "In every layer, that layer's sink keys (found per window as for mask_attn_sink): mask = masked and "
               "renormalised; oracle_scale = masked, times 1 - a_s of the unmasked forward; drop_sink_value = the "
               "sinks' term w v removed; sink_value_only = their values set to 0 (the last three agree in exact "
               "arithmetic); const_scale = masked, times the head's calibration mean of 1 - a_s; fitted_scale = "
               "masked, times 2 sigmoid(w.x + b) fitted per head on calibration windows (lib/scale_test.py); a layer "
               "whose sinks never showed in calibration stays masked in those two (counted in the JSON).")


def markdown(rows, brief: bool = False) -> list[str]:
    """The scale test's section of consequences.md: perplexity per mode, then per layer the sink shares, the
    scales and fits, and the sinks' value norms (brief: the perplexity table alone)."""
    def cell(entry):
        if entry.get("ppl") is None:
            return "n/a"
        change = entry.get("nll_change")
        return sig(entry['ppl']) + (f" ({change:+.3f} ± {entry['nll_change_stderr']:.3f})"
                                        if change is not None and entry.get("nll_change_stderr") is not None else "")
    lines = ["## Is the sink only a scale? (--scale-test)", "",
             "| model | fp32 | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 2) + "|"]
    for r in rows:
        test = r.get("scale_test", {})
        if "modes" in test:
            lines.append(f"| {r['name']} | {sig(r['baseline']['ppl'])} | "
                         + " | ".join(cell(test["modes"][m]) for m in MODES) + " |")
    if brief:
        return lines + [""]
    lines += ["", DEFINITIONS, "",
              "| model | layer | queries (calibration) | a_s mean (10/50/90%) | fit R^2 (held out) | const R^2 "
              "| sink |v| / median |v| (10/50/90%) |", "|---" * 7 + "|"]
    for r in rows:
        for layer, m in r.get("scale_test", {}).get("layers", {}).items():
            q = m["a_s_quantiles"]
            v = m["sink_value_ratio_quantiles"]
            lines.append(f"| {r['name']} | {layer} | {m['queries']} | {m['a_s_mean']:.3f} ({q[0]:.2f}/{q[1]:.2f}/"
                         f"{q[2]:.2f}) | {m['fit_r2']:.3f} | {m['fit_r2_const']:.3f} | {v[0]:.2f}/"
                         f"{m['sink_value_ratio_median']:.2f}/{v[1]:.2f} |")
        if r.get("scale_test", {}).get("note"):
            lines.append(f"- {r['name']}: {r['scale_test']['note']}")
    return lines + [""]
