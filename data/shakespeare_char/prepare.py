"""Tiny-shakespeare at the character level: writes train.bin, val.bin (uint16 ids) and meta.json.

    python data/shakespeare_char/prepare.py [--out_dir DIR] [--input PATH]

The text is --input if given, else <out_dir>/input.txt, downloaded there if missing. The vocabulary is the sorted set
of characters of the whole text (65 for tiny-shakespeare); the first 90% is train (1,003,854 tokens), the rest val
(111,540 tokens), as in nanoGPT.
"""

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/<name> is on the path; tokenizer.py is 2 up
from data.common import ArgumentParser, UsageError, read_text, writable_dir, write_dataset  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Prepare tiny-shakespeare for character-level modelling.")
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
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = int(len(text) * 0.9)
    if n == 0 or n == len(text):
        print(f"error: {source} is too short to split 90/10 ({len(text)} characters)", file=sys.stderr)
        return 1

    # the vocabulary covers the whole text, so val has no unknown characters
    itos = sorted(set(text))
    assert len(itos) <= 65536, "ids must fit in uint16"
    tok = get_tokenizer({"tokenizer": "char", "itos": itos})
    train_ids = np.array(tok.encode(text[:n]), dtype=np.uint16)
    val_ids = np.array(tok.encode(text[n:]), dtype=np.uint16)

    meta = {
        "tokenizer": "char",
        "vocab_size": len(itos),
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "source": source,
        "itos": itos,
    }
    try:
        write_dataset(args.out_dir, train_ids, val_ids, meta)
    except ValueError as e:  # out_dir could not be created
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: train {len(train_ids):,} tokens, val {len(val_ids):,} tokens, vocab {len(itos)} (char)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
