"""Outlier analysis of a checkpoint: layer-wise top-1/2/3 and median of block outputs over validation
sequences, attention-sink statistics, and the 3-D view of one layer on the Summer prompt.

    python analyze.py --ckpt=out-backcopy-default/ckpt_3000.pt
    python analyze.py config/eval_gpt2_default.py

Prints the checkpoint it reads (path and iteration) and writes <out>/analysis.json (every number; `checkpoint`
names the checkpoint) and, unless --plot=False, the figures of plot_gpt2.py beside it; <out> defaults to
<checkpoint folder>/analysis. Layers are 0-based. The 3-D view shows --layer (-1: the layer with the largest
top-1/median), the attention figure --attention_layer (-1: the sink's layer, where one key takes the largest
head-averaged share of
the attention of queries 1..T-1 over the validation sequences). The Summer prompt is encoded with the GPT-2
tokenizer, or one token per character for a character vocabulary (shakespeare_char); for the synthetic task,
which has no text, both views use the first `prompt_tokens` tokens of validation sequence 0 instead, and the
JSON says so.
"""
import os
import sys

import torch

from lib.configurator import UserError, configure, resolve_path, user_errors_exit
from lib.files import write_json
from lib.gpt2_data import gpt2_encoding, load_meta
from dataset import Batches
from evaluate import at_least, check_output_dir, open_checkpoint
from outlier_stats import VARIANTS, activation_stats, attention_stats, captured, checkpoint_provenance, summary
from stats_log import LAYERS_ARE

SUMMER = "Summer is warm. Winter is cold.\n"
DEFAULTS = dict(ckpt="", out_dir="out", analysis_dir="", dataset="", n_seqs=3, seq_len=0, layer=-1, attention_layer=-1,
                prompt=SUMMER, prompt_tokens=16, device="cpu", plot=True)
CHOSEN = -1  # --layer / --attention_layer: chosen from the statistics


def prompt_ids(c, dataset, model):
    """Token ids of the single-prompt views, their labels, and a description of where they come from."""
    meta = load_meta(dataset)
    if "seq_len" in meta:  # a synthetic vocabulary: no text prompt possible
        ids = Batches(dataset, "val", 1, 1, 0).sequences(1, min(c["prompt_tokens"], model.config.block_size))[0]
        labels = ["BOS" if int(i) == meta.get("bos") else str(int(i)) for i in ids]
        return ids, labels, f"first {len(ids)} tokens of validation sequence 0 (synthetic vocabulary)"
    if not c["prompt"]:
        raise UserError("--prompt is empty")
    if "stoi" in meta:  # a character vocabulary (data/shakespeare/prepare.py --char)
        missing = sorted(set(c["prompt"]) - set(meta["stoi"]))
        if missing:
            raise UserError(f"the prompt has characters outside {dataset}'s vocabulary: {missing}")
        ids, labels = [meta["stoi"][ch] for ch in c["prompt"]], list(c["prompt"])
        source = f"prompt {c['prompt']!r}, one token per character"
    else:
        enc = gpt2_encoding()
        ids = enc.encode_ordinary(c["prompt"])
        if max(ids) >= model.config.vocab_size:
            raise UserError(f"{dataset} has its own {model.config.vocab_size}-token vocabulary: the GPT-2 tokens of "
                            "the prompt do not fit it")
        labels, source = [enc.decode([i]) for i in ids], f"prompt {c['prompt']!r} without special tokens"
    if len(ids) > model.config.block_size:
        raise UserError(f"the prompt is {len(ids)} tokens long, more than the model's block_size "
                        f"{model.config.block_size}")
    return torch.tensor(ids), labels, source


def analysis(c, path, model, ckpt, dataset, record):
    """Every number of the analysis of one loaded checkpoint (nothing is written)."""
    seq_len = c["seq_len"] or model.config.block_size
    if seq_len > model.config.block_size:
        raise UserError(f"--seq_len {seq_len} exceeds the model's block_size {model.config.block_size}")
    n_layer = model.config.n_layer
    for key in ("layer", "attention_layer"):
        if c[key] >= n_layer:
            raise UserError(f"--{key} must be in 0..{n_layer - 1} (-1: chosen from the statistics), got {c[key]}")
    seqs = Batches(dataset, "val", 1, seq_len, 0, c["device"]).sequences(c["n_seqs"], seq_len).to(c["device"])
    act, att = activation_stats(model, seqs), attention_stats(model, seqs)
    summ = summary(act, att)
    layer = summ["max_ratio_layer"] if c["layer"] == CHOSEN else c["layer"]
    # the sink's layer: where one key takes the largest head-averaged share of the queries' attention
    attn_layer = c["attention_layer"]
    if attn_layer == CHOSEN:
        attn_layer = max(range(n_layer), key=lambda i: att[i]["top_key_share"])
    ids, labels, source = prompt_ids(c, dataset, model)
    with torch.no_grad():
        got = captured(model, ids[None].to(c["device"]), ["resid_post", "attn.pattern"])[1]
    view = got["resid_post"][layer][0].abs()  # (T, C)
    w = got["attn.pattern"][attn_layer][0].mean(0)  # head-averaged (T, T[+1])
    return dict(checkpoint=record, layers_are=LAYERS_ARE, attention=model.config.attention,
                dataset=dataset, n_seqs=c["n_seqs"], seq_len=seq_len, layers=act, attention_layers=att,
                summary=summ, variants=VARIANTS, view=dict(layer=layer, source=source, tokens=labels, abs_hidden=view.tolist(),
                                          attention_layer=attn_layer, attention=w.tolist(),
                                          has_extra_key=w.shape[-1] == len(labels) + 1),
                provenance=checkpoint_provenance(path, ckpt, data=dict(dataset=dataset, n_seqs=c["n_seqs"],
                                                                       seq_len=seq_len)))


def write(result, out_dir, plot):
    """analysis.json and, with plot, the figures of plot_gpt2.py into out_dir; prints the per-layer table."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "analysis.json")
    write_json(json_path, result, indent=None)
    for i, (a, t) in enumerate(zip(result["layers"], result["attention_layers"])):
        print(f"layer {i:2d}: top1 {a['top1']:9.3f} top2 {a['top2']:9.3f} top3 {a['top3']:9.3f} median {a['median']:.4f} "
              f"ratio {a['ratio']:8.1f} kurtosis {a['kurtosis']:8.1f} | first-token attn {t['first_token_share']:.3f} "
              f"top key {t['top_key']} ({t['top_key_share']:.3f})")
    summ = result["summary"]
    print(f"max top-1/median {summ['max_ratio']:.1f} at layer {summ['max_ratio_layer']}; wrote {json_path}")
    if plot:
        import plot_gpt2
        for fig in plot_gpt2.plot_analysis(result, out_dir):
            print(f"wrote {fig}")


def check_settings(c):
    at_least(c, 1, "n_seqs", "prompt_tokens")
    at_least(c, 0, "seq_len")
    at_least(c, CHOSEN, "layer", "attention_layer")


def main(argv):
    c = configure(DEFAULTS, argv)
    check_settings(c)
    path, model, ckpt, dataset, record = open_checkpoint(c)
    out_dir = resolve_path(c["analysis_dir"]) if c["analysis_dir"] else os.path.join(os.path.dirname(path), "analysis")
    check_output_dir(out_dir, "--analysis_dir")
    result = analysis(c, path, model, ckpt, dataset, record)
    write(result, out_dir, c["plot"])
    return result


if __name__ == "__main__":
    with user_errors_exit("analyze.py"):
        main(sys.argv[1:])
