#!/usr/bin/env bash
# The factorial grid: 16 runs of config/train_factorial.py, two at a time with one thread each, seed 1337's eight
# cells first. Each run resumes from its newest checkpoint when it has one, so the script can be stopped
# and started again at any time. After each run (and on `bash run_grid.sh sync`) its logs, final.json and its final
# weights (weights only, pack.py) are copied into results/factorial/runs/<run>/. From gpt-2/:
#   bash results/factorial/run_grid.sh            # the grid (about 6 hours on 2 cores)
#   bash results/factorial/run_grid.sh sync       # copy every run's logs so far into results/factorial/runs/, then
#                                                  # write the table (factorial.py) and re-render the pages
# ONLY=<pattern> trains only the runs whose name holds it, WORKERS=<n> sets how many run at once (default 2). A
# finished run (final.json) is skipped, and a run another process is training is left to it (a lock per run).
set -u
cd "$(dirname "$0")/../.."  # gpt-2/
# lib/ from this checkout, not from wherever the project is installed: a run started from another checkout (a
# worktree of one commit, below) must load all of its code, and record its commit, from that checkout
export PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # absolute, so that it stays
# valid in the repository root (the pages); not resolved through links, which would leave the virtual environment
ADAMW_LR=5e-4  # the registered sweep's choices (results/factorial/README.md)
MUON_LR=5e-4
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PY
sync_run() {  # sync_run NAME: copy what the run has written so far
  local out=out-factorial/$1 dest=results/factorial/runs/$1
  [ -d "$out" ] || return 0
  mkdir -p "$dest"
  for f in train_log.jsonl stats.jsonl final.json; do [ -f "$out/$f" ] && cp "$out/$f" "$dest/$f"; done
  [ -f "$out/final.json" ] && $PY results/factorial/pack.py "$out" "$dest"
  return 0
}
resume_flag() {  # resume_flag OUT: resume from the newest checkpoint; a run stopped before its first one restarts
  ls "$1"/ckpt_*.pt > /dev/null 2>&1 && echo --init_from=resume || echo --overwrite=True  # (moved aside)
}
one() {  # one NAME [flags...]: train (or resume) the run unless it is finished or another process trains it
  local name=$1; shift
  local out=out-factorial/$name
  [ -f "$out/final.json" ] && { sync_run "$name"; return 0; }
  mkdir -p logs-factorial out-factorial
  (
    flock -n 9 || { echo "$name: trained by another process, skipped"; exit 0; }
    $PY train.py config/train_factorial.py --out_dir="$out" "$@" $(resume_flag "$out") \
      >> "logs-factorial/$name.log" 2>&1
  ) 9> "out-factorial/$name.lock"
  sync_run "$name"
}
export -f one sync_run resume_flag
cells() {
  for seed in 1337 1338; do
    for norm in layernorm rmsnorm_single; do
      for attention in default ca_softmax; do
        echo "$attention-adamw-$norm-s$seed --attention=$attention --norm=$norm --seed=$seed --learning_rate=$ADAMW_LR --min_lr=$ADAMW_LR"
        echo "$attention-muon-$norm-s$seed --attention=$attention --norm=$norm --seed=$seed --optimizer=muon --muon_lr=$MUON_LR"
      done
    done
  done
}
if [ "${1:-}" = sync ]; then  # then the table and the pages that quote it, so that what is committed agrees
  cells | while read -r name _; do sync_run "$name"; done
  $PY factorial.py --runs_dir=results/factorial/runs --results_dir=results/factorial > /dev/null || exit 1
  (cd .. && $PY -m lib.pages 2> /dev/null) || exit 1
  exit 0
fi
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_rf65 --design=random_first > /dev/null || exit 1
cells | grep -- "${ONLY:-}" | xargs -P "${WORKERS:-2}" -L 1 bash -c 'one "$@"' _
