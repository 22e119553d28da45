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
import torch

SINK_RATE_THRESHOLD = 0.3


def load_model(path, device="cpu"):
    """A GPT from a train.py checkpoint; returns (model, checkpoint dict)."""
    import os
    from configurator import UserError
    from model import GPT, GPTConfig
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        model = GPT(GPTConfig.from_dict(ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except UserError:
        raise
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
    for h in out["hidden"]:  # (B, T, C)
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
    for w in out["attn"]:  # (B, nh, T, T) or (B, nh, T, T+1) with the extra key first
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
