# Memory on text with long-range structure: a small character-level GPT on Python source (the standard library of
# the running interpreter, data/pycode_char), reading 8 segments of 64 characters in a row, so a name defined in one
# segment is used in a later one. The quick start's model with four routed banks (top-2 and a shared bank), and its
# 2,048 tokens a step.
# $ python data/pycode_char/prepare.py && python train.py config/train_gmm_pycode.py
# Baselines on the same data and schedule: --gmm_experts=0 (no memory), --gmm_experts=1 (one bank, RMT), and full
# attention over the same 512 characters: --gmm_experts=0 --block_size=512 --n_segments=1.
# The benchmark runs all four: python benchmark.py --tasks=pycode_char --variants=off,k1,k4-top2-shared,full
# The recipe in which memory pays (RESULTS.md, Python source, 5 seeds): rotary positions and a warm-up of 1, 2, 4,
# then 8 segments a sequence at the same tokens a step:
# $ python train.py config/train_gmm_pycode.py --pos_emb=rope --segment_curriculum=[1,2,4,8] \
#     --curriculum_same_tokens=True
# (this file stays the benchmark's base, whose values are part of every recorded run's settings)

out_dir = "out-gmm-pycode"
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = True

dataset = "pycode_char"
gradient_accumulation_steps = 1
batch_size = 4
block_size = 64  # tokens per segment
n_segments = 8  # segments per training sequence: 512 characters, of which each segment sees 64 directly
bptt_segments = 0  # backpropagate through all of them

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

gmm_experts = 4
gmm_slots = 8
gmm_top_k = 2  # the mixture of RESULTS.md's Python-source tables (the quick start's until it moved to one bank)
gmm_shared_expert = True

learning_rate = 1e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False
