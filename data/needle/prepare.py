"""Needle in a haystack: one fact hidden in a random earlier segment, asked for at the end of the episode.

    python data/needle/prepare.py [--out_dir DIR] [--n_segments 4] [--block_size 16]
                                  [--train_episodes 20000] [--val_episodes 500] [--seed 1337]

An episode is n_segments segments of block_size tokens (4 x 16 by default):

    segments 1..S-1    f5 f33 k6 v2 f17 ...          one fact "k v" in one of them, at a random position
    segment S          ... f8 <q> k6 v2              the query; v2 is the answer (mask 1)

The fact is uniform over segments 1..S-1 and over positions within its segment (both of its tokens in the same
segment); fillers are never keys or values, so the answer is unambiguous. Chance is 1/16. The vocabulary does not
depend on n_segments, so for length generalisation train at 4 segments and evaluate on, say, 16:

    python data/needle/prepare.py                                      # data/needle: 4 segments
    python data/needle/prepare.py --n_segments 16 --out_dir data/needle_s16

n_segments=1 is the no-gap control: the fact lies in the query's segment, before it. Writes train.bin, val.bin,
train_mask.bin, val_mask.bin and meta.json; see data/README.md for the reading contract.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/needle is on the path; data/common.py is 2 up
from data.common import (  # noqa: E402
    KEY0,
    N_KEYS,
    N_VALUES,
    QUERY,
    VALUE0,
    UsageError,
    episode_parser,
    fillers,
    prepare_episodes,
)


def generate(rng: np.random.Generator, n: int, n_segments: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """n needle episodes: tokens and answer mask, both (n, n_segments * block_size)."""
    S, T = n_segments, block_size
    L = S * T
    tokens = fillers(rng, n, L)  # (n, L)
    key = rng.integers(KEY0, KEY0 + N_KEYS, size=n)  # (n,)
    value = rng.integers(VALUE0, VALUE0 + N_VALUES, size=n)  # (n,)
    if S == 1:
        start = rng.integers(0, T - 4, size=n)  # (n,): "k v" ends before "<q> k v" starts at T - 3
    else:
        start = rng.integers(0, S - 1, size=n) * T + rng.integers(0, T - 1, size=n)  # (n,): segment, then position
    rows = np.arange(n)
    tokens[rows, start] = key
    tokens[rows, start + 1] = value
    tokens[:, L - 3] = QUERY
    tokens[:, L - 2] = key
    tokens[:, L - 1] = value
    mask = np.zeros((n, L), dtype=np.uint8)
    mask[:, L - 1] = 1
    return tokens, mask


def main(argv: list[str] | None = None) -> int:
    parser = episode_parser("Prepare the needle-in-a-haystack memory task.", HERE)
    try:
        args = parser.parse_args(argv)
        need = 5 if args.n_segments == 1 else 3  # "<q> k v" (and "k v" before it, if one segment)
        if args.block_size < need:
            raise UsageError(
                f"--block_size {args.block_size} is too small for the fact and the query in {args.n_segments} "
                f"segment(s): need >= {need}"
            )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = partial(generate, n_segments=args.n_segments, block_size=args.block_size)
    return prepare_episodes(args, "needle", gen, answer_len=1, settings={})


if __name__ == "__main__":
    sys.exit(main())
