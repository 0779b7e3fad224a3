"""
The training dashboard: runs tracked with --tracker=trackio, in the browser, overlaid as they train.

$ python dashboard.py                                    # the runs of out_dirs in this folder (./trackio)
$ python dashboard.py --port=7860                        # a given port (default: a free one)
$ python dashboard.py --trackio_dir=results/mqar/trackio # a benchmark grid run with --tracker=trackio
$ python dashboard.py --import_runs=out-shakespeare-char,results/mqar/runs   # runs made without a tracker

It serves Trackio's dashboard (a local SQLite file per project, no account, no network) on 127.0.0.1 and prints its
URL; Ctrl-C stops it. It binds another address only when --host names one, with a warning: whoever reaches that
address reads the runs. The runs are those in trackio_dir: $TRACKIO_DIR if set, else ./trackio, which is where
train.py keeps the runs of every out_dir under this folder (tracking.trackio_dir).

--import_runs replays metrics.jsonl files into the project `import_project` through the same mapping train.py logs
with (tracking.log_record), so an imported run shows what a tracked one would. Each name is a run's out_dir (one
metrics.jsonl) or a folder searched for them (every run under results/mqar/runs, say); a run is named by its path
below the folder ('mqar4-k4-seed1', grouped as 'mqar4'), and importing it again replaces it.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import fail, read_metrics
from configurator import ConfigError, configure

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DashboardConfig:
    trackio_dir: str = ""  # '' = $TRACKIO_DIR, else ./trackio
    project: str = ""  # the project the page opens on ('' = the one imported into, else a list of all)
    port: int = 0  # 0 = a free port
    host: str = "127.0.0.1"  # another address serves the runs to whoever reaches it: a warning says so
    import_runs: str = ""  # comma-separated out_dirs, or folders holding them, to replay into import_project
    import_project: str = "imported"
    serve: bool = True  # False: import and stop

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port = {self.port} must be 0 (a free port) or a port number 1..65535")
        if not self.host.strip():
            raise ValueError("host = '' must be an address to bind, e.g. 127.0.0.1")
        if not self.import_project.strip():
            raise ValueError("import_project = '' must name the project imported runs go to")


def resolve_dir(cfg: DashboardConfig) -> Path:
    return Path(cfg.trackio_dir or os.environ.get("TRACKIO_DIR") or "trackio").resolve()


def find_runs(folder: str) -> list[tuple[str, str, Path]]:
    """(name, group, out_dir) of each run in `folder`: the folder itself when it holds a metrics.jsonl, else every
    folder below it that does; named by the path below `folder`, grouped by its first part."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"import_runs: '{folder}' is not a folder (give out_dirs, or folders holding them)")
    if (root / "metrics.jsonl").is_file():
        return [(root.resolve().name, "", root)]
    runs = []
    for path in sorted(root.rglob("metrics.jsonl")):
        parts = path.parent.relative_to(root).parts
        runs.append(("-".join(parts), parts[0] if len(parts) > 1 else "", path.parent))
    if not runs:
        raise ValueError(f"import_runs: no metrics.jsonl in '{folder}' or below it (train.py writes one per out_dir)")
    return runs


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (common.read_metrics), each checked to be a metrics record."""
    records = read_metrics(str(path.parent))
    for n, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("iter"), int):
            raise ValueError(f"{path}: record {n} is not a metrics record (a JSON object with an integer 'iter')")
    return records


def run_config(out_dir: Path) -> dict[str, Any]:
    """The run's settings from its checkpoint (read without unpickling), or where it came from if it has none."""
    config: dict[str, Any] = {"imported_from": str(out_dir.resolve())}
    ckpt = out_dir / "ckpt.pt"
    if ckpt.is_file():
        import torch

        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
            config.update({**saved.get("config", {}), **saved.get("model_args", {})})
        except Exception:  # an unreadable checkpoint costs the config, not the metrics
            pass
    return config


Run = tuple[str, str, Path, list[dict[str, Any]]]  # name, group, out_dir, its metrics.jsonl records


def gather_runs(folders: list[str]) -> list[Run]:
    """Every run to import from `folders` (find_runs), its records read: all checked before anything is written."""
    runs = [(name, group, out_dir) for folder in folders for name, group, out_dir in find_runs(folder)]
    names = [name for name, _, _ in runs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"import_runs: two runs would both be named '{twice[0]}': import them into separate projects")
    return [(name, group, out_dir, read_records(out_dir / "metrics.jsonl")) for name, group, out_dir in runs]


def import_runs(runs: list[Run], project: str) -> None:
    """Replay each run's records into `project`, as train.py would have logged them; a run of the same name there
    is replaced."""
    from trackio.sqlite_storage import SQLiteStorage

    from tracking import TrackioTracker, log_record

    for name, group, out_dir, records in runs:
        if name in {r["name"] for r in SQLiteStorage.get_run_records(project)}:
            SQLiteStorage.delete_run(project, name)
        tracker = TrackioTracker(project, name, run_config(out_dir), resume=False, group=group)
        for record in records:
            log_record(tracker, record)
        tracker.finish()
        print(f"imported {out_dir} as {project}/{name}: {len(records)} records")


def check_port(host: str, port: int) -> int:
    """The port to serve on: `port` if it is free on host, else a one-line error; 0 -> a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if port == 0:
                problem = f"host = '{host}' cannot be bound ({e.strerror}): give an address of this machine"
            else:
                problem = f"port = {port} on {host} is taken ({e.strerror}): give another, or 0 for a free one"
            raise ValueError(problem) from None
        return int(s.getsockname()[1])


def stop(signum: int, frame: Any) -> None:
    """SIGTERM stops the dashboard as Ctrl-C does."""
    raise KeyboardInterrupt


def serve(cfg: DashboardConfig, port: int, project: str) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM."""
    if cfg.host not in LOOPBACK:
        print(f"warning: serving on {cfg.host}, not 127.0.0.1: whoever reaches this address reads every run",
              file=sys.stderr)  # fmt: skip
    import trackio

    with contextlib.redirect_stdout(io.StringIO()):  # its banner says a browser was opened: none is
        app, url, _, write_url = trackio.show(project or None, open_browser=False, block_thread=False,
                                              host=cfg.host, server_port=port)  # fmt: skip
    page = url.rstrip("/") + "/" + (f"?project={project}" if project else "")
    signal.signal(signal.SIGTERM, stop)
    try:
        print(f"dashboard: {page} (runs in {resolve_dir(cfg)}; Ctrl-C stops it)")
        print(f"to rename or delete runs from the page, open it with its write token: {write_url}", flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    app.close()
    print("dashboard stopped", flush=True)


def use_trackio_dir(folder: Path) -> None:
    """Point trackio at `folder`: it reads TRACKIO_DIR once, when first imported."""
    if "trackio" in sys.modules and Path(sys.modules["trackio"].utils.TRACKIO_DIR).resolve() != folder:
        fail(f"trackio was imported in this process with another folder than {folder}: run dashboard.py on its own")
    os.environ["TRACKIO_DIR"] = str(folder)


def main(argv: list[str]) -> None:
    try:
        (cfg,) = configure(argv, DashboardConfig())
    except ConfigError as e:
        fail(str(e))
    folder = resolve_dir(cfg)
    try:  # every check before anything is written or bound
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"trackio_dir '{folder}' is a file: give a folder (made if missing)")
        runs = gather_runs([f for f in cfg.import_runs.split(",") if f])
        port = check_port(cfg.host, cfg.port) if cfg.serve else 0
    except ValueError as e:
        fail(str(e))
    use_trackio_dir(folder)
    if runs:
        import_runs(runs, cfg.import_project)
    if cfg.serve:
        serve(cfg, port, cfg.project or (cfg.import_project if runs else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
