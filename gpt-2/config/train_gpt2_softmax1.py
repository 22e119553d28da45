# GPT-2 124M on OpenWebText with softmax1 attention: the paper's setup, which is train.py's defaults
# (12 layers, 12 heads, 768 wide, block 1024; 12 x 1024 tokens x 40 accumulation steps per step, 50k steps).
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_softmax1.py
attention = "softmax1"
out_dir = "out-gpt2-softmax1"
wandb_run_name = "gpt2-124M-softmax1"
compile = True
