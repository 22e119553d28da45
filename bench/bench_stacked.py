"""Training several small GPTs at once on a CPU: two 1-thread processes against K models stacked in one process.

    python bench/bench_stacked.py [--n_layer=3 --n_embd=128 --n_head=2 --block_size=64 --batch_size=8
                                   --steps=60 --stacks=2,4,8 --threads=2]

A grid of small runs can use the CPU's cores two ways: one training process per core, each with one thread, or
one process that trains K models as one, their weights stacked along a leading dimension so that each matrix
product is one batched product over the models (StackedGPT below), with all the threads. (torch.func.vmap over
the GPT itself is slower still: it has no batching rule for the CPU's fused attention and loops over the models.) Stacking is also measured inside each of the two 1-thread processes. Prints model-steps per second of each
way and their ratio to the two plain processes, and one run's cost per step with AdamW and with Muon; writes
bench/results/stacked.json with the machine's load (lib.machine_load). The separate processes train gpt-2/model.py's
default GPT, at the factorial study's size by default; each step is forward, backward and one AdamW step.
"""
import argparse
import statistics
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "gpt-2"))
from lib import machine_load  # noqa: E402
from lib.errors import UserError, user_errors_exit  # noqa: E402
from lib.files import write_json  # noqa: E402
from lib.provenance import provenance  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

VOCAB = 65


def config(a):
    return GPTConfig(block_size=a.block_size, vocab_size=VOCAB, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                     pos_emb="none")


def batch(a, k=None):
    shape = (a.batch_size, a.block_size) if k is None else (k, a.batch_size, a.block_size)
    return torch.randint(0, VOCAB, shape), torch.randint(0, VOCAB, shape)


def steps_per_second(loss, opts, steps):
    """Training steps (backward of loss(), then each optimizer's step) per second over `steps` steps, after 5."""
    def step():
        loss().backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def one_model_steps_per_second(a, optimizer="adamw"):
    """One model, one thread: steps per second over a.steps steps after 5 warm-up steps, with the optimizer(s)
    train.py makes for `optimizer` (adamw, or muon: Muon on the blocks' matrices and AdamW on the rest)."""
    torch.set_num_threads(1)
    model = GPT(config(a))
    opts = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", optimizer, muon_lr=1e-3)
    x, y = batch(a)

    return steps_per_second(lambda: model(x, y)[1], opts, a.steps)


def two_processes(a, stack=1):
    """Model-steps per second of two 1-thread processes side by side (each times its own steps), each training
    one GPT (stack 1) or `stack` models stacked (StackedGPT)."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--single={stack}"] + [
        f"--{k}={v}" for k, v in vars(a).items() if k in ("n_layer", "n_embd", "n_head", "block_size", "batch_size",
                                                           "steps")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    rates = [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a timing process failed")
    return sum(rates)


class StackedGPT(torch.nn.Module):
    """K copies of the default-attention GPT (pre-LayerNorm, no biases, no positions, tied embedding) with their
    weights stacked along a leading dimension: every matrix product is one batched product over the K models,
    and attention is one fused SDPA call over K x batch sequences. The same arithmetic as K separate GPTs."""

    def __init__(self, k, c):
        super().__init__()
        def stacked(*shape):
            return torch.nn.Parameter(0.02 * torch.randn(k, *shape))
        C, L = c.n_embd, c.n_layer
        self.nh = c.n_head
        self.wte = stacked(VOCAB, C)
        self.qkv, self.proj = stacked(L, C, 3 * C), stacked(L, C, C)
        self.up, self.down = stacked(L, C, 4 * C), stacked(L, 4 * C, C)

    def forward(self, idx, targets):
        K, B, T = idx.shape
        x = torch.stack([self.wte[i][idx[i]] for i in range(K)])  # (K, B, T, C)
        C = x.shape[-1]
        norm = torch.nn.functional.layer_norm
        for l in range(self.qkv.shape[1]):
            h = norm(x, (C,)).view(K, B * T, C)
            q, k, v = torch.bmm(h, self.qkv[:, l]).view(K * B, T, 3, self.nh, C // self.nh).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + torch.bmm(y.transpose(1, 2).reshape(K, B * T, C), self.proj[:, l]).view(K, B, T, C)
            h = torch.nn.functional.gelu(torch.bmm(norm(x, (C,)).view(K, B * T, C), self.up[:, l]))
            x = x + torch.bmm(h, self.down[:, l]).view(K, B, T, C)
        logits = torch.bmm(norm(x, (C,)).view(K, B * T, C), self.wte.transpose(1, 2))
        return torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1)) * K


def stacked_model_steps_per_second(a, k, threads):
    """K models stacked in one process with `threads` threads: model-steps per second."""
    torch.set_num_threads(threads)
    model = StackedGPT(k, config(a))
    x, y = batch(a, k)
    return k * steps_per_second(lambda: model(x, y), [torch.optim.AdamW(model.parameters(), lr=1e-3)], a.steps)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_layer", type=int, default=3)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--stacks", default="2,4,8", help="comma-separated numbers of stacked models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds of every way, interleaved; the median is kept")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "stacked.json"))
    p.add_argument("--allow-loaded", action="store_true", help="write even when other work loads the machine")
    p.add_argument("--single", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.single:
        print(one_model_steps_per_second(a) if a.single == 1 else stacked_model_steps_per_second(a, a.single, 1))
        return None
    if a.repeats < 1 or a.steps < 1 or a.threads < 1:
        raise UserError("--repeats, --steps and --threads must be >= 1")
    stacks = [int(s) for s in a.stacks.split(",")]
    ways = {"two 1-thread processes": (2, lambda: two_processes(a))}
    for optimizer in ("adamw", "muon"):  # one process, one thread: what a single run costs per step
        ways[f"one 1-thread process, {optimizer}"] = (1, lambda o=optimizer: one_model_steps_per_second(a, o))
    for k in stacks:
        ways[f"two 1-thread processes, {k} stacked in each"] = (2 * k, lambda k=k: two_processes(a, k))
        ways[f"{k} stacked, one process, {a.threads} threads"] = (k, lambda k=k: stacked_model_steps_per_second(
            a, k, a.threads))
    load = machine_load.check_before(a.out, a.allow_loaded)
    measured = {way: [] for way in ways}
    for _ in range(a.repeats):  # interleaved, so that a change of the machine's load touches every way alike
        for way, (_, measure) in ways.items():
            measured[way].append(measure())
    reference = statistics.median(measured["two 1-thread processes"])
    rows = []
    for way, (models, _) in ways.items():
        rate = statistics.median(measured[way])
        rows.append(dict(way=way, models=models, model_steps_per_s=rate, ms_per_model_step=1000 / rate,
                         ratio=rate / reference, rounds=measured[way]))
    for r in rows:
        print(f"{r['way']:<40} {r['model_steps_per_s']:8.1f} model-steps/s   {r['ratio']:.2f}x")
    result = dict(settings={k: v for k, v in vars(a).items() if k not in ("out", "single", "allow_loaded")},
                  rows=rows, machine_load=machine_load.check_after(a.out, load, a.allow_loaded),
                  provenance=provenance(command="python bench/bench_stacked.py " + " ".join(argv)))
    write_json(a.out, result)
    return result


if __name__ == "__main__":
    with user_errors_exit("bench_stacked.py"):
        main(sys.argv[1:])
