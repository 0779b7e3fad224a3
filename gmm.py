"""
Gated memory mixture (GMM): k expert memory banks carried from one segment of a long sequence to the next.

The design is GMM-XLNet's gated memory mixture, put into a decoder-only GPT the way the Recurrent Memory
Transformer puts its memory (Bulatov et al., NeurIPS 2022, https://arxiv.org/abs/2207.06881). Each segment runs as

    [R read slots][T text tokens][R write tokens]        under one causal mask

- the read slots' input embeddings are the memory read for this segment: 'mixture' reads sum_j q_j E_j, M slots
  whatever k is; 'concat' reads every bank's M slots side by side (R = banks * M), each with a learned embedding
  naming its bank and slot, so the text attends to the expert it needs;
- the write tokens' final hidden states W (B, R, D) are what the segment writes; they enter as the read slots plus
  a learned per-slot embedding ('read', RMT's layout: the residual stream carries the memory through the segment,
  so a write that changes nothing keeps it) or as the learned embeddings alone ('learned');
- a gating network routes W to the k experts, p = softmax(router(pool(W)) / temperature)  (B, k); with top_k > 0
  only the top_k experts of each write are updated and the others keep their state bit for bit (Mixture-of-Memories,
  https://arxiv.org/abs/2502.13685);
- each updated expert j takes a gated, routing-weighted step towards a candidate:
      a_j = s_j * sigmoid(Wg_j [E_j ; u_j] + b_j),   E_j <- (1 - a_j) * E_j + a_j * u_j
  with u_j = W (mixture: the same write for every expert) or expert j's own R/banks write tokens (concat), or
  tanh(Wu_j [E_j ; W]) ('projected'); s_j = p_j ('prob') or p_j / max_i p_i ('normalized': the chosen expert writes
  at full gate strength). Sparse routing scales by the raw probability over a constant max, as the Switch Transformer
  does (https://arxiv.org/abs/2101.03961): the top expert still writes at full strength, and the router still gets
  the language model's gradient through p_j;
- an optional shared expert is written by every segment at full strength, beside the routed ones;
- the next segment reads with q = this write's routing (restricted to the chosen experts and renormalised when
  sparse) or with a separate router's reading of the updated experts ('read'); either way the read depends only on
  earlier segments, so the text never sees a write made from its own future.

The memory is a plain value (Memory) passed into a segment and returned from it; model.py owns the loop over
segments and decides where gradients stop (truncated BPTT). Everything here is a plain nn.Module.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch.nn import functional as F

MAX_EXPERTS = 8
INITS = ("learned", "orthogonal", "zeros")
# parameters of the add-on that are states, embeddings, gains or biases, not matmul weights: no weight decay on them
NO_DECAY = ("init_states", "write_emb", "read_emb", "read_gain", "gate_bias", "cand_bias", "query")


class Memory(NamedTuple):
    """What one segment hands to the next."""

    experts: torch.Tensor  # (B, banks, M, D) the expert banks: k routed ones, then the shared one if any
    route: torch.Tensor  # (B, k) the read weights the write that produced them left (uniform before the first write)
    empty: bool = False  # nothing has been written yet: the initial states (what gmm_read_initial = False skips)


class Routing(NamedTuple):
    """What a write decided, for the auxiliary losses and for analysis."""

    probs: torch.Tensor  # (B, k) routing probabilities p of the write
    gates: torch.Tensor  # (B, k) mean write strength a_j of each routed expert over slots and dimensions
    read: torch.Tensor  # (B, k) the mixture weights the next segment reads with
    chosen: torch.Tensor  # (B, k) 1 where the write updated the expert (all 1 when dense)


def parse_init(spec: str, k: int) -> list[str]:
    """'learned' -> k x 'learned'; 'learned,zeros,...' -> one entry per expert. ValueError names what is allowed."""
    parts = [s.strip() for s in spec.split(",")]
    if len(parts) == 1:
        parts = parts * k
    if len(parts) != k or any(p not in INITS for p in parts):
        raise ValueError(
            f"gmm_init = '{spec}' must be one of {', '.join(INITS)} or a comma-separated list of {k} of them"
        )
    return parts


def top_k_mask(p: torch.Tensor, top_k: int) -> torch.Tensor:
    """(B, k) probabilities -> (B, k) 0/1 mask of each row's top_k experts (all ones when top_k = 0: dense)."""
    if top_k == 0:
        return torch.ones_like(p)
    return torch.zeros_like(p).scatter(-1, p.topk(top_k, dim=-1).indices, 1.0)


class MemoryGatingNetwork(nn.Module):
    """Routes a segment's write states W (B, R, D) to k experts: pool over slots, a linear router, a softmax."""

    def __init__(self, n_embd: int, n_experts: int, pooling: str, temperature: float) -> None:
        super().__init__()
        self.pooling = pooling
        self.temperature = temperature
        # attention pooling: a learned query scores each slot, and the pool is the softmax-weighted sum
        self.query = nn.Parameter(torch.zeros(n_embd)) if pooling == "attention" else None
        self.router = nn.Linear(n_embd, n_experts)

    def pool(self, W: torch.Tensor) -> torch.Tensor:
        """(B, R, D) -> (B, D)"""
        if self.pooling == "mean":
            return W.mean(dim=1)
        if self.pooling == "max":
            return W.max(dim=1).values
        assert self.query is not None
        weights = F.softmax(W @ self.query / math.sqrt(W.size(-1)), dim=1)  # (B, R)
        return (weights.unsqueeze(-1) * W).sum(dim=1)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        """(B, R, D) -> routing probabilities (B, k)"""
        return F.softmax(self.router(self.pool(W)) / self.temperature, dim=-1)


class ExpertUpdater(nn.Module):
    """Gated, scaled update of every bank towards its candidate, all banks in one einsum."""

    def __init__(self, n_embd: int, n_banks: int, candidate: str, gate_bias: float = 0.0) -> None:
        super().__init__()
        self.candidate = candidate
        # per-bank linear maps from [E_j ; W_j] (2D) to D: the gate Wg_j and, if projected, the candidate Wu_j
        self.gate_weight = nn.Parameter(torch.randn(n_banks, 2 * n_embd, n_embd) * 0.02)
        self.gate_bias = nn.Parameter(torch.full((n_banks, n_embd), gate_bias))
        if candidate == "projected":
            self.cand_weight = nn.Parameter(torch.randn(n_banks, 2 * n_embd, n_embd) * 0.02)
            self.cand_bias = nn.Parameter(torch.zeros(n_banks, n_embd))

    def forward(self, experts: torch.Tensor, W: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """experts (B, n, M, D), W (B, 1 or n, M, D) the write for every bank or for each, s (B, n) the write scale
        -> updated experts (B, n, M, D), strengths a (B, n, M, D)"""
        n = experts.size(1)
        W = W.expand(-1, n, -1, -1)
        EW = torch.cat([experts, W], dim=-1)  # (B, n, M, 2D)
        g = torch.sigmoid(torch.einsum("bkmi,kio->bkmo", EW, self.gate_weight) + self.gate_bias[:, None])
        u = W
        if self.candidate == "projected":
            u = torch.tanh(torch.einsum("bkmi,kio->bkmo", EW, self.cand_weight) + self.cand_bias[:, None])
        a = s[:, :, None, None] * g  # (B, n, M, D)
        return (1 - a) * experts + a * u, a


def expert_scale(p: torch.Tensor, chosen: torch.Tensor, mode: str, sparse: bool) -> torch.Tensor:
    """Each routed expert's write scale s (B, k) from the probabilities p and the chosen-expert mask (B, k).
    'prob': p_j. 'normalized': p_j / max p, so the top expert writes at full gate strength; when sparse the max is a
    constant (detached), so that even a single chosen expert passes the router a gradient (Switch's raw-probability
    scaling) where a renormalised weight would be exactly 1."""
    if mode == "prob":
        return p * chosen
    top = p.max(dim=-1, keepdim=True).values
    return p / (top.detach() if sparse else top) * chosen


class AggregatedMemoryReader(nn.Module):
    """Read weights for the mixture read: routing 'write' reads with the weights the write left in the memory;
    'read' scores each updated routed expert with its own router (mean over slots, a linear score, softmax at the
    gating temperature)."""

    def __init__(self, n_embd: int, routing: str, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.scorer = nn.Linear(n_embd, 1) if routing == "read" else None

    def weights(self, experts: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """routed experts (B, k, M, D) and the write's read weights (B, k) -> (B, k) mixture weights"""
        if self.scorer is None:
            return route
        scores = self.scorer(experts.mean(dim=2)).squeeze(-1)  # (B, k, D) -> (B, k)
        return F.softmax(scores / self.temperature, dim=-1)


class GatedMemoryMixture(nn.Module):
    """The whole add-on: initial expert states, read and write-token embeddings, gating, updates and reads."""

    def __init__(self, n_embd: int, n_experts: int, n_slots: int, pooling: str, temperature: float,
                 candidate: str, write_scale: str, routing: str, init: str, write_input: str, top_k: int = 0,
                 shared_expert: bool = False, read: str = "mixture", init_scale: float = 1.0,
                 gate_bias: float = 0.0, read_scale: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.n_experts = n_experts
        self.n_banks = n_experts + int(shared_expert)  # the shared bank, if any, is the last
        self.n_slots = n_slots
        self.write_input = write_input
        self.write_scale = write_scale
        self.top_k = top_k
        self.shared = shared_expert
        self.read_mode = read
        self.n_read = self.n_banks * n_slots if read == "concat" else n_slots  # R: read slots = write tokens
        inits = parse_init(init, n_experts) + (["learned"] if shared_expert else [])
        # initial expert states (banks, M, D), by default at the scale of the final hidden states they mix with
        # (RMS ~1); 'orthogonal' and 'zeros' experts are fixed starting points, 'learned' ones are trained
        states = torch.randn(self.n_banks, n_slots, n_embd) * init_scale
        ortho = torch.empty(self.n_banks * n_slots, n_embd)
        nn.init.orthogonal_(ortho)  # rows orthonormal where banks*M <= D
        ortho = ortho.view(self.n_banks, n_slots, n_embd) * math.sqrt(n_embd) * init_scale
        for j, kind in enumerate(inits):
            if kind == "orthogonal":
                states[j] = ortho[j]
            elif kind == "zeros":
                states[j] = 0.0
        self.init_states = nn.Parameter(states)
        self.register_buffer("init_trainable", torch.tensor([kind == "learned" for kind in inits]).float())
        self.write_emb = nn.Parameter(torch.randn(self.n_read, n_embd) * 0.02)  # (R, D) the write tokens' embeddings
        # concat: each read slot is named by its bank and slot, as a position embedding names a token's place
        self.read_emb = nn.Parameter(torch.randn(self.n_read, n_embd) * 0.02) if read == "concat" else None
        # read_scale > 0: the read is RMS-normalised and scaled by a learned gain, starting at the token embeddings'
        # scale rather than the final hidden states', so the segment's own tokens are not drowned out by the memory
        self.read_gain = nn.Parameter(torch.full((n_embd,), read_scale)) if read_scale > 0 else None
        # a single bank needs no router: it always takes the whole write
        self.gate = MemoryGatingNetwork(n_embd, n_experts, pooling, temperature) if n_experts > 1 else None
        self.updater = ExpertUpdater(n_embd, self.n_banks, candidate, gate_bias)
        self.reader = AggregatedMemoryReader(n_embd, routing, temperature) if n_experts > 1 else None

    init_trainable: torch.Tensor

    def initial(self, batch_size: int) -> Memory:
        """The memory before the first segment: the initial states and a uniform read."""
        mask = self.init_trainable[:, None, None]
        states = self.init_states * mask + self.init_states.detach() * (1 - mask)  # fixed experts get no gradient
        experts = states.unsqueeze(0).expand(batch_size, -1, -1, -1)  # (B, banks, M, D)
        route = torch.full((batch_size, self.n_experts), 1.0 / self.n_experts, device=states.device)
        return Memory(experts, route.to(states.dtype), empty=True)

    def inputs(self, memory: Memory) -> tuple[torch.Tensor, torch.Tensor]:
        """memory -> a segment's read slots' and write tokens' input embeddings, each (B, R, D)."""
        read = self.read(memory)
        raw = self.write_input == "raw" and self.read_gain is not None
        return read, self.write_tokens(self.read(memory, raw=True) if raw else read)

    def read(self, memory: Memory, raw: bool = False) -> torch.Tensor:
        """memory -> the read slots' input embeddings (B, R, D); raw: without read_scale's normalisation"""
        E = memory.experts
        if self.read_mode == "concat":
            x = E.reshape(E.size(0), self.n_read, E.size(-1))  # (B, banks * M, D), bank by bank
        else:
            routed = E[:, : self.n_experts]  # (B, k, M, D)
            x = routed[:, 0] if self.reader is None else torch.einsum("bk,bkmd->bmd", self.read_weights(memory), routed)
            if self.shared:  # the shared bank and the routed mixture, equally
                x = 0.5 * (x + E[:, -1])
        if self.read_gain is not None and not raw:
            x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * self.read_gain
        if self.read_emb is not None:
            x = x + self.read_emb.to(x.dtype)
        return x

    def read_weights(self, memory: Memory) -> torch.Tensor:
        """(B, k) the weights a mixture read gives the routed experts"""
        assert self.reader is not None
        return self.reader.weights(memory.experts[:, : self.n_experts], memory.route)

    def write_tokens(self, read: torch.Tensor) -> torch.Tensor:
        """The write tokens' input embeddings (B, R, D), given the read they start from (B, R, D): this segment's
        read slots (write_input 'read'), the read before read_scale's normalisation ('raw'), or nothing ('learned')."""
        write = self.write_emb.unsqueeze(0).expand(read.size(0), -1, -1).to(read.dtype)
        return write if self.write_input == "learned" else read + write

    def write(self, memory: Memory, W: torch.Tensor) -> tuple[Memory, Routing]:
        """Update the experts from a segment's write states W (B, R, D)."""
        B, k = W.size(0), self.n_experts
        p = torch.ones(B, 1, device=W.device, dtype=W.dtype) if self.gate is None else self.gate(W)  # (B, k)
        chosen = top_k_mask(p, self.top_k)  # (B, k)
        s = expert_scale(p, chosen, self.write_scale, sparse=self.top_k > 0)  # (B, k)
        # the shared bank, if any, is chosen by every write and takes it at full scale: (B, k) -> (B, banks)
        s, chosen_all = (F.pad(x, (0, self.n_banks - k), value=1.0) for x in (s, chosen))
        old = memory.experts.to(W.dtype)  # (B, banks, M, D)
        # concat: bank j writes from its own M write tokens, which entered as its own read slots
        cand = W.view(B, self.n_banks, self.n_slots, -1) if self.read_mode == "concat" else W.unsqueeze(1)
        experts, a = self.updater(old, cand, s)
        if self.top_k > 0:  # experts that were not chosen keep their state exactly
            experts = torch.where(chosen_all[:, :, None, None].bool(), experts, old)
        # the mixture read of the next segment: the write's routing, over the chosen experts only when sparse
        route = p if self.top_k == 0 else p * chosen / (p * chosen).sum(dim=-1, keepdim=True)
        new = Memory(experts, route)
        read = route if self.reader is None else self.read_weights(new)
        return new, Routing(p, a[:, :k].mean(dim=(2, 3)), read, chosen)


def load_balance_loss(probs: torch.Tensor, chosen: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer load balance (https://arxiv.org/abs/2101.03961, eq. 4) over N routing decisions (N, k):
    k * sum_i f_i * P_i, with f_i the fraction of hard choices that went to expert i (the top expert of each
    decision, or with sparse routing the chosen (N, k) 0/1 experts, each decision counting once) and P_i the mean
    probability given to i. It is 1 when routing is uniform or perfectly balanced, k when everything goes to one
    expert; only P carries gradient."""
    k = probs.size(-1)
    if chosen is None:
        chosen = F.one_hot(probs.argmax(dim=-1), k)
    hard = chosen.float()
    f = (hard / hard.sum(dim=-1, keepdim=True)).mean(dim=0)  # (k,)
    P = probs.float().mean(dim=0)  # (k,)
    return k * (f * P).sum()


def routing_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy in nats of N routing decisions (N, k): H = -sum_i p_i log p_i, between 0 (one expert takes
    all) and log k (uniform). The training loss adds gmm_entropy * H: a positive weight sharpens each decision
    towards one expert, a negative weight spreads it."""
    return write_entropy(probs).mean()


def write_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each routing decision (..., k) -> (...)."""
    p = probs.float()
    return -(p * torch.log(p.clamp_min(1e-9))).sum(dim=-1)


def routing_stats(probs: torch.Tensor, gates: torch.Tensor) -> dict[str, Any]:
    """Routing figures of N sequences of S segments, from probs and gates (S, N, k): one write per segment and
    sequence, k >= 2 experts. Lists are per expert (or per segment, then per expert); std is over writes."""
    S, N, k = probs.shape
    p, g = probs.float(), gates.float()
    top = p.argmax(dim=-1)  # (S, N) each write's top expert
    H = write_entropy(p)  # (S, N) entropy of each write, nats
    same = (top[1:] == top[:-1]).float()  # (S-1, N) consecutive segments that keep their top expert
    hard_share = F.one_hot(top, k).float().mean(dim=(0, 1))  # (k,)
    return {
        "util": p.mean(dim=(0, 1)).tolist(),
        "hard_share": hard_share.tolist(),
        "gate": g.mean(dim=(0, 1)).tolist(),
        "entropy": H.mean().item(),
        "entropy_std": H.std(correction=0).item(),
        "entropy_norm": H.mean().item() / math.log(k),
        "entropy_norm_std": H.std(correction=0).item() / math.log(k),
        "load_balance": load_balance_loss(p.reshape(S * N, k)).item(),
        "consistency": same.mean().item() if S > 1 else None,
        "consistency_chance": (hard_share**2).sum().item(),
        "segment_util": p.mean(dim=1).tolist(),  # (S, k)
        "segment_gate": g.mean(dim=1).tolist(),  # (S, k)
    }
