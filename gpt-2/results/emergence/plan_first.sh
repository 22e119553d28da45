# The first GPU batch (2026-11-25): sourced by run_gpu.sh, which defines run NAME [flags...].
# BOS design: the four variants of the hypothesis test at the pilots' setting (lr 1e-3, weight decay 0.1, width 128)
run default
run ca_softmax --attention=ca_softmax
run attn_bias --attention=attn_bias
run sigmoid --attention=sigmoid
# the knobs that may cap default's peak, each with ca_softmax (and the other variants at weight decay 0)
run default-wd0 --weight_decay=0.0
run ca_softmax-wd0 --attention=ca_softmax --weight_decay=0.0
run sigmoid-wd0 --attention=sigmoid --weight_decay=0.0
run default-wd001 --weight_decay=0.01
run default-lr2e3 --learning_rate=2e-3 --min_lr=2e-3
run default-w256 --n_embd=256 --n_head=4
run ca_softmax-w256 --attention=ca_softmax --n_embd=256 --n_head=4
# optimiser control: SGD with momentum (Guo et al.: the BOS norm stays flat under SGD)
run default-sgd --optimizer=sgd --learning_rate=0.1 --min_lr=0.1 --weight_decay=0.0
# content-varying design: random first token, fixed token at position 1
run rf-default-learned --dataset=backcopy_rf65
run rf-default-rope --dataset=backcopy_rf65 --pos_emb=rope
run rf-ca_softmax-rope --dataset=backcopy_rf65 --pos_emb=rope --attention=ca_softmax
run rf-default-none --dataset=backcopy_rf65 --pos_emb=none
