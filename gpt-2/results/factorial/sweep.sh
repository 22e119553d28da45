#!/usr/bin/env bash
# The registered learning-rate sweep, run before the grid: one cell (default attention, layernorm, seed 1337),
# 4,000 steps at a constant rate, AdamW at {5e-4, 1e-3, 2e-3, 4e-3} and Muon (Moonshot's RMS-matched rate; AdamW at
# 1e-3 on the embedding and gains) at {1e-3, 2e-3, 4e-3, 8e-3}; the rate with the lowest validation loss at step
# 4,000 (100 batches) is the grid's. A best rate at the edge of the rates tried adds the next rate in that direction
# (half or double) until it is not. Two runs at a time, one thread each; a run already done is skipped; logs in
# results/factorial/sweep/<optimizer>-lr<rate>/. From gpt-2/:
#   bash results/factorial/sweep.sh
set -u
cd "$(dirname "$0")/../.."  # gpt-2/
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PY
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_rf65 --design=random_first > /dev/null || exit 1
one() {  # one OPTIMIZER RATE
  local name=$1-lr$2 dest=results/factorial/sweep/$1-lr$2
  local out=out-factorial-sweep/$name
  [ -f "$dest/train_log.jsonl" ] && return 0
  local flags="--learning_rate=$2 --min_lr=$2"
  [ "$1" = muon ] && flags="--optimizer=muon --muon_lr=$2"
  mkdir -p "$dest"
  $PY train.py config/train_factorial.py --out_dir="$out" --max_iters=4000 --lr_decay_iters=4000 --stats_interval=0 \
    --eval_iters=100 $flags $([ -d "$out" ] && echo --init_from=resume) > "$dest/console.log" 2>&1 \
    && cp "$out/train_log.jsonl" "$dest/"
}
export -f one
{ for lr in 5e-4 1e-3 2e-3 4e-3; do echo adamw $lr; done; for lr in 1e-3 2e-3 4e-3 8e-3; do echo muon $lr; done; } \
  | xargs -P 2 -L 1 bash -c 'one "$@"' _
# the edge rule: the next rate past the best one while the best is the smallest or the largest tried
next_rate() {
  $PY -c "
import factorial
s = factorial.sweep('results/factorial/sweep')
c, rates = s['choice']['$1'], sorted(r['lr'] for r in s['rows'] if r['optimizer'] == '$1')
if c['at_edge']:
    m, e = f\"{c['lr'] / 2 if c['lr'] == rates[0] else c['lr'] * 2:e}\".split('e')
    print(f\"{m.rstrip('0').rstrip('.')}e{int(e)}\")"
}
for opt in adamw muon; do
  while rate=$(next_rate $opt) && [ -n "$rate" ]; do one $opt "$rate" || exit 1; done
done
$PY factorial.py --sweep_only=True
