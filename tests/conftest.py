"""Shared pytest setup: put the repo root on sys.path so tests import model, train, tokenizer... as top-level modules
(`uv run pytest` does not add the working directory itself); `shakespeare_char_data`, the char dataset prepared once
per session for tests that train."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# one thread per process: the tiny test models gain nothing from more, and tests that start subprocesses (DDP,
# scripts run as a user would) would otherwise oversubscribe the cores many times over
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# a 1-layer, 32-wide char model on 16-token sequences: a training step takes milliseconds on one CPU thread
TINY_TRAIN = [
    "--device=cpu",
    "--dtype=float32",
    "--compile=False",
    "--n_layer=1",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=16",
    "--batch_size=2",
    "--gradient_accumulation_steps=1",
    "--eval_iters=2",
    "--log_interval=1",
    "--warmup_iters=2",
    "--learning_rate=1e-2",
]


# --- shared data ------------------------------------------------------------------------------------------------------

# ../shared beside the project root (a device checkout may hold it at ./shared)
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")
SHAKESPEARE_TXT = SHARED / "data" / "tinyshakespeare" / "input.txt"
# tiktoken's GPT-2 BPE files, as tiktoken's own cache would hold them after a download (this machine has no network)
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))


@pytest.fixture(scope="session")
def shakespeare_char_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir whose shakespeare_char/ holds train.bin, val.bin and meta.json, prepared once per session from
    the shared tiny-shakespeare text (offline): pass it as --data_dir with --dataset=shakespeare_char."""
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip(f"{SHAKESPEARE_TXT} not found")
    data_dir = tmp_path_factory.mktemp("data")
    script = ROOT / "data" / "shakespeare_char" / "prepare.py"
    out = data_dir / "shakespeare_char"
    subprocess.run(
        [sys.executable, str(script), "--out_dir", str(out), "--input", str(SHAKESPEARE_TXT)],
        check=True,
        capture_output=True,
    )
    return data_dir
