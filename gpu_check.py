"""
The checks that need a CUDA GPU, in one command that fits a few minutes of one GPU, writing one JSON:

$ python gpu_check.py --out=gpu_check.json

1. `pytest -m gpu tests/test_gpu.py`: bf16 near fp32, fp16 with the scaler, the flash kernel, compile with memory,
   the memory's decoding equal to its forward, peak memory flat in segments with gradient_checkpointing=segment;
2. bench.py's training step at GPT-2 124M (batch 12 x 1024, bf16, compiled): ms/iter, tokens/s, MFU, peak memory;
3. bench.py --mode=context on the GPU: memory (k1, k4 top-2 with a shared bank) against full attention at 4 and 64
   segments of 64 tokens, without and with per-segment recomputation: time and peak memory;
4. bench.py --mode=logits: the loss with all logits kept against in chunks, at GPT-2's vocabulary.
Each part's result (or its error) goes into the JSON, so a part that fails leaves the others' figures. --quick runs
each part at a toy size (on a CPU too: the GPU tests are then skipped), to check the script itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
TOY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=2", "--iters=2", "--warmup_iters=1"]


def run_part(name: str, cmd: list[str], json_out: str | None, timeout: int) -> dict[str, Any]:
    """Run one part as a subprocess from the repo root; its JSON result (if it writes one), exit status, seconds and
    the end of its output."""
    print(f"--- {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        code, out = -1, f"timed out after {timeout} s\n{partial}"
    part: dict[str, Any] = {"exit": code, "seconds": round(time.time() - t0, 1), "tail": out[-3000:]}
    if json_out and os.path.isfile(json_out):
        part["result"] = json.loads(Path(json_out).read_text())
    print(out[-1500:], flush=True)
    return part


def main(argv: list[str]) -> int:
    out, quick = "gpu_check.json", False
    for arg in argv:
        if arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        elif arg == "--quick":
            quick = True
        else:
            print(f"error: unknown argument '{arg}': gpu_check.py takes --out=PATH and --quick", file=sys.stderr)
            return 2
    python = sys.executable
    device = [] if not quick else ["--device=cpu"]
    report: dict[str, Any] = {"quick": quick}
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "gpu.xml")
        tests = [python, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider", "--no-cov",
                 "-n", "0", "-q", f"--junitxml={junit}"]  # fmt: skip
        report["tests"] = run_part("GPU tests", tests, None, 900)
        Path(out).write_text(json.dumps(report, indent=1))  # after each part: a run cut short keeps what it measured
        parts = {
            "train_gpt2": ["--mode=train", *(TOY if quick else ["--iters=30", "--warmup_iters=10"])],
            "context": ["--mode=context", "--segments=" + ("2" if quick else "4,64"),
                        "--variants=" + ("k1" if quick else "k1,k4,full"),
                        "--gmm_top_k=2", "--gmm_shared_expert=True", "--gradient_checkpointing=none,segment",
                        "--full_max_tokens=4096", *(TOY if quick else ["--iters=5", "--warmup_iters=2"])],
            "logits": ["--mode=logits", *(TOY if quick else ["--batch_size=8", "--block_size=1024"])],
        }  # fmt: skip
        for name, args in parts.items():
            path = os.path.join(tmp, f"{name}.json")
            cmd = [python, "bench.py", *args, *device, f"--json={path}", f"--out_dir={tmp}"]
            report[name] = run_part(name, cmd, path, 900)
            Path(out).write_text(json.dumps(report, indent=1))
    failed = [k for k, v in report.items() if isinstance(v, dict) and v["exit"] != 0]
    print(f"wrote {out}; {'all parts ran' if not failed else 'failed: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
