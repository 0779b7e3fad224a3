"""Delayed copy: a string of value tokens at the start of an episode, to be repeated at its end.

    python data/copy/prepare.py [--out_dir DIR] [--n_segments 4] [--block_size 16] [--copy_len 4]
                                [--train_episodes 20000] [--val_episodes 500] [--seed 1337]

An episode is n_segments segments of block_size tokens (4 x 16 by default):

    segment 1          v3 v9 v9 v0 f12 f40 ...       copy_len values, drawn with repetition, then fillers
    segments 2..S-1    f5 f33 f17 ...                fillers only
    segment S          ... f8 <copy> v3 v9 v9 v0     the same string again: copy_len answers (mask 1)

Each answer token is right by chance with 1/16, the whole string with (1/16)^copy_len. With n_segments >= 2 the
string lies segments back, so only memory can carry it; n_segments=1 is the no-gap control. Writes train.bin,
val.bin, train_mask.bin, val_mask.bin and meta.json; see data/README.md for the reading contract.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/copy is on the path; data/common.py is 2 up
from data.common import (  # noqa: E402
    COPY,
    N_VALUES,
    VALUE0,
    UsageError,
    episode_parser,
    fillers,
    positive_int,
    prepare_episodes,
)


def generate(
    rng: np.random.Generator, n: int, n_segments: int, block_size: int, copy_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """n copy episodes: tokens and answer mask, both (n, n_segments * block_size)."""
    L, C = n_segments * block_size, copy_len
    tokens = fillers(rng, n, L)  # (n, L)
    string = rng.integers(VALUE0, VALUE0 + N_VALUES, size=(n, C))  # (n, C)
    tokens[:, :C] = string
    tokens[:, L - C - 1] = COPY
    tokens[:, L - C :] = string
    mask = np.zeros((n, L), dtype=np.uint8)
    mask[:, L - C :] = 1
    return tokens, mask


def main(argv: list[str] | None = None) -> int:
    parser = episode_parser("Prepare the delayed-copy memory task.", HERE)
    parser.add_argument("--copy_len", type=positive_int, default=4, help="value tokens to copy (default: 4)")
    try:
        args = parser.parse_args(argv)
        T, C = args.block_size, args.copy_len
        need = 2 * C + 1 if args.n_segments == 1 else C + 1  # the string, and "<copy> string" (same segment if 1)
        if args.block_size < need:
            raise UsageError(
                f"--block_size {T} is too small for --copy_len {C} in {args.n_segments} segment(s): need >= {need}"
            )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = partial(generate, n_segments=args.n_segments, block_size=T, copy_len=C)
    return prepare_episodes(args, "copy", gen, answer_len=C, settings={"copy_len": C})


if __name__ == "__main__":
    sys.exit(main())
