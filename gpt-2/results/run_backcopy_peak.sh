#!/usr/bin/env bash
# Regenerates results/backcopy_peak/ (activation-outlier search, config/train_backcopy_peak.py). Run from
# gpt-2/. One CPU thread per run. VARIANTS="default ca_softmax ..." overrides the list.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
VARIANTS=${VARIANTS:-"default ca_softmax sigmoid"}
python data/backcopy/prepare.py
runs=""
for v in $VARIANTS; do
  python train.py config/train_backcopy_peak.py --attention=$v --out_dir=out-peak-$v
  runs="$runs'out-peak-$v',"
done
python compare.py --runs="[$runs]" --results_dir=results/backcopy_peak
