# The second GPU batch (2026-11-26): no BOS and no fixed token (design nobos: the first token is an ordinary
# random one), so a sink on position 0 cannot rest on a token's embedding. Sourced by run_gpu.sh.
# 3 layers, rotary positions: the five variants of the hypothesis test, a second seed, lr 2e-3 with its ca_softmax control
run nb-default-rope --dataset=backcopy_nb65 --pos_emb=rope
run nb-ca_softmax-rope --dataset=backcopy_nb65 --pos_emb=rope --attention=ca_softmax
run nb-attn_bias-rope --dataset=backcopy_nb65 --pos_emb=rope --attention=attn_bias
run nb-sigmoid-rope --dataset=backcopy_nb65 --pos_emb=rope --attention=sigmoid
run nb-default-rope-sgd --dataset=backcopy_nb65 --pos_emb=rope --optimizer=sgd --learning_rate=0.1 --min_lr=0.1 --weight_decay=0.0
run nb-default-rope-s2 --dataset=backcopy_nb65 --pos_emb=rope --seed=1338
run nb-default-rope-lr2e3 --dataset=backcopy_nb65 --pos_emb=rope --learning_rate=2e-3 --min_lr=2e-3
run nb-ca_softmax-rope-lr2e3 --dataset=backcopy_nb65 --pos_emb=rope --attention=ca_softmax --learning_rate=2e-3 --min_lr=2e-3
# 6 layers, rotary: the sink layers can come after the peak layer, as in LLMs
run nb-default-rope-l6 --dataset=backcopy_nb65 --pos_emb=rope --n_layer=6
run nb-ca_softmax-rope-l6 --dataset=backcopy_nb65 --pos_emb=rope --n_layer=6 --attention=ca_softmax
run nb-attn_bias-rope-l6 --dataset=backcopy_nb65 --pos_emb=rope --n_layer=6 --attention=attn_bias
run nb-sigmoid-rope-l6 --dataset=backcopy_nb65 --pos_emb=rope --n_layer=6 --attention=sigmoid
run nb-default-rope-l6-sgd --dataset=backcopy_nb65 --pos_emb=rope --n_layer=6 --optimizer=sgd --learning_rate=0.1 --min_lr=0.1 --weight_decay=0.0
run nb-default-rope-l6-s2 --dataset=backcopy_nb65 --pos_emb=rope --n_layer=6 --seed=1338
# 3 layers, no positions (the setting where the random-first design grew its outlier)
run nb-default-none --dataset=backcopy_nb65 --pos_emb=none
run nb-ca_softmax-none --dataset=backcopy_nb65 --pos_emb=none --attention=ca_softmax
