# Activation-outlier search on the multi-offset Bigram-Backcopy task (python data/backcopy/prepare.py):
# 4 layers x 128 wide, no weight decay, a high constant learning rate (3e-2 after 100 warmup steps) and
# 2500 steps, so that Adam's drift can build residual peaks. Pick the attention with --attention=<variant>
# and give each run its own --out_dir. About 10 minutes per variant on one CPU thread.
# See results/README.md ("Searching for activation outliers").
dataset = "backcopy"
out_dir = "out-peak-default"
block_size = 32
batch_size = 64
gradient_accumulation_steps = 1
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 3e-2
min_lr = 3e-2  # constant after warmup
max_iters = 2500
lr_decay_iters = 2500
warmup_iters = 100
weight_decay = 0.0
eval_interval = 500
eval_iters = 20
log_interval = 500
device = "cpu"
