# Character-level Shakespeare (python data/shakespeare/prepare.py --char) on CPU, in the spirit of nanoGPT's
# shakespeare_char at a size one CPU thread trains in about 25 minutes. Natural text whose windows start at
# arbitrary characters, so there is no dedicated BOS token: the paper's setting, at a tiny fraction of its
# scale. Pick the attention with --attention=<variant> and give each run its own --out_dir.
dataset = "shakespeare_char"
out_dir = "out-char-default"
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 100
weight_decay = 0.1
eval_interval = 1000
eval_iters = 20
log_interval = 250
device = "cpu"
