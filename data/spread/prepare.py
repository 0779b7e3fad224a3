"""Facts spread over time: one key-value pair in each segment, every key asked for at the end (ARMT's "remember",
arXiv 2407.04841), and a rewrite variant in which keys come back with new values and the latest one is the answer.

    python data/spread/prepare.py [--out_dir DIR] [--n_segments 4] [--block_size 16] [--n_keys 0]
                                  [--queries shuffled] [--n_queries 0] [--context_pairs 1]
                                  [--train_episodes 20000] [--val_episodes 500] [--seed 1337]

An episode is n_segments segments of block_size tokens. Segments 1..S-1 each hold one pair, `k v`, at a random
place among fillers; the last segment ends with the queries, the keys in a fresh order, each followed by its value
(the answers, mask 1):

    segment 1          f12 f3 k3 v7 f40 ...          one pair
    segment 2          f8 k9 v1 f2 ...               one pair
    segment 3          f33 f5 f19 k0 v4 ...          one pair
    segment 4          ... f8 k9 v1 k3 v7 k0 v4      the queries: every key, each with its (latest) value

- n_keys 0 (remember): S - 1 pairs with distinct keys, all asked for: the number of facts grows with the episode
  (3 at 4 segments, 7 at 8, 15 at 16), so evaluating at 2x and 4x the trained length asks for 2x and 4x as many.
  One segment is the no-gap control: one pair, then its query, in the same segment.
- n_keys K (rewrite): the first K pairs are K distinct keys, every later pair one of them again with a fresh value;
  the K keys are asked for, and the answer is the value written last. One memory bank is rewritten by every
  segment; routing can leave a bank untouched until its key comes back. Needs S >= K + 1, or one segment (below).

--context_pairs C puts C pairs in a one-segment episode, before its queries: the no-gap stage of a curriculum then
teaches the lookup among several keys, which one pair cannot (every question has one answer). Their keys are
distinct (remember), or with n_keys K <= C the K keys first and C - K rewrites after them, so that the stage also
teaches that the latest value is the answer.

With every key asked once (--queries shuffled, the default) the last answers follow by elimination (the value of
the episode not yet given), which a model learns before any lookup (EXPERIMENTS.md, 2026-12-03, on mqar). With
--queries drawn the last segment asks n_queries keys (0 = as many as there are keys) drawn with replacement from the
episode's keys, so no answer follows from the others; its size is then the same at every length. A key asked again
has its answer in context: the mask marks that answer 2 (REPEAT), and acc_first is the accuracy on first-asked keys;
what memory holds is acc_open, the accuracy on each episode's first question, which no answer before it informs.

The measure is the per-answer accuracy (train.py's acc_token, chance 1/16); the pairs a model holds follow from it
(benchmark.py's stored_pairs). Writes train.bin, val.bin, train_mask.bin, val_mask.bin and meta.json; see
data/README.md for the reading contract.
"""

import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/spread is on the path; data/common.py is 2 up
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


def layout(n_segments: int, n_keys: int, context_pairs: int = 1) -> tuple[int, int]:
    """(pairs written, keys asked for) of an episode: S - 1 and S - 1 (context_pairs for one segment), or S - 1
    and K."""
    pairs = context_pairs if n_segments == 1 else n_segments - 1
    return pairs, (n_keys or pairs)


def asked(n_segments: int, n_keys: int, queries: str, n_queries: int, context_pairs: int = 1) -> int:
    """How many questions the last segment asks: every key once, or n_queries drawn (0 = as many as keys)."""
    keys = layout(n_segments, n_keys, context_pairs)[1]
    return (n_queries or keys) if queries == "drawn" else keys


def generate(
    rng: np.random.Generator,
    n: int,
    n_segments: int,
    block_size: int,
    n_keys: int,
    queries: str = "shuffled",
    n_queries: int = 0,
    context_pairs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """n episodes: tokens and answer mask, both (n, n_segments * block_size)."""
    S, T = n_segments, block_size
    P, Q = layout(S, n_keys, context_pairs)
    A = asked(S, n_keys, queries, n_queries, context_pairs)
    L, rows = S * T, np.arange(n)[:, None]
    tokens = fillers(rng, n, L)
    keys = distinct_keys(rng, n, Q)  # (n, Q): the episode's keys
    # which key each pair writes: every key once first (remember: that is all), then keys drawn again (rewrite)
    which = np.concatenate([np.tile(np.arange(Q), (n, 1)), rng.integers(0, Q, size=(n, P - Q))], axis=1)  # (n, P)
    pair_keys = keys[rows, which]
    values = rng.integers(VALUE0, VALUE0 + N_VALUES, size=(n, P))
    # pair j sits in segment j at a random offset; with one segment, before the queries that close it (several pairs:
    # in distinct two-token places, in order)
    if S == 1 and P > 1:
        places = np.sort(np.argsort(rng.random((n, (T - 2 * A) // 2)), axis=1)[:, :P], axis=1)
        starts = 2 * places
    else:
        room = T - 1 if S > 1 else T - 1 - 2 * A
        starts = np.arange(P) * T + rng.integers(0, room, size=(n, P))  # (n, P)
    tokens[rows, starts], tokens[rows, starts + 1] = pair_keys, values
    # the latest value of each key: later pairs overwrite earlier ones in this scatter, in order
    latest = np.zeros((n, Q), dtype=np.int64)
    for j in range(P):
        latest[np.arange(n), which[:, j]] = values[:, j]
    # which keys are asked: drawn with replacement (some twice, some not at all), or every key once in a fresh order
    drawn = queries == "drawn"
    order = rng.integers(0, Q, size=(n, A)) if drawn else np.argsort(rng.random((n, Q)), axis=1)
    tokens[:, L - 2 * A :] = np.stack([keys[rows, order], latest[rows, order]], axis=2).reshape(n, 2 * A)
    mask = np.zeros((n, L), dtype=np.uint8)
    mask[:, L - 2 * A + 1 :: 2] = question_marks(order)  # REPEAT where the key was asked before (answer in context)
    return tokens, mask


def main(argv: list[str] | None = None) -> int:
    parser = episode_parser("Prepare the spread memory task: one pair a segment, every key asked for at the end.", HERE)
    parser.add_argument(
        "--n_keys", type=nonnegative_int, default=0, help="0: every pair a new key (remember); K: K keys rewritten"
    )
    parser.add_argument(
        "--queries", choices=MQAR_QUERIES, default="shuffled", help="each key once (shuffled) or drawn with replacement"
    )
    parser.add_argument(
        "--n_queries", type=nonnegative_int, default=0, help="with --queries drawn: questions per episode (0 = keys)"
    )
    parser.add_argument(
        "--context_pairs", type=positive_int, default=1, help="pairs of a one-segment episode, before its queries"
    )
    try:
        args = parser.parse_args(argv)
        S, T, K, C = args.n_segments, args.block_size, args.n_keys, args.context_pairs
        P, Q = layout(S, K, C)
        if Q > N_KEYS:
            raise UsageError(f"--n_segments {S} writes {Q} keys: at most {N_KEYS} distinct keys (n_segments <= 17)")
        if K and S == 1 and C < K:
            raise UsageError(f"--context_pairs {C} is too few to write {K} keys in one segment: need >= {K}")
        if K and 1 < S < K + 1:
            raise UsageError(
                f"--n_segments {S} is too few to write {K} keys one a segment and ask: need 1 or >= {K + 1}"
            )
        if args.n_queries and args.queries != "drawn":
            raise UsageError(f"--n_queries {args.n_queries} needs --queries drawn (shuffled asks each key once)")
        A = asked(S, K, args.queries, args.n_queries, C)
        need = 2 * A + (2 * P if S == 1 else 0)  # one segment holds its pairs too
        if need > T:
            raise UsageError(f"--block_size {T} cannot hold the last segment's {A} queries: need >= {need}")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = partial(generate, n_segments=S, block_size=T, n_keys=K, queries=args.queries, n_queries=args.n_queries,
                  context_pairs=C)  # fmt: skip
    settings: dict[str, int | str] = {"n_keys": K, "n_pairs": P}
    if args.queries != "shuffled":  # named only when not the default, so folders prepared before stay current
        settings.update(queries=args.queries, n_queries=args.n_queries)
    if C != 1:
        settings.update(context_pairs=C)
    return prepare_episodes(args, "spread", gen, answer_len=A, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
