"""Python source code, a corpus with long-range structure (names defined near the top of a file are used far below
it), available offline: the standard library of the running interpreter, or any folder of .py files. Writes
train.bin, val.bin (uint16 ids) and meta.json.

    python data/pycode/prepare.py [--out_dir DIR] [--source DIR] [--tokenizer gpt2|char]

- Files: every *.py below --source (default: this interpreter's standard library), without test suites (folders
  named test, tests or idle_test), site-packages and __pycache__; files that are not UTF-8 are skipped and counted.
  Sorted by path below the source, so the order is fixed.
- Split by file, not by position: a file is val when the SHA-1 of its path (below the source) is 0 mod 10 (about
  a tenth of the files), so a file is never cut in two and the split does not move when files come or go.
- Each file is its text after a `# file: <path>` line; files are separated by GPT-2's <|endoftext|> (gpt2) or by
  the character \\x1c, the ASCII file separator (char: the vocabulary is every character of the corpus).
- meta.json records where the text came from (the interpreter's version and the folder, or the folder alone), the
  files in each split, and the SHA-256 of the text of each split, so results made from different corpora are never
  mixed up (the hash is of the split's documents joined by newlines).
"""

import hashlib
import platform
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/<name> is on the path; tokenizer.py is 2 up
from data.common import ArgumentParser, UsageError, writable_dir, write_dataset  # noqa: E402
from tokenizer import get_tokenizer, gpt2_encoding  # noqa: E402

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
FILE_SEPARATOR = "\x1c"  # between files, with the char tokenizer


def python_files(source: Path) -> list[Path]:
    """The .py files below source that belong in the corpus, sorted by their path below it."""
    found = []
    for path in source.rglob("*.py"):
        rel = path.relative_to(source)
        if not SKIP_DIRS.intersection(rel.parts[:-1]) and path.is_file():
            found.append(rel)
    return sorted(found, key=lambda p: p.as_posix())


def is_val(rel: Path) -> bool:
    return int(hashlib.sha1(rel.as_posix().encode()).hexdigest(), 16) % 10 == 0


def read_corpus(source: Path) -> tuple[dict[str, list[str]], int]:
    """The documents of each split ('# file: <path>' and the file's text) and the number of files skipped."""
    splits: dict[str, list[str]] = {"train": [], "val": []}
    skipped = 0
    for rel in python_files(source):
        try:
            text = (source / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1
            continue
        splits["val" if is_val(rel) else "train"].append(f"# file: {rel.as_posix()}\n{text}")
    return splits, skipped


def encode_splits(docs: dict[str, list[str]], tokenizer: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The train and val documents as uint16 ids, and the vocabulary's part of meta.json: GPT-2 BPE with
    <|endoftext|> after each file, or one id per character with the file separator after each."""
    if tokenizer == "gpt2":
        enc = gpt2_encoding()  # RuntimeError when tiktoken's files can be neither found nor downloaded

        def encode(split: list[str]) -> np.ndarray:
            ids: list[int] = []
            for tokens in enc.encode_ordinary_batch(split):  # a literal "<|endoftext|>" in a file stays text
                ids += [*tokens, enc.eot_token]
            return np.array(ids, dtype=np.uint16)

        vocab: dict[str, Any] = {"tokenizer": "gpt2", "vocab_size": enc.n_vocab}
    else:
        itos = sorted({c for split in docs.values() for doc in split for c in doc} | {FILE_SEPARATOR})
        if len(itos) > 65536:
            raise RuntimeError(f"{len(itos)} distinct characters do not fit uint16 ids")
        tok = get_tokenizer({"tokenizer": "char", "itos": itos})

        def encode(split: list[str]) -> np.ndarray:
            return np.array(tok.encode("".join(doc + FILE_SEPARATOR for doc in split)), dtype=np.uint16)

        vocab = {"tokenizer": "char", "vocab_size": len(itos), "itos": itos}
    return encode(docs["train"]), encode(docs["val"]), vocab


def main(argv: list[str] | None = None) -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parser = ArgumentParser(description="Prepare Python source code (the standard library by default).")
    parser.add_argument(
        "--out_dir", type=writable_dir, default=HERE, help="folder for the bins and meta.json (default: here)"
    )
    parser.add_argument("--source", type=Path, default=None, help=f"folder of .py files (default: {stdlib})")
    parser.add_argument("--tokenizer", choices=("gpt2", "char"), default="gpt2", help="GPT-2 BPE or characters")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    source = (args.source or stdlib).resolve()
    if not source.is_dir():
        print(f"error: --source {source} is not a folder (give a folder of .py files)", file=sys.stderr)
        return 1
    docs, skipped = read_corpus(source)
    if not docs["train"] or not docs["val"]:
        n = len(docs["train"]) + len(docs["val"])
        print(f"error: --source {source} has {n} usable .py file(s): too few to split by file", file=sys.stderr)
        return 1

    try:
        train_ids, val_ids, vocab = encode_splits(docs, args.tokenizer)
    except RuntimeError as e:  # no BPE files, or too many distinct characters
        print(f"error: {e}", file=sys.stderr)
        return 1
    provenance = {"folder": str(source)}
    if args.source is None or source == stdlib.resolve():
        provenance.update(python=platform.python_version(), implementation=platform.python_implementation())
    meta = {
        **vocab,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "source": "pycode",
        "provenance": provenance,
        "files": {"train": len(docs["train"]), "val": len(docs["val"]), "skipped_not_utf8": skipped},
        "sha256": {k: hashlib.sha256("\n".join(v).encode()).hexdigest() for k, v in docs.items()},
    }
    try:
        write_dataset(args.out_dir, train_ids, val_ids, meta)
    except ValueError as e:  # out_dir could not be created
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out_dir}: {meta['files']['train']} + {meta['files']['val']} files from {source}; train "
        f"{len(train_ids):,} tokens, val {len(val_ids):,} tokens, vocab {vocab['vocab_size']} ({args.tokenizer})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
