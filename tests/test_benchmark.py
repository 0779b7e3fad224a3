"""benchmark.py: variant names map to the right train.py settings, bad settings fail with one line, the table's
statistics and gap-closed figures match hand-computed values, and a grid runs end to end (records, table, plot) and
is reused, not rerun, when asked again: the recall grid in which four experts learn what no memory can."""

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

import benchmark
import report
from benchmark import GridConfig, train_args, variant_settings
from data.common import REPEAT
from report import format_tables, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_variant_settings() -> None:
    assert variant_settings("off", text=False) == {"gmm_experts": 0}
    assert variant_settings("k1", text=False) == {"gmm_experts": 1, "gmm_write_input": "read"}
    assert variant_settings("k4-projected-prob-read-learnedwrite-bptt2-T0.5", text=False) == {
        "gmm_experts": 4,
        "gmm_write_input": "learned",
        "gmm_candidate": "projected",
        "gmm_write_scale": "prob",
        "gmm_routing": "read",
        "bptt_segments": 2,
        "gmm_temperature": 0.5,
    }
    # the mixture's structure, the read slots, and the reliability knobs
    assert variant_settings("k4-concat-top2-shared", text=False) == {
        "gmm_experts": 4,
        "gmm_write_input": "read",
        "gmm_read": "concat",
        "gmm_top_k": 2,
        "gmm_shared_expert": True,
    }
    assert variant_settings("k1-slots16", text=False)["gmm_slots"] == 16
    knobs = variant_settings("k4-rs0.03-is0.02-gb2-lr0.001", text=False)
    assert knobs["gmm_read_scale"] == 0.03 and knobs["gmm_init_scale"] == 0.02 and knobs["gmm_gate_bias"] == 2.0
    assert knobs["learning_rate"] == 0.001 and knobs["min_lr"] == pytest.approx(0.0001)
    assert variant_settings("full", text=True) == {"gmm_experts": 0, "full_attention": True}
    assert variant_settings("full-rope", text=True) == {"gmm_experts": 0, "full_attention": True, "pos_emb": "rope"}
    assert variant_settings("off-rope-lr0.002", text=True)["pos_emb"] == "rope"
    assert variant_settings("k1-nocarry", text=True)["gmm_carry"] is False
    assert variant_settings("k4-lb0", text=True)["gmm_load_balance"] == 0.0
    assert variant_settings("k1-decaystates", text=True)["decay_memory_states"] is True
    assert variant_settings("k1-rope-noinitread", text=True)["gmm_read_initial"] is False
    assert variant_settings("off-shift", text=False) == {"gmm_experts": 0, "token_shift": True}
    assert variant_settings("k1-shift", text=False)["token_shift"] is True
    assert variant_settings("xl", text=True) == {"gmm_experts": 0, "pos_emb": "rope", "xl_attention": True}
    order = ["full-rope", "xl", "k4-top2-shared", "off-rope", "k1-rope", "off"]
    assert sorted(order, key=report.variant_order) == [
        "off",
        "off-rope",
        "k1-rope",
        "k4-top2-shared",
        "xl",
        "full-rope",
    ]
    args = benchmark.train_args("pycode_char", "full-rope-warmup", 1, GridConfig(tasks="pycode_char"), "/tmp/r")
    assert "--window_curriculum=[64,128,256]" in args and "--block_size=512" in args  # 8 segments of 64
    # memory's warm-up: sequences of 1, 2, 4 segments, then 8, at the same tokens a step
    args = benchmark.train_args("pycode_char", "k1-rope-warmup", 1, GridConfig(tasks="pycode_char"), "/tmp/r")
    assert "--segment_curriculum=[1,2,4,8]" in args and "--curriculum_same_tokens=True" in args
    assert not any(a.startswith("--window_curriculum") for a in args)
    # off's warm-up is the control that draws the same batches as memory's
    args = benchmark.train_args("pycode_char", "off-rope-warmup", 1, GridConfig(tasks="pycode_char"), "/tmp/r")
    assert "--segment_curriculum=[1,2,4,8]" in args and "--gmm_experts=0" in args
    args = benchmark.train_args("pycode_char", "xl-warmup", 1, GridConfig(tasks="pycode_char"), "/tmp/r")
    assert "--segment_curriculum=[1,2,4,8]" in args and "--xl_attention=True" in args
    with pytest.raises(ValueError, match="'warmup' is a text task's sequence-length warm-up"):
        variant_settings("k1-warmup", text=False)
    bad_names = [("k9", "k1..k8"), ("k4-fast", "unknown ablation 'fast'"), ("off-prob", "needs memory"),
                 ("", "must be off"), ("off-nocarry", "needs memory"),
                 ("k4-top", "unknown ablation 'top'"), ("k4-slots1.5", "'slots1.5' needs a whole number")]  # fmt: skip
    for bad, words in bad_names:
        with pytest.raises(ValueError, match=words):
            variant_settings(bad, text=False)
    with pytest.raises(ValueError, match="full-attention bound of a text task"):
        variant_settings("full", text=False)


def test_train_args() -> None:
    cfg = GridConfig(max_iters=100, segment_curriculum=[2, 4], n_segments=4)
    argv = train_args("recall", "k4-bptt2", 7, cfg, "runs/x")
    assert "--segment_curriculum=[2,4]" in argv and "--gmm_experts=4" in argv and "--bptt_segments=2" in argv
    assert "--seed=7" in argv and "--lr_decay_iters=100" in argv and "--gradient_accumulation_steps=1" in argv
    # the GELU form reaches train.py only when it is not the default, so records made before the setting still match
    assert not any(a.startswith("--gelu") for a in argv)
    assert "--gelu=exact" in train_args("recall", "k4-bptt2", 7, replace(cfg, gelu="exact"), "runs/x")
    with pytest.raises(ValueError, match="gelu = 'erf' must be one of tanh, exact"):
        GridConfig(gelu="erf")
    # the text task trains the quick-start config; 'full' puts its 4 x 64 tokens in one segment without memory
    argv = train_args("shakespeare_char", "full", 1, cfg, "runs/y")
    assert argv[0] == "config/train_gmm_shakespeare.py"
    assert "--block_size=256" in argv and "--n_segments=1" in argv and "--gmm_experts=0" in argv
    # pycode_char trains its own config: 8 segments of 64, so full attention sees 512 tokens at once
    argv = train_args("pycode_char", "full", 1, cfg, "runs/z")
    assert argv[0] == "config/train_gmm_pycode.py"
    assert "--block_size=512" in argv and "--n_segments=1" in argv and "--gmm_experts=0" in argv
    other = GridConfig(text_config="config/train_gmm_shakespeare.py")  # one config for every text task
    argv = train_args("pycode_char", "k4-top2-shared", 1, other, "runs/z")
    assert argv[0] == "config/train_gmm_shakespeare.py" and "--gmm_top_k=2" in argv and "--block_size=64" not in argv


def test_mqar_tasks_get_their_own_data_and_lengths() -> None:
    """mqar<P> trains on dataset mqar with P pairs, each P in its own data folder; curriculum stages and evaluation
    lengths too short to hold the pairs and the queries in different segments are raised or dropped."""
    cfg = GridConfig(tasks="mqar16,mqar4", block_size=16, segment_curriculum=[2, 3, 4], eval_segments=[2, 4, 8, 16],
                     data_dir="d")  # fmt: skip
    argv = train_args("mqar16", "k4-top1", 1, cfg, "runs/z")
    assert "--dataset=mqar" in argv and "--data_dir=d/p16" in argv
    assert "--segment_curriculum=[4,4,4]" in argv and "--n_segments=4" in argv  # 32 pair tokens: 2 segments each way
    assert benchmark.task_lengths("mqar16", cfg) == ([4, 4, 4], [4, 8, 16])
    assert benchmark.task_lengths("mqar4", cfg) == ([2, 3, 4], [2, 4, 8, 16])
    assert benchmark.task_prepare_args("mqar4", cfg) == ["--n_pairs", "4", "--train_min_pairs", "0", "--queries",
                                                         "shuffled", "--n_queries", "0"]  # fmt: skip
    assert benchmark.task_prepare_args("mqar4", replace(cfg, mqar_train_min_pairs=8, mqar_queries="drawn")) == [
        "--n_pairs",
        "4",
        "--train_min_pairs",
        "4",
        "--queries",
        "drawn",
        "--n_queries",
        "0",
    ]
    with pytest.raises(ValueError, match="mqar_queries = 'random' must be one of shuffled, drawn"):
        replace(cfg, mqar_queries="random")
    # 4 pairs and 4 queries fit in one segment of 16 (the no-gap control); 16 pairs need two segments each way
    assert benchmark.min_segments("mqar4", cfg) == 1 and benchmark.min_segments("mqar16", cfg) == 4
    # 4 pairs and 12 drawn questions: 32 tokens, two segments of 16 or more (8 pair tokens, then 24 question tokens)
    drawn = replace(cfg, mqar_queries="drawn", mqar_n_queries=12)
    assert (
        benchmark.min_segments("mqar4", drawn) == 3
        and benchmark.min_segments("mqar4", replace(drawn, block_size=32)) == 1
    )
    with pytest.raises(ValueError, match="mqar_n_queries = 12 must be >= 0, and > 0 only with mqar_queries=drawn"):
        replace(cfg, mqar_n_queries=12)
    assert report.is_synthetic("mqar4") and not report.is_synthetic("mqar") and not report.is_synthetic("mqar0")
    assert sorted(["shakespeare_char", "mqar16", "mqar4", "recall"], key=report.task_order) == [
        "recall", "mqar4", "mqar16", "shakespeare_char"]  # fmt: skip


def test_bad_settings_fail_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for arg, words in [
        ("--variants=off,k9", "k1..k8"),
        ("--variants=off,full", "add one to tasks"),
        ("--tasks=recall,sorting", "task 'sorting' must be one of"),
        ("--tasks=mqar", "mqar<P> (P pairs) or rewrite<K> (K keys)"),
        ("--tasks=mqar17", "mqar<P> takes 1 <= P <= 16 pairs"),
        ("--seeds=[]", "at least one seed"),
        ("--eval_segments=[0,2]", "positive segment counts"),
        ("--threads=-1", "must be >= 0 (0 = chosen for the machine)"),
        ("--max_iter=3", "did you mean 'max_iters'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main([arg, f"--out_dir={tmp_path}"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (arg, err)
        assert err.count("\n") == 1 and words in err, (arg, err)
    with pytest.raises(SystemExit):
        benchmark.main(["--tasks=mqar16", "--eval_segments=2,3", f"--out_dir={tmp_path}"])
    assert "task 'mqar16' needs episodes of >= 4 segments of 16 tokens: add such a count" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
    # the command line a user types reaches the same check
    r = subprocess.run([sys.executable, "benchmark.py", "--variants=k0"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: variant 'k0' must be off, full, xl, or k1..k8")


def record(
    task: str, variant: str, seed: int, evals: dict[str, Any], curve: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    # a synthetic run's argv always names its slots (train_args): the read slots paired comparisons match on
    argv = ["--n_segments=4", "--block_size=16", "--segment_curriculum=[2,3,4]", "--max_iters=3000", "--gmm_slots=4"]
    return {"task": task, "variant": variant, "seed": seed, "params": 1000, "train_seconds": 1.0, "chance": 0.0625,
            "eval": evals, "settings": {"argv": argv}, "curve": curve or []}  # fmt: skip


def test_multi_token_answers_get_a_per_token_table() -> None:
    """copy: exact match of 4 tokens has chance (1/16)^4 and sits near 0 until the whole string is carried, so the
    per-token accuracy gets its own table, against its own chance."""
    recs = [
        {**record("copy", v, seed, {"4": {"acc_answer": exact, "acc_token": token}}), "chance_exact": 0.0625**4}
        for v, seed, exact, token in [("off", 1, 0.0, 0.06), ("k4", 1, 0.0, 0.4), ("k4", 2, 0.5, 0.8)]
    ]
    summary = summarize(recs)
    assert summary["copy"]["k4"]["acc_token"]["4"]["mean"] == pytest.approx(0.6)
    table = format_tables(summary)
    assert "### copy: answer accuracy, every answer token right" in table and "chance 1.53e-05" in table
    assert "### copy: answer-token accuracy (mean ± std over seeds; best seed in brackets), chance 0.0625" in table
    assert "| k4 | 0.001M | 0.250 ± 0.354 (0.50) | 0/2 |" in table
    assert "| k4 | 0.001M | 0.600 ± 0.283 (0.80) |" in table
    # a multi-token task has learned when its answer tokens are right, not when every episode is exact
    curve = [{"iter": 100, "val_acc_answer": 0.2, "val_acc_token": 0.7}, {"iter": 200, "val_acc_answer": 0.5,
             "val_acc_token": 0.93}]  # fmt: skip
    assert report.learned_at({**recs[0], "curve": curve}) == 200
    assert report.learned_at({**recs[0], "curve": curve, "chance_exact": 0.0625}) is None  # one answer token
    # drawn questions: learned when the first-asked keys are right, not the repeats, whose answers are in context
    first = [{**e, "val_acc_first": f} for e, f in zip(curve, [0.3, 0.6], strict=True)]
    scored = {**recs[0], "curve": first, "settings": {**recs[0]["settings"], "scored": "acc_first"}}
    assert report.learned_at(scored) is None and report.learned_at({**recs[0], "curve": first}) == 200
    assert report.learning_curve([scored])["mean"] == [0.3, 0.6]
    assert report.learning_curve([scored, {**recs[0], "curve": first}])["mean"] == [0.7, 0.93]  # mixed: all
    assert "answer-token accuracy by segments {4: 0.400} (" in benchmark.describe(recs[1], GridConfig())
    scored = {**recs[1], "settings": {"scored": "acc_first"}, "eval": {"4": {"acc_token": 0.4, "acc_first": 0.25}}}
    assert "{4: 0.400}; first-asked keys {4: 0.250} (" in benchmark.describe(scored, GridConfig())


def test_mqar_reports_the_pairs_each_variant_stores() -> None:
    """ARMT's capacity estimator: 0 pairs at chance, all of them at accuracy 1, linear between; an mqar grid's
    table.md gets it per variant and segment count."""
    assert report.stored_pairs(4, 16, 1.0) == 4 and report.stored_pairs(4, 16, 1 / 16) == 0
    assert report.stored_pairs(4, 16, 0.5) == pytest.approx(4 * 7 / 15)  # 1.87: about 2 of 4 pairs
    recs = [
        {**record("mqar4", "k1", seed, {"4": {"acc_answer": 0.0, "acc_token": a}}), "chance_exact": 0.0625**4}
        for seed, a in [(1, 1.0), (2, 0.5)]
    ]
    table = format_tables(summarize(recs))
    assert "### mqar4: pairs stored (ARMT's estimator from the per-value accuracy on every answer, 16 values" in table
    assert "| variant | 4 seg, of 4 |" in table
    assert "| k1 | 2.93 ± 1.51 (4.00) |" in table  # 4 and 1.87
    assert "against one bank" not in table  # nothing to compare with
    # a seed evaluated at fewer lengths (a record older than the grid's --eval_segments) limits its cell, not the table
    e = {"acc_answer": 0.0, "acc_token": 1.0}
    mixed = [
        {**record("mqar4", "k1", 1, {"4": e, "8": e, "16": e}), "chance_exact": 0.0625**4},
        {**record("mqar4", "k1", 2, {"4": e, "8": e}), "chance_exact": 0.0625**4},
        {**record("mqar4", "k4", 1, {"4": e, "8": e, "16": e}), "chance_exact": 0.0625**4},
    ]
    table = format_tables(summarize(mixed))
    assert "| variant | 4 seg, of 4 | 8 seg, of 4 | 16 seg, of 4 |" in table
    assert "| k1 | 4.00 ± 0.00 (4.00) | 4.00 ± 0.00 (4.00) | - |" in table
    # one seed in common: the difference and its sign, with no spread or test to pretend to
    assert "| k4 | k1 | +0.00 [0/1] (one seed) | +0.00 [0/1] (one seed) | - |" in table
    # the same numbers, per segment count and seed, are what pairs_stored.png draws
    assert report.stored_by_length("mqar4", summarize(recs)["mqar4"]["k1"], 16, "acc_token") == {
        "4": [4.0, pytest.approx(4 * 7 / 15)]}  # fmt: skip


def test_pairs_stored_count_first_asked_keys_where_the_records_have_them(tmp_path: Path) -> None:
    """Drawn questions ask some keys twice, and a repeat's answer is in context: with acc_first in every record of a
    task the pairs stored come from it, beside a table of it, and the paired comparison too; a task with a record
    that lacks it counts every cell from acc_token, never mixing the two."""

    def rec(variant: str, seed: int, token: float, first: float | None) -> dict[str, Any]:
        e = {"acc_answer": 0.0, "acc_token": token, **({"acc_first": first} if first is not None else {})}
        return {**record("mqar4", variant, seed, {"4": e}), "chance_exact": 0.0625**4}

    recs = [rec("k1", 1, 0.9, 0.5), rec("k1", 2, 0.9, 1.0), rec("k4", 1, 1.0, 1.0), rec("k4", 2, 1.0, 1.0)]
    summary = summarize(recs)
    assert summary["mqar4"]["k1"]["acc_first"]["4"]["values"] == [0.5, 1.0]
    assert report.capacity_key(summary["mqar4"]) == "acc_first"
    table = format_tables(summary)
    assert "### mqar4: per-value accuracy on first-asked keys" in table
    assert "| k1 | 0.001M | 0.750 ± 0.354 (1.00) |" in table
    assert "pairs stored (ARMT's estimator from the per-value accuracy on first-asked keys" in table
    assert "| k1 | 2.93 ± 1.51 (4.00) |" in table  # stored_pairs of 0.5 and 1.0: 1.87 and 4
    # k4 minus k1 by seed: 4 - 1.87 = 2.13 and 0
    assert "| k4 | k1 | +1.07 ± 1.51 [1/2], p 0.5 / 1 |" in table
    paths = report.plot(summary, str(tmp_path))  # accuracy against segments drawn from acc_first too
    assert len(paths) == 3 and all(os.path.getsize(p) > 10_000 for p in paths)
    older = summarize([*recs, rec("k4", 3, 1.0, None)])
    assert "acc_first" not in older["mqar4"]["k4"] and report.capacity_key(older["mqar4"]) == "acc_token"
    table = format_tables(older)
    assert "first-asked" not in table and "per-value accuracy on every answer" in table
    assert "| k1 | 3.57 ± 0.00 (3.57) |" in table  # acc_token 0.9 on both seeds


def test_tasks_with_pairs_get_a_plot_of_the_pairs_stored(tmp_path: Path) -> None:
    """pairs_stored.png: one panel per task with pairs (mqar, spread), none for a task without (recall)."""
    recs = [
        {
            **record(task, v, seed, {"4": {"acc_answer": a, "acc_token": a}, "8": {"acc_answer": a, "acc_token": a}}),
            "chance_exact": 0.0625**4,
        }  # fmt: skip
        for task in ("mqar4", "spread", "recall")
        for v, seed, a in [("k1", 1, 0.9), ("k1", 2, 0.7), ("k4", 1, 0.5)]
    ]
    summary = summarize(recs)
    assert report.stored_by_length("spread", summary["spread"]["k4"], 16, "acc_token") == {
        "4": [pytest.approx(3 * 7 / 15)],
        "8": [pytest.approx(7 * 7 / 15)],
    }  # fmt: skip: 3 and 7 pairs asked
    paths = report.plot(summary, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        "accuracy_vs_segments.png", "accuracy_vs_episodes.png", "pairs_stored.png"]  # fmt: skip
    assert os.path.getsize(tmp_path / "pairs_stored.png") > 10_000
    (tmp_path / "recall").mkdir()
    without = report.plot({"recall": summary["recall"]}, str(tmp_path / "recall"))
    assert "pairs_stored.png" not in map(os.path.basename, without)


def test_mixtures_are_compared_with_one_bank_seed_by_seed() -> None:
    """The capacity question's test: each memory variant's stored pairs minus those of k1 with the same whole-model
    flags, paired by seed, with a paired t-test and an exact sign-flip test checked against values by hand."""
    # Student's t, two-sided, at the 0.05 critical values of 1, 4 and 9 degrees of freedom: diffs with that t
    for df, t in [(1, 12.706), (4, 2.776), (9, 2.262)]:
        n = df + 1
        spread = np.array([(-1.0) ** i for i in range(n)]) - (0.0 if n % 2 == 0 else 1 / n)
        diffs = spread / spread.std(ddof=1) + t / np.sqrt(n)
        assert report.paired_t_p(list(diffs)) == pytest.approx(0.05, abs=2e-4)
    assert report.paired_t_p([0.3]) == 1.0 and report.paired_t_p([0.2, 0.2]) == 0.0
    # sign flips: 5 positive differences leave only the all-positive and all-negative patterns: 2/32
    assert report.sign_flip_p([1, 2, 3, 4, 5]) == 0.0625
    assert report.sign_flip_p([1, -1]) == 1.0 and report.sign_flip_p([1, 2, -0.5]) == 0.5  # |mean| >= 2/3:
    # (+,+,-), (-,-,+), (+,+,+), (-,-,-)
    assert report.one_bank("k4-top2-shared-shift", {"k1-shift": 0, "k1": 0}) == "k1-shift"
    assert report.one_bank("k1-shift-slots16", {"k1-shift": 0}) == "k1-shift"
    assert report.one_bank("k1-shift", {"k1-shift": 0}) is None and report.one_bank("off", {"k1": 0}) is None
    assert report.one_bank("k4-rope", {"k1": 0}) is None  # no one bank of the same positions
    accs = {"k1-shift": [1.0, 0.5, 0.75], "k4-shift": [1.0, 0.75, 1.0]}
    recs = [
        {**record("mqar4", v, seed, {"4": {"acc_answer": 0.0, "acc_token": a}}), "chance_exact": 0.0625**4}
        for v, values in accs.items()
        for seed, a in zip([1, 2, 3], values, strict=True)
    ]
    table = format_tables(summarize(recs))
    assert "### mqar4: pairs stored against one bank, paired by seed" in table
    # differences 0, 4 * 0.25 * 16/15 = 1.07 and 1.07: mean 0.71, std 0.62, 2 of 3 above; t = 2, df 2: p 0.18
    assert "| k4-shift | k1-shift | +0.71 ± 0.62 [2/3], p 0.18 / 0.5 |" in table


def test_concat_is_also_compared_with_one_bank_of_as_many_read_slots() -> None:
    """k4-concat reads 4 banks of M slots: beside k1 (M slots) it is paired with the one bank of 4M slots, the
    comparison at equal read slots; variants reading M slots, and grids without that bank, get no second row."""

    def setup(experts: int, slots: int, concat: bool = False) -> dict[str, Any]:
        return {"setup": {"gmm_experts": str(experts), "gmm_slots": str(slots), **({"gmm_read": "concat"} if concat
                else {})}}  # fmt: skip

    cells = {"k1-shift": setup(1, 4), "k1-shift-slots16": setup(1, 16), "k4-shift": setup(4, 4),
             "k4-shift-concat": setup(4, 4, concat=True), "k1-slots16": setup(1, 16)}  # fmt: skip
    assert [report.read_slots(c) for c in cells.values()] == [4, 16, 4, 16, 16]
    assert report.same_read_slots_bank("k4-shift-concat", cells) == "k1-shift-slots16"  # not k1-slots16
    assert report.same_read_slots_bank("k4-shift", cells) is None
    assert report.same_read_slots_bank("k1-shift-slots16", cells) is None  # its one bank is k1-shift
    del cells["k1-shift-slots16"]
    assert report.same_read_slots_bank("k4-shift-concat", cells) is None
    accs = {"k1-shift": [0.5, 0.5], "k1-shift-slots16": [1.0, 0.75], "k4-shift-concat": [1.0, 1.0]}
    argv = {"k1-shift": ["--gmm_experts=1", "--gmm_slots=4"], "k1-shift-slots16": ["--gmm_experts=1", "--gmm_slots=16"],
            "k4-shift-concat": ["--gmm_experts=4", "--gmm_slots=4", "--gmm_read=concat"]}  # fmt: skip
    recs = []
    for v, values in accs.items():
        for seed, a in zip([1, 2], values, strict=True):
            rec = {**record("mqar4", v, seed, {"4": {"acc_answer": 0.0, "acc_token": a}}), "chance_exact": 0.0625**4}
            rec["settings"]["argv"] += argv[v]
            recs.append(rec)
    table = format_tables(summarize(recs))
    # against one bank of 16 slots: differences 0 and 4 * 0.25 * 16/15 = 1.07
    assert "| k4-shift-concat | k1-shift-slots16 | +0.53 ± 0.75 [1/2]," in table
    assert "| k4-shift-concat | k1-shift | +2.13 ± 0.00 [2/2]," in table


def test_spread_tasks_in_the_grid() -> None:
    """spread (one new pair a segment, all asked) and rewrite<K> (K keys written again and again) are the grid's
    tasks too: their data folders, lengths (spread has a longest episode: every query fits its last segment) and
    the pairs each length asks for; a bad K or a too long spread is one line."""
    cfg = GridConfig(tasks="spread,rewrite2,mqar4", block_size=16, eval_segments=[4, 8, 16], n_segments=4,
                     segment_curriculum=[1, 2, 3, 4])  # fmt: skip
    assert [report.spread_keys(t) for t in ("spread", "rewrite2", "mqar4", "rewrite")] == [0, 2, None, None]
    assert benchmark.task_dataset("spread") == ("spread", "k0") and benchmark.task_dataset("rewrite2") == (
        "spread",
        "k2",
    )
    rewrite_args = ["--n_keys", "2", "--queries", "shuffled", "--n_queries", "0", "--context_pairs", "1"]
    assert benchmark.task_prepare_args("rewrite2", cfg) == rewrite_args
    assert benchmark.task_lengths("spread", cfg) == ([1, 2, 3, 4], [4, 8])  # 16 segments: 15 queries > 16 / 2
    drawn = replace(cfg, spread_queries="drawn", spread_n_queries=5, spread_context_pairs=3)  # 5 questions always
    assert benchmark.task_prepare_args("spread", drawn) == [
        "--n_keys", "0", "--queries", "drawn", "--n_queries", "5", "--context_pairs", "3"]  # fmt: skip
    assert benchmark.task_lengths("spread", drawn) == ([1, 2, 3, 4], [4, 8, 16])
    assert benchmark.task_lengths("spread", replace(drawn, eval_segments=[1, 4]))[1] == [4]  # a stage, not a length
    assert benchmark.task_lengths("rewrite2", cfg) == ([3, 3, 3, 4], [4, 8, 16])
    # 3 pairs in one segment hold rewrite2's 2 keys and a rewrite: its curriculum starts there; not rewrite4's
    assert benchmark.task_lengths("rewrite2", drawn) == ([1, 3, 3, 4], [4, 8, 16])
    assert benchmark.task_lengths("rewrite4", drawn) == ([5, 5, 5, 5], [8, 16])
    assert [report.pairs_asked("spread", n) for n in (1, 4, 8)] == [1, 3, 7]
    assert report.pairs_asked("rewrite2", 16) == 2 and report.pairs_asked("mqar4", 8) == 4
    assert report.pairs_asked("recall", 4) is None
    assert sorted(["rewrite2", "spread", "pycode_char", "mqar4", "recall"], key=report.task_order) == [
        "recall", "mqar4", "spread", "rewrite2", "pycode_char"]  # fmt: skip
    with pytest.raises(ValueError, match="rewrite<K> takes 1 <= K <= 16 keys"):
        GridConfig(tasks="rewrite9", block_size=16)
    with pytest.raises(ValueError, match="at most 9 segments of 16 tokens to train on"):
        GridConfig(tasks="spread", block_size=16, n_segments=10, eval_segments=[10])
    with pytest.raises(ValueError, match="spread_n_queries = 8 questions do not fit one segment of 16 tokens"):
        GridConfig(tasks="spread", block_size=16, spread_queries="drawn", spread_n_queries=8)
    with pytest.raises(ValueError, match="spread_n_queries = 6 questions do not fit one segment of 16 tokens beside 3"):
        GridConfig(tasks="spread", block_size=16, spread_queries="drawn", spread_n_queries=6, spread_context_pairs=3)
    with pytest.raises(ValueError, match="spread_n_queries = 3 must be >= 0, and > 0 only with spread_queries=drawn"):
        GridConfig(tasks="spread", spread_n_queries=3)
    with pytest.raises(ValueError, match="spread_queries = 'all' must be one of shuffled, drawn"):
        GridConfig(tasks="spread", spread_queries="all")


def test_a_grid_prepares_as_many_training_episodes_as_asked(tmp_path: Path) -> None:
    """train_episodes reaches each synthetic task's prepare.py (a set large enough that no batch repeats one), at
    every length the grid uses; a data folder prepared with another count is refused in one line, not overwritten."""
    cfg = GridConfig(tasks="spread,mqar4", block_size=16, n_segments=4, segment_curriculum=[2, 4], eval_segments=[4],
                     train_episodes=300, data_dir=str(tmp_path))  # fmt: skip
    dirs = benchmark.prepare_data(cfg)
    for task in ("spread", "mqar4"):
        for n, folder in dirs[task].items():
            meta = json.loads((Path(folder) / "meta.json").read_text())
            assert (meta["train_episodes"], meta["n_segments"]) == (300, n)
    with pytest.raises(ValueError, match="was prepared with other settings .* remove it first"):
        benchmark.prepare_data(replace(cfg, train_episodes=400))
    # a length evaluated only gets one training episode, and the same val episodes as a full folder would
    evals = benchmark.prepare_data(replace(cfg, tasks="mqar4", eval_segments=[4, 8]))["mqar4"]
    meta = json.loads((Path(evals[8]) / "meta.json").read_text())
    assert (meta["train_episodes"], meta["n_segments"]) == (1, 8)
    full = benchmark.prepare_data(replace(cfg, tasks="mqar4", data_dir=str(tmp_path / "full"), segment_curriculum=[8],
                                          n_segments=8, eval_segments=[8]))["mqar4"]  # fmt: skip
    assert (Path(full[8]) / "val.bin").read_bytes() == (Path(evals[8]) / "val.bin").read_bytes()
    # ... and is prepared again, whole, once a grid trains at it
    benchmark.prepare_data(replace(cfg, tasks="mqar4", segment_curriculum=[2, 4, 8], n_segments=8))
    assert json.loads((Path(evals[8]) / "meta.json").read_text())["train_episodes"] == 300
    # mqar trained on 1 to 4 pairs, measured on 4: a folder of its own
    mixed = benchmark.prepare_data(replace(cfg, tasks="mqar4", mqar_train_min_pairs=1, data_dir=str(tmp_path / "mix")))
    meta = json.loads((Path(mixed["mqar4"][4]) / "meta.json").read_text())
    assert (meta["train_min_pairs"], meta["answer_len"]) == (1, 4)
    # a folder prepared before --queries existed holds shuffled questions: reused for them, refused for drawn ones
    path = Path(dirs["mqar4"][4]) / "meta.json"
    meta = json.loads(path.read_text())
    i = meta["prepare_args"].index("--queries")
    del meta["prepare_args"][i : i + 2]
    path.write_text(json.dumps(meta))
    assert benchmark.prepare_data(replace(cfg, tasks="mqar4")) == {"mqar4": dirs["mqar4"]}
    with pytest.raises(ValueError, match="was prepared with other settings .* remove it first"):
        benchmark.prepare_data(replace(cfg, tasks="mqar4", mqar_queries="drawn"))


def test_two_grids_on_one_data_dir_prepare_it_one_after_the_other(tmp_path: Path) -> None:
    """While one grid holds data_dir's lock, another grid's prepare_data waits and writes nothing (two grids started
    together once raced on the same temp files); once the lock is free it prepares the data."""
    cfg = GridConfig(tasks="mqar4", block_size=16, n_segments=2, segment_curriculum=[2], eval_segments=[2],
                     train_episodes=50, data_dir=str(tmp_path))  # fmt: skip
    found: dict[str, dict[int, str]] = {}
    with benchmark.data_dir_lock(cfg.data_dir):
        second = threading.Thread(target=lambda: found.update(benchmark.prepare_data(cfg)))
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and not list(tmp_path.glob("*/*/meta.json")) and not found
    second.join(timeout=60)
    assert not second.is_alive() and (Path(found["mqar4"][2]) / "meta.json").exists()
    with open(tmp_path / ".prepare.lock") as f:  # and the lock is released after
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_folders_prepared_before_repeats_were_marked_are_prepared_again(tmp_path: Path, capsys: Any) -> None:
    """A drawn-questions folder without repeat_mark in its meta (its masks mark every answer 1) is prepared again, at
    every length: the same episodes, now with the repeats marked; a grid's records ask for acc_first on such tasks."""
    cfg = GridConfig(tasks="mqar4", block_size=16, n_segments=4, segment_curriculum=[2, 4], eval_segments=[4],
                     train_episodes=300, data_dir=str(tmp_path), mqar_queries="drawn")  # fmt: skip
    dirs = benchmark.prepare_data(cfg)["mqar4"]
    marked = {n: (Path(f) / "val_mask.bin").read_bytes() for n, f in dirs.items()}
    tokens = (Path(dirs[4]) / "val.bin").read_bytes()
    assert any(REPEAT in m for m in marked.values())
    for folder in dirs.values():  # as a folder from before the mark
        meta = json.loads((Path(folder) / "meta.json").read_text())
        del meta["repeat_mark"]
        (Path(folder) / "meta.json").write_text(json.dumps(meta))
        mask = np.fromfile(Path(folder) / "val_mask.bin", dtype=np.uint8)
        np.minimum(mask, 1).tofile(Path(folder) / "val_mask.bin")
    assert benchmark.prepare_data(cfg)["mqar4"] == dirs
    assert "was prepared before repeated questions were marked" in capsys.readouterr().out
    assert {n: (Path(f) / "val_mask.bin").read_bytes() for n, f in dirs.items()} == marked
    assert (Path(dirs[4]) / "val.bin").read_bytes() == tokens
    assert benchmark.asks_again("mqar4", cfg) and benchmark.asks_again("spread", replace(cfg, spread_queries="drawn"))
    assert not benchmark.asks_again("mqar4", replace(cfg, mqar_queries="shuffled"))
    assert not benchmark.asks_again("spread", cfg) and not benchmark.asks_again("recall", cfg)


def test_summary_tables_and_plots_by_hand(tmp_path: Path) -> None:
    cfg = GridConfig(tasks="recall,shakespeare_char", variants="off,k4,full")
    assert cfg.variants_for("recall") == ["off", "k4"] and cfg.variants_for("shakespeare_char") == ["off", "k4", "full"]
    recs = [
        record("recall", "off", 1, {"2": {"acc_answer": 0.05}, "4": {"acc_answer": 0.07}}),
        record("recall", "off", 2, {"2": {"acc_answer": 0.07}, "4": {"acc_answer": 0.05}}),
        record(
            "recall",
            "k4",
            1,
            {"2": {"acc_answer": 1.0}, "4": {"acc_answer": 0.9}},
            [{"iter": 0, "val_acc_answer": 0.0}, {"iter": 250, "val_acc_answer": 0.95}, {"iter": 500}],
        ),
        record(
            "recall",
            "k4",
            2,
            {"2": {"acc_answer": 0.8}, "4": {"acc_answer": 0.5}},
            [{"iter": 0, "val_acc_answer": 0.0}, {"iter": 250, "val_acc_answer": 0.89}],
        ),
        {**record("recall", "k4", 3, {}), "error": "train.py exited with 1"},  # a failed run counts in no statistic
        # text: segment 1 is the same for all; segments 2-3 mean: off 2.0, k4 1.8, full 1.5 -> k4 closes 40%
        record("shakespeare_char", "off", 1, {"3": {"loss": 2.0, "seg_loss": [2.3, 2.1, 1.9]}}),
        record("shakespeare_char", "k4", 1, {"3": {"loss": 1.9, "seg_loss": [2.3, 1.9, 1.7]}}),
        record("shakespeare_char", "full", 1, {"3": {"loss": 1.7, "seg_loss": [2.3, 1.6, 1.4]}}),
        # a text task that records the loss per position (2 segments of 2) and its training tokens: two seeds
        *(
            {
                **record("pycode_char", "off", seed, {"2": {"loss": 2.0, "seg_loss": [2.0, 2.0], "pos_loss": pos}}),
                "tokens_seen": 1000 * seed,
                "iters": 10,
            }  # fmt: skip
            for seed, pos in ((1, [3.0, 1.0, 2.5, 1.5]), (2, [2.0, 2.0, 1.5, 2.5]))
        ),
    ]
    summary = summarize(recs[::-1])  # any order: tasks, variants (off, k.., full) and seeds come out sorted
    k4 = summary["recall"]["k4"]
    assert k4["seeds"] == [1, 2]
    assert k4["acc"]["4"]["mean"] == pytest.approx(0.7) and k4["acc"]["4"]["std"] == pytest.approx(0.2828427, 1e-6)
    assert k4["acc"]["2"]["max"] == 1.0 and k4["acc"]["2"]["min"] == 0.8
    assert summary["shakespeare_char"]["k4"]["later_loss"][0] == pytest.approx(1.8)
    assert list(summary["shakespeare_char"]) == ["off", "k4", "full"]
    pycode = summary["pycode_char"]["off"]
    assert pycode["pos_loss"] == [2.5, 1.5, 2.0, 2.0] and pycode["tokens_per_s"] == 1500.0  # median of 1000, 2000 /s
    assert "tokens_per_s" not in summary["shakespeare_char"]["off"]  # records made before it was recorded
    table = format_tables(summary)
    assert "trained on 4 segments of 16 tokens (curriculum [2,3,4]), 3000 iterations; seeds [1, 2]" in table
    assert k4["learned_at"] == [250, None]  # seed 2 never reached 0.9
    # the learning curve: the evaluations both seeds made (0 and 250), x the episodes of a step (no --batch_size: 1)
    assert k4["curve"]["episodes"] == [0, 250] and k4["curve"]["mean"] == pytest.approx([0.0, 0.92])
    assert k4["curve"]["std"] == pytest.approx([0.0, 0.0424264], rel=1e-5)
    assert "| k4 | 0.001M | 0.900 ± 0.141 (1.00) | 0.700 ± 0.283 (0.90) | 1/2, median step 250 |" in table
    assert "| off | 0.001M | 0.060 ± 0.014 (0.07) | 0.060 ± 0.014 (0.07) | 0/2 |" in table
    assert "| k4 | 0.00M | 2.300 ± 0.000 | 1.900 ± 0.000 | 1.700 ± 0.000 | 1.800 ± 0.000 | - | - | - |" in table
    # against no memory, seed by seed: segment 1 equal, segments 2-3 0.2 lower, 40% of off -> full's 0.5
    assert "| k4 | off | +0.000 ± 0.000 [0/1] | -0.200 ± 0.000 [1/1] | - | - | 40% | - |" in table
    assert "recall: answer-token accuracy" not in table  # one answer token: exact match says it all
    assert "| full | off | +0.000 ± 0.000 [0/1] | -0.500 ± 0.000 [1/1] | - | - | 100% | - |" in table
    assert "| off | off |" not in table  # the baseline has no row of its own
    # segment 2's first eighth of 2 positions is its first: 2.5 (seed 1), 1.5 (seed 2)
    assert pycode["start_loss"] == (pytest.approx(2.0), pytest.approx(0.7071068))
    # and the rest of segment 2 is its second position: 1.5 (seed 1), 2.5 (seed 2)
    assert pycode["rest_by_seed"] == {"1": 1.5, "2": 2.5}
    assert (
        "| off | 0.00M | 2.000 ± 0.000 | 2.000 ± 0.000 | 2.000 ± 0.000 | 2.000 ± 0.707 | 2.000 ± 0.707 | 1,500 |"
        in table
    )
    assert "seeds [1, 2] (a cell with ± 0.000 has one); iterations [10]" in table
    # the plots: a panel per synthetic task in one figure; per text task, loss per segment (and per position)
    paths = report.plot(summary, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        "accuracy_vs_segments.png", "accuracy_vs_episodes.png", "pycode_char_loss.png",
        "shakespeare_char_loss.png"]  # fmt: skip
    assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_each_variant_is_compared_with_no_memory_and_full_attention_of_its_own_positions() -> None:
    """A rope variant (and xl, which has rope) is measured against off-rope and the best rope full attention, a
    learned-position one against off and full; paired differences and the gap use the seeds both sides have."""
    names = ["off", "off-rope", "k1", "k1-rope", "k1-rope-gate", "xl", "full", "full-rope", "full-rope-warmup"]
    cells = {v: {"later_loss": (1.0 if v != "full-rope-warmup" else 0.5, 0.0)} for v in names}
    assert [report.baseline(v, cells) for v in names] == [None, None, "off", "off-rope", "off-rope", "off-rope",
                                                             "off", "off-rope", "off-rope"]  # fmt: skip
    assert report.upper_bound("k1-rope", cells) == report.upper_bound("xl", cells) == "full-rope-warmup"
    # with a warm-up, against off with the same warm-up (the same batches) where the grid has it
    warm = {**cells, "off-rope-warmup": {}, "k1-rope-warmup": {}}
    assert report.baseline("k1-rope-warmup", warm) == "off-rope-warmup"
    assert report.baseline("full-rope-warmup", warm) == "off-rope-warmup"
    assert report.baseline("k1-rope-warmup", cells) == "off-rope" and report.baseline("xl", warm) == "off-rope"
    assert report.upper_bound("k1", cells) == "full" and report.upper_bound("k1", {"off": {}}) is None
    base = {"later_by_seed": {"1": 2.0, "2": 2.0, "3": 2.0}}
    bound = {"later_by_seed": {"1": 1.0, "2": 1.0}}
    cell = {"later_by_seed": {"1": 1.8, "2": 2.1, "4": 0.0}}  # seed 4 has no baseline: left out
    assert report.paired_difference(cell, base, "later_by_seed") == "-0.050 ± 0.212 [1/2]"
    assert report.gap_closed(cell, base, bound, "later_by_seed") == "5%"
    assert report.gap_closed(cell, base, None, "later_by_seed") == "-"
    assert report.gap_closed(cell, base, {"later_by_seed": {"1": 2.5}}, "later_by_seed") == "-"  # no gap


@pytest.mark.slow
def test_grid_end_to_end_where_memory_learns_recall_and_no_memory_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark's recall setting (one value carried from segment 1 to a question at the end of segment 4,
    curriculum 1 -> 2 -> 3 -> 4 segments) with the quick start's memory (one bank), 1000 iterations instead of
    3000: at least 90% answer accuracy on 512 validation episodes at 4 segments, while memory off stays within 5
    points of chance. Seed 1: 1.000 at 1000 iterations, learned by step 500 (the top-2 + shared mixture it trained
    before, by step 750); at 2000 iterations every seed of the reliability study reaches 1.00 (RESULTS.md). Two
    runs side by side, about a minute on a 2-core CPU. The same grid checks what benchmark.py writes, that it
    reuses it, and that with tracker=trackio every run logs into one project, grouped by task."""
    out = tmp_path / "results"
    args = [f"--out_dir={out}", "--variants=off,k1", "--seeds=1", "--max_iters=1000",
            "--eval_segments=2,4", "--device=cpu"]  # fmt: skip
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    records = benchmark.main([*args, "--tracker=trackio"])
    assert len(records) == 2 and not any("error" in r for r in records)
    acc = {r["variant"]: r["eval"]["4"]["acc_answer"] for r in records}
    chance = records[0]["chance"]
    assert chance == 1 / 16
    assert acc["k1"] >= 0.9, acc
    assert abs(acc["off"] - chance) <= 0.05, acc
    # the records, logs, table, summary and plot
    for variant in ("off", "k1"):
        rec = json.loads((out / f"recall_{variant}_seed1.json").read_text())
        assert rec["iters"] == 1000 and set(rec["eval"]) == {"2", "4"} and len(rec["eval"]["4"]["seg_loss"]) == 4
        assert [e["iter"] for e in rec["curve"]] == list(range(0, 1001, 250))
        assert (out / "runs" / "recall" / variant / "seed1" / "train.log").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "| 2 seg | 4 seg | learned (≥ 0.9) |" in table
    assert "| off |" in table and "| 0/1 |" in table and "| 1/1, median step" in table
    assert (out / "accuracy_vs_segments.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    memory = summary["recall"]["k1"]
    assert memory["seeds"] == [1] and memory["learned_at"][0] is not None
    # one trackio project for the grid, named after out_dir, in out_dir/trackio: a run per cell, grouped by task
    with contextlib.closing(sqlite3.connect(out / "trackio" / "results.db")) as con:
        configs = {name: json.loads(c) for name, c in con.execute("SELECT run_name, config FROM configs")}
        steps = {name: n for name, n in con.execute("SELECT run_name, MAX(step) FROM metrics GROUP BY run_name")}
    assert sorted(configs) == ["recall-k1-seed1", "recall-off-seed1"]
    assert all(c["_Group"] == "recall" for c in configs.values()) and set(steps.values()) == {1000}
    # asked again (the tracker is not a setting of a run), every record is reused: no run starts, the same records
    again = benchmark.main(args)
    dumps = [sorted(json.dumps(r, sort_keys=True) for r in rs) for rs in (records, again)]
    assert dumps[0] == dumps[1]
    # asked at one more length, nothing is trained again: each checkpoint is evaluated at 2, 3 and 4 segments
    logs = {v: (out / "runs" / "recall" / v / "seed1" / "train.log").stat().st_mtime_ns for v in acc}
    longer = benchmark.main([a if a != "--eval_segments=2,4" else "--eval_segments=2,3,4" for a in args])
    before = {r["variant"]: r for r in records}
    for rec in longer:
        old = before[rec["variant"]]
        assert set(rec["eval"]) == {"2", "3", "4"} and rec["train_seconds"] == old["train_seconds"]
        assert rec["curve"] == old["curve"] and rec["settings"]["eval_segments"] == [2, 3, 4]
        for n in ("2", "4"):
            assert rec["eval"][n]["acc_answer"] == old["eval"][n]["acc_answer"]
            assert rec["eval"][n]["loss"] == pytest.approx(old["eval"][n]["loss"], rel=1e-6)
        assert (out / "runs" / "recall" / rec["variant"] / "seed1" / "train.log").stat().st_mtime_ns == logs[
            rec["variant"]
        ]
    # other task settings on the same data folder are refused, not silently mixed
    with pytest.raises(SystemExit):
        benchmark.main([*args, "--recall_pairs=2"])


def test_drawn_questions_record_the_accuracy_on_opening_questions(tmp_path: Path) -> None:
    """A grid whose questions are drawn (mqar here) records acc_open (each episode's first question) and acc_first
    beside acc_token, and says it is scored on acc_open; a task that never asks a key twice (recall) records
    neither, so its tables and plots stay on every answer."""
    args = [f"--out_dir={tmp_path}", "--tasks=recall,mqar4", "--variants=k1", "--seeds=1", "--max_iters=2",
            "--eval_interval=2", "--eval_segments=4", "--block_size=32", "--mqar_queries=drawn",
            "--mqar_n_queries=12", "--train_episodes=64", "--eval_iters=2", "--n_layer=1", "--n_embd=16",
            "--device=cpu"]  # fmt: skip
    by_task = {r["task"]: r for r in benchmark.main(args)}
    mqar, recall = by_task["mqar4"], by_task["recall"]
    assert mqar["settings"]["scored"] == "acc_open"
    assert 0.0 <= mqar["eval"]["4"]["acc_first"] <= 1.0 and 0.0 <= mqar["eval"]["4"]["acc_open"] <= 1.0
    assert "scored" not in recall["settings"] and not {"acc_first", "acc_open"} & set(recall["eval"]["4"])
    assert all("val_acc_first" in e and "val_acc_open" in e for e in mqar["curve"])
    assert report.curve_key(mqar) == "val_acc_open"
    table = (tmp_path / "table.md").read_text()
    assert "### mqar4: per-value accuracy on opening questions (each episode's first" in table
    assert "pairs stored (ARMT's estimator from the per-value accuracy on opening questions" in table
    # the data's prepare flags are part of the record (a recipe's data is not in train.py's settings)
    assert mqar["data"] == {"n_pairs": "4", "n_queries": "12", "queries": "drawn", "seed": "1337",
                            "train_episodes": "64", "val_episodes": "500", "train_min_pairs": "0"}  # fmt: skip


def test_a_cell_asked_only_for_another_evaluation_keeps_its_training(tmp_path: Path) -> None:
    """same_training: a record's run is evaluated again instead of trained again only when its train.py argv is the
    same and its checkpoint is the one the record evaluated (same iterations, saved before the record)."""
    run_dir, path = tmp_path / "run", tmp_path / "rec.json"
    run_dir.mkdir()
    settings = {"argv": ["--seed=1"], "eval_segments": [2, 4], "eval_iters": 16}
    old = {"settings": settings, "iters": 100, "tokens_seen": 6400}
    ckpt = run_dir / "ckpt.pt"
    torch.save({"model": {}, "model_args": {}, "iter_num": 100, "tokens_seen": 6400}, ckpt)
    path.write_text(json.dumps(old))
    longer = {**settings, "eval_segments": [2, 4, 8], "eval_iters": 32}
    assert benchmark.same_training(old, longer, str(path), str(run_dir))
    assert not benchmark.same_training(old, {**longer, "argv": ["--seed=2"]}, str(path), str(run_dir))
    assert not benchmark.same_training(None, longer, str(path), str(run_dir))
    assert not benchmark.same_training({**old, "error": "x"}, longer, str(path), str(run_dir))
    assert not benchmark.same_training({**old, "iters": 50}, longer, str(path), str(run_dir))
    # a record from before drawn questions were scored on first-asked keys: evaluated again, not trained again
    assert benchmark.same_training(old, {**longer, "scored": "acc_first"}, str(path), str(run_dir))
    stamp = path.stat().st_mtime
    os.utime(ckpt, (stamp + 10, stamp + 10))  # rewritten since (a run of other settings, cut short)
    assert not benchmark.same_training(old, longer, str(path), str(run_dir))
    ckpt.unlink()
    assert not benchmark.same_training(old, longer, str(path), str(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_parent_alone_stops_every_run(sig: signal.Signals, tmp_path: Path) -> None:
    """SIGTERM or SIGINT sent to benchmark.py alone (not to its process group) stops its workers and their
    train.py runs too, says so in one line, and leaves no record of the runs it cut short; SIGKILL, which it
    cannot see, stops them through the kernel (Linux)."""
    out = tmp_path / "results"
    tiny = ["--eval_interval=100000", "--eval_segments=2", "--n_layer=1", "--n_embd=16", "--device=cpu", "--jobs=2"]
    cmd = [sys.executable, "benchmark.py", f"--out_dir={out}", "--variants=k1,k4", "--seeds=1", "--max_iters=100000"]
    cmd += tiny
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)

    def runs() -> list[psutil.Process]:
        found = []
        for p in parent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "train.py" in " ".join(p.cmdline()):
                    found.append(p)
        return found

    everyone: list[psutil.Process] = []
    try:
        deadline = time.time() + 120
        while len(runs()) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert len(runs()) == 2, proc.communicate()[1][-2000:]
        everyone = parent.children(recursive=True)  # the workers and the runs they started
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig != signal.SIGKILL:
            assert proc.returncode == 130
            assert err.strip().splitlines()[-1].startswith("benchmark: interrupted; 0 runs are recorded"), err[-2000:]
        _, alive = psutil.wait_procs(everyone, timeout=30)
        assert not alive, [p.pid for p in alive]
    finally:  # a failure must not leave a grid training in the background
        current = parent.children(recursive=True) if parent.is_running() else []
        for p in [parent, *current, *everyone]:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert not list(out.glob("*_seed*.json*"))  # nothing half-written counted as a result


def test_a_second_signal_cannot_cut_the_stop_short() -> None:
    """The first SIGTERM or SIGINT raises KeyboardInterrupt in run_grid and ignores later ones until run_grid has
    stopped its workers and restored the handlers: a second signal (Ctrl-C pressed twice; `uv run` forwarding a
    SIGTERM the process also got, seen in a real grid) once raised again inside stop_workers and left the runs
    training."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(KeyboardInterrupt):
            benchmark.interrupt(signal.SIGTERM, None)
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in previous)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_records_are_whole_or_absent(tmp_path: Path) -> None:
    path = str(tmp_path / "recall_k1_seed1.json")
    assert report.read_record(path) is None
    benchmark.write_record(path, {"task": "recall", "seed": 1})
    assert report.read_record(path) == {"task": "recall", "seed": 1} and not Path(path + ".tmp").exists()
    Path(path).write_text('{"task": "rec')  # what a kill during a plain write could have left: run it again
    assert report.read_record(path) is None


def test_recipes_are_compared_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--compare reads grid folders and trains nothing: a row per folder and variant, its recipe (the settings that
    differ from the same variant's other rows, the data's prepare flags included), the accuracy it is scored by at
    the trained length per seed, the seeds at the bar; a plot; a folder that is not one is one line and exit 2."""

    def rec(variant: str, seed: int, first: float, lr: str, min_pairs: str) -> dict[str, Any]:
        r = record("mqar4", variant, seed, {"4": {"acc_answer": 0.0, "acc_token": 0.99, "acc_first": first}},
                   curve=[{"iter": 0, "val_acc_first": 0.06}, {"iter": 3000, "val_acc_first": first}])  # fmt: skip
        r["settings"] = {"argv": [*r["settings"]["argv"], f"--learning_rate={lr}", "--batch_size=32",
                                  f"--out_dir=runs/{seed}"], "scored": "acc_first"}  # fmt: skip
        return {**r, "chance_exact": 0.0625**12, "data": {"train_min_pairs": min_pairs, "train_episodes": "96000"}}

    folders = {
        "a": [rec("k1", 1, 0.9, "0.003", "0"), rec("k1", 2, 0.96, "0.003", "0"), rec("k4", 1, 0.5, "0.003", "0")],
        "b": [rec("k1", 1, 0.97, "0.001", "1"), rec("k1", 2, 0.99, "0.001", "1")],
    }
    for name, recs in folders.items():
        (tmp_path / name).mkdir()
        for r in recs:
            benchmark.write_record(str(tmp_path / name / f"mqar4_{r['variant']}_seed{r['seed']}.json"), r)
    out = tmp_path / "cmp"
    rows = benchmark.main([f"--compare={tmp_path / 'a'},{tmp_path / 'b'}:k1", f"--out_dir={out}"])
    assert [(r["folder"], r["variant"]) for r in rows] == [("a", "k1"), ("a", "k4"), ("b", "k1")]  # b:k1 alone
    table = (out / "recipes.md").read_text()
    assert (
        "| a | mqar4 | k1 | data.train_min_pairs=0, learning_rate=0.003 | 3000 | 32 | 96,000 | acc_first at 4 seg | "
        "0.900, 0.960 | 0.930 ± 0.042 | 1/2 | 1 (cpu) |"
    ) in table
    assert "| b | mqar4 | k1 | data.train_min_pairs=1, learning_rate=0.001 |" in table and "| 2/2 |" in table
    # nothing to differ from; one seed has no spread
    assert "| a | mqar4 | k4 | - | 3000 | 32 | 96,000 | acc_first at 4 seg | 0.500 | 0.500 (one seed) | 0/1 |" in table
    assert os.path.getsize(out / "recipes.png") > 10_000
    assert not (tmp_path / "a" / "runs").exists()  # nothing trained
    with pytest.raises(SystemExit) as e:
        benchmark.main([f"--compare={tmp_path / 'nope'}", f"--out_dir={out}"])
    assert e.value.code == 2 and "compare: '" in capsys.readouterr().err


def test_capacity_is_read_against_pairs_across_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--capacity reads the mqar<P> records of several folders (nothing trains): the pairs each variant stores at
    each P and segment count, each variant minus one bank paired by seed with both tests, what each P trained with,
    a plot; a P in two folders, or a name that is no folder, is one line and exit 2."""
    argv = {"k1-shift": ["--gmm_experts=1"], "k4-shift-concat": ["--gmm_experts=4", "--gmm_read=concat"]}
    accs = {"a": ("mqar4", {"k1-shift": [1.0, 0.5], "k4-shift-concat": [1.0, 1.0]}),
            "b": ("mqar8", {"k1-shift": [0.5, 0.5], "k4-shift-concat": [1.0, 0.75]})}  # fmt: skip
    for folder, (task, by_variant) in accs.items():
        (tmp_path / folder).mkdir()
        for variant, values in by_variant.items():
            for seed, a in enumerate(values, start=1):
                r = {**record(task, variant, seed, {"4": {"acc_answer": 0.0, "acc_token": a}}), "chance_exact": 1e-9}
                r["settings"]["argv"] += [*argv[variant], "--learning_rate=0.003", "--batch_size=32", "--device=cpu"]
                benchmark.write_record(str(tmp_path / folder / f"{task}_{variant}_seed{seed}.json"), r)
    out = tmp_path / "cap"
    assert benchmark.main([f"--capacity={tmp_path / 'a'},{tmp_path / 'b'}", f"--out_dir={out}"]) == []
    table = (out / "capacity.md").read_text()
    assert f"- P = 8: `{tmp_path / 'b'}` (mqar8), 3000 steps x batch 32 (96,000 episodes), lr 0.003," in table
    # stored = n (16 a - 1) / 15: P = 4 at 1.0 and 0.5: 4 and 1.87; P = 8 at 0.5: 3.73, at 0.75: 5.87
    assert "| variant | P = 4 | P = 8 |" in table
    assert "| k1-shift | 2.93 ± 1.51 (2) | 3.73 ± 0.00 (2) |" in table
    assert "| k4-shift-concat | 4.00 ± 0.00 (2) | 6.93 ± 1.51 (2) |" in table
    # P = 8: differences 4.27 and 2.13: t = 3 at 1 degree of freedom, p = 1 - 2 atan(3) / pi = 0.20; sign flips 2/4
    assert "| k4-shift-concat | k1-shift | +1.07 ± 1.51 [1/2], p 0.5 / 1 | +3.20 ± 1.51 [2/2], p 0.2 / 0.5 |" in table
    assert os.path.getsize(out / "capacity.png") > 10_000
    assert not (tmp_path / "a" / "runs").exists()  # nothing trained
    # one seed has no spread and no test; no seed in common, no cell
    assert report.paired_pairs_cell([1.5]) == "+1.50 [1/1] (one seed)" and report.paired_pairs_cell([]) == "-"
    for folders, says in [(f"{tmp_path / 'a'},{tmp_path / 'a'}", "mqar4 is in both"), (f"{tmp_path / 'nope'}", "")]:
        with pytest.raises(SystemExit) as e:
            benchmark.main([f"--capacity={folders}", f"--out_dir={out}"])
        assert e.value.code == 2 and "capacity: " in (err := capsys.readouterr().err) and says in err


def test_opening_questions_count_before_first_asked_keys_where_every_record_has_them() -> None:
    """A first-asked key's value can follow by elimination once the episode's other keys were answered, so the
    pairs stored come from acc_open (each episode's first question) where every record of a task has it, from
    acc_first where every record has that, else from every answer; a record's line says both."""

    def rec(variant: str, seed: int, first: float, opening: float | None) -> dict[str, Any]:
        e = {"acc_answer": 0.0, "acc_token": 0.99, "acc_first": first, **({"acc_open": opening} if opening else {})}
        r = {**record("mqar4", variant, seed, {"4": e}), "chance_exact": 0.0625**12}
        return {**r, "settings": {**r["settings"], "scored": "acc_open" if opening else "acc_first"}}

    recs = [rec("k1", 1, 0.95, 0.875), rec("k1", 2, 0.99, 1.0)]
    cells = summarize(recs)["mqar4"]
    assert report.capacity_key(cells) == "acc_open" and report.scored_key(cells["k1"]) == "acc_open"
    table = format_tables(summarize(recs))
    assert "| k1 | 3.73 ± 0.38 (4.00) |" in table  # stored_pairs of 0.875 and 1.0: 3.47 and 4
    assert "; first-asked keys {4: 0.950}; opening questions {4: 0.875} (" in benchmark.describe(recs[0], GridConfig())
    older = summarize([*recs, rec("k1", 3, 0.9, None)])["mqar4"]
    assert report.capacity_key(older) == "acc_first"
