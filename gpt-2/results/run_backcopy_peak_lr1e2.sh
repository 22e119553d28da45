#!/usr/bin/env bash
# Regenerates results/backcopy_peak_lr1e2/: config/train_backcopy_peak.py at a constant lr of 1e-2 instead of
# 3e-2 (does a lower learning rate give the variants comparable losses?). Run from gpt-2/. One CPU thread per run.
NAME=backcopy_peak OUT=out-lr1e2 RESULTS=backcopy_peak_lr1e2 FLAGS="--learning_rate=1e-2 --min_lr=1e-2" \
  VARIANTS=${VARIANTS:-"default attn_bias ca_softmax sigmoid"} exec bash "$(dirname "$0")/run_backcopy.sh"
