"""Small things train.py, sample.py and bench.py share: device and dtype choice, autocast, peak FLOPs, checkpoints."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from typing import Any, NoReturn

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16/fp16 tensor-core peak FLOP/s per GPU, from the vendors' data sheets (no sparsity). Matched as a
# substring of torch.cuda.get_device_name(); the first match wins, so longer names come first.
GPU_PEAK_FLOPS = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),  # AWS's A10G: a little slower than the A10
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),  # with fp32 accumulation
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def default_device() -> str:
    """The best device this machine has: cuda, then Apple's mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> str:
    """What the device does well: bf16 on CUDA GPUs that have it, else fp16 (with a GradScaler); float32 on
    CPU (autocast there is slower than float32 on most CPUs) and on MPS (autocast there is young)."""
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def check_device(device: str) -> None:
    """One clear error for a device this machine cannot use."""
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device = '{device}' but CUDA is not available here: use cpu{', mps' * _has_mps()}")
    if kind == "mps" and not _has_mps():
        raise ValueError(f"device = '{device}' but Apple MPS is not available here: use cpu")
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device = '{device}' is not one of auto, cpu, cuda, cuda:N, mps")
    if kind == "cuda" and device != "cuda":
        n = torch.cuda.device_count()
        index = device.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= n:
            raise ValueError(f"device = '{device}' but this machine has {n} CUDA device(s): use cuda:0..cuda:{n - 1}")


def _has_mps() -> bool:
    return torch.backends.mps.is_available()


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass; a no-op in float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=DTYPES[dtype])


@functools.cache
def peak_flops(device: str, dtype: str) -> float:
    """Peak FLOP/s of the device in use, for MFU. CUDA GPUs come from the table above (TF32 counts half the bf16
    figure); a GPU not in the table, the CPU and MPS are measured once with a large matmul, so their MFU is
    relative to what this machine's matmul achieves rather than to a data-sheet number."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, flops in GPU_PEAK_FLOPS:
            if key in name:
                return flops if dtype != "float32" else flops / 2
    return measure_matmul_flops(device, DTYPES.get(dtype, torch.float32))


def measure_matmul_flops(device: str, dtype: torch.dtype, n: int = 1024, reps: int = 8) -> float:
    """Achieved FLOP/s of an n x n matmul on the device (best of reps)."""
    if device == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU autocast runs matmuls in float32 on most CPUs
    g = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the global RNG of a run
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


def save_checkpoint(obj: dict[str, Any], path: str) -> None:
    """Atomic save: write a temporary file beside the target, flush it to disk, then rename it over the target,
    so a crash mid-save leaves the previous checkpoint intact. A save that fails (a full disk) removes its partial
    temporary file rather than leave it filling the disk."""
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (never unpickle arbitrary objects); one clear error if the file
    is missing, truncated, or not one of this project's checkpoints."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint '{path}' cannot be read: {unreadable_reason(e)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise ValueError(f"checkpoint '{path}' is not a checkpoint of this project (no model / model_args)")
    return ckpt


def unreadable_reason(e: Exception) -> str:
    """Why torch.load failed, in words a person can act on (torch's own messages are a number for some truncated
    files, and for a file that is not a checkpoint they suggest weights_only=False, which would run its code)."""
    text = str(e).strip()
    if isinstance(e, (KeyError, EOFError)) or "central directory" in text or "PytorchStreamReader" in text:
        return "it is truncated or corrupt (not a whole torch archive); a checkpoint cut short by a crash?"
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
        return "it is not a checkpoint that loads safely (weights_only=True refused it), so it is not loaded"
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:200]


def check_model_args(saved: dict[str, Any], requested: dict[str, Any], keys: set[str], path: str) -> None:
    """A run that loads a checkpoint may not silently ask for a different model: the first model setting in
    `keys` (what the user set) that differs from the checkpoint's is an error. dropout may change."""
    for key in sorted(keys):
        if key in saved and key in requested and key != "dropout" and saved[key] != requested[key]:
            raise ValueError(
                f"{key} = {requested[key]!r} disagrees with {path}, which was trained with {key} = {saved[key]!r}: "
                "drop the setting, or train a new model in another out_dir"
            )


def interactive() -> bool:
    """Whether progress is watched on a terminal (tqdm draws on stderr): then a bar, else plain periodic lines, so a
    log file, nohup or CI gets readable lines instead of thousands of carriage-return updates."""
    return sys.stderr.isatty()


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when the thread that started it exits (Linux's PR_SET_PDEATHSIG;
    elsewhere nothing happens): a worker, and what it starts in turn, never outlives the command that started it."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def git_commit() -> str:
    """The project's commit (with '+dirty' when the tree has changes), 'unknown' outside a git checkout."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def print0(*args: Any, **kwargs: Any) -> None:
    """print on the master process only (RANK unset or 0)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


def fail(message: str) -> NoReturn:
    """A user's mistake: one line on stderr and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
    """The records of out_dir/metrics.jsonl, [] if there is none. A last line cut short (a run killed while writing
    it) is left out; any other line that is not JSON is a one-line ValueError naming it. export.py, dashboard.py and
    analyze.py read metrics.jsonl through this."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for n, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == lines[-1][0]:
                break
            raise ValueError(f"{path}: line {n} is not JSON (metrics.jsonl holds one JSON record a line)") from None
    return records
