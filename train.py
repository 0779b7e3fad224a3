"""
Train a GPT. Runs on one CPU, GPU or Apple MPS device, or on many GPUs with DistributedDataParallel (DDP) or, for
models whose weights, gradients and optimizer state do not fit one GPU, FSDP2 (--parallel=fsdp, see parallel.py).

To run on a single device, e.g.:
$ python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

To run with DDP on 4 GPUs on 1 node:
$ torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2.py

To run with DDP on 4 GPUs across 2 nodes:
- Run on the first (master) node with example IP 123.456.123.456:
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
- Run on the worker node:
$ torchrun --nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=123.456.123.456 --master_port=1234 train.py
(If your cluster does not have Infiniband interconnect prepend NCCL_IB_DISABLE=1)

To shard the model over 8 GPUs instead of copying it to each (fine-tuning GPT-2 XL, say):
$ torchrun --standalone --nproc_per_node=8 train.py config/finetune_shakespeare.py --init_from=gpt2-xl --parallel=fsdp

The functions here (get_lr, the loop's steps, checkpoints) import without starting a run; reading data is
data/loader.py's, evaluating evaluate.py's.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.distributed import destroy_process_group
from tqdm import tqdm

import hub
import parallel
from common import (
    DTYPES,
    autocast,
    check_device,
    check_model_args,
    default_device,
    default_dtype,
    fail,
    git_commit,
    interactive,
    load_checkpoint,
    peak_flops,
    print0,
    save_checkpoint,
)
from configurator import ConfigError, configure, explicit_keys
from data.common import check_writable_dir, make_dir
from data.loader import BatchSampler, check_tokens, ensure_data, episode_dir, get_batch, open_mask, open_split
from evaluate import estimate_loss
from model import CHECKPOINTING, GPT, GPT2_SIZES, GPTConfig
from tokenizer import load_meta
from tracking import TRACKERS, NoTracker, Tracker, log_record, open_tracker

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText; model shape knobs (n_layer, n_head,
# n_embd, block_size, dropout, bias, ...) live in model.GPTConfig and are set the same way


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False  # if True, script exits right after the first eval
    always_save_checkpoint: bool = True  # if True, always save a checkpoint after each eval
    init_from: str = "scratch"  # 'scratch', 'resume' (from out_dir/ckpt.pt), 'gpt2*', or a Hugging Face GPT-2 dir
    # experiment tracking (tracking.py): none | wandb | trackio; metrics.jsonl is written whatever it is
    tracker: str = "none"
    tracker_project: str = ""  # '' = wandb_project
    tracker_run_name: str = ""  # '' = wandb_run_name
    tracker_group: str = ""  # runs shown together (benchmark.py: the task)
    # nanoGPT's wandb settings (WANDB_API_KEY may come from a .env file; WANDB_MODE=offline works)
    wandb_log: bool = False  # True = tracker 'wandb'
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"
    data_dir: str = "data"  # the bins are read from data_dir/dataset/{train,val}.bin
    gradient_accumulation_steps: int = 5 * 8  # used to simulate larger batch sizes; summed over all DDP ranks
    batch_size: int = 12  # if gradient_accumulation_steps > 1, this is the micro-batch size
    # adamw optimizer
    learning_rate: float = 6e-4  # max learning rate
    max_iters: int = 600000  # total number of training iterations
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip gradients at this value, or disable if == 0.0
    nonfinite: str = "stop"  # a step whose loss or gradient norm is inf/nan: stop (keep the last checkpoint) | skip
    # learning rate decay settings
    decay_lr: bool = True  # whether to decay the learning rate
    warmup_iters: int = 2000  # how many steps to warm up for
    lr_decay_iters: int = 600000  # should be ~= max_iters per Chinchilla
    min_lr: float = 6e-5  # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
    # torchrun settings (one process ignores them)
    backend: str = "auto"  # 'auto' = nccl on CUDA, gloo on CPU; or 'nccl', 'gloo'
    parallel: str = "ddp"  # 'ddp': a whole copy of the model per rank; 'fsdp': sharded over the ranks (parallel.py)
    # system
    device: str = "auto"  # 'auto' = cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' = bfloat16/float16 on CUDA, float32 elsewhere; or 'float32', 'bfloat16', 'float16'
    compile: bool = True  # torch.compile each Block (GPT.compile_blocks): one graph whatever the segments
    # recompute activations in backward (less memory, ~30% more compute): 'block' (or True) keeps each block's
    # input; 'segment' keeps only the memory between segments, so memory stays flat in n_segments; 'none' (False)
    gradient_checkpointing: bool | str = "none"
    seed: int = 1337
    # memory (gmm.py; set gmm_experts and the other gmm_* model knobs to turn it on)
    n_segments: int = 1  # segments of block_size tokens per training sequence; evaluation always uses this many
    bptt_segments: int = 0  # gradients flow back through this many segments at a time; 0 = all of them
    segment_curriculum: list[int] = field(default_factory=list)  # e.g. [2, 4, 6]: segments per sequence in equal
    # stages of the run (the last stage usually equals n_segments); empty = n_segments throughout
    curriculum_iters: int = 0  # iterations the curriculum's stages span; 0 = max_iters (like lr_decay_iters)
    # True: a segment curriculum's shorter sequences come in proportionally more rows (batch_size * n_segments / n
    # at n segments), so every step holds the same tokens, as the window warm-up's do; False: the same rows
    curriculum_same_tokens: bool = False
    # e.g. [64, 128, 256]: a sequence-length warm-up for a model of one segment (full attention over a long window):
    # windows of these many tokens in equal stages first, then block_size; the batch grows as the window shrinks, so
    # every step holds the same tokens. Stages span curriculum_iters, as the segment curriculum's do
    window_curriculum: list[int] = field(default_factory=list)
    decay_memory_states: bool = False  # True: weight decay on the memory's states and embeddings too (an ablation)

    def __post_init__(self) -> None:
        positive = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size")
        for name in (*positive, "n_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be a positive integer")
        if self.curriculum_iters < 0:
            raise ValueError(f"curriculum_iters = {self.curriculum_iters} must be >= 0 (0 = max_iters)")
        if self.bptt_segments < 0:
            raise ValueError(f"bptt_segments = {self.bptt_segments} must be >= 0 (0 = through all segments)")
        if any(n < 1 for n in self.segment_curriculum):
            raise ValueError(f"segment_curriculum = {self.segment_curriculum} must hold positive segment counts")
        if self.curriculum_same_tokens and any(self.n_segments % n for n in self.segment_curriculum):
            raise ValueError(
                f"curriculum_same_tokens = True keeps the tokens of a step: each of segment_curriculum = "
                f"{self.segment_curriculum} must divide n_segments = {self.n_segments}"
            )
        if self.window_curriculum and (self.n_segments != 1 or self.segment_curriculum):
            raise ValueError(
                f"window_curriculum = {self.window_curriculum} warms up a model of one segment: it needs "
                f"n_segments = 1 and no segment_curriculum (not {self.n_segments} and {self.segment_curriculum})"
            )
        if any(w < 1 for w in self.window_curriculum) or self.window_curriculum != sorted(self.window_curriculum):
            raise ValueError(f"window_curriculum = {self.window_curriculum} must hold growing positive lengths")
        if isinstance(self.gradient_checkpointing, bool):
            self.gradient_checkpointing = "block" if self.gradient_checkpointing else "none"
        if self.gradient_checkpointing not in CHECKPOINTING:
            raise ValueError(
                f"gradient_checkpointing = '{self.gradient_checkpointing}' must be one of {', '.join(CHECKPOINTING)}"
            )
        if self.max_iters < 0:
            raise ValueError(f"max_iters = {self.max_iters} must be >= 0")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be in [0, 1)")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype = '{self.dtype}' must be one of auto, {', '.join(DTYPES)}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite = '{self.nonfinite}' must be one of stop, skip")
        if self.tracker not in TRACKERS:
            raise ValueError(f"tracker = '{self.tracker}' must be one of {', '.join(TRACKERS)}")
        if self.wandb_log and self.tracker not in ("none", "wandb"):
            raise ValueError(f"wandb_log = True asks for wandb, but tracker = '{self.tracker}': set one of them")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"backend = '{self.backend}' must be one of auto, nccl, gloo")
        if self.parallel not in parallel.PARALLEL:
            raise ValueError(f"parallel = '{self.parallel}' must be one of {', '.join(parallel.PARALLEL)}")
        named = self.init_from in ("scratch", "resume", *GPT2_SIZES)
        if not named and not os.path.isdir(self.init_from) and not hub.is_repo_id(self.init_from):
            raise ValueError(
                f"init_from = '{self.init_from}' must be scratch, resume, {', '.join(GPT2_SIZES)}, a folder holding "
                "a Hugging Face GPT-2 or an export.py export, or a Hugging Face Hub repo id (owner/name)"
            )


# -----------------------------------------------------------------------------


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Learning rate at iteration it: linear warmup (non-zero at it=0), cosine decay, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    # 1) linear warmup for warmup_iters steps
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


EXIT_NONFINITE = 3  # the exit status of a run stopped by a non-finite loss or gradient norm; a run stopped by a
# signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) exits with 128 + its number, after writing a checkpoint


class StopSignals:
    """SIGTERM and SIGINT ask the run to stop after its current step: the handlers only note the signal, and the
    loop writes a checkpoint and exits (see train). A second SIGINT stops at once, as Ctrl-C usually does."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self.note)

    def note(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def clip_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float) -> torch.Tensor:  # fmt: skip
    """Unscale the gradients (a no-op unless fp16 scaling is on), clip their total norm at grad_clip (0 = no
    clipping) and return the norm they had before clipping, a 0-d tensor on the device."""
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    return parallel.full_tensor(norm)  # under fsdp the norm of the sharded gradients is itself a DTensor


def note_step(
    pending: torch.Tensor | None, it: int, loss: torch.Tensor, grad_norm: torch.Tensor, scaler: torch.amp.GradScaler
) -> torch.Tensor:
    """The divergence guard's running record, kept on the device so that a step need not wait for the host: the
    first iteration since the last check (check_step) whose loss, then whose gradient norm, was not finite (inf
    for none), as a (2,) float tensor. Under fp16 gradient scaling an inf gradient is the scaler's to handle (it
    skips the step and lowers the scale), so only the loss counts there."""
    inf = torch.full((), math.inf, device=loss.device)
    bad = [~torch.isfinite(loss), ~torch.isfinite(grad_norm) & (not scaler.is_enabled())]
    flags = torch.stack([torch.where(b, float(it), inf) for b in bad])
    return flags if pending is None else torch.minimum(pending, flags)


def check_step(pending: torch.Tensor, distributed: bool, signum: int) -> tuple[str, int, int]:
    """What every rank agrees on at a check: what was not finite since the last one ('loss', 'gradient norm', or
    '' when all was well), the first iteration it was not (-1 for none), and the stop signal any rank has received
    (0 for none). One host sync, and under torchrun one small all-reduce."""
    checks = torch.cat([pending, torch.tensor([-float(signum)], device=pending.device)])
    if distributed:
        torch.distributed.all_reduce(checks, op=torch.distributed.ReduceOp.MIN)  # every rank acts as one
    loss_at, grad_at, sig = checks.tolist()
    bad = "loss" if math.isfinite(loss_at) else "gradient norm" if math.isfinite(grad_at) else ""
    return bad, int(min(loss_at, grad_at)) if bad else -1, int(-sig)


def check_due(run: Run, signum: int) -> bool:
    """Whether this step ends with a check (check_step) rather than only noting its flags: with nonfinite = 'skip'
    (each step is decided on its own) or fp16's scaler (whose step syncs anyway) always; otherwise before a log
    line, an evaluation (which may save a checkpoint) or the end, and in one process when it has a stop signal
    (under torchrun a check is a collective, so it must fall on the same steps on every rank: a signal waits for
    the next due check there). So between checks a step never waits for the device, and every checkpoint is of
    steps checked finite."""
    cfg, nxt = run.cfg, run.iter_num + 1
    every = cfg.nonfinite == "skip" or run.scaler.is_enabled()
    due = nxt % cfg.log_interval == 0 or nxt % cfg.eval_interval == 0 or nxt >= cfg.max_iters
    return every or due or (bool(signum) and not run.place.ranks.distributed)


def segments_at(it: int, cfg: TrainConfig) -> int:
    """Segments per training sequence at iteration it: the curriculum's stage, or n_segments without one."""
    stages = cfg.segment_curriculum
    if not stages:
        return cfg.n_segments
    return stages[stage_at(it, cfg, len(stages))]


def stage_at(it: int, cfg: TrainConfig, n_stages: int) -> int:
    """Which of n_stages equal stages of curriculum_iters (0: max_iters) iteration it falls in; the last after."""
    span = cfg.curriculum_iters or cfg.max_iters
    return min(n_stages - 1, it * n_stages // max(1, span))


def length_at(it: int, cfg: TrainConfig, block_size: int) -> int:
    """Tokens per training sequence at iteration it: a window of the warm-up (window_curriculum), else the
    segments of this stage."""
    if cfg.window_curriculum:
        windows = [*cfg.window_curriculum, block_size]
        return windows[stage_at(it, cfg, len(windows))]
    return block_size * segments_at(it, cfg)


def rank_offsets(sampler: BatchSampler, accum_global: int, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of one step's global batch, (accum_global // world_size, batch_size) offsets: every rank
    draws the whole (accum_global, batch_size) batch, so all samplers stay in step, and keeps its own block of
    micro-steps, rows [rank * accum_local, (rank + 1) * accum_local)."""
    accum_local = accum_global // world_size
    offsets = sampler.draw(accum_global * batch_size).view(accum_global, batch_size)  # (accum_global, B)
    return offsets[rank * accum_local : (rank + 1) * accum_local]  # (accum_local, B)


def append_metrics(out_dir: str, record: dict[str, Any]) -> None:
    """One JSON line in out_dir/metrics.jsonl; the run's first write, so it makes out_dir (a run refused by a check
    on its data or model leaves no empty folder behind)."""
    make_dir(out_dir)
    with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_metrics(out_dir: str, iter_num: int, evaluated: bool) -> None:
    """A run resumed from iteration iter_num repeats what a crash lost after its checkpoint: drop those lines of
    metrics.jsonl (and a torn last line) so that the log is the uninterrupted run's. Atomic, like a checkpoint."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the crash
                continue
            it = record.get("iter", 0)
            if it < iter_num or (it == iter_num and (record.get("event") != "eval" or evaluated)):
                kept.append(line if line.endswith("\n") else line + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# settings a resumed run takes from this invocation rather than from its checkpoint: where and how it runs now
PER_INVOCATION = ("init_from", "out_dir", "eval_only", "device", "backend")


def resume_config(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """init_from=resume, before any data is looked at: the checkpoint in out_dir, read and checked, and the run's
    settings taken from it (the dataset and its folder, the schedule, the batch...) except those the user set and
    PER_INVOCATION. Asking for another dataset than the checkpoint's is an error."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        raise ValueError(f"init_from = 'resume' needs a checkpoint, and {cfg.out_dir} has none ({path} not found)")
    ckpt = load_checkpoint(path)
    saved = ckpt.get("config", {})
    if "dataset" in explicit and saved.get("dataset", cfg.dataset) != cfg.dataset:
        raise ValueError(
            f"dataset = '{cfg.dataset}' disagrees with {path}, which was trained on '{saved['dataset']}': drop the "
            "setting to resume, or start a new run in another out_dir"
        )
    names = {f.name for f in fields(TrainConfig)} - set(PER_INVOCATION) - explicit
    return replace(cfg, **{k: v for k, v in saved.items() if k in names}), ckpt


def check_tokenizer(meta: dict[str, Any], ckpt: dict[str, Any], data_dir: str, source: str = "checkpoint") -> None:
    """The data a run resumes (or fine-tunes) on must be tokenized as its checkpoint's (or export's) was."""
    saved = ckpt.get("tokenizer_meta") or {}
    for key in ("tokenizer", "vocab_size", "itos"):
        if key in saved and saved[key] != meta.get(key):
            raise ValueError(
                f"{data_dir}/meta.json disagrees with the {source} on the tokenizer ({key}): the data was prepared "
                "otherwise than the data the model was trained on"
            )


def init_model(
    cfg: TrainConfig,
    model_cfg: GPTConfig,
    meta: dict[str, Any],
    explicit: set[str] | None = None,
    ckpt: dict[str, Any] | None = None,
) -> tuple[GPT, dict[str, Any] | None]:
    """The model as init_from asks, and the checkpoint when resuming (read by resume_config, or here). `explicit`
    holds the keys the user set; a model setting among them that disagrees with the checkpoint is an error, not
    silently overridden."""
    if cfg.init_from == "scratch":
        model_cfg.vocab_size = int(meta["vocab_size"])
        print0(f"initializing a new model from scratch (vocab_size {model_cfg.vocab_size})")
        model = GPT(model_cfg)
    elif cfg.init_from == "resume":
        ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
        print0(f"resuming training from {ckpt_path}")
        ckpt = ckpt if ckpt is not None else load_checkpoint(ckpt_path)
        check_model_args(ckpt["model_args"], asdict(model_cfg), explicit or set(), ckpt_path)
        # the checkpoint's model shape wins; only dropout may change between runs
        model = GPT.from_checkpoint(ckpt, {"dropout": model_cfg.dropout}, ckpt_path)
        model_cfg = model.config
    else:
        print0(f"initializing from pretrained weights: {cfg.init_from}")
        source, memory_args = cfg.init_from, {k: v for k, v in asdict(model_cfg).items() if k.startswith("gmm_")}
        if source not in GPT2_SIZES:  # a folder or a Hub repo
            folder = hub.local_folder(source)
            exported = hub.export_meta(folder)  # an export of this project carries its tokenizer
            if exported is not None:
                data_dir = os.path.join(cfg.data_dir, cfg.dataset)
                check_tokenizer(meta, {"tokenizer_meta": exported}, data_dir, f"export {source}")
            if hub.export_kind(folder) == "gmm":  # its memory is what it is: only settings given must agree
                memory_args = {k: v for k, v in memory_args.items() if k in (explicit or set())}
            source = str(folder)
        model = GPT.from_pretrained(source, dict(dropout=model_cfg.dropout, **memory_args))
    # crop down the model block size if desired, using model surgery
    if model_cfg.block_size < model.config.block_size:
        model.crop_block_size(model_cfg.block_size)
    return model, ckpt


def main(argv: list[str]) -> None:
    try:
        cfg, model_cfg = configure(argv, TrainConfig(), GPTConfig(bias=False))
        explicit = explicit_keys(argv)
    except ConfigError as e:
        fail(str(e))
    from dotenv import load_dotenv

    load_dotenv()  # WANDB_API_KEY / HF_TOKEN may live in a .env file; variables already set win
    try:
        train(cfg, model_cfg, explicit, argv)
    except ValueError as e:  # bad data, checkpoint or device: one line, nothing written
        fail(str(e))
    parallel.finish()  # under torchrun: every rank ended its loop at the same iteration


def train(
    cfg: TrainConfig, model_cfg: GPTConfig, explicit: set[str] | None = None, argv: list[str] | None = None
) -> None:
    """A training run, top to bottom: its checkpoint (resuming), its process and device, its data, its model and
    optimizer, then steps, evaluations and checkpoints until max_iters."""
    check_writable_dir(cfg.out_dir)
    ckpt = None
    if cfg.init_from == "resume":  # the checkpoint first, and the run's settings from it: one that cannot resume
        cfg, ckpt = resume_config(cfg, explicit or set())  # prepares no data
    place = setup_process(cfg, model_cfg)
    data_dir, meta = prepare_data(cfg, place, ckpt)
    model, ckpt = init_model(cfg, model_cfg, meta, explicit, ckpt)
    check_vocabulary(model, meta, data_dir)
    stage_dirs, stages = open_stages(cfg, model.config, meta, data_dir, place)
    run = build_run(cfg, model, place, stages, stage_dirs[cfg.n_segments], meta, argv)
    if ckpt is not None:
        restore(run, ckpt)
    ckpt = None  # free up memory
    start_run(run)
    run_loop(run)


# -----------------------------------------------------------------------------
# the steps of train()


@dataclass
class Place:
    """Where this process trains: its rank among torchrun's processes (or the only one), device and precision."""

    ranks: parallel.Ranks
    device: str
    dtype: str
    fsdp: bool  # the model sharded with FSDP2 (torchrun and parallel = 'fsdp'); else DDP under torchrun

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    @property
    def master(self) -> bool:  # this process will do logging, checkpointing etc.
        return self.ranks.master


def setup_process(cfg: TrainConfig, model_cfg: GPTConfig) -> Place:
    """Join torchrun's process group if it started this process, choose the device and dtype, check the run can
    go ahead (without a checkpoint to clobber), and seed this rank."""
    ranks, device = parallel.start(default_device() if cfg.device == "auto" else cfg.device, cfg.backend)
    if cfg.gradient_accumulation_steps % ranks.world_size != 0:
        raise ValueError(
            f"gradient_accumulation_steps = {cfg.gradient_accumulation_steps} must be divisible by the "
            f"number of processes ({ranks.world_size})"
        )
    check_device(device)
    dtype = default_dtype(device) if cfg.dtype == "auto" else cfg.dtype
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype = 'bfloat16' is not supported by this GPU: use float16 or float32")
    fsdp = ranks.distributed and cfg.parallel == "fsdp"
    if cfg.parallel == "fsdp" and not ranks.distributed:
        print0("parallel = 'fsdp' shards the model over torchrun's processes: one process trains it whole")
    parallel.check_dtype(fsdp, dtype)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.init_from != "resume" and not cfg.eval_only and os.path.exists(ckpt_path):
        raise ValueError(
            f"{ckpt_path} exists: pass --init_from=resume to continue that run, or choose another --out_dir"
        )
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * model_cfg.block_size * cfg.n_segments
    print0(f"tokens per iteration will be: {tokens_per_iter:,} on {device} in {dtype}")
    # out_dir is made by the run's first write (append_metrics), so a run refused below leaves nothing behind
    if ranks.master and cfg.init_from != "resume" and not cfg.eval_only:
        trim_metrics(cfg.out_dir, 0, evaluated=False)  # a new run: no log lines of one that never checkpointed
    torch.manual_seed(cfg.seed + ranks.rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
    return Place(ranks, device, dtype, fsdp)


def barrier(place: Place) -> None:
    """Under torchrun, wait for every rank (e.g. for rank 0 to finish preparing data)."""
    if place.ranks.distributed:
        torch.distributed.barrier()


def prepare_data(cfg: TrainConfig, place: Place, ckpt: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The dataset's folder, prepared by rank 0 if missing, and its meta.json; a resumed run's tokenizer must
    match it. (The tokenizer travels in the checkpoint, so sample.py needs no data folder.)"""
    data_dir = os.path.join(cfg.data_dir, cfg.dataset)
    if place.master:
        ensure_data(data_dir, cfg.dataset)
    barrier(place)
    meta = load_meta(data_dir)
    if ckpt is not None:
        check_tokenizer(meta, ckpt, data_dir)
    if meta.get("queries") == "drawn" and "repeat_mark" not in meta:
        print0(f"warning: {data_dir} was prepared before answers to repeated questions were marked: acc_first counts "
               "them too (they are in context); prepare it again for the accuracy on first-asked keys")  # fmt: skip
    return data_dir, meta


def check_vocabulary(model: GPT, meta: dict[str, Any], data_dir: str) -> None:
    """The data's token ids must all have an embedding; then the model's size is printed."""
    if int(meta["vocab_size"]) > model.config.vocab_size:
        raise ValueError(
            f"{data_dir}/meta.json has a vocabulary of {meta['vocab_size']} tokens, more than the model's "
            f"{model.config.vocab_size}: the data was tokenized for another model"
        )
    n_memory = sum(p.numel() for p in model.memory.parameters()) if model.memory is not None else 0
    print0(f"number of parameters: {model.get_num_params() / 1e6:.2f}M (memory {n_memory / 1e6:.2f}M)")


@dataclass
class Stage:
    """The training data of one segment count: its tokens, answer mask (synthetic tasks) and batch sampler."""

    sampler: BatchSampler
    tokens: np.ndarray
    mask: np.ndarray | None


def open_stages(
    cfg: TrainConfig, model_cfg: GPTConfig, meta: dict[str, Any], data_dir: str, place: Place
) -> tuple[dict[int, str], dict[int, Stage]]:
    """Every segment count the run uses (n_segments and the curriculum's), with the folder its data lives in, and
    every training stage, keyed by its sequence length in tokens (the warm-up's windows too). An episode dataset
    (a synthetic task) holds one length per folder, prepared by rank 0 if missing, and a sequence is exactly one
    episode; text is cut to any length from one folder. Token ids are checked against the vocabulary. One generator
    draws every batch, whatever the stage, so its state alone makes a resume exact."""
    episodic = "episode_len" in meta
    T = model_cfg.block_size
    dirs = {n: episode_dir(data_dir, meta, n, T) for n in {cfg.n_segments, *cfg.segment_curriculum}}
    if place.master and episodic:
        for n, folder in dirs.items():
            ensure_data(folder, cfg.dataset, [*meta["prepare_args"], "--n_segments", str(n), "--block_size", str(T)])
    barrier(place)
    bad = [w for w in cfg.window_curriculum if w >= T or T % w]
    if bad or (cfg.window_curriculum and episodic):
        raise ValueError(
            f"window_curriculum = {cfg.window_curriculum}: each window must divide block_size = {T} and be shorter, "
            "on a text dataset (an episode is one length)"
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    stages = {}
    for n, folder in dirs.items():
        check_tokens(open_split(folder, "val"), model_cfg.vocab_size)
        tokens = check_tokens(open_split(folder, "train"), model_cfg.vocab_size)
        align = T * n if episodic else 1
        for length in (T * n, *(cfg.window_curriculum if n == 1 else [])):
            sampler = BatchSampler(len(tokens), length, cfg.seed, align, generator, source=str(tokens.filename))
            stages[length] = Stage(sampler, tokens, open_mask(folder, "train"))
    return dirs, stages


@dataclass
class Run:
    """What a training run carries from step to step; its checkpoint is made of it (Run.checkpoint)."""

    cfg: TrainConfig
    place: Place
    raw_model: GPT  # sharded in place under fsdp
    model: torch.nn.Module  # what the steps call: raw_model (blocks compiled if compile), or DDP around it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # a no-op unless training in float16
    stages: dict[int, Stage]
    eval_dir: str  # the data of n_segments segments, what evaluation reads
    meta: dict[str, Any]  # the tokenizer's, saved with every checkpoint
    argv: list[str] | None  # the command line that started the run, for a model card (export.py)
    tracker: Tracker = field(default_factory=NoTracker)
    commit: str = ""
    iter_num: int = 0
    best_val_loss: float = 1e9
    tokens_seen: int = 0
    skipped: int = 0  # steps skipped for a non-finite loss or gradient (nonfinite = 'skip')
    resumed_after_eval: bool = True  # False: the checkpoint was a stop signal's, written before the evaluation

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.cfg.out_dir, "ckpt.pt")

    @property
    def seq_len(self) -> int:  # one evaluation sequence: n_segments segments
        return self.raw_model.config.block_size * self.cfg.n_segments

    def checkpoint(self, evaluated: bool = True) -> dict[str, Any]:
        """Everything a resume needs. Under fsdp every rank must call it (the state is gathered whole)."""
        return {
            "evaluated": evaluated,  # written after this iteration's evaluation (a resume does not repeat it)
            "model": parallel.model_state_dict(self.raw_model),  # under fsdp gathered whole: the same file as ddp's
            "optimizer": parallel.optimizer_state_dict(self.raw_model, self.optimizer),
            "scaler": self.scaler.state_dict(),
            "model_args": asdict(self.raw_model.config),
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped,
            "config": asdict(self.cfg),
            "tokenizer_meta": self.meta,
            "rng": rng_state(),
            "sampler": self.stages[self.seq_len].sampler.state_dict(),
            "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0], "commit": self.commit},
            "argv": self.argv,
        }


def build_run(
    cfg: TrainConfig,
    model: GPT,
    place: Place,
    stages: dict[int, Stage],
    eval_dir: str,
    meta: dict[str, Any],
    argv: list[str] | None,
) -> Run:
    """The model on its device (sharded under fsdp, before the optimizer is built on the shards), its AdamW and
    gradient scaler."""
    model.gradient_checkpointing = str(cfg.gradient_checkpointing)
    model.to(place.device)
    if place.fsdp:
        parallel.shard(model, place.dtype)
    scaler = torch.amp.GradScaler(place.device_type, enabled=(place.dtype == "float16"))
    betas = (cfg.beta1, cfg.beta2)
    optimizer = model.configure_optimizers(
        cfg.weight_decay, cfg.learning_rate, betas, place.device_type, cfg.decay_memory_states
    )
    return Run(cfg, place, model, model, optimizer, scaler, stages, eval_dir, meta, argv)


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Continue from a checkpoint: optimizer, scaler, sampler, counters and RNG as they were. metrics.jsonl loses
    what was logged after the checkpoint; ranks other than 0 reseed from the seed and the step."""
    parallel.load_optimizer_state_dict(run.raw_model, run.optimizer, ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.stages[run.seq_len].sampler.load_state_dict(ckpt["sampler"])
    run.iter_num, run.best_val_loss, run.tokens_seen = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["tokens_seen"]
    run.skipped = ckpt.get("skipped_steps", 0)  # checkpoints from before the divergence guard have none
    run.argv = ckpt.get("argv", run.argv)  # the run's own command line, not the resume's
    run.resumed_after_eval = ckpt.get("evaluated", True)
    if run.place.master:
        trim_metrics(run.cfg.out_dir, run.iter_num, run.resumed_after_eval)
        set_rng_state(ckpt["rng"])
    else:  # other ranks carry on from a state of their own, derived from the seed and the step
        torch.manual_seed(run.cfg.seed + run.place.ranks.rank + 1000 * run.iter_num)


def start_run(run: Run) -> None:
    """Compile and wrap the model for the loop (DDP under torchrun without fsdp); on rank 0, open the tracker."""
    cfg, place = run.cfg, run.place
    if cfg.compile:
        print0("compiling the model's blocks... (takes a ~minute)")
        run.raw_model.compile_blocks()
    if place.ranks.distributed and not place.fsdp:
        fewest = min(cfg.segment_curriculum or [cfg.n_segments])
        unused = parallel.unused_parameters(run.raw_model.config, fewest, cfg.bptt_segments)
        run.model = parallel.wrap_ddp(run.model, place.ranks, place.device_type, unused)
    if place.master:
        kind = "wandb" if cfg.wandb_log else cfg.tracker
        project, name = cfg.tracker_project or cfg.wandb_project, cfg.tracker_run_name or cfg.wandb_run_name
        config = {**asdict(cfg), **asdict(run.raw_model.config)}
        resume = cfg.init_from == "resume"
        run.tracker = open_tracker(kind, project, name, config, cfg.out_dir, resume=resume, group=cfg.tracker_group)
        run.commit = git_commit()


class Meter:
    """Step time and MFU between log lines, and the progress bar (on a terminal; in a log, plain lines)."""

    def __init__(self, run: Run) -> None:
        self.run, self.start_iter = run, run.iter_num
        self.bar = run.place.master and interactive()
        self.progress = tqdm(total=run.cfg.max_iters, initial=run.iter_num, disable=not self.bar, desc="train",
                             dynamic_ncols=True)  # fmt: skip
        self.flops_peak = peak_flops(run.place.device, run.place.dtype) if run.place.master else 1.0
        self.t0 = time.time()
        self.mfu = -1.0

    def lap(self, tokens_per_iter: int) -> float:
        """Seconds per iteration since the last lap; updates the running MFU once the loop has settled."""
        t1 = time.time()
        dt = (t1 - self.t0) / self.run.cfg.log_interval
        self.t0 = t1
        if self.run.iter_num - self.start_iter >= 5 * self.run.cfg.log_interval:  # let the loop settle a bit
            mfu = self.run.raw_model.estimate_mfu(tokens_per_iter // self.run.place.ranks.world_size, dt,
                                                  self.flops_peak)  # fmt: skip
            self.mfu = mfu if self.mfu == -1.0 else 0.9 * self.mfu + 0.1 * mfu
        return dt


def run_loop(run: Run) -> None:
    """Steps until max_iters (or one evaluation with eval_only), evaluating every eval_interval steps; a stop
    signal ends it after its step with a checkpoint, a non-finite step (nonfinite = 'stop') before its update."""
    cfg = run.cfg
    stop = StopSignals()
    meter = Meter(run)
    pending: torch.Tensor | None = None  # the divergence guard's flags since the last check (note_step)
    while True:
        lr = get_lr(run.iter_num, cfg)
        for param_group in run.optimizer.param_groups:
            param_group["lr"] = lr
        # a resumed run already evaluated at its first step, unless a stop signal's checkpoint came before that
        repeat = cfg.eval_only or run.iter_num > meter.start_iter or cfg.init_from != "resume"
        if (run.iter_num % cfg.eval_interval == 0 or run.iter_num == cfg.max_iters) and (
            repeat or not run.resumed_after_eval
        ):
            evaluate(run, lr, meter.progress)
        if run.iter_num >= cfg.max_iters or cfg.eval_only:
            break
        step_loss, grad_norm, tokens_per_iter = forward_backward(run)
        pending = note_step(pending, run.iter_num, step_loss.lm, grad_norm, run.scaler)
        bad, stop_signal = "", 0
        if check_due(run, stop.signum):
            bad, first_bad, stop_signal = check_step(pending, run.place.ranks.distributed, stop.signum)
            pending = None
            if bad and cfg.nonfinite == "stop":
                stop_nonfinite(run, meter, stop, bad, first_bad)
        update(run, skip=bool(bad), tokens=tokens_per_iter)
        meter.progress.update(1)
        if run.iter_num % cfg.log_interval == 0:
            log_step(run, meter, step_loss, grad_norm, lr, tokens_per_iter)
        if stop_signal:  # on any rank: the step is done, so write a checkpoint and leave
            meter.progress.close()
            save(run, evaluated=False)
            if run.place.master:
                name = signal.Signals(stop_signal).name
                print(f"stopped by {name} after iteration {run.iter_num}: checkpoint written to {run.ckpt_path}; "
                      "continue with --init_from=resume")  # fmt: skip
            end_run(run, meter, stop, 128 + stop_signal)
    end_run(run, meter, stop)


def stop_nonfinite(run: Run, meter: Meter, stop: StopSignals, bad: str, first_bad: int) -> None:
    """End the run for a non-finite step (nonfinite = 'stop'), before this step's update; the checkpoint on disk
    is the last one, written from steps that were checked finite."""
    meter.progress.close()
    if run.place.master:
        kept = f"the last checkpoint in {run.cfg.out_dir} is kept (--nonfinite=skip skips such steps)"
        when = "before the step" if first_bad == run.iter_num else f"at iteration {run.iter_num}, the next check"
        print(f"error: iteration {first_bad}: the {bad} is not finite; stopped {when}, {kept}", file=sys.stderr)
    end_run(run, meter, stop, EXIT_NONFINITE)


def evaluate(run: Run, lr: float, progress: tqdm) -> None:
    """Estimate the train and val losses; log them on rank 0; save a checkpoint when val improves (or always,
    with always_save_checkpoint). Under fsdp every rank evaluates (the weights are spread over all of them)."""
    cfg, place = run.cfg, run.place
    if not (place.master or place.fsdp):
        return
    episodic = "episode_len" in run.meta
    seq_len = run.seq_len
    losses = estimate_loss(run.raw_model, run.eval_dir, seq_len, cfg, place.device, place.dtype,
                           seq_len if episodic else 1)  # fmt: skip
    if place.master:
        extra = {k: v for k, v in losses.items() if k not in ("train", "val")}
        scalars = {k: v for k, v in extra.items() if isinstance(v, float) and not k.startswith("train_")}
        line = "".join(f", {k} {v:.4f}" for k, v in scalars.items())
        if "val_util" in losses:  # k > 1 experts: each expert's share of the routing
            line += ", val_util " + "/".join(f"{u:.2f}" for u in losses["val_util"])
        progress.write(f"step {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{line}")
        record = {"event": "eval", "iter": run.iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                  **extra, "lr": lr, "tokens": run.tokens_seen}  # fmt: skip
        append_metrics(cfg.out_dir, record)
        log_record(run.tracker, record)
    if losses["val"] < run.best_val_loss or cfg.always_save_checkpoint:
        run.best_val_loss = min(run.best_val_loss, losses["val"])
        if run.iter_num > 0:
            if place.master:
                progress.write(f"saving checkpoint to {cfg.out_dir}")
            save(run)


def save(run: Run, evaluated: bool = True) -> None:
    """Write the run's checkpoint (rank 0), gathered from every rank under fsdp."""
    if run.place.master or run.place.fsdp:
        state = run.checkpoint(evaluated)
        if run.place.master:
            save_checkpoint(state, run.ckpt_path)


class StepLoss(NamedTuple):
    """What one step's micro-steps add up to, on this rank (its share of the global figures)."""

    lm: torch.Tensor  # the language-model loss: cross-entropy summed over this rank's targets / the global count
    aux: dict[str, torch.Tensor]  # the unweighted auxiliary losses, averaged over this rank's micro-steps


def forward_backward(run: Run) -> tuple[StepLoss, torch.Tensor, int]:
    """One step's gradients: every rank draws the step's global batch from the shared sampler and runs its own
    micro-steps (gradient accumulation), reducing gradients after the last; then the gradients are unscaled and
    clipped. The language-model loss weighs every target of the step alike, as one big batch would, however the
    targets (an answer mask's) fall into micro-batches and ranks; the auxiliary losses are averaged over
    micro-steps. Returns this rank's share of the step's losses, the gradient norm before clipping, and the step's
    tokens."""
    cfg, place, model = run.cfg, run.place, run.model
    train_len = length_at(run.iter_num, cfg, run.raw_model.config.block_size)
    stage = run.stages[train_len]
    # a warm-up's short windows (and with curriculum_same_tokens a curriculum's short sequences) come in
    # proportionally more rows, so a step holds the same tokens
    same_tokens = cfg.window_curriculum or cfg.curriculum_same_tokens
    batch_size = cfg.batch_size * (run.seq_len // train_len if same_tokens else 1)
    world = place.ranks.world_size
    accum = cfg.gradient_accumulation_steps // world  # each rank runs its share of the micro-steps
    offsets = rank_offsets(stage.sampler, cfg.gradient_accumulation_steps, batch_size, place.ranks.rank,
                           world)  # fmt: skip
    vocab = run.raw_model.config.vocab_size
    batches = [get_batch(stage.tokens, offsets[i], train_len, place.device, stage.mask, vocab) for i in range(accum)]
    if stage.mask is None:  # text: every position is a target, so the step's count is known without a collective
        per_target = torch.tensor(
            world / (cfg.gradient_accumulation_steps * batch_size * train_len), device=place.device
        )
    else:  # an answer mask: count the step's targets on the device, without waiting for it
        n_targets = torch.stack([(Y != -1).sum() for _, Y in batches]).sum().float()
        if place.ranks.distributed:  # DDP averages gradients over ranks: divide by the mean count, global / world
            torch.distributed.all_reduce(n_targets)
        per_target = world / n_targets.clamp_min(1)
    lm = torch.zeros((), device=place.device)
    aux: dict[str, torch.Tensor] = {}
    for micro_step, (X, Y) in enumerate(batches):
        parallel.set_gradient_sync(model, micro_step == accum - 1)  # reduce after the last micro-step
        with autocast(place.device, place.dtype):
            out = model(X, Y, bptt_segments=cfg.bptt_segments, keep_logits=False, details=True)
            assert out.loss is not None and out.lm_loss is not None and out.token_loss is not None
            lm_part = out.token_loss.sum() * per_target
            loss = lm_part + (out.loss - out.lm_loss) / accum  # the weighted auxiliary losses, per micro-step
        lm += lm_part.detach()
        for k, v in out.aux.items():
            aux[k] = aux.get(k, torch.zeros((), device=place.device)) + v.detach() / accum
        run.scaler.scale(loss).backward()  # with gradient scaling if training in fp16
    grad_norm = clip_gradients(model, run.optimizer, run.scaler, cfg.grad_clip)
    return StepLoss(lm / world, aux), grad_norm, cfg.gradient_accumulation_steps * batch_size * train_len


def update(run: Run, skip: bool, tokens: int) -> None:
    """Take the step (or skip it, counted), flush the gradients and count the iteration and its tokens."""
    if skip:
        run.skipped += 1
    else:  # step the optimizer and scaler if training in fp16
        run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)  # flush the gradients as soon as we can
    run.iter_num += 1
    run.tokens_seen += tokens


def log_step(
    run: Run, meter: Meter, step_loss: StepLoss, grad_norm: torch.Tensor, lr: float, tokens_per_iter: int
) -> None:
    """A train line in metrics.jsonl (and the tracker, the bar or the log): the loss is the language-model loss
    of the step's whole batch (all micro-steps of all ranks), what evaluation reports too; the auxiliary losses
    (k > 1 experts) come beside it, unweighted, as train_<name>; the gradient norm is this rank's before
    clipping."""
    names = sorted(step_loss.aux)
    losses = torch.stack([step_loss.lm, *(step_loss.aux[k] for k in names)])
    if run.place.ranks.distributed:
        torch.distributed.all_reduce(losses)  # the lm shares add up; the auxiliary ones are averaged below
    lossf, *auxf = losses.tolist()  # a CPU-GPU sync point
    auxf = [v / run.place.ranks.world_size for v in auxf]
    normf = grad_norm.item()
    dt = meter.lap(tokens_per_iter)
    if not run.place.master:
        return
    mfu_str = f"{meter.mfu * 100:.1f}%" if meter.mfu >= 0 else "-"
    meter.progress.set_postfix(loss=f"{lossf:.4f}", ms=f"{dt * 1000:.0f}", mfu=mfu_str)
    if not meter.bar:
        skips = f", {run.skipped} skipped" if run.skipped else ""
        print(f"iter {run.iter_num}: loss {lossf:.4f}, grad norm {normf:.3g}, lr {lr:.3g}, "
              f"time {dt * 1000:.2f}ms, mfu {mfu_str}{skips}")  # fmt: skip
    record = {"event": "train", "iter": run.iter_num, "loss": lossf, "lr": lr, "ms": dt * 1000,
              "tokens_per_s": tokens_per_iter / dt, "mfu": meter.mfu, "grad_norm": normf,
              "skipped": run.skipped, **{f"train_{k}": v for k, v in zip(names, auxf, strict=True)}}  # fmt: skip
    append_metrics(run.cfg.out_dir, record)
    log_record(run.tracker, record)


def end_run(run: Run, meter: Meter, stop: StopSignals, exit_code: int | None = None) -> None:
    """Close the bar, the signal handlers and the tracker (at the normal end); with exit_code, leave the process
    group and exit with it. At the normal end main leaves the group, once the run's model is out of scope."""
    meter.progress.close()
    stop.restore()
    if exit_code is None:
        run.tracker.finish()
        return
    if run.place.ranks.distributed:  # a stop: the ranks agreed on it at a check, but wait for no one
        destroy_process_group()
    sys.exit(exit_code)


if __name__ == "__main__":
    main(sys.argv[1:])
