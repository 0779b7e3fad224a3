"""Experiment tracking: one logger for train.py, whatever the backend.

    tracker = 'none'     nothing leaves the run but out_dir/metrics.jsonl (always written)
    tracker = 'wandb'    Weights & Biases (an account, or WANDB_MODE=offline); wandb_log=True means this
    tracker = 'trackio'  Hugging Face's local-first tracker: a SQLite file per project, no account, no network

Trackio keeps its files in TRACKIO_DIR when that is set, else in a `trackio/` folder beside out_dir (never in a
hidden folder of the home directory by surprise), so runs written side by side under one folder share one
dashboard. train.py calls open_tracker once and then only log(metrics, step) and finish().
"""

import os
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("none", "wandb", "trackio")


class Tracker(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def finish(self) -> None: ...


class NoTracker:
    """tracker = 'none': calls that do nothing, so train.py needs no branches."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, project: str, name: str, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(project=project, name=name, config=config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({"iter": step, **metrics})

    def finish(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, project: str, name: str, config: dict[str, Any], resume: bool) -> None:
        import trackio  # reads TRACKIO_DIR when imported: open_tracker sets it first

        self.trackio = trackio
        # a resumed run goes on logging into the run of the same name
        self.run = trackio.init(project=project, name=name, config=config, resume="allow" if resume else "never")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def finish(self) -> None:
        self.trackio.finish()


def trackio_dir(out_dir: str) -> Path:
    """Where trackio keeps its project databases: TRACKIO_DIR, else `trackio/` beside out_dir."""
    if os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"])
    return Path(out_dir).resolve().parent / "trackio"


def open_tracker(
    kind: str, project: str, name: str, config: dict[str, Any], out_dir: str, resume: bool = False
) -> Tracker:
    """The tracker `kind` names (one of TRACKERS), started for one run."""
    if kind == "wandb":
        return WandbTracker(project, name, config)
    if kind == "trackio":
        os.environ["TRACKIO_DIR"] = str(trackio_dir(out_dir))
        return TrackioTracker(project, name, config, resume)
    return NoTracker()
