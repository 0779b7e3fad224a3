"""Tokenizers: the one table through which train.py and sample.py turn text into token ids and back.

Every dataset folder holds a meta.json, written by its prepare.py, that names its tokenizer:

    meta = load_meta("data/shakespeare_char")   # {"tokenizer": "char", "vocab_size": 65, ..., "itos": [...]}
    tok = get_tokenizer(meta)                   # tok.encode("hi") -> [46, 47]; tok.decode([46, 47]) -> "hi"

Adding a custom tokenizer is one function and one dict entry: write `def build_mine(meta: dict) -> Tokenizer`
(read whatever your prepare.py stored in meta.json), add `"mine": build_mine` to TOKENIZERS, and have your
prepare.py write `"tokenizer": "mine"` into meta.json.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import tiktoken


class Tokenizer(NamedTuple):
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eot: int | None  # end-of-text id appended between documents, None if the tokenizer has none


def build_char(meta: dict[str, Any]) -> Tokenizer:
    """Character-level: meta["itos"][i] is the character with id i."""
    itos = meta.get("itos")
    if not isinstance(itos, list) or not all(isinstance(c, str) and len(c) == 1 for c in itos):
        raise ValueError("char tokenizer: meta['itos'] must be a list of single-character strings")
    stoi = {c: i for i, c in enumerate(itos)}

    def encode(s: str) -> list[int]:
        try:
            return [stoi[c] for c in s]
        except KeyError:
            # the fast path failed; find the first offender only now, to name it in the error
            pos = next(i for i, c in enumerate(s) if c not in stoi)
            raise ValueError(
                f"character {s[pos]!r} at position {pos} is not in the char vocabulary ({len(itos)} characters)"
            ) from None

    def decode(ids: list[int]) -> str:
        return "".join(itos[i] for i in ids)

    return Tokenizer(encode, decode, eot=None)


def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 BPE, with one actionable line when its files can be neither read from cache nor downloaded."""
    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as e:  # ConnectionError offline, ValueError on a hash mismatch
        raise RuntimeError(
            f"could not load tiktoken's GPT-2 BPE files ({type(e).__name__}); "
            "set TIKTOKEN_CACHE_DIR to a folder holding the cached files (e.g. ../shared/tiktoken_cache)"
        ) from e


def build_gpt2(meta: dict[str, Any]) -> Tokenizer:
    """GPT-2 BPE (50257 ids). A literal "<|endoftext|>" in the text becomes the eot id, so prompts can contain it."""
    enc = gpt2_encoding()
    return Tokenizer(
        encode=lambda s: enc.encode(s, allowed_special={"<|endoftext|>"}),
        decode=enc.decode,
        eot=enc.eot_token,  # 50256
    )


def build_synthetic(meta: dict[str, Any]) -> Tokenizer:
    """Named tokens (the synthetic memory tasks): meta["itos"][i] is the name of id i ("f12", "k3", "v7", "<q>");
    text is names separated by spaces."""
    itos = meta.get("itos")
    if not isinstance(itos, list) or not all(isinstance(n, str) and n and n.split() == [n] for n in itos):
        raise ValueError("synthetic tokenizer: meta['itos'] must be a list of non-empty names without spaces")
    stoi = {n: i for i, n in enumerate(itos)}

    def encode(s: str) -> list[int]:
        names = s.split()
        try:
            return [stoi[n] for n in names]
        except KeyError:
            bad = next(n for n in names if n not in stoi)
            raise ValueError(f"token {bad!r} is not in the synthetic vocabulary ({len(itos)} names)") from None

    def decode(ids: list[int]) -> str:
        return " ".join(itos[i] for i in ids)

    return Tokenizer(encode, decode, eot=None)


TOKENIZERS: dict[str, Callable[[dict[str, Any]], Tokenizer]] = {
    "char": build_char,
    "gpt2": build_gpt2,
    "synthetic": build_synthetic,
}


def load_meta(data_dir: str) -> dict[str, Any]:
    """Read <data_dir>/meta.json; a missing or malformed file is a one-line ValueError that names it."""
    path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} not found; run the dataset's prepare.py first (see data/README.md)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} could not be read as JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), str):
        raise ValueError(f"{path} must be a JSON object with a string 'tokenizer' field")
    if not isinstance(meta.get("vocab_size"), int):
        raise ValueError(f"{path} must have an integer 'vocab_size' field")
    return meta


def get_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """Build the tokenizer that meta["tokenizer"] names."""
    name = meta.get("tokenizer")
    if not isinstance(name, str) or name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}: known are {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name](meta)
