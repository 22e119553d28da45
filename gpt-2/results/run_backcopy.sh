#!/usr/bin/env bash
# Regenerates results/backcopy/ (the CPU-scale hypothesis test). Run from gpt-2/. One CPU thread per run.
# VARIANTS="default vbias ..." overrides the list; runs are independent, so they can also go in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
VARIANTS=${VARIANTS:-"default vbias cabias attn_bias ca_softmax sigmoid"}
python data/backcopy/prepare.py
runs=""
for v in $VARIANTS; do
  python train.py config/train_backcopy.py --attention=$v --out_dir=out-backcopy-$v
  runs="$runs'out-backcopy-$v',"
done
python compare.py --runs="[$runs]" --results_dir=results/backcopy
