"""
The memory benchmark: does memory carry information across segments, and do k experts carry it better than one?

$ python benchmark.py                                    # recall: off, k=1, k=4 and three k=4 ablations, 3 seeds
$ python benchmark.py --tasks=recall,copy,needle --variants=off,k1,k2,k4,k8 --seeds=1,2,3,4,5
$ python benchmark.py --tasks=shakespeare_char --variants=off,k1,k4,full     # real text: val loss per segment
$ python benchmark.py --out_dir=results/pycode --tasks=pycode_char --variants=off,k1,k4-top2-shared,full
$ python benchmark.py --device=cuda --jobs=1 --n_layer=4 --n_embd=128 --max_iters=10000   # scaled up on a GPU
$ python benchmark.py --tracker=trackio && python dashboard.py --trackio_dir=results/trackio   # watch it train
$ python benchmark.py --compare=results/a,results/b:k1 --out_dir=results   # recipes side by side, nothing trained

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
- table.md (mean +- sample std over seeds; text: also each variant minus no memory with the same positions, seed
  by seed, and the share of the gap to full attention it closes), summary.json, accuracy_vs_segments.png,
  accuracy_vs_episodes.png, pairs_stored.png (tasks with pairs) and <task>_loss.png (text: loss per segment and per
  position).
With --compare=<out_dir>[:<variant>],... nothing trains: the folders' records are read and out_dir gets recipes.md
(a row per folder and variant: the settings that differ from the same variant's other rows, steps, batch, episodes,
the accuracy at the trained length per seed, mean +- std, the seeds at >= 0.95, seconds a run and device) and
recipes.png (accuracy against episodes seen, and each seed's final accuracy against its run's seconds).
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
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
from tracking import TRACKERS

ROOT = Path(__file__).resolve().parent
SYNTHETIC = ("recall", "copy", "needle")  # and mqar<P>: multi-query associative recall with P pairs
# the synthetic tasks' prepare.py settings that folders prepared before them do not name, at their defaults
PREPARE_DEFAULTS = {"--queries": "shuffled", "--n_queries": "0", "--train_min_pairs": "0", "--context_pairs": "1"}
# the settings of a record that change only its evaluation: a cell asked again with other values of these alone is
# evaluated again from its checkpoint, not trained again (same_training)
EVALUATION = ("eval_segments", "eval_iters", "scored")
# text tasks and the config each trains: the quick start on tiny-shakespeare; 8 segments of Python source code, where
# names defined far above are used below (data/pycode_char)
TEXT = {"shakespeare_char": "config/train_gmm_shakespeare.py", "pycode_char": "config/train_gmm_pycode.py"}
LEARNED = 0.9  # answer accuracy at the trained length from which a run counts as having learned its task
# what a drawn-questions task can be scored on (records' settings["scored"]), and what each counts; acc_open is the
# grid's: once the other keys were answered, a first-asked key's value can follow by elimination
SCORED = {"acc_first": ("first-asked keys", "a key asked again has its answer in context"),
          "acc_open": ("opening questions", "each episode's first: no answer before it can inform it")}  # fmt: skip
NUM = r"\d+(?:\.\d+)?"  # a number in a variant name: 2, 0.5, 0.003 ('-' joins ablations, so none is negative)
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
WHOLE_MODEL = ("rope", "warmup", "shift")  # flags that apply without memory too (off-rope, full-rope), as lr<x> does
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


def mqar_pairs(task: str) -> int | None:
    """P for a multi-query associative recall task named mqar<P>, else None."""
    match = re.fullmatch(r"mqar([1-9]\d*)", task)
    return int(match.group(1)) if match else None


def spread_keys(task: str) -> int | None:
    """For the spread tasks (data/spread): 0 for spread (one new key a segment, all asked), K for rewrite<K> (K keys
    written again and again, the latest value asked); None for other tasks."""
    if task == "spread":
        return 0
    match = re.fullmatch(r"rewrite([1-9]\d*)", task)
    return int(match.group(1)) if match else None


def is_synthetic(task: str) -> bool:
    return task in SYNTHETIC or mqar_pairs(task) is not None or spread_keys(task) is not None


def task_order(task: str) -> tuple[int, int, str]:
    """recall, copy, needle, mqar by P, spread, rewrite by K, then text."""
    if task in TEXT:
        return (3, 0, task)
    if (K := spread_keys(task)) is not None:
        return (2, K, task)
    P = mqar_pairs(task)
    return (1, P, task) if P is not None else (0, SYNTHETIC.index(task) if task in SYNTHETIC else 0, task)


def pairs_asked(task: str, n_segments: int) -> int | None:
    """How many key-value pairs an episode of the task asks for (what stored_pairs counts against): mqar<P> P,
    spread one a segment but the last, rewrite<K> K; None for tasks without pairs."""
    if (P := mqar_pairs(task)) is not None:
        return P
    K = spread_keys(task)
    return None if K is None else (K or max(1, n_segments - 1))


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
    in parallel must not race to write the same folder). Returns task -> segment count -> data folder."""
    dirs: dict[str, dict[int, str]] = {}
    for task in cfg.task_list:
        if task in TEXT:
            continue
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
        dirs[task] = {n: episode_dir(base, meta, n, cfg.block_size) for n in sorted(trained | set(evals))}
        for n, folder in dirs[task].items():
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
# the grid, the table and the plots


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


def read_record(path: str) -> dict[str, Any] | None:
    """A run's record, or None if there is none (or only an unreadable one, which is run again)."""
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return None


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


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def variant_order(variant: str) -> tuple[int, int, str]:
    """off first, then k1..k8 (each before its ablations), then xl and full."""
    head = variant.split("-")[0]
    if head in ("off", "xl", "full"):
        return ({"off": 0, "xl": 2, "full": 3}[head], 0, variant)
    return (1, int(head[1:]), variant)


def run_settings(rec: dict[str, Any]) -> dict[str, str]:
    """A record's train.py --key=value settings, as strings."""
    return dict(a[2:].split("=", 1) for a in rec["settings"]["argv"] if a.startswith("--"))


def learned_at(rec: dict[str, Any]) -> int | None:
    """The first iteration whose evaluation (at the trained length) reached LEARNED accuracy, or None: answer
    accuracy, or per answer token on tasks whose answers have several tokens (mqar's P values, copy's string)."""
    key = curve_key(rec)
    return next((e["iter"] for e in rec.get("curve", []) if e.get(key, 0.0) >= LEARNED), None)


def curve_key(rec: dict[str, Any]) -> str:
    """The accuracy a synthetic run's curve is read by: per answer token where answers have several tokens (and
    the curve records it; on opening questions, or first-asked keys, where the run is scored so), else per answer."""
    several = (rec.get("chance_exact") or rec["chance"]) < rec["chance"]
    curve = rec.get("curve", [])
    scored = rec["settings"].get("scored")
    if several and scored in SCORED and any(f"val_{scored}" in e for e in curve):
        return f"val_{scored}"
    has_token = any("val_acc_token" in e for e in curve)
    return "val_acc_token" if several and has_token else "val_acc_answer"


def learning_curve(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Accuracy at the trained length against training episodes seen (iterations x batch x accumulation), mean and
    std over the runs, at the evaluations every run made: per answer token where answers have several, else per
    answer (as learned_at reads it)."""
    keys = {curve_key(r) for r in runs}
    key = keys.pop() if len(keys) == 1 else "val_acc_token"  # older records beside newer: what they all have
    curves = [{e["iter"]: e[key] for e in r.get("curve", []) if key in e} for r in runs]
    iters = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    settings = run_settings(runs[0])
    per_iter = int(settings.get("batch_size", 1)) * int(settings.get("gradient_accumulation_steps", 1))
    stats = [mean_std([c[it] for c in curves]) for it in iters]
    return {"episodes": [it * per_iter for it in iters], "mean": [m for m, _ in stats], "std": [s for _, s in stats]}


def accuracy_stats(runs: list[dict[str, Any]], n: str, key: str) -> dict[str, Any]:
    """Mean, sample std, min, max and the values over runs of one accuracy at segment count n."""
    accs = [r["eval"][n][key] for r in runs]
    mean, std = mean_std(accs)
    return {"mean": mean, "std": std, "min": min(accs), "max": max(accs), "values": accs}


def stored_pairs(n_pairs: int, n_values: int, accuracy: float) -> float:
    """How many of n_pairs key-value pairs a model holds, from its accuracy per value over n_values possible values
    (ARMT's estimator, arXiv 2407.04841): if s pairs are stored and the others guessed at random, accuracy is
    (s + (n - s) / v) / n, so s = n (v a - 1) / (v - 1): 0 at chance, n when every value is right."""
    return n_pairs * (n_values * accuracy - 1) / (n_values - 1)


def multi_token(cells: dict[str, Any]) -> bool:
    """Whether a task's answers have several tokens (copy): then per-token accuracy says more than exact match."""
    first = next(iter(cells.values()))
    return first["chance_exact"] < first["chance"] and all("acc_token" in c for c in cells.values())


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and variant: per segment count, mean/std/min/max of answer accuracy (synthetic) or of the loss per
    segment (text), over the seeds that finished."""
    out: dict[str, Any] = {}
    done = [r for r in records if "error" not in r]
    for task in sorted({r["task"] for r in done}, key=task_order):
        out[task] = {}
        for variant in sorted({r["variant"] for r in done if r["task"] == task}, key=variant_order):
            runs = sorted((r for r in done if (r["task"], r["variant"]) == (task, variant)), key=lambda r: r["seed"])
            cell: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "params": runs[0]["params"],
                                    "train_seconds": mean_std([r["train_seconds"] for r in runs])[0],
                                    "setup": run_settings(runs[0]), "data": runs[0].get("data", {})}  # fmt: skip
            if task in TEXT:
                (n,) = runs[0]["eval"]
                per_seg = np.array([r["eval"][n]["seg_loss"] for r in runs])  # (seeds, S)
                cell["seg_loss"] = [mean_std(list(col)) for col in per_seg.T]
                cell["loss"] = mean_std([r["eval"][n]["loss"] for r in runs])
                later = per_seg[:, 1:].mean(axis=1)  # segments 2..S: where memory can help
                cell["later_loss"] = mean_std(list(later))
                cell["later_by_seed"] = by_seed(runs, later)
                cell["first_by_seed"] = by_seed(runs, per_seg[:, 0])
                if all("pos_loss" in r["eval"][n] for r in runs):
                    pos = np.array([r["eval"][n]["pos_loss"] for r in runs])  # (seeds, L)
                    cell["pos_loss"] = pos.mean(axis=0).round(4).tolist()
                    starts, rest = segment_starts(pos, per_seg.shape[1])
                    cell["start_loss"], cell["rest_loss"] = mean_std(list(starts)), mean_std(list(rest))
                    cell["start_by_seed"], cell["rest_by_seed"] = by_seed(runs, starts), by_seed(runs, rest)
                cell["iters"] = runs[0].get("iters")
                if all("tokens_seen" in r for r in runs):  # over the run's wall time, evaluations and start-up included
                    cell["tokens_per_s"] = float(np.median([r["tokens_seen"] / r["train_seconds"] for r in runs]))
            else:
                cell["chance"] = runs[0]["chance"]
                cell["chance_exact"] = runs[0].get("chance_exact") or runs[0]["chance"]
                cell["learned_at"] = [learned_at(r) for r in runs]  # per seed: first iteration at >= LEARNED
                cell["curve"] = learning_curve(runs)
                counts = evaluated_everywhere(runs)  # a seed evaluated at fewer lengths (an older record) limits it
                cell["acc"] = {n: accuracy_stats(runs, n, "acc_answer") for n in counts}
                for key in ("acc_token", *SCORED):
                    if all(key in r["eval"][n] for r in runs for n in counts):
                        cell[key] = {n: accuracy_stats(runs, n, key) for n in counts}
            out[task][variant] = cell
    return out


def evaluated_everywhere(runs: list[dict[str, Any]]) -> list[str]:
    """The segment counts at which every one of the runs was evaluated, in increasing order."""
    common = set.intersection(*(set(r["eval"]) for r in runs))
    return sorted(common, key=int)


def columns_of(cells: dict[str, Any], key: str) -> list[str]:
    """The segment counts any cell has for key (acc, acc_token), in increasing order: a table's columns."""
    return sorted({n for cell in cells.values() for n in cell.get(key, {})}, key=int)


def by_seed(runs: list[dict[str, Any]], values: np.ndarray) -> dict[str, float]:
    """{seed: value} for one value per run, in the runs' order (what paired comparisons match on)."""
    return {str(r["seed"]): float(v) for r, v in zip(runs, values, strict=True)}


def segment_starts(pos_loss: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (runs, L) losses per position, over segments 2..S: the mean of each segment's first eighth of
    positions, which see the fewest tokens of their own segment (where carried context should help most), and the
    mean of the rest of their positions."""
    T = pos_loss.shape[1] // S
    head = max(1, T // 8)
    starts = np.concatenate([pos_loss[:, s * T : s * T + head] for s in range(1, S)], axis=1)
    rest = np.concatenate([pos_loss[:, s * T + head : (s + 1) * T] for s in range(1, S)], axis=1)
    return starts.mean(axis=1), (rest.mean(axis=1) if rest.size else starts.mean(axis=1))


def format_tables(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for task, cells in summary.items():
        if task in TEXT:
            lines += text_table(task, cells)
            continue
        first = next(iter(cells.values()))
        counts, setup = columns_of(cells, "acc"), first["setup"]
        seeds = sorted({seed for cell in cells.values() for seed in cell["seeds"]})  # every variant's, not the first's
        trained = (
            f"trained on {setup['n_segments']} segments of {setup['block_size']} tokens (curriculum "
            f"{setup['segment_curriculum']}), {setup['max_iters']} iterations; seeds {seeds}"
        )
        columns = "| variant | params | " + " | ".join(f"{n} seg" for n in counts) + " |"
        lines += [
            f"### {task}: answer accuracy, every answer token right (mean ± std over seeds; best seed in brackets), "
            f"chance {first['chance_exact']:.3g}",
            "",
            trained,
            "",
            f"{columns} learned (≥ {LEARNED}) |",
            "|---|---|" + "---|" * (len(counts) + 1),
        ]
        for variant, cell in cells.items():
            hits = [it for it in cell["learned_at"] if it is not None]
            median = f", median step {np.median(hits):.0f}" if hits else ""
            row = accuracy_row(variant, cell, "acc", counts)
            lines.append(row + f" {len(hits)}/{len(cell['learned_at'])}{median} |")
        lines += [
            "",
            f"learned: seeds whose evaluation at the trained length reached {LEARNED} accuracy (per answer token "
            "where answers have several) during training, and the median first step it did (evaluations every "
            "eval_interval steps)",
            "",
        ]
        if multi_token(cells):
            lines += accuracy_table(f"{task}: answer-token accuracy", cells, "acc_token", counts, trained)
        if pairs_asked(task, 1) is not None and capacity_cells(cells):
            lines += capacity_table(task, round(1 / first["chance"]), cells, trained)
    return "\n".join(lines)


def capacity_key(cells: dict[str, Any]) -> str:
    """The per-value accuracy a task's pairs stored are counted from: acc_open (each episode's opening question)
    where every cell has it, else acc_first (first-asked keys), else acc_token (every answer; the same where no key
    is asked twice)."""
    return next((k for k in ("acc_open", "acc_first") if all(k in c for c in cells.values())), "acc_token")


def capacity_table(task: str, n_values: int, cells: dict[str, Any], trained: str) -> list[str]:
    """mqar, spread, rewrite: the pairs each variant stores (stored_pairs of each seed's per-value accuracy on
    first-asked keys where the records have it), mean ± std over seeds and the best seed, at every evaluated segment
    count, of the pairs asked there."""
    key = capacity_key(cells)
    counts = columns_of(cells, key)
    asked = {n: pairs_asked(task, int(n)) or 0 for n in counts}
    rows = []
    for variant, cell in cells.items():
        stored = stored_by_length(task, cell, n_values, key)
        row = [pairs_cell(stored[n]) if n in stored else "-" for n in counts]
        rows.append(f"| {variant} | " + " | ".join(row) + " |")
    first = []
    if key in SCORED:
        label, why = SCORED[key]
        first = accuracy_table(f"{task}: per-value accuracy on {label} ({why})", cells, key, counts, trained)
    source = SCORED[key][0] if key in SCORED else "every answer"
    title = (f"{task}: pairs stored (ARMT's estimator from the per-value accuracy on {source}, {n_values} values; "
             "mean ± std over seeds, best seed in brackets)")  # fmt: skip
    columns = ["variant", *(f"{n} seg, of {asked[n]}" for n in counts)]
    return [
        *first,
        *table_section(title, trained, columns, rows),
        *paired_capacity_table(task, asked, n_values, cells, trained, key),
    ]


def pairs_cell(stored: list[float]) -> str:
    """Pairs stored over seeds as a table shows them: mean ± std (best seed)."""
    mean, std = mean_std(stored)
    return f"{mean:.2f} ± {std:.2f} ({max(stored):.2f})"


def stored_by_length(task: str, cell: dict[str, Any], n_values: int, key: str) -> dict[str, list[float]]:
    """{segment count: the pairs each seed stores there} of one variant (stored_pairs of its per-value accuracy key,
    capacity_key's for every cell of a task, against the pairs the task asks at that length)."""
    return {
        n: [stored_pairs(pairs_asked(task, int(n)) or 0, n_values, a) for a in acc["values"]]
        for n, acc in cell[key].items()
    }


def one_bank(variant: str, cells: dict[str, Any]) -> str | None:
    """The one-bank variant a memory variant's capacity is compared with: k1 with the same flags that apply to the
    whole model (rope, warmup, shift, lr<x>); None for that variant itself, for off, xl and full, and where the grid
    has none."""
    head, *mods = variant.split("-")
    if head in ("off", "xl", "full"):
        return None
    wanted = [m for m in mods if m in WHOLE_MODEL or re.fullmatch(rf"lr{NUM}", m)]
    same = "-".join(["k1", *wanted])
    return same if same in cells and same != variant else None


def read_slots(cell: dict[str, Any]) -> int:
    """The memory slots a variant's text reads (from its settings): a bank's slots, all k banks' under concat."""
    setup = cell["setup"]
    slots = int(setup.get("gmm_slots", GridConfig.gmm_slots))
    return slots * int(setup.get("gmm_experts", 1)) if setup.get("gmm_read") == "concat" else slots


def same_read_slots_bank(variant: str, cells: dict[str, Any]) -> str | None:
    """For a variant that reads more slots than its one bank (concat: k banks of M), the one-bank variant with the
    same whole-model flags reading as many (k1-slots<kM>), where the grid has it; else None."""
    base = one_bank(variant, cells)
    if base is None or read_slots(cells[variant]) == read_slots(cells[base]):
        return None
    wanted = sorted(base.split("-")[1:])
    for name, cell in cells.items():
        head, *mods = name.split("-")
        kept = sorted(m for m in mods if not re.fullmatch(r"slots\d+", m))
        if head == "k1" and name != variant and kept == wanted and read_slots(cell) == read_slots(cells[variant]):
            return name
    return None


def paired_capacity_table(
    task: str, asked: dict[str, int], n_values: int, cells: dict[str, Any], trained: str, key: str
) -> list[str]:
    """Each memory variant's stored pairs minus its one bank's (one_bank), and minus the one bank that reads as many
    slots where that differs (same_read_slots_bank), seed by seed (the same batches in the same order), at every
    segment count: mean ± std, the seeds above, and two-sided p-values of a paired t-test and of an exact sign-flip
    test (which needs no normality, and cannot go below 2 / 2^seeds)."""
    rows = []
    pairs = [(v, b) for v in cells for b in (one_bank(v, cells), same_read_slots_bank(v, cells)) if b is not None]
    for variant, base in pairs:
        cell = cells[variant]
        row = [variant, base]
        for n in asked:
            if n not in cell[key] or n not in cells[base][key]:
                row.append("-")
                continue
            diffs = seed_diffs(*(by_seed_values(task, c, n, n_values, key) for c in (cell, cells[base])))
            if not diffs:
                row.append("-")
                continue
            mean, std = mean_std(diffs)
            above = f"[{sum(d > 0 for d in diffs)}/{len(diffs)}]"
            row.append(f"{mean:+.2f} ± {std:.2f} {above}, p {paired_t_p(diffs):.2g} / {sign_flip_p(diffs):.2g}")
        rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return [
        f"### {task}: pairs stored against one bank, paired by seed (variant minus one bank, k1 with M slots, and "
        "minus the one bank reading as many slots where the variant reads more; positive: holds more)",
        "",
        trained,
        "",
        "| variant | one bank | " + " | ".join(f"{n} seg, of {k}" for n, k in asked.items()) + " |",
        "|---|---|" + "---|" * len(asked),
        *rows,
        "",
        "each cell: mean ± std of the differences over the seeds both have, [seeds where the variant holds more / "
        "seeds], then two-sided p of a paired t-test / of an exact sign-flip test (no normality assumed; its "
        "smallest possible value is 2 / 2^seeds, 0.0625 at 5 seeds)",
        "",
    ]


def by_seed_values(task: str, cell: dict[str, Any], n: str, n_values: int, key: str) -> dict[str, float]:
    """{seed: pairs stored} of one cell at segment count n (keyed as by_seed keys), from per-value accuracy key."""
    return dict(zip(map(str, cell["seeds"]), stored_by_length(task, cell, n_values, key)[n], strict=True))


def seed_diffs(mine: dict[str, float], theirs: dict[str, float]) -> list[float]:
    """mine minus theirs, seed by seed, over the seeds both have (what every paired comparison here rests on)."""
    return [mine[s] - theirs[s] for s in mine if s in theirs]


def paired_t_p(diffs: list[float]) -> float:
    """Two-sided p-value of a paired t-test of mean(diffs) = 0, from Student's t with n - 1 degrees of freedom
    (the closed forms of Abramowitz & Stegun 26.7.3-4 for integer degrees); 1.0 for fewer than 2 values or no
    spread unless every difference is the same non-zero value (then 0.0)."""
    n = len(diffs)
    mean, std = mean_std(diffs)
    if n < 2 or std == 0:
        return 0.0 if n >= 2 and mean != 0 else 1.0
    t, df = abs(mean) / (std / math.sqrt(n)), n - 1
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: A = 2/pi (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...)), terms up to c^(df-3)
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:  # even: A = sin (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...), terms up to c^(df-2)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return max(0.0, 1.0 - inside)


def sign_flip_p(diffs: list[float]) -> float:
    """Two-sided p-value of an exact paired sign-flip (permutation) test: the share of the 2^n sign patterns whose
    mean is at least as far from 0 as the observed one."""
    a = np.asarray(diffs, dtype=np.float64)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(a))))
    observed = abs(a.mean())
    return float(np.mean(np.abs((signs * a).mean(axis=1)) >= observed - 1e-12))


def accuracy_table(title: str, cells: dict[str, Any], key: str, counts: list[str], trained: str) -> list[str]:
    """A table of one accuracy of a synthetic task's cells, a row per variant and a column per segment count."""
    chance = next(iter(cells.values()))["chance"]
    return table_section(
        f"{title} (mean ± std over seeds; best seed in brackets), chance {chance:.4f}",
        trained,
        ["variant", "params", *(f"{n} seg" for n in counts)],
        [accuracy_row(variant, cell, key, counts) for variant, cell in cells.items()],
    )


def table_section(title: str, trained: str, columns: list[str], rows: list[str]) -> list[str]:
    """A table.md section: its '### title', the line saying how the runs were trained, then the table."""
    return ["### " + title, "", trained, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""]


def accuracy_row(variant: str, cell: dict[str, Any], key: str, counts: list[str]) -> str:
    """'| variant | params | mean ± std (best) | ... |' for one accuracy of a synthetic task's cell."""
    row = [f"{a['mean']:.3f} ± {a['std']:.3f} ({a['max']:.2f})" if (a := cell[key].get(n)) else "-" for n in counts]
    return f"| {variant} | {cell['params'] / 1e6:.3f}M | " + " | ".join(row) + " |"


def text_table(task: str, cells: dict[str, Any]) -> list[str]:
    """Two tables: the loss per segment of every variant; then each variant against no memory with the same
    positions (off, or off-rope for a rope variant and xl), paired by seed, and the share it closes of the gap
    between that no-memory model and its best full-attention model (the bound)."""
    S = len(next(iter(cells.values()))["seg_loss"])
    lines = [f"### {task}: val loss per segment (mean ± std over seeds)", "",
             "| variant | params | " + " | ".join(f"seg {i + 1}" for i in range(S)) + " | segs 2-S | starts 2-S "
             "| rest 2-S | tokens/s |", "|---|---|" + "---|" * (S + 4)]  # fmt: skip
    for variant, cell in cells.items():
        segs = [f"{m:.3f} ± {s:.3f}" for m, s in cell["seg_loss"]]
        speed = f"{cell['tokens_per_s']:,.0f}" if "tokens_per_s" in cell else "-"
        parts = [pm(cell.get(k)) for k in ("later_loss", "start_loss", "rest_loss")]
        lines.append(f"| {variant} | {cell['params'] / 1e6:.2f}M | " + " | ".join([*segs, *parts, speed]) + " |")
    seeds = sorted({seed for cell in cells.values() for seed in cell["seeds"]})
    iters = sorted({cell["iters"] for cell in cells.values() if cell.get("iters")})
    lines += ["", f"seeds {seeds} (a cell with ± 0.000 has one); iterations {iters}. starts 2-S: the loss on the "
              "first eighth of each of segments 2-S, which sees least of its own segment; rest 2-S: the other "
              "seven eighths. tokens/s: training tokens over the run's wall time (evaluations included, the grid's "
              "runs sharing the machine), median over seeds", ""]  # fmt: skip
    return lines + paired_table(task, cells)


def paired_table(task: str, cells: dict[str, Any]) -> list[str]:
    """Each variant minus its no-memory baseline, seed by seed (the same batches in the same order): mean ± std of
    the differences, and how many seeds are below; the gap closed on segments 2-S and on their starts."""
    rows = []
    for variant, cell in cells.items():
        base = baseline(variant, cells)
        if base is None:
            continue
        bound = upper_bound(variant, cells)
        row = [variant, base]
        for key in ("first_by_seed", "later_by_seed", "start_by_seed", "rest_by_seed"):
            row.append(paired_difference(cell, cells[base], key))
        row += [
            gap_closed(cell, cells[base], cells[bound] if bound else None, k)
            for k in ("later_by_seed", "start_by_seed")
        ]
        rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return [
        f"### {task}: against no memory, paired by seed (variant minus baseline; negative is better)",
        "",
        "| variant | baseline | seg 1 | segs 2-S | starts 2-S | rest 2-S | gap closed, segs 2-S | gap closed, starts |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "each difference: mean ± std over the seeds both have, then [seeds below the baseline / seeds]. baseline: "
        "no memory with the same positions. gap closed: (baseline - variant) / (baseline - bound), the bound being "
        "the best full-attention variant with the same positions; '-' where there is none or it is no better than "
        "the baseline",
        "",
    ]


def positions(variant: str) -> str:
    """A variant's position embeddings: 'rope' (the rope flag, and xl, which always has it) or 'learned'."""
    parts = variant.split("-")
    return "rope" if "rope" in parts or parts[0] == "xl" else "learned"


def baseline(variant: str, cells: dict[str, Any]) -> str | None:
    """The no-memory variant a variant is compared with: the 'off' one with the same flags that off takes (rope,
    warmup: the same batches, lr<x>) if the grid has it, else the plainest (fewest flags) with the same positions;
    None for that variant itself and where there is none."""
    offs = [v for v in cells if v.split("-")[0] == "off" and positions(v) == positions(variant)]
    wanted = {m for m in variant.split("-")[1:] if m in WHOLE_MODEL or re.fullmatch(rf"lr{NUM}", m)}
    wanted |= {"rope"} if positions(variant) == "rope" else set()  # xl has rope without the flag
    same = [v for v in offs if set(v.split("-")[1:]) == wanted]
    best = same[0] if same else min(offs, key=lambda v: len(v.split("-")), default=None)
    return None if best == variant else best


def upper_bound(variant: str, cells: dict[str, Any]) -> str | None:
    """The full-attention variant with the same positions and the lowest loss on segments 2-S, or None."""
    fulls = [v for v in cells if v.split("-")[0] == "full" and positions(v) == positions(variant)]
    return min(fulls, key=lambda v: cells[v]["later_loss"][0], default=None)


def paired_difference(cell: dict[str, Any], base: dict[str, Any], key: str) -> str:
    """'+0.012 ± 0.004 [1/5]': the mean ± std over shared seeds of cell minus base (key: a value per seed), and the
    seeds where cell is below; '-' if either lacks it."""
    if key not in cell or key not in base:
        return "-"
    diffs = seed_diffs(cell[key], base[key])
    if not diffs:
        return "-"
    mean, std = mean_std(diffs)
    return f"{mean:+.3f} ± {std:.3f} [{sum(d < 0 for d in diffs)}/{len(diffs)}]"


def gap_closed(cell: dict[str, Any], base: dict[str, Any], bound: dict[str, Any] | None, key: str) -> str:
    """The share of the baseline -> bound difference that cell closes (key: a value per seed; each difference is
    the mean over the seeds its two sides share), or '-'."""
    if bound is None or key not in cell or key not in base or key not in bound:
        return "-"

    def gain(other: dict[str, Any]) -> float:
        seeds = [s for s in other[key] if s in base[key]]
        return float(np.mean([base[key][s] - other[key][s] for s in seeds])) if seeds else float("nan")

    gap = gain(bound)
    return f"{100 * gain(cell) / gap:.0f}%" if gap > 0 else "-"


def pm(stat: Any) -> str:
    """'mean ± std' of a (mean, std) pair, '-' for None."""
    return "-" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f}"


def plot(summary: dict[str, Any], out_dir: str) -> list[str]:
    """accuracy_vs_segments.png (one panel per synthetic task) and <task>_loss.png per text task; returns the paths."""
    synthetic = {t: c for t, c in summary.items() if is_synthetic(t) and c}
    paths = [plot_synthetic(synthetic, out_dir), plot_learning(synthetic, out_dir)] if synthetic else []
    with_pairs = {t: c for t, c in synthetic.items() if pairs_asked(t, 1) is not None and capacity_cells(c)}
    if with_pairs:
        paths.append(plot_capacity(with_pairs, out_dir))
    return paths + [plot_text(task, cells, out_dir) for task, cells in summary.items() if task in TEXT and cells]


def capacity_cells(cells: dict[str, Any]) -> bool:
    """Whether a task's cells have the per-value accuracy the pairs stored are counted from."""
    return all("acc_token" in c for c in cells.values())


def variant_colors(variants: set[str]) -> dict[str, Any]:
    """One colour per variant, the same in every panel of a figure."""
    import matplotlib

    ordered = sorted(variants, key=variant_order)
    cmap = matplotlib.colormaps["tab20" if len(ordered) > 10 else "tab10"]  # an int picks the cmap's i-th colour
    return {v: cmap(i % cmap.N) for i, v in enumerate(ordered)}


def draw_seeds(ax: Any, by_x: dict[int, list[float]], color: Any, label: str, clip: tuple[float, float]) -> None:
    """A variant's line over x: the mean over seeds, a band of +- one std (clipped to what the measure can be), and
    every seed faint."""
    x = sorted(by_x)
    mean, std = (np.array(m) for m in zip(*(mean_std(by_x[n]) for n in x), strict=True))
    ax.plot(x, mean, marker="o", label=label, color=color)
    ax.fill_between(x, np.clip(mean - std, *clip), np.clip(mean + std, *clip), color=color, alpha=0.15)
    for n in x:
        ax.scatter([n] * len(by_x[n]), by_x[n], color=color, alpha=0.3, s=10)


def finish_panels(fig: Any, axes: Any, name: str, out_dir: str) -> str:
    """One legend for all the panels, right of the last, and the figure saved as out_dir/name."""
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=8, loc="center left",
                       bbox_to_anchor=(1.02, 0.5))  # fmt: skip
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=120)
    return path


def plot_capacity(with_pairs: dict[str, Any], out_dir: str) -> str:
    """pairs_stored.png: the pairs each variant stores (ARMT's estimator) against segment count, one panel per task
    with pairs, mean +- std over seeds and every seed faint, beside the pairs the task asks there."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(with_pairs), 4))
    axes = fig.subplots(1, len(with_pairs), squeeze=False)
    colors = variant_colors({v for cells in with_pairs.values() for v in cells})
    for ax, (task, cells) in zip(axes[0], with_pairs.items(), strict=True):
        n_values, key = round(1 / next(iter(cells.values()))["chance"]), capacity_key(cells)
        for variant, cell in cells.items():
            stored = stored_by_length(task, cell, n_values, key)
            draw_seeds(ax, {int(n): v for n, v in stored.items()}, colors[variant], variant, (-math.inf, math.inf))
        counts = sorted({int(n) for cell in cells.values() for n in cell[key]})
        asked = [pairs_asked(task, n) for n in counts]
        ax.plot(counts, asked, color="black", linestyle=":", linewidth=1, label="pairs asked (all stored)")
        ax.axhline(0, color="gray", linestyle="--", linewidth=1, label="none stored (chance)")
        ax.set(title=task, xlabel="segments per episode", ylabel="pairs stored (ARMT's estimator)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.grid(alpha=0.3)
    return finish_panels(fig, axes, "pairs_stored.png", out_dir)


def plot_learning(synthetic: dict[str, Any], out_dir: str) -> str:
    """accuracy_vs_episodes.png: accuracy at the trained length against training episodes seen, one panel per
    synthetic task, mean +- std over seeds per variant: how much each recipe learns per example."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(synthetic), 4))
    axes = fig.subplots(1, len(synthetic), squeeze=False)
    for ax, (task, cells) in zip(axes[0], synthetic.items(), strict=True):
        for variant, cell in cells.items():
            curve = cell.get("curve") or {"episodes": [], "mean": [], "std": []}
            x, mean, std = (np.array(curve[k]) for k in ("episodes", "mean", "std"))
            (line,) = ax.plot(x, mean, label=variant)
            ax.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=line.get_color(), alpha=0.15)
        ax.axhline(next(iter(cells.values()))["chance"], color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set(
            title=task, xlabel="training episodes seen", ylabel="val accuracy at the trained length", ylim=(-0.03, 1.03)
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "accuracy_vs_episodes.png")
    fig.savefig(path, dpi=120)
    return path


def plot_synthetic(synthetic: dict[str, Any], out_dir: str) -> str:
    """Accuracy against segment count, one panel per synthetic task: mean +- std over seeds, every seed faint."""
    from matplotlib.figure import Figure  # drawn without pyplot: no backend or global state is touched

    fig = Figure(figsize=(5.5 * len(synthetic), 4))
    axes = fig.subplots(1, len(synthetic), squeeze=False)
    colors = variant_colors({v for cells in synthetic.values() for v in cells})
    for ax, (task, cells) in zip(axes[0], synthetic.items(), strict=True):
        key = "acc_token" if multi_token(cells) else "acc"  # copy: per answer token, exact match is near 0
        if capacity_key(cells) in SCORED:  # drawn questions: what memory holds
            key = capacity_key(cells)
        for variant, cell in cells.items():
            by_n = {int(n): a["values"] for n, a in cell[key].items()}
            draw_seeds(ax, by_n, colors[variant], variant, (0, 1))  # accuracy lives in [0, 1]
        counts = sorted({int(n) for cell in cells.values() for n in cell[key]})
        chance = next(iter(cells.values()))["chance"]
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
        setup = next(iter(cells.values()))["setup"]
        trained = [*json.loads(setup["segment_curriculum"]), int(setup["n_segments"])]
        ax.axvspan(min(trained) - 0.2, max(trained) + 0.2, color="gray", alpha=0.1, label="trained lengths")
        plain = "answer-token accuracy" if key == "acc_token" else "answer accuracy"
        ylabel = f"accuracy on {SCORED[key][0]}" if key in SCORED else plain
        ax.set(title=task, xlabel="segments per episode", ylabel=ylabel, ylim=(-0.03, 1.03))
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.grid(alpha=0.3)
    return finish_panels(fig, axes, "accuracy_vs_segments.png", out_dir)


def plot_text(task: str, cells: dict[str, Any], out_dir: str) -> str:
    """A text task's val loss per segment (mean +- std over seeds) and, where recorded, per position; one colour
    per variant (up to 20) and one legend beside both panels."""
    import matplotlib
    from matplotlib.figure import Figure

    positions = all("pos_loss" in c for c in cells.values())
    fig = Figure(figsize=(14 if positions else 8, 4.5))
    axes = fig.subplots(1, 2 if positions else 1, squeeze=False)[0]
    cmap = matplotlib.colormaps["tab20" if len(cells) > 10 else "tab10"]
    colors = {v: cmap(i % cmap.N) for i, v in enumerate(cells)}
    for variant, cell in cells.items():
        mean = np.array([m for m, _ in cell["seg_loss"]])
        std = np.array([s for _, s in cell["seg_loss"]])
        segs = np.arange(1, len(mean) + 1)
        axes[0].errorbar(segs, mean, yerr=std, marker="o", capsize=3, label=variant, color=colors[variant])
    axes[0].set(title=f"{task}: val loss per segment", xlabel="segment", ylabel="val loss")
    axes[0].set_xticks(segs)
    if positions:  # mean over seeds, smoothed over 8 positions; segment boundaries dotted
        L = len(next(iter(cells.values()))["pos_loss"])
        width = min(8, L)
        for variant, cell in cells.items():
            smooth = np.convolve(cell["pos_loss"], np.ones(width) / width, mode="valid")
            axes[1].plot(np.arange(len(smooth)) + width / 2, smooth, label=variant, linewidth=1, color=colors[variant])
        for b in range(1, len(segs)):
            axes[1].axvline(b * L / len(segs), color="gray", linestyle=":", linewidth=0.8)
        axes[1].set(title=f"{task}: val loss per position (mean over seeds)", xlabel="position in the window",
                    ylabel="val loss")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    path = os.path.join(out_dir, f"{task}_loss.png")
    fig.savefig(path, dpi=120)
    return path


def read_records(out_dir: str) -> list[dict[str, Any]]:
    """Every whole run record in out_dir (<task>_<variant>_seed<S>.json), in name order."""
    records = []
    for name in sorted(os.listdir(out_dir)):
        if re.fullmatch(r".+_seed-?\d+\.json", name) and (rec := read_record(os.path.join(out_dir, name))):
            records.append(rec)
    return records


# settings that are no part of a recipe, or that recipes.md has a column for
PER_RUN = ("seed", "out_dir", "data_dir", "eval_interval", "log_interval", "device", "max_iters", "lr_decay_iters",
           "batch_size", "data.train_episodes", "data.val_episodes")  # fmt: skip


def scored_key(cell: dict[str, Any]) -> str:
    """The accuracy a synthetic cell is judged by: what its pairs stored are counted from where it asks a key
    again (capacity_key: opening questions, else first-asked keys), per answer token where answers have several
    tokens (multi_token), else per answer."""
    if (key := capacity_key({"": cell})) in SCORED:
        return key
    return "acc_token" if multi_token({"": cell}) else "acc"


def recipe_rows(folders: list[str]) -> list[dict[str, Any]]:
    """One row per folder (or folder:variant, that variant alone), synthetic task and variant: the settings that
    differ from the same variant's other rows (the recipe), the accuracy at the trained length per seed, the
    learning curve, and where the time went (steps, episodes, seconds a run, device)."""
    rows = []
    for entry in folders:
        folder, _, only = entry.partition(":")
        for task, cells in summarize(read_records(folder)).items():
            for variant, cell in cells.items():
                if not is_synthetic(task) or only not in ("", variant):
                    continue
                setup, key = {**cell["setup"], **{f"data.{k}": v for k, v in cell["data"].items()}}, scored_key(cell)
                trained = setup["n_segments"]
                steps, batch = int(setup["max_iters"]), int(setup["batch_size"])
                rows.append({"folder": os.path.basename(os.path.normpath(folder)), "task": task, "variant": variant,
                             "setup": setup, "key": key, "values": cell[key].get(trained, {}).get("values", []),
                             "curve": cell["curve"], "steps": steps, "episodes": steps * batch, "batch": batch,
                             "seconds": cell["train_seconds"], "device": setup.get("device", "cpu"),
                             "trained": trained})  # fmt: skip
    for task, variant in {(r["task"], r["variant"]) for r in rows}:  # a recipe differs from the same variant's others
        same = [r for r in rows if (r["task"], r["variant"]) == (task, variant)]
        keys = sorted({k for r in same for k in r["setup"]} - set(PER_RUN))
        differ = [k for k in keys if len({r["setup"].get(k) for r in same}) > 1]
        for r in same:
            r["recipe"] = ", ".join(f"{k}={r['setup'][k]}" for k in differ if k in r["setup"]) or "-"
    return rows


def recipes_table(rows: list[dict[str, Any]], bar: float) -> str:
    """recipes.md: a row per recipe, its accuracy at the trained length per seed, mean +- std, the seeds at the bar."""
    head = ["folder", "task", "variant", "recipe (settings that differ)", "steps", "batch", "episodes", "measure",
            "per seed", "mean ± std", f">= {bar}", "s a run (device)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = r["values"]
        mean, std = mean_std(vals) if vals else (math.nan, math.nan)
        per_seed = ", ".join(f"{v:.3f}" for v in vals) or "-"
        passed = f"{sum(v >= bar for v in vals)}/{len(vals)}"
        spread = f"{mean:.3f} ± {std:.3f}" if len(vals) > 1 else f"{mean:.3f} (one seed)"
        lines.append(f"| {r['folder']} | {r['task']} | {r['variant']} | {r['recipe']} | {r['steps']} | {r['batch']} | "
                     f"{r['episodes']:,} | {r['key']} at {r['trained']} seg | {per_seed} | {spread} | "
                     f"{passed} | {r['seconds']:.0f} ({r['device']}) |")  # fmt: skip
    return "\n".join(lines)


def plot_recipes(rows: list[dict[str, Any]], out_dir: str) -> str:
    """recipes.png: per task, accuracy at the trained length against training episodes seen (mean +- std over
    seeds, one line per recipe), and each seed's final accuracy against its training seconds."""
    from matplotlib.figure import Figure

    tasks = sorted({r["task"] for r in rows}, key=task_order)
    fig = Figure(figsize=(12, 4 * len(tasks)))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    for (curves, times), task in zip(axes, tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            label = f"{r['folder']} ({r['variant']})"
            x, mean, std = (np.array(r["curve"][k]) for k in ("episodes", "mean", "std"))
            (line,) = curves.plot(x, mean, label=label)
            curves.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=line.get_color(),
                                alpha=0.15)  # fmt: skip
            marker = "o" if r["device"] == "cpu" else "^"
            times.scatter([r["seconds"]] * len(r["values"]), r["values"], color=line.get_color(), marker=marker)
        curves.set(title=f"{task}: learning per example", xlabel="training episodes seen", ylim=(-0.03, 1.03),
                   ylabel="val accuracy at the trained length")  # fmt: skip
        times.set(title=f"{task}: final accuracy per seed (o cpu, ^ gpu)", xlabel="seconds a run (mean over seeds)",
                  ylabel="accuracy at the trained length", ylim=(-0.03, 1.03))  # fmt: skip
        for ax in (curves, times):
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        curves.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "recipes.png")
    fig.savefig(path, dpi=120)
    return path


def compare_recipes(folders: list[str], out_dir: str, bar: float = 0.95) -> list[dict[str, Any]]:
    """Read the grid folders' records (nothing trains), write out_dir/recipes.md and recipes.png; returns the rows."""
    for folder in (entry.partition(":")[0] for entry in folders):
        if not os.path.isdir(folder):
            raise ValueError(f"compare: '{folder}' is not a folder (name grid out_dirs, or out_dir:variant, "
                             "comma-separated)")  # fmt: skip
    rows = recipe_rows(folders)
    if not rows:
        raise ValueError(f"compare: no synthetic-task records in {', '.join(folders)}")
    check_writable_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    table = recipes_table(rows, bar)
    with open(os.path.join(out_dir, "recipes.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {plot_recipes(rows, out_dir)}")
    return rows


def write_outputs(out_dir: str) -> None:
    """table.md, summary.json and the plots, from every record in out_dir: the folder's tables cover all the grids
    run into it (each record is the latest run of its task, variant and seed)."""
    summary = summarize(read_records(out_dir))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = format_tables(summary)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    for path in plot(summary, out_dir):
        print(f"wrote {path}")


def main(argv: list[str]) -> list[dict[str, Any]]:
    try:
        (cfg,) = configure(argv, GridConfig())
    except ConfigError as e:
        fail(str(e))
    try:
        if cfg.compare:
            return compare_recipes([f for f in cfg.compare.split(",") if f], cfg.out_dir)
        return run_grid(cfg)
    except ValueError as e:  # a bad setting, data prepared otherwise, or failed runs: one line
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
