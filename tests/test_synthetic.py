"""Synthetic memory tasks: data/recall, data/copy, data/needle and data/mqar prepare.py, their writer in
data/common.py and the "synthetic" tokenizer.

Proves, on tiny settings in tmp_path, that each task writes episode-aligned uint16 bins and uint8 answer masks of
exactly episodes * episode_len entries; that every episode has answer_len answers, all in its last segment, and that
a hand-written oracle reading only the episode finds each masked answer where the task put it (and, with a gap, only
in an earlier segment: without memory it is a guess); that the same seed gives the same bytes and another seed other
bytes, and val does not depend on --train_episodes; that the vocabulary and meta.json are the same whatever
n_segments; that episode_batch reads the contract train.py follows; that a bad argument is one line on stderr, exit 2,
and nothing written; and that the synthetic tokenizer round-trips. For mqar, that pairs and queries lie exactly
where its layout says, at every span of segments, never sharing one, and that the queries are reshuffled. One test
runs a prepare.py as a user would.
"""

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from data.common import COPY, FILLER0, KEY0, N_KEYS, N_VALUES, QUERY, REPEAT, SYNTHETIC_ITOS, VALUE0, episode_batch
from tokenizer import get_tokenizer, load_meta

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("recall", "copy", "needle", "mqar")
TINY = ["--block_size", "12", "--n_segments", "3", "--train_episodes", "40", "--val_episodes", "10"]
# what a task needs on top of TINY to fit one 12-token segment too (mqar's no-gap control: 4 * n_pairs <= 12)
TINY_TASK = {"mqar": ["--n_pairs", "3"]}
ANSWER_LEN = {"recall": 1, "copy": 4, "needle": 1, "mqar": 3}


@functools.cache
def load_prepare(task: str) -> ModuleType:
    """Import data/<task>/prepare.py as a module without running it."""
    spec = importlib.util.spec_from_file_location(f"prepare_synthetic_{task}", ROOT / "data" / task / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(task: str, out_dir: Path, *extra: str) -> dict[str, Any]:
    assert load_prepare(task).main(["--out_dir", str(out_dir), *TINY, *TINY_TASK.get(task, []), *extra]) == 0
    return load_meta(str(out_dir))


def episodes(out_dir: Path, split: str, episode_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(episodes, episode_len) tokens and mask, read the way train.py reads the bins."""
    tokens = np.memmap(out_dir / f"{split}.bin", dtype=np.uint16, mode="r")
    mask = np.memmap(out_dir / f"{split}_mask.bin", dtype=np.uint8, mode="r")
    assert len(tokens) == len(mask) and len(tokens) % episode_len == 0
    return np.asarray(tokens).reshape(-1, episode_len), np.asarray(mask).reshape(-1, episode_len)


def is_key(t: int) -> bool:
    return KEY0 <= t < KEY0 + N_KEYS


def is_value(t: int) -> bool:
    return VALUE0 <= t < VALUE0 + N_VALUES


# --- oracles: read an episode as a person would, and say where its answers are and what they must be ---------------


def oracle_recall(ep: list[int], T: int, meta: dict[str, Any]) -> dict[int, int]:
    """The value paired with the queried key in segment 1, at the last position."""
    L = len(ep)
    pairs: dict[int, int] = {}
    for i in range(0, T, 2):  # the pairs are k v k v ... from the start of segment 1
        if not is_key(ep[i]):
            break
        assert ep[i] not in pairs, "keys of an episode are distinct"
        assert is_value(ep[i + 1])
        pairs[ep[i]] = ep[i + 1]
    assert meta["min_pairs"] <= len(pairs) <= meta["max_pairs"]
    assert ep[L - 3] == QUERY and ep[L - 2] in pairs
    body = ep[2 * len(pairs) : L - 3]
    assert not any(is_key(t) or is_value(t) or t == QUERY for t in body), "only fillers between pairs and query"
    return {L - 1: pairs[ep[L - 2]]}


def oracle_copy(ep: list[int], T: int, meta: dict[str, Any]) -> dict[int, int]:
    """The string at the start of segment 1, again after <copy>."""
    L, C = len(ep), meta["copy_len"]
    string = ep[:C]
    assert all(is_value(t) for t in string)
    assert ep[L - C - 1] == COPY
    assert not any(is_value(t) or t == COPY for t in ep[C : L - C - 1]), "only fillers between string and <copy>"
    return {L - C + j: string[j] for j in range(C)}


def oracle_needle(ep: list[int], T: int, meta: dict[str, Any]) -> dict[int, int]:
    """The value after the one key in the haystack, which lies in an earlier segment (the query's own without gap)."""
    L = len(ep)
    keys = [i for i in range(L - 3) if is_key(ep[i])]
    assert len(keys) == 1, "exactly one fact"
    i = keys[0]
    assert is_value(ep[i + 1]) and i // T == (i + 1) // T, "the fact lies within one segment"
    assert L == T or i // T < L // T - 1, "the fact is not in the last segment"
    assert ep[L - 3] == QUERY and ep[L - 2] == ep[i]
    assert sum(is_value(t) for t in ep[: L - 1]) == 1
    return {L - 1: ep[i + 1]}


def oracle_mqar(ep: list[int], T: int, meta: dict[str, Any]) -> dict[int, int]:
    """Each key of the queries at the end, answered with the value it was paired with at the start."""
    L, P = len(ep), meta["n_pairs"]
    pairs: dict[int, int] = {}
    for i in range(0, 2 * P, 2):  # the pairs are k v k v ... from the start of segment 1
        assert is_key(ep[i]) and is_value(ep[i + 1]) and ep[i] not in pairs, "n_pairs pairs with distinct keys"
        pairs[ep[i]] = ep[i + 1]
    queried = ep[L - 2 * P :: 2]
    if meta.get("queries", "shuffled") == "drawn":
        assert set(queried) <= set(pairs), "every question asks a key of the pairs"
    else:
        assert sorted(queried) == sorted(pairs), "every key asked for once"
    assert L == T or (2 * P - 1) // T < (L - 2 * P) // T, "pairs and queries never share a segment"
    body = ep[2 * P : L - 2 * P]
    assert not any(is_key(t) or is_value(t) or t in (QUERY, COPY) for t in body), "only fillers between them"
    return {L - 2 * P + 2 * j + 1: pairs[k] for j, k in enumerate(queried)}


ORACLES = {"recall": oracle_recall, "copy": oracle_copy, "needle": oracle_needle, "mqar": oracle_mqar}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n_segments", [1, 3])
def test_files_masks_and_oracle(task: str, n_segments: int, tmp_path: Path) -> None:
    meta = prepare(task, tmp_path, "--n_segments", str(n_segments))
    assert (meta["n_segments"], meta["block_size"], meta["episode_len"]) == (n_segments, 12, n_segments * 12)
    S, T, L = meta["n_segments"], meta["block_size"], meta["episode_len"]
    assert meta["task"] == task and meta["tokenizer"] == "synthetic" and meta["itos"] == SYNTHETIC_ITOS
    assert meta["vocab_size"] == len(SYNTHETIC_ITOS) < 128 and meta["n_values"] == N_VALUES
    assert meta["chance"] == pytest.approx(1 / N_VALUES)
    assert meta["chance_exact"] == pytest.approx(N_VALUES ** -meta["answer_len"])
    assert meta["answer_len"] == ANSWER_LEN[task]
    assert meta["seed"] == 1337
    for split, n in (("train", 40), ("val", 10)):
        assert meta[f"{split}_episodes"] == n and meta[f"{split}_tokens"] == n * L
        assert (tmp_path / f"{split}.bin").stat().st_size == n * L * 2  # uint16
        assert (tmp_path / f"{split}_mask.bin").stat().st_size == n * L  # uint8
        tokens, mask = episodes(tmp_path, split, L)
        assert tokens.shape == (n, L) and set(np.unique(mask)) <= {0, 1}
        assert (mask.sum(axis=1) == meta["answer_len"]).all() and meta["repeat_mark"] == REPEAT
        assert not mask[:, : (S - 1) * T].any(), "every answer in the last segment"
        assert not mask[:, 0].any(), "the first token of an episode, a target of the previous one, is never scored"
        for ep, m in zip(tokens.tolist(), mask, strict=True):
            answers = ORACLES[task](ep, T, meta)
            assert sorted(answers) == np.flatnonzero(m).tolist()
            assert all(ep[i] == v for i, v in answers.items())


@pytest.mark.parametrize("task", TASKS)
def test_seeds(task: str, tmp_path: Path) -> None:
    a, b, c, d = (tmp_path / x for x in "abcd")
    prepare(task, a)
    prepare(task, b)
    prepare(task, c, "--seed", "7")
    prepare(task, d, "--train_episodes", "5")
    for name in ("train.bin", "train_mask.bin", "val.bin", "val_mask.bin", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs for the same seed"
    for name in ("train.bin", "val.bin"):
        assert (a / name).read_bytes() != (c / name).read_bytes(), f"{name} is the same for another seed"
    assert (a / "val.bin").read_bytes() == (d / "val.bin").read_bytes(), "val depends on --train_episodes"


@pytest.mark.parametrize("task", TASKS)
def test_vocabulary_independent_of_length(task: str, tmp_path: Path) -> None:
    metas = [prepare(task, tmp_path / str(s), "--n_segments", str(s)) for s in (1, 2, 6)]
    varying = {"n_segments", "episode_len", "train_tokens", "val_tokens"}
    for meta in metas[1:]:
        assert meta.keys() == metas[0].keys()
        assert {k: v for k, v in meta.items() if k not in varying} == {
            k: v for k, v in metas[0].items() if k not in varying
        }


def test_needle_fact_reaches_every_earlier_segment(tmp_path: Path) -> None:
    """At 16 segments (the length-generalisation eval) the fact lands in all 15 earlier segments, never the last."""
    meta = prepare("needle", tmp_path, "--n_segments", "16", "--train_episodes", "400")
    tokens, _ = episodes(tmp_path, "train", meta["episode_len"])
    is_fact_key = (tokens >= KEY0) & (tokens < KEY0 + N_KEYS)
    is_fact_key[:, -2] = False  # the query's key
    rows, cols = np.nonzero(is_fact_key)
    assert (np.bincount(rows, minlength=400) == 1).all()
    assert set((cols // meta["block_size"]).tolist()) == set(range(15))


# the defaults; the no-gap control at its limit (4P = T); one pair; pairs spanning 3 and 2 segments; all 16 keys
@pytest.mark.parametrize(
    ("n_segments", "block_size", "n_pairs"), [(4, 16, 4), (1, 16, 4), (2, 4, 1), (6, 4, 5), (4, 8, 7), (2, 32, 16)]
)
def test_mqar_layout(n_segments: int, block_size: int, n_pairs: int, tmp_path: Path) -> None:
    """Position by position: the pairs first, then fillers only, then the same keys reshuffled, each followed by the
    value it was paired with; the mask is 1 at those values and nowhere else."""
    S, T, P = n_segments, block_size, n_pairs
    meta = prepare("mqar", tmp_path, "--n_segments", str(S), "--block_size", str(T), "--n_pairs", str(P))
    assert (meta["n_pairs"], meta["answer_len"]) == (P, P)
    assert meta["chance_exact"] == pytest.approx(N_VALUES**-P)
    L = S * T
    tokens, mask = episodes(tmp_path, "train", L)
    keys, values = tokens[:, 0 : 2 * P : 2], tokens[:, 1 : 2 * P : 2]  # (n, P) each
    q_keys, q_values = tokens[:, L - 2 * P :: 2], tokens[:, L - 2 * P + 1 :: 2]  # (n, P) each
    assert ((keys >= KEY0) & (keys < KEY0 + N_KEYS)).all() and ((values >= VALUE0) & (values < VALUE0 + N_VALUES)).all()
    assert all(len(set(row)) == P for row in keys.tolist()), "distinct keys"
    assert (np.sort(q_keys, axis=1) == np.sort(keys, axis=1)).all(), "the queries ask for the same keys"
    # each query's value is the one its key was paired with: find the key's pair slot
    slot = np.argmax(q_keys[:, :, None] == keys[:, None, :], axis=2)  # (n, P)
    assert (q_values == np.take_along_axis(values, slot, axis=1)).all()
    answers = np.zeros(L, dtype=bool)
    answers[L - 2 * P + 1 :: 2] = True
    assert (mask == answers).all(), "mask 1 exactly at the query values"
    middle = tokens[:, 2 * P : L - 2 * P]
    assert ((middle >= FILLER0) & (middle < KEY0)).all(), "fillers everywhere else"
    if S > 1:  # the last pair token lies segments before the first query token
        assert (2 * P - 1) // T < (L - 2 * P) // T
        assert (L - 2 * P) // T == S - -(-2 * P // T), "the queries fill the last ceil(2P / T) segments"
    if P > 1:  # a fresh order, so position alone cannot give the answer: same order in about 1 of P! episodes
        assert (q_keys == keys).all(axis=1).mean() < 0.25


def test_mqar_by_hand() -> None:
    """2 segments of 4 tokens and 2 pairs leave no room for fillers: every episode is "ka va kb vb | ka va kb vb" or
    "ka va kb vb | kb vb ka va", answers at positions 5 and 7, and both orders occur."""
    tokens, mask = load_prepare("mqar").generate(np.random.default_rng(0), 50, n_segments=2, block_size=4, n_pairs=2)
    assert (mask == [0, 0, 0, 0, 0, 1, 0, 1]).all()
    swapped = []
    for ka, va, kb, vb, *queries in tokens.tolist():
        assert is_key(ka) and is_key(kb) and ka != kb and is_value(va) and is_value(vb)
        assert queries in ([ka, va, kb, vb], [kb, vb, ka, va])
        swapped.append(queries[0] == kb)
    assert any(swapped) and not all(swapped)


def test_episode_batch_contract(tmp_path: Path) -> None:
    """x is the episode, y the episode shifted by one; only answers count; the last episode's final target pads."""
    meta = prepare("copy", tmp_path)
    L = meta["episode_len"]
    tokens = np.memmap(tmp_path / "val.bin", dtype=np.uint16, mode="r")
    mask = np.memmap(tmp_path / "val_mask.bin", dtype=np.uint8, mode="r")
    eps, m = episodes(tmp_path, "val", L)
    x, y, y_mask = episode_batch(tokens, mask, np.array([2, 9]), L)  # 9 is the last of 10 episodes
    assert x.shape == y.shape == y_mask.shape == (2, L)
    assert (x == eps[[2, 9]]).all()
    assert (y[:, :-1] == eps[[2, 9], 1:]).all() and y[0, -1] == eps[3, 0] and y[1, -1] == 0
    assert (y_mask[:, :-1] == m[[2, 9], 1:]).all() and not y_mask[:, -1].any()
    assert y_mask.sum() == 2 * meta["answer_len"]
    # the scored targets are exactly the answers the oracle names, each predicted from the tokens before it
    for row, e in zip(range(2), (2, 9), strict=True):
        answers = oracle_copy(eps[e].tolist(), meta["block_size"], meta)
        assert {i + 1: int(y[row, i]) for i in np.flatnonzero(y_mask[row])} == answers


BAD_ARGS = [
    ("recall", ["--n_segments", "0"], "--n_segments"),
    ("recall", ["--block_size", "7", "--max_pairs", "4"], "--block_size 7"),
    ("recall", ["--n_segments", "1", "--block_size", "10"], "--block_size 10"),
    ("recall", ["--min_pairs", "3", "--max_pairs", "2"], "--min_pairs 3"),
    ("recall", ["--max_pairs", "17", "--block_size", "64"], "--max_pairs 17"),
    ("copy", ["--copy_len", "16"], "--copy_len 16"),
    ("copy", ["--train_episodes", "many"], "--train_episodes"),
    ("needle", ["--n_segments", "1", "--block_size", "4"], "--block_size 4"),
    ("needle", ["--seed", "-1"], "--seed"),
    ("needle", ["--copy_len", "3"], "--copy_len"),
    ("mqar", ["--n_pairs", "17", "--n_segments", "8", "--block_size", "64"], "--n_pairs 17"),
    ("mqar", ["--n_pairs", "0"], "--n_pairs"),
    ("mqar", ["--n_pairs", "9", "--n_segments", "3"], "--n_segments 3"),  # pairs fill 2 segments, queries 2 more
    ("mqar", ["--n_pairs", "3", "--n_segments", "2", "--block_size", "5"], "need >= 4"),
    ("mqar", ["--n_segments", "1", "--block_size", "12"], "--block_size 12"),  # 4 pairs and their queries: 16
    ("mqar", ["--train_min_pairs", "5"], "--train_min_pairs 5 must be <= --n_pairs 4"),
    ("mqar", ["--n_queries", "6"], "--n_queries 6 needs --queries drawn"),
    ("mqar", ["--queries", "drawn", "--n_queries", "6", "--n_segments", "1", "--block_size", "16"], "need >= 20"),
    ("mqar", ["--queries", "drawn", "--n_queries", "9", "--n_segments", "2", "--block_size", "16"], "need >= 3"),
    ("mqar", ["--queries", "random"], "--queries"),
    ("spread", ["--n_segments", "18", "--block_size", "64"], "at most 16 distinct keys"),
    ("spread", ["--n_segments", "8", "--block_size", "12"], "--block_size 12"),  # 7 queries need 14 tokens
    ("spread", ["--n_segments", "3", "--n_keys", "3"], "need 1 or >= 4"),
    ("spread", ["--n_segments", "1", "--n_keys", "3", "--context_pairs", "2"], "--context_pairs 2 is too few"),
    ("spread", ["--n_keys", "-1"], "--n_keys"),
    ("spread", ["--n_queries", "3"], "--n_queries 3 needs --queries drawn"),
    ("spread", ["--queries", "drawn", "--n_queries", "17", "--block_size", "32"], "need >= 34"),
    ("spread", ["--queries", "drawn", "--n_queries", "4", "--n_segments", "1", "--block_size", "8"], "need >= 10"),
    ("spread", ["--context_pairs", "4", "--n_segments", "1", "--block_size", "12"], "need >= 16"),
    ("spread", ["--context_pairs", "0"], "--context_pairs"),
]


@pytest.mark.parametrize(("task", "args", "named"), BAD_ARGS)
def test_bad_argument(
    task: str, args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    assert load_prepare(task).main(["--out_dir", str(out_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err, err
    assert not out_dir.exists()


def test_mqar_trains_on_fewer_pairs_too(tmp_path: Path) -> None:
    """--train_min_pairs 1: training episodes hold 1 to 4 pairs (every count appears), each laid out as an episode of
    its own count (the oracle with that P finds every answer); val keeps 4 pairs in every episode."""
    meta = prepare("mqar", tmp_path, "--n_pairs", "4", "--block_size", "16", "--n_segments", "4",
                   "--train_min_pairs", "1", "--train_episodes", "200")  # fmt: skip
    assert (meta["n_pairs"], meta["train_min_pairs"], meta["answer_len"]) == (4, 1, 4)
    tokens, mask = episodes(tmp_path, "train", meta["episode_len"])
    counts = mask.sum(axis=1)
    assert set(counts.tolist()) == {1, 2, 3, 4}
    for ep, m, p in zip(tokens.tolist(), mask, counts, strict=True):
        answers = oracle_mqar(ep, 16, {"n_pairs": int(p)})
        assert sorted(answers) == np.flatnonzero(m).tolist() and all(ep[i] == v for i, v in answers.items())
    _, val_mask = episodes(tmp_path, "val", meta["episode_len"])
    assert (val_mask.sum(axis=1) == 4).all()


def test_mqar_drawn_queries_leave_nothing_to_elimination(tmp_path: Path) -> None:
    """--queries drawn: P questions drawn with replacement from the pairs' keys (repeats occur, every answer is its
    key's value, as the oracle checks). Shuffled questions let the last answer follow from the others (the pair value
    not yet answered) in every episode; drawn ones do not. The default is shuffled, episode for episode."""
    args = ("--n_pairs", "4", "--block_size", "16", "--n_segments", "4", "--train_episodes", "300")
    drawn = prepare("mqar", tmp_path / "drawn", *args, "--queries", "drawn")
    prepare("mqar", tmp_path / "shuffled", *args, "--queries", "shuffled")
    prepare("mqar", tmp_path / "default", *args)
    assert drawn["queries"] == "drawn"
    L = drawn["episode_len"]
    default, _ = episodes(tmp_path / "default", "train", L)
    by_kind = {kind: episodes(tmp_path / kind, "train", L)[0] for kind in ("drawn", "shuffled")}
    assert (by_kind["shuffled"] == default).all()
    for ep in by_kind["drawn"].tolist():
        oracle_mqar(ep, 16, drawn)
    repeats = [len(set(ep[L - 8 :: 2])) < 4 for ep in by_kind["drawn"].tolist()]
    assert 0.8 < np.mean(repeats) < 1.0  # all four distinct in 4!/4^4 = 9% of episodes
    # the answer to a key asked again is in context: marked REPEAT (2), shuffled questions have none
    marks = episodes(tmp_path / "drawn", "train", L)[1][:, L - 7 :: 2]
    assert marks.tolist() == [repeat_marks(ep[L - 8 :: 2]) for ep in by_kind["drawn"].tolist()]
    assert (episodes(tmp_path / "shuffled", "train", L)[1][:, L - 7 :: 2] == 1).all()

    def last_by_elimination(ep: list[int]) -> bool:
        left = sorted(ep[1:8:2])  # the pairs' values
        for v in ep[L - 7 : L - 2 : 2]:  # the first three answers
            if v not in left:
                return False
            left.remove(v)
        return left == [ep[L - 1]]

    assert all(last_by_elimination(ep) for ep in by_kind["shuffled"].tolist())
    assert np.mean([last_by_elimination(ep) for ep in by_kind["drawn"].tolist()]) < 0.2


@pytest.mark.parametrize(("n_segments", "block_size", "n_queries"), [(1, 32, 12), (3, 8, 6), (2, 16, 3)])
def test_mqar_more_queries_than_pairs(n_segments: int, block_size: int, n_queries: int, tmp_path: Path) -> None:
    """--queries drawn --n_queries Q: Q questions in the last 2Q tokens (their own segments, apart from the pairs'
    unless there is one segment), each answered by its key's value, and Q answers an episode."""
    S, T, Q = n_segments, block_size, n_queries
    meta = prepare("mqar", tmp_path, "--n_pairs", "4", "--n_segments", str(S), "--block_size", str(T),
                   "--queries", "drawn", "--n_queries", str(Q))  # fmt: skip
    assert (meta["answer_len"], meta["n_queries"], meta["queries"]) == (Q, Q, "drawn")
    L = S * T
    tokens, mask = episodes(tmp_path, "val", L)
    assert ((mask != 0).sum(axis=1) == Q).all() and mask[:, L - 2 * Q + 1 :: 2].all()
    for ep, m in zip(tokens.tolist(), mask, strict=True):
        pairs = dict(zip(ep[0:8:2], ep[1:8:2], strict=True))
        asked = list(zip(ep[L - 2 * Q :: 2], ep[L - 2 * Q + 1 :: 2], strict=True))
        assert all(pairs[k] == v for k, v in asked), "each answer is its key's value"
        assert m[L - 2 * Q + 1 :: 2].tolist() == repeat_marks(ep[L - 2 * Q :: 2])
        assert not any(is_key(t) or is_value(t) for t in ep[8 : L - 2 * Q]), "only fillers between"
    if S > 1:
        assert 7 // T < (L - 2 * Q) // T, "pairs and questions in different segments"


def repeat_marks(keys: list[int]) -> list[int]:
    """The mask of the answers to questions asking these keys in this order, by hand: 1 the first time a key is
    asked, 2 (REPEAT) when it was asked before and its answer is in context."""
    return [REPEAT if k in keys[:j] else 1 for j, k in enumerate(keys)]


def oracle_spread(ep: list[int], T: int, n_keys: int, drawn: int = 0) -> dict[int, int]:
    """One pair in each segment but the last (with one segment, one pair before the queries); the last segment ends
    with every key written, once each (or with `drawn` keys drawn from them), each followed by the value written
    for it last."""
    L = len(ep)
    S = L // T
    pairs = max(1, S - 1)
    latest: dict[int, int] = {}
    for s in range(pairs):
        seg = ep[s * T : (s + 1) * T] if S > 1 else ep[: T - 2 * (drawn or 1)]
        at = [i for i, t in enumerate(seg) if is_key(t)]
        assert len(at) == 1 and is_value(seg[at[0] + 1]), "one pair in the segment"
        assert sum(is_value(t) for t in seg) == 1
        latest[seg[at[0]]] = seg[at[0] + 1]
    assert (n_keys or pairs) == len(latest), "remember: every pair a new key; rewrite: the K keys, each at least once"
    Q = drawn or len(latest)
    queried = ep[L - 2 * Q :: 2]
    if drawn:
        assert set(queried) <= set(latest), "only keys of the episode are asked for"
    else:
        assert sorted(queried) == sorted(latest), "every key asked for once"
    body = ep[pairs * T : L - 2 * Q] if S > 1 else []
    assert not any(is_key(t) or is_value(t) for t in body), "only fillers before the queries in the last segment"
    return {L - 2 * Q + 2 * j + 1: latest[k] for j, k in enumerate(queried)}


@pytest.mark.parametrize(("n_segments", "n_keys"), [(1, 0), (2, 0), (4, 0), (17, 0), (4, 2), (9, 3), (3, 2)])
def test_spread_layout(n_segments: int, n_keys: int, tmp_path: Path) -> None:
    """Every episode read as a person would (oracle_spread) has its answers where the mask says; the number of
    facts grows with the episode (remember) or stays K (rewrite), and a rewritten key is asked for its last value."""
    T = 32
    meta = prepare("spread", tmp_path, "--n_segments", str(n_segments), "--block_size", str(T), "--n_keys", str(n_keys))
    P, Q = max(1, n_segments - 1), n_keys or max(1, n_segments - 1)
    assert (meta["n_pairs"], meta["n_keys"], meta["answer_len"]) == (P, n_keys, Q)
    tokens, mask = episodes(tmp_path, "train", meta["episode_len"])
    assert (mask.sum(axis=1) == Q).all() and not mask[:, 0].any()
    rewritten = 0
    for ep, m in zip(tokens.tolist(), mask, strict=True):
        answers = oracle_spread(ep, T, n_keys)
        assert sorted(answers) == np.flatnonzero(m).tolist()
        assert all(ep[i] == v for i, v in answers.items())
        written = ep[: P * T] if n_segments > 1 else ep[: T - 2]  # the pairs, without the queries
        rewritten += sum(1 for k in set(written) if is_key(k) and written.count(k) > 1)
    assert (rewritten > 0) == (P > Q)  # rewrite: keys do come back


@pytest.mark.parametrize(("n_segments", "n_keys"), [(1, 0), (4, 0), (9, 0), (9, 3)])
def test_spread_drawn_queries(n_segments: int, n_keys: int, tmp_path: Path) -> None:
    """--queries drawn --n_queries 6: six questions at every length, drawn with replacement from the episode's keys
    (repeats occur, each answered with its latest value); the default stays what it was, episode for episode."""
    T, A = 32, 6
    base = ["--n_segments", str(n_segments), "--block_size", str(T), "--n_keys", str(n_keys)]
    meta = prepare("spread", tmp_path / "drawn", *base, "--queries", "drawn", "--n_queries", str(A))
    assert (meta["answer_len"], meta["queries"], meta["n_queries"]) == (A, "drawn", A)
    tokens, mask = episodes(tmp_path / "drawn", "train", meta["episode_len"])
    assert ((mask != 0).sum(axis=1) == A).all() and meta["repeat_mark"] == REPEAT
    repeats = 0
    for ep, m in zip(tokens.tolist(), mask, strict=True):
        answers = oracle_spread(ep, T, n_keys, drawn=A)
        assert sorted(answers) == np.flatnonzero(m).tolist() and all(ep[i] == v for i, v in answers.items())
        assert m[-2 * A + 1 :: 2].tolist() == repeat_marks(ep[-2 * A :: 2]), "a key asked again is marked"
        repeats += len(set(ep[-2 * A :: 2])) < A
    assert repeats > 0
    shuffled = prepare("spread", tmp_path / "shuffled", *base)
    assert "queries" not in shuffled  # folders prepared before the option stay current
    again = prepare("spread", tmp_path / "again", *base, "--queries", "shuffled")
    for split in ("train", "val"):
        for name in (f"{split}.bin", f"{split}_mask.bin"):
            assert (tmp_path / "shuffled" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert again == shuffled


def test_spread_one_segment_with_several_pairs(tmp_path: Path) -> None:
    """--context_pairs 3: a one-segment episode holds 3 pairs of distinct keys in separate places, then the drawn
    questions, each answered with its key's value; longer episodes keep one pair a segment."""
    T, A = 32, 6
    args = ["--block_size", str(T), "--queries", "drawn", "--n_queries", str(A), "--context_pairs", "3"]
    meta = prepare("spread", tmp_path / "one", "--n_segments", "1", *args)
    assert (meta["n_pairs"], meta["answer_len"], meta["context_pairs"]) == (3, A, 3)
    tokens, mask = episodes(tmp_path / "one", "train", meta["episode_len"])
    for ep, m in zip(tokens.tolist(), mask, strict=True):
        body = ep[: T - 2 * A]
        at = [i for i, t in enumerate(body) if is_key(t)]
        assert len(at) == 3 and all(is_value(body[i + 1]) for i in at) and sum(map(is_value, body)) == 3
        pairs = {body[i]: body[i + 1] for i in at}
        assert len(pairs) == 3, "distinct keys"
        asked = ep[T - 2 * A :: 2]
        assert all(ep[T - 2 * A + 2 * j + 1] == pairs[k] for j, k in enumerate(asked))
        assert np.flatnonzero(m).tolist() == list(range(T - 2 * A + 1, T, 2))
    longer = prepare("spread", tmp_path / "four", "--n_segments", "4", *args)
    assert longer["n_pairs"] == 3  # one a segment, as without the option
    tokens, _ = episodes(tmp_path / "four", "train", longer["episode_len"])
    for ep in tokens.tolist()[:50]:
        oracle_spread(ep, T, 0, drawn=A)


def test_rewrite_one_segment(tmp_path: Path) -> None:
    """rewrite<K> in one segment: --context_pairs 5 with K = 2 writes the 2 keys, then 3 rewrites of them, in order;
    every question is answered with the value its key was given last, and keys do come back."""
    T, A, K = 32, 8, 2
    args = ["--block_size", str(T), "--queries", "drawn", "--n_queries", str(A), "--n_keys", str(K)]
    meta = prepare("spread", tmp_path, "--n_segments", "1", "--context_pairs", "5", *args)
    assert (meta["n_pairs"], meta["n_keys"], meta["answer_len"]) == (5, K, A)
    tokens, mask = episodes(tmp_path, "train", meta["episode_len"])
    came_back = 0
    for ep, m in zip(tokens.tolist(), mask, strict=True):
        body = ep[: T - 2 * A]
        at = [i for i, t in enumerate(body) if is_key(t)]
        assert len(at) == 5 and all(is_value(body[i + 1]) for i in at) and sum(map(is_value, body)) == 5
        written = [body[i] for i in at]
        assert len(set(written[:K])) == K and set(written) == set(written[:K]), "the K keys first, then only them"
        latest = {body[i]: body[i + 1] for i in at}  # later pairs overwrite earlier ones
        asked = ep[T - 2 * A :: 2]
        assert all(ep[T - 2 * A + 2 * j + 1] == latest[k] for j, k in enumerate(asked))
        assert np.flatnonzero(m).tolist() == list(range(T - 2 * A + 1, T, 2))
        first = {body[i]: body[i + 1] for i in reversed(at)}
        came_back += first != latest  # a rewrite with a new value changed an answer
    assert came_back > len(tokens) // 2


def test_spread_by_hand() -> None:
    """A hand-built rewrite episode: K = 2 keys over 4 pair segments; the answers are the values written last."""
    prep = load_prepare("spread")

    class Fixed:  # the draws of one episode, in the order generate makes them
        def __init__(self) -> None:
            self.draws = [
                np.full((1, 20), FILLER0, dtype=np.int64),  # fillers: all f0
                np.array([[0.5, 0.1] + [0.9] * 14]),  # distinct_keys: argsort -> k1, k0 first
                np.array([[0, 1]]),  # the two later pairs rewrite key 0 (k1), then key 1 (k0)
                np.array([[VALUE0 + 3, VALUE0 + 4, VALUE0 + 5, VALUE0 + 6]]),  # values
                np.array([[0, 1, 0, 1]]),  # offsets within each 4-token segment
                np.array([[0.2, 0.1]]),  # query order: key 1 (k0), then key 0 (k1)
            ]

        def integers(self, *args: object, **kwargs: object) -> np.ndarray:
            return self.draws.pop(0)

        random = integers

    f, k0, k1 = FILLER0, KEY0, KEY0 + 1
    v = [VALUE0 + i for i in range(16)]
    tokens, mask = prep.generate(Fixed(), 1, n_segments=5, block_size=4, n_keys=2)
    assert tokens.shape == (1, 20)
    assert tokens[0].tolist() == [
        k1, v[3], f, f,  # segment 1: k1 = v3
        f, k0, v[4], f,  # segment 2: k0 = v4
        k1, v[5], f, f,  # segment 3: k1 = v5, rewritten
        f, k0, v[6], f,  # segment 4: k0 = v6, rewritten
        k0, v[6], k1, v[5],  # the queries: k0 then k1, with their last values
    ]  # fmt: skip
    assert mask[0].tolist() == [0] * 17 + [1, 0, 1]


def test_synthetic_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = get_tokenizer(prepare("recall", tmp_path))
    ids = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)[:100].tolist()
    text = tok.decode(ids)
    assert tok.encode(text) == ids
    assert tok.decode(tok.encode("k3 v7 <q>  f12\n")) == "k3 v7 <q> f12"
    with pytest.raises(ValueError, match="'x9' is not in the synthetic vocabulary"):
        tok.encode("k3 x9")
    with pytest.raises(ValueError, match="synthetic tokenizer"):
        get_tokenizer({"tokenizer": "synthetic", "itos": ["a b"]})


def test_prepare_as_a_user_would(tmp_path: Path) -> None:
    """A subprocess, the way data/README.md says to run it; a bad argument is one line and exit 2."""
    script = str(ROOT / "data" / "needle" / "prepare.py")
    done = subprocess.run(
        [sys.executable, script, "--out_dir", str(tmp_path), "--n_segments", "16", "--val_episodes", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "needle, 20,000 train / 3 val episodes of 16 x 16 tokens" in done.stdout
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (tmp_path / "val_mask.bin").stat().st_size == 3 * meta["episode_len"] == 3 * 256
    bad = subprocess.run([sys.executable, script, "--block_size", "x"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--block_size" in bad.stderr
