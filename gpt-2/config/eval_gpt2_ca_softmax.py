# Evaluate / analyse the paper-scale ca_softmax run (evaluate.py, analyze.py read the newest checkpoint in out_dir).
# python evaluate.py config/eval_gpt2_ca_softmax.py ;  python analyze.py config/eval_gpt2_ca_softmax.py
out_dir = "out-gpt2-ca_softmax"
n_seqs = 3
layer = 5  # 0-based: the sixth block
