"""OpenWebText in GPT-2 BPE tokens: writes train.bin (~9B tokens, ~17GB), val.bin (~4M tokens) and meta.json.

    python data/openwebtext/prepare.py [--out_dir DIR] [--num_proc N] [--dataset NAME | --text_files GLOB]

By default the documents come from the Hugging Face Hub dataset "openwebtext" (~54GB in the HF cache, ~8M documents).
With --text_files they come from local plain-text files instead, one document per file (read whole, newlines kept);
that is how the tests run the full recipe offline.

The recipe is nanoGPT's: 0.05% of the documents go to val (shuffled with seed 2357); each document is encoded with
encode_ordinary and followed by the end-of-text id 50256; each split is one flat uint16 array of all its documents.
"""

import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_dataset
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/<name> is on the path; tokenizer.py is 2 up
from data.common import ArgumentParser, UsageError, make_dir, writable_dir  # noqa: E402
from tokenizer import gpt2_encoding  # noqa: E402

VAL_FRACTION = 0.0005
SEED = 2357


def load_documents(dataset: str, text_files: str | None, num_proc: int) -> tuple[Dataset, str]:
    """(documents with a "text" column, source). RuntimeError = a one-line user error."""
    if text_files is not None:
        files = sorted(glob.glob(text_files, recursive=True))
        if not files:
            raise RuntimeError(f"--text_files {text_files!r} matches no files")
        docs = load_dataset("text", data_files=files, sample_by="document", num_proc=min(num_proc, len(files)))
        return docs["train"], text_files
    try:
        docs = load_dataset(dataset, num_proc=num_proc)
    except Exception as e:  # the Hub client raises many types: ConnectionError, DatasetNotFoundError, RuntimeError...
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RuntimeError(
            f"could not download {dataset!r} from the Hugging Face Hub ({reason}); "
            "check the network or pass --text_files GLOB to build from local files"
        ) from e
    return docs["train"], dataset


def tokenize(doc: dict[str, Any]) -> dict[str, Any]:
    """One document -> its ids followed by eot, so the model sees where documents end."""
    enc = gpt2_encoding()  # tiktoken caches the encoding: this is a dict lookup after the first call
    ids = enc.encode_ordinary(doc["text"])  # a literal "<|endoftext|>" in web text stays text
    ids.append(enc.eot_token)
    return {"ids": ids, "len": len(ids)}


def write_split(split: Dataset, path: Path) -> int:
    """Concatenate the split's ids into a flat uint16 file, shard by shard so RAM holds one shard at a time."""
    n = int(np.sum(split["len"], dtype=np.uint64))
    tmp = path.with_name(path.name + ".tmp")  # a run killed mid-way leaves no half-written bin under the real name
    arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(n,))
    num_shards = min(1024, len(split))
    pos = 0
    for i in tqdm(range(num_shards), desc=f"writing {path}"):
        shard = split.shard(num_shards=num_shards, index=i, contiguous=True).with_format("numpy")
        ids = np.concatenate(list(shard["ids"]))
        arr[pos : pos + len(ids)] = ids
        pos += len(ids)
    assert pos == n
    arr.flush()
    del arr
    os.replace(tmp, path)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Prepare OpenWebText (or local text files) in GPT-2 BPE tokens.")
    parser.add_argument(
        "--out_dir", type=writable_dir, default=HERE, help="folder for the bins and meta.json (default: here)"
    )
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dataset", default="openwebtext", help="Hugging Face Hub dataset with a 'text' column")
    where.add_argument("--text_files", default=None, help="glob of local text files, one document per file")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        enc = gpt2_encoding()
        docs, source = load_documents(args.dataset, args.text_files, args.num_proc)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if len(docs) < 2:
        print(f"error: {source} has {len(docs)} document(s); need at least 2 to split train/val", file=sys.stderr)
        return 1

    splits = docs.train_test_split(test_size=VAL_FRACTION, seed=SEED, shuffle=True)
    splits["val"] = splits.pop("test")
    tokenized = splits.map(tokenize, remove_columns=["text"], desc="tokenizing", num_proc=args.num_proc)

    assert enc.n_vocab <= 65536, "ids must fit in uint16"
    try:
        make_dir(args.out_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {name: write_split(tokenized[name], args.out_dir / f"{name}.bin") for name in ("train", "val")}
    meta = {
        "tokenizer": "gpt2",
        "vocab_size": enc.n_vocab,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "source": source,
    }
    # meta.json last: its presence means the folder is complete
    (args.out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out_dir}: train {counts['train']:,} tokens, val {counts['val']:,} tokens, vocab {enc.n_vocab} (gpt2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
