"""Tiny-shakespeare in GPT-2 BPE tokens: writes train.bin, val.bin (uint16 ids) and meta.json.

    python data/shakespeare/prepare.py [--out_dir DIR] [--input PATH]

The text is --input if given, else <out_dir>/input.txt, downloaded there if missing. The first 90% of the characters
is train (301,966 tokens), the rest val (36,059 tokens), as in nanoGPT. Offline, tiktoken needs its cached BPE files:
set TIKTOKEN_CACHE_DIR to a folder holding them.
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/<name> is on the path; tokenizer.py is 2 up
from data.common import ArgumentParser, UsageError, read_text, writable_dir, write_dataset  # noqa: E402
from tokenizer import gpt2_encoding  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Prepare tiny-shakespeare in GPT-2 BPE tokens.")
    parser.add_argument(
        "--out_dir", type=writable_dir, default=HERE, help="folder for the bins and meta.json (default: here)"
    )
    parser.add_argument("--input", type=Path, default=None, help="text file (default: <out_dir>/input.txt)")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        text, source = read_text(args.out_dir, args.input)
        enc = gpt2_encoding()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = int(len(text) * 0.9)
    if n == 0 or n == len(text):
        print(f"error: {source} is too short to split 90/10 ({len(text)} characters)", file=sys.stderr)
        return 1

    # split the characters first, then encode each half, as nanoGPT does (a BPE token may not straddle the cut);
    # encode_ordinary: a literal "<|endoftext|>" in the text stays text
    assert enc.n_vocab <= 65536, "ids must fit in uint16"
    train_ids = np.array(enc.encode_ordinary(text[:n]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(text[n:]), dtype=np.uint16)

    meta = {
        "tokenizer": "gpt2",
        "vocab_size": enc.n_vocab,  # 50257; the model may pad its embedding table further
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "source": source,
    }
    try:
        write_dataset(args.out_dir, train_ids, val_ids, meta)
    except ValueError as e:  # out_dir could not be created
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: train {len(train_ids):,} tokens, val {len(val_ids):,} tokens, vocab {enc.n_vocab} (gpt2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
