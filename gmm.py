"""
Gated memory mixture (GMM): k expert memory banks carried from one segment of a long sequence to the next.

The design is GMM-XLNet's gated memory mixture, put into a decoder-only GPT the way the Recurrent Memory
Transformer puts its memory (Bulatov et al., NeurIPS 2022, https://arxiv.org/abs/2207.06881). Each segment runs as

    [M read slots][T text tokens][M write tokens]        under one causal mask

- the read slots' input embeddings are the memory read for this segment (a routing-weighted mixture of experts);
- the write tokens' final hidden states W (B, M, D) are what the segment writes; they enter as the read memory
  plus a learned per-slot embedding ('read', RMT's layout: the residual stream carries the memory through the
  segment, so a write that changes nothing keeps it) or as the learned embeddings alone ('learned');
- a gating network routes W to the k experts, p = softmax(router(pool(W)) / temperature)  (B, k);
- each expert j takes a gated, routing-weighted step towards a candidate:
      a_j = s_j * sigmoid(Wg_j [E_j ; W]),   E_j <- (1 - a_j) * E_j + a_j * u_j
  with u_j = W ('write') or tanh(Wu_j [E_j ; W]) ('projected'), and s_j = p_j ('prob') or p_j / max_i p_i
  ('normalized': the chosen expert writes at full gate strength);
- the next segment reads sum_j q_j E_j, where q is this write's routing ('write') or a separate router's reading
  of the updated experts ('read'); either way the read depends only on earlier segments, so the text never sees
  a write made from its own future.

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


class Memory(NamedTuple):
    """What one segment hands to the next."""

    experts: torch.Tensor  # (B, k, M, D) the expert banks
    route: torch.Tensor  # (B, k) the routing of the write that produced them (uniform before the first write)


class Routing(NamedTuple):
    """What a write decided, for the auxiliary losses and for analysis."""

    probs: torch.Tensor  # (B, k) routing probabilities p of the write
    gates: torch.Tensor  # (B, k) mean write strength a_j of each expert over slots and dimensions
    read: torch.Tensor  # (B, k) the mixture weights the next segment reads with


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


class MemoryGatingNetwork(nn.Module):
    """Routes a segment's write states W (B, M, D) to k experts: pool over slots, a linear router, a softmax."""

    def __init__(self, n_embd: int, n_experts: int, pooling: str, temperature: float) -> None:
        super().__init__()
        self.pooling = pooling
        self.temperature = temperature
        # attention pooling: a learned query scores each slot, and the pool is the softmax-weighted sum
        self.query = nn.Parameter(torch.zeros(n_embd)) if pooling == "attention" else None
        self.router = nn.Linear(n_embd, n_experts)

    def pool(self, W: torch.Tensor) -> torch.Tensor:
        """(B, M, D) -> (B, D)"""
        if self.pooling == "mean":
            return W.mean(dim=1)
        if self.pooling == "max":
            return W.max(dim=1).values
        assert self.query is not None
        weights = F.softmax(W @ self.query / math.sqrt(W.size(-1)), dim=1)  # (B, M)
        return (weights.unsqueeze(-1) * W).sum(dim=1)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        """(B, M, D) -> routing probabilities (B, k)"""
        return F.softmax(self.router(self.pool(W)) / self.temperature, dim=-1)


class ExpertUpdater(nn.Module):
    """Gated, routing-weighted update of every expert from the write states, all k experts in one einsum."""

    def __init__(self, n_embd: int, n_experts: int, candidate: str, write_scale: str) -> None:
        super().__init__()
        self.candidate = candidate
        self.write_scale = write_scale
        # per-expert linear maps from [E_j ; W] (2D) to D: the gate Wg_j and, if projected, the candidate Wu_j
        self.gate_weight = nn.Parameter(torch.randn(n_experts, 2 * n_embd, n_embd) * 0.02)
        self.gate_bias = nn.Parameter(torch.zeros(n_experts, n_embd))
        if candidate == "projected":
            self.cand_weight = nn.Parameter(torch.randn(n_experts, 2 * n_embd, n_embd) * 0.02)
            self.cand_bias = nn.Parameter(torch.zeros(n_experts, n_embd))

    def forward(self, experts: torch.Tensor, W: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """experts (B, k, M, D), W (B, M, D), p (B, k) -> updated experts (B, k, M, D), strengths a (B, k, M, D)"""
        k = experts.size(1)
        EW = torch.cat([experts, W.unsqueeze(1).expand(-1, k, -1, -1)], dim=-1)  # (B, k, M, 2D)
        g = torch.sigmoid(torch.einsum("bkmi,kio->bkmo", EW, self.gate_weight) + self.gate_bias[:, None])
        if self.candidate == "projected":
            u = torch.tanh(torch.einsum("bkmi,kio->bkmo", EW, self.cand_weight) + self.cand_bias[:, None])
        else:
            u = W.unsqueeze(1)  # (B, 1, M, D), the same candidate for every expert
        s = p if self.write_scale == "prob" else p / p.max(dim=-1, keepdim=True).values
        a = s[:, :, None, None] * g  # (B, k, M, D)
        return (1 - a) * experts + a * u, a


class AggregatedMemoryReader(nn.Module):
    """The read a segment starts from: sum_j q_j E_j, exposing M slots whatever k is.
    routing 'write' reads with the routing of the write that made the experts; 'read' scores each updated expert
    with its own router (mean over slots, a linear score, softmax at the gating temperature)."""

    def __init__(self, n_embd: int, routing: str, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.scorer = nn.Linear(n_embd, 1) if routing == "read" else None

    def weights(self, memory: Memory) -> torch.Tensor:
        """(B, k) mixture weights for reading this memory"""
        if self.scorer is None:
            return memory.route
        scores = self.scorer(memory.experts.mean(dim=2)).squeeze(-1)  # (B, k, D) -> (B, k)
        return F.softmax(scores / self.temperature, dim=-1)

    def forward(self, memory: Memory) -> torch.Tensor:
        """memory -> the read slots (B, M, D)"""
        q = self.weights(memory)
        return torch.einsum("bk,bkmd->bmd", q, memory.experts)


class GatedMemoryMixture(nn.Module):
    """The whole add-on: initial expert states, write-token embeddings, gating, updates and reads."""

    def __init__(self, n_embd: int, n_experts: int, n_slots: int, pooling: str, temperature: float,
                 candidate: str, write_scale: str, routing: str, init: str, write_input: str) -> None:  # fmt: skip
        super().__init__()
        self.n_experts = n_experts
        self.n_slots = n_slots
        self.write_input = write_input
        inits = parse_init(init, n_experts)
        # initial expert states (k, M, D) at the scale of the final hidden states they mix with (RMS ~1);
        # 'orthogonal' and 'zeros' experts are fixed starting points, 'learned' ones are trained
        states = torch.randn(n_experts, n_slots, n_embd)
        ortho = torch.empty(n_experts * n_slots, n_embd)
        nn.init.orthogonal_(ortho)  # rows orthonormal where k*M <= D
        ortho = ortho.view(n_experts, n_slots, n_embd) * math.sqrt(n_embd)
        for j, kind in enumerate(inits):
            if kind == "orthogonal":
                states[j] = ortho[j]
            elif kind == "zeros":
                states[j] = 0.0
        self.init_states = nn.Parameter(states)
        self.register_buffer("init_trainable", torch.tensor([kind == "learned" for kind in inits]).float())
        self.write_emb = nn.Parameter(torch.randn(n_slots, n_embd) * 0.02)  # (M, D) the write tokens' embeddings
        # a single bank needs no router: it always takes the whole write
        self.gate = MemoryGatingNetwork(n_embd, n_experts, pooling, temperature) if n_experts > 1 else None
        self.updater = ExpertUpdater(n_embd, n_experts, candidate, write_scale)
        self.reader = AggregatedMemoryReader(n_embd, routing, temperature) if n_experts > 1 else None

    init_trainable: torch.Tensor

    def initial(self, batch_size: int) -> Memory:
        """The memory before the first segment: the initial states and a uniform read."""
        mask = self.init_trainable[:, None, None]
        states = self.init_states * mask + self.init_states.detach() * (1 - mask)  # fixed experts get no gradient
        experts = states.unsqueeze(0).expand(batch_size, -1, -1, -1)  # (B, k, M, D)
        route = torch.full((batch_size, self.n_experts), 1.0 / self.n_experts, device=states.device)
        return Memory(experts, route.to(states.dtype))

    def read(self, memory: Memory) -> torch.Tensor:
        """memory -> the read slots' input embeddings (B, M, D)"""
        if self.reader is None:
            return memory.experts[:, 0]
        return self.reader(memory)

    def write_tokens(self, read: torch.Tensor) -> torch.Tensor:
        """The write tokens' input embeddings (B, M, D), given this segment's read slots (B, M, D)."""
        write = self.write_emb.unsqueeze(0).expand(read.size(0), -1, -1).to(read.dtype)
        return read + write if self.write_input == "read" else write

    def write(self, memory: Memory, W: torch.Tensor) -> tuple[Memory, Routing]:
        """Update the experts from a segment's write states W (B, M, D)."""
        p = torch.ones(W.size(0), 1, device=W.device, dtype=W.dtype) if self.gate is None else self.gate(W)
        experts, a = self.updater(memory.experts.to(W.dtype), W, p)
        new = Memory(experts, p)
        read = p if self.reader is None else self.reader.weights(new)
        return new, Routing(p, a.mean(dim=(2, 3)), read)


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load balance (https://arxiv.org/abs/2101.03961, eq. 4) over N routing decisions (N, k):
    k * sum_i f_i * P_i, with f_i the fraction of decisions whose top expert is i and P_i the mean probability
    given to i. It is 1 when routing is uniform or perfectly balanced, k when everything goes to one expert; only
    P carries gradient."""
    k = probs.size(-1)
    f = F.one_hot(probs.argmax(dim=-1), k).float().mean(dim=0)  # (k,)
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
