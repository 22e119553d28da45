# A small GPT on Shakespeare (GPT-2 BPE, data/shakespeare/prepare.py) for CPU: roughly 15-20 minutes on one
# thread (the 50k-token output layer dominates the cost). Natural text at this scale (a few M tokens) is far
# below where sinks appear (on natural text, sinks appear only after about 1-2B training tokens for a 60M model): it exercises the pipeline, it is not the hypothesis test.
dataset = "shakespeare"
out_dir = "out-shakespeare-small"
block_size = 64
batch_size = 8
gradient_accumulation_steps = 1
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 600
lr_decay_iters = 600
warmup_iters = 50
weight_decay = 0.1
eval_interval = 200
eval_iters = 10
log_interval = 50
device = "cpu"
