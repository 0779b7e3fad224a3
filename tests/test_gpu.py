"""What only a CUDA GPU can show, skipped elsewhere; gpu_check.py runs these beside the GPU benchmarks.

- bfloat16 autocast computes the memory model's loss and gradients near float32;
- float16 trains through train.py with the gradient scaler (the loss falls, no step skipped for good);
- the flash kernel of scaled_dot_product_attention takes the model's attention (bfloat16, forced to it);
- torch.compile gives eager's loss and gradients with memory on;
- the memory's incremental decoding equals its forward on CUDA;
- with gradient_checkpointing = 'segment', peak training memory is flat in the number of segments (<= 1.15x from
  4 to 64 segments), where without it it grows.
And, on any machine, that gpu_check.py --quick runs each of its parts into one JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN

import train
from decode import SegmentDecoder
from model import GPT, GPTConfig

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MEMORY = dict(block_size=64, vocab_size=512, n_layer=4, n_head=4, n_embd=128, gmm_experts=4, gmm_slots=8,
              gmm_top_k=2, gmm_shared_expert=True)  # fmt: skip


@pytest.fixture(autouse=True)
def float32_matmuls() -> Iterator[None]:
    """Each test starts with full float32 matmuls, as a fresh process does: train.main (the float16 test) turns on
    TF32 for its process, which would loosen the float32 comparisons of the tests after it to ~5e-4."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def model_on_cuda(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**MEMORY, **overrides})).cuda()  # type: ignore[arg-type]


def batch(L: int, B: int = 4) -> torch.Tensor:
    return torch.randint(MEMORY["vocab_size"], (B, L), device="cuda", generator=None)


@pytest.mark.gpu
@gpu
def test_bfloat16_is_near_float32() -> None:
    model = model_on_cuda().train()
    idx = batch(4 * 64)
    _, loss32 = model(idx, idx)
    assert loss32 is not None
    grads32 = torch.autograd.grad(loss32, list(model.parameters()))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss16 = model(idx, idx)
    assert loss16 is not None
    grads16 = torch.autograd.grad(loss16, list(model.parameters()))
    assert abs(loss16.item() - loss32.item()) < 2e-2
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads16]).float(),
                                                torch.cat([g.flatten() for g in grads32]), dim=0)  # fmt: skip
    assert cos > 0.99


@pytest.mark.gpu
@gpu
def test_float16_trains_with_the_scaler(shakespeare_char_data: Path, tmp_path: Path) -> None:
    args = [a for a in TINY_TRAIN if not a.startswith(("--device", "--dtype"))]
    train.main([*args, "--device=cuda", "--dtype=float16", f"--data_dir={shakespeare_char_data}",
                "--dataset=shakespeare_char", f"--out_dir={tmp_path}", "--max_iters=40", "--eval_interval=40",
                "--gmm_experts=2", "--n_segments=2"])  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "train"]
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["skipped"] < 5


@pytest.mark.gpu
@gpu
def test_flash_attention_takes_the_attention() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = model_on_cuda(gmm_read_gate=True).eval()
    idx = batch(4 * 64)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference, _ = model(idx, idx)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if flash cannot run these calls
            flash, _ = model(idx, idx)
    torch.testing.assert_close(flash.float(), reference.float(), atol=5e-2, rtol=0)


@pytest.mark.gpu
@gpu
def test_compile_equals_eager_with_memory() -> None:
    model = model_on_cuda().train()
    idx = batch(4 * 64)
    _, loss = model(idx, idx)
    assert loss is not None
    eager = torch.autograd.grad(loss, list(model.parameters()))
    model.compile_blocks()  # what train.py's compile does
    _, loss_c = model(idx, idx)
    assert loss_c is not None
    compiled = torch.autograd.grad(loss_c, list(model.parameters()))
    assert abs(loss_c.item() - loss.item()) < 1e-4
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_memory_decoding_equals_its_forward(pos_emb: str) -> None:
    model = model_on_cuda(pos_emb=pos_emb).eval()
    idx = batch(3 * 64 + 5, B=2)
    with torch.no_grad():
        full, _ = model(idx, idx)
        decoder = SegmentDecoder(model, 2)
        incremental = torch.cat([decoder.feed(idx[:, :70]), *(decoder.feed(t) for t in idx[:, 70:].split(1, 1))], 1)
    torch.testing.assert_close(incremental, full, atol=1e-4, rtol=0)


def peak_training_memory(n_segments: int, recompute: str) -> int:
    """The allocator's peak over one training step, less what the model and its gradients hold."""
    model = model_on_cuda().train()
    model.gradient_checkpointing = recompute
    idx = batch(n_segments * 64, B=8)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = model(idx, idx, keep_logits=False, details=True)
    assert out.loss is not None
    out.loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.gpu
@gpu
def test_segment_recompute_keeps_training_memory_flat() -> None:
    """With segment recompute a step keeps of each segment only what backward needs to run it again: the memory it
    read (every bank, (B, banks, M, D) float32) and its tokens, not its activations. So the peak still grows with
    the segments, by one memory state a segment (measured on an H200: 150 kB a segment here, against 24 MB without
    recompute), not by the activations."""
    S0, S1, B = 4, 64, 8
    peak_training_memory(S0, "segment")  # the first step in a process also allocates the libraries' workspaces
    flat = [peak_training_memory(S, "segment") for S in (S0, S1)]
    grows = [peak_training_memory(S, "none") for S in (S0, S1)]
    c = model_on_cuda().config
    state = B * (c.gmm_experts + int(c.gmm_shared_expert)) * c.gmm_slots * c.n_embd * 4 + B * c.gmm_experts * 4
    tokens = 2 * B * c.block_size * 8  # the segment's inputs and targets, int64
    per_segment = (flat[1] - flat[0]) / (S1 - S0)
    assert per_segment <= 1.25 * (state + tokens), (flat, state + tokens)
    assert grows[1] - grows[0] > 50 * (flat[1] - flat[0]), (grows, flat)


@pytest.mark.slow
def test_the_gpu_check_script_runs_each_part(tmp_path: Path) -> None:
    """gpu_check.py --quick, here on a CPU (the GPU tests skip themselves): every part runs and lands in one JSON."""
    import subprocess
    import sys

    out = tmp_path / "check.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "gpu_check.py", "--quick", f"--out={out}"], cwd=root, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {k: v["exit"] for k, v in report.items() if k != "quick"} == dict.fromkeys(
        ("tests", "train_gpt2", "context", "logits"), 0
    )
    assert report["train_gpt2"]["result"]["ms_per_iter"] > 0
    assert len(report["context"]["result"]["rows"]) == 2 and report["logits"]["result"]["rows"]
