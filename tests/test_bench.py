"""bench.py on tiny CPU models.

Proves that bench_train reports a positive median step time, tokens/s consistent with it, an MFU and the process RSS
on CPU, on synthetic tokens and on a prepared dataset; that bench_sample times generation with and without the KV
cache, past block_size, and finds the same greedy tokens; that profile=True writes a Chrome trace and lists the
operators with the most self time (a table in ms a step); that the script prints its table and writes --json; that
memory mode prints one row per k, whose parameter counts are GPT's own and grow by exactly the memory's, with ratios
of 1.0 for k = 0, in one process and with a process per k; that its defaults are the GMM quick start's shape; and that
a bad setting or a bad k list is one line and exit 2.
"""

import ast
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import bench
from bench import BenchConfig, bench_sample, bench_train
from configurator import configure, read_config_file
from model import GPT, GPTConfig

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
    ops = r["top_ops"]  # where the time went: the operators with the most self time, most first
    assert 0 < len(ops) <= bench.TOP_OPS
    assert [op["ms"] for op in ops] == sorted((op["ms"] for op in ops), reverse=True)
    assert all(op["ms"] >= 0 for op in ops) and 0 < sum(op["share"] for op in ops) <= 1 + 1e-9
    assert any(op["op"] in ("aten::mm", "aten::addmm", "aten::bmm") for op in ops)  # a GPT's time is in its matmuls


def test_profile_table_per_step(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bench.main([*TINY_ARGS, "--device=cpu", "--iters=2", "--warmup_iters=1", "--profile=True", f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "| operator | ms a step | share |" in out and "profiler trace written to" in out
    assert re.search(r"^\| aten::\w+ \| \d+\.\d\d \| \d+\.\d%", out, re.MULTILINE)


@pytest.mark.slow  # a fresh python importing torch: ~5 s on 2 cores
def test_script_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = [*TINY_ARGS, "--iters=2", "--warmup_iters=1", "--device=cpu", f"--json={out}"]
    result = subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for row in ("iter 1:", "ms/iter (median)", "tokens/s", "MFU", "peak memory", "peak RSS"):
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
    [
        (["--mode=infer"], "mode = 'infer'"),
        (["--iters=0"], "iters = 0"),
        (["--n_head=3"], "n_embd = 32"),
        (["--mode=parallel", "--parallels=ddp,zero"], "ddp and/or fsdp"),
        (["--parallel=tp"], "parallel = 'tp'"),
    ],
)
def test_bad_setting_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main([*TINY_ARGS, "--device=cpu", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def table_rows(out: str) -> list[list[str]]:
    """The cells of the markdown table's data rows (those that start with a k)."""
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if re.match(r"^\| \d+ \|", line)
    ]


def test_memory_mode_row_per_k(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--mode=memory", "--experts=2,0,1", "--n_segments=2", "--gmm_slots=4", "--fresh_process=False",
            "--reads=mixture,concat"]  # fmt: skip
    r = bench.main([*TINY_ARGS, *args, "--device=cpu", "--iters=2", "--warmup_iters=1"])
    rows = table_rows(capsys.readouterr().out)
    # one row per k, ascending, and per read mode for k > 0; concat reads every bank's 4 slots
    assert [row[:3] for row in rows] == [["0", "-", "0"], ["1", "mixture", "4"], ["1", "concat", "4"],
                                         ["2", "mixture", "4"], ["2", "concat", "8"]]  # fmt: skip
    assert [(row["k"], row["read"]) for row in r["rows"]] == [(0, "-"), (1, "mixture"), (1, "concat"),
                                                               (2, "mixture"), (2, "concat")]  # fmt: skip
    params = [row["params"] for row in r["rows"]]
    assert params[0] < params[1] < params[3]
    for row in r["rows"]:
        read = row["read"] if row["k"] else "mixture"
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, gmm_slots=4,
                              gmm_experts=row["k"], gmm_read=read))  # fmt: skip
        assert row["params"] == model.get_num_params()
        assert row["memory_params"] == row["params"] - params[0]  # the memory is all that k adds
        assert row["tokens_per_s"] == pytest.approx(2 * 2 * 16 / (row["ms_per_iter"] / 1000))  # batch x segments x T
        assert row["memory_bytes"] > 10 * 2**20
    base = r["rows"][0]
    assert all(base[f"{key}_ratio"] == 1.0 for key in ("params", "ms_per_iter", "tokens_per_s", "memory_bytes"))
    assert r["rows"][3]["params_ratio"] == pytest.approx(params[3] / params[0])
    assert "running" not in r["memory_kind"] and "one process" in r["memory_kind"]


@pytest.mark.slow  # two torchruns of 2 processes: ~30 s on 2 cores
def test_parallel_mode_fsdp_holds_half_of_ddp_per_rank(capsys: pytest.CaptureFixture[str]) -> None:
    """Each rank's weights, gradients and AdamW moments, counted from its tensors: under fsdp on 2 ranks each holds
    about half of what it holds under ddp (a tensor's rows split in 2, the odd row on rank 0); under ddp all of it."""
    args = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--vocab_size=64"]
    r = bench.main(["--mode=parallel", *args, "--device=cpu", "--iters=2", "--warmup_iters=1"])
    rows = {(row["parallel"], row["rank"]): row for row in r["rows"]}
    assert list(rows) == [("ddp", 0), ("ddp", 1), ("fsdp", 0), ("fsdp", 1)]
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    whole = 4 * sum(p.numel() for p in model.parameters())  # float32 bytes, the tied embedding once
    for rank in (0, 1):
        ddp, fsdp = rows[("ddp", rank)], rows[("fsdp", rank)]
        assert ddp["weight_bytes"] == ddp["grad_bytes"] == whole and ddp["optimizer_bytes"] == 2 * whole
        assert fsdp["weight_bytes"] == fsdp["grad_bytes"] and fsdp["optimizer_bytes"] == 2 * fsdp["weight_bytes"]
        assert fsdp["held_bytes_ratio"] == pytest.approx(0.5, abs=0.02) and ddp["held_bytes_ratio"] == 1.0
        assert fsdp["memory_bytes"] > 10 * 2**20 and fsdp["ms_per_iter"] > 0
    assert rows[("fsdp", 0)]["weight_bytes"] + rows[("fsdp", 1)]["weight_bytes"] == whole  # the shards are all of it
    out = capsys.readouterr().out
    assert "| fsdp | 1 |" in out and "held: the rank's weights, gradients and AdamW moments" in out


def fake_torchrun(monkeypatch: pytest.MonkeyPatch, returncode: int, result: str | None) -> None:
    """subprocess.run in bench as a torchrun that writes result (or nothing) to --json and exits with returncode."""

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        path = next(a.split("=", 1)[1] for a in argv if a.startswith("--json="))
        if result is not None:
            Path(ast.literal_eval(path)).write_text(result)  # settings are passed as repr
        return subprocess.CompletedProcess(argv, returncode)

    monkeypatch.setattr(subprocess, "run", run)  # what bench calls to start torchrun


def test_parallel_run_keeps_a_complete_result_when_torchrun_aborts_after_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rank that aborts in torch's teardown after rank 0 wrote every rank's figures costs a warning, not the
    measurement; without a result, or with a rank's figures missing or the file cut off, the run fails."""
    cfg, model_cfg = bench.defaults("train")
    complete = json.dumps({"mode": "train", "ranks": [{"rank": 0}, {"rank": 1}]})
    fake_torchrun(monkeypatch, -6, complete)
    assert bench.train_in_new_process(cfg, model_cfg, nproc=2)["ranks"] == [{"rank": 0}, {"rank": 1}]
    assert "exited with -6 after writing its complete result" in capsys.readouterr().err
    for returncode, result in ((-6, None), (1, json.dumps({"ranks": [{"rank": 0}]})), (-6, complete[:20])):
        fake_torchrun(monkeypatch, returncode, result)
        with pytest.raises(RuntimeError, match=f"on 2 processes exited with {returncode} and no complete result"):
            bench.train_in_new_process(cfg, model_cfg, nproc=2)
    fake_torchrun(monkeypatch, 0, complete)  # one process (memory mode's fresh process): no ranks to count
    assert bench.train_in_new_process(cfg, model_cfg)["mode"] == "train"
    assert capsys.readouterr().err == ""


def test_memory_mode_defaults_are_the_quick_start() -> None:
    cfg, model_cfg = bench.defaults("memory")
    quick_start = read_config_file(str(ROOT / "config" / "train_gmm_shakespeare.py"))
    for key in ("n_layer", "n_head", "n_embd", "block_size", "gmm_slots"):
        assert getattr(model_cfg, key) == quick_start[key], key
    assert (cfg.batch_size, cfg.n_segments) == (quick_start["batch_size"], quick_start["n_segments"])
    assert model_cfg.vocab_size == 65 and cfg.device == "auto" and cfg.experts == "0,1,2,4,8"
    assert bench.mode_of(["--mode=train", "--mode=memory"]) == "memory" and bench.mode_of([]) == "train"


@pytest.mark.slow  # three fresh pythons importing torch
def test_memory_mode_process_per_k(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = [*TINY_ARGS, "--mode=memory", "--experts=0,4", "--gmm_slots=4", "--iters=2", "--warmup_iters=1"]
    cmd = [sys.executable, "bench.py", *args, "--device=cpu", f"--json={out}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert [row[0] for row in table_rows(result.stdout)] == ["0", "4"]
    assert "each k in its own process" in result.stdout
    saved = json.loads(out.read_text())
    assert saved["mode"] == "memory" and saved["n_segments"] == 4  # the quick start's, not overridden
    k0, k4 = saved["rows"]
    assert k4["params"] - k0["params"] == k4["memory_params"] > 0
    assert k0["memory_bytes_ratio"] == 1.0 and k0["memory_rise_bytes"] > 0


@pytest.mark.parametrize("experts", ["0,9", "-1", "a,b", "0,1,1", "", "[0,1]"])
def test_bad_expert_list_one_line_exit_2(experts: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main([*TINY_ARGS, "--device=cpu", "--mode=memory", f"--experts={experts}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"experts = '{experts}'" in err and "0..8" in err


def test_bad_read_list_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main([*TINY_ARGS, "--device=cpu", "--mode=memory", "--reads=mixture,sum"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err == "error: reads = 'mixture,sum' must be distinct read modes, mixture and/or concat, separated by commas\n"
    )


@pytest.mark.slow
def test_logits_mode_holds_less_in_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    """logits mode trains the same step with every logit kept and with the loss in chunks, each in its own process,
    and the chunks hold less: here 4 x 256 tokens of a 50,304-word vocabulary, 196 MiB of float32 logits a copy."""
    r = bench.main(["--mode=logits", "--device=cpu", "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=256",
                    "--batch_size=1", "--iters=1", "--warmup_iters=0"])  # fmt: skip
    kept, chunked = r["rows"]
    assert kept["keep_logits"] and not chunked["keep_logits"]
    assert chunked["memory_above_start"] < kept["memory_above_start"] - 50 * 2**20
    assert "| in chunks |" in capsys.readouterr().out


def test_context_variants_name_their_models() -> None:
    """Context mode's variants over S segments: memory keeps the segment length, full attention is one segment of the
    whole context, off has no memory, xl attends to the previous segment with rope; k1 keeps no top-k."""
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16, gmm_experts=4, gmm_top_k=2)
    assert bench.parse_variants("k1,k4,full,off,xl") == ["k1", "k4", "full", "off", "xl"]
    k1, k4 = bench.context_variant(cfg, "k1", 8), bench.context_variant(cfg, "k4", 8)
    assert (k1.gmm_experts, k1.gmm_top_k, k4.gmm_experts, k4.gmm_top_k, k4.block_size) == (1, 0, 4, 2, 16)
    full, off, xl = (bench.context_variant(cfg, v, 8) for v in ("full", "off", "xl"))
    assert (full.gmm_experts, full.block_size, full.xl_attention) == (0, 128, False)
    assert (off.gmm_experts, off.block_size, off.xl_attention) == (0, 16, False)
    assert (xl.gmm_experts, xl.block_size, xl.xl_attention, xl.pos_emb) == (0, 16, True, "rope")
    GPT(xl)  # a valid model: xl needs rope and no memory
    # the mixture flags of a command line reach every k of memory and context mode (the base has memory on)
    _, base = configure(["--gmm_top_k=2", "--gmm_shared_expert=True"], *bench.defaults("memory"))
    k2, k4 = bench.with_experts(base, 2), bench.with_experts(base, 4)
    assert (k2.gmm_top_k, k4.gmm_top_k, k4.gmm_shared_expert, bench.with_experts(base, 0).gmm_experts) == (
        1,
        2,
        True,
        0,
    )


@pytest.mark.slow
def test_context_mode_rows_plot_and_the_full_attention_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row per segment count and variant, each with the model it names (its parameters), the tokens of a step in
    the per-token figure, full attention skipped past full_max_tokens, and the plot."""
    args = ["--mode=context", "--segments=2,1", "--variants=k2,full", "--full_max_tokens=16", "--gmm_slots=4",
            "--new_tokens=4", f"--out_dir={tmp_path}", "--gradient_checkpointing=none,segment"]  # fmt: skip
    r = bench.main([*TINY_ARGS, *args, "--device=cpu", "--iters=2", "--warmup_iters=1"])
    out = capsys.readouterr().out
    assert [(row["segments"], row["variant"], row.get("checkpointing")) for row in r["rows"]] == [
        (1, "k2", "none"), (1, "k2", "segment"), (1, "full", "none"), (1, "full", "segment"), (2, "k2", "none"),
        (2, "k2", "segment"), (2, "full", None)
    ]  # fmt: skip
    assert all(row["memory_above_start"] > 0 for row in r["rows"] if not row.get("skipped"))
    r["rows"] = [row for row in r["rows"] if row.get("checkpointing") != "segment"]
    k2, full = r["rows"][0], r["rows"][1]
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, gmm_slots=4, block_size=16)
    assert k2["params"] == GPT(replace(cfg, gmm_experts=2)).get_num_params()
    assert full["params"] == GPT(cfg).get_num_params()
    for row in r["rows"][:3]:
        tokens = 2 * row["context"]  # batch 2 x the whole context, in every step
        assert row["train_ms_per_token"] * tokens == pytest.approx(1000 * tokens / row["train_tokens_per_s"], rel=1e-6)
        assert row["generate_ms_per_token"] >= 0 and row["memory_bytes"] > 10 * 2**20
    assert "| 2 | 32 | full | - | - | - | - | skipped | - |" in out and "| 1 | 16 | k2 | segment |" in out
    assert (tmp_path / "context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
