# Evaluate / analyse the paper-scale clipped run (evaluate.py, analyze.py read the newest checkpoint in out_dir).
# python evaluate.py config/eval_gpt2_clipped.py ;  python analyze.py config/eval_gpt2_clipped.py
out_dir = "out-gpt2-clipped"
n_seqs = 3
layer = 5  # 0-based: the sixth block
