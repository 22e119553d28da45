"""Outlier statistics of a trained GPT and the emergence verdict, shared by analyze.py, compare.py,
emergence.py and train.py. Every statistic is defined once, in lib.outliers; this module gathers a GPT's
tensors, feeds them to those definitions and applies the verdict's criteria. `VARIANTS` says which variant
each reported number is.

- Block outputs h (tokens x channels, one sequence): top-1/2/3 of |h| and the median of |h| over the whole
  tensor (lib.outliers.topk_magnitudes), averaged over sequences; `ratio` is the averaged top-1 over the
  averaged median. Kurtosis: lib.outliers.tensor_excess_kurtosis of a layer's block outputs.
- Attention: the weight each query puts on each key, divided by the query's total weight (softmax rows
  already sum to one; sigmoid rows do not; an extra key k' counts in the total but is not a token), then
  lib.outliers.key_shares_after_first_query (queries 1..T-1). First-token share, top-key share and the sink
  rate (lib.outliers.sink_rate, threshold 0.3) are read from those shares.
Blocks are 0-based (block i is model.transformer.h[i]; its MLP writes as "mlp<i>"), and the records train.py logs
say so (`layers_are`); stats_log.as_zero_based reads logs written when blocks counted from 1.
"""
import math
import os
from contextlib import nullcontext

import torch

from lib import analysis, outliers
from lib.gpt2_checkpoints import CheckpointLM
from monkey_patch import Capture, Edit, ModelView
from stats_log import LAYERS_ARE

SINK_RATE_THRESHOLD = 0.3
VARIANTS = dict(
    ratio="mean over sequences of top-1 |h| divided by the mean over sequences of median |h| (position-free)",
    kurtosis=outliers.KURTOSIS_TENSOR_EXCESS + ", of a block's outputs over all judged sequences",
    first_token_share=outliers.FIRST_TOKEN_SHARE_AFTER_FIRST_QUERY,
    top_key_share="the largest head-averaged key share (" + outliers.KEY_SHARES + ")",
    extra_key_share="weight on the extra key k', mean over heads and queries 1..T-1",
    sink_rate=outliers.SINK_RATE_AFTER_FIRST_QUERY,
)


def checkpoint_provenance(path, ckpt, data=None):
    """lib.provenance's block for a result computed from one checkpoint."""
    from types import SimpleNamespace
    from lib.provenance import provenance
    spec = SimpleNamespace(name=os.path.basename(os.path.dirname(os.path.abspath(path))), source=path,
                           title=f"GPT {ckpt['model_args'].get('attention', 'default')}")
    return provenance(spec, data=data)


def captured(model, seqs, points, targets=None):
    """One forward of the GPT with monkey_patch.Capture's `points` (names as in monkey_patch.capture) in every layer:
    ((logits, loss), {point: [one tensor per layer, on seqs' device]}). attn.pattern comes whole, as the model
    computes it: (B, nh, T, T), or (B, nh, T, T + 1) with the extra key k' in column 0 where the variant has one.
    Asking for attention runs every layer's explicit path (the same numbers as without, up to rounding)."""
    lm = CheckpointLM(model)
    extra = "attn.pattern" in points and ModelView(lm).has_extra_key()
    with Capture(lm, points + ["attn.extra"] * extra) as cap:
        out = model(seqs, targets)
    got = {p: [cap[p, i].to(seqs.device) for i in range(model.config.n_layer)] for p in points + ["attn.extra"] * extra}
    if extra:
        got["attn.pattern"] = [torch.cat([k[..., None], w], dim=-1) for k, w in zip(got.pop("attn.extra"),
                                                                                      got["attn.pattern"])]
    return out, got


@torch.no_grad()
def activation_stats(model, seqs):
    """Per layer (block outputs): mean over sequences of top-1/2/3 |h| and median |h|; ratio; kurtosis;
    and where top-1 sits (token position and channel, in the first sequence). See VARIANTS."""
    layers = []
    for h in captured(model, seqs, ["resid_post"])[1]["resid_post"]:  # (B, T, C)
        per_seq = [outliers.topk_magnitudes(s, 3) for s in h]
        top = [sum(s["top"][k] for s in per_seq) / len(per_seq) for k in range(3)]
        med = sum(s["median"] for s in per_seq) / len(per_seq)
        layers.append(dict(top1=top[0], top2=top[1], top3=top[2], median=med, ratio=top[0] / med if med else 0.0,
                           kurtosis=outliers.tensor_excess_kurtosis(h), top1_token=per_seq[0]["tokens"][0],
                           top1_channel=per_seq[0]["channels"][0]))
    return layers


def row_normalized(w):
    """Each query's weights divided by the row total (sigmoid rows do not sum to 1; an extra key k' counts)."""
    w = w.float()
    return w / w.sum(-1, keepdim=True).clamp_min(1e-30)


def head_key_shares(w, T):
    """lib.outliers.key_shares_after_first_query of one layer's weights (B, nh, T, T[+1]) on the T real tokens:
    (nh, T), each head's mean weight of queries 1..T-1 on each key position."""
    return outliers.key_shares_after_first_query(row_normalized(w)[..., -T:])


def key_shares(w, T):
    """head_key_shares averaged over heads: (T,)."""
    return head_key_shares(w, T).mean(0)


@torch.no_grad()
def attention_stats(model, seqs):
    """Per layer: first-token share, top-key share and its position, extra-key share, sink rate (VARIANTS)."""
    T = seqs.shape[1]
    layers = []
    for w in captured(model, seqs, ["attn.pattern"])[1]["attn.pattern"]:  # (B, nh, T, T[+1]), the extra key first
        per_key = head_key_shares(w, T)  # (nh, T)
        per_key_all = per_key.mean(0)
        extra = row_normalized(w)[..., 0] if w.shape[-1] == T + 1 else torch.zeros_like(w[..., 0])
        layers.append(dict(first_token_share=float(per_key_all[0]), top_key_share=float(per_key_all.max()),
                           top_key=int(per_key_all.argmax()), extra_key_share=float(extra[:, :, 1:].mean()),
                           sink_rate=outliers.sink_rate(per_key[None, :, 0], SINK_RATE_THRESHOLD),
                           head_first_token_share=per_key[:, 0].tolist()))
    return layers


def summary(act, att):
    """The one-row summary compare.py tabulates (max over layers, as stated)."""
    best = max(range(len(act)), key=lambda i: act[i]["ratio"])
    return dict(max_top1=max(l["top1"] for l in act), median_at_max_ratio=act[best]["median"],
                max_ratio=act[best]["ratio"], max_ratio_layer=best,
                max_kurtosis=max(l["kurtosis"] for l in act),
                max_first_token_share=max(l["first_token_share"] for l in att),
                max_top_key_share=max(l["top_key_share"] for l in att),
                max_extra_key_share=max(l["extra_key_share"] for l in att),
                sink_rate=sum(l["sink_rate"] for l in att) / len(att))


# --- the emergence verdict: per block and position, what writes the peak, and who reads it as a sink -----------
# A (block, position) holds a systematic outlier at a checkpoint when all of these hold:
#  - ratio: lib.outliers.position_ratios at that position >= SYSTEMATIC_RATIO (the median over sequences of
#    |h[pos, c]| / median |h| for the position's top channel c), and the position holds the block's largest
#    entry in more than HOLDS_MAX_SHARE of the sequences or is fixed by the design (position 0, or the same
#    token in every judged sequence: BOS, the random-first design's fixed token); every position whose ratio
#    passes is judged, not only the largest;
#  - writer: the largest signed contribution to that entry (mean over sequences) is an MLP's, and the
#    embedding holds under EMBED_SHARE of it (attention-written peaks are reported, not counted);
#  - sink: some head of a strictly later block puts > SINK_SHARE of the attention of queries 1..T-1 on it.
# A run holds one when the same (block, position) holds at PERSISTENCE consecutive logged checkpoints.
# Load-bearing (peak_ablation): zeroing the position's massive channels costs >= LOAD_BEARING_NATS more than
# the control (as many channels at another position with a target, mean of CONTROL_DRAWS draws).
SYSTEMATIC_RATIO = analysis.SYSTEMATIC_RATIO
HOLDS_MAX_SHARE = 0.5
SINK_SHARE = 0.5
EMBED_SHARE = 0.1
PERSISTENCE = 3
CONTROL_DRAWS = 5
LOAD_BEARING_NATS = math.log(1.05)  # 5% perplexity


def criteria():
    """The verdict's constants and its rule in words (table.json, README)."""
    return dict(ratio=SYSTEMATIC_RATIO, holds_max_share=HOLDS_MAX_SHARE, sink_share=SINK_SHARE,
                embed_share=EMBED_SHARE, persistence=PERSISTENCE, control_draws=CONTROL_DRAWS,
                load_bearing_nats=LOAD_BEARING_NATS, ratio_variant=outliers.POSITION_RATIO,
                text=(f"a (block, position) whose ratio ({outliers.POSITION_RATIO}) is >= {SYSTEMATIC_RATIO:g}, "
                      f"that holds the block's largest entry in > {HOLDS_MAX_SHARE:.0%} of the sequences or is "
                      f"fixed by the design (position 0, or the same token in every sequence), whose entry an MLP "
                      f"writes (largest signed contribution; the embedding < {EMBED_SHARE:.0%} of it), and on which "
                      f"some head of a strictly later block puts > {SINK_SHARE:g} of the attention of queries "
                      f"1..T-1; held at >= {PERSISTENCE} consecutive logged checkpoints. Load-bearing: zeroing its "
                      f"massive channels (each of whose ratio at that position is >= {SYSTEMATIC_RATIO:g}) costs >= "
                      f"{LOAD_BEARING_NATS:.4f} nats (5% perplexity) more than zeroing as many channels at another "
                      f"position with a target (mean of {CONTROL_DRAWS} draws)"))


def fixed_positions(seqs):
    """Positions fixed by the design: 0, and every position holding the same token in all sequences."""
    same = (seqs == seqs[:1]).all(dim=0) if seqs.shape[0] > 1 else torch.zeros(seqs.shape[1], dtype=torch.bool)
    return sorted({0} | set(torch.nonzero(same).flatten().tolist()))


@torch.no_grad()
def capture(model, seqs):
    """One forward: the points of `captured` that layer_report reads (block outputs, attention weights), and what
    adds up to each block output: parts[name, layer] for the embedding ("embed", 0), each block's attention and
    MLP outputs ("attn", "mlp") and each MLP's hidden units ("unit")."""
    got = captured(model, seqs, ["resid_post", "attn.pattern", "resid_pre", "attn_out", "mlp.down_out", "mlp.act_out"])[1]
    parts = {("embed", 0): got["resid_pre"][0]}
    for i in range(model.config.n_layer):
        parts["attn", i], parts["mlp", i], parts["unit", i] = got["attn_out"][i], got["mlp.down_out"][i], got["mlp.act_out"][i]
    return got, parts


def writer_of(model, parts, layer, p, c):
    """The signed contributions to h[:, p, c] of block `layer`'s output (mean over sequences), the writer (the
    largest |contribution| but the embedding's) and, for an MLP writer, its strongest hidden unit."""
    contrib = {"embed": float(parts["embed", 0][:, p, c].float().mean())}
    for j in range(layer + 1):
        contrib[f"attn{j}"] = float(parts["attn", j][:, p, c].float().mean())
        contrib[f"mlp{j}"] = float(parts["mlp", j][:, p, c].float().mean())
    value = sum(contrib.values())
    writer = max((k for k in contrib if k != "embed"), key=lambda k: abs(contrib[k]))
    row = dict(value=value, contributions=contrib, writer=writer,
               embed_share=abs(contrib["embed"]) / max(abs(value), 1e-30),
               writer_share=contrib[writer] / value if value else 0.0)
    if writer.startswith("mlp"):
        j = int(writer[3:])
        w_down = model.transformer.h[j].mlp.c_proj.weight  # (C, 4C): column k writes unit k into every channel
        per_unit = parts["unit", j][:, p, :].float().mean(0) * w_down[c].float()
        k = int(per_unit.abs().argmax())
        col_ratio = outliers.column_ratios(w_down)  # the paper's weight-outlier measure, per down-projection column
        row.update(unit=k, unit_share=float(per_unit[k]) / contrib[writer] if contrib[writer] else 0.0,
                   unit_column_ratio=float(col_ratio[k]), unit_column_rank=int((col_ratio > col_ratio[k]).sum()) + 1)
    return row


def judge(row, n_layer):
    """The reasons a judged (block, position) row is not a systematic outlier (empty: it is one)."""
    why = []
    if row["position_ratio"] < SYSTEMATIC_RATIO:
        why.append(f"ratio {row['position_ratio']:.0f} < {SYSTEMATIC_RATIO:g}")
    if not row["fixed"] and row["holds_max"] <= HOLDS_MAX_SHARE:
        why.append(f"holds the block's maximum in {row['holds_max']:.0%} of the sequences")
    if not row["writer"].startswith("mlp"):
        why.append(f"written by {row['writer']}, not an MLP")
    if row["embed_share"] >= EMBED_SHARE:
        why.append(f"the embedding holds {row['embed_share']:.0%} of it")
    if row["layer"] == n_layer - 1:
        why.append("last block: no later block to read it")
    elif not row["sink_heads"]:
        later = [s for heads in row["head_shares"][row["layer"] + 1:] for s in heads]
        why.append(f"no head of a later block puts > {SINK_SHARE:g} on it (largest {max(later):.2f})")
    return why


@torch.no_grad()
def layer_report(model, seqs):
    """Per block output: the position-free top-1/median (lib.outliers.top1_ratio_mean), the position with the
    largest POSITION_RATIO, and one row per judged position (every position whose ratio passes, and the
    largest): its ratio, top channel, massive channels, how often it holds the block's maximum, whether the
    design fixes it, its writer, every layer's per-head attention share on it and the heads of later blocks
    that sink on it; then the verdict."""
    got, parts = capture(model, seqs)
    T, n_layer = seqs.shape[1], len(got["resid_post"])
    heads = [head_key_shares(w, T) for w in got["attn.pattern"]]  # per layer, (nh, T)
    fixed = fixed_positions(seqs)
    layers = []
    for l, h in enumerate(got["resid_post"]):
        channel_ratio = outliers.channel_position_ratios(h)
        ratio, channel = channel_ratio.max(dim=1)
        holds = outliers.holds_max_share(h)
        best = int(ratio.argmax())
        rows = []
        for p in sorted(set(torch.nonzero(ratio >= SYSTEMATIC_RATIO).flatten().tolist()) | {best}):
            c = int(channel[p])
            massive = torch.nonzero(channel_ratio[p] >= SYSTEMATIC_RATIO).flatten().tolist()
            row = dict(layer=l, position=p, channel=c, position_ratio=float(ratio[p]), holds_max=float(holds[p]),
                       fixed=p in fixed, channels=massive, **writer_of(model, parts, l, p, c),
                       head_shares=[s[:, p].tolist() for s in heads])
            row["sink_heads"] = [[j, k, s] for j in range(l + 1, n_layer)
                                 for k, s in enumerate(row["head_shares"][j]) if s > SINK_SHARE]
            row["why_not"] = judge(row, n_layer)
            rows.append(row)
        shares = heads[l].mean(0)
        layers.append(dict(layer=l, top1_ratio_mean=outliers.top1_ratio_mean(h),
                           kurtosis=outliers.tensor_excess_kurtosis(h), position=best,
                           channel=int(channel[best]), position_ratio=float(ratio[best]), holds_max=float(holds[best]),
                           top_key=int(shares.argmax()), top_key_share=float(shares.max()),
                           max_head_share=float(heads[l].max()), positions=rows))
    return dict(layers=layers, verdict=verdict(layers),
                max_over_layers=max(r["top1_ratio_mean"] for r in layers), fixed_positions=fixed)


def verdict(layers):
    """The judged (block, position) pairs that hold a systematic outlier, the others with their reasons, and the
    attention-written peaks whose ratio passes (reported, not counted)."""
    found, rejected, attention_written = [], [], []
    for r in (row for layer in layers for row in layer["positions"]):
        if not r["why_not"]:
            found.append(dict(layer=r["layer"], position=r["position"], channel=r["channel"],
                              position_ratio=r["position_ratio"],
                              writer=r["writer"], sink_heads=r["sink_heads"]))
            continue
        if r["position_ratio"] >= SYSTEMATIC_RATIO:
            rejected.append(dict(layer=r["layer"], position=r["position"], why="; ".join(r["why_not"])))
            if r["writer"].startswith("attn"):
                attention_written.append(dict(layer=r["layer"], position=r["position"],
                                              position_ratio=r["position_ratio"],
                                              writer=r["writer"]))
    return dict(outliers=bool(found), found=found, rejected=rejected, attention_written=attention_written)


def persistence(lines):
    """From per-checkpoint verdicts (dicts with 'iter' and 'outlier_positions' [[block, position], ...], in
    order): every run of consecutive checkpoints at which one (block, position) holds, and whether one run
    reaches PERSISTENCE checkpoints."""
    return _streaks([(line["iter"], {b: {p for bb, p in line["outlier_positions"] if bb == b}
                                     for b, _ in line["outlier_positions"]}) for line in lines])


def _streaks(statuses):
    """statuses: [(step, {block: set of positions that hold, or None where it is undecided})]. Runs of
    consecutive checkpoints per (block, position) where the position holds (`held`: decided), and where it holds
    or is undecided (`possible`; position None: undecided throughout)."""
    def runs(block, position, admits):
        found, current = [], None
        for step, status in statuses:
            if admits(status.get(block, set())):
                current = current or dict(layer=block, position=position, first=step, checkpoints=0)
                current.update(last=step, checkpoints=current["checkpoints"] + 1)
            elif current:
                found.append(current)
                current = None
        return found + ([current] if current else [])
    blocks = sorted({b for _, status in statuses for b in status})
    held, possible = [], []
    for b in blocks:
        positions = sorted({p for _, status in statuses for p in (status.get(b) or ())})
        for p in positions:
            held += runs(b, p, lambda s, p=p: s is not None and p in s)
            possible += runs(b, p, lambda s, p=p: s is None or p in s)
        possible += [r for r in runs(b, None, lambda s: s is None)]
    lasting = [s for s in held if s["checkpoints"] >= PERSISTENCE]
    return dict(held=bool(lasting), streaks=sorted(held, key=lambda s: (s["first"], s["layer"], s["position"])),
                possible=sorted([s for s in possible if s["checkpoints"] >= PERSISTENCE],
                                key=lambda s: (s["first"], s["layer"], -1 if s["position"] is None else s["position"])),
                first_held=min((s["first"] for s in lasting), default=None))


# --- judging logs written before the per-position verdict ----------------------------------------------------
# Such a stats.jsonl line holds, per block, the position-free ratio (TOP1_RATIO_MEAN, under the key 'ratio'),
# the most frequent position of each sequence's maximum ('token'), its writer and embedding share, and each
# layer's most attended key with its head-averaged share. What it can decide:
#  - no position of a block passes the ratio when its logged ratio is under `ratio_floor(n_seqs)`: a position
#    whose median over sequences reaches SYSTEMATIC_RATIO has at least n - (n - 1) // 2 sequences whose maximum
#    reaches it;
#  - no head of a layer puts > SINK_SHARE on any key when heads x that layer's top-key share <= SINK_SHARE (a
#    head's share is at most the head average times the number of heads; the training-time share of a key
#    was never below the one over queries 1..T-1).
# Everything else (the fixed-position ratio, how often a position holds the maximum, the writer of positions
# other than the logged one, per-head sinks) needs the checkpoint.

def ratio_floor(n_seqs):
    """The smallest logged position-free ratio of a block one of whose positions can pass SYSTEMATIC_RATIO."""
    return SYSTEMATIC_RATIO * (n_seqs - (n_seqs - 1) // 2) / n_seqs


def logged_status(line, n_head, n_seqs):
    """Per block of one stats.jsonl line (0-based: read through stats_log.as_zero_based): the positions that hold (a line with the per-position
    verdict); for a line logged before it, an empty set where its numbers rule every position out (why in
    the second dict), None where only the checkpoint can decide."""
    layers = line["layers"]
    if "judged" in line:
        return {b: {p for bb, p in line["outlier_positions"] if bb == b} for b in range(len(layers))}, {}
    status, why = {}, {}
    for b, r in enumerate(layers):
        later = [x["top_key_share"] for x in layers[b + 1:]]
        if b == len(layers) - 1:
            why[b] = "last block"
        elif r["ratio"] < ratio_floor(n_seqs):
            why[b] = f"logged ratio {r['ratio']:.1f} < {ratio_floor(n_seqs):.1f}"
        elif all(n_head * s <= SINK_SHARE for s in later):
            why[b] = f"no later layer's top key reaches {SINK_SHARE / n_head:.2f} (head average)"
        status[b] = set() if b in why else None
    return status, why


def logged_peak_passes(line, design_fixed):
    """Blocks (0-based, as stats_log.as_zero_based reads a line) whose logged peak passes every check a line logged before the per-position verdict can
    make, as the old report measured them: position-free ratio >= SYSTEMATIC_RATIO, on a position fixed by
    the design (`design_fixed`; how often another position holds the maximum was not logged), MLP writer,
    embedding share < EMBED_SHARE, and a strictly later layer whose most attended key is that position with
    a head-averaged share > SINK_SHARE. {block: position}."""
    layers, found = line["layers"], {}
    for b, r in enumerate(layers):
        later = [x for x in layers[b + 1:] if x["top_key"] == r["token"] and x["top_key_share"] > SINK_SHARE]
        if (r["ratio"] >= SYSTEMATIC_RATIO and r["token"] in design_fixed and r["writer"].startswith("mlp")
                and r["embed_share"] < EMBED_SHARE and later):
            found[b] = r["token"]
    return found


def run_verdict(lines, n_head, n_seqs, design_fixed=(0,)):
    """A run's verdict from its stats.jsonl lines: 'yes' when one (block, position) holds at PERSISTENCE
    consecutive checkpoints, 'no' when the logs rule that out, else 'not re-judged' (the checkpoints would
    decide). With the held and the still possible runs of checkpoints, the reasons the logs give per
    checkpoint, and (lines logged before the per-position verdict) the runs of checkpoints at which the logged
    peak passes every logged check."""
    statuses, reasons = [], []
    for line in lines:
        status, why = logged_status(line, n_head, n_seqs)
        statuses.append((line["iter"], status))
        reasons.append(dict(iter=line["iter"], **{str(b): w for b, w in why.items()}))
    result = _streaks(statuses)
    old = [l for l in lines if "judged" not in l]
    peaks = _streaks([(l["iter"], {b: {p} for b, p in logged_peak_passes(l, design_fixed).items()}) for l in old])
    verdict_word = "yes" if result["held"] else "no" if not result["possible"] else "not re-judged"
    return dict(verdict=verdict_word, checkpoints=len(lines), logged_before_rule=len(old), held=result["streaks"],
                possible=result["possible"], first_held=result["first_held"], reasons=reasons,
                logged_peak_streaks=peaks["streaks"])


def paired_change(after, before):
    """Mean over sequences of after - before (per-sequence losses) and its standard error over sequences."""
    d = (after - before).double()
    se = float(d.std(unbiased=True) / math.sqrt(len(d))) if len(d) > 1 else None
    return dict(mean=float(d.mean()), se=se)


class Ablator:
    """Per-sequence next-token losses (positions 0..T-2) of `seqs` with entries of one block's output edited, and
    every layer's per-head key shares, for the load-bearing tests."""

    def __init__(self, model, seqs, seed=0):
        self.model, self.seqs = model, seqs
        self.y = torch.cat([seqs[:, 1:], torch.full_like(seqs[:, :1], -1)], dim=1)  # the last position: no target
        self.g = torch.Generator().manual_seed(seed)
        self.base, self.shares = self.run()

    def run(self, layer=None, pos=None, channels=None, values=None):
        """(per-sequence loss (B,), per-layer head shares) with h[:, pos, channels] of block `layer` = values."""
        def edit(h, _):
            h = h.clone()
            h[:, pos, channels] = values
            return h
        lm = CheckpointLM(self.model)
        with Edit(lm, "resid_post", edit, layers=[layer]) if layer is not None else nullcontext():
            (logits, _), got = captured(self.model, self.seqs, ["attn.pattern"], self.y)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), self.y.flatten(), ignore_index=-1,
                                                reduction="none").view(self.y.shape)
        per_seq = nll.sum(1) / (self.y >= 0).sum(1)
        return per_seq, [head_key_shares(w, self.seqs.shape[1]) for w in got["attn.pattern"]]

    def ablate(self, layer, p, channels, means, draws):
        """Block `layer`, position p: `channels` zeroed and set to `means`, against `draws` controls
        that zero as many random channels at a random other position with a target."""
        T, C = self.seqs.shape[1], self.model.config.n_embd
        zeroed, after = self.run(layer, p, channels, 0.0)
        mean_set, _ = self.run(layer, p, channels, means)
        control, where = [], []
        for _ in range(draws):
            targets = [q for q in range(T - 1) if q != p]  # positions with a next token, but p
            q = targets[int(torch.randint(len(targets), (1,), generator=self.g))]
            where.append(q)
            control.append(self.run(layer, q, torch.randperm(C, generator=self.g)[: len(channels)].tolist(), 0.0)[0])
        control_mean = torch.stack(control).mean(0)
        loss, zero_loss, control_loss = float(self.base.mean()), float(zeroed.mean()), float(control_mean.mean())
        return dict(channels=channels, loss=loss, loss_zeroed=zero_loss, loss_mean=float(mean_set.mean()),
                    calibration_means=means.tolist(), loss_control=control_loss,
                    loss_control_draws=[float(c.mean()) for c in control], control_positions=where,
                    cost_zero=paired_change(zeroed, self.base), cost_mean=paired_change(mean_set, self.base),
                    cost_control=paired_change(control_mean, self.base),
                    cost_zero_over_control=paired_change(zeroed, control_mean),
                    load_bearing=(zero_loss - loss) - (control_loss - loss) >= LOAD_BEARING_NATS,
                    share_before=[s[:, p].tolist() for s in self.shares],
                    share_after=[s[:, p].tolist() for s in after])


@torch.no_grad()
def peak_ablation(model, seqs, report, calib, draws=CONTROL_DRAWS, seed=0):
    """Is each judged peak load-bearing? For every judged (block, position) whose ratio passes, before the last
    block: its massive channels (POSITION_RATIO >= SYSTEMATIC_RATIO at that position) in the block's output, in
    every sequence, (a) zeroed and (b) set to their calibration mean (the mean of the entry over `calib`, other
    sequences: Sun et al. find that zeroing breaks an LLM and the mean does not); the control zeroes as many
    random channels at a random other position that has a target (not the last), `draws` times, and reports
    the mean. Loss: next-token loss over positions 0..T-2 of seqs (each cost also paired per sequence, with its
    standard error); shares: every layer's per-head share of the position before and after zeroing."""
    ablator = Ablator(model, seqs, seed)
    calib_hidden = captured(model, calib, ["resid_post"])[1]["resid_post"]
    rows = []
    for r in (row for layer in report["layers"][:-1] for row in layer["positions"]):
        layer, p, channels = r["layer"], r["position"], r["channels"]
        if not channels:
            continue
        means = calib_hidden[layer][:, p, channels].float().mean(0)
        rows.append(dict(layer=layer, position=p, position_ratio=r["position_ratio"], systematic=not r["why_not"],
                         **ablator.ablate(layer, p, channels, means, draws)))
    return rows


@torch.no_grad()
def largest_peak_ablation(model, seqs, report, calib, draws=CONTROL_DRAWS, seed=0):
    """The load-bearing test of the largest peak before the last block, whatever its size: the (block, position)
    with the largest POSITION_RATIO over blocks before the last, its massive channels (each with a POSITION_RATIO
    >= SYSTEMATIC_RATIO there) or, where none reaches that, its top channel alone; tested as peak_ablation tests a judged peak."""
    layer = max(report["layers"][:-1], key=lambda l: l["position_ratio"])
    p = layer["position"]
    row = next(r for r in layer["positions"] if r["position"] == p)
    channels = row["channels"] or [row["channel"]]
    means = captured(model, calib, ["resid_post"])[1]["resid_post"][layer["layer"]][:, p, channels].float().mean(0)
    return dict(layer=layer["layer"], position=p, position_ratio=layer["position_ratio"],
                channels_rule="massive" if row["channels"] else "top channel (none reaches the ratio)",
                **Ablator(model, seqs, seed).ablate(layer["layer"], p, channels, means, draws))


@torch.no_grad()
def final_report(model, seqs, calib):
    """What a run records about its final checkpoint: layer_report on seqs (the per-position verdict, each block
    output's excess kurtosis: VARIANTS['kurtosis']), peak_ablation of the judged peaks and largest_peak_ablation
    (calibration means from calib, sequences the losses are not measured on)."""
    report = layer_report(model, seqs)
    return dict(layers_are=LAYERS_ARE, report=report, ablation=peak_ablation(model, seqs, report, calib),
                largest_peak=largest_peak_ablation(model, seqs, report, calib))


def compact_report(report):
    """The per-step line of stats.jsonl: per block the position-free ratio and the largest position's numbers,
    every judged position with its verdict, and the (block, position) pairs that hold (persistence reads them)."""
    def rounded(d, keys):
        return {k: (round(d[k], 4) if isinstance(d[k], float) else d[k]) for k in keys if k in d}
    layers = [rounded(r, ("top1_ratio_mean", "kurtosis", "position", "channel", "position_ratio", "holds_max", "top_key",
                          "top_key_share", "max_head_share")) for r in report["layers"]]
    judged = [dict(rounded(row, ("layer", "position", "channel", "position_ratio", "holds_max", "fixed", "writer",
                                 "embed_share", "unit")),
                   sink_heads=[[j, k, round(s, 4)] for j, k, s in row["sink_heads"]], why_not=row["why_not"])
              for r in report["layers"] for row in r["positions"]]
    v = report["verdict"]
    return dict(layers_are=LAYERS_ARE, layers=layers, judged=judged, outliers=v["outliers"],
                outlier_positions=[[x["layer"], x["position"]] for x in v["found"]],
                max_over_layers=round(report["max_over_layers"], 4))
