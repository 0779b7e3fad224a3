"""
Sample from a trained model, or from OpenAI's GPT-2 / a local Hugging Face GPT-2 directory.

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life, the universe, and everything?"
$ python sample.py --start=FILE:prompt.txt --temperature=0 --num_samples=1

Like train.py, a config file and --key=value overrides set the SampleConfig below; the model's tokenizer comes with
its checkpoint, so no data folder is needed. Text is printed as it is generated (--stream=False prints each sample
when it is done).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import hub
from common import (
    DTYPES,
    autocast,
    check_device,
    check_model_args,
    default_device,
    default_dtype,
    fail,
    load_checkpoint,
)
from configurator import ConfigError, configure, explicit_keys
from model import GPT, GPT2_SIZES, GPTConfig
from tokenizer import Tokenizer, get_tokenizer

# -----------------------------------------------------------------------------


@dataclass
class SampleConfig:
    # 'resume' (out_dir/ckpt.pt), a GPT-2 size ('gpt2-xl'), a folder (a transformers GPT-2 or an export.py
    # export) or a Hugging Face Hub repo id (owner/name)
    init_from: str = "resume"
    out_dir: str = "out"  # ignored if init_from is not 'resume'
    start: str = "\n"  # the prompt; or "<|endoftext|>" for GPT-2, or "FILE:prompt.txt" to read it from a file
    num_samples: int = 10  # number of samples to draw
    max_new_tokens: int = 500  # number of tokens generated in each sample
    temperature: float = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random; 0 = greedy (argmax)
    top_k: int | None = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
    top_p: float | None = None  # nucleus sampling: keep the smallest set of tokens whose probability reaches top_p
    seed: int = 1337
    device: str = "auto"  # 'auto' = cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' = bfloat16/float16 on CUDA, float32 elsewhere; or 'float32', 'bfloat16', 'float16'
    compile: bool = False  # compile the blocks (dynamic shapes: one compile for every length; pays on long runs)
    kv_cache: bool = True  # each new token costs one position through a KV cache instead of the whole context
    stream: bool = True  # print text as tokens are generated, else each sample when it is complete

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples = {self.num_samples} must be a positive integer")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens} must be >= 0")
        if self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k = {self.top_k} must be a positive integer or None")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p = {self.top_p} must be in (0, 1] or None")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype = '{self.dtype}' must be one of auto, {', '.join(DTYPES)}")
        named = self.init_from in ("resume", *GPT2_SIZES)
        if not named and not os.path.isdir(self.init_from) and not hub.is_repo_id(self.init_from):
            raise ValueError(
                f"init_from = '{self.init_from}' must be resume, {', '.join(GPT2_SIZES)}, a folder holding a "
                "Hugging Face GPT-2 or an export.py export, or a Hugging Face Hub repo id (owner/name)"
            )


# -----------------------------------------------------------------------------


def resolve_device(cfg: SampleConfig) -> tuple[str, str]:
    """The (device, dtype) that 'auto' stands for on this machine; a ValueError for one it cannot use."""
    device = default_device() if cfg.device == "auto" else cfg.device
    check_device(device)
    dtype = default_dtype(device) if cfg.dtype == "auto" else cfg.dtype
    return device, dtype


def load_model(cfg: SampleConfig, model_args: dict[str, Any] | None = None) -> tuple[GPT, Tokenizer]:
    """The model (in eval mode, on cfg's device) and its tokenizer: a checkpoint's own, or GPT-2's BPE.
    model_args are model settings the user gave (e.g. gmm_experts=4): they must agree with the checkpoint."""
    device, _ = resolve_device(cfg)
    model_args = model_args or {}
    if cfg.init_from == "resume":
        ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
        ckpt = load_checkpoint(ckpt_path)
        check_model_args(ckpt["model_args"], model_args, set(model_args), ckpt_path)
        model = GPT.from_checkpoint(ckpt, source=ckpt_path)
        meta = ckpt.get("tokenizer_meta") or {"tokenizer": "gpt2", "vocab_size": 50257}  # older: nanoGPT's default
        n_text_ids = int(meta["vocab_size"])
    else:
        if model_args:
            raise ValueError(f"{', '.join(sorted(model_args))} cannot be set when sampling from {cfg.init_from}")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr is for errors; a bar there would precede a one-line error
        source, exported = cfg.init_from, None
        if source not in GPT2_SIZES:  # a folder or a Hub repo; an export of this project carries its tokenizer
            folder = hub.local_folder(source)
            source, exported = str(folder), hub.export_meta(folder)
        model = GPT.from_pretrained(source, dict(dropout=0.0))
        meta = exported or {"tokenizer": "gpt2", "vocab_size": 50257}  # a GPT-2 of OpenAI's or transformers'
        n_text_ids = int(meta["vocab_size"])
    try:
        tokenizer = get_tokenizer(meta)
    except RuntimeError as e:  # tiktoken's BPE files neither cached nor downloadable
        raise ValueError(str(e)) from None
    if model.config.vocab_size > n_text_ids:
        mask_padding_ids(model, n_text_ids)
    model.eval()
    model.to(device)
    if cfg.compile:
        model.compile_blocks(dynamic=True)  # what every decoding step runs, with memory or without
    return model, tokenizer


def mask_padding_ids(model: GPT, n_text_ids: int) -> None:
    """A vocabulary padded past the tokenizer's (GPT-2's 50257 ids -> 50304) has ids with no text: give them zero
    probability, or an undertrained model may sample one that cannot be decoded."""

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.arange(n_text_ids, logits.size(-1), device=logits.device), float("-inf"))

    model.lm_head.register_forward_hook(hook)


def read_prompt(start: str) -> str:
    """cfg.start, or the contents of the file it names as FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = start.removeprefix("FILE:")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"start = 'FILE:{path}': no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"start = 'FILE:{path}' cannot be read as UTF-8 text ({type(e).__name__})") from None


def encode_prompt(text: str, tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    """The prompt's token ids, or a one-line ValueError saying why it cannot be one."""
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:
        raise ValueError(f"start: {e}") from None
    if not ids:
        raise ValueError("start is empty: give a prompt of at least one token (for GPT-2, '<|endoftext|>' works)")
    if max(ids) >= vocab_size:
        raise ValueError(f"start: token id {max(ids)} is outside the model's vocabulary of {vocab_size}")
    return ids


class TextStream:
    """Turns tokens into text as they arrive. A BPE token may hold only part of a multi-byte character, which
    decodes to U+FFFD; such tokens wait until the character is complete, then are decoded together."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.pending: list[int] = []  # tokens not yet printed

    def push(self, token: int) -> str:
        """The new text that token completes (often empty while a character is split)."""
        self.pending.append(token)
        text = self.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """Whatever is still pending, replacement characters and all (the end of a sample)."""
        text = self.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


@torch.no_grad()
def generate_text(
    model: GPT, tokenizer: Tokenizer, prompt_ids: list[int], cfg: SampleConfig, write: Callable[[str], object]
) -> str:
    """One sample: the prompt and its continuation, passed to write piece by piece if cfg.stream, else whole.
    Returns the continuation's text."""
    device, dtype = resolve_device(cfg)
    x = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None, ...]  # (1, T)
    stream = TextStream(tokenizer.decode)
    pieces = []
    if cfg.stream:
        write(tokenizer.decode(prompt_ids))
    with autocast(device, dtype):
        tokens = model.stream(x, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.kv_cache)
        for token in tokens:
            pieces.append(stream.push(int(token.item())))
            if cfg.stream and pieces[-1]:
                write(pieces[-1])
    pieces.append(stream.flush())
    text = "".join(pieces)
    if cfg.stream:
        write(pieces[-1])
    else:
        write(tokenizer.decode(prompt_ids) + text)
    return text


def sample(cfg: SampleConfig, model_args: dict[str, Any] | None = None) -> list[str]:
    """Print cfg.num_samples samples to stdout, separated as nanoGPT does; returns their continuations."""
    torch.manual_seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
    model, tokenizer = load_model(cfg, model_args)
    prompt_ids = encode_prompt(read_prompt(cfg.start), tokenizer, model.config.vocab_size)

    def write(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    samples = []
    for _ in range(cfg.num_samples):
        samples.append(generate_text(model, tokenizer, prompt_ids, cfg, write))
        write("\n---------------\n")
    return samples


def main(argv: list[str]) -> None:
    try:
        # model settings are accepted only to be checked against the checkpoint's (see load_model)
        cfg, model_cfg = configure(argv, SampleConfig(), GPTConfig())
        model_args = {k: getattr(model_cfg, k) for k in explicit_keys(argv) if hasattr(model_cfg, k)}
    except ConfigError as e:
        fail(str(e))
    try:
        sample(cfg, model_args)
    except ValueError as e:  # bad checkpoint, prompt or device: one line
        fail(str(e))
    except OSError as e:  # e.g. GPT-2 weights that can be neither found locally nor downloaded
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        fail(f"init_from = '{cfg.init_from}' could not be loaded: {type(e).__name__}: {first}")


if __name__ == "__main__":
    main(sys.argv[1:])
