"""Training throughput of gpt-2/model.py's attention variants, as ratios.

    OMP_NUM_THREADS=1 python bench/bench_gpt2_variants.py [--n_layer=4 --n_embd=128 --n_head=4 --block_size=256
                                                            --batch_size=8 --steps=10 --repeats=3 --device=cpu]

Prints tokens/s of default relative to a plain SDPA GPT written below (same size, same optimizer step), and
of every variant relative to default. Each configuration is timed `repeats` times, interleaved, and the
median is kept, so the ratios survive a machine shared with other work.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "gpt-2"))
from lib import machine_load  # noqa: E402
from lib.errors import user_errors_exit  # noqa: E402
from lib.files import write_json  # noqa: E402
from lib.provenance import provenance  # noqa: E402
from model import GPT, VARIANTS, GPTConfig  # noqa: E402


class PlainBlock(nn.Module):
    """The straightforward pre-LN block with fused causal SDPA that the default variant is measured against."""

    def __init__(self, d, nh):
        super().__init__()
        self.nh = nh
        self.n1, self.n2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.nh, C // self.nh).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.n2(x))))


class PlainGPT(nn.Module):

    def __init__(self, vocab, block, n_layer, d, nh):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(PlainBlock(d, nh) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.norm(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def time_model(model, args, device, dtype=None):
    """Tokens/s of `steps` AdamW training steps (after 2 warm-up steps); under autocast to `dtype` if given."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size + 1), generator=g).to(device)

    def step():
        with torch.autocast(torch.device(device).type, dtype, enabled=dtype is not None):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size * args.block_size / (time.perf_counter() - t0)


def measure(models, args, device, dtype=None) -> dict:
    """Median tokens/s of each model over `repeats` timings, interleaved, so that drifts in machine load hit every
    model alike."""
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, m in models.items():
            times[name].append(time_model(m, args, device, dtype))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join("bench", "results", "gpt2_variants.json"),
                   help="where the ratios are written (JSON, with the command)")
    p.add_argument("--allow-loaded", action="store_true", help=machine_load.ALLOW_LOADED_HELP)
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or "default" not in variants:
        p.error(f"--variants must include default and only name {', '.join(VARIANTS)}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    load = machine_load.check_before(args.out, args.allow_loaded)
    torch.manual_seed(0)
    models = {"plain_sdpa": PlainGPT(args.vocab_size, args.block_size, args.n_layer, args.n_embd, args.n_head)}
    for v in variants:
        models[v] = GPT(GPTConfig(block_size=args.block_size, vocab_size=args.vocab_size, n_layer=args.n_layer,
                                  n_head=args.n_head, n_embd=args.n_embd, attention=v))
    for m in models.values():
        m.to(args.device).train()
    tps = measure(models, args, args.device)
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.n_layer} layers x {args.n_embd} wide, "
          f"{args.n_head} heads, T={args.block_size}, batch {args.batch_size}; median of {args.repeats} x {args.steps} steps")
    print(f"plain SDPA GPT: {tps['plain_sdpa']:,.0f} tok/s")
    print(f"default / plain SDPA GPT: {tps['default'] / tps['plain_sdpa']:.3f}")
    for v in variants:
        print(f"{v:>11s} / default: {tps[v] / tps['default']:.3f}   ({tps[v]:,.0f} tok/s)")
    prov = provenance(device=args.device, dtype="float32")
    prov["machine_load"] = machine_load.check_after(args.out, load, args.allow_loaded)
    command = "python " + " ".join(sys.argv if argv is None else [__file__, *argv])
    write_json(args.out, {"command": command, "settings": vars(args),
                          "threads": torch.get_num_threads(), "tokens_per_s": tps,
                          "default_vs_plain_sdpa": tps["default"] / tps["plain_sdpa"],
                          "variant_vs_default": {v: tps[v] / tps["default"] for v in variants},
                          "provenance": prov})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with user_errors_exit("bench_gpt2_variants"):
        main()
