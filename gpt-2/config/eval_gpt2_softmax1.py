# Evaluate / analyse the paper-scale softmax1 run (evaluate.py, analyze.py read the newest checkpoint in out_dir).
# python evaluate.py config/eval_gpt2_softmax1.py ;  python analyze.py config/eval_gpt2_softmax1.py
out_dir = "out-gpt2-softmax1"
n_seqs = 3
layer = 5  # 0-based: the sixth block
