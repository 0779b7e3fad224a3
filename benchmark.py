"""
The memory benchmark: does memory carry information across segments, and do k experts carry it better than one?

$ python benchmark.py                                    # recall: off, k=1, k=4 and three k=4 ablations, 3 seeds
$ python benchmark.py --tasks=recall,copy,needle --variants=off,k1,k2,k4,k8 --seeds=1,2,3,4,5
$ python benchmark.py --tasks=shakespeare_char --variants=off,k1,k4,full     # real text: val loss per segment
$ python benchmark.py --out_dir=results/pycode --tasks=pycode_char --variants=off,k1,k4-top2-shared,full
$ python benchmark.py --device=cuda --jobs=1 --n_layer=4 --n_embd=128 --max_iters=10000   # scaled up on a GPU
$ python benchmark.py --tracker=trackio && python dashboard.py --trackio_dir=results/trackio   # watch it train
$ python benchmark.py --compare=results/a,results/b:k1 --out_dir=results   # recipes side by side, nothing trained
$ python benchmark.py --capacity=results/p4,results/p8 --out_dir=results   # pairs stored against P, nothing trained

The grid is tasks x variants x seeds. Each cell is one `train.py` run (in its own process, `jobs` at a time), whose
checkpoint is then evaluated on the validation episodes at every segment count in `eval_segments`; counts beyond the
training length measure length generalisation. A variant is `off` (no memory), `k<N>` (N experts; k1 is one bank,
the RMT baseline), optionally followed by ablations joined with '-': `projected` (gmm_candidate), `prob`
(gmm_write_scale), `read` (gmm_routing), `learnedwrite` (gmm_write_input=learned: the write tokens do not start from
the read memory), `rawwrite` (gmm_write_input=raw: with `rs<x>` the write tokens start from the read before its
normalisation), `bptt<N>` (bptt_segments=N), `T<x>` (gmm_temperature=x), `nocarry` (registers: the same read
slots, nothing carried), `rope` (rotary positions), `gate` (gmm_read_gate: the read starts as a no-op),
`noinitread` (gmm_read_initial=False: segment 1 has no read slots, since nothing has been written yet), `shift`
(token_shift: each token's embedding adds its predecessor's), `warmup`
(a text task's sequence-length warm-up: memory trains on 1, 2, 4, ... segments first, full attention on windows
of 1, 2, 4, ... segments, at the same tokens a step; xl too; on off it is the control that draws the same
batches). On a text
task, `full` is the upper bound: no memory and one segment of n_segments * block_size tokens, so every token sees
the whole context (the grid runs it on text tasks only). `xl` is Transformer-XL: no memory, rope, and attention to
the previous segment's cached keys and values. off, full and xl take only `rope`, `warmup`, `shift` and `lr<x>`.

Synthetic tasks (recall, copy, needle, mqar<P>: P pairs asked at once, spread: one pair a segment, rewrite<K>: K
keys written again and again; data/<task>/prepare.py) train the small model set by the fields below with a segment
curriculum, and the tasks with pairs also get a table of the pairs each variant stores (stored_pairs); a text task
trains its config (TEXT: shakespeare_char the quick start, pycode_char its 8-segment sibling on Python source) and
is evaluated on val at every position. Writes, under out_dir:
- runs/<task>/<variant>/seed<S>/: train.py's out_dir (ckpt.pt, metrics.jsonl) and train.log;
- <task>_<variant>_seed<S>.json: one record per run (settings, the data's prepare flags, accuracy and loss at each
  segment count, curve);
- from every record in out_dir (report.py): table.md (mean +- sample std over seeds; text: also each variant minus
  no memory with the same positions, seed by seed, and the share of the gap to full attention it closes),
  summary.json, accuracy_vs_segments.png, accuracy_vs_episodes.png, pairs_stored.png (tasks with pairs) and
  <task>_loss.png (text: loss per segment and per position).
With --compare=<out_dir>[:<variant>],... nothing trains: the folders' records are read and out_dir gets recipes.md
(a row per folder and variant: the settings that differ from the same variant's other rows, steps, batch, episodes,
the accuracy at the trained length per seed, mean +- std, the seeds at >= 0.95, seconds a run and device) and
recipes.png (accuracy against episodes seen, and each seed's final accuracy against its run's seconds).
With --capacity=<out_dir>,... nothing trains either: the folders' mqar<P> records (one folder per P) give
out_dir/capacity.md and capacity.png, the pairs each variant stores against P (report.compare_capacity).
A run whose record exists with the same settings is not run again, so an interrupted grid continues where it stopped
and a larger grid reuses the cells it shares with a smaller one; one asked only for other evaluation lengths or
batches is evaluated again from its checkpoint (runs/...), not trained again. Runs start seed by seed (every variant
at seed 1, then at seed 2, ...), so a grid cut short can still be compared pair by pair. A synthetic task's data is
prepared under data_dir at each length it trains at (train_episodes) and at each length only evaluated (its val
episodes, with one train episode).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common import (
    check_device,
    default_device,
    default_dtype,
    die_with_parent,
    fail,
    interactive,
    load_checkpoint,
)
from configurator import ConfigError, configure, read_config_file
from data.common import MQAR_QUERIES, check_writable_dir
from data.loader import ensure_data, episode_dir
from evaluate import FixedBatches, estimate_loss
from model import GELUS, GPT
from report import (
    NUM,
    SCORED,
    SYNTHETIC,
    WHOLE_MODEL,
    compare_capacity,
    compare_recipes,
    is_synthetic,
    mqar_pairs,
    read_record,
    spread_keys,
    write_outputs,
)
from tracking import TRACKERS

ROOT = Path(__file__).resolve().parent
# the synthetic tasks' prepare.py settings that folders prepared before them do not name, at their defaults
PREPARE_DEFAULTS = {"--queries": "shuffled", "--n_queries": "0", "--train_min_pairs": "0", "--context_pairs": "1"}
# the settings of a record that change only its evaluation: a cell asked again with other values of these alone is
# evaluated again from its checkpoint, not trained again (same_training)
EVALUATION = ("eval_segments", "eval_iters", "scored")
# text tasks and the config each trains: the quick start on tiny-shakespeare; 8 segments of Python source code, where
# names defined far above are used below (data/pycode_char)
TEXT = {"shakespeare_char": "config/train_gmm_shakespeare.py", "pycode_char": "config/train_gmm_pycode.py"}
# ablations that are a word, and ablations that carry a number: name -> the train.py settings they set
FLAGS: dict[str, dict[str, Any]] = {
    "projected": {"gmm_candidate": "projected"},
    "prob": {"gmm_write_scale": "prob"},
    "read": {"gmm_routing": "read"},
    "learnedwrite": {"gmm_write_input": "learned"},
    "rawwrite": {"gmm_write_input": "raw"},  # with rs<x>: the text reads at the tokens' scale, the write tokens not
    "shared": {"gmm_shared_expert": True},
    "concat": {"gmm_read": "concat"},
    "nocarry": {"gmm_carry": False},  # registers: the same slots, nothing carried
    "decaystates": {"decay_memory_states": True},
    "rope": {"pos_emb": "rope"},
    "gate": {"gmm_read_gate": True},  # the text reads the memory through a gate that starts shut
    "noinitread": {"gmm_read_initial": False},  # segment 1 reads nothing: the memory is empty until written
    "shift": {"token_shift": True},  # each token's embedding adds its predecessor's (model.py)
    # full: windows of 1, 2, 4, ... segments first; memory: sequences of 1, 2, 4, ... segments first; the same tokens
    # a step throughout (train_args sets them)
    "warmup": {"window_warmup": True},
}
NUMBERED: dict[str, tuple[str, type]] = {
    "bptt": ("bptt_segments", int),
    "top": ("gmm_top_k", int),
    "slots": ("gmm_slots", int),
    "T": ("gmm_temperature", float),
    "rs": ("gmm_read_scale", float),
    "is": ("gmm_init_scale", float),
    "gb": ("gmm_gate_bias", float),
    "lr": ("learning_rate", float),
    "lb": ("gmm_load_balance", float),
}
ABLATIONS = ", ".join([*FLAGS, *(f"{name}<{'N' if kind is int else 'x'}>" for name, (_, kind) in NUMBERED.items())])


@dataclass
class GridConfig:
    out_dir: str = "results"
    # comma-separated: recall, copy, needle, mqar<P>, spread, rewrite<K> (synthetic), shakespeare_char, pycode_char
    tasks: str = "recall"
    variants: str = "off,k1,k4,k4-projected,k4-prob,k4-bptt2"  # comma-separated, see the docstring
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    # synthetic tasks: the model and schedule of every run
    block_size: int = 16  # tokens per segment
    n_segments: int = 4  # segments per training episode (the curriculum's last stage)
    # [] = n_segments throughout. The first stage keeps the whole episode in one segment: the model learns to answer
    # from what it sees before memory has to carry it, and then learns the carry in a few hundred steps (EXPERIMENTS.md)
    segment_curriculum: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    eval_segments: list[int] = field(default_factory=lambda: [2, 3, 4, 6, 8])  # segment counts to evaluate at
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    gmm_slots: int = 4
    # the MLP's GELU (model.py): tanh | exact, whose forward and backward cost half of tanh's on a CPU. Handed to
    # train.py only when exact, so that the records made before the setting stay valid
    gelu: str = "tanh"
    batch_size: int = 32
    max_iters: int = 3000
    learning_rate: float = 3e-3  # memory learns after a plateau; lower rates and weight decay lengthen it
    min_lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_iters: int = 50
    eval_interval: int = 250  # the learning curve in each record
    eval_iters: int = 16  # batches per evaluation: 16 x 32 = 512 validation episodes per segment count
    # episodes in each synthetic task's train.bin; max_iters * batch_size or more makes every batch fresh (a run then
    # sees no episode twice, where the default set of 20,000 is seen 3 times over in 2000 steps of 32)
    train_episodes: int = 20000
    mqar_train_min_pairs: int = 0  # > 0: mqar<P> trains on episodes of this many to P pairs (val keeps P), 0 = P
    # mqar's questions: every key once in a fresh order (shuffled), or P keys drawn with replacement (drawn), which
    # leaves no answer to elimination (data/mqar/prepare.py)
    mqar_queries: str = "shuffled"
    mqar_n_queries: int = 0  # with mqar_queries=drawn: questions per episode, 0 = P (more answers to learn from)
    # the same for spread and rewrite<K>: every key once (shuffled), or spread_n_queries drawn with replacement from
    # the episode's keys (0 = as many as keys), the same number at every length (data/spread/prepare.py)
    spread_queries: str = "shuffled"
    spread_n_queries: int = 0
    # spread: pairs in the curriculum's one-segment stage (before its queries), so that it teaches the lookup among
    # several keys, as mqar's first stage does; 1 = the one pair of a one-segment episode
    spread_context_pairs: int = 1
    recall_pairs: int = 1  # key-value pairs per recall episode
    copy_len: int = 4  # tokens to copy
    # text tasks: each variant trained on the task's config (TEXT), or on this one if given
    text_config: str = ""
    text_max_iters: int = 0  # 0 = the config's
    text_data_dir: str = "data"  # the folder that holds the text task's dataset (prepared there if missing)
    text_eval_iters: int = 50  # batches of the final evaluation, e.g. 50 x 8 sequences of 4 x 64 characters
    # system
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    jobs: int = 0  # runs at a time; 0 = one per CPU core on a CPU (each single-threaded), 1 on a GPU
    threads: int = 0  # torch threads per run; 0 = the CPU's cores shared among the jobs (1 each when several)
    # experiment tracking of every run (tracking.py): with trackio, the grid is one project in out_dir/trackio (or
    # $TRACKIO_DIR), runs grouped by task and named task-variant-seed<S>: `python dashboard.py
    # --trackio_dir=<out_dir>/trackio` overlays them as they train. Not part of a run's settings: turning it on
    # reruns nothing.
    tracker: str = "none"
    tracker_project: str = ""  # '' = the name of out_dir's folder
    data_dir: str = ""  # where the synthetic tasks' data is prepared; '' = out_dir/data
    # comma-separated grid folders (or folder:variant): train nothing, compare their recipes in out_dir/recipes.md
    # and recipes.png
    compare: str = ""
    # comma-separated grid folders holding mqar<P> records (one folder per P): train nothing, write the pairs each
    # variant stores against P, at each segment count, and each variant minus one bank paired by seed, to
    # out_dir/capacity.md and capacity.png
    capacity: str = ""

    def __post_init__(self) -> None:
        for name in ("block_size", "n_segments", "max_iters", "eval_iters", "batch_size", "recall_pairs", "copy_len",
                     "train_episodes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be a positive integer")
        if not self.seeds:
            raise ValueError("seeds = [] must name at least one seed, e.g. --seeds=1,2,3")
        for name in ("mqar", "spread"):
            queries, n_queries = getattr(self, f"{name}_queries"), getattr(self, f"{name}_n_queries")
            if queries not in MQAR_QUERIES:
                raise ValueError(f"{name}_queries = '{queries}' must be one of {', '.join(MQAR_QUERIES)}")
            if n_queries < 0 or (n_queries and queries != "drawn"):
                raise ValueError(f"{name}_n_queries = {n_queries} must be >= 0, and > 0 only with {name}_queries=drawn")
        if self.gelu not in GELUS:
            raise ValueError(f"gelu = '{self.gelu}' must be one of {', '.join(GELUS)}")
        if self.mqar_train_min_pairs < 0:
            raise ValueError(f"mqar_train_min_pairs = {self.mqar_train_min_pairs} must be >= 0 (0 = every episode P)")
        if self.jobs < 0 or self.threads < 0:
            raise ValueError(
                f"jobs = {self.jobs} and threads = {self.threads} must be >= 0 (0 = chosen for the machine)"
            )
        if not self.eval_segments or min(self.eval_segments) < 1:
            raise ValueError(f"eval_segments = {self.eval_segments} must be positive segment counts")
        for task in self.task_list:
            if not is_synthetic(task) and task not in TEXT:
                raise ValueError(
                    f"task '{task}' must be one of {', '.join((*SYNTHETIC, 'spread', *TEXT))}, mqar<P> (P pairs) or "
                    "rewrite<K> (K keys)"
                )
        for task in self.task_list:
            if not 1 <= (mqar_pairs(task) or 1) <= 16:
                raise ValueError(f"task '{task}': mqar<P> takes 1 <= P <= 16 pairs, one per key of the vocabulary")
            if not 2 * (spread_keys(task) or 1) <= min(32, self.block_size):
                raise ValueError(
                    f"task '{task}': rewrite<K> takes 1 <= K <= 16 keys, whose K queries fit one segment of "
                    f"{self.block_size} tokens (2K <= block_size)"
                )
            if spread_keys(task) is not None and self.spread_context_pairs < 1:
                raise ValueError(f"spread_context_pairs = {self.spread_context_pairs} must be >= 1")
            context = 2 * self.spread_context_pairs  # the one-segment stage holds its pairs before the questions
            if spread_keys(task) is not None and not 2 * self.spread_n_queries + context <= self.block_size:
                raise ValueError(
                    f"task '{task}': spread_n_queries = {self.spread_n_queries} questions do not fit one segment of "
                    f"{self.block_size} tokens beside {self.spread_context_pairs} pair(s) (2 n_queries + 2 "
                    "context_pairs <= block_size)"
                )
            high = max_segments(task, self)
            if high is not None and max(self.n_segments, *self.segment_curriculum) > high:
                raise ValueError(
                    f"task '{task}' asks for every pair in its last segment: at most {high} segments of "
                    f"{self.block_size} tokens to train on (n_segments = {self.n_segments})"
                )
            if is_synthetic(task) and not task_lengths(task, self)[1]:
                raise ValueError(
                    f"task '{task}' needs episodes of >= {min_segments(task, self)} segments of {self.block_size} "
                    f"tokens: add such a count to eval_segments = {self.eval_segments}"
                )
        for variant in self.variant_list:
            variant_settings(variant, text=True)  # raises on a bad name
        if self.tracker not in TRACKERS:
            raise ValueError(f"tracker = '{self.tracker}' must be one of {', '.join(TRACKERS)}")
        full = any(v.split("-")[0] == "full" for v in self.variant_list)
        if full and not any(t in TEXT for t in self.task_list):
            raise ValueError("variant 'full' is the full-attention bound of a text task: add one to tasks, or drop it")

    def text_config_for(self, task: str) -> str:
        """The config file a text task trains."""
        return self.text_config or TEXT[task]

    def variants_for(self, task: str) -> list[str]:
        """The grid's variants that apply to a task: 'full' only to text tasks."""
        return [v for v in self.variant_list if task in TEXT or v.split("-")[0] != "full"]

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    @property
    def variant_list(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",") if v.strip()]


def variant_settings(variant: str, text: bool) -> dict[str, Any]:
    """A variant's train.py settings: 'off' -> no memory; 'k4-projected-bptt2' -> 4 experts, projected candidate,
    truncated BPTT every 2 segments; 'full' (text only) -> the full-attention upper bound. ValueError otherwise."""
    head, *mods = variant.split("-")
    match = re.fullmatch(r"k([1-8])", head)
    settings: dict[str, Any]
    if head == "full":
        if not text:
            raise ValueError("variant 'full' is the full-attention bound of a text task, not of a synthetic one")
        settings = {"gmm_experts": 0, "full_attention": True}
    elif head == "off":
        settings = {"gmm_experts": 0}
    elif head == "xl":  # Transformer-XL: attention to the previous segment's cached keys and values, rope positions
        settings = {"gmm_experts": 0, "pos_emb": "rope", "xl_attention": True}
    elif match is not None:
        # the write input is named even at its default, so records made before the default changed are not reused
        settings = {"gmm_experts": int(match.group(1)), "gmm_write_input": "read"}
    else:
        raise ValueError(f"variant '{variant}' must be off, full, xl, or k1..k8, followed by -ablations ({ABLATIONS})")
    for mod in mods:
        numbered = re.fullmatch(rf"([a-zA-Z]+?)({NUM})", mod) if mod not in FLAGS else None
        if mod in FLAGS:
            settings.update(FLAGS[mod])
        elif numbered is not None and numbered.group(1) in NUMBERED:
            key, kind = NUMBERED[numbered.group(1)]
            try:
                settings[key] = kind(numbered.group(2))
            except ValueError:
                raise ValueError(f"variant '{variant}': '{mod}' needs a whole number") from None
            if key == "learning_rate":  # the schedule decays to a tenth of the peak, as the grid's default does
                settings["min_lr"] = settings[key] / 10
        else:
            raise ValueError(f"variant '{variant}': unknown ablation '{mod}' (allowed: {ABLATIONS})")
        if mod == "warmup" and not text:
            raise ValueError(f"variant '{variant}': 'warmup' is a text task's sequence-length warm-up")
        if head in ("off", "full", "xl") and mod not in WHOLE_MODEL and not re.fullmatch(rf"lr{NUM}", mod):
            raise ValueError(
                f"variant '{variant}': '{mod}' needs memory: {head} takes rope, warmup, shift and lr<x>; or use k1..k8"
            )
    return settings


def task_prepare_args(task: str, cfg: GridConfig) -> list[str]:
    """The prepare.py arguments that fix a synthetic task's content (the length comes from the run)."""
    if task == "recall":
        return ["--min_pairs", str(cfg.recall_pairs), "--max_pairs", str(cfg.recall_pairs)]
    if task == "copy":
        return ["--copy_len", str(cfg.copy_len)]
    if (P := mqar_pairs(task)) is not None:  # a task of fewer pairs than mqar_train_min_pairs trains on P only
        return ["--n_pairs", str(P), "--train_min_pairs", str(min(cfg.mqar_train_min_pairs, P)),
                "--queries", cfg.mqar_queries, "--n_queries", str(cfg.mqar_n_queries)]  # fmt: skip
    if (K := spread_keys(task)) is not None:
        return ["--n_keys", str(K), "--queries", cfg.spread_queries, "--n_queries", str(cfg.spread_n_queries),
                "--context_pairs", str(cfg.spread_context_pairs)]  # fmt: skip
    return []


def asks_again(task: str, cfg: GridConfig) -> bool:
    """Whether a task's questions can ask a key twice (drawn with replacement): then the answers to the repeats are
    in context, a first-asked key's value can follow by elimination once the others were given, and the pairs
    stored are counted from acc_open, the accuracy on each episode's opening question."""
    if mqar_pairs(task) is not None:
        return cfg.mqar_queries == "drawn"
    return spread_keys(task) is not None and cfg.spread_queries == "drawn"


def task_dataset(task: str) -> tuple[str, str]:
    """(the dataset's prepare script name, the data_dir that holds its folder) of a synthetic task in this grid:
    mqar<P> is dataset mqar, each P in a folder of its own."""
    P, K = mqar_pairs(task), spread_keys(task)
    if K is not None:  # spread and rewrite<K> are dataset spread, each K in a folder of its own
        return "spread", f"k{K}"
    return ("mqar", f"p{P}") if P is not None else (task, "")


def min_segments(task: str, cfg: GridConfig) -> int:
    """The fewest segments an episode of the task can have: one, or for mqar, pairs and queries in different segments
    (one segment is its no-gap control when it holds both)."""
    if (K := spread_keys(task)) is not None:  # rewrite<K>: K pairs, one a segment, before the queries' segment
        return K + 1 if K else 1
    P = mqar_pairs(task)
    if P is None:
        return 1
    Q, T = cfg.mqar_n_queries or P, cfg.block_size
    return 1 if T >= 2 * (P + Q) else -(-2 * P // T) - (-2 * Q // T)


def max_segments(task: str, cfg: GridConfig) -> int | None:
    """The most segments an episode of the task can have, or None: spread writes a new key a segment, at most 16
    distinct keys, and asking every one of them in its last segment holds at most block_size / 2 (a number of drawn
    questions is the same at every length)."""
    if spread_keys(task) == 0:
        fixed = cfg.spread_queries == "drawn" and cfg.spread_n_queries > 0
        return (16 if fixed else min(16, cfg.block_size // 2)) + 1
    return None


def task_lengths(task: str, cfg: GridConfig) -> tuple[list[int], list[int]]:
    """The task's curriculum (stages below its minimum length raised to it, but rewrite<K>'s one segment when it
    holds spread_context_pairs >= K pairs: the K keys, then rewrites of them) and its evaluation lengths (those
    below its minimum, or above its maximum, dropped; spread's one segment too when it holds context_pairs > 1, a
    training stage whose pairs are not the task's one a segment)."""
    low, high = min_segments(task, cfg), max_segments(task, cfg) or math.inf
    evals = [n for n in cfg.eval_segments if low <= n <= high]
    K = spread_keys(task)
    if K is not None and cfg.spread_context_pairs > 1:
        evals = [n for n in evals if n > 1]
    in_context = K is not None and 0 < K <= cfg.spread_context_pairs  # rewrite<K> can start in one segment
    return [n if n == 1 and in_context else max(low, n) for n in cfg.segment_curriculum], evals


def train_args(task: str, variant: str, seed: int, cfg: GridConfig, run_dir: str) -> list[str]:
    """train.py's argv for one cell of the grid."""
    text = task in TEXT
    settings = variant_settings(variant, text)
    full = settings.pop("full_attention", False)
    warmup = settings.pop("window_warmup", False)
    common = {"seed": seed, "out_dir": run_dir, "device": cfg.device, "dtype": cfg.dtype, "compile": cfg.compile,
              "always_save_checkpoint": True, "wandb_log": False}  # fmt: skip
    if text:
        base = read_config_file(cfg.text_config_for(task))
        overrides: dict[str, Any] = {**common, "data_dir": cfg.text_data_dir}
        if cfg.text_max_iters:
            overrides.update(max_iters=cfg.text_max_iters, lr_decay_iters=cfg.text_max_iters)
        if full:  # the same tokens per sequence, in one segment that sees them all
            overrides.update(block_size=base["block_size"] * base["n_segments"], n_segments=1)
        counts = [2**i for i in range(8) if 2**i < base["n_segments"]]  # 1, 2, 4, ... below n_segments
        if warmup and full:  # windows of 1, 2, 4, ... of the config's segments first, the same tokens a step
            overrides["window_curriculum"] = str([base["block_size"] * n for n in counts]).replace(" ", "")
        elif warmup:  # memory, xl and off: sequences of 1, 2, 4, ... segments first, the same tokens a step
            overrides["segment_curriculum"] = str([*counts, base["n_segments"]]).replace(" ", "")
            overrides["curriculum_same_tokens"] = True
        return [cfg.text_config_for(task), *(f"--{k}={v}" for k, v in {**overrides, **settings}.items())]
    dataset, folder = task_dataset(task)
    curriculum, _ = task_lengths(task, cfg)
    overrides = {
        **common,
        "dataset": dataset,
        "data_dir": os.path.join(cfg.data_dir, folder),
        "block_size": cfg.block_size,
        "n_segments": max(cfg.n_segments, min_segments(task, cfg)),
        "segment_curriculum": curriculum,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "gmm_slots": cfg.gmm_slots,
        "dropout": 0.0,
        "bias": False,
        "batch_size": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": cfg.learning_rate,
        "min_lr": cfg.min_lr,
        "weight_decay": cfg.weight_decay,
        "beta2": 0.99,
        "warmup_iters": cfg.warmup_iters,
        "max_iters": cfg.max_iters,
        "lr_decay_iters": cfg.max_iters,
        "eval_interval": cfg.eval_interval,
        "eval_iters": cfg.eval_iters,
        "log_interval": 50,
        **({"gelu": cfg.gelu} if cfg.gelu != "tanh" else {}),
        **settings,
    }
    return [f"--{k}={str(v).replace(' ', '')}" for k, v in overrides.items()]


UNMARKED = "was prepared before repeated questions were marked in its masks"  # why unmarked folders are prepared again


def prepare_data(cfg: GridConfig) -> dict[str, dict[int, str]]:
    """Prepare every synthetic task at every length the grid trains or evaluates on, before any run starts (runs
    in parallel must not race to write the same folder), holding data_dir's lock (neither may two grids started
    together on one data_dir). Returns task -> segment count -> data folder."""
    with data_dir_lock(cfg.data_dir):
        return {task: prepare_task(task, cfg) for task in cfg.task_list if task not in TEXT}


@contextlib.contextmanager
def data_dir_lock(data_dir: str) -> Iterator[None]:
    """Hold an exclusive lock on data_dir/.prepare.lock: a second grid preparing there waits until the first is done,
    then finds its folders made. Where fcntl is missing (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, ".prepare.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def prepare_task(task: str, cfg: GridConfig) -> dict[int, str]:
    """Prepare one synthetic task at each length the grid uses; returns segment count -> data folder."""
    dataset, sub = task_dataset(task)
    base = os.path.join(cfg.data_dir, sub, dataset)
    curriculum, evals = task_lengths(task, cfg)
    n_segments = max(cfg.n_segments, min_segments(task, cfg))
    args = [*task_prepare_args(task, cfg), "--train_episodes", str(cfg.train_episodes), "--n_segments",
            str(n_segments), "--block_size", str(cfg.block_size)]  # fmt: skip
    if earlier := prepared_meta(base):  # made by an earlier grid: its task settings must agree
        prepared = earlier["prepare_args"]
        # a setting older folders do not name holds its default there
        have = {**PREPARE_DEFAULTS, **dict(zip(prepared[::2], prepared[1::2], strict=True))}
        want = dict(zip(args[::2], args[1::2], strict=True))
        if any(have.get(k, v) != v for k, v in want.items() if k not in ("--n_segments", "--block_size")):
            raise ValueError(f"{base} was prepared with other settings ({' '.join(prepared)}): remove it first")
    if unmarked(base):
        reprepare(base, UNMARKED)
    ensure_data(base, dataset, args)
    meta = prepared_meta(base)
    assert meta is not None  # ensure_data made it or raised
    trained = {n_segments, *curriculum}
    dirs = {n: episode_dir(base, meta, n, cfg.block_size) for n in sorted(trained | set(evals))}
    for n, folder in dirs.items():
        if unmarked(folder):
            reprepare(folder, UNMARKED)
        elif n in trained and too_few_episodes(folder, meta["train_episodes"]):
            reprepare(folder, "was prepared for evaluation alone and is now trained on")
        # a length only evaluated gets its val episodes (the same whatever the train count) and one train episode
        args = meta["prepare_args"] if n in trained else with_flag(meta["prepare_args"], "--train_episodes", "1")
        ensure_data(folder, dataset, [*args, "--n_segments", str(n), "--block_size", str(cfg.block_size)])
    return dirs


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """A prepare.py argv (flag, value pairs) with flag set to value."""
    return [*(a for k, v in zip(args[::2], args[1::2], strict=True) if k != flag for a in (k, v)), flag, value]


def prepared_meta(folder: str) -> dict[str, Any] | None:
    """A prepared episode folder's meta.json, or None where the folder holds none yet."""
    path = os.path.join(folder, "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return dict(json.load(f))


def unmarked(folder: str) -> bool:
    """Whether an episode folder was prepared before its masks marked the answers to repeated questions (REPEAT): its
    meta.json has no repeat_mark, so acc_first would count those answers too."""
    meta = prepared_meta(folder)
    return meta is not None and "repeat_mark" not in meta


def too_few_episodes(folder: str, train_episodes: int) -> bool:
    """Whether a prepared episode folder holds fewer training episodes than its task's (one prepared for evaluation
    alone, which a later grid trains at)."""
    meta = prepared_meta(folder)
    return meta is not None and int(meta["train_episodes"]) < train_episodes


def reprepare(folder: str, why: str) -> None:
    """Remove a folder's files, so that ensure_data prepares it again: the same episodes (the same settings and
    seed), now with the repeats marked or the full training set."""
    print(f"{folder} {why}: preparing it again")
    for name in ("meta.json", "train.bin", "val.bin", "train_mask.bin", "val_mask.bin"):  # meta.json first
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


# -----------------------------------------------------------------------------
# one run: train in a child process, then evaluate its checkpoint at every segment count


def train_cell(spec: dict[str, Any]) -> tuple[float, str | None]:
    """Train one cell in a train.py process (output in run_dir/train.log): (its seconds, None or the error)."""
    run_dir = spec["run_dir"]
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale run of other settings: its record is gone or differs
    os.makedirs(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONUNBUFFERED": "1", **spec["tracking_env"]}
    argv = [*spec["argv"], *spec["tracking"]]
    t0 = time.time()
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        rc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], stdout=log, stderr=log, env=env,
                            preexec_fn=die_with_parent).returncode  # fmt: skip
    seconds = time.time() - t0
    if rc == 0:
        return seconds, None
    with open(os.path.join(run_dir, "train.log")) as f:
        tail = [line.strip() for line in f.read().splitlines() if line.strip()][-1:]
    return seconds, f"train.py exited with {rc}: {tail[0] if tail else ''}"


def data_settings(meta: dict[str, Any]) -> dict[str, str]:
    """What a synthetic task's training data was prepared with (its prepare.py flags but the episode shape, which
    train.py's settings hold): part of a recipe, e.g. the pairs curriculum; {} for a text task."""
    args = meta.get("prepare_args", [])
    flags = dict(zip(args[::2], args[1::2], strict=True))
    return {k.lstrip("-"): v for k, v in flags.items() if k not in ("--n_segments", "--block_size")}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one cell, or reuse its training where only the evaluation changed (spec["trained"]: the old record),
    evaluate its checkpoint, return its record."""
    torch.set_num_threads(spec["threads"])
    run_dir = spec["run_dir"]
    record = {k: spec[k] for k in ("task", "variant", "seed", "settings")}
    if spec.get("trained") is None:
        seconds, error = train_cell(spec)
        if error is not None:
            return {**record, "error": error}
    else:
        seconds = spec["trained"]["train_seconds"]
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    model = GPT.from_checkpoint(ckpt).to(spec["device"])
    cfg = FixedBatches(eval_iters=spec["eval_iters"], batch_size=spec["batch_size"], seed=spec["seed"])
    T = spec["segment_len"]
    evals = {}
    for n, folder in spec["eval_dirs"].items():
        L = n * T
        episodic = is_synthetic(spec["task"])
        out = estimate_loss(model, folder, L, cfg, spec["device"], spec["dtype"], L if episodic else 1,
                            seg_len=T, splits=("val",), positions=not episodic)  # fmt: skip
        evals[str(n)] = {"loss": out["val"], "seg_loss": out["val_seg_loss"]}
        if not episodic:  # text: the loss at each position of the window, where far context helps
            evals[str(n)]["pos_loss"] = out["val_pos_loss"]
        if episodic:
            evals[str(n)].update(acc_answer=out["val_acc_answer"], acc_token=out["val_acc_token"])
            if spec["settings"].get("scored") in SCORED:  # drawn questions: what memory holds
                evals[str(n)]["acc_first"] = out["val_acc_first"]
            if spec["settings"].get("scored") == "acc_open":
                evals[str(n)]["acc_open"] = out["val_acc_open"]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        curve = [json.loads(line) for line in f if '"eval"' in line]
    keep = ("iter", "val_loss", "val_acc_answer", "val_acc_token", "val_acc_first", "val_acc_open")
    return {
        **record,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "iters": ckpt["iter_num"],
        "tokens_seen": ckpt["tokens_seen"],
        "chance": ckpt["tokenizer_meta"].get("chance"),  # per answer token
        "chance_exact": ckpt["tokenizer_meta"].get("chance_exact"),  # of a whole answer (all its tokens right)
        "data": data_settings(ckpt["tokenizer_meta"]),
        "eval": evals,
        "curve": [{k: e[k] for k in keep if k in e} for e in curve],
    }


# -----------------------------------------------------------------------------
# the grid: which runs to make, the pool that makes them, their records (report.py reads them back)


def record_path(cfg: GridConfig, task: str, variant: str, seed: int) -> str:
    return os.path.join(cfg.out_dir, f"{task}_{variant}_seed{seed}.json")


def tracking_args(cfg: GridConfig, task: str, variant: str, seed: int) -> tuple[list[str], dict[str, str]]:
    """train.py's tracker settings for one run, and the environment that puts every run's trackio database in
    one folder (out_dir/trackio unless TRACKIO_DIR is set)."""
    if cfg.tracker == "none":
        return [], {}
    project = cfg.tracker_project or os.path.basename(os.path.abspath(cfg.out_dir))
    name = f"{task}-{variant}-seed{seed}"
    argv = [f"--tracker={cfg.tracker}", f"--tracker_project={project}", f"--tracker_run_name={name}",
            f"--tracker_group={task}"]  # fmt: skip
    folder = os.environ.get("TRACKIO_DIR") or os.path.join(os.path.abspath(cfg.out_dir), "trackio")
    return argv, {"TRACKIO_DIR": folder} if cfg.tracker == "trackio" else {}


def run_grid(cfg: GridConfig) -> list[dict[str, Any]]:
    """Prepare the data, run every cell that has no record of the same settings (jobs at a time), then write the
    table, summary and plots; returns every record. Failed runs are one ValueError at the end."""
    device = default_device() if cfg.device == "auto" else cfg.device
    check_device(device)  # here, not in each run: a device this machine lacks prepares no data
    dtype = default_dtype(device) if cfg.dtype == "auto" else cfg.dtype
    cfg.device, cfg.dtype = device, dtype
    check_writable_dir(cfg.out_dir)
    cfg.data_dir = cfg.data_dir or os.path.join(cfg.out_dir, "data")
    check_writable_dir(cfg.data_dir, "data_dir")
    on_cpu = device == "cpu"
    jobs = cfg.jobs or (os.cpu_count() or 1 if on_cpu else 1)
    threads = cfg.threads or (1 if on_cpu and jobs > 1 else max(1, (os.cpu_count() or 1) // jobs))
    os.makedirs(cfg.out_dir, exist_ok=True)
    records, todo = plan_runs(cfg, prepare_data(cfg), threads)
    again = sum(spec["trained"] is not None for spec in todo)
    print(
        f"{len(records)} runs already done, {len(todo)} to go ({again} of them trained already, only evaluated "
        f"again), {jobs} at a time on {device} ({threads} thread(s) each)"
    )
    failed = run_pool(cfg, todo, jobs, records)
    write_outputs(cfg.out_dir)
    if failed:
        raise ValueError(f"{len(failed)} run(s) failed, e.g. {failed[0]['task']}/{failed[0]['variant']}: "
                         f"{failed[0]['error']} (see its train.log)")  # fmt: skip
    return records


def plan_runs(
    cfg: GridConfig, data_dirs: dict[str, dict[int, str]], threads: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The grid's cells: (the records already made with the same settings, the specs of the runs to make)."""
    records, todo = [], []
    for task in cfg.task_list:
        # what every run of the task is evaluated on: segment length, batches, and data folder per segment count
        if task in TEXT:
            conf = read_config_file(cfg.text_config_for(task))
            T, batch_size, eval_iters = conf["block_size"], conf["batch_size"], cfg.text_eval_iters
            eval_dirs = {conf["n_segments"]: os.path.join(cfg.text_data_dir, conf["dataset"])}
            ensure_data(eval_dirs[conf["n_segments"]], conf["dataset"])
            evaluation: dict[str, Any] = {"eval_iters": eval_iters}
        else:
            T, batch_size, eval_iters = cfg.block_size, cfg.batch_size, cfg.eval_iters
            evals = task_lengths(task, cfg)[1]
            eval_dirs = {n: data_dirs[task][n] for n in evals}
            evaluation = {"eval_segments": evals, "eval_iters": eval_iters}
            if asks_again(task, cfg):  # older records of these tasks lack acc_open: evaluated again, or trained
                evaluation["scored"] = "acc_open"
        # seed by seed: a grid cut short holds every variant at its first seeds, comparable pair by pair
        for seed, variant in itertools.product(cfg.seeds, cfg.variants_for(task)):
            run_dir = os.path.join(cfg.out_dir, "runs", task, variant, f"seed{seed}")
            argv = train_args(task, variant, seed, cfg, run_dir)
            settings = {"argv": argv, **evaluation}
            if task in TEXT:  # the config file's contents too: editing it changes what a text run trains
                settings["text_config"] = {k: repr(v) for k, v in conf.items()}
            path = record_path(cfg, task, variant, seed)
            old = read_record(path)
            if old is not None and old.get("settings") == settings and "error" not in old:
                records.append(old)
                continue
            tracking, tracking_env = tracking_args(cfg, task, variant, seed)
            trained = old if same_training(old, settings, path, run_dir) else None
            todo.append(
                dict(task=task, variant=variant, seed=seed, settings=settings, argv=argv, run_dir=run_dir,
                     eval_dirs=eval_dirs, segment_len=T, eval_iters=eval_iters, batch_size=batch_size,
                     device=cfg.device, dtype=cfg.dtype, threads=threads, tracking=tracking,
                     tracking_env=tracking_env, trained=trained)
            )  # fmt: skip
    return records, todo


def same_training(old: dict[str, Any] | None, settings: dict[str, Any], path: str, run_dir: str) -> bool:
    """Whether a record's run trained exactly as these settings ask and its checkpoint is still the one it evaluated,
    so that only the evaluation (e.g. more segment counts) needs running again: the same train.py argv (and text
    config), and a checkpoint at the record's iterations saved before the record was written (a run of other
    settings since, even one cut short, has removed or rewritten it)."""
    if old is None or "error" in old or "settings" not in old:
        return False
    if {k: v for k, v in old["settings"].items() if k not in EVALUATION} != {
        k: v for k, v in settings.items() if k not in EVALUATION
    }:
        return False
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    if not os.path.isfile(ckpt_path) or os.path.getmtime(ckpt_path) > os.path.getmtime(path):
        return False
    try:
        ckpt = load_checkpoint(ckpt_path)
    except ValueError:
        return False
    return bool(ckpt.get("iter_num") == old.get("iters") and ckpt.get("tokens_seen") == old.get("tokens_seen"))


def run_pool(
    cfg: GridConfig, todo: list[dict[str, Any]], jobs: int, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run the specs jobs at a time, each record written as its run finishes and appended to records; returns the
    failed ones. Stopped by SIGTERM or SIGINT (to this process alone, or to its group), it stops the workers and
    their train.py runs; killed outright, the kernel does (die_with_parent). Runs that finished are recorded; the
    others rerun next time."""
    failed = []
    # both handlers are set here, since a process can start with SIGINT ignored (as under some test runners)
    main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    signals = (signal.SIGTERM, signal.SIGINT) if main_thread else ()
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=die_with_parent)
    try:
        futures = [pool.submit(run_one, spec) for spec in todo]
        # a bar on a terminal; in a log the line each finished run prints is the progress
        bar = tqdm(
            as_completed(futures), total=len(futures), desc="benchmark", dynamic_ncols=True, disable=not interactive()
        )
        for future in bar:
            rec = future.result()
            write_record(record_path(cfg, rec["task"], rec["variant"], rec["seed"]), rec)
            records.append(rec)
            tqdm.write(describe(rec, cfg))
            if "error" in rec:
                failed.append(rec)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers()
        print(f"benchmark: interrupted; {len(records)} runs are recorded and are not run again, the others start "
              f"over next time", file=sys.stderr)  # fmt: skip
        raise SystemExit(130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    pool.shutdown()
    return failed


def stop_workers() -> None:
    """SIGTERM to this process's workers and the train.py runs they started (all its descendants but
    multiprocessing's resource tracker, which must outlive the pool to release its locks)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "resource_tracker" not in " ".join(child.cmdline()):
                child.terminate()


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM or SIGINT: stop the grid (see run_grid). Later signals are ignored until run_grid has stopped its
    workers: a second one (Ctrl-C pressed twice; `uv run` forwarding a signal the process also got) would otherwise
    cut the stop short and leave the runs training."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def write_record(path: str, rec: dict[str, Any]) -> None:
    """Whole or not at all: to a temporary file, then renamed, so an interrupted grid leaves no half record."""
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(path + ".tmp", path)


def describe(rec: dict[str, Any], cfg: GridConfig) -> str:
    name = f"{rec['task']} {rec['variant']} seed {rec['seed']}"
    if "error" in rec:
        return f"{name}: FAILED: {rec['error']}"
    if rec["task"] in TEXT:
        return f"{name}: val loss {next(iter(rec['eval'].values()))['loss']:.4f} ({rec['train_seconds']:.0f} s)"
    several = (rec.get("chance_exact") or rec["chance"]) < rec["chance"]  # mqar, copy: say the per-token accuracy
    key, what = ("acc_token", "answer-token accuracy") if several else ("acc_answer", "answer accuracy")
    accs = ", ".join(f"{n}: {e[key]:.3f}" for n, e in rec["eval"].items())
    scored = ""
    for key, (label, _) in SCORED.items():
        if all(key in e for e in rec["eval"].values()) and rec["settings"].get("scored") in SCORED:
            scored += f"; {label} {{" + ", ".join(f"{n}: {e[key]:.3f}" for n, e in rec["eval"].items()) + "}"
    return f"{name}: {what} by segments {{{accs}}}{scored} ({rec['train_seconds']:.0f} s)"


def main(argv: list[str]) -> list[dict[str, Any]]:
    try:
        (cfg,) = configure(argv, GridConfig())
    except ConfigError as e:
        fail(str(e))
    try:
        if cfg.compare:
            return compare_recipes([f for f in cfg.compare.split(",") if f], cfg.out_dir)
        if cfg.capacity:
            compare_capacity([f for f in cfg.capacity.split(",") if f], cfg.out_dir)
            return []
        return run_grid(cfg)
    except ValueError as e:  # a bad setting, data prepared otherwise, or failed runs: one line
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
