"""The README's and RESULTS.md's commands run as written, with small overrides, so the documentation cannot rot.

Every `uv run ...` and `torchrun ...` line in their bash blocks (the README's first) is executed in order, as a
subprocess from the repo root, with overrides that make it tiny and offline: a 1-layer model, 2 iterations, CPU,
outputs in a temporary directory, data prepared from ../shared instead of downloaded, a random local GPT-2 instead
of OpenAI's weights, 2 CPU processes instead of 8 GPUs, an export without its upload to the Hub, and a dashboard
stopped once its page answers. `uv run pytest` itself is what CI runs, so it is skipped here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from configurator import read_config_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")
SHAKESPEARE_TXT = SHARED / "data" / "tinyshakespeare" / "input.txt"

DOCS = ("README.md", "RESULTS.md")  # whose commands run
TINY_MODEL = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16"]
TRAIN = ["--device=cpu", "--compile=False", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
         "--log_interval=1", "--batch_size=2", "--gradient_accumulation_steps=2", "--wandb_log=False"]  # fmt: skip
SAMPLE = ["--device=cpu", "--num_samples=1", "--max_new_tokens=5"]
BENCH = ["--device=cpu", "--batch_size=2", "--iters=2", "--warmup_iters=1", "--new_tokens=4", "--vocab_size=101"]


def readme_commands() -> list[str]:
    """The command lines of the bash blocks of the README, then RESULTS.md, comments stripped, in order."""
    text = "\n".join((ROOT / name).read_text() for name in DOCS)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("uv run ", "torchrun ")) and line not in commands:  # a repeat is not run again
                commands.append(line)
    return commands


def model_setting(argv: list[str], key: str, default: str) -> str:
    """What a script's argv sets key to, through its config files or --key=value (the last one wins)."""
    value = default
    for arg in argv:
        if arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
        elif arg.endswith(".py") and not arg.startswith("--"):
            value = str(read_config_file(str(ROOT / arg)).get(key, value))
    return value


def runnable(command: str, tmp: Path, hf_dir: Path) -> list[str] | None:
    """The README command as a small offline argv, or None for the test command itself."""
    words = shlex.split(command)
    if words[0] == "torchrun":  # 8 GPUs -> 2 CPU processes
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        words = [w for w in words[1:] if not w.startswith(("--standalone", "--nproc_per_node"))]
    else:
        assert words[:2] == ["uv", "run"], command
        launcher, words = [sys.executable], words[2:]
    script, args = words[0], words[1:]
    data = tmp / "data"
    if script == "pytest":
        return None
    if script == "data/shakespeare/prepare.py":
        return [*launcher, script, *args, "--input", str(SHAKESPEARE_TXT), "--out_dir", str(data / "shakespeare")]
    if script == "data/openwebtext/prepare.py":  # the same recipe on local text files instead of the Hub
        docs = tmp / "owt_docs"
        docs.mkdir(exist_ok=True)
        for i in range(3):
            (docs / f"doc{i}.txt").write_text(SHAKESPEARE_TXT.read_text()[i * 5000 : (i + 1) * 5000])
        out = data / "openwebtext_local"
        return [*launcher, script, *args, "--text_files", str(docs / "*.txt"), "--out_dir", str(out), "--num_proc=1"]
    if script in ("data/recall/prepare.py", "data/copy/prepare.py", "data/needle/prepare.py", "data/mqar/prepare.py"):
        small = ["--train_episodes", "64", "--val_episodes", "16", "--out_dir", str(data / script.split("/")[1])]
        return [*launcher, script, *args, *small]
    if script in ("train.py", "sample.py"):
        out_dir = model_setting(args, "out_dir", "out")
        extra = [f"--out_dir={tmp / out_dir}"]
        if script == "train.py":
            extra += [*TRAIN, *TINY_MODEL, f"--data_dir={data}"]
            if model_setting(args, "dataset", "openwebtext") == "openwebtext":  # 9B tokens: use a small dataset
                extra.append("--dataset=shakespeare_char")
        else:
            extra += SAMPLE
        init_from = model_setting(args, "init_from", "scratch")
        if init_from.startswith("gpt2"):  # OpenAI's weights: a local GPT-2
            extra.append(f"--init_from={hf_dir}")
        elif init_from.startswith("exports/"):  # a folder export.py wrote above
            extra.append(f"--init_from={tmp / init_from}")
        return [*launcher, script, *args, *extra]
    if script == "analyze.py":  # the checkpoint an earlier command trained
        out_dir = model_setting(args, "out_dir", "out")
        return [*launcher, script, *args, f"--out_dir={tmp / out_dir}", "--device=cpu", "--batches=1"]
    if script == "benchmark.py":  # one seed, a few steps of a tiny model, two runs at a time
        text = ["--text_max_iters=2", "--text_eval_iters=1", f"--text_data_dir={data}"]
        tiny = ["--max_iters=2", "--seeds=[1]", "--eval_iters=1", "--eval_interval=1", "--batch_size=2",
                "--n_layer=1", "--n_embd=16", "--n_segments=2", "--segment_curriculum=[2]", "--eval_segments=2,3",
                "--jobs=2"]  # fmt: skip
        if "mqar" in command:  # mqar16's 32 pair tokens take 2 segments of 16, and its 32 query tokens 2 more
            tiny += ["--n_segments=4", "--segment_curriculum=[4]", "--eval_segments=4"]
        return [*launcher, script, *args, *tiny, *text, f"--out_dir={tmp / 'results'}", "--device=cpu"]
    if script == "bench.py":
        context = ["--segments=1,2", "--variants=k1,full"] if "--mode=context" in args else []  # 4 runs, not 21
        return [*launcher, script, *args, *BENCH, *TINY_MODEL, *context, f"--out_dir={tmp / 'bench_out'}"]
    if script == "export.py":  # the upload needs the network: the folder is made, the push left out
        args = [a for a in args if not a.startswith("--push_to_hub=")]
        out_dir, to = model_setting(args, "out_dir", "out"), model_setting(args, "to", "")
        return [*launcher, script, *args, f"--out_dir={tmp / out_dir}", f"--to={tmp / to}"]
    if script == "dashboard.py":  # the runs the commands above tracked or wrote, on a free port
        extra = [f"--trackio_dir={tmp / 'trackio'}", "--port=0"]
        if imports := model_setting(args, "import_runs", ""):
            extra.append("--import_runs=" + ",".join(str(tmp / p) for p in imports.split(",")))
        return [*launcher, script, *args, *extra]
    raise AssertionError(f"the README runs {script}, which this test does not know how to make small")


def serve_and_stop(argv: list[str], command: str) -> None:
    """A command that serves until stopped: it must print its URL, answer there, and stop cleanly on SIGTERM."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = next((line.split()[1] for line in proc.stdout if line.startswith("dashboard: ")), "")
    try:
        assert url, f"README command printed no URL: {command}\n{proc.stderr.read() if proc.stderr else ''}"
        with urllib.request.urlopen(url, timeout=60) as page:
            assert page.status == 200, command
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"README command failed: {command}\n{err[-3000:]}"


@pytest.mark.slow
def test_readme_commands_run(tmp_path: Path) -> None:
    if not SHAKESPEARE_TXT.is_file():
        pytest.skip(f"{SHAKESPEARE_TXT} not found")
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_dir = tmp_path / "hf_gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(hf_dir)
    # what a user would have put in place of the download
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    shutil.copy(SHAKESPEARE_TXT, tmp_path / "data" / "shakespeare_char" / "input.txt")

    commands = readme_commands()
    assert "uv run train.py config/train_gmm_shakespeare.py" in commands[0]  # the main job opens the README
    assert commands[1] == "uv run pytest"
    ran = 0
    for command in commands:
        argv = runnable(command, tmp_path, hf_dir)
        if argv is None:
            continue
        if "dashboard.py" in argv:
            serve_and_stop(argv, command)
        else:
            result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
            # both streams' tails: a rank under torchrun prints to stdout what it was doing when it died
            assert result.returncode == 0, (
                f"README command failed: {command}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
            )
        ran += 1
    assert ran >= 20
    # the quick start and its baselines trained and logged; the samples came from their checkpoints
    for out in ("out-gmm-shakespeare", "out-gmm-off", "out-gmm-k4", "out-shakespeare-char-cpu"):
        assert (tmp_path / out / "ckpt.pt").is_file(), out
        assert (tmp_path / out / "metrics.jsonl").is_file(), out
