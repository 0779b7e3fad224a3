"""Training with segments and memory: what train.py adds for the gated memory mixture.

- segments_at follows the curriculum's stages; a curriculum run trains each stage on sequences of its length.
- Episode datasets (the synthetic tasks): batches are whole episodes, targets outside the answer mask are ignored,
  evaluation reports answer accuracy that matches a hand count, and other lengths are prepared beside the dataset.
- Evaluation logs the language-model loss per segment and the memory's auxiliary losses, and a resumed memory run
  with a curriculum equals the uninterrupted one.
- The logged train loss is the language model's (the auxiliary losses beside it), and gradient accumulation weighs
  every target alike however an answer mask spreads them over micro-batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import parallel
import train
from data.common import REPEAT
from data.loader import BatchSampler, episode_dir, get_batch
from evaluate import estimate_loss
from model import GPT, GPTConfig
from train import TrainConfig, segments_at

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=2",
        "--gradient_accumulation_steps=1", "--eval_iters=2", "--log_interval=1", "--gmm_slots=2"]  # fmt: skip


def metrics(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_ddp_searches_for_unused_parameters_only_when_a_write_reaches_no_loss() -> None:
    memory = GPTConfig(gmm_experts=2)
    assert not parallel.unused_parameters(GPTConfig(), 1)  # no memory: every parameter always takes part
    assert not parallel.unused_parameters(memory, 2) and not parallel.unused_parameters(memory, 4, bptt_segments=2)
    assert parallel.unused_parameters(memory, 1)  # a stage of one segment: its only write is the last
    assert parallel.unused_parameters(memory, 4, bptt_segments=1)  # every write detached
    assert parallel.unused_parameters(GPTConfig(gmm_experts=1, gmm_carry=False), 4)  # registers


def test_segments_at_follows_the_curriculum() -> None:
    cfg = TrainConfig(max_iters=9, n_segments=6, segment_curriculum=[2, 4, 6])
    assert [segments_at(it, cfg) for it in range(9)] == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    assert segments_at(100, cfg) == 6  # past max_iters (e.g. a longer resumed run) stays at the last stage
    assert segments_at(3, TrainConfig(n_segments=3)) == 3
    # the stages span curriculum_iters when it is set, whatever max_iters is (so a run can stop and resume)
    spanned = TrainConfig(max_iters=3, n_segments=6, segment_curriculum=[2, 4, 6], curriculum_iters=9)
    assert [segments_at(it, spanned) for it in range(3)] == [2, 2, 2]


def record_training_shapes(mp: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shape of every training batch GPT.forward gets from now on (within mp's context), in order."""
    shapes: list[tuple[int, ...]] = []
    forward = GPT.forward

    def recording(self: GPT, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            shapes.append(tuple(args[0].shape))
        return forward(self, *args, **kwargs)

    mp.setattr(GPT, "forward", recording)
    return shapes


def test_a_window_warm_up_trains_short_windows_first_with_the_same_tokens(
    shakespeare_char_data: Path, tmp_path: Path
) -> None:
    """window_curriculum = [4, 8] on a 16-token model: windows of 4, 8, then 16 tokens in equal thirds of the run,
    each step holding the same 32 tokens (batch 8, 4, 2), and the run ends at its full length; a window that does
    not divide block_size is one line."""
    cfg = TrainConfig(max_iters=9, window_curriculum=[4, 8])
    assert [train.length_at(it, cfg, 16) for it in range(10)] == [4, 4, 4, 8, 8, 8, 16, 16, 16, 16]
    assert train.length_at(5, TrainConfig(n_segments=3, segment_curriculum=[1, 3], max_iters=10), 16) == 48
    out = tmp_path / "warm"
    with pytest.MonkeyPatch.context() as mp:
        shapes = record_training_shapes(mp)
        train.main([*TINY, f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char", f"--out_dir={out}",
                    "--block_size=16", "--max_iters=6", "--eval_interval=6", "--window_curriculum=[4,8]"])  # fmt: skip
    assert shapes == [(8, 4), (8, 4), (4, 8), (4, 8), (2, 16), (2, 16)]
    assert [r["tokens"] for r in metrics(out) if r["event"] == "eval"] == [0, 6 * 32]
    with pytest.raises(SystemExit):
        train.main([*TINY, f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char",
                    f"--out_dir={tmp_path / 'bad'}", "--block_size=16", "--window_curriculum=[6]"])  # fmt: skip


def test_a_segment_curriculum_can_keep_the_tokens_of_a_step(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """curriculum_same_tokens: a memory model of 4 segments of 8 tokens warmed up over [1, 2, 4] segments sees
    batches of 8 x 8, 4 x 16, then 2 x 32 tokens (64 each step); without it the rows stay 2; a stage that does not
    divide n_segments is one line."""
    common = [*TINY, f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char", "--block_size=8",
              "--n_segments=4", "--gmm_experts=1", "--gmm_slots=2", "--max_iters=6", "--eval_interval=6",
              "--segment_curriculum=[1,2,4]"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        shapes = record_training_shapes(mp)
        train.main([*common, f"--out_dir={tmp_path / 'same'}", "--curriculum_same_tokens=True"])
        assert shapes == [(8, 8), (8, 8), (4, 16), (4, 16), (2, 32), (2, 32)]
        shapes.clear()
        train.main([*common, f"--out_dir={tmp_path / 'rows'}"])
        assert shapes == [(2, 8), (2, 8), (2, 16), (2, 16), (2, 32), (2, 32)]
    assert [r["tokens"] for r in metrics(tmp_path / "same") if r["event"] == "eval"] == [0, 6 * 64]
    with pytest.raises(ValueError, match="each of segment_curriculum = \\[3, 4\\] must divide n_segments = 4"):
        TrainConfig(n_segments=4, segment_curriculum=[3, 4], curriculum_same_tokens=True)


def test_aligned_sampler_draws_whole_episodes() -> None:
    sampler = BatchSampler(n_tokens=10 * 8, seq_len=8, seed=0, align=8)
    offsets = sampler.draw(500)
    assert (offsets % 8 == 0).all()
    assert offsets.min() == 0 and offsets.max() == 8 * 8  # episodes 0..8: the last leaves no room for a target


def test_get_batch_masks_non_answer_targets() -> None:
    data = np.arange(20, dtype=np.uint16)
    mask = np.zeros(20, dtype=np.uint8)
    mask[[4, 9]] = 1
    X, Y = get_batch(data, torch.tensor([0, 5]), 5, "cpu", mask)
    assert X.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert Y.tolist() == [[-1, -1, -1, 4, -1], [-1, -1, -1, 9, -1]]  # target y[i] = token i+1, kept where masked


def test_episode_dir() -> None:
    meta = {"episode_len": 64, "n_segments": 4, "block_size": 16}
    assert episode_dir("data/recall", meta, 4, 16) == "data/recall"
    assert episode_dir("data/recall", meta, 2, 16) == "data/recall_s2_t16"
    assert episode_dir("data/shakespeare_char", {"vocab_size": 65}, 7, 16) == "data/shakespeare_char"


def test_estimate_loss_accuracy_and_segment_losses(tmp_path: Path) -> None:
    """On a hand-made episode dataset, answer accuracy (all answers, first-asked ones alone, and each episode's
    first answer alone) and the per-segment loss equal a direct count."""
    T, S, E = 4, 2, 6
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 10, size=E * T * S).astype(np.uint16)
    mask = np.zeros_like(tokens, dtype=np.uint8)
    for e in range(E):
        mask[e * T * S + T * S - 2 : e * T * S + T * S] = 1  # two answer tokens at the end of each episode
        if e % 2:
            mask[e * T * S + T * S - 1] = REPEAT  # the second answers a question asked before: not in acc_first
    for split in ("train", "val"):
        tokens.tofile(tmp_path / f"{split}.bin")
        mask.tofile(tmp_path / f"{split}_mask.bin")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=T, vocab_size=10, n_layer=1, n_head=1, n_embd=8))
    cfg = TrainConfig(eval_iters=3, batch_size=2, seed=5)
    out = estimate_loss(model, str(tmp_path), T * S, cfg, "cpu", "float32", align=T * S, positions=True)

    # the same batches by hand
    sampler = BatchSampler(len(tokens), T * S, seed=cfg.seed + 1, align=T * S)
    right = total = exact = answers = first_right = first_total = open_right = 0
    losses = []
    pos_sum, pos_count = torch.zeros(T * S), torch.zeros(T * S)
    for _ in range(cfg.eval_iters):
        offsets = sampler.draw(cfg.batch_size)
        X, Y = get_batch(tokens, offsets, T * S, "cpu", mask)
        logits, _ = model(X, Y)
        valid = Y != -1
        hit = (logits.argmax(-1) == Y) & valid
        right, total = right + int(hit.sum()), total + int(valid.sum())
        first = torch.stack([torch.from_numpy(mask[o + 1 : o + 1 + T * S] == 1) for o in offsets.tolist()])
        first_right, first_total = first_right + int((hit & first).sum()), first_total + int(first.sum())
        exact += sum(bool(hit[b][valid[b]].all()) for b in range(len(Y)))
        open_right += sum(bool(hit[b][valid[b]][0]) for b in range(len(Y)))  # each episode's first answer
        answers += len(Y)
        losses.append(torch.nn.functional.cross_entropy(logits[valid], Y[valid], reduction="sum").item())
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), Y, ignore_index=-1, reduction="none")
        pos_sum, pos_count = pos_sum + ce.sum(0), pos_count + valid.sum(0)
    assert out["val_acc_token"] == pytest.approx(right / total)
    assert out["val_acc_first"] == pytest.approx(first_right / first_total) and first_total < total
    assert out["val_acc_answer"] == pytest.approx(exact / answers)
    assert out["val_acc_open"] == pytest.approx(open_right / answers)
    # evaluation builds no autograd graph: with one, the sums it keeps would hold every batch's activations (a
    # 7 GB process at batch 256 before this was tested)
    grad_modes: list[bool] = []
    forward = model.forward_segments

    def recording(*args: Any, **kwargs: Any) -> Any:
        grad_modes.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    model.forward_segments = recording  # type: ignore[method-assign]
    estimate_loss(model, str(tmp_path), T * S, cfg, "cpu", "float32", align=T * S)
    assert grad_modes and not any(grad_modes)
    assert out["val"] == pytest.approx(sum(losses) / total, rel=1e-5)
    # the loss at each position: answer positions only (the others have no target), each equal to a direct count
    by_hand = (pos_sum / pos_count.clamp_min(1)).tolist()
    assert out["val_pos_loss"] == pytest.approx(by_hand, abs=1e-4) and len(by_hand) == T * S
    assert [i for i, n in enumerate(pos_count.tolist()) if n] == [T * S - 3, T * S - 2]  # targets are shifted by one
    assert "val_pos_loss" not in estimate_loss(model, str(tmp_path), T * S, cfg, "cpu", "float32", align=T * S)
    assert out["val_seg_loss"][0] == 0.0  # no answers in segment 1
    assert out["val_seg_loss"][1] == pytest.approx(out["val"], rel=1e-4)


def test_curriculum_on_an_episode_dataset_prepares_each_length(tmp_path: Path) -> None:
    """A recall run with a 1 -> 2 segment curriculum prepares the 1-segment episodes beside the dataset, trains
    on them first, evaluates at n_segments, and logs answer accuracy and the memory's losses."""
    data = tmp_path / "data"
    script = ROOT / "data" / "recall" / "prepare.py"
    args = ["--n_segments", "2", "--block_size", "8", "--train_episodes", "64", "--val_episodes", "16"]
    args += ["--max_pairs", "1"]  # one pair fits a 1-segment episode of 8 tokens

    subprocess.run([sys.executable, str(script), *args, "--out_dir", str(data / "recall")], check=True)
    out = tmp_path / "out"
    train.main(
        [*TINY, f"--data_dir={data}", "--dataset=recall", f"--out_dir={out}", "--block_size=8", "--n_segments=2",
         "--segment_curriculum=[1,2]", "--max_iters=4", "--eval_interval=2", "--gmm_experts=2"]
    )  # fmt: skip
    assert (data / "recall_s1_t8" / "train_mask.bin").is_file()
    meta = json.loads((data / "recall_s1_t8" / "meta.json").read_text())
    assert (meta["episode_len"], meta["train_episodes"]) == (8, 64)  # the same task settings at the new length
    evals = [r for r in metrics(out) if r["event"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert 0.0 <= r["val_acc_answer"] <= 1.0 and 0.0 <= r["val_acc_token"] <= 1.0
        assert len(r["val_seg_loss"]) == 2 and r["val_seg_loss"][0] == 0.0  # answers sit in the last segment
        assert "val_load_balance" in r and "val_entropy" in r


def test_drawn_questions_log_the_accuracy_on_first_asked_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mqar with drawn questions: every evaluation logs acc_first beside acc_token; a folder prepared before the
    repeats were marked trains as before, with a one-line warning that acc_first counts them."""
    data, out = tmp_path / "data", tmp_path / "out"
    script = ROOT / "data" / "mqar" / "prepare.py"
    args = ["--n_segments", "2", "--block_size", "8", "--n_pairs", "2", "--queries", "drawn", "--n_queries", "4",
            "--train_episodes", "64", "--val_episodes", "16", "--out_dir", str(data / "mqar")]  # fmt: skip
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    run = [*TINY, f"--data_dir={data}", "--dataset=mqar", "--block_size=8", "--n_segments=2", "--max_iters=2",
           "--eval_interval=2", "--gmm_experts=1"]  # fmt: skip
    train.main([*run, f"--out_dir={out}"])
    evals = [r for r in metrics(out) if r["event"] == "eval"]
    assert all(0.0 <= r["val_acc_first"] <= 1.0 and 0.0 <= r["val_acc_token"] <= 1.0 for r in evals)
    assert "prepared before answers to repeated questions were marked" not in capsys.readouterr().out
    meta_path = data / "mqar" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["repeat_mark"]
    meta_path.write_text(json.dumps(meta))
    train.main([*run, f"--out_dir={tmp_path / 'old'}"])
    assert "prepared before answers to repeated questions were marked" in capsys.readouterr().out


def recall_data(root: Path) -> Path:
    """A tiny recall dataset (2 segments of 8 tokens, one pair) under root/recall; returns root."""
    script = ROOT / "data" / "recall" / "prepare.py"
    args = ["--n_segments", "2", "--block_size", "8", "--train_episodes", "64", "--val_episodes", "16"]
    subprocess.run([sys.executable, str(script), *args, "--max_pairs", "1", "--out_dir", str(root / "recall")],
                   check=True, capture_output=True)  # fmt: skip
    return root


def test_gradient_accumulation_weighs_every_target_alike(tmp_path: Path) -> None:
    """Two micro-batches of 2 episodes take the steps one batch of 4 takes (logged loss and weights), although the
    episodes hold different numbers of answer targets (1, or 13 in every other episode): the loss is summed over
    targets and divided by the step's count, not averaged per micro-batch."""
    data = recall_data(tmp_path / "data")
    mask_path = data / "recall" / "train_mask.bin"
    mask = np.fromfile(mask_path, dtype=np.uint8).reshape(64, 16)
    mask[1::2, 2:14] = 1
    mask.tofile(mask_path)
    runs = {}
    for name, batch, accum in (("big", 4, 1), ("accum", 2, 2)):
        runs[name] = out = tmp_path / name
        train.main(
            [*TINY, f"--data_dir={data}", "--dataset=recall", f"--out_dir={out}", "--block_size=8", "--n_segments=2",
             "--max_iters=3", "--eval_interval=3", "--gmm_experts=1", f"--batch_size={batch}",
             f"--gradient_accumulation_steps={accum}", "--learning_rate=0.01", "--warmup_iters=0"]
        )  # fmt: skip
    losses = [{r["iter"]: r["loss"] for r in metrics(out) if r["event"] == "train"} for out in runs.values()]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and len(losses[0]) == 3
    big, accum = (torch.load(out / "ckpt.pt", weights_only=True)["model"] for out in runs.values())
    for k in big:
        torch.testing.assert_close(accum[k], big[k], rtol=0, atol=1e-5, msg=k)


def test_the_logged_train_loss_is_the_language_models(tmp_path: Path, shakespeare_char_data: Path) -> None:
    """metrics.jsonl's train loss is the language-model loss, as evaluation's is, whatever the weight of the
    auxiliary losses (k > 1), which are logged beside it unweighted."""
    logged = []
    for weight in (0.0, 100.0):
        out = tmp_path / f"lb{weight}"
        train.main(
            [*TINY, f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char", f"--out_dir={out}",
             "--block_size=8", "--n_segments=2", "--max_iters=2", "--eval_interval=2", "--gmm_experts=2",
             f"--gmm_load_balance={weight}", "--learning_rate=0", "--min_lr=0"]
        )  # fmt: skip
        logged.append([r for r in metrics(out) if r["event"] == "train"])
    assert [r["loss"] for r in logged[0]] == pytest.approx([r["loss"] for r in logged[1]], rel=1e-6)
    assert all(r["train_load_balance"] >= 1.0 and "train_entropy" in r for r in logged[1])


def test_memory_run_with_curriculum_resumes_exactly(shakespeare_char_data: Path, tmp_path: Path) -> None:
    base = [*TINY, f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char", "--block_size=8",
            "--n_segments=3", "--segment_curriculum=[1,2,3]", "--gmm_experts=2", "--lr_decay_iters=6",
            "--warmup_iters=1", "--dropout=0.1", "--eval_interval=3", "--bptt_segments=2",
            "--curriculum_iters=6"]  # fmt: skip
    train.main([*base, f"--out_dir={tmp_path / 'straight'}", "--max_iters=6"])
    train.main([*base, f"--out_dir={tmp_path / 'split'}", "--max_iters=3"])
    train.main([*base, f"--out_dir={tmp_path / 'split'}", "--max_iters=6", "--init_from=resume"])

    def losses(out: Path) -> dict[int, float]:
        return {r["iter"]: r["loss"] for r in metrics(out) if r["event"] == "train"}

    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert list(straight) == [1, 2, 3, 4, 5, 6]
    assert split == straight  # bit for bit, across a curriculum stage change at the resume point
    # a disagreeing memory setting on resume is refused
    with pytest.raises(SystemExit) as e:
        train.main([*base, f"--out_dir={tmp_path / 'split'}", "--max_iters=8", "--init_from=resume", "--gmm_experts=4"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("curriculum", [[], ["--segment_curriculum=[1,2]"]], ids=["2-segments", "1-then-2"])
def test_memory_under_ddp_equals_one_process(
    shakespeare_char_data: Path, tmp_path: Path, curriculum: list[str]
) -> None:
    """Two gloo processes train a GMM model with segments exactly as one process does (same losses, weights):
    with 2 segments every parameter takes part and DDP searches for none unused (it would fail if one were); a
    first stage of one segment leaves the write path out, and DDP is told to search."""
    args = [*TINY, f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char", "--block_size=8",
            "--n_segments=2", "--gmm_experts=2", "--gradient_accumulation_steps=2", "--max_iters=3",
            "--eval_interval=3", "--lr_decay_iters=3", *curriculum]  # fmt: skip
    train.main([*args, f"--out_dir={tmp_path / 'one'}"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*cmd, *args, f"--out_dir={tmp_path / 'ddp'}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]

    def losses(out: Path) -> list[float]:
        return [r["loss"] for r in metrics(out) if r["event"] == "train"]

    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)["model"]
    ddp = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)["model"]
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=0, atol=1e-5)


def test_memory_trains_under_bf16_autocast() -> None:
    """AMP: a memory model's forward and backward run under bf16 autocast, with a finite loss near float32's."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=32, gmm_experts=4, gmm_slots=2))
    idx = torch.randint(50, (2, 24))
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss16 = model(idx, idx)
    assert loss16 is not None and loss32 is not None and torch.isfinite(loss16)
    assert abs(loss16.item() - loss32.item()) < 0.05
    loss16.backward()
    assert model.memory is not None and model.memory.write_emb.grad is not None
