#!/usr/bin/env bash
# Regenerates results/backcopy_peak/ (activation-outlier search, config/train_backcopy_peak.py). Run from
# gpt-2/. One CPU thread per run. VARIANTS="default ca_softmax ..." overrides the list.
NAME=backcopy_peak OUT=out-peak VARIANTS=${VARIANTS:-"default attn_bias ca_softmax sigmoid"} \
  exec bash "$(dirname "$0")/run_backcopy.sh"
