"""
Generating from a GPT, one token at a time: the KV cache, sampling (sample_next), the token stream that
GPT.generate and GPT.stream return (stream), and SegmentDecoder, the incremental decoding with memory that equals
GPT.forward on the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.nn import functional as F

from gmm import GatedMemoryMixture, Memory

# model.py imports this module (GPT.generate, GPT.stream, its KV cache), so what decoding needs of a GPT is named
# here as protocols, not imported from there


class ModelShape(Protocol):
    """The settings of a GPTConfig that decoding reads."""

    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    xl_attention: bool
    gmm_carry: bool
    gmm_read_initial: bool


class Decodable(Protocol):
    """What decoding calls on a model.GPT."""

    @property
    def config(self) -> ModelShape: ...

    @property
    def memory(self) -> GatedMemoryMixture | None: ...

    @property
    def lm_head(self) -> Callable[[torch.Tensor], torch.Tensor]: ...

    @property
    def carries(self) -> bool: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def embed(self, idx: torch.Tensor, start: int, prev: torch.Tensor | None = None) -> torch.Tensor: ...

    def extend_cache(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor: ...

    def xl_cache(self, prev: KVCache | None, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache: ...


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated for `max_len` positions.

    The caller owns it and passes it to `GPT.forward`, which writes the new positions and advances `pos`.
    """

    def __init__(self, config: ModelShape, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        # (B, nh, max_len, hs) for each layer, each its own tensor: writing one layer's keys never touches what
        # another layer saved for backward (xl_attention trains through the cache)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # positions filled so far
        self.last: torch.Tensor | None = None  # (B, 1) the last token fed through GPT.forward (token_shift reads it)

    def reset(self) -> None:
        self.pos = 0
        self.last = None


@torch.no_grad()
def stream(
    model: Decodable,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield sampled tokens (B, 1) one at a time, for streamed output.
    Without memory the context is the last block_size tokens, as in nanoGPT; with use_cache, each new token
    costs one position through a KV cache until the window starts to slide, after which every step
    re-encodes the window. With memory (or xl_attention) the context is unbounded: the sequence runs as segments
    (SegmentDecoder), in constant memory. use_cache=False recomputes everything each step (the reference)."""
    block_size = model.config.block_size
    decoder = SegmentDecoder(model, idx.size(0)) if use_cache and model.carries else None
    cache = None
    if use_cache and not model.carries:
        p = next(model.parameters())
        cache = KVCache(model.config, idx.size(0), block_size, p.device, cache_dtype(p))
    # the tokens so far live in one buffer, written in place, so a step costs no copy of the whole sequence
    B, n = idx.shape
    tokens = torch.cat([idx, idx.new_zeros(B, max_new_tokens)], dim=1)  # (B, n + max_new_tokens)
    logits = None
    for step in range(max_new_tokens):
        seen = tokens[:, :n]  # (B, n) the prompt and the tokens sampled so far
        if decoder is not None:  # the prompt in one call (the head only on its last position), then token by token
            logits = decoder.feed(seen if step == 0 else seen[:, -1:], last_only=True)
        elif cache is None:
            logits, _ = model(seen if model.carries else seen[:, -block_size:])
        elif 0 < cache.pos < block_size and n == cache.pos + 1:
            logits, _ = model(seen[:, -1:], kv_cache=cache)  # only the newest token goes through the model
        else:  # first step, or the window slid: (re)fill the cache with the whole window
            cache.reset()
            logits, _ = model(seen[:, -block_size:], kv_cache=cache)
        token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        tokens[:, n] = token[:, 0]
        n += 1
        yield token


def cache_dtype(p: torch.Tensor) -> torch.dtype:
    """What a KV cache holds: the autocast dtype where autocast is on (bfloat16 keys and values, half the memory of
    float32 and no cast at every step), else the weights' dtype."""
    device_type = p.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return p.dtype


class SegmentDecoder:
    """Incremental decoding that equals GPT.forward on the same tokens, memory or not.

    Within a segment each token costs one position through the KV cache. When a segment is full and another
    token comes, the segment's write tokens run through the cache, the memory takes the write, and the next
    segment starts from a fresh cache holding only its read slots. With xl_attention the next segment's cache
    holds the previous segment's keys and values (GPT.xl_cache). Otherwise the segments are independent, as in
    forward."""

    def __init__(self, model: Decodable, batch_size: int) -> None:
        cfg = model.config
        self.model = model
        self.slots = model.memory.n_read if model.memory is not None else 0
        p = next(model.parameters())
        self.cache = KVCache(cfg, batch_size, 2 * self.slots + cfg.block_size, p.device, cache_dtype(p))
        if cfg.xl_attention:
            self.cache = model.xl_cache(None, batch_size, p.device, cache_dtype(p))
        self.memory = model.memory.initial(batch_size) if model.memory is not None else None
        self.t = 0  # text tokens in the current segment
        self.prev: torch.Tensor | None = None  # (B, 1) the segment's last text token so far (token_shift reads it)
        self.start_segment()

    def start_segment(self) -> None:
        self.cache.reset()
        self.t = 0
        if self.model.memory is not None and self.memory is not None and self.reads(self.memory):
            self.model.extend_cache(self.model.memory.read(self.memory), self.cache)

    def reads(self, memory: Memory) -> bool:
        """Whether a segment starts with read slots: unless the memory is empty and gmm_read_initial is off."""
        return not memory.empty or self.model.config.gmm_read_initial

    def end_segment(self) -> None:
        memory_module = self.model.memory
        if memory_module is not None and self.memory is not None:
            read = memory_module.read(self.memory)  # the segment's read slots: the memory is unchanged since its start
            W = self.model.extend_cache(memory_module.write_tokens(read), self.cache)
            self.memory, _ = memory_module.write(self.memory, W)
            if not self.model.config.gmm_carry:  # registers: every segment reads the initial memory
                self.memory = memory_module.initial(self.memory.experts.size(0))
        if self.model.config.xl_attention:  # the segment that ends is the next one's past
            self.cache = self.model.xl_cache(
                self.cache, self.cache.k[0].size(0), self.cache.k[0].device, self.cache.k[0].dtype
            )
            self.t = 0
            return
        self.start_segment()

    def feed(self, idx: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Tokens (B, n) that continue the sequence -> their logits (B, n, vocab), or with last_only the last
        position's alone (B, 1, vocab): a prompt's other positions need no head."""
        T = self.model.config.block_size
        out, i = [], 0
        while i < idx.size(1):
            if self.t == T:
                self.end_segment()
            take = min(idx.size(1) - i, T - self.t)
            x = self.model.embed(idx[:, i : i + take], self.t, self.prev if self.t > 0 else None)
            h = self.model.extend_cache(x, self.cache)  # (B, take, D)
            self.prev = idx[:, i + take - 1 : i + take]
            self.t += take
            i += take
            if not last_only:
                out.append(self.model.lm_head(h))
            elif i == idx.size(1):
                out.append(self.model.lm_head(h[:, -1:]))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]


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
