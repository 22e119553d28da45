#!/usr/bin/env bash
# The emergence study's runs, all at once: one train.py process per run on one GPU machine (16 cores), each
# stopping after BUDGET seconds of training (max_seconds), then pack_runs.py bundles every run's newest
# checkpoint (weights only) and logs into DEST. Run from anywhere; settings in config/train_emergence.py.
#   BUDGET=450 DEST=/tmp/emergence USE_MPS=1 PLAN=results/emergence/plan_first.sh bash results/emergence/run_gpu.sh
# PLAN lists the runs (one `run NAME [flags...]` line each); KEEP_OPTIMIZER=name,... packs those runs' optimizer
# state too, so they can be resumed exactly elsewhere.
# USE_MPS=1 starts NVIDIA's multi-process service first (checked with a one-line CUDA job, dropped if that
# fails): without it the GPU time-slices between the 16 processes, whose tiny kernels then queue behind
# each other instead of running side by side.
set -u
cd "$(dirname "$0")/../.."  # gpt-2/
BUDGET=${BUDGET:-450}
DEST=${DEST:-results/emergence/packed}
PLAN=${PLAN:-results/emergence/plan_first.sh}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p logs-emergence "$DEST"
if [ "${USE_MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  # a daemon left by an earlier call of this script on the same machine is as good as a new one
  if { nvidia-cuda-mps-control -d || pgrep -x nvidia-cuda-mps-control > /dev/null; } && timeout 60 $PY -c "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then
    echo "MPS on"
  else
    echo "MPS failed; running without it"; echo quit | timeout 10 nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_bos65 || exit 1
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_rf65 --design=random_first || exit 1
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_nb65 --bos=False || exit 1
run() {  # run NAME [flags...]: out-emergence-NAME, log in logs-emergence/NAME.log
  local name=$1; shift
  timeout $((BUDGET + 40)) $PY train.py config/train_emergence.py --out_dir="out-emergence-$name" \
    --max_seconds="$BUDGET" ${RESUME:+--init_from=resume} "$@" >> "logs-emergence/$name.log" 2>&1 &
}
. "$PLAN"
sleep 45; command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv
wait
for f in logs-emergence/*.log; do echo "$f: $(grep -c . "$f") lines; $(grep -E '^iter ' "$f" | tail -n 1)"; done
$PY results/emergence/pack_runs.py "$DEST" $(sed -n 's/^run \([^ ]*\).*/out-emergence-\1/p' "$PLAN") --logs=logs-emergence \
  --keep_optimizer="${KEEP_OPTIMIZER:-}"
