"""Associative recall: key -> value pairs at the start of an episode, the question at its end.

    python data/recall/prepare.py [--out_dir DIR] [--n_segments 4] [--block_size 16] [--min_pairs 1] [--max_pairs 4]
                                  [--train_episodes 20000] [--val_episodes 500] [--seed 1337]

An episode is n_segments segments of block_size tokens (4 x 16 by default):

    segment 1          k3 v7 k9 v1 f12 f40 ...       n pairs (distinct keys, values drawn with repetition), fillers
    segments 2..S-1    f5 f33 f17 ...                fillers only
    segment S          ... f8 <q> k9 v1              the query names one of the pairs; v1 is the answer (mask 1)

n is drawn per episode from [min_pairs, max_pairs]. With n_segments >= 2 the answer is in the last segment and the
pairs in the first, so only memory can carry it (chance 1/16); n_segments=1 is the no-gap control. Writes train.bin,
val.bin, train_mask.bin, val_mask.bin and meta.json; see data/README.md for the reading contract.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/recall is on the path; data/common.py is 2 up
from data.common import (  # noqa: E402
    N_KEYS,
    N_VALUES,
    QUERY,
    VALUE0,
    UsageError,
    distinct_keys,
    episode_parser,
    fillers,
    positive_int,
    prepare_episodes,
)


def generate(
    rng: np.random.Generator, n: int, n_segments: int, block_size: int, min_pairs: int, max_pairs: int
) -> tuple[np.ndarray, np.ndarray]:
    """n recall episodes: tokens and answer mask, both (n, n_segments * block_size)."""
    L, P = n_segments * block_size, max_pairs
    tokens = fillers(rng, n, L)  # (n, L)
    n_pairs = rng.integers(min_pairs, max_pairs + 1, size=n)  # (n,)
    keys = distinct_keys(rng, n, P)  # (n, P), distinct within a row
    values = rng.integers(VALUE0, VALUE0 + N_VALUES, size=(n, P))  # (n, P)
    pairs = np.stack([keys, values], axis=2).reshape(n, 2 * P)  # (n, 2P): k v k v ...
    used = np.repeat(np.arange(P)[None, :] < n_pairs[:, None], 2, axis=1)  # (n, 2P): pair slots this episode fills
    tokens[:, : 2 * P] = np.where(used, pairs, tokens[:, : 2 * P])
    rows, asked = np.arange(n), rng.integers(0, n_pairs)  # (n,), (n,): the queried pair, one of the used ones
    tokens[:, L - 3] = QUERY
    tokens[:, L - 2] = keys[rows, asked]
    tokens[:, L - 1] = values[rows, asked]
    mask = np.zeros((n, L), dtype=np.uint8)
    mask[:, L - 1] = 1
    return tokens, mask


def main(argv: list[str] | None = None) -> int:
    parser = episode_parser("Prepare the associative-recall memory task.", HERE)
    parser.add_argument("--min_pairs", type=positive_int, default=1, help="fewest key-value pairs (default: 1)")
    parser.add_argument("--max_pairs", type=positive_int, default=4, help="most key-value pairs (default: 4)")
    try:
        args = parser.parse_args(argv)
        P = args.max_pairs
        if args.min_pairs > P:
            raise UsageError(f"--min_pairs {args.min_pairs} must be <= --max_pairs {P}")
        if P > N_KEYS:
            raise UsageError(f"--max_pairs {P} must be <= {N_KEYS}, the number of distinct keys")
        need = 2 * P + 3 if args.n_segments == 1 else max(2 * P, 3)  # the pairs, and "<q> k v" (same segment if 1)
        if args.block_size < need:
            raise UsageError(
                f"--block_size {args.block_size} is too small for {P} pairs and the query in {args.n_segments} "
                f"segment(s): need >= {need}"
            )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = partial(
        generate, n_segments=args.n_segments, block_size=args.block_size, min_pairs=args.min_pairs, max_pairs=P
    )
    return prepare_episodes(args, "recall", gen, answer_len=1, settings={"min_pairs": args.min_pairs, "max_pairs": P})


if __name__ == "__main__":
    sys.exit(main())
