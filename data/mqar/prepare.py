"""Multi-query associative recall (MQAR, Zoology https://arxiv.org/abs/2312.04927): key -> value pairs at the start
of an episode, every one of their keys asked for again, in a new order, at its end.

    python data/mqar/prepare.py [--out_dir DIR] [--n_segments 4] [--block_size 16] [--n_pairs 4]
                                [--train_min_pairs 0] [--queries shuffled] [--n_queries 0]
                                [--train_episodes 20000] [--val_episodes 500] [--seed 1337]

An episode is n_segments segments of block_size tokens (4 x 16 by default):

    segment 1          k3 v7 k9 v1 k0 v7 k5 v2 f12 ...    n_pairs pairs (distinct keys, values with repetition), fillers
    segments 2..S-1    f5 f33 f17 ...                     fillers only
    segment S          ... f8 k9 v1 k5 v2 k3 v7 k0 v7     the same keys shuffled, each with its value: v1 v2 v7 v7 are
                                                          the n_pairs answers (mask 1)

The queries are the last 2 * n_pairs tokens; there is no marker, a key seen before is a question. With 2 * n_pairs >
block_size the pairs fill the first ceil(2 * n_pairs / block_size) segments and the queries as many last ones, and the
two never share a segment (n_segments >= 2 ceil(2 * n_pairs / block_size)), so only memory can carry the pairs;
n_segments=1 is the no-gap control (pairs, then queries, in one segment: 4 * n_pairs <= block_size). Each answer
token is right by chance with 1/16, all of them with (1/16)^n_pairs: the per-answer accuracy (train.py's acc_token)
is the measure. With --queries drawn the last segment asks n_pairs keys drawn with replacement (some twice, some
not at all) instead of every key once, so that no answer follows by elimination (data/common.py, MQAR_QUERIES);
--n_queries Q then asks Q of them (the last 2Q tokens, in the last ceil(2Q / block_size) segments), more answers
to learn from per episode. A key asked twice has its first answer in context, so the mask marks the second answer 2
(REPEAT): it trains like any other, and the accuracy on first-asked keys alone is acc_first. Once the other keys
were answered, a first-asked key's value can still follow by elimination, so what memory holds is acc_open, the
accuracy on each episode's first question (evaluate.py).
With --train_min_pairs m, each training episode holds between m and n_pairs pairs (uniformly, laid out the same
way), so training also sees easy episodes, while val keeps n_pairs in every episode. Writes train.bin, val.bin,
train_mask.bin, val_mask.bin and meta.json; see data/README.md for the reading contract.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/mqar is on the path; data/common.py is 2 up
from data.common import (  # noqa: E402
    MQAR_QUERIES,
    N_KEYS,
    N_VALUES,
    VALUE0,
    UsageError,
    distinct_keys,
    episode_parser,
    fillers,
    nonnegative_int,
    positive_int,
    prepare_episodes,
    question_marks,
)


def generate(
    rng: np.random.Generator,
    n: int,
    n_segments: int,
    block_size: int,
    n_pairs: int,
    queries: str = "shuffled",
    n_queries: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """n MQAR episodes: tokens and answer mask, both (n, n_segments * block_size). queries 'shuffled' asks every key
    once in a fresh order; 'drawn' asks n_queries keys (0 = n_pairs) drawn with replacement (MQAR_QUERIES)."""
    L, P = n_segments * block_size, n_pairs
    Q = (n_queries or P) if queries == "drawn" else P
    tokens = fillers(rng, n, L)  # (n, L)
    keys = distinct_keys(rng, n, P)  # (n, P), distinct within a row
    values = rng.integers(VALUE0, VALUE0 + N_VALUES, size=(n, P))  # (n, P)
    tokens[:, : 2 * P] = np.stack([keys, values], axis=2).reshape(n, 2 * P)  # k v k v ...
    # the same pairs in a fresh order, so the answers cannot be copied by position; or drawn with replacement
    rows = np.arange(n)[:, None]  # (n, 1)
    drawn = queries == "drawn"
    order = rng.integers(0, P, size=(n, Q)) if drawn else np.argsort(rng.random((n, P)), axis=1)  # (n, Q)
    asked = np.stack([keys[rows, order], values[rows, order]], axis=2)  # (n, Q, 2)
    tokens[:, L - 2 * Q :] = asked.reshape(n, 2 * Q)
    mask = np.zeros((n, L), dtype=np.uint8)
    mask[:, L - 2 * Q + 1 :: 2] = question_marks(order)  # each query's value: REPEAT where its key was asked before
    return tokens, mask


def generate_mixed(
    rng: np.random.Generator,
    n: int,
    n_segments: int,
    block_size: int,
    n_pairs: int,
    min_pairs: int,
    queries: str = "shuffled",
    n_queries: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """n episodes of min_pairs to n_pairs pairs each (uniformly), each laid out as generate lays out its count."""
    counts = rng.integers(min_pairs, n_pairs + 1, size=n)
    L = n_segments * block_size
    tokens, mask = np.zeros((n, L), dtype=np.int64), np.zeros((n, L), dtype=np.uint8)
    for p in np.unique(counts):
        rows = counts == p
        tokens[rows], mask[rows] = generate(rng, int(rows.sum()), n_segments, block_size, int(p), queries, n_queries)
    return tokens, mask


def main(argv: list[str] | None = None) -> int:
    parser = episode_parser("Prepare the multi-query associative-recall (MQAR) memory task.", HERE)
    parser.add_argument("--n_pairs", type=positive_int, default=4, help="key-value pairs, all queried (default: 4)")
    parser.add_argument(
        "--train_min_pairs", type=nonnegative_int, default=0, help="> 0: training episodes hold this many to n_pairs"
    )
    parser.add_argument(
        "--queries", choices=MQAR_QUERIES, default="shuffled", help="each key once (shuffled) or drawn with replacement"
    )
    parser.add_argument(
        "--n_queries", type=nonnegative_int, default=0, help="with --queries drawn: questions per episode (0 = n_pairs)"
    )
    try:
        args = parser.parse_args(argv)
        S, T, P = args.n_segments, args.block_size, args.n_pairs
        if P > N_KEYS:
            raise UsageError(f"--n_pairs {P} must be <= {N_KEYS}, the number of distinct keys")
        if args.n_queries and args.queries != "drawn":
            raise UsageError(f"--n_queries {args.n_queries} needs --queries drawn (shuffled asks each key once)")
        Q = args.n_queries or P
        pair_span, query_span = -(-2 * P // T), -(-2 * Q // T)  # segments the pairs fill, and the queries
        if S == 1 and 2 * (P + Q) > T:
            raise UsageError(
                f"--block_size {T} is too small for {P} pairs and {Q} queries in 1 segment: need >= {2 * (P + Q)} "
                f"(or --n_segments >= {pair_span + query_span})"
            )
        if 1 < S < pair_span + query_span:
            raise UsageError(
                f"--n_segments {S} is too few for {P} pairs and {Q} queries in segments of {T} tokens: the pairs "
                f"fill {pair_span} segment(s) and the queries {query_span} more, need >= {pair_span + query_span}"
            )
        if args.train_min_pairs > P:
            raise UsageError(f"--train_min_pairs {args.train_min_pairs} must be <= --n_pairs {P} (0: every episode P)")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    asking = dict(queries=args.queries, n_queries=Q)
    gen = partial(generate, n_segments=S, block_size=T, n_pairs=P, **asking)
    mixed = None
    if args.train_min_pairs:
        mixed = partial(generate_mixed, n_segments=S, block_size=T, n_pairs=P, min_pairs=args.train_min_pairs, **asking)
    settings: dict[str, int | str] = {"n_pairs": P, "train_min_pairs": args.train_min_pairs}
    if args.queries != "shuffled":  # named only when not the default, so folders prepared before stay current
        settings.update(queries=args.queries, n_queries=Q)
    return prepare_episodes(args, "mqar", gen, answer_len=Q, settings=settings, generate_train=mixed)


if __name__ == "__main__":
    sys.exit(main())
