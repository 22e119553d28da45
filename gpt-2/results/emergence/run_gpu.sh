#!/usr/bin/env bash
# Issue 17's emergence runs, all at once: one train.py process per run on one GPU machine (16 cores), each
# stopping after BUDGET seconds of training (max_seconds), then pack_runs.py bundles every run's newest
# checkpoint (weights only) and logs into DEST. Run from anywhere; settings in config/train_emergence.py.
#   BUDGET=450 DEST=/tmp/emergence USE_MPS=1 bash results/emergence/run_gpu.sh
# USE_MPS=1 starts NVIDIA's multi-process service first (checked with a one-line CUDA job, dropped if that
# fails): without it the GPU time-slices between the 16 processes, whose tiny kernels then queue behind
# each other instead of running side by side.
set -u
cd "$(dirname "$0")/../.."  # gpt-2/
BUDGET=${BUDGET:-450}
DEST=${DEST:-results/emergence/packed}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p logs-emergence "$DEST"
if [ "${USE_MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d && timeout 60 $PY -c "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then
    echo "MPS on"
  else
    echo "MPS failed; running without it"; echo quit | timeout 10 nvidia-cuda-mps-control
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_bos65 || exit 1
$PY data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_rf65 --design=random_first || exit 1
run() {  # run NAME [flags...]: out-emergence-NAME, log in logs-emergence/NAME.log
  local name=$1; shift
  timeout $((BUDGET + 40)) $PY train.py config/train_emergence.py --out_dir="out-emergence-$name" \
    --max_seconds="$BUDGET" ${RESUME:+--init_from=resume} "$@" >> "logs-emergence/$name.log" 2>&1 &
}
# BOS design: the four variants of the issue at the pilots' setting (lr 1e-3, weight decay 0.1, width 128)
run default
run ca_softmax --attention=ca_softmax
run attn_bias --attention=attn_bias
run sigmoid --attention=sigmoid
# the knobs that may cap default's peak, each with ca_softmax (and the other variants at weight decay 0)
run default-wd0 --weight_decay=0.0
run ca_softmax-wd0 --attention=ca_softmax --weight_decay=0.0
run sigmoid-wd0 --attention=sigmoid --weight_decay=0.0
run default-wd001 --weight_decay=0.01
run default-lr2e3 --learning_rate=2e-3 --min_lr=2e-3
run default-w256 --n_embd=256 --n_head=4
run ca_softmax-w256 --attention=ca_softmax --n_embd=256 --n_head=4
# optimiser control: SGD with momentum (Guo et al.: the BOS norm stays flat under SGD)
run default-sgd --optimizer=sgd --learning_rate=0.1 --min_lr=0.1 --weight_decay=0.0
# content-varying design: random first token, fixed token at position 1
run rf-default-learned --dataset=backcopy_rf65
run rf-default-rope --dataset=backcopy_rf65 --pos_emb=rope
run rf-ca_softmax-rope --dataset=backcopy_rf65 --pos_emb=rope --attention=ca_softmax
run rf-default-none --dataset=backcopy_rf65 --pos_emb=none
sleep 45; command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv
wait
for f in logs-emergence/*.log; do echo "$f: $(grep -c . "$f") lines; $(grep -E '^iter ' "$f" | tail -n 1)"; done
$PY results/emergence/pack_runs.py "$DEST" out-emergence-* --logs=logs-emergence
