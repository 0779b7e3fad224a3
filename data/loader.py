"""
Reading prepared data: the uint16 token files (`train.bin`, `val.bin`) a `data/<name>/prepare.py` writes, their
answer masks (episode datasets), the batches a run trains and evaluates on, and the sampler whose state makes a
resumed run draw the batches it would have drawn. train.py, evaluate.py, bench.py and analyze.py read data through
this module; data/README.md is the contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


class BatchSampler:
    """Draws the random offsets of training sequences from its own generator, whose state goes into checkpoints,
    so a resumed run draws exactly the batches the uninterrupted run would have drawn. Every DDP rank draws the
    whole global batch of a step and keeps its own share, so the ranks together see what one process would."""

    def __init__(
        self,
        n_tokens: int,
        seq_len: int,
        seed: int,
        align: int = 1,
        generator: torch.Generator | None = None,
        source: str = "the data",
    ) -> None:
        if n_tokens < seq_len + 1:
            raise ValueError(f"{source} holds {n_tokens} tokens, fewer than one sequence of {seq_len} + 1")
        self.n_tokens = n_tokens
        self.seq_len = seq_len
        self.align = align  # offsets are multiples of this: the episode length of an episode-aligned dataset
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> torch.Tensor:
        """n sequence start offsets (n,), each leaving room for seq_len + 1 tokens (the last for the final target)."""
        high = (self.n_tokens - self.seq_len - 1) // self.align + 1
        return torch.randint(high, (n,), generator=self.generator) * self.align

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def get_batch(
    data: np.ndarray,
    offsets: torch.Tensor,
    seq_len: int,
    device: str,
    mask: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and next-token targets y, both (B, seq_len), from the uint16 token array at the given offsets.
    With an answer mask (synthetic tasks), targets whose token is not an answer are -1: only answers count.
    With vocab_size, a token id the model has no embedding for is a one-line ValueError here, on the CPU, rather
    than an index error in the model (a device-side assert on a GPU)."""
    rows = torch.stack([torch.from_numpy(data[i : i + seq_len + 1].astype(np.int64)) for i in offsets.tolist()])
    if vocab_size is not None and int(rows.max()) >= vocab_size:
        b, t = divmod(int(rows.argmax()), seq_len + 1)
        raise out_of_vocabulary(data, int(rows.max()), int(offsets[b]) + t, vocab_size)
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    if mask is not None:
        y = y.masked_fill(answer_marks(mask, offsets, seq_len, "cpu") == 0, -1)
    if device.startswith("cuda"):
        # pin arrays x,y, which allows us to move them to GPU asynchronously (non_blocking=True)
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def answer_marks(mask: np.ndarray, offsets: torch.Tensor, seq_len: int, device: str | torch.device) -> torch.Tensor:
    """The answer mask's value at each target of get_batch's rows, (B, seq_len) uint8: 0 where the target is not an
    answer, 1 an answer, 2 (data.common.REPEAT) the answer to a question asked before in the episode."""
    marks = torch.stack([torch.from_numpy(mask[i + 1 : i + 1 + seq_len].astype(np.uint8)) for i in offsets.tolist()])
    return marks.to(device)


def open_split(data_dir: str, split: str) -> np.memmap:
    """The split's tokens as a read-only memory map (re-opened per use, which avoids a numpy memmap leak); a
    missing, empty or odd-sized file is a one-line ValueError."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found: prepare the data again (see data/README.md)")
    size = os.path.getsize(path)
    if size == 0 or size % 2:
        raise ValueError(
            f"{path} holds {size} bytes: a token file holds uint16 ids, 2 bytes each, and at least one; it is "
            "empty or cut short (prepare the data again)"
        )
    return np.memmap(path, dtype=np.uint16, mode="r")


FULL_CHECK_TOKENS = 2**28  # token files up to this size (512 MB) are checked whole before training starts


def check_tokens(data: np.memmap, vocab_size: int) -> np.memmap:
    """data, once every token id in it is known to be < vocab_size; a ValueError naming the file otherwise. Files
    larger than FULL_CHECK_TOKENS (openwebtext: 9B tokens) are not read whole here: get_batch checks each batch."""
    if len(data) <= FULL_CHECK_TOKENS and int(data.max()) >= vocab_size:
        first = int(np.argmax(data >= vocab_size))
        raise out_of_vocabulary(data, int(data[first]), first, vocab_size)
    return data


def out_of_vocabulary(data: np.ndarray, token: int, position: int, vocab_size: int) -> ValueError:
    return ValueError(
        f"{getattr(data, 'filename', 'the data')} holds token id {token} (at token {position:,}), outside the "
        f"model's vocabulary of {vocab_size}: the data was tokenized for another model; prepare it again, or "
        "train a model of this data's vocab_size"
    )


def open_mask(data_dir: str, split: str) -> np.ndarray | None:
    """The split's answer mask (uint8, 1 = a scored answer token) if the dataset has one, else None."""
    path = os.path.join(data_dir, f"{split}_mask.bin")
    return np.memmap(path, dtype=np.uint8, mode="r") if os.path.exists(path) else None


def ensure_data(data_dir: str, dataset: str, prepare_args: list[str] | None = None) -> None:
    """Run data/<dataset>/prepare.py (with prepare_args) when the bins are missing; its own message says what to do
    if it cannot."""
    if all(os.path.exists(os.path.join(data_dir, f)) for f in ("train.bin", "val.bin", "meta.json")):
        return
    script = ROOT / "data" / dataset / "prepare.py"
    if not script.exists():
        raise ValueError(
            f"dataset '{dataset}': no train.bin/val.bin/meta.json in {data_dir} and no {script} to make them"
        )
    print(f"{data_dir} has no prepared data: running {script.relative_to(ROOT)}")
    result = subprocess.run([sys.executable, str(script), *(prepare_args or []), "--out_dir", data_dir])
    if result.returncode != 0:
        raise ValueError(f"preparing dataset '{dataset}' failed (see the message above)")


def episode_dir(data_dir: str, meta: dict[str, Any], n_segments: int, block_size: int) -> str:
    """Where a run finds sequences of n_segments segments of block_size tokens. Text: the dataset's folder, cut
    anywhere. An episode dataset (a synthetic task): its own folder if its episodes have that shape, else a sibling
    folder `<folder>_s<n>_t<T>` holding the same task at that length, made by its prepare.py (see ensure_data)."""
    if "episode_len" not in meta or (meta["n_segments"], meta["block_size"]) == (n_segments, block_size):
        return data_dir
    return f"{data_dir.rstrip(os.sep)}_s{n_segments}_t{block_size}"
