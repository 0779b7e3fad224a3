"""What the prepare scripts share: getting the text (a local file or a download) and writing a dataset folder.

A dataset folder holds train.bin and val.bin (flat uint16 token ids) and meta.json, written last, so that its
presence means the folder is complete. The synthetic memory tasks (recall, copy, needle) also write answer masks,
train_mask.bin and val_mask.bin, and share their vocabulary, command-line flags and writer here.
"""

import argparse
import http.client
import json
import os
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def download(url: str, dest: Path) -> None:
    """Fetch url into dest through a temp file, so a failed or interrupted download leaves nothing behind."""
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(out_dir: Path, input_path: Path | None, url: str = TINY_SHAKESPEARE_URL) -> tuple[str, str]:
    """(text, source) from --input, else <out_dir>/input.txt, else a download of tiny-shakespeare from url.
    A RuntimeError is a one-line user error."""
    if input_path is not None:
        path, source = input_path, str(input_path)
        if not path.is_file():
            raise RuntimeError(f"--input {path} is not a file")
    else:
        path = out_dir / "input.txt"
        source = str(path)
        if not path.exists():
            print(f"downloading tiny-shakespeare to {path}")
            try:
                download(url, path)
            except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
                reason = getattr(e, "reason", None) or e
                raise RuntimeError(
                    f"could not download tiny-shakespeare ({reason}); put the text at {path} or pass --input PATH"
                ) from e
            source = url
    try:
        return path.read_text(encoding="utf-8"), source
    except UnicodeDecodeError as e:
        raise RuntimeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def dir_problem(path: str | Path) -> str | None:
    """Why `path` cannot be a folder to write into (it is a file, a file stands where one of its parent folders
    should be, or the nearest folder that exists is not writable), or None. Looks only: creates nothing, so a
    command can refuse a bad folder before it has written anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "is a file, not a folder: name a folder (it is created if missing)"
    existing = path
    while not existing.exists():  # ends at '.' or '/', which exist
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: '{existing}' is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"is not writable: no permission to write in '{existing}'"
    return None


def check_writable_dir(path: str | Path, name: str = "out_dir") -> None:
    """A one-line ValueError naming the setting if `path` cannot be a folder to write into (see dir_problem)."""
    problem = dir_problem(path)
    if problem:
        raise ValueError(f"{name} = '{path}' {problem}")


def writable_dir(s: str) -> Path:
    """argparse type of an --out_dir: a folder that is, or can be made, writable."""
    problem = dir_problem(s)
    if problem:
        raise argparse.ArgumentTypeError(f"'{s}' {problem}")
    return Path(s)


def make_dir(path: str | Path, name: str = "out_dir") -> None:
    """os.makedirs(path, exist_ok=True), with a failure (a read-only file system...) as a one-line ValueError."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{name} = '{path}' cannot be created: {e.strerror or e}") from None


def write_dataset(out_dir: Path, train_ids: np.ndarray, val_ids: np.ndarray, meta: dict[str, Any]) -> None:
    """Flat uint16 bins, then meta.json last: its presence means the folder is complete."""
    make_dir(out_dir)
    train_ids.astype(np.uint16).tofile(out_dir / "train.bin")
    val_ids.astype(np.uint16).tofile(out_dir / "val.bin")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# --- synthetic memory tasks (data/recall, data/copy, data/needle) ----------------------------------------------------
#
# The three tasks share one small vocabulary, the same whatever the episode length, so a model trained on 4-segment
# episodes can be evaluated on 16-segment ones. Fillers are disjoint from keys and values: an answer can only be the
# key or value that the episode put there.

N_FILLERS, N_KEYS, N_VALUES = 64, 16, 16
# how mqar's last segment asks: "shuffled", every key once in a fresh order, lets a model that never looks a key up
# still get the last answers right by elimination (a pair's value not yet answered: 1/4, 1/3, 1/2 and 1 at P = 4,
# about 0.52 per value); "drawn", P keys drawn with replacement, leaves only the lookup
MQAR_QUERIES = ("shuffled", "drawn")
# the answer mask's values: 1 an answer only memory (or the episode's earlier segments) can give; REPEAT an answer to
# a question asked before in the same episode (drawn questions ask some keys twice), whose value is then in the
# context: it trains and counts in acc_token like any answer, but acc_first (first-asked keys) leaves it out
ANSWER, REPEAT = 1, 2
QUERY, COPY = 0, 1  # the markers "<q>" and "<copy>"
FILLER0 = 2
KEY0 = FILLER0 + N_FILLERS
VALUE0 = KEY0 + N_KEYS
SYNTHETIC_ITOS = [
    "<q>",
    "<copy>",
    *(f"f{i}" for i in range(N_FILLERS)),
    *(f"k{i}" for i in range(N_KEYS)),
    *(f"v{i}" for i in range(N_VALUES)),
]  # 98 names; id i decodes to SYNTHETIC_ITOS[i]


class UsageError(Exception):
    """A bad command-line argument: main() prints it as one line and returns 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting, so every bad argument is one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            value = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {s!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def episode_parser(description: str, default_out_dir: Path) -> ArgumentParser:
    """The flags every synthetic task takes; the task adds its own."""
    p = ArgumentParser(description=description)
    p.add_argument("--out_dir", type=writable_dir, default=default_out_dir, help="where the files go (default: here)")
    p.add_argument("--n_segments", type=positive_int, default=4, help="segments per episode (default: 4)")
    p.add_argument("--block_size", type=positive_int, default=16, help="tokens per segment (default: 16)")
    p.add_argument("--train_episodes", type=positive_int, default=20000, help="episodes in train.bin (default: 20000)")
    p.add_argument("--val_episodes", type=positive_int, default=500, help="episodes in val.bin (default: 500)")
    p.add_argument("--seed", type=nonnegative_int, default=1337, help="numpy seed; same seed, same files (1337)")
    return p


def fillers(rng: np.random.Generator, n: int, episode_len: int) -> np.ndarray:
    """(n, episode_len) random filler ids: the background a task writes its keys, values and markers into."""
    return rng.integers(FILLER0, FILLER0 + N_FILLERS, size=(n, episode_len), dtype=np.int64)


def distinct_keys(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """(n, count) key ids, distinct within each row: the first count of a random permutation of the keys."""
    return KEY0 + np.argsort(rng.random((n, N_KEYS)), axis=1)[:, :count]


def question_marks(order: np.ndarray) -> np.ndarray:
    """(n, Q) which key each question asks, in the order asked -> (n, Q) mask values of their answers: ANSWER where
    the key is asked for the first time in its row, REPEAT where it was asked before (its answer is in context)."""
    n, Q = order.shape
    marks = np.full((n, Q), ANSWER, dtype=np.uint8)
    for j in range(1, Q):
        marks[:, j] = np.where((order[:, :j] == order[:, j : j + 1]).any(axis=1), REPEAT, ANSWER)
    return marks


# generate(rng, n) -> (tokens, mask), both (n, episode_len): ids, and ANSWER (or REPEAT) where the token is a scored
# answer
EpisodeGenerator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def write_episodes(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict[str, Any]) -> None:
    """For each split ("train", "val"): <split>.bin (uint16 ids) and <split>_mask.bin (uint8, 0 = not an answer), both
    flat, episode after episode; then meta.json last. An old meta.json goes first, so a folder interrupted halfway
    never looks complete, and each file appears whole (temp file, then rename)."""
    make_dir(out_dir)
    (out_dir / "meta.json").unlink(missing_ok=True)
    files: list[tuple[str, bytes]] = []
    for split, (tokens, mask) in splits.items():
        assert tokens.shape == mask.shape and tokens.ndim == 2, "tokens and mask must both be (episodes, episode_len)"
        assert tokens.min() >= 0 and tokens.max() < 65536, "ids must fit in uint16"
        files += [
            (f"{split}.bin", tokens.astype(np.uint16).tobytes()),
            (f"{split}_mask.bin", mask.astype(np.uint8).tobytes()),
        ]
    files.append(("meta.json", (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode("utf-8")))
    for name, data in files:
        tmp = out_dir / (name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, out_dir / name)
        finally:
            tmp.unlink(missing_ok=True)


def prepare_episodes(
    args: argparse.Namespace,
    task: str,
    generate: EpisodeGenerator,
    answer_len: int,
    settings: dict[str, int | str],
    generate_train: EpisodeGenerator | None = None,
) -> int:
    """Generate train and val episodes, write them with their meta.json, print one summary line; returns 0.

    Train and val draw from independent streams of the seed, so val does not change with --train_episodes. Training
    episodes come from generate_train where a task trains on other episodes than it is measured on (answer_len is
    val's), else from generate too."""
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(2))
    splits = {
        "train": (generate_train or generate)(train_rng, args.train_episodes),
        "val": generate(val_rng, args.val_episodes),
    }
    episode_len = args.n_segments * args.block_size
    meta = {
        "tokenizer": "synthetic",
        "vocab_size": len(SYNTHETIC_ITOS),
        "task": task,
        "episode_len": episode_len,
        "n_segments": args.n_segments,
        "block_size": args.block_size,
        "answer_len": answer_len,
        # a model that knows the format but remembers nothing: each answer token right with chance 1/n_values,
        # all answer tokens of an episode right with chance (1/n_values)^answer_len
        "chance": 1 / N_VALUES,
        "chance_exact": (1 / N_VALUES) ** answer_len,
        "n_values": N_VALUES,
        "n_keys": N_KEYS,
        "n_fillers": N_FILLERS,
        "train_episodes": args.train_episodes,
        "val_episodes": args.val_episodes,
        "train_tokens": args.train_episodes * episode_len,
        "val_tokens": args.val_episodes * episode_len,
        "seed": args.seed,
        # the mask marks answers to repeated questions REPEAT (folders without this key predate the mark)
        "repeat_mark": REPEAT,
        **settings,
        # what regenerates these episodes at another length (train.py's segment curriculum and length sweeps)
        "prepare_args": [
            a
            for k, v in sorted(vars(args).items())
            if k not in ("out_dir", "n_segments", "block_size")
            for a in (f"--{k}", str(v))
        ],
        "itos": SYNTHETIC_ITOS,
    }
    try:
        write_episodes(args.out_dir, splits, meta)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out_dir}: {task}, {args.train_episodes:,} train / {args.val_episodes:,} val episodes of "
        f"{args.n_segments} x {args.block_size} tokens, {answer_len} answer token(s) each, chance {1 / N_VALUES:.4f}"
    )
    return 0


def episode_batch(
    tokens: np.ndarray, mask: np.ndarray, episodes: np.ndarray, episode_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reading contract of an episode-aligned split, as a reference: x, y (int64) and y_mask (bool), each
    (B, episode_len), for the given episode indices. x = episode[0:L], y = episode[1:L] + [the next token], and y
    counts only where y_mask is 1. The next token is the next episode's first, never an answer; after the last
    episode there is none, so it is 0 with mask 0."""
    idx = np.asarray(episodes, dtype=np.int64)[:, None] * episode_len + np.arange(episode_len + 1)  # (B, L+1)
    inside = idx < len(tokens)
    idx = np.minimum(idx, len(tokens) - 1)
    seq = np.where(inside, tokens[idx], 0).astype(np.int64)  # (B, L+1)
    answer = inside & (mask[idx] != 0)  # (B, L+1)
    return seq[:, :-1], seq[:, 1:], answer[:, 1:]
