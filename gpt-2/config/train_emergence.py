# Emergence study (results/emergence/): the pilots' setting (results/pilots/). 3 layers x 128 wide,
# 2 heads, block 64, 16 sequences per step drawn afresh from the Bigram-Backcopy task (nothing repeats), AdamW
# at a constant lr after 200 warmup steps, weight decay 0.1, per-layer outlier statistics every 2000 steps.
# Data first: python data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_bos65
# (--design=random_first --out_dir=data/backcopy_rf65 for the content-varying design).
dataset = "backcopy_bos65"
fresh_data = True
out_dir = "out-emergence-default"
block_size = 64
batch_size = 16
gradient_accumulation_steps = 1
n_layer = 3
n_head = 2
n_embd = 128
learning_rate = 1e-3
min_lr = 1e-3  # constant after warmup
warmup_iters = 200
max_iters = 200000
lr_decay_iters = 200000
weight_decay = 0.1
eval_interval = 2000
eval_iters = 20
log_interval = 1000
stats_interval = 2000
keep_checkpoints = 2
dtype = "float32"
