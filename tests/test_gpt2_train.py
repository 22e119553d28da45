"""gpt-2/train.py, evaluate.py, analyze.py and compare.py on a tiny synthetic dataset: training lowers the loss,
resume from a checkpoint reproduces the next step exactly, outlier statistics match direct computations,
and user mistakes end in one line on stderr with a non-zero exit."""
import json
import math
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from lib.configurator import UserError, configure
from lib.gpt2_checkpoints import load_gpt

GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gpt-2")
sys.path.insert(0, GPT2)
import train  # noqa: E402
from model import VARIANTS  # noqa: E402
from outlier_stats import activation_stats, attention_stats  # noqa: E402



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Back-copy sequences from gpt-2/data/backcopy/prepare.py, written into a temporary folder."""
    d = tmp_path_factory.mktemp("backcopy")
    sys.path.insert(0, os.path.join(GPT2, "data", "backcopy"))
    import prepare
    prepare.main([f"--out_dir={d}", "--vocab=16", "--seq_len=17", "--train_seqs=400", "--val_seqs=40",
                  "--offsets=[1, 2]", "--triggers=1"])
    return str(d)


def tiny_args(data, out, variant, **kw):
    args = dict(dataset=data, out_dir=str(out), block_size=16, batch_size=8, gradient_accumulation_steps=1,
                n_layer=2, n_head=2, n_embd=16, attention=variant, learning_rate=1e-2, min_lr=1e-3, warmup_iters=2,
                lr_decay_iters=30, max_iters=30, eval_interval=10, eval_iters=2, log_interval=100, device="cpu")
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


def test_backcopy_data_follows_its_rule(data):
    meta = pickle.load(open(os.path.join(data, "meta.pkl"), "rb"))
    seq = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16).reshape(-1, meta["seq_len"]).astype(int)
    assert (seq[:, 0] == meta["bos"]).all() and (seq[:, 1:] != meta["bos"]).all()
    offset_of = np.array(meta["offset_of"])
    assert sorted(meta["triggers"]) == [0, 1] and offset_of[0] == 1 and offset_of[1] == 2
    n_copies = 0
    for s in seq:
        for t in range(1, len(s) - 1):
            o = offset_of[s[t]]
            if o and t - o >= 1:  # the token after a trigger copies the one `o` positions before the trigger
                assert s[t + 1] == s[t - o]
                n_copies += 1
    assert n_copies > 0.05 * seq.size


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_loss_and_resume_reproduces_next_step(variant, data, tmp_path):
    history = train.main(tiny_args(data, tmp_path / "a", variant))
    first, last = np.mean([history[i] for i in range(3)]), np.mean([history[i] for i in range(27, 30)])
    assert last < first - 0.3, (first, last)
    names = sorted(os.listdir(tmp_path / "a"))
    assert {"ckpt_10.pt", "ckpt_20.pt", "ckpt_30.pt"} <= set(names) and not any(".tmp" in n for n in names)
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "ckpt_20.pt", tmp_path / "b" / "ckpt_20.pt")
    resumed = train.main(tiny_args(data, tmp_path / "b", variant, init_from="resume", max_iters=23))
    assert sorted(resumed) == [20, 21, 22]
    for i in (20, 21, 22):
        assert resumed[i] == pytest.approx(history[i], abs=1e-6)


def test_statistics_match_direct_computation(data, tmp_path):
    train.main(tiny_args(data, tmp_path, "default", max_iters=10))
    model, _, _ = load_gpt(str(tmp_path / "ckpt_10.pt"))
    seqs = torch.randint(0, 16, (2, 16))
    act, att = activation_stats(model, seqs), attention_stats(model, seqs)
    seen = {}  # block 1's output and its weights, read by plain forward hooks on the explicit path
    hooks = [model.transformer.h[1].register_forward_hook(lambda m, args, out: seen.setdefault("h", out)),
             model.transformer.h[1].attn.hook_pattern.register_forward_hook(lambda m, args, w: seen.setdefault("w", w))]
    model.transformer.h[1].attn.flash = False
    with torch.no_grad():
        model(seqs)
    for hook in hooks:
        hook.remove()
    h, w = seen["h"], seen["w"]
    vals = [np.sort(np.abs(h[b].numpy()).ravel()) for b in range(2)]
    assert act[1]["top1"] == pytest.approx(np.mean([v[-1] for v in vals]), rel=1e-5)
    assert act[1]["top3"] == pytest.approx(np.mean([v[-3] for v in vals]), rel=1e-5)
    assert act[1]["median"] == pytest.approx(np.mean([np.sort(v)[(v.size - 1) // 2] for v in vals]), rel=1e-5)
    x = h.numpy().ravel().astype(np.float64)
    assert act[1]["kurtosis"] == pytest.approx(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3, rel=1e-6)
    share = w[:, :, 1:, 0].mean().item()  # softmax rows sum to 1: the share is the weight itself
    assert att[1]["first_token_share"] == pytest.approx(share, rel=1e-5)


def test_eval_analyze_and_compare_write_json(data, tmp_path):
    import analyze
    import compare
    import evaluate
    for v in ("default", "sigmoid"):
        train.main(tiny_args(data, tmp_path / v, v, max_iters=10))
    r = evaluate.main([f"--ckpt={tmp_path / 'default' / 'ckpt_10.pt'}", "--eval_iters=2"])
    assert r["val"]["perplexity"] == pytest.approx(np.exp(r["val"]["loss"]))
    a = analyze.main([f"--ckpt={tmp_path / 'sigmoid' / 'ckpt_10.pt'}", "--n_seqs=2", "--plot=False"])
    assert len(a["layers"]) == 2 and a["view"]["tokens"][0] == "BOS"
    rows = compare.main([f"--runs={[str(tmp_path / 'default'), str(tmp_path / 'sigmoid')]}",
                         f"--results_dir={tmp_path / 'res'}", "--n_seqs=2", "--eval_iters=2", "--plot=False"])
    table = json.load(open(tmp_path / "res" / "table.json"))
    assert [r["variant"] for r in table["rows"]] == ["default", "sigmoid"] == [r["variant"] for r in rows]
    assert (tmp_path / "res" / "table.md").read_text().count("\n") == 4


def test_analyze_encodes_the_prompt_per_character_for_a_character_vocabulary(tmp_path):
    import analyze
    text = "Summer is warm. Winter is cold. " * 40
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    d = tmp_path / "chars"
    d.mkdir()
    for split in ("train", "val"):
        np.array([stoi[ch] for ch in text], dtype=np.uint16).tofile(d / f"{split}.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump(dict(vocab_size=len(chars), itos=chars, stoi=stoi), f)
    train.main(tiny_args(str(d), tmp_path / "out", "default", max_iters=2, eval_interval=2))
    a = analyze.main([f"--ckpt={tmp_path / 'out' / 'ckpt_2.pt'}", "--n_seqs=2", "--plot=False",
                      "--prompt=Summer is warm."])
    assert a["view"]["tokens"] == list("Summer is warm.")
    with pytest.raises(UserError, match="outside"):
        analyze.main([f"--ckpt={tmp_path / 'out' / 'ckpt_2.pt'}", "--plot=False", "--prompt=Autumn!"])


def test_configure_rejects_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'lr'"):
        configure(train.DEFAULTS, ["--lr=1"])
    with pytest.raises(UserError, match="must be int"):
        configure(train.DEFAULTS, ["--n_layer=two"])
    with pytest.raises(UserError, match="config file not found"):
        configure(train.DEFAULTS, ["config/nope.py"])
    cfg = tmp_path / "c.py"
    cfg.write_text("n_layer = 3\nlearning_rate = 1\n")
    c = configure(train.DEFAULTS, [str(cfg), "--n_head=4"])
    assert c["n_layer"] == 3 and c["learning_rate"] == 1.0 and c["n_head"] == 4


def run_script(script, *args, **env):
    env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, os.path.join(GPT2, script), *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("script,args,message", [
    ("train", ["--attention=softmax2", "--dataset=backcopy_missing"], "unknown attention variant"),
    ("train", ["--n_layerz=3"], "unknown config key"),
    ("train", ["--dataset=no_such_dataset", "--device=cpu"], "missing data file"),
    ("evaluate", ["--ckpt=/no/such/ckpt.pt"], "checkpoint not found"),
    ("analyze", ["--ckpt=/no/such/ckpt.pt"], "checkpoint not found"),
    ("compare", ["--runs=['/no/such/out_dir']"], "no ckpt_<iter>.pt"),
])
def test_user_mistakes_raise_user_error(script, args, message, tmp_path):
    module = __import__(script)
    out = [f"--out_dir={tmp_path / 'out'}"] if script == "train" else []  # train.py makes its out_dir first
    with pytest.raises(UserError, match=message):
        module.main(args + out)


def test_user_mistake_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    bad_ckpt = tmp_path / "ckpt_1.pt"
    bad_ckpt.write_text("not a checkpoint")
    for script, args, message in (("train.py", ["--attention=softmax2"], "unknown attention variant"),
                                  ("analyze.py", [f"--ckpt={bad_ckpt}"], "is not a train.py checkpoint")):
        r = run_script(script, *args)
        assert r.returncode == 2, r.stderr
        assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_nan_loss_stops_clearly(data, tmp_path):
    r = run_script("train.py", *tiny_args(data, tmp_path, "default", learning_rate=1e30, warmup_iters=0, grad_clip=0.0))
    assert r.returncode == 3 and "loss is nan" in r.stderr.lower() and "Traceback" not in r.stderr


# A guard against a hang, not a speed limit. A torchrun call starts three Python processes (the agent and two
# workers), each importing torch (and the optimizer torch._dynamo): about 30 s on an idle 2-core machine, of which
# training is 2 s, and minutes on a shared, loaded one, where the time grows with the load.
TORCHRUN_LIMIT = 1200


def torchrun(*args):
    """train.py on two CPU processes under torchrun. Past TORCHRUN_LIMIT torchrun gets SIGTERM, on which it stops
    its workers (they run in sessions of their own: killing torchrun itself would leave them running)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(GPT2, "train.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as p:
        try:
            out, err = p.communicate(timeout=TORCHRUN_LIMIT)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.communicate()
            raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_ddp_on_cpu_with_gloo_trains_and_checkpoints(data, tmp_path):
    """The torchrun path (DistributedDataParallel) on two CPU processes: gradient accumulation is split
    between them, rank 0 logs and writes the checkpoints, and nccl on CPU is a clear error."""
    r = torchrun(*tiny_args(data, tmp_path, "default", gradient_accumulation_steps=2, backend="gloo"))
    assert r.returncode == 0, r.stdout + r.stderr  # all of it: a worker's own error comes before torchrun's summary
    assert "tokens per iteration: 256" in r.stdout and r.stdout.count("model: default attention") == 1
    log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
    assert [e["iter"] for e in log] == [10, 20, 30]
    assert log[-1]["eval"]["val"] < math.log(17) - 0.5  # from about ln(vocab) at initialisation
    assert {"ckpt_10.pt", "ckpt_20.pt", "ckpt_30.pt"} <= set(os.listdir(tmp_path))
    # what each torchrun worker does with nccl on CPU, shown on one process given a worker's environment
    r = run_script("train.py", *tiny_args(data, tmp_path / "x", "default", gradient_accumulation_steps=2),
                   RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "train.py: error: multi-process training on CPU needs --backend=gloo" in r.stderr


def test_shakespeare_prepare_rejects_unknown_options():
    import importlib.util
    path = os.path.join(GPT2, "data", "shakespeare", "prepare.py")
    spec = importlib.util.spec_from_file_location("shakespeare_prepare", path)
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    with pytest.raises(UserError, match="the only option is --char"):
        prepare.main(["--bpe"])
