# Evaluate / analyse the paper-scale gated run (evaluate.py, analyze.py read the newest checkpoint in out_dir).
# python evaluate.py config/eval_gpt2_gated.py ;  python analyze.py config/eval_gpt2_gated.py
out_dir = "out-gpt2-gated"
n_seqs = 3
layer = 5  # 0-based: the sixth block
