"""Bad input, tabulated: for each entry, a command as a user would type it (train.py, sample.py, bench.py,
benchmark.py, analyze.py, dashboard.py, export.py, a prepare script) with one mistake in its settings, data,
checkpoint, prompt, output folder or device. Each must end with
- one line on stderr, `error: ...`, holding the words that name the thing and what is allowed;
- a non-zero exit status (2 for a user's mistake; a prepare script that cannot get its input text exits 1);
- no traceback: in-process, no exception but SystemExit escapes main(); as a subprocess, no "Traceback" on stderr;
- nothing written or overwritten: every file of the test's folders (the checkpoints, data and output folders the
  commands name) has the same size and mtime after the command as before, and no file or folder appears.
Most entries call the script's main(argv) in this process (what `python script.py argv` runs, without starting
Python and torch again); those marked `proc` (one torch script, one prepare script, one dashboard) run as a
subprocess, to show the same from the command line.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import train
from common import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = "--device=cpu --dtype=float32 --compile=False --n_layer=1 --n_head=2 --n_embd=32 --block_size=16 "
TINY += "--batch_size=2 --eval_iters=2 --log_interval=1 --warmup_iters=2 --max_iters=2 --eval_interval=2"
CHAR = "--data_dir={data} --dataset=shakespeare_char " + TINY
RUN = "--out_dir={w}/run"  # a good tiny checkpoint (the world fixture trains it)
SAMPLE = "--device=cpu --num_samples=1 --max_new_tokens=2"
# an out_dir nobody may create: a read-only folder for a normal user; root may write anywhere but in /sys
UNWRITABLE = "/sys/kernel/bad_input_out" if os.geteuid() == 0 else "{w}/readonly/out"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shakespeare_char_data: Path) -> dict[str, Path]:
    """The folders the table's commands point at: a good checkpoint and broken copies of it, broken datasets, a
    file where a folder should be, a read-only folder."""
    w = tmp_path_factory.mktemp("bad_input")
    data = shakespeare_char_data
    train.main([*CHAR.format(data=data).split(), f"--out_dir={w / 'run'}"])
    good = (w / "run" / "ckpt.pt").read_bytes()
    ckpt = torch.load(w / "run" / "ckpt.pt", weights_only=True)
    for name, content in {
        "truncated": good[: len(good) // 2],
        "garbage": b"not a checkpoint, just bytes " * 40,
    }.items():
        (w / name).mkdir()
        (w / name / "ckpt.pt").write_bytes(content)
    (w / "plain").mkdir()
    torch.save(ckpt["model"], w / "plain" / "ckpt.pt")  # another project's checkpoint: a bare state dict
    (w / "wrongshape").mkdir()
    save_checkpoint(
        {**ckpt, "model": {**ckpt["model"], "transformer.wte.weight": torch.zeros(10, 3)}},
        str(w / "wrongshape" / "ckpt.pt"),
    )
    # datasets with one thing wrong each, beside a good val.bin and meta.json
    src = data / "shakespeare_char"
    meta = json.loads((src / "meta.json").read_text())
    tokens = np.fromfile(src / "train.bin", dtype=np.uint16)[:20000]
    out_of_vocab = tokens.copy()
    out_of_vocab[::7] = 60000  # in every sequence: past the char model's 65 and bench's default 50304
    one_bad = tokens.copy()
    one_bad[12345] = 65  # one id past the char vocabulary, which few batches would draw
    bins = {"empty": tokens[:0], "short": tokens[:5], "badvocab": out_of_vocab, "onebad": one_bad}
    for name, train_ids in bins.items():
        folder = w / "bins" / name
        folder.mkdir(parents=True)
        train_ids.tofile(folder / "train.bin")
        tokens.tofile(folder / "val.bin")  # good: the first evaluation passes, only a check of train.bin stops it
        (folder / "meta.json").write_text(json.dumps(meta))
    odd = w / "bins" / "odd"
    shutil.copytree(w / "bins" / "short", odd)
    (odd / "train.bin").write_bytes(tokens[:500].tobytes() + b"\x01")  # 1001 bytes: cut mid-token
    other = w / "othertok" / "shakespeare_char"  # the same text under another character order
    shutil.copytree(src, other)
    (other / "meta.json").write_text(json.dumps({**meta, "itos": meta["itos"][::-1]}))
    (w / "afile").write_text("a file where a folder should be\n")
    (w / "readonly").mkdir()
    (w / "readonly").chmod(0o555)
    (w / "nodata").mkdir()
    (w / "badmetrics").mkdir()
    (w / "badmetrics" / "metrics.jsonl").write_text('not json\n{"event": "train", "iter": 1, "loss": 2.0}\n')
    return {"w": w, "data": data}


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file and folder under folders: equal snapshots mean nothing was written."""
    seen = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            st = path.stat()
            seen[str(path)] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return seen


def run_in_process(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of module.main(argv), as `python module.py argv` would give them."""
    main = importlib.import_module(module).main
    try:
        result = main(argv)
    except SystemExit as e:
        return int(e.code or 0), capsys.readouterr().err
    return (result if isinstance(result, int) else 0), capsys.readouterr().err  # prepare scripts return it


def run_subprocess(module: str, argv: list[str]) -> tuple[int, str]:
    script = module.replace(".", "/") + ".py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, script, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr


def case(module: str, args: str, *words: str, proc: bool = False, status: int = 2, id: str) -> Any:
    return pytest.param(module, args, words, proc, status, id=id)


CASES = [
    # --- train.py: settings -----------------------------------------------------------------------------------------
    case("train", f"{CHAR} {RUN}2 --n_layers=2", "'n_layers'", "did you mean 'n_layer'?", proc=True, id="unknown-key"),
    case("train", f"{CHAR} {RUN}2 --batch_size=abc", "batch_size", "'abc'", "int", id="wrong-type"),
    case("train", "{w}/nope.py", "nope.py", "not found", id="missing-config-file"),
    case("train", f"{CHAR} {RUN}2 --dropout=1.5", "dropout = 1.5", "[0, 1)", id="dropout-out-of-range"),
    case("train", f"{CHAR} {RUN}2 --learning_rate=-1", "learning_rate = -1.0", ">= 0", id="negative-learning-rate"),
    case("train", f"{CHAR} {RUN}2 --beta2=1.5", "beta2 = 1.5", "[0, 1)", id="beta-out-of-range"),
    case("train", f"{CHAR} {RUN}2 --n_embd=33", "n_embd = 33", "divisible by n_head", id="n_embd-not-divisible"),
    case("train", f"{CHAR} {RUN}2 --init_from=gpt3", "init_from = 'gpt3'", "gpt2-xl", id="unknown-init_from"),
    case("train", f"{CHAR} {RUN}2 --device=cuda:99", "device = 'cuda:99'", id="device-missing-cuda"),
    case("train", f"{CHAR} {RUN}2 --device=tpu", "device = 'tpu'", "cpu, cuda", id="device-unknown"),
    case("train", f"{CHAR} {RUN}2 --tracker=mlflow", "tracker = 'mlflow'", "none, wandb, trackio", id="tracker"),
    case("train", f"{CHAR} {RUN}2 --parallel=zero3", "parallel = 'zero3'", "ddp, fsdp", id="parallel"),
    # --- train.py: data -----------------------------------------------------------------------------------------------
    case(
        "train",
        TINY + " --data_dir={w}/nodata --dataset=no_such_set --out_dir={w}/o",
        "'no_such_set'",
        "prepare.py",
        id="dataset-missing",
    ),
    case(
        "train",
        TINY + " --data_dir={w}/bins --dataset=empty --out_dir={w}/o",
        "empty/train.bin",
        "0 bytes",
        id="bin-empty",
    ),
    case(
        "train",
        TINY + " --data_dir={w}/bins --dataset=odd --out_dir={w}/o",
        "odd/train.bin",
        "1001 bytes",
        "2 bytes each",
        id="bin-odd-length",
    ),
    case(
        "train",
        TINY + " --data_dir={w}/bins --dataset=short --out_dir={w}/o",
        "short/train.bin",
        "5 tokens",
        "fewer than one sequence",
        id="bin-truncated",
    ),
    case(
        "train",
        TINY + " --data_dir={w}/bins --dataset=onebad --out_dir={w}/o",
        "onebad/train.bin",
        "token id 65 (at token 12,345)",
        "vocabulary of 65",
        id="bin-token-beyond-vocab",
    ),
    # --- train.py: out_dir --------------------------------------------------------------------------------------------
    case("train", CHAR + " --out_dir={w}/afile", "out_dir", "is a file", id="out_dir-is-a-file"),
    case("train", CHAR + " --out_dir={w}/afile/sub", "cannot be created", "is a file", id="out_dir-under-a-file"),
    case("train", CHAR + f" --out_dir={UNWRITABLE}", "out_dir", id="out_dir-not-writable"),
    # --- train.py: checkpoints ----------------------------------------------------------------------------------------
    case("train", f"{CHAR} {RUN}", "ckpt.pt exists", "--init_from=resume", id="scratch-over-a-checkpoint"),
    case(
        "train",
        CHAR + " --out_dir={w}/o --init_from=resume",
        "needs a checkpoint",
        "has none",
        id="resume-without-checkpoint",
    ),
    case(
        "train",
        f"{CHAR} {RUN} --init_from=resume --n_embd=64",
        "n_embd = 64 disagrees",
        "n_embd = 32",
        id="resume-other-model-setting",
    ),
    case(
        "train",
        f"{CHAR} {RUN} --init_from=resume --pos_emb=rope",
        "pos_emb = 'rope' disagrees",
        "pos_emb = 'learned'",
        id="resume-other-pos_emb",
    ),
    case("train", CHAR + " --out_dir={w}/o --pos_emb=alibi", "pos_emb = 'alibi'", "learned, rope", id="pos_emb"),
    case(
        "train",
        f"{TINY} {RUN} --init_from=resume --data_dir={{w}}/othertok",
        "meta.json disagrees",
        "tokenizer",
        id="resume-meta-disagrees",
    ),
    case(
        "train", CHAR + " --out_dir={w}/truncated --init_from=resume", "truncated or corrupt", id="checkpoint-truncated"
    ),
    case("train", CHAR + " --out_dir={w}/garbage --init_from=resume", "cannot be read", id="checkpoint-corrupt"),
    case(
        "train",
        CHAR + " --out_dir={w}/plain --init_from=resume",
        "not a checkpoint of this project",
        id="checkpoint-plain-state-dict",
    ),
    case(
        "train",
        CHAR + " --out_dir={w}/wrongshape --init_from=resume",
        "do not fit its model_args",
        "transformer.wte.weight",
        id="checkpoint-wrong-shape",
    ),
    # --- sample.py ----------------------------------------------------------------------------------------------------
    case("sample", f"{SAMPLE} {RUN} --start=", "start is empty", id="prompt-empty"),
    case(
        "sample",
        SAMPLE + " --out_dir={w}/run --start=FILE:{w}/no_prompt.txt",
        "no_prompt.txt",
        "no such file",
        id="prompt-file-missing",
    ),
    case("sample", f"{SAMPLE} {RUN} --start=héllo", "'é'", "not in the char vocabulary", id="prompt-unencodable"),
    case("sample", f"{SAMPLE} {RUN} --top_p=1.5", "top_p = 1.5", "(0, 1]", id="top_p-out-of-range"),
    case("sample", f"{SAMPLE} {RUN} --device=mps", "device = 'mps'", id="device-missing-mps"),
    case("sample", SAMPLE + " --out_dir={w}/o", "not found", id="sample-no-checkpoint"),
    case("sample", SAMPLE + " --out_dir={w}/wrongshape", "do not fit its model_args", id="sample-wrong-shape"),
    # --- bench.py -----------------------------------------------------------------------------------------------------
    case("bench", "--device=cpu --mode=fly", "mode = 'fly'", "train, sample, memory, context", id="bench-mode"),
    case("bench", "--device=cpu --experts=1,x", "experts = '1,x'", id="bench-experts"),
    case("bench", "--device=cpu --json={w}/afile/x.json", "json", "is a file", id="bench-json-under-a-file"),
    case(
        "bench",
        "--device=cpu --compile=False --n_layer=1 --n_head=2 --n_embd=32 --block_size=16 --batch_size=2 "
        "--real_data=True --data_dir={w}/bins --dataset=badvocab",
        "token id 60000",
        id="bench-token-beyond-vocab",
    ),
    case("bench", "--device=cpu --mode=context --segments=0,2", "segments = '0,2'", "positive", id="bench-segments"),
    case("bench", "--device=cpu --mode=context --variants=k1,k9", "variants = 'k1,k9'", "full", id="bench-variants"),
    # --- benchmark.py -------------------------------------------------------------------------------------------------
    case("benchmark", "--out_dir={w}/grid --tasks=mqar99", "mqar99", "1 <= P <= 16", id="benchmark-task"),
    case("benchmark", "--out_dir={w}/grid --variants=k1-foo", "'foo'", "allowed", id="benchmark-variant"),
    case("benchmark", "--out_dir={w}/afile --tasks=recall", "out_dir", "is a file", id="benchmark-out_dir-a-file"),
    case(
        "benchmark",
        "--out_dir={w}/grid --tasks=recall --device=cuda:99",
        "cuda:99",
        id="benchmark-device-missing",
    ),
    # --- analyze.py ---------------------------------------------------------------------------------------------------
    case("analyze", f"--device=cpu {RUN} --split=test", "split = 'test'", "train, val", id="analyze-split"),
    case("analyze", "--device=cpu --out_dir={w}/truncated", "truncated or corrupt", id="analyze-truncated"),
    case(
        "analyze", f"--device=cpu {RUN} --data_dir={{w}}/nodata", "no val.bin", "--data_dir", id="analyze-data-missing"
    ),
    case("sample", SAMPLE + " --init_from={w}/nodata", "nodata is not an exported model", id="sample-not-an-export"),
    # --- export.py ----------------------------------------------------------------------------------------------------
    case("export", RUN, "to = ''", "--to=", id="export-no-folder"),
    case("export", "--out_dir={w}/o --to={w}/e", "ckpt.pt", "not found", id="export-no-checkpoint"),
    case("export", RUN + " --to={w}/run", "exists", "--overwrite=True", id="export-folder-exists"),
    case("export", RUN + " --to={w}/e --push_to_hub=nope", "push_to_hub = 'nope'", "owner/name", id="export-repo-id"),
    case(
        "export",
        RUN + " --to={w}/e --format=onnx",
        "format = 'onnx'",
        "auto, transformers, project",
        id="export-format",
    ),
    # --- dashboard.py -------------------------------------------------------------------------------------------------
    case("dashboard", "--port=70000", "port = 70000", "1..65535", id="dashboard-port-out-of-range"),
    case("dashboard", "--trackio_dir={w}/afile", "trackio_dir", "is a file", id="dashboard-dir-a-file"),
    case(
        "dashboard",
        "--trackio_dir={w}/tio --import_runs={w}/nope --serve=False",
        "nope' is not a folder",
        "out_dirs",
        id="dashboard-import-missing",
    ),
    case(
        "dashboard",
        "--trackio_dir={w}/tio --import_runs={w}/nodata --serve=False",
        "no metrics.jsonl",
        id="dashboard-import-no-runs",
    ),
    case(
        "dashboard",
        "--trackio_dir={w}/tio --import_runs={w}/badmetrics --serve=False",
        "badmetrics/metrics.jsonl: line 1 is not JSON",
        proc=True,
        id="dashboard-import-bad-metrics",
    ),
    # --- prepare scripts ----------------------------------------------------------------------------------------------
    case(
        "data.shakespeare_char.prepare",
        "--out_dir {w}/p --input {w}/no_text.txt",
        "no_text.txt",
        "not a file",
        status=1,
        id="prepare-input-missing",
    ),
    case(
        "data.shakespeare_char.prepare",
        "--out_dir {w}/afile",
        "--out_dir",
        "is a file",
        proc=True,
        id="prepare-out_dir-a-file",
    ),
    case("data.shakespeare.prepare", "--out_dir {w}/p --bogus 1", "unrecognized arguments", id="prepare-unknown-flag"),
    case("data.mqar.prepare", "--out_dir {w}/p --n_pairs 99", "--n_pairs 99", "<= 16", id="prepare-mqar-pairs"),
    case("data.recall.prepare", "--out_dir {w}/p --n_segments 0", "--n_segments", ">= 1", id="prepare-segments"),
    case("data.copy.prepare", "--out_dir {w}/p --block_size 1", "--block_size 1", "need >= 5", id="prepare-copy"),
]


@pytest.mark.parametrize("module, args, words, proc, status", CASES)
def test_bad_input_is_one_line_and_writes_nothing(
    world: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    module: str,
    args: str,
    words: tuple[str, ...],
    proc: bool,
    status: int,
) -> None:
    if "device=mps" in args and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    argv = args.format(**world).split()
    before = snapshot(*world.values())
    code, stderr = run_subprocess(module, argv) if proc else run_in_process(module, argv, capsys)
    lines = stderr.strip().splitlines()
    assert code == status, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert snapshot(*world.values()) == before, "the command wrote into the test's folders"


def test_the_table_covers_every_script_and_the_issue_minimum() -> None:
    modules = {p.values[0] for p in CASES}
    scripts = {"train", "sample", "bench", "benchmark", "analyze", "dashboard", "export"}
    assert scripts <= modules and any(str(m).startswith("data.") for m in modules)
    assert len(CASES) >= 30
