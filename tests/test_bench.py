"""bench.py on tiny CPU models.

Proves that bench_train reports a positive median step time, tokens/s consistent with it, an MFU and the process RSS
on CPU, on synthetic tokens and on a prepared dataset; that bench_sample times generation with and without the KV
cache, past block_size, and finds the same greedy tokens; that profile=True writes a Chrome trace; that the script
prints its table and writes --json; and that a bad setting is one line and exit 2.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench import BenchConfig, bench_sample, bench_train
from model import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--vocab_size=64", "--batch_size=2"]


def tiny() -> GPTConfig:
    return GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)


def quick(**kwargs: object) -> BenchConfig:
    settings = dict(device="cpu", batch_size=2, warmup_iters=1, iters=3, prompt_len=4, new_tokens=20)
    return BenchConfig(**{**settings, **kwargs})  # type: ignore[arg-type]


def test_bench_train_reports_positive_numbers() -> None:
    r = bench_train(quick(), tiny())
    assert r["compile"] is False  # auto: off on CPU
    assert r["dtype"] == "float32"
    assert len(r["ms_per_iter_all"]) == 3 and r["ms_per_iter"] > 0
    assert r["tokens_per_s"] == pytest.approx(2 * 16 / (r["ms_per_iter"] / 1000))
    assert 0 < r["mfu"] < 1 and r["peak_flops"] > 0
    assert r["memory_bytes"] > 10 * 2**20 and "RSS" in r["memory_kind"]
    assert "trace" not in r


def test_bench_train_real_data(shakespeare_char_data: Path) -> None:
    cfg = quick(real_data=True, dataset="shakespeare_char", data_dir=str(shakespeare_char_data), iters=2)
    r = bench_train(cfg, GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65))
    assert r["ms_per_iter"] > 0 and r["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="nowhere/shakespeare_char/train.bin not found"):
        bench_train(quick(real_data=True, dataset="shakespeare_char", data_dir="nowhere"), tiny())


def test_bench_sample_cache_and_no_cache_agree() -> None:
    """4 prompt + 20 new tokens with block_size 16: the window slides for the last 8."""
    r = bench_sample(quick(mode="sample"), tiny())
    assert r["same_tokens"] is True and r["first_difference"] is None
    assert r["tokens_per_s_kv_cache"] > 0 and r["tokens_per_s_no_cache"] > 0
    assert r["speedup"] == pytest.approx(r["tokens_per_s_kv_cache"] / r["tokens_per_s_no_cache"])
    assert r["ms_per_token_kv_cache"] == pytest.approx(2 * 1000 / r["tokens_per_s_kv_cache"])


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_profile_writes_chrome_trace(mode: str, tmp_path: Path) -> None:
    cfg = quick(mode=mode, profile=True, out_dir=str(tmp_path), iters=2, new_tokens=4)
    r = (bench_train if mode == "train" else bench_sample)(cfg, tiny())
    trace = Path(r["trace"])
    assert trace == tmp_path / f"bench_{mode}.pt.trace.json"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any("aten::" in e.get("name", "") for e in events)


@pytest.mark.slow  # a fresh python importing torch: ~5 s on 2 cores
def test_script_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = [*TINY_ARGS, "--iters=2", "--warmup_iters=1", "--device=cpu", f"--json={out}"]
    result = subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for row in ("iter 1:", "ms/iter (median)", "tokens/s", "MFU", "peak memory", "process RSS"):
        assert row in result.stdout
    saved = json.loads(out.read_text())
    assert saved["mode"] == "train" and saved["model_args"]["n_layer"] == 1 and saved["config"]["iters"] == 2


def test_sample_mode_table(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main([*TINY_ARGS, "--mode=sample", "--prompt_len=4", "--new_tokens=8", "--device=cpu"])
    out = capsys.readouterr().out
    for row in ("tokens/s, KV cache", "tokens/s, no cache", "speed-up"):
        assert row in out
    assert re.search(r"^same tokens +yes$", out, re.MULTILINE)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--mode=infer"], "mode = 'infer'"), (["--iters=0"], "iters = 0"), (["--n_head=3"], "n_embd = 32")],
)
def test_bad_setting_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main([*TINY_ARGS, "--device=cpu", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
