#!/usr/bin/env bash
# Regenerates results/backcopy/ (the CPU-scale hypothesis test, config/train_backcopy.py); with NAME=<name>
# and OUT=<prefix> it trains config/train_<name>.py into <prefix>-<variant> and writes results/<name>/
# (run_backcopy_peak.sh does that). Run from gpt-2/. One CPU thread per run.
# VARIANTS="default vbias ..." overrides the list; runs are independent, so they can also go in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
NAME=${NAME:-backcopy}
OUT=${OUT:-out-backcopy}
RESULTS=${RESULTS:-$NAME}
FLAGS=${FLAGS:-}
VARIANTS=${VARIANTS:-"default vbias cabias attn_bias ca_softmax sigmoid gated clipped softmax1"}
python data/backcopy/prepare.py
runs=""
for v in $VARIANTS; do
  python train.py config/train_$NAME.py --attention=$v --out_dir=$OUT-$v $FLAGS
  runs="$runs'$OUT-$v',"
done
python compare.py --runs="[$runs]" --results_dir=results/$RESULTS
