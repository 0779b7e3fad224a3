"""train.py --parallel=fsdp (parallel.py) on 2 gloo ranks of the CPU, by equivalence with one process:

- 2 ranks with fsdp log the same train losses and end with the same weights as one process, memory off and with a
  GMM of 4 experts (whose parameters live in the root's sharded unit);
- a run saved under fsdp resumes in one process, and a run saved in one process resumes under fsdp, each equal to
  the straight run (losses and weights), and the checkpoints have the same keys and optimizer layout;
- gradient accumulation under fsdp (2 micro-steps a rank, gradients reduced after the last) equals the same global
  batch in one step of one process;
- with dtype=bfloat16, FSDP's mixed-precision policy computes in bf16 (losses near float32's) and keeps float32
  weights.
Torch runs on one thread per process (conftest.py, and OMP_NUM_THREADS=1 for the ranks), so the two ranks fit the
2-core CI machine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN

import train
from common import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
# 2 layers: two Block units and the root's; 2 segments of 8, so memory is read and written
SMALL = [*TINY_TRAIN, "--n_layer=2", "--block_size=8", "--n_segments=2", "--eval_iters=2", "--warmup_iters=2"]


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"--data_dir={data}", "--dataset=shakespeare_char", f"--out_dir={out}", *SMALL, *extra]


def fsdp(data: Path, out: Path, *extra: str) -> None:
    """2 gloo ranks of train.py with --parallel=fsdp."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, *args(data, out, "--parallel=fsdp", *extra)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def one(data: Path, out: Path, *extra: str) -> None:
    train.main(args(data, out, *extra))


def losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in lines if r["event"] == "train"}


def assert_same_run(a: Path, b: Path) -> None:
    """Same train losses, same final weights and optimizer moments (float tolerance: the ranks sum in another order)."""
    assert losses(a) == pytest.approx(losses(b), rel=1e-5, abs=1e-6) and losses(a)
    ca, cb = load_checkpoint(str(a / "ckpt.pt")), load_checkpoint(str(b / "ckpt.pt"))
    assert ca.keys() == cb.keys() and ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        torch.testing.assert_close(cb["model"][k], ca["model"][k], rtol=0, atol=1e-5)
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]
    assert oa["state"].keys() == ob["state"].keys()
    for i, state in oa["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ob["state"][i][name], state[name], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("experts", [0, 4])
def test_fsdp_equals_one_process(shakespeare_char_data: Path, tmp_path: Path, experts: int) -> None:
    run = ["--gradient_accumulation_steps=2", "--max_iters=3", "--eval_interval=3", "--lr_decay_iters=3",
           f"--gmm_experts={experts}"]  # fmt: skip
    one(shakespeare_char_data, tmp_path / "one", *run)
    fsdp(shakespeare_char_data, tmp_path / "fsdp", *run)
    assert list(losses(tmp_path / "fsdp")) == [1, 2, 3]
    assert_same_run(tmp_path / "one", tmp_path / "fsdp")
    has_memory = any(k.startswith("memory.") for k in load_checkpoint(str(tmp_path / "fsdp" / "ckpt.pt"))["model"])
    assert has_memory == (experts > 0)


@pytest.mark.slow
def test_fsdp_and_one_process_resume_each_other(shakespeare_char_data: Path, tmp_path: Path) -> None:
    run = ["--gradient_accumulation_steps=2", "--eval_interval=3", "--lr_decay_iters=6", "--gmm_experts=4"]
    one(shakespeare_char_data, tmp_path / "straight", *run, "--max_iters=6")
    fsdp(shakespeare_char_data, tmp_path / "a", *run, "--max_iters=3")  # saved under fsdp, resumed in one process
    one(shakespeare_char_data, tmp_path / "a", *run, "--max_iters=6", "--init_from=resume")
    one(shakespeare_char_data, tmp_path / "b", *run, "--max_iters=3")  # saved in one process, resumed under fsdp
    fsdp(shakespeare_char_data, tmp_path / "b", *run, "--max_iters=6", "--init_from=resume")
    for resumed in ("a", "b"):
        assert list(losses(tmp_path / resumed)) == [1, 2, 3, 4, 5, 6]
        assert_same_run(tmp_path / "straight", tmp_path / resumed)


@pytest.mark.slow
def test_fsdp_gradient_accumulation_equals_one_big_step(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """4 micro-batches of 2 (2 per rank, gradients reduced after the second) = one batch of 8 in one process: the
    sampler draws the same 8 sequences, and the mean over equal micro-batches is the mean over the batch."""
    run = ["--max_iters=3", "--eval_interval=3", "--lr_decay_iters=3", "--gmm_experts=4"]
    fsdp(shakespeare_char_data, tmp_path / "accum", *run, "--batch_size=2", "--gradient_accumulation_steps=4")
    one(shakespeare_char_data, tmp_path / "big", *run, "--batch_size=8", "--gradient_accumulation_steps=1")
    assert_same_run(tmp_path / "big", tmp_path / "accum")


@pytest.mark.slow
def test_fsdp_bfloat16_computes_in_bf16_and_keeps_float32_weights(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """dtype=bfloat16 under fsdp: FSDP's mixed-precision policy gathers bf16 weights for compute (losses near
    float32's, not equal to them) while the sharded weights, and so the checkpoint, stay float32."""
    run = [
        "--max_iters=3",
        "--eval_interval=3",
        "--lr_decay_iters=3",
        "--gmm_experts=4",
        "--gradient_accumulation_steps=2",
    ]
    one(shakespeare_char_data, tmp_path / "fp32", *run)
    fsdp(shakespeare_char_data, tmp_path / "bf16", *run, "--dtype=bfloat16")
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert bf16 == pytest.approx(fp32, abs=0.02) and bf16 != fp32
    weights = load_checkpoint(str(tmp_path / "bf16" / "ckpt.pt"))["model"]
    assert {w.dtype for w in weights.values()} == {torch.float32}
