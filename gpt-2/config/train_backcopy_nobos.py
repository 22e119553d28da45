# Activation-outlier search: the multi-offset Bigram-Backcopy task WITHOUT a BOS token
# (python data/backcopy/prepare.py --bos=False --out_dir=data/backcopy_nobos): sequences start at an
# arbitrary ordinary token, so a first-token sink must be built from a varying token (as in GPT-2).
dataset = "backcopy_nobos"
out_dir = "out-nobos-default"
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
