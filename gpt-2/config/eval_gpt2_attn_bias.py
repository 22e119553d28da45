# Evaluate / analyse the paper-scale attn_bias run (evaluate.py, analyze.py read the newest checkpoint in out_dir).
# python evaluate.py config/eval_gpt2_attn_bias.py ;  python analyze.py config/eval_gpt2_attn_bias.py
out_dir = "out-gpt2-attn_bias"
n_seqs = 3
layer = 5  # 0-based: the sixth block
