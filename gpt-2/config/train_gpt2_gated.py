# GPT-2 124M (12 layers, 12 heads, 768 wide, block 1024) on OpenWebText with gated attention: the paper's setup.
# About 0.5M tokens per step: 12 sequences x 1024 tokens x 40 accumulation steps (divided across GPUs).
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_gated.py
attention = "gated"
out_dir = "out-gpt2-gated"
dataset = "openwebtext"
wandb_log = False
wandb_run_name = "gpt2-124M-gated"
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8
n_layer = 12
n_head = 12
n_embd = 768
max_iters = 50000
lr_decay_iters = 50000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1
eval_interval = 1000
eval_iters = 200
log_interval = 10
compile = True
