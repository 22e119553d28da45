#!/usr/bin/env bash
# The registered learning-rate sweep, run before the grid: one cell (default attention, layernorm, seed 1337),
# 4,000 steps at a constant rate, AdamW at four rates and Muon (Moonshot's RMS-matched rate, AdamW at 1e-3 on
# the embedding and gains) at four; the rate with the lowest validation loss at step 4,000 (100 batches) is the
# grid's. Two runs at a time, one thread each; logs in results/factorial/sweep/<run>/. From gpt-2/:
#   bash results/factorial/sweep.sh
set -u
cd "$(dirname "$0")/../.."  # gpt-2/
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_rf65 --design=random_first > /dev/null || exit 1
one() {  # one NAME [flags...]
  local name=$1; shift
  local out=out-factorial-sweep/$name dest=results/factorial/sweep/$name
  mkdir -p "$dest"
  $PY train.py config/train_factorial.py --out_dir="$out" --max_iters=4000 --lr_decay_iters=4000 --stats_interval=0 \
    --eval_iters=100 "$@" $([ -d "$out" ] && echo --init_from=resume) > "$dest/console.log" 2>&1 \
    && cp "$out/train_log.jsonl" "$dest/"
}
export -f one; export PY
{
  for lr in 5e-4 1e-3 2e-3 4e-3; do echo "adamw-lr$lr --learning_rate=$lr --min_lr=$lr"; done
  for lr in 1e-3 2e-3 4e-3 8e-3; do echo "muon-lr$lr --optimizer=muon --muon_lr=$lr"; done
} | xargs -P 2 -L 1 bash -c 'one "$@"' _
