"""train.py, end to end on tiny CPU configs of the char-level tiny-shakespeare, and the checkpoint helpers in common.py.

Proves, by equivalence:
- DDP: `torchrun --nproc_per_node=2` with gradient_accumulation_steps=4 (2 micro-steps per rank) logs the same
  per-iteration train losses and ends with the same weights as one process running all 4 micro-steps; rank_offsets
  splits each step's global batch into disjoint per-rank blocks that together are the one-process batch.
- Exact resume: 4 iterations, then --init_from=resume to 8, equals 8 iterations straight (train losses of iterations
  5..8 and final weights bit for bit, with dropout on so the restored RNG matters).
- Same seed and config give the same losses; another seed gives other losses.
- Preemption: SIGTERM or SIGINT mid-step ends the step, writes a checkpoint (before that iteration's evaluation)
  and exits 128 + signal; the resumed run equals the run never stopped; under torchrun the ranks stop together.
- Divergence: a NaN loss stops the run before the step (exit 3, the last checkpoint kept), or is skipped and counted.
- Resume first: no checkpoint is one line and prepares nothing; the run's settings come from the checkpoint.
- Crash safety: SIGKILL at random moments (one during a checkpoint write), resumed each time, equals the run never
  killed (weights and metrics.jsonl bit for bit but for timings), with a readable checkpoint at every moment.
- gradient_checkpointing=True recomputes every block in backward and gives the losses of False.
- eval_only from a local Hugging Face GPT-2 directory evaluates to the loss Hugging Face's own model computes on the
  same batches, writes one eval line and no checkpoint.
And, by hand-computed values or observed behaviour: get_lr's warmup, peak, cosine decay and floor; metrics.jsonl's
eval and train lines; the auto-prepare step; wandb offline logging; atomic checkpoint saves (a save that fails midway
leaves the previous file intact), weights_only loads (a pickled object that would run code is refused), one-line
errors for missing/corrupt checkpoints. User mistakes on the command line are the table of test_bad_input.py.

In-process runs call train.main(argv) exactly as the command line does; subprocesses are used where the process
boundary is the point (exit status, stderr, torchrun, wandb). Torch runs on one thread: tiny models are fastest so
and the numbers do not depend on the machine's core count.
"""

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from conftest import TINY_TRAIN
from torch.nn import functional as F

import model
import train
from common import load_checkpoint, save_checkpoint
from data.loader import BatchSampler, get_batch, open_split
from train import TrainConfig, get_lr, rank_offsets

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the project root (a device checkout may hold it at ./shared)
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")
SHAKESPEARE_TXT = SHARED / "data" / "tinyshakespeare" / "input.txt"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"

TINY = TINY_TRAIN


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def char_args(data_dir: Path, out_dir: Path, *args: str) -> list[str]:
    """train.py arguments for a tiny shakespeare_char run; later arguments override earlier ones."""
    return [f"--data_dir={data_dir}", "--dataset=shakespeare_char", f"--out_dir={out_dir}", *TINY, *args]


def run_train(data_dir: Path, out_dir: Path, *args: str) -> None:
    train.main(char_args(data_dir, out_dir, *args))


def run_script(
    args: list[str], env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """python train.py args, as a user would run it from the repo root."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def metrics(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(out_dir: Path) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in metrics(out_dir) if r["event"] == "train"}


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = load_checkpoint(str(out_dir / "ckpt.pt"))["model"]
    return state


# --- learning rate ----------------------------------------------------------------------------------------------------


def test_get_lr_schedule() -> None:
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=100)
    lrs = [get_lr(it, cfg) for it in range(150)]
    assert 0 < lrs[0] < cfg.learning_rate  # the first step already learns
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # linear warmup
    assert lrs[10] == cfg.learning_rate == max(lrs)  # peak at warmup_iters
    assert all(a > b for a, b in zip(lrs[10:100], lrs[11:101], strict=True))  # cosine decay
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # halfway: cos(pi/2) = 0
    assert all(lr == cfg.min_lr for lr in lrs[100:])  # the floor after lr_decay_iters


def test_get_lr_constant_without_decay() -> None:
    cfg = TrainConfig(learning_rate=3e-5, decay_lr=False, warmup_iters=10, lr_decay_iters=100)
    assert {get_lr(it, cfg) for it in range(200)} == {3e-5}


# --- batches and DDP --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_offsets_partition_the_global_batch(world_size: int) -> None:
    accum_global, batch_size = 4, 3
    one = BatchSampler(10_000, 16, seed=0)
    ranks = [BatchSampler(10_000, 16, seed=0) for _ in range(world_size)]
    for _ in range(3):  # the samplers stay in step across iterations
        expected = rank_offsets(one, accum_global, batch_size, rank=0, world_size=1)  # (4, 3)
        shares = [rank_offsets(s, accum_global, batch_size, r, world_size) for r, s in enumerate(ranks)]
        assert all(s.shape == (accum_global // world_size, batch_size) for s in shares)
        # rank r holds rows [r * accum_local, (r + 1) * accum_local): disjoint blocks that stack to the whole batch
        assert torch.equal(torch.cat(shares), expected)
        assert not torch.equal(shares[0], shares[1])


@pytest.mark.slow
def test_ddp_equals_one_process(shakespeare_char_data: Path, tmp_path: Path) -> None:
    # no dropout: each DDP rank seeds its own dropout masks (seed + rank), so only the deterministic path can match
    args = ["--gradient_accumulation_steps=4", "--max_iters=3", "--eval_interval=3", "--lr_decay_iters=3"]
    run_train(shakespeare_char_data, tmp_path / "one", *args)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    cmd += char_args(shakespeare_char_data, tmp_path / "ddp", *args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    one, ddp = train_losses(tmp_path / "one"), train_losses(tmp_path / "ddp")
    assert list(ddp) == [1, 2, 3]
    assert ddp == pytest.approx(one, rel=1e-5, abs=1e-6)
    one_w, ddp_w = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    assert one_w.keys() == ddp_w.keys()
    for k in one_w:
        torch.testing.assert_close(ddp_w[k], one_w[k], rtol=0, atol=1e-5)


# --- determinism and resume -------------------------------------------------------------------------------------------


def test_same_seed_same_losses(shakespeare_char_data: Path, tmp_path: Path) -> None:
    args = ["--max_iters=3", "--eval_interval=100", "--dropout=0.1"]
    run_train(shakespeare_char_data, tmp_path / "a", *args, "--seed=1337")
    run_train(shakespeare_char_data, tmp_path / "b", *args, "--seed=1337")
    run_train(shakespeare_char_data, tmp_path / "c", *args, "--seed=7")
    a, b, c = (train_losses(tmp_path / name) for name in "abc")
    assert a == b
    assert all(a[it] != c[it] for it in a)


def test_exact_resume(shakespeare_char_data: Path, tmp_path: Path) -> None:
    # dropout makes the torch RNG matter; the sampler's state decides the batches
    args = ["--eval_interval=4", "--lr_decay_iters=8", "--warmup_iters=2", "--dropout=0.1"]
    run_train(shakespeare_char_data, tmp_path / "straight", *args, "--max_iters=8")
    run_train(shakespeare_char_data, tmp_path / "resumed", *args, "--max_iters=4")
    assert load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))["iter_num"] == 4
    run_train(shakespeare_char_data, tmp_path / "resumed", *args, "--max_iters=8", "--init_from=resume")

    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert list(resumed) == list(range(1, 9))
    assert [resumed[it] for it in range(5, 9)] == [straight[it] for it in range(5, 9)]
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))["iter_num"] == 8
    # the resumed run did not evaluate again at its first step: eval lines at 0, 4 and 8 only
    assert [r["iter"] for r in metrics(tmp_path / "resumed") if r["event"] == "eval"] == [0, 4, 8]


# --- logging ----------------------------------------------------------------------------------------------------------


def test_metrics_lines(shakespeare_char_data: Path, tmp_path: Path) -> None:
    run_train(shakespeare_char_data, tmp_path, "--max_iters=6", "--eval_interval=3", "--log_interval=2")
    records = metrics(tmp_path)
    evals = [r for r in records if r["event"] == "eval"]
    trains = [r for r in records if r["event"] == "train"]
    assert len(evals) + len(trains) == len(records)
    assert [r["iter"] for r in evals] == [0, 3, 6]
    assert [r["iter"] for r in trains] == [2, 4, 6]
    for r in evals:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
    assert abs(evals[0]["val_loss"] - math.log(65)) < 0.2  # an untrained model is near uniform over 65 characters
    for r in trains:
        assert math.isfinite(r["loss"]) and r["lr"] > 0
    assert (tmp_path / "ckpt.pt").is_file()


@pytest.mark.slow
def test_wandb_offline(shakespeare_char_data: Path, tmp_path: Path) -> None:
    args = char_args(shakespeare_char_data, tmp_path / "out", "--max_iters=2", "--eval_interval=2", "--wandb_log=True")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    result = run_script(args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # the run's log holds what train.py logged
    (log,) = runs[0].glob("run-*.wandb")
    assert b"train/step_loss" in log.read_bytes() and b"val/loss" in log.read_bytes()


def test_trackio_logs_what_metrics_jsonl_holds(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """tracker=trackio keeps its database beside out_dir (TRACKIO_DIR unset), and its rows are metrics.jsonl's
    numbers at metrics.jsonl's steps."""
    out = tmp_path / "runs" / "tiny"
    args = char_args(shakespeare_char_data, out, "--max_iters=4", "--eval_interval=2", "--tracker=trackio",
                     "--tracker_project=tiny", "--tracker_run_name=first")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"}
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    query = "SELECT step, metrics FROM metrics WHERE run_name = 'first' ORDER BY id"
    with contextlib.closing(sqlite3.connect(tmp_path / "runs" / "trackio" / "tiny.db")) as con:
        rows = [(step, json.loads(m)) for step, m in con.execute(query)]
    logged_evals = {step: m["val/loss"] for step, m in rows if "val/loss" in m}
    logged_steps = {step: m["train/step_loss"] for step, m in rows if "train/step_loss" in m}
    evals = {r["iter"]: r["val_loss"] for r in metrics(out) if r["event"] == "eval"}
    assert logged_evals == pytest.approx(evals) and sorted(evals) == [0, 2, 4]
    assert logged_steps == pytest.approx(train_losses(out)) and sorted(logged_steps) == [1, 2, 3, 4]
    assert all(
        {"train/grad_norm", "train/ms", "train/lr", "train/tokens_per_s"} <= set(m)
        for _, m in rows
        if "train/step_loss" in m
    )


# --- features ---------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_same_losses(
    shakespeare_char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    block_forward = model.Block.forward

    def counting_forward(self: model.Block, *args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return block_forward(self, *args, **kwargs)

    monkeypatch.setattr(model.Block, "forward", counting_forward)
    losses, counts = {}, {}
    for flag in ("False", "True", "segment"):
        calls = 0
        out = tmp_path / flag
        run_train(
            shakespeare_char_data,
            out,
            "--n_layer=2",
            "--dropout=0.1",
            "--max_iters=3",
            "--eval_interval=100",
            f"--gradient_checkpointing={flag}",
        )
        losses[flag], counts[flag] = train_losses(out), calls
    assert losses["True"] == pytest.approx(losses["False"], rel=1e-6)
    assert losses["segment"] == pytest.approx(losses["False"], rel=1e-6)
    # the recomputation happened: each of 2 blocks ran once more in the backward of each of 3 steps (with 'segment',
    # the whole segment ran again)
    assert counts["True"] - counts["False"] == 2 * 3
    assert counts["segment"] - counts["False"] == 2 * 3


@pytest.fixture
def shakespeare_bpe_data(tmp_path: Path) -> Path:
    """A data_dir whose shakespeare/ holds tiny-shakespeare in GPT-2 BPE tokens (tiktoken's files from the cache)."""
    if not SHAKESPEARE_TXT.is_file() or not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"{SHAKESPEARE_TXT} or {TIKTOKEN_CACHE} not found")
    data_dir = tmp_path / "data"
    script = ROOT / "data" / "shakespeare" / "prepare.py"
    cmd = [sys.executable, str(script), "--out_dir", str(data_dir / "shakespeare"), "--input", str(SHAKESPEARE_TXT)]
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(TIKTOKEN_CACHE)}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return data_dir


@pytest.mark.slow
def test_eval_only_from_hugging_face_dir(shakespeare_bpe_data: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()  # vocab 50257
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    seq_len, batch_size, eval_iters = 32, 2, 2
    train.main(
        [
            f"--data_dir={shakespeare_bpe_data}",
            "--dataset=shakespeare",
            f"--out_dir={out}",
            *TINY,
            f"--init_from={tmp_path / 'hf'}",
            "--eval_only=True",
            f"--block_size={seq_len}",  # cropped from the checkpoint's 64 positions
            f"--batch_size={batch_size}",
            f"--eval_iters={eval_iters}",
        ]
    )
    records = metrics(out)
    assert [r["event"] for r in records] == ["eval"]
    assert not (out / "ckpt.pt").exists()

    # the same batches estimate_loss draws (a sampler seeded with seed + 1 per split), through Hugging Face's model
    cfg = TrainConfig()
    for split in ("train", "val"):
        data = open_split(str(shakespeare_bpe_data / "shakespeare"), split)
        sampler = BatchSampler(len(data), seq_len, seed=cfg.seed + 1)
        losses = []
        with torch.no_grad():
            for _ in range(eval_iters):
                X, Y = get_batch(data, sampler.draw(batch_size), seq_len, "cpu")
                logits = hf(X).logits  # (B, T, 50257)
                losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)), Y.view(-1)).item())
        assert records[0][f"{split}_loss"] == pytest.approx(sum(losses) / eval_iters, abs=1e-4)


def test_auto_prepare(tmp_path: Path) -> None:
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip(f"{SHAKESPEARE_TXT} not found")
    data_dir = tmp_path / "data"
    (data_dir / "shakespeare_char").mkdir(parents=True)
    shutil.copy(SHAKESPEARE_TXT, data_dir / "shakespeare_char" / "input.txt")
    run_train(data_dir, tmp_path / "out", "--max_iters=2", "--eval_interval=2")
    prepared = data_dir / "shakespeare_char"
    assert all((prepared / f).is_file() for f in ("train.bin", "val.bin", "meta.json"))
    assert json.loads((prepared / "meta.json").read_text())["vocab_size"] == 65
    assert list(train_losses(tmp_path / "out")) == [1, 2]


# --- checkpoints ------------------------------------------------------------------------------------------------------


def tiny_ckpt(value: float) -> dict[str, Any]:
    return {"model": {"w": torch.full((4,), value)}, "model_args": {"n_layer": 1}}


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(tiny_ckpt(1.0), path)
    before = Path(path).read_bytes()

    def crash(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tiny_ckpt(2.0), path)
    monkeypatch.undo()

    assert Path(path).read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no partial file left beside it
    save_checkpoint(tiny_ckpt(3.0), path)  # and the next save goes through
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 3.0))


def write_marker(path: str) -> None:
    Path(path).write_text("code ran while loading")


class Payload:
    """A pickled object whose unpickling calls write_marker: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return write_marker, (self.path,)


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    path, marker = tmp_path / "ckpt.pt", tmp_path / "marker"
    torch.save({**tiny_ckpt(1.0), "extra": Payload(str(marker))}, path)
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()


def test_real_checkpoint_loads_weights_only(shakespeare_char_data: Path, tmp_path: Path) -> None:
    run_train(shakespeare_char_data, tmp_path, "--max_iters=1", "--eval_interval=1", "--eval_iters=1")
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["iter_num"] == 1 and ckpt["tokenizer_meta"]["vocab_size"] == 65
    assert ckpt["config"]["dataset"] == "shakespeare_char" and ckpt["model_args"]["n_embd"] == 32


def test_missing_or_corrupt_checkpoint(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(tiny_ckpt(1.0), str(good))
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a checkpoint" * 10)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    cases = {"missing.pt": "not found", "truncated.pt": "cannot be read: it is truncated or corrupt",
             "garbage.pt": "cannot be read: it is"}  # fmt: skip
    cases |= {"list.pt": "not a checkpoint of this project", "foreign.pt": "not a checkpoint of this project"}
    for name, words in cases.items():
        with pytest.raises(ValueError) as e:
            load_checkpoint(str(tmp_path / name))
        message = str(e.value)
        assert "\n" not in message and str(tmp_path / name) in message and words in message, message
        assert "weights_only=False" not in message and len(message) < 300, message  # no advice to run its code


# --- progress, divergence, preemption, crashes ----------------------------------------------------------------------


def test_progress_is_plain_lines_in_a_log_and_a_bar_on_a_terminal(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """Written to a file or a pipe (nohup, CI), progress is one plain line per log_interval and no carriage
    returns; on a terminal it is tqdm's bar (drawn on stderr)."""
    args = char_args(shakespeare_char_data, tmp_path / "log", "--max_iters=3", "--eval_interval=3")
    result = run_script(args)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("iter ")]
    assert [line.split(":")[0] for line in lines] == ["iter 1", "iter 2", "iter 3"]
    assert all(", lr " in line and "ms, mfu " in line for line in lines)
    # stderr on a pseudo-terminal: the bar, and no plain lines
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    chunks: list[bytes] = []

    def drain() -> None:  # read while the run writes, so a full pty buffer never blocks it
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal's other side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    cmd = [sys.executable, "train.py", *char_args(shakespeare_char_data, tmp_path / "tty", "--max_iters=3",
                                                   "--eval_interval=3")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0
    assert "train: 100%" in terminal and "\r" in terminal
    assert not any(line.startswith("iter ") for line in done.stdout.splitlines())


def poison_training_steps(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """Make the loss of the given training forward calls (0, 1, ...; one per iteration here) NaN."""
    forward = model.GPT.forward
    calls = [0]

    def poisoned(self: model.GPT, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        assert isinstance(out, model.ModelOutput)  # the training loop asks for the details
        if self.training:
            if calls[0] in steps and out.loss is not None and out.token_loss is not None:
                nan = float("nan")
                out = out._replace(loss=out.loss * nan, token_loss=out.token_loss * nan)
            calls[0] += 1
        return out

    monkeypatch.setattr(model.GPT, "forward", poisoned)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_checkpoint(
    shakespeare_char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    poison_training_steps(monkeypatch, {4})
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run_train(shakespeare_char_data, out, "--max_iters=6", "--eval_interval=2")
    assert e.value.code == train.EXIT_NONFINITE == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: iteration 4: the loss is not finite; stopped before the step, the last checkpoint in "
                   f"{out} is kept (--nonfinite=skip skips such steps)"]  # fmt: skip
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 4  # saved by the evaluation at iteration 4, not overwritten afterwards
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    records = metrics(out)
    assert max(r["iter"] for r in records if r["event"] == "train") == 4  # iterations 1..4 were taken, 5 was not
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) for r in records if r["event"] == "train")


def test_the_guard_waits_for_the_device_only_at_log_lines_evaluations_and_the_end(
    shakespeare_char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between checks a step only notes its flags on the device (no host sync); the check before a log line
    finds the first non-finite iteration, stops the run and keeps the last checkpoint, which an evaluation wrote
    after a check. Logging every 3 steps and evaluating every 6, 9 steps make 3 checks, not 9."""
    checks = []
    check_step = train.check_step

    def counted(*args: Any) -> tuple[str, int, int]:
        checks.append(1)
        return check_step(*args)

    monkeypatch.setattr(train, "check_step", counted)
    out = tmp_path / "run"
    run_train(shakespeare_char_data, out, "--max_iters=9", "--eval_interval=6", "--log_interval=3")
    assert len(checks) == 3  # before the log lines at 3 and 6 (and the evaluation at 6) and the end at 9
    checks.clear()
    poison_training_steps(monkeypatch, {6})
    with pytest.raises(SystemExit) as e:
        run_train(shakespeare_char_data, tmp_path / "bad", "--max_iters=12", "--eval_interval=6", "--log_interval=4")
    assert e.value.code == train.EXIT_NONFINITE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: iteration 6: the loss is not finite; stopped at iteration 7, the next check, the last "
                   f"checkpoint in {tmp_path / 'bad'} is kept (--nonfinite=skip skips such steps)"]  # fmt: skip
    ckpt = load_checkpoint(str(tmp_path / "bad" / "ckpt.pt"))
    assert ckpt["iter_num"] == 6  # the evaluation at 6 saved what the check before it found finite
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert len(checks) == 3  # after the steps of iterations 3 and 5 (before a log line, an evaluation), then 7


def test_nonfinite_skip_skips_the_step_and_counts_it(
    shakespeare_char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_training_steps(monkeypatch, {2})
    out = tmp_path / "run"
    run_train(shakespeare_char_data, out, "--max_iters=5", "--eval_interval=5", "--nonfinite=skip")
    train_records = [r for r in metrics(out) if r["event"] == "train"]
    assert [r["skipped"] for r in train_records] == [0, 0, 1, 1, 1]  # the step of iteration 3 (index 2) skipped
    assert math.isnan(train_records[2]["loss"]) and math.isfinite(train_records[-1]["loss"])
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["skipped_steps"] == 1 and ckpt["iter_num"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_resume_without_a_checkpoint_prepares_nothing(tmp_path: Path) -> None:
    """The default dataset is openwebtext, a ~54 GB download: a resume that cannot resume must say so first."""
    empty, data = tmp_path / "empty", tmp_path / "data"
    empty.mkdir()
    result = run_script(["--init_from=resume", f"--out_dir={empty}", f"--data_dir={data}", "--device=cpu"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: init_from = 'resume' needs a checkpoint, and {empty} has none ({empty / 'ckpt.pt'} not found)"
    ]
    assert not data.exists() and not any(empty.iterdir())


def test_resume_takes_the_run_from_its_checkpoint(
    shakespeare_char_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--init_from=resume with nothing but a longer max_iters continues the run on its own dataset, model and
    schedule, exactly as the uninterrupted run; another dataset, or data of another tokenizer, is one line."""
    run_train(shakespeare_char_data, tmp_path / "straight", "--max_iters=6", "--eval_interval=3")
    out = tmp_path / "run"
    run_train(shakespeare_char_data, out, "--max_iters=3", "--eval_interval=3")
    train.main(["--init_from=resume", f"--out_dir={out}", "--max_iters=6", "--device=cpu"])
    assert train_losses(out) == train_losses(tmp_path / "straight")
    for key, value in weights(tmp_path / "straight").items():
        assert torch.equal(weights(out)[key], value), key
    with pytest.raises(SystemExit) as e:
        train.main(["--init_from=resume", f"--out_dir={out}", "--max_iters=8", "--dataset=shakespeare"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: dataset = 'shakespeare' disagrees with ")
    # the same dataset prepared with another vocabulary
    other = tmp_path / "other"
    shutil.copytree(shakespeare_char_data / "shakespeare_char", other / "shakespeare_char")
    meta_path = other / "shakespeare_char" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["itos"] = meta["itos"][::-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SystemExit):
        train.main(["--init_from=resume", f"--out_dir={out}", "--max_iters=8", f"--data_dir={other}"])
    assert "disagrees with the checkpoint on the tokenizer (itos)" in capsys.readouterr().err
    assert load_checkpoint(str(out / "ckpt.pt"))["iter_num"] == 6  # nothing overwritten


def signal_during_step(monkeypatch: pytest.MonkeyPatch, step: int, sig: signal.Signals) -> None:
    """Send this process sig during the forward pass of the given training step (0, 1, ...)."""
    forward = model.GPT.forward
    calls = [0]

    def signalling(self: model.GPT, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            if calls[0] == step:
                os.kill(os.getpid(), sig)
            calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(model.GPT, "forward", signalling)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_step_writes_a_checkpoint_and_resumes_exactly(
    shakespeare_char_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    sig: signal.Signals,
) -> None:  # fmt: skip
    """A scheduler's SIGTERM (or Ctrl-C) during iteration 3, which ends on an evaluation: the step finishes, a
    checkpoint is written before that evaluation, one line says so, the exit status is 128 + the signal; resuming
    then runs the evaluation and the rest, equal to the run never stopped (losses, evaluations, weights)."""
    args = ["--max_iters=6", "--eval_interval=3", "--dropout=0.1"]
    run_train(shakespeare_char_data, tmp_path / "straight", *args)
    out = tmp_path / "stopped"
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal_during_step(monkeypatch, 2, sig)
    with pytest.raises(SystemExit) as e:
        run_train(shakespeare_char_data, out, *args)
    assert e.value.code == 128 + sig
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == (f"stopped by {sig.name} after iteration 3: checkpoint written to {out / 'ckpt.pt'}; "
                         "continue with --init_from=resume")  # fmt: skip
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # given back
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 3 and ckpt["evaluated"] is False
    monkeypatch.undo()
    run_train(shakespeare_char_data, out, *args, "--init_from=resume")
    assert train_losses(out) == train_losses(tmp_path / "straight")
    evals = [[r["iter"], r["val_loss"]] for r in metrics(out) if r["event"] == "eval"]
    assert evals == [[r["iter"], r["val_loss"]] for r in metrics(tmp_path / "straight") if r["event"] == "eval"]
    for key, value in weights(tmp_path / "straight").items():
        assert torch.equal(weights(out)[key], value), key


def start_training(cmd: list[str], out: Path) -> subprocess.Popen[str]:
    """Start a long run and return once it has logged a training step (or ended)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, log = time.time() + 120, out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and '"event": "train"' in log.read_text():  # a line may be half written: no parsing
            break
        time.sleep(0.2)
    return proc


@pytest.mark.slow
def test_sigterm_to_a_running_process(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """As a scheduler sends it: SIGTERM to train.py mid-run, from outside."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", *char_args(shakespeare_char_data, out, "--max_iters=100000",
                                                  "--eval_interval=100000")]  # fmt: skip
    proc = start_training(cmd, out)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM after iteration ") and "checkpoint written to" in last
    stopped_at = int(last.split("iteration ")[1].split(":")[0])
    assert load_checkpoint(str(out / "ckpt.pt"))["iter_num"] == stopped_at == max(train_losses(out))


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_step_they_stop_at(shakespeare_char_data: Path, tmp_path: Path) -> None:
    """SIGTERM to one rank of two: both stop after the same step (a rank that went on would wait forever in the
    next gradient all-reduce), and rank 0 writes the checkpoint of that step."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    cmd += char_args(shakespeare_char_data, out, "--gradient_accumulation_steps=2", "--max_iters=100000",
                     "--eval_interval=100000")  # fmt: skip
    proc = start_training(cmd, out)
    rank1 = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("RANK") == "1" and "train.py" in " ".join(p.cmdline()):
                rank1.append(p)
    assert len(rank1) == 1
    rank1[0].send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun reports its workers' exit
    last = [line for line in stdout.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(last) == 1, stderr[-2000:]
    stopped_at = int(last[0].split("iteration ")[1].split(":")[0])
    assert load_checkpoint(str(out / "ckpt.pt"))["iter_num"] == stopped_at


@pytest.mark.slow
def test_killed_at_random_moments_and_resumed_equals_the_uninterrupted_run(
    shakespeare_char_data: Path, tmp_path: Path
) -> None:
    """SIGKILL (nothing runs after it) at random moments, one of them while a checkpoint is being written, then
    --init_from=resume each time: a readable checkpoint exists at every moment after the first save, and the
    finished run equals the uninterrupted one bit for bit (every logged loss and evaluation, every weight)."""
    # a model whose checkpoint (~40 MB with AdamW's moments) takes long enough to write to be caught at it
    args = ["--max_iters=18", "--eval_interval=3", "--dropout=0.1", "--n_layer=4", "--n_embd=256", "--n_head=4"]
    run_train(shakespeare_char_data, tmp_path / "straight", *args)
    out = tmp_path / "killed"
    ckpt_path = out / "ckpt.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    unreadable: list[str] = []
    watching = [True]

    def watch() -> None:  # a reader that may come at any moment, as a person or a scheduler would
        while watching[0]:
            if ckpt_path.exists():
                try:
                    load_checkpoint(str(ckpt_path))
                except ValueError as e:
                    unreadable.append(str(e))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rng = random.Random(7)
    kills, during_write, resumes = 0, 0, 0
    try:
        for attempt in range(5):
            resume = ["--init_from=resume"] if ckpt_path.exists() else []
            resumes += bool(resume)
            cmd = [sys.executable, "train.py", *char_args(shakespeare_char_data, out, *args), *resume]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if attempt == 1:  # kill it while a checkpoint is being written
                tmp = str(out / "ckpt.pt.tmp")
                while not os.path.exists(tmp) and proc.poll() is None:
                    time.sleep(0.001)
                during_write += proc.poll() is None
            else:  # at a random moment once it is training (the first time, maybe before any checkpoint)
                log = out / "metrics.jsonl"
                lines = log.read_text().count("\n") if log.exists() else 0  # (a line may be half written)
                started = time.time()
                while proc.poll() is None and time.time() - started < 60:
                    if log.exists() and log.read_text().count("\n") > lines:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait()
        resume = ["--init_from=resume"] if ckpt_path.exists() else []
        done = subprocess.run([sys.executable, "train.py", *char_args(shakespeare_char_data, out, *args), *resume],
                              cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        watching[0] = False
        watcher.join()
    resumes += bool(resume)
    print(
        f"{kills} SIGKILLs ({during_write} during a checkpoint write), {resumes} resumes, {len(unreadable)} unreadable"
    )
    assert kills >= 3 and during_write == 1
    assert not unreadable, unreadable[:3]
    untimed = [
        [{k: v for k, v in r.items() if k not in ("ms", "mfu", "tokens_per_s")} for r in metrics(d)]
        for d in (out, tmp_path / "straight")
    ]
    assert untimed[0] == untimed[1]  # the same log, line for line, but for the timings
    for key, value in weights(tmp_path / "straight").items():
        assert torch.equal(weights(out)[key], value), key
