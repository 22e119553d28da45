"""Outlier statistics of a trained GPT (definitions as in SPEC.md), shared by analyze.py and compare.py.

- Block outputs h (tokens x channels, one sequence): top-1/2/3 of |h| and the median of |h| over the
  whole tensor, averaged over sequences; the outlier ratio is top-1 / median.
- Kurtosis (Bondarenko et al. 2023): excess kurtosis of all entries of a layer's block output.
- Attention: the weight each query puts on each key, normalised by the query's total weight (softmax rows
  already sum to one; sigmoid rows do not; an extra key k' counts in the total but is not a token).
  first-token share = mean over heads and queries 1..T-1 of the normalised weight on position 0;
  top-key share = the same for the token that receives the most (the "sink" when it is most of the mass);
  sink rate (Gu et al. 2025) = share of (layer, head) pairs whose mean weight on position 0 exceeds 0.3.
"""
import os

import torch

import configurator  # noqa: F401  (puts the repo root on sys.path, for lib/)
from lib.outliers import column_ratios  # noqa: E402

SINK_RATE_THRESHOLD = 0.3


def read_checkpoint(path, device="cpu"):
    """A train.py checkpoint as a dict, loaded with weights_only=True: tensors and plain Python values only, so
    opening a checkpoint someone sent you cannot run code."""
    import os
    import pickle
    import re
    from configurator import UserError
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused is None:
            raise UserError(f"{path} is not a train.py checkpoint (unreadable)") from None
        raise UserError(f"{path} holds a Python object ({refused.group(1)}) that safe loading refuses; if you trust "
                        "its source, re-save it with plain values: torch.load(path, weights_only=False), then "
                        "torch.save of a dict of tensors, numbers, strings, lists and dicts") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a train.py checkpoint ({type(e).__name__}: {str(e)[:160]})") from None


def checkpoint_provenance(path, ckpt, data=None):
    """lib.provenance's block for a result computed from one checkpoint."""
    from types import SimpleNamespace
    from lib.provenance import provenance
    spec = SimpleNamespace(name=os.path.basename(os.path.dirname(os.path.abspath(path))), source=path,
                           title=f"GPT {ckpt['model_args'].get('attention', 'default')}")
    return provenance(spec, data=data)


def load_model(path, device="cpu"):
    """A GPT from a train.py checkpoint; returns (model, checkpoint dict)."""
    from configurator import UserError
    from model import GPT, GPTConfig
    ckpt = read_checkpoint(path, device)
    try:
        model = GPT(GPTConfig.from_dict(ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except Exception as e:
        raise UserError(f"{path} is not a train.py checkpoint ({type(e).__name__}: {e})")
    return model.to(device).eval(), ckpt


def kurtosis(x):
    x = x.double().flatten()
    z = (x - x.mean()) / x.std(unbiased=False)
    return float((z ** 4).mean() - 3.0)


@torch.no_grad()
def activation_stats(model, seqs):
    """Per layer (block outputs): mean over sequences of top-1/2/3 |h| and median |h|; ratio; kurtosis;
    and where top-1 sits (token position and channel, in the first sequence)."""
    out = model(seqs, return_hidden=True)
    layers = []
    for h in out.hidden:  # (B, T, C)
        a = h.abs().double()
        flat = a.flatten(1)
        top = flat.topk(3, dim=1).values.mean(0)
        med = flat.median(dim=1).values.mean()
        pos = int(flat[0].argmax())
        layers.append(dict(top1=float(top[0]), top2=float(top[1]), top3=float(top[2]), median=float(med),
                           ratio=float(top[0] / med), kurtosis=kurtosis(h), top1_token=pos // h.shape[2],
                           top1_channel=pos % h.shape[2]))
    return layers


@torch.no_grad()
def attention_stats(model, seqs):
    """Per layer: first-token share, top-key share and its position, extra-key share, sink rate."""
    out = model(seqs, need_weights=True)
    T = seqs.shape[1]
    layers = []
    for w in out.attn:  # (B, nh, T, T) or (B, nh, T, T+1) with the extra key first
        w = w.double()
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
        extra = w[..., 0] if w.shape[-1] == T + 1 else torch.zeros_like(w[..., 0])
        tok = w[..., -T:]  # weights on the real tokens
        per_key = tok[:, :, 1:, :].mean(dim=(0, 2))  # (nh, T): mean over batch and queries 1..T-1
        per_key_all = per_key.mean(0)  # averaged over heads
        layers.append(dict(first_token_share=float(per_key_all[0]), top_key_share=float(per_key_all.max()),
                           top_key=int(per_key_all.argmax()), extra_key_share=float(extra[:, :, 1:].mean()),
                           sink_rate=float((per_key[:, 0] > SINK_RATE_THRESHOLD).double().mean()),
                           head_first_token_share=per_key[:, 0].tolist()))
    return layers


def summary(act, att):
    """The one-row summary compare.py tabulates (max over layers, as stated)."""
    best = max(range(len(act)), key=lambda i: act[i]["ratio"])
    return dict(max_top1=max(l["top1"] for l in act), median_at_max_ratio=act[best]["median"],
                max_ratio=act[best]["ratio"], max_ratio_layer=best + 1,
                max_kurtosis=max(l["kurtosis"] for l in act),
                max_first_token_share=max(l["first_token_share"] for l in att),
                max_top_key_share=max(l["top_key_share"] for l in att),
                max_extra_key_share=max(l["extra_key_share"] for l in att),
                sink_rate=sum(l["sink_rate"] for l in att) / len(att))


# --- per-layer peaks, what writes them, and whether they serve a sink (issue 17's criteria) ---------------------
# Fixed before the emergence runs: a peak is a systematic outlier when it is in a block before the last,
# top-1/median >= SYSTEMATIC_RATIO, on a position that takes > SINK_SHARE of the attention in some layer, and
# written by the blocks (the embedding's value in that entry is under EMBED_SHARE of the peak).
SYSTEMATIC_RATIO = 100.0
SINK_SHARE = 0.5
EMBED_SHARE = 0.1
PEAK_CHANNEL_SHARE = 0.5  # peak_ablation: the channels of the peak position that belong to the peak


def key_shares(w, T):
    """Mean attention weight on each key position (T,) over batch, heads and queries 1..T-1 (query 0 has no
    choice), each query's weights normalised by its row total (an extra key k' counts there); a query that
    cannot see a key counts as 0 for it, so a late key cannot look like a sink on the strength of a few queries."""
    w = w.float()
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    return w[..., 1:, -T:].mean(dim=(0, 1, 2))


@torch.no_grad()
def layer_report(model, seqs):
    """For every block output: the peak ratio (top-1/median |h|, mean over sequences), the position and channel
    of the peak (their mode over sequences), the signed contributions to that entry (embedding, each block's
    attention and MLP; mean over sequences), the MLP unit (down-projection column) that writes most of it
    where an MLP is the writer, and the attention share of the peak position in every layer; then the verdict."""
    blocks = model.transformer.h
    parts, hooks = {}, []

    def keep(name, i, pick=lambda o: o):
        return lambda module, args, out: parts.__setitem__((name, i), pick(out))
    hooks.append(blocks[0].register_forward_pre_hook(lambda module, args: parts.__setitem__(("embed", 0), args[0])))
    for i, block in enumerate(blocks):
        hooks.append(block.attn.register_forward_hook(keep("attn", i, lambda o: o[0])))
        hooks.append(block.mlp.register_forward_hook(keep("mlp", i)))
        hooks.append(block.mlp.gelu.register_forward_hook(keep("unit", i)))
    try:
        out = model(seqs, return_hidden=True, need_weights=True)
    finally:
        for h in hooks:
            h.remove()
    B, T = seqs.shape
    shares = [key_shares(w, T) for w in out.attn]  # per layer, (T,)
    layers = []
    for l, h in enumerate(out.hidden):
        flat = h.float().abs().flatten(1)
        top, where = flat.max(dim=1)
        med = flat.median(dim=1).values
        pos, ch = where // h.shape[2], where % h.shape[2]
        p = int(pos.mode().values)
        c = int(ch[pos == p].mode().values)
        value = h[:, p, c].float().mean()
        contrib = {"embed": float(parts["embed", 0][:, p, c].float().mean())}
        for j in range(l + 1):
            contrib[f"attn{j + 1}"] = float(parts["attn", j][:, p, c].float().mean())
            contrib[f"mlp{j + 1}"] = float(parts["mlp", j][:, p, c].float().mean())
        writer = max((k for k in contrib if k != "embed"), key=lambda k: abs(contrib[k]))
        row = dict(layer=l + 1, ratio=float((top / med).mean()), top1=float(top.mean()), median=float(med.mean()),
                   token=p, token_freq=float((pos == p).float().mean()), channel=c, value=float(value),
                   embed_share=abs(contrib["embed"]) / max(abs(float(value)), 1e-30), writer=writer,
                   writer_share=contrib[writer] / float(value) if float(value) else 0.0, contributions=contrib,
                   token_attention=[float(s[p]) for s in shares], top_key=int(shares[l].argmax()),
                   top_key_share=float(shares[l].max()))
        if writer.startswith("mlp"):
            j = int(writer[3:]) - 1
            w_down = blocks[j].mlp.c_proj.weight  # (C, 4C): column k writes unit k into every channel
            per_unit = parts["unit", j][:, p, :].float().mean(0) * w_down[c].float()
            k = int(per_unit.abs().argmax())
            col_ratio = column_ratios(w_down)  # the paper's weight-outlier measure, per down-projection column
            row.update(unit=k, unit_share=float(per_unit[k]) / contrib[writer] if contrib[writer] else 0.0,
                       unit_column_ratio=float(col_ratio[k]),
                       unit_column_rank=int((col_ratio > col_ratio[k]).sum()) + 1)
        layers.append(row)
    return dict(layers=layers, verdict=verdict(layers), max_over_layers=max(r["ratio"] for r in layers))


@torch.no_grad()
def peak_ablation(model, seqs, report, seed=0):
    """Does anything need the peaks? For every block before the last: zero the peak's channels at its position p
    (the report's channel and every other channel whose mean |h| at p is at least PEAK_CHANNEL_SHARE of it: a
    massive activation often spans a few channels) in the block's output, in every sequence, and measure the
    next-token loss on seqs and the attention share of p in every layer against the unchanged model. The control
    zeroes as many random channels at one random other position instead."""
    blocks = model.transformer.h
    x = seqs  # every position the report can name; the last one has no next token to predict
    y = torch.cat([seqs[:, 1:], torch.full_like(seqs[:, :1], -1)], dim=1)
    T, C = x.shape[1], model.config.n_embd
    g = torch.Generator().manual_seed(seed)

    def run(layer=None, pos=None, channels=None):
        """(loss, every layer's key shares (T,), block outputs) with h[:, pos, channels] of block `layer` zeroed,
        if a layer is given."""
        def zero(module, args, out):
            out[0][:, pos, channels] = 0.0
        hook = blocks[layer].register_forward_hook(zero) if layer is not None else None
        try:
            out = model(x, targets=y, need_weights=True, return_hidden=True)
        finally:
            if hook is not None:
                hook.remove()
        return float(out.loss), [key_shares(w, T) for w in out.attn], out.hidden

    loss, shares, hidden = run()  # the unchanged model, once for every block
    rows = []
    for r in report["layers"][:-1]:
        layer, p, c = r["layer"] - 1, r["token"], r["channel"]
        size = hidden[layer][:, p].abs().float().mean(0)
        channels = sorted({c} | set(torch.nonzero(size >= PEAK_CHANNEL_SHARE * size[c]).flatten().tolist()))
        zeroed, after, _ = run(layer, p, channels)
        q = int(torch.randint(0, T - 1, (1,), generator=g))
        q = q + 1 if q >= p else q  # any position but p
        control, _, _ = run(layer, q, torch.randperm(C, generator=g)[: len(channels)].tolist())
        rows.append(dict(layer=layer + 1, token=p, channels=channels, ratio=r["ratio"], loss=loss, loss_zeroed=zeroed,
                         loss_control=control, share_before=[float(s[p]) for s in shares],
                         share_after=[float(s[p]) for s in after]))
    return rows


def verdict(layers):
    """The blocks whose peak is a systematic outlier by the criteria above (1-based), and the reason each
    other block with ratio >= SYSTEMATIC_RATIO is not one."""
    found, rejected = [], {}
    for r in layers:
        if r["ratio"] < SYSTEMATIC_RATIO:
            continue
        sink_layers = [i + 1 for i, s in enumerate(r["token_attention"]) if s > SINK_SHARE]
        why = []
        if r["layer"] == len(layers):
            why.append("last block")
        if not sink_layers:
            why.append(f"position {r['token']} is no sink (max share {max(r['token_attention']):.2f})")
        if r["embed_share"] >= EMBED_SHARE:
            why.append(f"the embedding holds {r['embed_share']:.0%} of it")
        if why:
            rejected[r["layer"]] = "; ".join(why)
        else:
            found.append(dict(layer=r["layer"], token=r["token"], channel=r["channel"], ratio=r["ratio"],
                              writer=r["writer"], sink_layers=sink_layers))
    return dict(outliers=bool(found), layers=found, rejected=rejected,
                criteria=dict(ratio=SYSTEMATIC_RATIO, sink_share=SINK_SHARE, embed_share=EMBED_SHARE))


def compact_report(report):
    """The per-step line of stats.jsonl: the numbers to plot against steps."""
    keys = ("ratio", "token", "channel", "embed_share", "writer", "unit", "top_key", "top_key_share")
    layers = [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keys if k in r} for r in report["layers"]]
    for r, full in zip(layers, report["layers"]):
        r["token_attention_max"] = round(max(full["token_attention"]), 4)
    return dict(layers=layers, outliers=report["verdict"]["outliers"],
                outlier_layers=[v["layer"] for v in report["verdict"]["layers"]],
                max_over_layers=round(report["max_over_layers"], 4))
