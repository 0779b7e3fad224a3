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
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

GPT2_SIZES = {  # name -> (n_layer, n_head, n_embd); all have vocab 50257 and 1024 positions
    "gpt2": (12, 12, 768),  # 124M params
    "gpt2-medium": (24, 16, 1024),  # 350M params
    "gpt2-large": (36, 20, 1280),  # 774M params
    "gpt2-xl": (48, 25, 1600),  # 1558M params
}


@dataclass
class GPTConfig:
    block_size: int = 1024  # tokens per segment (the attention window)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout = {self.dropout} must be in [0, 1)")

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a dict that may hold keys of other configs (a checkpoint's, a run's): unknown keys are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias. PyTorch doesn't support simply bias=False."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated for `max_len` positions.

    The caller owns it and passes it to `GPT.forward`, which writes the new positions and advances `pos`.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # positions filled so far

    def reset(self) -> None:
        self.pos = 0


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

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        start = 0
        if cache is not None:  # write the new keys/values at [pos, pos+T) and attend over [0, pos+T)
            k_cache, v_cache, start = cache
            k_cache[:, :, start : start + T] = k
            v_cache[:, :, start : start + T] = v
            k, v = k_cache[:, :, : start + T], v_cache[:, :, : start + T]  # (B, nh, S, hs) with S = pos+T
        S = k.size(2)
        # query i sits at absolute position start+i and may see keys 0..start+i
        mask = None if start == 0 or T == 1 else causal_mask(T, S, x.device)
        if self.flash:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=start == 0)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            att = att.masked_fill(~causal_mask(T, S, x.device), float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


def causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool mask, True where query i (the last T of S positions) may attend to key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's own GELU, so OpenAI's weights give OpenAI's logits
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """The embeddings and blocks, under GPT-2's parameter names (transformer.wte, transformer.h.0.attn, ...)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False  # recompute each block's activations in backward to save memory
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: https://paperswithcode.com/method/weight-tying
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # scaled init of the residual projections, per the GPT-2 paper
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. The position embeddings are subtracted by default; the token embeddings are counted
        because, tied to lm_head, they are used as weights in the final layer."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits, loss). With targets: logits (B, T, vocab) and the mean cross-entropy
        over targets != -1. Without: logits of the last position only, (B, 1, vocab).
        With a kv_cache the tokens continue the cached sequence at position kv_cache.pos."""
        device = idx.device
        b, t = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + t > self.config.block_size:
            raise ValueError(f"cannot forward {start + t} positions: block_size is {self.config.block_size}")
        pos = torch.arange(start, start + t, dtype=torch.long, device=device)  # (t,)
        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # position embeddings of shape (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        x = self.run_blocks(x, kv_cache)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.pos += t
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        # inference-time mini-optimization: only forward the lm_head on the very last position
        logits = self.lm_head(x[:, [-1], :])  # note: using list [-1] to preserve the time dim
        return logits, None

    def run_blocks(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The transformer stack on (B, T, n_embd) embeddings; recomputed in backward if gradient_checkpointing."""
        for i, block in enumerate(self.transformer.h):
            if kv_cache is not None:
                x = block(x, (kv_cache.k[i], kv_cache.v[i], kv_cache.pos))
            elif self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def crop_block_size(self, block_size: int) -> None:
        """Model surgery to decrease the block size, e.g. to run GPT-2 (1024) with a smaller context."""
        if block_size > self.config.block_size:
            raise ValueError(f"block_size = {block_size} cannot exceed the model's {self.config.block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_dir: str, override_args: dict | None = None) -> GPT:
        """OpenAI's GPT-2 weights (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`) or any local directory that
        holds a Hugging Face GPT-2 checkpoint. `override_args` may set dropout (and the memory settings)."""
        from transformers import GPT2LMHeadModel

        override_args = dict(override_args or {})
        bad = sorted(k for k in override_args if k != "dropout" and not k.startswith("gmm_"))
        if bad:
            raise ValueError(f"from_pretrained cannot override {', '.join(bad)}: only dropout and gmm_* settings")
        model_hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        hf = model_hf.config
        print(f"loading weights from pretrained gpt: {name_or_dir}")
        config = GPTConfig.from_dict(
            dict(
                n_layer=hf.n_layer,
                n_head=hf.n_head,
                n_embd=hf.n_embd,
                block_size=hf.n_positions,
                vocab_size=hf.vocab_size,
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

    def configure_optimizers(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float], device_type: str
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on every >= 2-D parameter (matmul weights, embeddings) and none on biases and
        norms; the fused CUDA kernel where this torch has it."""
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for p in param_dict.values() if p.dim() >= 2]
        nodecay_params = [p for p in param_dict.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward and backward), per the PaLM paper appendix B:
        https://arxiv.org/abs/2204.02311"""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, tokens_per_iter: int, dt: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (see common.peak_flops)."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    @torch.no_grad()
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
        """Continue idx (B, T) by max_new_tokens sampled tokens; temperature 0 is greedy decoding.
        With use_cache, each new token costs one position through a KV cache instead of the whole context.
        Past block_size the context slides as in nanoGPT, re-encoding the last block_size tokens each step."""
        cache = None
        if use_cache:
            p = next(self.parameters())
            cache = KVCache(self.config, idx.size(0), self.config.block_size, p.device, p.dtype)
        for token in self.stream(idx, max_new_tokens, temperature, top_k, top_p, cache, generator):
            idx = torch.cat((idx, token), dim=1)
        return idx

    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cache: KVCache | None = None,
        generator: torch.Generator | None = None,
    ):
        """Yield the sampled tokens (B, 1) one at a time, for streamed output."""
        block_size = self.config.block_size
        for _ in range(max_new_tokens):
            window = idx[:, -block_size:]  # (B, <=block_size)
            if cache is None:
                logits, _ = self(window)
            elif cache.pos > 0 and cache.pos < block_size and idx.size(1) == cache.pos + 1:
                logits, _ = self(idx[:, -1:], kv_cache=cache)  # only the newest token goes through the model
            else:  # first step, or the window slid: (re)fill the cache with the whole window
                cache.reset()
                logits, _ = self(window, kv_cache=cache)
            token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat((idx, token), dim=1)
            yield token


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token (B, 1) from logits (B, vocab): greedy at temperature 0, else sample from the softmax
    after top-k and then top-p (nucleus, https://arxiv.org/abs/1904.09751) filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
