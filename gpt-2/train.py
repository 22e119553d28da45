"""Train a GPT with a chosen attention variant (nanoGPT-style).

Single process:   python train.py config/train_backcopy.py --attention=sigmoid
Resume a run:     python train.py config/train_backcopy.py --init_from=resume
Multi-GPU (DDP):  torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_default.py

Relative paths (out_dir, dataset) are relative to gpt-2/. Checkpoints are out_dir/ckpt_<iter>.pt, holding the
state after <iter> optimizer steps; --init_from=resume continues from the newest one.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.gpt2_checkpoints import checkpoints, read_checkpoint
from lib.gpt2_data import load_meta
from dataset import Batches, FreshBatches
from model import GPT, ConfigError, GPTConfig
from outlier_stats import compact_report, final_report, layer_report

# The defaults are the paper's setup: GPT-2 124M on OpenWebText, ~0.5M tokens per step, analysed at 50k steps.
DEFAULTS = dict(
    # I/O
    out_dir="out", eval_interval=1000, log_interval=10, eval_iters=200, eval_only=False,
    always_save_checkpoint=True, keep_checkpoints=3, init_from="scratch",  # 'scratch' or 'resume'
    overwrite=False,  # a fresh run in an out_dir holding another run first moves that run aside
    wandb_log=False, wandb_project="systematic-outliers", wandb_run_name="gpt2",
    # data
    dataset="openwebtext", gradient_accumulation_steps=5 * 8, batch_size=12, block_size=1024,
    fresh_data=False,  # draw new sequences of a synthetic task at every step (dataset.FreshBatches)
    # model
    n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False, attention="default",
    clip_gamma=-0.03, clip_zeta=1.0, pos_emb="learned", norm="layernorm",
    # optimizer: 'adamw'; 'sgd' with momentum; or 'muon' (Muon at muon_lr on the blocks' 2-D weights, AdamW at
    # learning_rate on the rest; muon_lr 0 means learning_rate). The schedule (linear warmup, cosine decay to
    # min_lr) scales every rate alike.
    optimizer="adamw", momentum=0.9, muon_lr=0.0,
    learning_rate=6e-4, max_iters=50000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=2000, lr_decay_iters=50000, min_lr=6e-5,
    # outlier statistics per layer (outlier_stats.layer_report) every stats_interval steps into stats.jsonl
    stats_interval=0, stats_seqs=64,
    # system; max_seconds > 0 stops (evaluating and saving) once training has run that long
    backend="nccl", device="auto", dtype="auto", compile=False, seed=1337, max_seconds=0.0,
)
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "attention", "clip_gamma", "clip_zeta",
              "pos_emb", "norm")
OPTIMIZERS = ("adamw", "sgd", "muon")
RUN_FILES = ("train_log.jsonl", "stats.jsonl")  # with ckpt_<iter>.pt: what marks a folder as holding a run


class Diverged(Exception):
    pass


# --- settings --------------------------------------------------------------------------------------------------

def validate(c):
    """Reject bad settings before anything starts (the model's own through GPTConfig's checks)."""
    model_config({k: getattr(c, k) for k in MODEL_KEYS})
    if c.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    if c.muon_lr < 0 or (c.muon_lr and c.optimizer != "muon"):
        raise UserError("muon_lr is Muon's rate: >= 0, and only with --optimizer=muon")
    if c.stats_interval < 0 or c.stats_seqs < 1 or c.max_seconds < 0:
        raise UserError("stats_interval and max_seconds must be >= 0, stats_seqs >= 1")
    if c.init_from not in ("scratch", "resume"):
        raise UserError(f"init_from must be 'scratch' or 'resume', got {c.init_from!r}")
    for key in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval",
                "keep_checkpoints"):
        if getattr(c, key) < 1:
            raise UserError(f"{key} must be >= 1, got {getattr(c, key)}")
    if c.max_iters < 0 or c.learning_rate <= 0:
        raise UserError("max_iters must be >= 0 and learning_rate > 0")
    if c.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {c.dtype!r}")


def model_config(model_args):
    try:
        return GPTConfig.from_dict(model_args)
    except ConfigError as e:
        raise UserError(str(e))


def get_lr(it, c):
    """Linear warmup, then cosine decay from learning_rate to min_lr at lr_decay_iters."""
    if not c.decay_lr:
        return c.learning_rate
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    ratio = (it - c.warmup_iters) / max(1, c.lr_decay_iters - c.warmup_iters)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.learning_rate - c.min_lr)


# --- setup: this process, its device and precision -------------------------------------------------------------

@dataclass
class Process:
    """Where this process trains: rank `rank` of `world` (several only under torchrun), device and precision."""
    ddp: bool
    rank: int
    local_rank: int
    world: int
    device: str
    dtype: str

    @property
    def master(self):  # the process that prints, logs and writes checkpoints
        return self.rank == 0

    @property
    def device_type(self):
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def __post_init__(self):
        ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
        self.ctx = nullcontext() if self.dtype == "float32" else torch.autocast(self.device_type, dtype=ptdtype)


def setup(c):
    """The Process this one is; under torchrun (RANK set) it joins the process group."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")) if ddp else (0, 0, 1)
    if not ddp:
        device = c.device if c.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    elif c.device == "cpu" or (c.device == "auto" and not torch.cuda.is_available()):
        device = "cpu"
    else:
        device = f"cuda:{local_rank}"
    proc = Process(ddp, rank, local_rank, world, device, precision(c, device))
    if ddp:
        join_process_group(c, proc)
    if proc.device_type == "cpu" and "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if proc.device_type == "cuda":  # float32 means float32; TF32 only where autocast lowers precision anyway
        torch.backends.cuda.matmul.allow_tf32 = proc.dtype != "float32"
        torch.backends.cudnn.allow_tf32 = proc.dtype != "float32"
    return proc


def join_process_group(c, proc):
    """Join the torchrun processes; each then runs gradient_accumulation_steps / world of the micro-steps."""
    if proc.device == "cpu" and c.backend == "nccl":
        raise UserError("multi-process training on CPU needs --backend=gloo (nccl is GPU-only)")
    if c.max_seconds:
        raise UserError("max_seconds is for single-process runs (the processes would stop at different steps)")
    if c.gradient_accumulation_steps % proc.world:
        raise UserError(f"gradient_accumulation_steps ({c.gradient_accumulation_steps}) must be divisible by the "
                        f"{proc.world} processes")
    if proc.device_type == "cuda":
        torch.cuda.set_device(proc.device)
    from torch.distributed import init_process_group
    init_process_group(backend=c.backend)
    c.gradient_accumulation_steps //= proc.world


def precision(c, device):
    """The dtype name training runs in: float32 on CPU; on a GPU bfloat16 where supported, else float16 (auto)."""
    if not device.startswith("cuda"):
        if c.dtype not in ("auto", "float32"):
            raise UserError("on CPU this trainer runs in float32; use --dtype=float32 (or auto)")
        return "float32"
    if c.dtype == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return c.dtype


def claim_out_dir(out_dir, c):
    """Make out_dir for this run. A fresh run (init_from='scratch') refuses a folder that holds another run
    (checkpoints or logs), since it would append to that run's logs and prune its checkpoints, unless
    overwrite=True, which first moves the old run aside to out_dir.old-<time>."""
    held = [f for f in sorted(os.listdir(out_dir)) if f in RUN_FILES or f.startswith("ckpt_")] \
        if os.path.isdir(out_dir) else []
    if c.init_from == "scratch" and held:
        if not c.overwrite:
            raise UserError(f"{out_dir} holds another run ({', '.join(held[:3])}); continue it with "
                            f"--init_from=resume, or start afresh with --overwrite=True (moves it aside)")
        aside = f"{out_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(out_dir, aside)
        print(f"moved the earlier run in {out_dir} to {aside}")
    os.makedirs(out_dir, exist_ok=True)


# --- setup: model, optimizer and data, fresh or from a checkpoint ------------------------------------------------

@dataclass
class State:
    """What a checkpoint restores: the architecture, the (unwrapped) model, its optimizer, the training batches'
    generator and the progress."""
    model_args: dict
    model: GPT
    optimizers: list  # model.configure_optimizers' list (one; two for muon)
    batches: object  # dataset.Batches or dataset.FreshBatches
    iter_num: int = 0
    best_val_loss: float = float("inf")


def init_state(c, proc, out_dir):
    """A fresh State, or with --init_from=resume the one in the newest checkpoint of out_dir (whose architecture
    wins over the command line)."""
    torch.manual_seed(c.seed + proc.rank)
    meta = load_meta(c.dataset)
    batches = training_batches(c, proc)
    model_args = {k: getattr(c, k) for k in MODEL_KEYS}
    model_args["vocab_size"] = meta.get("vocab_size", 50304)
    ckpt = newest_checkpoint(out_dir, proc) if c.init_from == "resume" else None
    if ckpt is not None:
        model_args = ckpt["model_args"]
    model = GPT(model_config(model_args))
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(proc.device)
    if ckpt is not None and ckpt["config"].get("optimizer", "adamw") != c.optimizer:
        raise UserError(f"the run in {out_dir} trains with --optimizer={ckpt['config'].get('optimizer', 'adamw')}; "
                        f"resume it with that optimizer")
    optimizers = model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), proc.device_type,
                                            c.optimizer, c.momentum, c.muon_lr or c.learning_rate)
    state = State(model_args, model, optimizers, batches)
    if ckpt is not None:
        restore(state, ckpt, proc.rank)
    return state


def training_batches(c, proc):
    """This rank's training batches, seeded by rank: from train.bin, or (fresh_data) sampled anew from the task."""
    if c.fresh_data:
        return FreshBatches(c.dataset, c.batch_size, c.block_size, c.seed + proc.rank, proc.device)
    return Batches(c.dataset, "train", c.batch_size, c.block_size, c.seed + proc.rank, proc.device)


def newest_checkpoint(out_dir, proc):
    found = checkpoints(out_dir)
    if not found:
        raise UserError(f"--init_from=resume but no ckpt_<iter>.pt in {out_dir}")
    print(f"resuming from {found[-1][1]}") if proc.master else None
    return read_checkpoint(found[-1][1], proc.device)


def restore(state, ckpt, rank):
    """Continue where the checkpoint stopped: optimizer, this rank's batch generator, torch's generator."""
    saved = ckpt["optimizer"] if isinstance(ckpt["optimizer"], list) else [ckpt["optimizer"]]
    for opt, opt_state in zip(state.optimizers, saved, strict=True):
        opt.load_state_dict(opt_state)
    state.batches.set_state(ckpt["batch_rng"][rank] if rank < len(ckpt["batch_rng"]) else ckpt["batch_rng"][0])
    torch.set_rng_state(ckpt["torch_rng"].cpu())  # map_location moved it to the device
    state.iter_num, state.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]


def wrap(model, c, proc):
    """The model the training steps call: compiled if asked, inside DDP under torchrun."""
    if c.compile:
        print("compiling the model...") if proc.master else None
        model = torch.compile(model)
    if proc.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[proc.local_rank] if proc.device_type == "cuda" else None)
    return model


# --- step, evaluate, log ----------------------------------------------------------------------------------------

def train_step(model, state, scaler, c, proc):
    """One optimizer step over gradient_accumulation_steps micro-batches; returns the last micro-batch's loss."""
    for micro_step in range(c.gradient_accumulation_steps):
        X, Y = state.batches.next()
        if proc.ddp:  # only sync gradients on the last micro step
            model.require_backward_grad_sync = micro_step == c.gradient_accumulation_steps - 1
        with proc.ctx:
            _, loss = model(X, Y)
            loss = loss / c.gradient_accumulation_steps
        scaler.scale(loss).backward()
    if c.grad_clip > 0:
        for opt in state.optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
    for opt in state.optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in state.optimizers:
        opt.zero_grad(set_to_none=True)
    return loss.item() * c.gradient_accumulation_steps


@torch.no_grad()
def estimate_loss(model, c, proc):
    """Mean loss over eval_iters batches per split, drawn with fixed seeds (the same batches every eval)."""
    out = {}
    model.eval()
    for split in ("train", "val"):
        batches = Batches(c.dataset, split, c.batch_size, c.block_size, 1000 + (split == "val"), proc.device)
        losses = torch.zeros(c.eval_iters)
        for k in range(c.eval_iters):
            X, Y = batches.next()
            with proc.ctx:
                losses[k] = model(X, Y)[1].item()
        out[split] = losses.mean().item()
    model.train()
    return out


def log_eval(out_dir, iter_num, losses, lr, tokens_per_sec, wandb):
    """Print an evaluation, append it to out_dir/train_log.jsonl and to wandb when logging there."""
    print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    with open(os.path.join(out_dir, "train_log.jsonl"), "a") as f:
        f.write(json.dumps(dict(iter=iter_num, eval=losses, tokens_per_sec=tokens_per_sec)) + "\n")
    if wandb:
        wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})


class Throughput:
    """Training tokens per second between log lines; evaluation and checkpoint time do not count."""

    def __init__(self, tokens_per_iter):
        self.tokens_per_iter, self.tokens_per_sec = tokens_per_iter, None
        self.pause()

    def pause(self):
        self.started, self.iters = None, 0

    def start(self):
        if self.started is None:
            self.started = time.time()

    def measure(self):
        """Milliseconds per iteration since the last measure; updates tokens_per_sec."""
        dt = time.time() - self.started
        self.tokens_per_sec = self.iters * self.tokens_per_iter / dt
        ms = 1000 * dt / self.iters
        self.started, self.iters = time.time(), 0
        return ms


class StatsLog:
    """Per-layer outlier statistics (outlier_stats.layer_report) on fixed validation sequences, a line per call
    in out_dir/stats.jsonl."""

    def __init__(self, c, proc, out_dir, iter_num):
        val = Batches(c.dataset, "val", 1, c.block_size, 0)
        self.seqs = val.sequences(min(c.stats_seqs, val.available(c.block_size)), c.block_size).to(proc.device)
        self.path, self.ctx = os.path.join(out_dir, "stats.jsonl"), proc.ctx
        keep_log_before(self.path, iter_num)  # a resumed run rewrites what came after its checkpoint

    def write(self, model, raw_model, iter_num):
        model.eval()
        with self.ctx:
            report = layer_report(raw_model, self.seqs)
        model.train()
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(iter=iter_num, **compact_report(report))) + "\n")


def write_final(model, c, proc, out_dir, iter_num, losses):
    """out_dir/final.json: outlier_stats.final_report of the model at its last step (the verdict, kurtosis and the
    load-bearing tests) on the stats_seqs validation sequences StatsLog uses, with calibration means from the
    next stats_seqs, and the final losses; with provenance."""
    from lib.files import write_json
    from lib.provenance import provenance
    val = Batches(c.dataset, "val", 1, c.block_size, 0)
    n = min(c.stats_seqs, val.available(c.block_size) // 2)
    both = val.sequences(2 * n, c.block_size).to(proc.device)
    model.eval()
    with proc.ctx:
        report = final_report(model, both[:n], both[n:])
    model.train()
    write_json(os.path.join(out_dir, "final.json"), dict(iter=iter_num, losses=losses, **report,
                                                         provenance=provenance(data=dict(dataset=c.dataset, seqs=n))))
    print(f"wrote {os.path.join(out_dir, 'final.json')}")


def keep_log_before(path, iter_num):
    """Drop the lines of a JSON-lines log (stats.jsonl, train_log.jsonl) of iterations >= iter_num: written at or
    after the checkpoint a run resumes from, they are written again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["iter"] < iter_num]
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


# --- checkpoint -------------------------------------------------------------------------------------------------

def atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(state, c, proc, out_dir, losses, tokens_per_sec):
    """out_dir/ckpt_<iter>.pt with every rank's batch generator (a collective: all ranks call it), written by
    rank 0, which then drops all but the newest keep_checkpoints."""
    batch_rng = [state.batches.get_state()]
    if proc.ddp:
        import torch.distributed as dist
        batch_rng = [None] * proc.world
        dist.all_gather_object(batch_rng, state.batches.get_state())
    if not proc.master:
        return
    ckpt = dict(model=state.model.state_dict(), optimizer=[opt.state_dict() for opt in state.optimizers],
                model_args=state.model_args,
                iter_num=state.iter_num, best_val_loss=state.best_val_loss, config=vars(c), batch_rng=batch_rng,
                torch_rng=torch.get_rng_state(), losses=losses, tokens_per_sec=tokens_per_sec)
    path = os.path.join(out_dir, f"ckpt_{state.iter_num}.pt")
    atomic_save(ckpt, path)
    for _, old in checkpoints(out_dir)[:-c.keep_checkpoints]:
        os.remove(old)
    print(f"saved {path}")


# --- the run ----------------------------------------------------------------------------------------------------

def main(argv):
    from lib.provenance import git_state
    git_state()  # read once per process: final.json records the commit of the code this process loaded, not a later one
    c = SimpleNamespace(**configure(DEFAULTS, argv))
    validate(c)
    proc = setup(c)
    out_dir = resolve_path(c.out_dir)
    tokens_per_iter = c.gradient_accumulation_steps * proc.world * c.batch_size * c.block_size
    if proc.master:
        claim_out_dir(out_dir, c)
        print(f"tokens per iteration: {tokens_per_iter:,}  device: {proc.device}  dtype: {proc.dtype}")
    state = init_state(c, proc, out_dir)
    scaler = torch.amp.GradScaler(proc.device_type, enabled=(proc.dtype == "float16"))
    model = wrap(state.model, c, proc)
    if proc.master:
        print(f"model: {c.attention} attention, {state.model.get_num_params() / 1e6:.2f}M parameters")
    wandb = None
    if c.wandb_log and proc.master:
        import wandb
        wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=vars(c))
    if proc.master:  # the resume step's evaluation is logged again only where it is due (a max_seconds stop's is not)
        relogged = state.iter_num % c.eval_interval == 0 or state.iter_num == c.max_iters
        keep_log_before(os.path.join(out_dir, "train_log.jsonl"), state.iter_num + (not relogged))
    stats = StatsLog(c, proc, out_dir, state.iter_num) if c.stats_interval and proc.master else None
    speed, history, started, last_iter = Throughput(tokens_per_iter), {}, time.time(), c.max_iters
    model.train()
    while True:
        lr = get_lr(state.iter_num, c)
        for opt in state.optimizers:  # each group's own rate, scaled as the schedule scales learning_rate
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr / c.learning_rate
        if stats and state.iter_num % c.stats_interval == 0:
            stats.write(model, state.model, state.iter_num)
        if c.max_seconds > 0 and time.time() - started > c.max_seconds:
            print(f"max_seconds ({c.max_seconds:g}) reached at iteration {state.iter_num}") if proc.master else None
            last_iter = state.iter_num  # evaluate and save here, then stop
        eval_due = state.iter_num % c.eval_interval == 0 or state.iter_num == last_iter
        if eval_due and (c.eval_only or state.iter_num > 0):
            losses = estimate_loss(model, c, proc)
            if proc.master:
                log_eval(out_dir, state.iter_num, losses, lr, speed.tokens_per_sec, wandb)
            if c.eval_only:
                break
            if losses["val"] < state.best_val_loss or c.always_save_checkpoint:
                state.best_val_loss = min(state.best_val_loss, losses["val"])
                save_checkpoint(state, c, proc, out_dir, losses, speed.tokens_per_sec)
            speed.pause()
        if state.iter_num >= last_iter:
            if stats and state.iter_num == c.max_iters and not c.eval_only:
                write_final(state.model, c, proc, out_dir, state.iter_num, losses)
            break
        speed.start()
        lossf = train_step(model, state, scaler, c, proc)
        if not math.isfinite(lossf):
            raise Diverged(f"loss is {lossf} at iteration {state.iter_num}; stopping. Lower learning_rate or resume "
                           f"from the last checkpoint in {out_dir}")
        history[state.iter_num] = lossf
        state.iter_num += 1
        speed.iters += 1
        if state.iter_num % c.log_interval == 0 and proc.master:
            ms = speed.measure()
            print(f"iter {state.iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {ms:.1f} ms/iter, "
                  f"{speed.tokens_per_sec:,.0f} tok/s")
    if proc.ddp:
        import gc
        import torch.distributed as dist
        dist.barrier()  # every process is done with its last collective before any closes its connections
        # DDP's reducer holds the process group: freed only at interpreter exit, after the group is destroyed, its
        # gloo threads could be torn down out of order ("terminate called without an active exception")
        del model
        gc.collect()
        dist.destroy_process_group()
    return history


if __name__ == "__main__":
    try:
        with user_errors_exit("train.py"):
            main(sys.argv[1:])
    except Diverged as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(3)
