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

import torch

from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.gpt2_checkpoints import checkpoints, read_checkpoint
from lib.gpt2_data import load_meta
from dataset import Batches, FreshBatches
from model import GPT, POSITIONS, VARIANTS, ConfigError, GPTConfig
from outlier_stats import compact_report, layer_report

# The defaults are the paper's setup: GPT-2 124M on OpenWebText, ~0.5M tokens per step, analysed at 50k steps.
DEFAULTS = dict(
    # I/O
    out_dir="out", eval_interval=1000, log_interval=10, eval_iters=200, eval_only=False,
    always_save_checkpoint=True, keep_checkpoints=3, init_from="scratch",  # 'scratch' or 'resume'
    wandb_log=False, wandb_project="systematic-outliers", wandb_run_name="gpt2",
    # data
    dataset="openwebtext", gradient_accumulation_steps=5 * 8, batch_size=12, block_size=1024,
    fresh_data=False,  # draw new sequences of a synthetic task at every step (dataset.FreshBatches)
    # model
    n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False, attention="default",
    clip_gamma=-0.03, clip_zeta=1.0, pos_emb="learned",
    # optimizer ('adamw', or 'sgd' with momentum) and the learning-rate schedule (linear warmup, cosine decay to min_lr)
    optimizer="adamw", momentum=0.9,
    learning_rate=6e-4, max_iters=50000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
    decay_lr=True, warmup_iters=2000, lr_decay_iters=50000, min_lr=6e-5,
    # outlier statistics per layer (outlier_stats.layer_report) every stats_interval steps into stats.jsonl
    stats_interval=0, stats_seqs=64,
    # system; max_seconds > 0 stops (evaluating and saving) once training has run that long
    backend="nccl", device="auto", dtype="auto", compile=False, seed=1337, max_seconds=0.0,
)
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "attention", "clip_gamma", "clip_zeta",
              "pos_emb")


class Diverged(Exception):
    pass


def get_lr(it, c):
    if not c["decay_lr"]:
        return c["learning_rate"]
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / max(1, c["lr_decay_iters"] - c["warmup_iters"])
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["learning_rate"] - c["min_lr"])


def atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def keep_stats_before(path, iter_num):
    """Drop the stats.jsonl lines of iterations >= iter_num (written after the checkpoint a run resumes from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["iter"] < iter_num]
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def validate(c):
    if c["attention"] not in VARIANTS:
        raise UserError(f"unknown attention variant {c['attention']!r}; choose one of {', '.join(VARIANTS)}")
    if c["pos_emb"] not in POSITIONS:
        raise UserError(f"unknown pos_emb {c['pos_emb']!r}; choose one of {', '.join(POSITIONS)}")
    if c["optimizer"] not in ("adamw", "sgd"):
        raise UserError(f"optimizer must be 'adamw' or 'sgd', got {c['optimizer']!r}")
    if c["stats_interval"] < 0 or c["stats_seqs"] < 1 or c["max_seconds"] < 0:
        raise UserError("stats_interval and max_seconds must be >= 0, stats_seqs >= 1")
    if c["init_from"] not in ("scratch", "resume"):
        raise UserError(f"init_from must be 'scratch' or 'resume', got {c['init_from']!r}")
    for key in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval", "keep_checkpoints"):
        if c[key] < 1:
            raise UserError(f"{key} must be >= 1, got {c[key]}")
    if c["max_iters"] < 0 or c["learning_rate"] <= 0:
        raise UserError("max_iters must be >= 0 and learning_rate > 0")
    if c["dtype"] not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {c['dtype']!r}")


def main(argv):
    c = configure(DEFAULTS, argv)
    validate(c)
    # --- distributed setup -------------------------------------------------------------------------
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        from torch.distributed import init_process_group
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if c["device"] == "cpu" or (c["device"] == "auto" and not torch.cuda.is_available()):
            if c["backend"] == "nccl":
                raise UserError("multi-process training on CPU needs --backend=gloo (nccl is GPU-only)")
            device = "cpu"
        else:
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        if c["max_seconds"]:
            raise UserError("max_seconds is for single-process runs (the processes would stop at different steps)")
        init_process_group(backend=c["backend"])
        if c["gradient_accumulation_steps"] % world:
            raise UserError(f"gradient_accumulation_steps ({c['gradient_accumulation_steps']}) must be divisible by the {world} processes")
        c["gradient_accumulation_steps"] //= world
    else:
        rank, world = 0, 1
        device = c["device"] if c["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    master = rank == 0
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cpu" and "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    dtype = c["dtype"]
    if dtype == "auto":
        dtype = "float32" if device_type == "cpu" else ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    if device_type == "cpu" and dtype != "float32":
        raise UserError("on CPU this trainer runs in float32; use --dtype=float32 (or auto)")
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
    if device_type == "cuda":  # float32 means float32; TF32 only where autocast lowers precision anyway
        torch.backends.cuda.matmul.allow_tf32 = dtype != "float32"
        torch.backends.cudnn.allow_tf32 = dtype != "float32"
    out_dir = resolve_path(c["out_dir"])
    tokens_per_iter = c["gradient_accumulation_steps"] * world * c["batch_size"] * c["block_size"]
    if master:
        os.makedirs(out_dir, exist_ok=True)
        print(f"tokens per iteration: {tokens_per_iter:,}  device: {device}  dtype: {dtype}")

    # --- model, optimizer, state -------------------------------------------------------------------
    torch.manual_seed(c["seed"] + rank)
    meta = load_meta(c["dataset"])
    if c["fresh_data"]:
        train_batches = FreshBatches(c["dataset"], c["batch_size"], c["block_size"], c["seed"] + rank, device)
    else:
        train_batches = Batches(c["dataset"], "train", c["batch_size"], c["block_size"], c["seed"] + rank, device)
    model_args = {k: c[k] for k in MODEL_KEYS}
    model_args["vocab_size"] = meta.get("vocab_size", 50304)
    iter_num, best_val_loss, ckpt = 0, float("inf"), None
    if c["init_from"] == "resume":
        found = checkpoints(out_dir)
        if not found:
            raise UserError(f"--init_from=resume but no ckpt_<iter>.pt in {out_dir}")
        print(f"resuming from {found[-1][1]}") if master else None
        ckpt = read_checkpoint(found[-1][1], device)
        model_args = ckpt["model_args"]  # the run's architecture wins over the command line
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
    try:
        model = GPT(GPTConfig.from_dict(model_args))
    except ConfigError as e:
        raise UserError(str(e))
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    optimizer = model.configure_optimizers(c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]), device_type,
                                           c["optimizer"], c["momentum"])
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        train_batches.set_state(ckpt["batch_rng"][rank] if rank < len(ckpt["batch_rng"]) else ckpt["batch_rng"][0])
        torch.set_rng_state(ckpt["torch_rng"].cpu())  # map_location moved it to the device
    ckpt = None  # free memory
    raw_model = model
    if c["compile"]:
        print("compiling the model...") if master else None
        model = torch.compile(model)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    if master:
        print(f"model: {c['attention']} attention, {raw_model.get_num_params() / 1e6:.2f}M parameters")

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches per split, drawn with fixed seeds (the same batches every eval)."""
        out = {}
        model.eval()
        for split in ("train", "val"):
            batches = Batches(c["dataset"], split, c["batch_size"], c["block_size"], 1000 + (split == "val"), device)
            losses = torch.zeros(c["eval_iters"])
            for k in range(c["eval_iters"]):
                X, Y = batches.next()
                with ctx:
                    losses[k] = model(X, Y)[1].item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def save(iter_num, losses):
        batch_rng = [train_batches.get_state()]
        if ddp:
            import torch.distributed as dist
            gathered = [None] * world
            dist.all_gather_object(gathered, batch_rng[0])
            batch_rng = gathered
        if not master:
            return
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), model_args=model_args,
                     iter_num=iter_num, best_val_loss=best_val_loss, config=c, batch_rng=batch_rng,
                     torch_rng=torch.get_rng_state(), losses=losses, tokens_per_sec=tokens_per_sec)
        path = os.path.join(out_dir, f"ckpt_{iter_num}.pt")
        atomic_save(state, path)
        for _, old in checkpoints(out_dir)[:-c["keep_checkpoints"]]:
            os.remove(old)
        print(f"saved {path}")

    wandb = None
    if c["wandb_log"] and master:
        import wandb
        wandb.init(project=c["wandb_project"], name=c["wandb_run_name"], config=c)
    log_path = os.path.join(out_dir, "train_log.jsonl")
    history, tokens_per_sec, t_timer, tokens_timed = {}, None, None, 0
    stats_path = os.path.join(out_dir, "stats.jsonl")
    if c["stats_interval"] and master:
        val = Batches(c["dataset"], "val", 1, c["block_size"], 0)
        stats_seqs = val.sequences(min(c["stats_seqs"], val.available(c["block_size"])), c["block_size"]).to(device)
        keep_stats_before(stats_path, iter_num)  # a resumed run rewrites what came after its checkpoint

    def log_stats(iter_num):
        model.eval()
        with ctx:
            report = layer_report(raw_model, stats_seqs)
        model.train()
        with open(stats_path, "a") as f:
            f.write(json.dumps(dict(iter=iter_num, **compact_report(report))) + "\n")
    started, last_iter = time.time(), c["max_iters"]

    # --- training loop -----------------------------------------------------------------------------
    model.train()
    while True:
        lr = get_lr(iter_num, c)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if c["stats_interval"] and master and iter_num % c["stats_interval"] == 0:
            log_stats(iter_num)
        out_of_time = c["max_seconds"] > 0 and time.time() - started > c["max_seconds"]
        if out_of_time:
            print(f"max_seconds ({c['max_seconds']:g}) reached at iteration {iter_num}") if master else None
            last_iter = iter_num  # evaluate and save here, then stop
        if iter_num % c["eval_interval"] == 0 or iter_num == last_iter:
            if c["eval_only"] or iter_num > 0:
                losses = estimate_loss()
                if master:
                    print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                    with open(log_path, "a") as f:
                        f.write(json.dumps(dict(iter=iter_num, eval=losses, tokens_per_sec=tokens_per_sec)) + "\n")
                    if wandb:
                        wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
                if c["eval_only"]:
                    break
                if losses["val"] < best_val_loss or c["always_save_checkpoint"]:
                    best_val_loss = min(best_val_loss, losses["val"])
                    save(iter_num, losses)
                t_timer, tokens_timed = None, 0  # evaluation time does not count towards tokens/s
        if iter_num >= last_iter:
            break
        if t_timer is None:
            t_timer = time.time()
        for micro_step in range(c["gradient_accumulation_steps"]):
            X, Y = train_batches.next()
            if ddp:  # only sync gradients on the last micro step
                model.require_backward_grad_sync = micro_step == c["gradient_accumulation_steps"] - 1
            with ctx:
                loss = model(X, Y)[1] / c["gradient_accumulation_steps"]
            scaler.scale(loss).backward()
        if c["grad_clip"] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lossf = loss.item() * c["gradient_accumulation_steps"]
        if not math.isfinite(lossf):
            raise Diverged(f"loss is {lossf} at iteration {iter_num}; stopping. Lower learning_rate or resume "
                           f"from the last checkpoint in {out_dir}")
        history[iter_num] = lossf
        iter_num += 1
        tokens_timed += tokens_per_iter
        if iter_num % c["log_interval"] == 0 and master:
            dt = time.time() - t_timer
            tokens_per_sec = tokens_timed / dt
            print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {1000 * dt / (tokens_timed / tokens_per_iter):.1f} ms/iter, {tokens_per_sec:,.0f} tok/s")
            t_timer, tokens_timed = time.time(), 0
    if ddp:
        from torch.distributed import destroy_process_group
        destroy_process_group()
    return history


if __name__ == "__main__":
    try:
        with user_errors_exit("train.py"):
            main(sys.argv[1:])
    except Diverged as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(3)
