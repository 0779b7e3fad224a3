"""
Benchmark a GPT: training step time, tokens/s, MFU and peak memory, or generation speed with and without the KV cache,
or what the gated memory mixture costs against memory off.

$ python bench.py                                    # a GPT-2 124M training step, batch 12 x 1024, synthetic tokens
$ python bench.py --mode=sample --device=cpu         # greedy generation: KV cache vs. recomputing the whole context
$ python bench.py --mode=memory --experts=0,1,4      # the training step with k = 0, 1, 4 experts, side by side
$ python bench.py --mode=memory --experts=0,1,4 --reads=mixture,concat   # and what reading every bank costs
$ python bench.py --mode=context --segments=1,2,4,8,16,32,64   # memory vs full attention as the context grows
$ python bench.py --mode=parallel --nprocs=2         # per-rank memory of ddp vs fsdp, each under torchrun
$ python bench.py --mode=logits --device=cpu         # the loss with all logits kept vs. in chunks, GPT-2's vocabulary
$ torchrun --standalone --nproc_per_node=8 bench.py --parallel=fsdp   # the training step, sharded over 8 GPUs
$ python bench.py --n_layer=4 --block_size=256 --compile=False --profile=True --json=bench_out/result.json

The model's shape is GPTConfig's (GPT-2 124M by default) and is set by the same --key=value flags as in train.py.
Memory mode starts from the GMM quick start's shape instead (config/train_gmm_shakespeare.py, see QUICK_START_MODEL);
parallel mode from GPT-2 124M with short sequences (PARALLEL_BENCH), where the weights and AdamW's state dominate.
compile defaults to None = auto: on for training on CUDA, off otherwise, because on CPU and MPS the compile time
dwarfs a short benchmark (and on CPU needs a C++ compiler). What compiles is each Block (GPT.compile_blocks), in
sample mode with dynamic shapes so that a growing sequence does not recompile.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import psutil
import torch

import gmm
import parallel
from common import (
    DTYPES,
    autocast,
    check_device,
    default_device,
    default_dtype,
    fail,
    peak_flops,
    synchronize,
)
from configurator import ConfigError, configure, parse_value, read_config_file
from data.common import check_writable_dir
from data.loader import BatchSampler, get_batch, open_split
from model import CHECKPOINTING, GPT, GPTConfig
from parallel import PARALLEL, Ranks

# parallel mode's defaults: GPT-2 124M, one sequence of 128 tokens a step, so weights, gradients and AdamW's moments
# (16 bytes a parameter in float32) dominate each rank's memory, as they do when a large model is fine-tuned
PARALLEL_BENCH: dict[str, Any] = dict(batch_size=1, warmup_iters=1, iters=3)
PARALLEL_MODEL: dict[str, Any] = dict(block_size=128)

# memory mode's defaults: the GMM quick start's shape (config/train_gmm_shakespeare.py; shakespeare_char's 65 chars)
QUICK_START_BENCH: dict[str, Any] = dict(batch_size=8, n_segments=4)
# (memory on in the base, so that mixture flags such as --gmm_top_k=2 --gmm_shared_expert=True are kept for every k;
# with gmm_experts = 0 the config would drop them as settings with nothing to route)
QUICK_START_MODEL: dict[str, Any] = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, gmm_slots=8,
                                         gmm_experts=4)  # fmt: skip

# logits mode's defaults: GPT-2's vocabulary, a small model and 4 segments of 256, so the logits dominate the step
LOGITS_BENCH: dict[str, Any] = dict(batch_size=8, n_segments=4, iters=3, warmup_iters=1)
LOGITS_MODEL: dict[str, Any] = dict(n_layer=2, n_head=4, n_embd=128, block_size=256, gmm_experts=1, gmm_slots=8)
MODES = ("train", "sample", "memory", "context", "parallel", "logits")
TOP_OPS = 10  # operators listed by profile = True, the most self time first
# glibc keeps freed blocks in its arenas, so a CPU process's peak RSS counts memory no tensor holds any more (two runs
# of one setting differed by 0.25 GiB); with these, blocks of 64 KiB and more are mapped and unmapped on their own
# and trimmed at once, so the peak follows what tensors hold. Set for the processes that measure; no effect on CUDA
EXACT_RSS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

# -----------------------------------------------------------------------------


@dataclass
class BenchConfig:
    mode: str = "train"  # 'train': forward, backward and AdamW step; 'sample': generation with vs. without KV cache;
    # 'memory': the train step for each k in experts, side by side (see bench_memory)
    batch_size: int = 12  # sequences per step (train) or generated side by side (sample)
    n_segments: int = 1  # training sequences are n_segments segments of block_size tokens, as in train.py
    real_data: bool = False  # if True, batches come from data_dir/dataset/train.bin; else random tokens
    dataset: str = "openwebtext"
    data_dir: str = "data"
    device: str = "auto"  # 'auto' = cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' = bfloat16/float16 on CUDA, float32 elsewhere; or 'float32', 'bfloat16', 'float16'
    compile: bool | None = None  # None = auto: compile for training on CUDA only (see the docstring)
    profile: bool = False  # write a torch.profiler trace of the timed iterations to out_dir
    out_dir: str = "bench_out"
    warmup_iters: int = 10  # untimed iterations first (compilation, allocator and cache warm-up)
    iters: int = 20  # timed iterations (train mode)
    seed: int = 1337
    # sample mode
    prompt_len: int = 16  # random prompt tokens per sequence
    new_tokens: int = 128  # tokens generated per sequence
    # memory mode
    experts: str = "0,1,2,4,8"  # the gmm_experts values to compare, comma-separated; ratios are against the smallest
    reads: str = "mixture"  # the read modes to compare for each k > 0, comma-separated: mixture, concat
    fresh_process: bool = True  # run each k in a new process, so that its peak memory is its own (see bench_memory)
    # context mode
    segments: str = "1,2,4,8,16,32,64"  # the segment counts (context = count x block_size tokens), comma-separated
    # k<N>: memory of N banks (other gmm_* flags apply); full: attention over it all; off: no memory, segments apart;
    # xl: no memory, each segment attends to the previous one's keys and values (Transformer-XL, rope)
    variants: str = "k1,k4,full"
    full_max_tokens: int = 2048  # full attention is measured up to this context (its cost grows with the square)
    # parallel mode (and train mode under torchrun)
    parallel: str = "ddp"  # under torchrun, train mode's parallelism: ddp or fsdp (parallel.py)
    parallels: str = "ddp,fsdp"  # parallel mode: the parallelisms to compare, each in its own torchrun
    nprocs: int = 2  # parallel mode: processes (ranks) per torchrun
    json: str = ""  # if set, also write the results to this path as JSON
    # train mode (and the modes built on it): activation recomputation, none | block | segment (only the memory
    # between segments kept); context mode compares each one listed, comma-separated
    gradient_checkpointing: str = "none"
    keep_logits: bool = False  # True: the whole sequence's logits are kept for the loss (how training held them)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode = '{self.mode}' must be one of {', '.join(MODES)}")
        if self.nprocs < 1:
            raise ValueError(f"nprocs = {self.nprocs} must be a positive integer")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel = '{self.parallel}' must be one of {', '.join(PARALLEL)}")
        parse_parallels(self.parallels)
        for name in ("batch_size", "n_segments", "iters", "prompt_len", "new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be a positive integer")
        if self.warmup_iters < 0:
            raise ValueError(f"warmup_iters = {self.warmup_iters} must be >= 0")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype = '{self.dtype}' must be one of auto, {', '.join(DTYPES)}")
        if self.profile and self.mode == "memory":
            raise ValueError(
                "profile = True is for modes train and sample: profile one k with --mode=train --gmm_experts=K"
            )
        parse_experts(self.experts)
        parse_reads(self.reads)
        parse_counts(self.segments)
        parse_variants(self.variants)
        parse_checkpointing(self.gradient_checkpointing, many=self.mode == "context")


def parse_experts(experts: str) -> list[int]:
    """'0,1,2,4,8' -> [0, 1, 2, 4, 8], ascending; ValueError names what is allowed."""
    allowed = f"distinct expert counts in 0..{gmm.MAX_EXPERTS} separated by commas, e.g. 0,1,2,4,8 (0 = no memory)"
    try:
        ks = [int(s) for s in experts.split(",")]
    except ValueError:
        raise ValueError(f"experts = '{experts}' must be {allowed}") from None
    if len(set(ks)) != len(ks) or not all(0 <= k <= gmm.MAX_EXPERTS for k in ks):
        raise ValueError(f"experts = '{experts}' must be {allowed}")
    return sorted(ks)


def parse_checkpointing(value: str, many: bool) -> list[str]:
    """'none,segment' -> ['none', 'segment'] (one value unless many); ValueError names what is allowed."""
    modes = [s.strip() for s in value.split(",")]
    allowed = f"one of {', '.join(CHECKPOINTING)}" + (", or several separated by commas" if many else "")
    if (
        not modes
        or any(m not in CHECKPOINTING for m in modes)
        or len(set(modes)) != len(modes)
        or (len(modes) > 1 and not many)
    ):
        raise ValueError(f"gradient_checkpointing = '{value}' must be {allowed}")
    return modes


def parse_reads(reads: str) -> list[str]:
    """'mixture,concat' -> ['mixture', 'concat']; ValueError names what is allowed."""
    modes = [s.strip() for s in reads.split(",")]
    if not modes or len(set(modes)) != len(modes) or any(m not in ("mixture", "concat") for m in modes):
        raise ValueError(f"reads = '{reads}' must be distinct read modes, mixture and/or concat, separated by commas")
    return modes


def parse_parallels(parallels: str) -> list[str]:
    """'ddp,fsdp' -> ['ddp', 'fsdp']; ValueError names what is allowed."""
    kinds = [s.strip() for s in parallels.split(",")]
    if not kinds or len(set(kinds)) != len(kinds) or any(k not in PARALLEL for k in kinds):
        raise ValueError(
            f"parallels = '{parallels}' must be distinct parallelisms, ddp and/or fsdp, separated by commas"
        )
    return kinds


def parse_counts(segments: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], ascending; ValueError names what is allowed."""
    try:
        counts = sorted({int(c) for c in segments.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ValueError(f"segments = '{segments}' must be positive segment counts separated by commas, e.g. 1,2,4,8")
    return counts


def parse_variants(variants: str) -> list[str]:
    """'k1,k4,full' -> ['k1', 'k4', 'full']; ValueError names what is allowed."""
    names = [v.strip() for v in variants.split(",")]
    words = ("full", "off", "xl")
    ok = all(v in words or (v[:1] == "k" and v[1:].isdigit() and 1 <= int(v[1:]) <= gmm.MAX_EXPERTS) for v in names)
    if not names or not ok or len(set(names)) != len(names):
        raise ValueError(
            f"variants = '{variants}' must be k<N> (N memory banks, 1..{gmm.MAX_EXPERTS}), full, off and/or xl"
        )
    return names


# -----------------------------------------------------------------------------


def resolve(cfg: BenchConfig) -> tuple[str, str, bool]:
    """The (device, dtype, compile) that 'auto' and None stand for on this machine."""
    device = default_device() if cfg.device == "auto" else cfg.device
    check_device(device)
    dtype = default_dtype(device) if cfg.dtype == "auto" else cfg.dtype
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype = 'bfloat16' is not supported by this GPU: use float16 or float32")
    compile = cfg.compile if cfg.compile is not None else (cfg.mode == "train" and device.startswith("cuda"))
    return device, dtype, compile


class PeakMemory:
    """Peak memory of the run, by the best measure the device has (named in `kind`)."""

    def __init__(self, device: str) -> None:
        self.device = device
        if device.startswith("cuda"):
            self.kind = "cuda max_memory_allocated"
            torch.cuda.reset_peak_memory_stats(device)
        elif device.startswith("mps"):
            self.kind = "mps driver_allocated_memory (at the end)"
        else:
            self.kind = "process peak RSS (getrusage)"
        self.start = self.now()  # held before the run builds its model: the process's RSS, or live tensors

    def now(self) -> int:
        if self.device.startswith("cuda"):
            return torch.cuda.memory_allocated(self.device)
        if self.device.startswith("mps"):
            return int(torch.mps.driver_allocated_memory())
        return int(psutil.Process().memory_info().rss)

    def peak(self) -> int:
        """CUDA: the allocator's peak. CPU: the kernel's high-water mark of the process's RSS, which sees the
        transient peak inside backward that RSS after a step misses; it counts the whole process (the interpreter,
        torch and the model too), so the modes that compare settings run each in a process of its own."""
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(self.device)
        if self.device.startswith("mps"):
            return torch.mps.driver_allocated_memory()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def finish_profile(prof: Any, out_dir: str, mode: str, device: str) -> dict[str, Any]:
    """Stop the profiler, if one ran, and write its Chrome trace; the result dict names the file and says where the
    time went (top_ops)."""
    if prof is None:
        return {}
    prof.stop()
    os.makedirs(out_dir, exist_ok=True)
    prof.export_chrome_trace(trace_path(out_dir, mode))
    return {"trace": trace_path(out_dir, mode), "top_ops": top_ops(prof, device)}


def top_ops(prof: Any, device: str, n: int = TOP_OPS) -> list[dict[str, Any]]:
    """The n operators with the most self time (the GPU's on CUDA, else the CPU's) over what was profiled, in ms and
    as a share of all operators' self time: where the time goes."""
    on_gpu = device.startswith("cuda")
    ops = [(e.key, e.self_device_time_total if on_gpu else e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(us for _, us in ops) or 1.0
    ops.sort(key=lambda op: -op[1])
    return [{"op": name, "ms": us / 1000, "share": us / total} for name, us in ops[:n]]


def trace_path(out_dir: str, mode: str) -> str:
    """Chrome trace JSON (chrome://tracing, https://ui.perfetto.dev); the .pt.trace.json ending lets TensorBoard's
    profiler plugin find it too (tensorboard --logdir <out_dir>)."""
    return os.path.join(out_dir, f"bench_{mode}.pt.trace.json")


def profiler(device: str) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True, with_stack=False)


def bench_train(cfg: BenchConfig, model_cfg: GPTConfig) -> dict[str, Any]:
    """Time warmup_iters + iters training steps (forward, backward, clip, AdamW) on batches of batch_size
    sequences of n_segments x block_size tokens; report the median step time, tokens/s, MFU and peak memory."""
    device, dtype, compile = resolve(cfg)
    ranks, device = parallel.start(device, "auto") if under_torchrun() else (Ranks(), device)
    say = print if ranks.master else lambda *args, **kwargs: None
    fsdp = ranks.distributed and cfg.parallel == "fsdp"
    parallel.check_dtype(fsdp, dtype)
    device_type = device.split(":")[0]
    torch.manual_seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    memory = PeakMemory(device)
    T = model_cfg.block_size
    seq_len = cfg.n_segments * T  # with memory on, the model runs it as n_segments segments of T
    raw_model = GPT(model_cfg).to(device)
    raw_model.gradient_checkpointing = cfg.gradient_checkpointing
    if fsdp:
        parallel.shard(raw_model, dtype)
    optimizer = raw_model.configure_optimizers(1e-1, 6e-4, (0.9, 0.95), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    model = wrap(raw_model, compile, ranks, device_type, fsdp, say, cfg.n_segments)
    grad_bytes = 0  # this rank's gradients, as the first step held them
    next_batch = batches(cfg, model_cfg.vocab_size, seq_len, device)

    def step() -> float:
        nonlocal grad_bytes
        X, Y = next_batch()
        with autocast(device, dtype):
            loss = model(X, Y, keep_logits=cfg.keep_logits, details=True).loss
        assert loss is not None
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        if not grad_bytes:  # counted once, on the first (warm-up) step, not in every timed one
            grad_bytes = local_bytes(p.grad for p in raw_model.parameters() if p.grad is not None)
        optimizer.zero_grad(set_to_none=True)
        return float(loss.item())  # a sync point, as a training loop's logging would have

    segments = f" ({cfg.n_segments} segments of {T})" if cfg.n_segments > 1 else ""
    memory_on = f", memory k={model_cfg.gmm_experts}" if raw_model.memory is not None else ""
    spread = f", {cfg.parallel} over {ranks.world_size} processes" if ranks.distributed else ""
    say(f"train: {raw_model.get_num_params() / 1e6:.2f}M params{memory_on}, batch {cfg.batch_size} x {seq_len} "
        f"tokens{segments}{spread}, {device} {dtype}, compile {'on' if compile else 'off'}"
        f"{', real data' if cfg.real_data else ''}")  # fmt: skip
    for _ in range(cfg.warmup_iters):
        step()
    prof = profiler(device) if cfg.profile else None
    if prof is not None:
        prof.start()
    times = time_steps(step, cfg.iters, device, say)
    result = finish_profile(prof, cfg.out_dir, "train", device) if ranks.master else {}
    result.update(
        train_figures(cfg, raw_model, times, device, dtype, compile),
        memory_bytes=memory.peak(),
        memory_start_bytes=memory.start,
        memory_kind=memory.kind,
        grad_bytes=grad_bytes,
        optimizer_bytes=local_bytes(v for st in optimizer.state.values() for v in st.values() if v.dim()),
    )
    if ranks.distributed:
        gather_ranks(result, cfg, ranks)
    return result


def train_figures(
    cfg: BenchConfig, raw_model: GPT, times: list[float], device: str, dtype: str, compile: bool
) -> dict[str, Any]:
    """What train mode reports of its timed steps and the model (memory and what the optimizer holds are added by
    bench_train): the median step, tokens/s, MFU, and this rank's weights (its shards under fsdp)."""
    dt = statistics.median(times)
    tokens = cfg.batch_size * cfg.n_segments * raw_model.config.block_size
    flops = peak_flops(device, dtype)
    memory = raw_model.memory
    return dict(
        mode="train",
        device=device,
        dtype=dtype,
        compile=compile,
        params=raw_model.get_num_params(),
        memory_params=sum(p.numel() for p in memory.parameters()) if memory is not None else 0,
        batch_size=cfg.batch_size,
        block_size=raw_model.config.block_size,
        n_segments=cfg.n_segments,
        ms_per_iter=dt * 1000,
        ms_per_iter_all=[t * 1000 for t in times],
        tokens_per_s=tokens / dt,
        mfu=raw_model.estimate_mfu(tokens, dt, flops),
        peak_flops=flops,
        weight_bytes=local_bytes(raw_model.parameters()),  # what this rank holds (its shards under fsdp)
    )


def wrap(
    model: GPT, compile: bool, ranks: Ranks, device_type: str, fsdp: bool, say: Callable[..., None], n_segments: int
) -> torch.nn.Module:
    """The model the steps call: compiled if asked, in DDP under torchrun without fsdp."""
    unused = parallel.unused_parameters(model.config, n_segments)
    if compile:
        say("compiling the model's blocks... (takes a ~minute)")
        model.compile_blocks()
    if ranks.distributed and not fsdp:
        return parallel.wrap_ddp(model, ranks, device_type, unused)
    return model


def batches(cfg: BenchConfig, vocab_size: int, seq_len: int, device: str) -> Callable[[], tuple[torch.Tensor, ...]]:
    """What each step trains on: batches of data_dir/dataset/train.bin with real_data, else one fixed batch of
    random tokens (no data loading in the measurement)."""
    if cfg.real_data:
        data_dir = os.path.join(cfg.data_dir, cfg.dataset)
        if not os.path.isfile(os.path.join(data_dir, "train.bin")):
            raise ValueError(f"real_data: {data_dir}/train.bin not found; run data/{cfg.dataset}/prepare.py first")
        data = open_split(data_dir, "train")
        sampler = BatchSampler(len(data), seq_len, seed=cfg.seed, source=str(data.filename))
        return lambda: get_batch(data, sampler.draw(cfg.batch_size), seq_len, device, vocab_size=vocab_size)
    x = torch.randint(vocab_size, (cfg.batch_size, seq_len), device=device)
    y = torch.randint(vocab_size, (cfg.batch_size, seq_len), device=device)
    return lambda: (x, y)


def time_steps(step: Callable[[], float], iters: int, device: str, say: Callable[..., None]) -> list[float]:
    """Seconds each of iters steps took, the device synchronised around each."""
    times = []
    for i in range(iters):
        synchronize(device)
        t0 = time.perf_counter()
        loss = step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        say(f"iter {i}: {times[-1] * 1000:.2f} ms, loss {loss:.4f}")
    return times


HELD = ("weight_bytes", "grad_bytes", "optimizer_bytes")


def gather_ranks(result: dict[str, Any], cfg: BenchConfig, ranks: Ranks) -> None:
    """Under torchrun: every rank's figures into each rank's result (result['ranks']). The process group is left
    by main, once bench_train has returned and its model is gone (parallel.finish)."""
    result.update(parallel=cfg.parallel, world_size=ranks.world_size, rank=ranks.rank)
    mine = {k: result[k] for k in ("rank", "memory_bytes", "memory_start_bytes", "ms_per_iter", *HELD)}
    everyone: list[Any] = [None] * ranks.world_size
    torch.distributed.all_gather_object(everyone, mine)
    result["ranks"] = everyone


def under_torchrun() -> bool:
    return int(os.environ.get("RANK", -1)) != -1


def local_bytes(tensors: Any) -> int:
    """Bytes of the tensors as this process holds them: a DTensor's local shard (fsdp), else the whole tensor."""
    return sum(parallel.local(t).numel() * t.element_size() for t in tensors)


@torch.no_grad()
def bench_sample(cfg: BenchConfig, model_cfg: GPTConfig) -> dict[str, Any]:
    """Greedy generation of new_tokens after the same random prompt, batch_size sequences at once, with the KV
    cache and without it (every step re-encodes the context); reports each one's tokens/s, whether both produced
    the same tokens, and the speed-up."""
    device, dtype, compile = resolve(cfg)
    torch.manual_seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    memory = PeakMemory(device)
    model = GPT(model_cfg).to(device)
    model.eval()
    if compile:
        model.compile_blocks(dynamic=True)  # every step, prefill and memory decoding included, runs the blocks
    prompt = torch.randint(model_cfg.vocab_size, (cfg.batch_size, cfg.prompt_len), device=device)
    print(f"sample: {model.get_num_params() / 1e6:.2f}M params, batch {cfg.batch_size}, ", end="")
    print(f"prompt {cfg.prompt_len} + {cfg.new_tokens} new tokens, greedy, {device} {dtype}, ", end="")
    print(f"compile {'on' if compile else 'off'}")
    outputs, seconds = {}, {}
    prof = profiler(device) if cfg.profile else None
    if prof is not None:
        prof.start()
    for use_cache in (True, False):
        name = "kv_cache" if use_cache else "no_cache"
        with autocast(device, dtype):
            # a short untimed run first: kernel selection, allocator, compilation
            model.generate(prompt, min(cfg.new_tokens, 4), temperature=0.0, use_cache=use_cache)
            synchronize(device)
            t0 = time.perf_counter()
            outputs[name] = model.generate(prompt, cfg.new_tokens, temperature=0.0, use_cache=use_cache)
            synchronize(device)
            seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.3f} s")
    result = finish_profile(prof, cfg.out_dir, "sample", device)
    same = torch.equal(outputs["kv_cache"], outputs["no_cache"])
    differ = (outputs["kv_cache"] != outputs["no_cache"]).any(dim=0).nonzero()
    n_new = cfg.batch_size * cfg.new_tokens
    result.update(
        mode="sample",
        device=device,
        dtype=dtype,
        compile=compile,
        params=model.get_num_params(),
        batch_size=cfg.batch_size,
        prompt_len=cfg.prompt_len,
        new_tokens=cfg.new_tokens,
        tokens_per_s_kv_cache=n_new / seconds["kv_cache"],
        tokens_per_s_no_cache=n_new / seconds["no_cache"],
        ms_per_token_kv_cache=seconds["kv_cache"] / cfg.new_tokens * 1000,
        ms_per_token_no_cache=seconds["no_cache"] / cfg.new_tokens * 1000,
        speedup=seconds["no_cache"] / seconds["kv_cache"],
        same_tokens=same,
        # first generated position where any sequence differs (low precision can flip a near-tie), else None
        first_difference=None if same else int(differ[0]) - cfg.prompt_len,
        memory_bytes=memory.peak(),
        memory_kind=memory.kind,
    )
    return result


def bench_memory(cfg: BenchConfig, model_cfg: GPTConfig) -> dict[str, Any]:
    """What the memory costs against memory off: bench_train's step, on the same shape, batch and seed, for each
    k in experts in turn (ascending), with each read mode in reads for k > 0 (concat reads every bank's slots, so
    its read slots and write tokens grow with k), each after its own warm-up. Each row holds k's parameters (and
    the memory's share of them), its read slots, median ms/iter, tokens/s and peak memory, and each as a ratio to
    the first row (k = 0 when it is listed).

    Peak memory needs care on a CPU: process RSS has no peak counter that can be reset, and memory a finished k
    has freed may stay with the process (the allocator keeps it), so in one process no k could read below an
    earlier one. So with fresh_process (the default) each k runs in a new `bench.py --mode=train` process, and
    its peak is that process's own RSS: each peak includes the interpreter and torch, the same for every k, so
    the differences between rows are the memory's, and "above start" is the peak less the RSS before the model
    was built, what the run itself added. On CUDA, max_memory_allocated is reset for each k and counts
    live tensors only, so there fresh_process=False saves the start-ups; elsewhere it gives running maxima, and
    the table's footnote says so."""
    device, dtype, compile = resolve(replace(cfg, mode="train"))  # a bad device fails here, once
    rows = []
    runs = [(k, read) for k in parse_experts(cfg.experts) for read in (parse_reads(cfg.reads) if k else ["-"])]
    for k, read in runs:
        train_cfg = replace(cfg, mode="train", json="")
        k_cfg = replace(with_experts(model_cfg, k), gmm_read=read if k else model_cfg.gmm_read)
        print(f"--- k = {k}{f', {read} read' if k else ''} ---")
        if cfg.fresh_process:
            r = train_in_new_process(train_cfg, k_cfg)
        else:
            gc.collect()  # the previous k's model and optimizer go before this k's peak is counted
            r = bench_train(train_cfg, k_cfg)
        keep = ("params", "memory_params", "ms_per_iter", "tokens_per_s", "memory_bytes")
        read_slots = 0 if k == 0 else k_cfg.gmm_slots * (k + int(k_cfg.gmm_shared_expert) if read == "concat" else 1)
        rows.append({"k": k, "read": read, "read_slots": read_slots, **{key: r[key] for key in keep}})
        rows[-1]["memory_rise_bytes"] = r["memory_bytes"] - r["memory_start_bytes"]
        memory_kind = r["memory_kind"]
    if cfg.fresh_process:
        memory_kind += ", each k in its own process"
        if "RSS" in memory_kind:
            memory_kind += " (the interpreter and torch included, the same for every k)"
    elif not device.startswith("cuda"):
        memory_kind += ", all k in one process: what an earlier k freed may count, or be reused without a rise"
    base = rows[0]
    for row in rows:
        for key in ("params", "ms_per_iter", "tokens_per_s", "memory_bytes", "memory_rise_bytes"):
            row[f"{key}_ratio"] = row[key] / base[key] if base[key] > 0 else None  # an RSS rise can be 0
    return dict(
        mode="memory",
        device=device,
        dtype=dtype,
        compile=compile,
        batch_size=cfg.batch_size,
        n_segments=cfg.n_segments,
        block_size=model_cfg.block_size,
        gmm_slots=model_cfg.gmm_slots,
        warmup_iters=cfg.warmup_iters,
        iters=cfg.iters,
        fresh_process=cfg.fresh_process,
        memory_kind=memory_kind,
        rows=rows,
    )


def bench_context(cfg: BenchConfig, model_cfg: GPTConfig) -> dict[str, Any]:
    """What context costs: for each segment count S, the same model shape with memory (each k<N> of variants, S
    segments of block_size tokens) and with full attention over the same S x block_size tokens (one segment that
    long, up to full_max_tokens). For each: the training step's ms per token and peak memory (bench_train in a new
    process, as in memory mode), and generation's ms per new token after a prompt that fills the context (greedy,
    KV cache, in this process): the time from the first new token to the last, so the prompt's prefill is left
    out. Memory's cost per token should stay flat as S grows; full attention's grows. Each of the
    gradient_checkpointing modes listed trains in its own process: with 'segment' the peak should stay flat in S."""
    device, dtype, compile = resolve(replace(cfg, mode="train", gradient_checkpointing="none"))
    T = model_cfg.block_size
    rows = []
    for S in parse_counts(cfg.segments):
        for variant in parse_variants(cfg.variants):
            full = variant == "full"
            if full and cfg.full_max_tokens < S * T:
                rows.append({"segments": S, "context": S * T, "variant": variant, "skipped": True})
                continue
            v_cfg = context_variant(model_cfg, variant, S)
            generate_ms = generation_ms(cfg, v_cfg, S * T, device, dtype)
            for recompute in parse_checkpointing(cfg.gradient_checkpointing, many=True):
                if variant == "xl" and recompute == "segment":  # an xl segment needs the previous one's cache
                    continue
                print(f"--- {S} segment(s), {S * T} tokens: {variant}, gradient_checkpointing {recompute} ---")
                run_cfg = replace(cfg, mode="train", json="", n_segments=1 if full else S,
                                  gradient_checkpointing=recompute)  # fmt: skip
                r = train_in_new_process(run_cfg, v_cfg)
                rows.append(
                    {
                        "segments": S,
                        "context": S * T,
                        "variant": variant,
                        "checkpointing": recompute,
                        "params": r["params"],
                        "train_ms_per_token": r["ms_per_iter"] / (cfg.batch_size * S * T),
                        "train_tokens_per_s": r["tokens_per_s"],
                        "memory_bytes": r["memory_bytes"],
                        "memory_above_start": r["memory_bytes"] - r["memory_start_bytes"],
                        "generate_ms_per_token": generate_ms,
                    }
                )
    return dict(
        mode="context",
        device=device,
        dtype=dtype,
        compile=compile,
        batch_size=cfg.batch_size,
        block_size=T,
        gmm_slots=model_cfg.gmm_slots,
        new_tokens=cfg.new_tokens,
        iters=cfg.iters,
        warmup_iters=cfg.warmup_iters,
        rows=rows,
    )


def bench_logits(cfg: BenchConfig, model_cfg: GPTConfig) -> dict[str, Any]:
    """What the loss's logits cost: the training step with every segment's logits kept and concatenated before the
    loss (how training held them before; keep_logits=True), and with the loss summed segment by segment and the
    head run in chunks that backward recomputes (keep_logits=False), each in a process of its own: peak memory,
    above what the process held before the model was built, and step time."""
    device, dtype, compile = resolve(replace(cfg, mode="train"))
    rows = []
    for keep in (True, False):
        print(f"--- logits {'kept' if keep else 'in chunks'} ---")
        r = train_in_new_process(replace(cfg, mode="train", json="", keep_logits=keep), model_cfg)
        rows.append({"keep_logits": keep, "ms_per_iter": r["ms_per_iter"], "memory_bytes": r["memory_bytes"],
                     "memory_above_start": r["memory_bytes"] - r["memory_start_bytes"]})  # fmt: skip
    tokens = cfg.batch_size * cfg.n_segments * model_cfg.block_size
    return dict(mode="logits", device=device, dtype=dtype, compile=compile, batch_size=cfg.batch_size,
                tokens=tokens, vocab_size=model_cfg.vocab_size, logits_bytes=tokens * model_cfg.vocab_size * 4,
                rows=rows)  # fmt: skip


def logits_table(result: dict[str, Any]) -> str:
    kept, chunked = result["rows"]
    lines = [
        "| loss | ms/iter | peak memory | above start |",
        "|---|---|---|---|",
        *(
            f"| {'all logits kept' if r['keep_logits'] else 'in chunks'} | {r['ms_per_iter']:.0f} "
            f"| {r['memory_bytes'] / 2**30:.2f} GiB | {r['memory_above_start'] / 2**30:.2f} GiB |"
            for r in (kept, chunked)
        ),
        "",
        f"{result['tokens']:,} tokens a step x vocabulary {result['vocab_size']:,}: one float32 copy of the logits is "
        f"{result['logits_bytes'] / 2**30:.2f} GiB; {result['device']} {result['dtype']}. Above start: "
        f"{chunked['memory_above_start'] / max(1, kept['memory_above_start']):.2f}x in chunks.",
    ]
    return "\n".join(lines)


def with_experts(model_cfg: GPTConfig, k: int) -> GPTConfig:
    """The model with k memory banks and the base's mixture settings, top-k kept below k (k1 has one bank to write,
    k2 of a top-2 base writes its top 1)."""
    return replace(model_cfg, gmm_experts=k, gmm_top_k=min(model_cfg.gmm_top_k, max(k - 1, 0)))


CONTEXT_NAMES = {"full": "full attention", "off": "no memory", "xl": "Transformer-XL"}  # the plot's legend


def context_variant(model_cfg: GPTConfig, variant: str, segments: int) -> GPTConfig:
    """The model a context-mode variant measures over `segments` segments: full attention is one segment as long as
    the context; xl attends to the previous segment (rope); k1 keeps no top-k (it has one bank to write)."""
    v_cfg = with_experts(model_cfg, int(variant[1:]) if variant.startswith("k") else 0)
    if variant == "full":
        return replace(v_cfg, block_size=segments * model_cfg.block_size)
    if variant == "xl":
        return replace(v_cfg, xl_attention=True, pos_emb="rope")
    return v_cfg


def generation_ms(cfg: BenchConfig, model_cfg: GPTConfig, context: int, device: str, dtype: str) -> float:
    """Greedy generation's ms per new token with a context of `context` tokens (prompt + new): the time from the
    first new token to the last, over new_tokens - 1 tokens, so the prompt's prefill is left out; the median of
    three runs after a warm-up."""
    new = max(min(cfg.new_tokens, context - 1), 2)
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device).eval()
    prompt = torch.randint(model_cfg.vocab_size, (cfg.batch_size, context - new), device=device)
    runs = []
    with autocast(device, dtype):
        for _ in range(4):  # the first is a warm-up
            times = []
            for _token in model.stream(prompt, new, temperature=0.0):
                synchronize(device)
                times.append(time.perf_counter())
            runs.append((times[-1] - times[0]) / (len(times) - 1) * 1000)
    return statistics.median(runs[1:])


def context_table(result: dict[str, Any]) -> str:
    lines = [
        "| segments | context tokens | variant | recompute | params | train ms/token | generate ms/token "
        "| peak memory | above start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['segments']} | {row['context']} | {row['variant']} | - | - | - | - | skipped | - |")
            continue
        above = row.get("memory_above_start")
        lines.append(
            f"| {row['segments']} | {row['context']} | {row['variant']} | {row.get('checkpointing', 'none')} "
            f"| {row['params']:,} | {row['train_ms_per_token']:.4f} | {row['generate_ms_per_token']:.3f} "
            f"| {row['memory_bytes'] / 2**30:.3f} GiB | {'-' if above is None else f'{above / 2**30:.3f} GiB'} |"
        )
    r = result
    lines += [
        "",
        f"Batch {r['batch_size']}, segments of {r['block_size']} tokens, {r['gmm_slots']} slots, {r['device']} "
        f"{r['dtype']}; train: median of {r['iters']} steps after {r['warmup_iters']} warm-up, each in a new "
        f"process; generate: {r['new_tokens']} new tokens after a prompt filling the context, prefill left out.",
    ]
    return "\n".join(lines)


def plot_context(result: dict[str, Any], path: str) -> str:
    """Train ms/token, generate ms/token and peak memory against the context length, one line per variant."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    keys = [("train_ms_per_token", "train ms / token"), ("generate_ms_per_token", "generate ms / new token"),
            ("memory_bytes", "training peak memory (GiB)")]  # fmt: skip
    lines = dict.fromkeys((row["variant"], row.get("checkpointing", "none")) for row in result["rows"])
    for ax, (key, label) in zip(axes, keys, strict=True):
        for variant, recompute in lines:
            rows = [r for r in result["rows"] if r["variant"] == variant and not r.get("skipped")
                    and r.get("checkpointing", "none") == recompute]  # fmt: skip
            scale = 2**30 if key == "memory_bytes" else 1
            name = CONTEXT_NAMES.get(variant, f"memory, {variant}")
            name += "" if recompute == "none" else f", recompute {recompute}"
            ax.plot([r["context"] for r in rows], [r[key] / scale for r in rows], "o-", label=name)
        ax.set(xscale="log", xlabel="context (tokens)", ylabel=label)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    fig.suptitle(f"what context costs ({result['device']}, batch {result['batch_size']})")
    fig.savefig(path, dpi=100)
    return path


def train_in_new_process(cfg: BenchConfig, model_cfg: GPTConfig, nproc: int = 0) -> dict[str, Any]:
    """bench_train in a new python running this file, every setting passed as --key=value; its JSON result. With
    nproc, torchrun starts nproc of them (rank 0's result holds every rank's figures)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        settings = {**asdict(replace(cfg, json=path)), **asdict(model_cfg)}
        args = [f"--{key}={value!r}" for key, value in settings.items()]  # repr: read back by configure's literal_eval
        launcher = [sys.executable]
        if nproc:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        done = subprocess.run([*launcher, os.path.abspath(__file__), *args], env={**os.environ, **EXACT_RSS})
        what = f"--parallel={cfg.parallel} on {nproc} processes" if nproc else f"--gmm_experts={model_cfg.gmm_experts}"
        result = read_result(path, nproc)
        if result is None:
            raise RuntimeError(f"bench.py --mode=train {what} exited with {done.returncode} and no complete result")
        if done.returncode != 0:  # e.g. a rank aborted in torch's teardown after every rank had reported
            print(f"warning: bench.py --mode=train {what} exited with {done.returncode} after writing its complete "
                  f"result (every rank's figures); the result is kept", file=sys.stderr)  # fmt: skip
        return result


def read_result(path: str, nproc: int) -> dict[str, Any] | None:
    """The result a bench.py --mode=train process wrote to path: None if it wrote none, or under torchrun (nproc)
    if it lacks any rank's figures."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            result: dict[str, Any] = json.load(f)
        except json.JSONDecodeError:  # cut off mid-write
            return None
    if nproc and len(result.get("ranks") or []) != nproc:
        return None
    return result


def bench_parallel(cfg: BenchConfig, model_cfg: GPTConfig) -> dict[str, Any]:
    """What each rank holds under each parallelism in parallels: bench_train's step under torchrun with nprocs
    processes, one torchrun per parallelism, so each rank's peak is its own. Per rank: the bytes of its weights,
    gradients and AdamW moments (its shards under fsdp; counted from the tensors, so exact), its peak memory (on a
    CPU the process's RSS, the interpreter and torch included) and the median step time. With fsdp a rank should
    hold about 1/nprocs of what it holds under ddp; activations are not sharded."""
    device, dtype, compile = resolve(replace(cfg, mode="train"))
    rows, first = [], None
    for kind in parse_parallels(cfg.parallels):
        print(f"--- {kind}: {cfg.nprocs} processes ---")
        r = train_in_new_process(replace(cfg, mode="train", json="", parallel=kind), model_cfg, nproc=cfg.nprocs)
        first = first or r
        for rank in r["ranks"]:
            held = sum(rank[k] for k in HELD)
            rise = rank["memory_bytes"] - rank["memory_start_bytes"]
            rows.append({"parallel": kind, **rank, "held_bytes": held, "memory_rise_bytes": rise})
    assert first is not None
    base = {row["rank"]: row for row in rows if row["parallel"] == rows[0]["parallel"]}
    for row in rows:
        for key in ("held_bytes", "memory_bytes", "memory_rise_bytes", "ms_per_iter"):
            ref = base[row["rank"]][key]
            row[f"{key}_ratio"] = row[key] / ref if ref > 0 else None
    return dict(
        mode="parallel",
        device=first["device"],
        dtype=dtype,
        compile=compile,
        params=first["params"],
        nproc=cfg.nprocs,
        batch_size=cfg.batch_size,
        block_size=model_cfg.block_size,
        n_layer=model_cfg.n_layer,
        n_embd=model_cfg.n_embd,
        warmup_iters=cfg.warmup_iters,
        iters=cfg.iters,
        memory_kind=first["memory_kind"] + ", each rank's own",
        rows=rows,
    )


def parallel_table(result: dict[str, Any]) -> str:
    """Parallel mode's rows as a markdown table, one row per parallelism and rank, ratios to the first one's."""
    mib = 2**20
    lines = [
        "| parallel | rank | weights | gradients | AdamW moments | held in all | peak memory | peak above start "
        "| ms/iter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['parallel']} | {row['rank']} | {row['weight_bytes'] / mib:,.1f} MiB "
            f"| {row['grad_bytes'] / mib:,.1f} MiB | {row['optimizer_bytes'] / mib:,.1f} MiB "
            f"| {row['held_bytes'] / mib:,.1f} MiB ({times(row['held_bytes_ratio'])}) "
            f"| {row['memory_bytes'] / mib:,.0f} MiB ({times(row['memory_bytes_ratio'])}) "
            f"| {row['memory_rise_bytes'] / mib:,.0f} MiB ({times(row['memory_rise_bytes_ratio'])}) "
            f"| {row['ms_per_iter']:,.0f} ({times(row['ms_per_iter_ratio'])}) |"
        )
    r = result
    lines += [
        "",
        f"{r['params'] / 1e6:.1f}M parameters ({r['n_layer']} layers, d = {r['n_embd']}), {r['nproc']} processes, "
        f"batch {r['batch_size']} x {r['block_size']} tokens per rank, {r['device']} {r['dtype']}; ratios (x) are "
        f"against {r['rows'][0]['parallel']}'s rank of the same number. held: the rank's weights, gradients and "
        f"AdamW moments, counted from its tensors. Peak memory: {r['memory_kind']}; above start: the peak less what "
        f"was held before the model was built. ms/iter: the median of {r['iters']} steps after {r['warmup_iters']} "
        "warm-up steps.",
    ]
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """The results a person reads, as a two-column table (memory mode: a markdown table, one row per k)."""
    if result["mode"] == "memory":
        return memory_table(result)
    if result["mode"] == "parallel":
        return parallel_table(result)
    if result["mode"] == "context":
        return context_table(result)
    if result["mode"] == "logits":
        return logits_table(result)
    gib = result["memory_bytes"] / 2**30
    if result["mode"] == "train":
        rows = [
            ("ms/iter (median)", f"{result['ms_per_iter']:.2f}"),
            ("tokens/s", f"{result['tokens_per_s']:,.0f}"),
            ("MFU", f"{result['mfu'] * 100:.2f}% of {result['peak_flops'] / 1e12:.3g} TFLOP/s"),
            ("peak memory", f"{gib:.3f} GiB ({result['memory_kind']})"),
        ]
    else:
        same = "yes" if result["same_tokens"] else f"NO, first at new token {result['first_difference']}"
        rows = [
            ("tokens/s, KV cache", f"{result['tokens_per_s_kv_cache']:,.1f}"),
            ("tokens/s, no cache", f"{result['tokens_per_s_no_cache']:,.1f}"),
            ("speed-up", f"{result['speedup']:.2f}x"),
            ("same tokens", same),
            ("peak memory", f"{gib:.3f} GiB ({result['memory_kind']})"),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 5}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def top_ops_table(ops: list[dict[str, Any]], steps: int) -> str:
    """Where the profiled time went, the operator with the most self time first; in ms a step when steps > 0."""
    unit = "ms a step" if steps else "ms"
    lines = [f"| operator | {unit} | share |", "|---|---|---|"]
    lines += [f"| {op['op']} | {op['ms'] / max(steps, 1):.2f} | {op['share']:.1%} |" for op in ops]
    return "\n".join(lines)


def memory_table(result: dict[str, Any]) -> str:
    """Memory mode's rows as a markdown table, each figure with its ratio to the first row, and what was measured."""
    rows = result["rows"]
    lines = [
        "| k | read | read slots | parameters | memory's share | ms/iter | tokens/s | peak memory | peak above start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        share = row["memory_params"] / row["params"]
        lines.append(
            f"| {row['k']} | {row.get('read', '-')} | {row.get('read_slots', '-')} "
            f"| {row['params']:,} ({times(row['params_ratio'])}) | {row['memory_params']:,} ({share:.1%}) "
            f"| {row['ms_per_iter']:.1f} ({times(row['ms_per_iter_ratio'])}) "
            f"| {row['tokens_per_s']:,.0f} ({times(row['tokens_per_s_ratio'])}) "
            f"| {row['memory_bytes'] / 2**30:.3f} GiB ({times(row['memory_bytes_ratio'])}) "
            f"| {row['memory_rise_bytes'] / 2**20:.1f} MiB ({times(row['memory_rise_bytes_ratio'])}) |"
        )
    r = result
    lines += [
        "",
        f"Ratios (x) are against k = {rows[0]['k']}. ms/iter is the median of {r['iters']} timed training steps after "
        f"{r['warmup_iters']} warm-up steps; batch {r['batch_size']} x {r['n_segments']} segments x "
        f"{r['block_size']} tokens, {r['gmm_slots']} slots, {r['device']} {r['dtype']}, "
        f"compile {'on' if r['compile'] else 'off'}.",
        f"Peak memory: {r['memory_kind']}; above start: the peak less what was held before the model was built.",
    ]
    return "\n".join(lines)


def times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def mode_of(argv: list[str]) -> str:
    """The mode argv asks for, by config file or --mode= (the last one wins), before the rest is configured."""
    mode = BenchConfig.mode
    for arg in argv:
        if arg.startswith("--mode="):
            mode = parse_value(arg.partition("=")[2])
        elif not arg.startswith("--"):
            mode = read_config_file(arg).get("mode", mode)
    return mode


def defaults(mode: str) -> tuple[BenchConfig, GPTConfig]:
    """GPT-2 124M for train and sample (and parallel, with short sequences); memory mode measures the GMM quick
    start's shape."""
    if mode == "parallel":
        return BenchConfig(**PARALLEL_BENCH), GPTConfig(**PARALLEL_MODEL)
    if mode == "logits":
        return BenchConfig(**LOGITS_BENCH), GPTConfig(**LOGITS_MODEL)
    if mode not in ("memory", "context"):
        return BenchConfig(), GPTConfig()
    return BenchConfig(**QUICK_START_BENCH), GPTConfig(**QUICK_START_MODEL)


def check_outputs(cfg: BenchConfig) -> None:
    """Where the results go must be writable before anything is measured, not found out after."""
    if cfg.profile:
        check_writable_dir(cfg.out_dir)
    if cfg.json:
        if os.path.isdir(cfg.json):
            raise ValueError(f"json = '{cfg.json}' is a folder: name the file the results go to")
        check_writable_dir(os.path.dirname(cfg.json) or ".", "the folder of json")


def main(argv: list[str]) -> dict[str, Any]:
    try:
        cfg, model_cfg = configure(argv, *defaults(mode_of(argv)))
    except ConfigError as e:
        fail(str(e))
    bench = {"train": bench_train, "sample": bench_sample, "memory": bench_memory, "context": bench_context,
             "parallel": bench_parallel, "logits": bench_logits}[cfg.mode]  # fmt: skip
    try:
        check_outputs(cfg)
        result = bench(cfg, model_cfg)
    except ValueError as e:  # bad device, dtype, data, output path or model setting: one line
        fail(str(e))
    if result.get("rank", 0) == 0:  # under torchrun, rank 0 reports for every rank
        report(result, cfg, model_cfg)
    parallel.finish()  # after the report: the other ranks wait at its barrier until the result is written
    return result


def report(result: dict[str, Any], cfg: BenchConfig, model_cfg: GPTConfig) -> None:
    """The table on stdout; the profiler trace, the context plot and the JSON file where they were asked for."""
    print(format_table(result))
    if "top_ops" in result:
        print(top_ops_table(result["top_ops"], cfg.iters if cfg.mode == "train" else 0))
    if "trace" in result:
        print(f"profiler trace written to {result['trace']}")
    if cfg.mode == "context":
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(f"plot written to {plot_context(result, os.path.join(cfg.out_dir, 'context.png'))}")
    if cfg.json:
        os.makedirs(os.path.dirname(cfg.json) or ".", exist_ok=True)
        with open(cfg.json, "w") as f:
            json.dump({**result, "config": asdict(cfg), "model_args": asdict(model_cfg)}, f, indent=2)
        print(f"results written to {cfg.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
