# Evaluate / analyse the paper-scale cabias run (evaluate.py, analyze.py read the newest checkpoint in out_dir).
# python evaluate.py config/eval_gpt2_cabias.py ;  python analyze.py config/eval_gpt2_cabias.py
out_dir = "out-gpt2-cabias"
n_seqs = 3
layer = 5  # 0-based: the sixth block
