"""
Full definition of a GPT language model, all of it in this single file.

References:
1) the official GPT-2 TensorFlow implementation released by OpenAI:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face transformers' PyTorch GPT-2, whose weights `GPT.from_pretrained` loads:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py

With the memory mixture off (`gmm_experts = 0`) this is a GPT-2, logit for logit; `gmm.py` holds the add-on.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import decode
import gmm
from decode import KVCache
from gmm import Memory, Routing

GPT2_SIZES = {  # name -> (n_layer, n_head, n_embd); all have vocab 50257 and 1024 positions
    "gpt2": (12, 12, 768),  # 124M params
    "gpt2-medium": (24, 16, 1024),  # 350M params
    "gpt2-large": (36, 20, 1280),  # 774M params
    "gpt2-xl": (48, 25, 1600),  # 1558M params
}
GELUS = ("tanh", "exact")  # GPTConfig.gelu's forms
# transformers' GPT-2 activation_function -> GPTConfig.gelu
GELU_FORMS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}


@dataclass
class GPTConfig:
    block_size: int = 1024  # tokens per segment (the attention window)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster
    # learned: GPT-2's table of block_size position embeddings (what GPT-2 weights and a transformers export hold);
    # rope: rotary embeddings that turn queries and keys by their position (RoFormer, https://arxiv.org/abs/2104.09864),
    # nothing per position to learn; with memory, positions count along a segment's [read slots][tokens][write tokens]
    pos_emb: str = "learned"
    rope_base: float = 10000.0  # rope: the pair i of a head turns by position * rope_base^(-2i / head size)
    # True: each token's embedding also gets the previous token's, through a learned map that starts at zero (a
    # short convolution of width 2, the shift of H3 https://arxiv.org/abs/2212.14052 and Zoology's BaseConv): a
    # token then knows its predecessor before any attention, which associative recall needs (a value knows its key).
    # Within a segment: its first token has no predecessor. A fresh model equals one without it
    token_shift: bool = False
    # the MLP's GELU: tanh (GPT-2's approximation, which its weights expect; transformers' gelu_new) | exact (the erf
    # form, nanoGPT's; transformers' gelu): the two differ by < 1e-3, and on a CPU the exact one's forward and backward
    # take about half the tanh one's time
    gelu: str = "tanh"
    # Transformer-XL (https://arxiv.org/abs/1901.02860): each segment's attention also sees the previous segment's
    # keys and values, cached without gradient: the baseline the memory must beat. Needs rope and no memory
    xl_attention: bool = False
    # gated memory mixture (gmm.py), carried from segment to segment; gmm_experts = 0 leaves a plain GPT
    gmm_experts: int = 0  # 0 = no memory, 1 = one memory bank (the RMT baseline), 2..8 = a routed mixture
    gmm_slots: int = 16  # M: slots per expert, read slots and write tokens per segment
    gmm_pooling: str = "mean"  # how the router pools the write states: mean | max | attention
    gmm_temperature: float = 1.0  # softmax temperature of the routers, > 0
    gmm_candidate: str = "write"  # what experts move towards: write (W) | projected (tanh(Wu [E; W]))
    gmm_write_scale: str = "normalized"  # write strength: prob (p_j) | normalized (p_j / max p)
    gmm_routing: str = "write"  # the read mixes experts with the write's routing | a separate read router
    # write tokens enter as the read memory + a learned embedding | learned only | raw: the read before
    # gmm_read_scale's normalisation + the embedding (so the text's view of the read can shrink, the carry not)
    gmm_write_input: str = "read"
    gmm_init: str = "learned"  # initial expert states: learned | orthogonal | zeros, or one per expert, a,b,...
    # with k >= 2 experts (with 0 or 1 bank these two are set to 0 and False: there is nothing to route)
    gmm_top_k: int = 0  # 0 = dense: every expert takes each write; 1..k-1 = only the top experts are updated
    gmm_shared_expert: bool = False  # one more bank, written by every segment, beside the k routed ones
    gmm_read: str = "mixture"  # what a segment reads: mixture (sum_j q_j E_j, M slots) | concat (every bank's slots)
    gmm_init_scale: float = 1.0  # std of the initial expert states (1 = the final hidden states' scale)
    gmm_gate_bias: float = 0.0  # initial bias of the write gates: > 0 writes more at first, < 0 keeps more
    gmm_read_scale: float = 0.0  # > 0: RMS-normalise the read, times a learned gain starting here; 0 = raw read
    gmm_load_balance: float = 0.01  # weight of the Switch load-balance loss in the training loss
    gmm_entropy: float = 0.0  # weight of the mean routing entropy in the training loss (> 0 sharpens routing)
    # False: every segment reads the initial memory ("registers": the same positions and parameters as the memory,
    # nothing carried from segment to segment), the control that separates carrying from having the extra slots
    gmm_carry: bool = True
    # True: text reads the read slots through a softmax of their own, added to the causal attention over the text with
    # a per-head gate tanh(g), g = 0 at first: a fresh model's text ignores the memory exactly (as with memory off)
    # and can only learn to use it. False: the read slots are keys like any other (RMT)
    gmm_read_gate: bool = False
    # False: a memory nothing has been written to is not read: the first segment has no read slots, its text first
    # and its write tokens after it (an empty memory, as ARMT starts from), so segment 1 runs as without memory.
    # True: every segment reads, the first one the learned initial states (RMT)
    gmm_read_initial: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "gmm_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout = {self.dropout} must be in [0, 1)")
        if not 0 <= self.gmm_experts <= gmm.MAX_EXPERTS:
            raise ValueError(f"gmm_experts = {self.gmm_experts} must be 0 (no memory), 1 (one bank) or 2..8 experts")
        choices = {
            "gmm_pooling": ("mean", "max", "attention"),
            "gmm_candidate": ("write", "projected"),
            "gmm_write_scale": ("prob", "normalized"),
            "gmm_routing": ("write", "read"),
            "gmm_write_input": ("read", "learned", "raw"),
            "gmm_read": ("mixture", "concat"),
            "pos_emb": ("learned", "rope"),
            "gelu": GELUS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} = '{getattr(self, name)}' must be one of {', '.join(allowed)}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            hs = self.n_embd // self.n_head
            raise ValueError(f"pos_emb = 'rope' turns pairs of a head's dimensions: head size {hs} is odd")
        if self.xl_attention and (self.pos_emb != "rope" or self.gmm_experts > 0):
            raise ValueError(
                f"xl_attention = True needs pos_emb = 'rope' and gmm_experts = 0 (not '{self.pos_emb}' and "
                f"{self.gmm_experts}): the previous segment's keys sit at relative positions, beside no memory"
            )
        if not self.rope_base > 0:
            raise ValueError(f"rope_base = {self.rope_base} must be > 0")
        if not self.gmm_temperature > 0:
            raise ValueError(f"gmm_temperature = {self.gmm_temperature} must be > 0")
        if self.gmm_experts > 1 and not 0 <= self.gmm_top_k < self.gmm_experts:
            raise ValueError(
                f"gmm_top_k = {self.gmm_top_k} must be 0 (dense) or 1..{self.gmm_experts - 1} experts per write"
            )
        if self.gmm_read == "concat" and self.gmm_routing == "read":
            raise ValueError("gmm_routing = 'read' weighs a mixture read: with gmm_read = 'concat' every bank is read")
        if self.gmm_experts <= 1:  # one bank or none: nothing to route, so a config's mixture settings do not apply
            self.gmm_top_k, self.gmm_shared_expert = 0, False
        if self.gmm_experts == 0:
            self.gmm_read_gate, self.gmm_read_initial = False, True
        if not self.gmm_read_initial and (self.gmm_read_gate or not self.gmm_carry):
            raise ValueError(
                "gmm_read_initial = False leaves the first segment without read slots: it needs gmm_carry = True "
                "(registers read the initial memory in every segment) and gmm_read_gate = False (the gate takes "
                "the first positions for read slots)"
            )
        if self.gmm_init_scale < 0 or self.gmm_read_scale < 0:
            raise ValueError(
                f"gmm_init_scale = {self.gmm_init_scale} and gmm_read_scale = {self.gmm_read_scale} must be >= 0"
            )
        if self.gmm_load_balance < 0:
            raise ValueError(f"gmm_load_balance = {self.gmm_load_balance} must be >= 0")
        gmm.parse_init(self.gmm_init, max(1, self.gmm_experts))

    @classmethod
    def from_dict(cls, d: dict[str, Any], checkpoint: bool = False) -> GPTConfig:
        """Build from a dict that may hold keys of other configs (a checkpoint's, a run's): unknown keys are dropped.
        checkpoint: d is a checkpoint's model_args, which name every field but those added after it was saved."""
        names = {f.name for f in fields(cls)}
        if checkpoint and d.get("gmm_experts") and "gmm_write_input" not in d:
            d = {**d, "gmm_write_input": "learned"}  # checkpoints from before the setting had learned write tokens
        return cls(**{k: v for k, v in d.items() if k in names})


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias. PyTorch doesn't support simply bias=False."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # key, query, value projections for all heads, but in a batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # flash attention makes GPU go brrrrr; the explicit softmax path is the reference it must equal
        self.flash = hasattr(F, "scaled_dot_product_attention")
        # gmm_read_gate: the first n_read positions of every sequence are read slots (GPT sets n_read), read through
        # their own softmax and this per-head gate, tanh(0) = 0 at first
        self.n_read = 0
        self.read_gate = nn.Parameter(torch.zeros(config.n_head)) if config.gmm_read_gate else None

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:  # turn queries and keys by their positions; the cache holds keys already turned
            q, k = rotate(q, *rope), rotate(k, *rope)
        start = 0
        if cache is not None:  # write the new keys/values at [pos, pos+T) and attend over [0, pos+T)
            k_cache, v_cache, start = cache
            k_cache[:, :, start : start + T] = k
            v_cache[:, :, start : start + T] = v
            k, v = k_cache[:, :, : start + T], v_cache[:, :, : start + T]  # (B, nh, S, hs) with S = pos+T
        y = self.attend(q, k, v) if self.read_gate is None else self.gated_read(q, k, v, start)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """Softmax attention of T queries (B, nh, T, hs) over S keys -> (B, nh, T, hs). Causal: the queries are the
        last T of the S positions, query i at S-T+i, and may see keys 0..S-T+i."""
        T, S = q.size(2), k.size(2)
        if self.flash:
            dropout_p = self.dropout if self.training else 0.0
            mask = causal_mask(T, S, q.device) if causal and 1 < T < S else None
            out: torch.Tensor = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and T == S
            )
            return out
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
        if causal:
            att = att.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y: torch.Tensor = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        return y

    def gated_read(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """gmm_read_gate: queries after the R read slots attend causally to the positions after them, plus
        tanh(gate) times their attention over the read slots alone; the read slots (which come in one call, first)
        attend among themselves. (B, nh, T, hs) queries at positions start.., keys 0..start+T-1 -> (B, nh, T, hs)"""
        assert self.read_gate is not None
        R, parts = self.n_read, []
        if start < R:  # this call begins with the read slots
            parts.append(self.attend(q[:, :, :R], k[:, :, :R], v[:, :, :R]))
            q = q[:, :, R:]
        if q.size(2) > 0:
            text = self.attend(q, k[:, :, R:], v[:, :, R:])
            memory = self.attend(q, k[:, :, :R], v[:, :, :R], causal=False)
            parts.append(text + torch.tanh(self.read_gate).view(1, -1, 1, 1).to(memory.dtype) * memory)
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


class Rotary(nn.Module):
    """The angles of rotary position embeddings (https://arxiv.org/abs/2104.09864) for a head size hs: at position p,
    the pair of dimensions (i, i + hs/2) turns by p * base^(-2i/hs), so a query-key product depends on their
    positions' difference only."""

    inv_freq: torch.Tensor

    def __init__(self, head_size: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # made from the config, not a weight

    def forward(self, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (T, hs/2) of positions start..start+T-1"""
        pos = torch.arange(start, start + T, device=self.inv_freq.device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq.float())  # (T, hs/2)
        return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Queries or keys (B, nh, T, hs) turned by the angles of their positions (cos, sin: (T, hs/2)), in float32."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each: the pairs are (i, i + hs/2)
    turned = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return turned.to(x.dtype)


def causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool mask, True where query i (the last T of S positions) may attend to key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")  # tanh: OpenAI's weights' own
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor, int] | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """The embeddings and blocks, under GPT-2's parameter names (transformer.wte, transformer.h.0.attn, ...)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # rope has no table: its angles are computed (GPT.rotary)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        # token_shift: the previous token's embedding, mapped (zero at first, see GPT.__init__)
        self.shift = nn.Linear(config.n_embd, config.n_embd, bias=False) if config.token_shift else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)


class ModelOutput(NamedTuple):
    logits: torch.Tensor | None  # (B, L, vocab) with targets (None unless keep_logits), else (B, 1, vocab)
    loss: torch.Tensor | None  # what training minimises: lm_loss plus the weighted auxiliary losses
    lm_loss: torch.Tensor | None  # the language-model cross-entropy alone, what evaluation reports
    aux: dict[str, torch.Tensor]  # unweighted auxiliary losses: load_balance, entropy (k > 1 only)
    routing: list[Routing]  # one per segment, in order (empty without memory)
    memory: Memory | None  # what the last segment wrote
    token_loss: torch.Tensor | None = None  # (B, L) float32 cross-entropy of each target (0 where it is -1)


class SegmentLoss(NamedTuple):
    """One segment's part of the loss (GPT.segment_loss)."""

    token_loss: torch.Tensor  # (B, T) float32, 0 where the target is -1
    logits: torch.Tensor | None  # (B, T, vocab) if kept
    memory: Memory | None
    routing: Routing | None


CHECKPOINTING = ("none", "block", "segment")  # GPT.gradient_checkpointing: what backward recomputes
# the head's logits are computed this many at most at a time when they are not kept (GPT.token_losses): 2^24 float32
# logits are 64 MiB, where a GPT-2 batch's (12 x 1024 positions x 50304) would be 2.5 GB
LOSS_CHUNK = 2**24


class GPT(nn.Module):
    """The language model. save_pretrained writes export.py's format for a model with memory (config.json holding
    every GPTConfig field, model.safetensors), which from_pretrained loads from a folder or a Hub repo."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # recompute activations in backward to save memory: "block" keeps each block's input, "segment" only the
        # memory between segments (peak memory flat in the number of segments); "none" keeps everything
        self.gradient_checkpointing = "none"
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        head_size = config.n_embd // config.n_head
        self.rotary = Rotary(head_size, config.rope_base) if config.pos_emb == "rope" else None
        self.memory = None
        if config.gmm_experts > 0:
            self.memory = gmm.GatedMemoryMixture(
                config.n_embd, config.gmm_experts, config.gmm_slots, config.gmm_pooling, config.gmm_temperature,
                config.gmm_candidate, config.gmm_write_scale, config.gmm_routing, config.gmm_init,
                config.gmm_write_input, config.gmm_top_k, config.gmm_shared_expert, config.gmm_read,
                config.gmm_init_scale, config.gmm_gate_bias, config.gmm_read_scale,
            )  # fmt: skip
            for attn in self.attentions():
                attn.n_read = self.memory.n_read  # gmm_read_gate: where the read slots end
        # weight tying: https://paperswithcode.com/method/weight-tying
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if self.transformer.shift is not None:  # a fresh model's tokens ignore their predecessors
            torch.nn.init.zeros_(self.transformer.shift.weight)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. The position embeddings are subtracted by default; the token embeddings are counted
        because, tied to lm_head, they are used as weights in the final layer."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and self.transformer.wpe is not None:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @overload
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        bptt_segments: int = 0,
        keep_logits: bool = True,
        details: Literal[False] = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    @overload
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        bptt_segments: int = 0,
        keep_logits: bool = True,
        *,
        details: Literal[True],
    ) -> ModelOutput: ...

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        bptt_segments: int = 0,
        keep_logits: bool = True,
        details: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | ModelOutput:
        """idx (B, L) token ids -> (logits, loss), as in nanoGPT. With targets: logits (B, L, vocab) and the loss
        (mean cross-entropy over targets != -1, plus the memory's auxiliary losses when it is on). Without: logits
        of the last position only, (B, 1, vocab). L may exceed block_size: the tokens run as consecutive segments
        of block_size (see forward_segments). With a kv_cache (no memory) the tokens continue the cached sequence.
        details: forward_segments' whole ModelOutput instead (what train.py calls, through DDP's forward);
        keep_logits=False leaves the logits out, so that no more than one chunk of them is ever held."""
        if kv_cache is not None:
            if self.carries:
                raise ValueError("with memory or xl_attention on, decode incrementally through SegmentDecoder")
            prev = kv_cache.last if kv_cache.pos > 0 else None  # token_shift: the token before idx
            h = self.extend_cache(self.embed(idx, kv_cache.pos, prev), kv_cache)
            kv_cache.last = idx[:, -1:]
            logits = self.lm_head(h[:, [-1], :])
            return ModelOutput(logits, None, None, {}, [], None) if details else (logits, None)
        out = self.forward_segments(idx, targets, bptt_segments=bptt_segments, keep_logits=keep_logits)
        if details:
            return out
        assert out.logits is not None, "keep_logits=False: ask for details=True"
        return out.logits, out.loss

    def forward_segments(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        memory: Memory | None = None,
        bptt_segments: int = 0,
        keep_logits: bool = True,
    ) -> ModelOutput:
        """Run idx (B, L) as segments of block_size tokens (the last may be shorter), in order, each reading the
        memory the previous one wrote. Gradients flow back through bptt_segments segments at a time (0 = all):
        the memory is detached at every multiple of bptt_segments (truncated BPTT). With targets the loss is
        summed segment by segment (segment_loss), so the logits of the whole sequence are never needed at once;
        keep_logits=False does not keep them at all."""
        B, L = idx.size()
        T = self.config.block_size
        if self.memory is not None and memory is None:
            memory = self.memory.initial(B)
        logits_all, routings, token_losses = [], [], []
        cache = None  # xl_attention: the keys and values of the segment before
        for s, start in enumerate(range(0, L, T)):
            if self.config.xl_attention:
                p = self.lm_head.weight
                cache = self.xl_cache(cache, B, p.device, decode.cache_dtype(p))
            if self.memory is not None and s > 0 and not self.config.gmm_carry:
                memory = self.memory.initial(B)  # registers: the slots are read, nothing is carried
            elif memory is not None and bptt_segments > 0 and s > 0 and s % bptt_segments == 0:
                memory = memory._replace(experts=memory.experts.detach(), route=memory.route.detach())
            chunk = idx[:, start : start + T]
            if targets is None:
                skip = start + T < L  # without targets only the final segment's logits are used
                logits, memory, routing = self.segment(chunk, memory, skip_logits=skip, cache=cache)
            else:
                step = self.recomputed_segment_loss if self.recompute_segments else self.segment_loss
                token_loss, logits, memory, routing = step(chunk, targets[:, start : start + T], memory, cache,
                                                           keep_logits)  # fmt: skip
                token_losses.append(token_loss)
            if logits is not None:
                logits_all.append(logits)
            if routing is not None:
                routings.append(routing)
        if targets is None:
            # inference-time mini-optimization: only forward the lm_head on the very last position
            return ModelOutput(logits_all[-1][:, [-1], :], None, None, {}, routings, memory)
        token_loss = torch.cat(token_losses, dim=1)  # (B, L)
        lm_loss = token_loss.sum() / (targets != -1).sum()
        logits = (torch.cat(logits_all, dim=1) if len(logits_all) > 1 else logits_all[0]) if keep_logits else None
        loss, aux = lm_loss, {}
        if self.memory is not None and self.config.gmm_experts > 1:
            probs = torch.cat([r.probs for r in routings])  # (S*B, k) every routing decision of the batch
            chosen = torch.cat([r.chosen for r in routings]) if self.config.gmm_top_k else None  # sparse: hard choices
            aux = {"load_balance": gmm.load_balance_loss(probs, chosen), "entropy": gmm.routing_entropy(probs)}
            loss = loss + self.config.gmm_load_balance * aux["load_balance"] + self.config.gmm_entropy * aux["entropy"]
        return ModelOutput(logits, loss, lm_loss, aux, routings, memory, token_loss)

    @property
    def recompute_segments(self) -> bool:
        """gradient_checkpointing = 'segment', in a training forward that will be backpropagated."""
        return self.gradient_checkpointing == "segment" and self.training and torch.is_grad_enabled()

    def segment_loss(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor,
        memory: Memory | None,
        cache: KVCache | None = None,
        keep_logits: bool = True,
    ) -> SegmentLoss:
        """One segment (segment_states) and its targets (B, T): each target's cross-entropy, and the logits if
        keep_logits (else the head runs in chunks, token_losses)."""
        h, memory, routing = self.segment_states(idx, memory, cache)
        if keep_logits:
            logits = self.lm_head(h)
            token_loss = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-1, reduction="none")
            return SegmentLoss(token_loss, logits, memory, routing)
        return SegmentLoss(self.token_losses(h, targets), None, memory, routing)

    def recomputed_segment_loss(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor,
        memory: Memory | None,
        cache: KVCache | None = None,
        keep_logits: bool = True,
    ) -> SegmentLoss:
        """segment_loss under activation checkpointing: of the segment only its inputs and outputs (the memory
        it read and wrote, its per-target loss) are kept; backward runs it again, one segment at a time."""
        if cache is not None:
            raise ValueError("gradient_checkpointing = 'segment' cannot recompute an xl_attention segment: use 'block'")
        out: SegmentLoss = checkpoint(self.segment_loss, idx, targets, memory, None, keep_logits, use_reentrant=False)
        return out

    def token_losses(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, D) after ln_f and targets (B, T) -> each target's cross-entropy (B, T), float32, 0
        where the target is -1. The logits are made LOSS_CHUNK at a time; in training each chunk is recomputed in
        backward (checkpointed), so no more than one chunk of logits is ever held."""
        B, T, D = h.shape
        rows, flat = h.reshape(B * T, D), targets.reshape(B * T)
        step = max(1, LOSS_CHUNK // self.config.vocab_size)  # rows of logits a chunk
        if rows.size(0) <= step:
            return self.chunk_loss(rows, flat).view(B, T)
        recompute = self.training and torch.is_grad_enabled()
        parts = []
        for i in range(0, rows.size(0), step):
            args = (rows[i : i + step], flat[i : i + step])
            parts.append(
                checkpoint(self.chunk_loss, *args, use_reentrant=False) if recompute else self.chunk_loss(*args)
            )
        return torch.cat(parts).view(B, T)

    def chunk_loss(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, D) hidden states and (N,) targets -> (N,) float32 cross-entropy, 0 where the target is -1."""
        return F.cross_entropy(self.lm_head(rows).float(), targets, ignore_index=-1, reduction="none")

    def segment(
        self, idx: torch.Tensor, memory: Memory | None, skip_logits: bool = False, cache: KVCache | None = None
    ) -> tuple[torch.Tensor | None, Memory | None, Routing | None]:
        """One segment's logits (B, T, vocab) (None if skip_logits), the memory it wrote and the write's routing
        (segment_states, then the head)."""
        h, memory, routing = self.segment_states(idx, memory, cache)
        return (None if skip_logits else self.lm_head(h)), memory, routing

    def segment_states(
        self, idx: torch.Tensor, memory: Memory | None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, Memory | None, Routing | None]:
        """One segment, idx (B, T) with T <= block_size: [read slots][tokens][write tokens] through the stack.
        Returns the tokens' final hidden states (B, T, D) after ln_f, the memory this segment wrote, and the
        write's routing. Without memory it is a plain GPT forward, after the cache's positions if one is given
        (xl_attention: the previous segment's)."""
        x = self.embed(idx, 0)  # (B, T, D)
        if self.memory is None or memory is None:
            h = self.transformer.ln_f(self.run_blocks(x)) if cache is None else self.extend_cache(x, cache)
            return h, None, None
        R, T = self.memory.n_read, idx.size(1)
        read, write = (t.to(x.dtype) for t in self.memory.inputs(memory))  # (B, R, D) each
        if memory.empty and not self.config.gmm_read_initial:  # nothing to read yet: [tokens][write tokens]
            h = self.transformer.ln_f(self.run_blocks(torch.cat([x, write], dim=1)))
            memory, routing = self.memory.write(memory, h[:, T:])
            return h[:, :T], memory, routing
        x = torch.cat([read, x, write], dim=1)  # (B, R + T + R, D)
        h = self.transformer.ln_f(self.run_blocks(x))
        memory, routing = self.memory.write(memory, h[:, R + T :])
        return h[:, R : R + T], memory, routing

    def embed(self, idx: torch.Tensor, start: int, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Token plus position embeddings (B, T, D) for tokens at positions start..start+T-1 of their segment (with
        rope, token embeddings alone: positions turn queries and keys in attention). With token_shift each token
        adds its predecessor's embedding, mapped: prev (B, 1) is the token before idx in the segment (None at its
        start, where the first token has none)."""
        if start + idx.size(1) > self.config.block_size:
            raise ValueError(f"cannot embed position {start + idx.size(1) - 1}: block_size is {self.config.block_size}")
        x = self.transformer.wte(idx)
        if self.transformer.shift is not None:  # each token's predecessor: prev, or nothing (zeros) for the first
            first = x.new_zeros(x.size(0), 1, x.size(2)) if prev is None else self.transformer.wte(prev)  # (B, 1, D)
            x = x + self.transformer.shift(torch.cat([first, x[:, :-1]], dim=1))
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(start, start + idx.size(1), dtype=torch.long, device=idx.device))
        out: torch.Tensor = self.transformer.drop(x)
        return out

    def compile_blocks(self, **options: Any) -> None:
        """torch.compile each Block in place (options go to torch.compile). The compiled unit is the block, which
        every segment, every curriculum stage and the decoders call: its graph does not grow with n_segments, a
        new segment count compiles nothing, and decoding with memory runs compiled. State dict keys are unchanged."""
        for block in self.transformer.h:
            block.compile(**options)

    def attentions(self) -> list[CausalSelfAttention]:
        """Each block's attention, in order."""
        return [block.attn for block in self.transformer.h if isinstance(block, Block)]

    @property
    def carries(self) -> bool:
        """Whether context reaches past a segment (memory, or xl_attention), so the sequence runs as segments."""
        return self.memory is not None or self.config.xl_attention

    def xl_cache(self, prev: KVCache | None, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """xl_attention: the cache a segment starts from, room for 2 x block_size positions. It holds the previous
        segment's keys and values (detached: no gradient flows into the past) at positions 0..T-1, its keys
        turned back there from where they were computed; the segment then runs at positions T..2T-1. Empty (at
        position 0) for the first segment."""
        T = self.config.block_size
        cache = KVCache(self.config, batch_size, 2 * T, device, dtype)
        if prev is None:
            return cache
        was = prev.pos - T  # where the previous segment's (full) T tokens sat: 0 for the first, T after that
        back = self.rotary(-was, 1) if self.rotary is not None and was else None  # cos, sin (1, hs/2)
        for i in range(self.config.n_layer):
            k = prev.k[i][:, :, was : was + T].detach()  # (B, nh, T, hs)
            cache.k[i][:, :, :T] = rotate(k, *back) if back is not None else k
            cache.v[i][:, :, :T] = prev.v[i][:, :, was : was + T].detach()
        cache.pos = T
        return cache

    def extend_cache(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run embeddings x (B, T, D) through the stack after the cache's positions; the final hidden states
        (after ln_f) come back, (B, T, D), and the cache now holds T more positions."""
        h: torch.Tensor = self.transformer.ln_f(self.run_blocks(x, cache))
        cache.pos += x.size(1)
        return h

    def run_blocks(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The transformer stack on (B, T, n_embd) embeddings; recomputed in backward if gradient_checkpointing.
        With rope the T positions are the attention sequence's, after the cache's (memory: read slots come first)."""
        start = kv_cache.pos if kv_cache is not None else 0
        rope = self.rotary(start, x.size(1)) if self.rotary is not None else None
        for i, block in enumerate(self.transformer.h):
            if kv_cache is not None:
                x = block(x, (kv_cache.k[i], kv_cache.v[i], kv_cache.pos), rope)
            elif self.gradient_checkpointing == "block" and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, None, rope, use_reentrant=False)
            else:
                x = block(x, None, rope)
        return x

    def crop_block_size(self, block_size: int) -> None:
        """Model surgery to decrease the block size, e.g. to run GPT-2 (1024) with a smaller context."""
        if block_size > self.config.block_size:
            raise ValueError(f"block_size = {block_size} cannot exceed the model's {self.config.block_size}")
        self.config.block_size = block_size
        if self.transformer.wpe is not None:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_checkpoint(
        cls, ckpt: dict[str, Any], override_args: dict[str, Any] | None = None, source: str = "the checkpoint"
    ) -> GPT:
        """The model a checkpoint of this repo holds (its `model_args` and `model` weights); `override_args` may
        change settings that leave the weights' shapes alone, such as dropout. Weights that do not fit the model
        are a one-line ValueError naming `source`."""
        model = cls(GPTConfig.from_dict({**ckpt["model_args"], **(override_args or {})}, checkpoint=True))
        # a compiled model saved its weights under '_orig_mod.'; strip it so the plain model loads them
        try:
            model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
        except RuntimeError as e:  # torch lists every missing, unexpected or misshapen tensor: name the first
            detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
            raise ValueError(f"{source}: its weights do not fit its model_args: {detail[:300]}") from None
        return model

    @classmethod
    def from_pretrained(cls, name_or_dir: str, override_args: dict[str, Any] | None = None) -> GPT:
        """OpenAI's GPT-2 weights (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`), or a local folder or Hugging
        Face Hub repo id (owner/name) holding a transformers GPT-2 or an export of this project (hub.py).
        `override_args` may set dropout, and for a GPT-2 the memory settings of the add-on to put on top of it."""
        from transformers import GPT2LMHeadModel

        import hub

        override_args = dict(override_args or {})
        bad = sorted(k for k in override_args if k != "dropout" and not k.startswith("gmm_"))
        if bad:
            raise ValueError(f"from_pretrained cannot override {', '.join(bad)}: only dropout and gmm_* settings")
        if name_or_dir not in GPT2_SIZES:
            folder = hub.local_folder(name_or_dir)
            if hub.export_kind(folder) == "gmm":
                return cls.from_export(folder, override_args)
            name_or_dir = str(folder)
        model_hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        hf = model_hf.config
        if hf.activation_function not in GELU_FORMS:
            raise ValueError(
                f"{name_or_dir}: activation_function = '{hf.activation_function}' must be one of "
                f"{', '.join(GELU_FORMS)} (a GELU, tanh or exact, as model.py's MLP)"
            )
        print(f"loading weights from pretrained gpt: {name_or_dir}")
        config = GPTConfig.from_dict(
            dict(
                n_layer=hf.n_layer,
                n_head=hf.n_head,
                n_embd=hf.n_embd,
                block_size=hf.n_positions,
                vocab_size=hf.vocab_size,
                gelu=GELU_FORMS[hf.activation_function],
                bias=True,  # always True for GPT-2 checkpoints
                **override_args,
            )
        )
        model = cls(config)
        sd = model.state_dict()
        sd_hf = model_hf.state_dict()
        # the causal-mask buffers some transformers versions keep are not weights
        keys_hf = [k for k in sd_hf if not k.endswith((".attn.masked_bias", ".attn.bias"))]
        # OpenAI's checkpoints use Conv1D modules: their weights are the transpose of a Linear's
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        ours = {k for k in sd if k.startswith(("transformer.", "lm_head."))}
        if set(keys_hf) != ours:
            missing = sorted(ours.symmetric_difference(keys_hf))[:4]
            raise ValueError(f"{name_or_dir} is not a GPT-2 checkpoint of this layout: mismatched keys {missing}")
        with torch.no_grad():
            for k in keys_hf:
                src = sd_hf[k].t() if k.endswith(transposed) else sd_hf[k]
                if src.shape != sd[k].shape:
                    raise ValueError(f"{name_or_dir}: {k} has shape {tuple(src.shape)}, expected {tuple(sd[k].shape)}")
                sd[k].copy_(src)
        return model

    @classmethod
    def from_export(cls, folder: Path, override_args: dict[str, Any] | None = None) -> GPT:
        """A model export.py wrote in the project's format (save_pretrained). Only dropout may be
        overridden; memory settings that disagree with the export's are a one-line ValueError."""
        from safetensors.torch import load_model

        import hub

        saved = hub.read_config(folder)
        override_args = dict(override_args or {})
        differ = sorted(k for k, v in override_args.items() if k.startswith("gmm_") and k in saved and saved[k] != v)
        if differ:
            k = differ[0]
            raise ValueError(
                f"{folder} holds a model with {k} = {saved[k]!r}; {k} = {override_args[k]!r} would not fit"
            )
        model = cls(GPTConfig.from_dict({**saved, "dropout": override_args.get("dropout", saved.get("dropout", 0.0))}))
        missing, unexpected = load_model(model, folder / "model.safetensors", strict=False)
        if missing or unexpected:
            first = (missing or unexpected)[0]
            raise ValueError(f"{folder}: model.safetensors does not fit its config.json ({first})")
        return model

    def save_pretrained(self, folder: str | Path) -> None:
        """The project's export format into folder (made if missing): config.json, every GPTConfig field sorted by
        name, and model.safetensors (the tied embedding stored once). from_export reads it back; huggingface_hub's
        upload_folder pushes it (export.py --push_to_hub)."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n")
        save_model(self, str(folder / "model.safetensors"))

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
        decay_memory_states: bool = False,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on the matmul weights and token embeddings (every >= 2-D parameter) and none on
        biases and norms; the fused CUDA kernel where this torch has it. The memory's states, embeddings and biases
        (gmm.NO_DECAY: initial states, read/write embeddings, gains, gate biases) are >= 2-D but not weights, and
        decay would pull them to zero, the fixed experts too: no decay on them, unless decay_memory_states (the
        rule before, kept as an ablation)."""
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}

        def decays(name: str, p: nn.Parameter) -> bool:
            state = name.startswith("memory.") and name.rsplit(".", 1)[-1] in gmm.NO_DECAY
            return p.dim() >= 2 and (decay_memory_states or not state)

        decay_params = [p for pn, p in param_dict.items() if decays(pn, p)]
        nodecay_params = [p for pn, p in param_dict.items() if not decays(pn, p)]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self) -> float:
        """Training FLOPs per text token (forward and backward), per the PaLM paper appendix B:
        https://arxiv.org/abs/2204.02311. With memory each segment of T tokens runs T + 2R positions (R read slots),
        and the memory's own weights act on R slots per segment."""
        cfg = self.config
        n_mem = sum(p.numel() for p in self.memory.parameters()) if self.memory is not None else 0
        N = self.get_num_params() - n_mem
        M = self.memory.n_read if self.memory is not None else 0
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        S = T + 2 * M  # positions per segment
        return (6 * N + 12 * L * H * Q * S) * S / T + 6 * n_mem * M / T

    def estimate_mfu(self, tokens_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (see common.peak_flops)."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens sampled tokens; temperature 0 is greedy decoding."""
        tokens = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
        return torch.cat([idx, *tokens], dim=1)

    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield sampled tokens (B, 1) one at a time, for streamed output: with a KV cache, and with memory through
        segments in constant memory (decode.stream)."""
        return decode.stream(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator)
