# The factorial study (results/factorial/): attention x optimizer x norm on the random-first design with no
# position embedding. 3 layers x 128 wide, 2 heads, block 64, 8 sequences per step drawn afresh from the
# Bigram-Backcopy task (nothing repeats), constant rate after 200 warmup steps, weight decay 0.1, gradient clip
# 1.0, 40,000 steps, per-block outlier statistics every 2,000 steps, a checkpoint every 2,000 steps.
# The cell is set on the command line: --attention, --optimizer (with --learning_rate / --muon_lr as the
# registered sweep chose them), --norm, --seed. Data first:
#   python data/backcopy/prepare.py --seq_len=65 --train_seqs=2000 --out_dir=data/backcopy_rf65 --design=random_first
dataset = "backcopy_rf65"
pos_emb = "none"
fresh_data = True
block_size = 64
batch_size = 8
gradient_accumulation_steps = 1
n_layer = 3
n_head = 2
n_embd = 128
learning_rate = 1e-3
min_lr = 1e-3  # constant after warmup (the schedule scales Muon's rate alike)
warmup_iters = 200
max_iters = 40000
lr_decay_iters = 40000
weight_decay = 0.1
eval_interval = 2000
eval_iters = 20
log_interval = 1000
stats_interval = 2000
keep_checkpoints = 2
dtype = "float32"
