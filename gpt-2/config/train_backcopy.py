# CPU-scale hypothesis test: a 2-layer, 4-head GPT on the synthetic multi-offset Bigram-Backcopy task
# (python data/backcopy/prepare.py). Pick the attention with --attention=<variant> and give each run its
# own --out_dir. About 2-4 minutes per variant on one CPU thread.
dataset = "backcopy"
out_dir = "out-backcopy-default"
block_size = 32
batch_size = 64
gradient_accumulation_steps = 1
n_layer = 2
n_head = 4
n_embd = 64
learning_rate = 3e-3
min_lr = 3e-4
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 100
weight_decay = 0.1
eval_interval = 1000
eval_iters = 20
log_interval = 500
device = "cpu"
