# The quick start: a small character-level GPT on tiny-shakespeare that reads 4 segments of 64 characters in a
# row, carrying a memory of 8 slots from each segment to the next. About 5 minutes on a 2-core CPU.
# $ python train.py config/train_gmm_shakespeare.py
# Baselines and mixtures on the same data and schedule: --gmm_experts=0 (no memory); four routed banks, each write
# updating its top 2 beside a shared bank every segment writes: --gmm_experts=4 --gmm_top_k=2 --gmm_shared_expert=True
# On a GPU scale it up from the command line, e.g.
# $ python train.py config/train_gmm_shakespeare.py --device=cuda --compile=True --batch_size=64 \
#       --block_size=256 --n_layer=6 --n_head=6 --n_embd=384 --max_iters=5000

out_dir = "out-gmm-shakespeare"
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = True

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 8
block_size = 64  # tokens per segment
n_segments = 4  # segments per training sequence: 256 characters, of which each segment sees 64 directly
bptt_segments = 0  # backpropagate through all of them

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

# one bank (RMT's memory), chosen by measurement (RESULTS.md, "Defaults chosen by measurement"): the best mean at 4x
# the trained length on MQAR over P = 4, 8 and 16 pairs among the variants as reliable as the best on recall. Routed
# mixtures with one bank's read slots held no more pairs than one bank there (5 seeds a variant); its lead is within
# noise. The README's routing analysis trains the mixture with the flags above.
gmm_experts = 1
gmm_slots = 8

learning_rate = 1e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False
