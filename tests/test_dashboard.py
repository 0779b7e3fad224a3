"""The dashboard: a tiny mixture run tracked with tracker=trackio, served by dashboard.py as a user starts it (a
process on a free loopback port), read back through the dashboard's JSON API and rendered in headless Chromium;
--import_runs replaying the run's metrics.jsonl into what the live tracker wrote; dashboard.py's bad input."""

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
TINY_GMM = [
    "--dataset=shakespeare_char",
    *TINY_TRAIN,
    "--n_segments=2",
    "--gmm_experts=4",
    "--gmm_slots=2",
    "--max_iters=6",
    "--eval_interval=3",
    "--tracker=trackio",
    "--tracker_project=tiny",
    "--tracker_run_name=gmm",
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACKIO_DIR"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, shakespeare_char_data: Path) -> Path:
    """A folder holding run/ (a 6-step k=4 run with tracker=trackio) and trackio/ (its database, beside run/)."""
    root = tmp_path_factory.mktemp("dashboard")
    args = [f"--data_dir={shakespeare_char_data}", f"--out_dir={root / 'run'}", *TINY_GMM]
    result = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=clean_env(), capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def records(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def logged(db: Path, run: str) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of every row a run logged, in order."""
    query = "SELECT step, metrics FROM metrics WHERE run_name = ? ORDER BY id"
    with contextlib.closing(sqlite3.connect(db)) as con:
        return [(step, json.loads(m)) for step, m in con.execute(query, (run,))]


@contextlib.contextmanager
def dashboard(*args: str) -> Iterator[str]:
    """dashboard.py args started as a user would; yields its printed URL; stopped by SIGTERM, which must end it
    cleanly (status 0, 'dashboard stopped')."""
    proc = subprocess.Popen([sys.executable, "dashboard.py", *args], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    url = ""
    try:
        for line in proc.stdout:  # the URL line comes once the server listens
            if line.startswith("dashboard: "):
                url = line.split()[1]
                break
        assert url, proc.stderr.read() if proc.stderr else ""
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "dashboard stopped" in out


def api(url: str, name: str, **kwargs: Any) -> Any:
    """The dashboard's JSON API: POST /api/<name> with keyword arguments, returns its data."""
    base = f"{urlparse(url).scheme}://{urlparse(url).netloc}"
    request = urllib.request.Request(f"{base}/api/{name}", data=json.dumps(kwargs).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_dashboard_serves_the_tracked_run(tracked: Path) -> None:
    """On 127.0.0.1, the run with every metric the issue lists, the final val loss equal to metrics.jsonl's, and a
    routing heatmap image at each evaluation."""
    evals = [r for r in records(tracked / "run") if r["event"] == "eval"]
    with dashboard(f"--trackio_dir={tracked / 'trackio'}", "--project=tiny") as url:
        assert urlparse(url).hostname == "127.0.0.1"
        assert [r["name"] for r in api(url, "get_runs_for_project", project="tiny")] == ["gmm"]
        names = set(api(url, "get_metrics_for_run", project="tiny", run="gmm"))
        steps = {f"train/{n}" for n in ("step_loss", "lr", "ms", "tokens_per_s", "mfu", "grad_norm")}
        per_segment = {f"val/seg_loss_{s}" for s in (1, 2)}
        per_expert = {f"val/{n}_{j}" for n in ("util", "hard_share") for j in range(4)}
        assert steps | per_segment | per_expert | {"train/loss", "val/loss", "val/entropy_norm"} <= names
        val = api(url, "get_metric_values", project="tiny", run="gmm", metric_name="val/loss")
        assert [v["step"] for v in val] == [0, 3, 6]
        assert val[-1]["value"] == pytest.approx(evals[-1]["val_loss"], rel=1e-6)
    images = [(step, m["val/routing"]) for step, m in logged(tracked / "trackio" / "tiny.db", "gmm")
              if "val/routing" in m]  # fmt: skip
    assert [step for step, _ in images] == [0, 3, 6]
    for _, image in images:
        path = tracked / "trackio" / "media" / image["file_path"]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_chromium_renders_the_dashboard(tracked: Path, tmp_path: Path) -> None:
    """Headless Chromium (Debian's, installed by .ci/run) renders the page: the run's name and its metrics are in
    the DOM, and a screenshot is written for a person to look at."""
    assert CHROMIUM, "no chromium on PATH: .ci/run installs Debian's with apt-get"
    shot = tmp_path / "dashboard.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=20000"]
    with dashboard(f"--trackio_dir={tracked / 'trackio'}", "--project=tiny") as url:
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        subprocess.run([CHROMIUM, *flags, "--window-size=1400,1000", f"--screenshot={shot}", url],
                       capture_output=True, timeout=180)  # fmt: skip
    assert "gmm" in dom.stdout, dom.stderr[-2000:]
    for name in ("val/loss", "seg_loss_1", "util_0", "tokens_per_s"):
        assert name in dom.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")


def test_import_runs_replays_what_the_tracker_logged(tracked: Path, tmp_path: Path) -> None:
    """--import_runs of the run's out_dir gives the rows the live tracker wrote: the same steps, metric names and
    values, images where it had images; importing again replaces the run rather than adding one."""
    folder = tmp_path / "trackio"
    args = [f"--trackio_dir={folder}", f"--import_runs={tracked / 'run'}", "--import_project=replay", "--serve=False"]
    for _ in range(2):
        result = subprocess.run([sys.executable, "dashboard.py", *args], cwd=ROOT, env=clean_env(),
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"as replay/run: {len(records(tracked / 'run'))} records" in result.stdout
    live, replayed = logged(tracked / "trackio" / "tiny.db", "gmm"), logged(folder / "replay.db", "run")
    assert [step for step, _ in replayed] == [step for step, _ in live]  # one import's rows, not two
    for (_, a), (_, b) in zip(live, replayed, strict=True):
        assert a.keys() == b.keys()
        numbers = [k for k, v in a.items() if not isinstance(v, dict)]
        assert {k: b[k] for k in numbers} == pytest.approx({k: a[k] for k in numbers}, rel=1e-12)
    with contextlib.closing(sqlite3.connect(folder / "replay.db")) as con:
        assert [name for (name,) in con.execute("SELECT DISTINCT run_name FROM metrics")] == ["run"]


def test_import_runs_names_runs_by_their_path(tmp_path: Path) -> None:
    """A folder of runs (a benchmark's runs/<task>/<variant>/seed<S>) is searched; each run is named by its path and
    grouped by its first part."""
    import dashboard as dash

    for parts in (("mqar4", "k1", "seed1"), ("mqar4", "k4", "seed1"), ("mqar8", "k1", "seed1")):
        folder = tmp_path.joinpath(*parts)
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text('{"event": "train", "iter": 1, "loss": 2.0}\n{"event": "tr')
    runs = dash.gather_runs([str(tmp_path)])
    assert [(name, group) for name, group, _, _ in runs] == [
        ("mqar4-k1-seed1", "mqar4"),
        ("mqar4-k4-seed1", "mqar4"),
        ("mqar8-k1-seed1", "mqar8"),
    ]
    assert all(len(recs) == 1 for _, _, _, recs in runs)  # a last line cut short is left out


def test_record_metrics_names() -> None:
    """The mapping train.py and --import_runs share, on one record of each kind."""
    from tracking import record_metrics

    train = {"event": "train", "iter": 5, "loss": 2.5, "lr": 1e-3, "ms": 10.0, "mfu": -1.0, "grad_norm": 0.5}
    assert record_metrics(train) == {"train/step_loss": 2.5, "train/lr": 1e-3, "train/ms": 10.0, "train/grad_norm": 0.5}
    evaluation = {"event": "eval", "iter": 5, "val_loss": 2.0, "val_seg_loss": [2.1, 1.9], "val_util": [0.7, 0.3],
                  "val_consistency": None, "val_segment_util": [[0.7, 0.3], [0.6, 0.4]], "tokens": 64}  # fmt: skip
    assert record_metrics(evaluation) == {"val/loss": 2.0, "val/seg_loss_1": 2.1, "val/seg_loss_2": 1.9,
                                          "val/util_0": 0.7, "val/util_1": 0.3, "train/tokens": 64.0}  # fmt: skip


def test_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([sys.executable, "dashboard.py", f"--port={port}", f"--trackio_dir={tmp_path / 't'}"],
                                cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: port = {port} on 127.0.0.1 is taken (Address already in use): give " \
        "another, or 0 for a free one"  # fmt: skip
    assert not (tmp_path / "t").exists()


def test_another_host_is_served_with_a_warning(tmp_path: Path) -> None:
    """--host=0.0.0.0 binds every address, and says so on stderr."""
    args = [sys.executable, "dashboard.py", "--host=0.0.0.0", f"--trackio_dir={tmp_path}"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(args, cwd=ROOT, env=clean_env(), text=True, **pipes)  # type: ignore[call-overload]
    assert proc.stdout is not None and proc.stderr is not None
    line = next(line for line in proc.stdout if line.startswith("dashboard: "))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert urlparse(line.split()[1]).hostname in ("0.0.0.0", "127.0.0.1", "localhost", socket.gethostname())
    assert "warning: serving on 0.0.0.0, not 127.0.0.1" in err
