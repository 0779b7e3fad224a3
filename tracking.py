"""Experiment tracking: one logger for train.py, whatever the backend.

    tracker = 'none'     nothing leaves the run but out_dir/metrics.jsonl (always written)
    tracker = 'wandb'    Weights & Biases (an account, or WANDB_MODE=offline); wandb_log=True means this
    tracker = 'trackio'  Hugging Face's local-first tracker: a SQLite file per project, no account, no network

Trackio keeps its files in TRACKIO_DIR when that is set, else in a `trackio/` folder beside out_dir (never in a
hidden folder of the home directory by surprise), so runs written side by side under one folder share one
dashboard. train.py calls open_tracker once, then log_record(tracker, record) with each record it appends to
metrics.jsonl, and finish(); dashboard.py --import_runs replays a metrics.jsonl through the same log_record, so a
replayed run holds what a tracked one would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TRACKERS = ("none", "wandb", "trackio")


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int, images: dict[str, str] | None = None) -> None:
        """Numbers under their names, and images (PNG paths, read before log returns) at one step."""

    def finish(self) -> None: ...


class NoTracker:
    """tracker = 'none': calls that do nothing, so train.py needs no branches."""

    def log(self, metrics: dict[str, float], step: int, images: dict[str, str] | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, project: str, name: str, config: dict[str, Any], group: str = "") -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, config=config, group=group or None)

    def log(self, metrics: dict[str, float], step: int, images: dict[str, str] | None = None) -> None:
        pictures = {k: self.wandb.Image(path) for k, path in (images or {}).items()}
        self.run.log({"iter": step, **metrics, **pictures})

    def finish(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, project: str, name: str, config: dict[str, Any], resume: bool, group: str = "") -> None:
        import trackio  # reads TRACKIO_DIR when imported: open_tracker sets it first

        self.trackio = trackio
        # a resumed run goes on logging into the run of the same name
        resume_mode = "allow" if resume else "never"
        self.run = trackio.init(project=project, name=name, group=group or None, config=config, resume=resume_mode)

    def log(self, metrics: dict[str, float], step: int, images: dict[str, str] | None = None) -> None:
        pictures = {k: self.trackio.Image(path) for k, path in (images or {}).items()}
        self.trackio.log({**metrics, **pictures}, step=step)

    def finish(self) -> None:
        self.trackio.finish()


def trackio_dir(out_dir: str) -> Path:
    """Where trackio keeps its project databases: TRACKIO_DIR, else `trackio/` beside out_dir."""
    if os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"])
    return Path(out_dir).resolve().parent / "trackio"


def open_tracker(
    kind: str,
    project: str,
    name: str,
    config: dict[str, Any],
    out_dir: str,
    resume: bool = False,
    group: str = "",
) -> Tracker:
    """The tracker `kind` names (one of TRACKERS), started for one run; runs of one group (a benchmark's task)
    are shown together."""
    if kind == "wandb":
        return WandbTracker(project, name, config, group)
    if kind == "trackio":
        os.environ["TRACKIO_DIR"] = str(trackio_dir(out_dir))
        return TrackioTracker(project, name, config, resume, group)
    return NoTracker()


# one metrics.jsonl record -> what a tracker shows

SPLITS = ("train", "val")


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl record under the names a tracker shows them by. An evaluation's
    `<split>_<name>` becomes `<split>/<name>`; a list of one number per segment becomes `<split>/<name>_<s>` with
    s from 1 (as analyze.py's plots count segments), one per expert `<split>/<name>_<j>` with j from 0 (as they
    count experts). The figures of a training step (and an evaluation's lr and tokens) go under `train/`, the
    step's loss as `train/step_loss`. Absent figures (None, an MFU of -1 before it is measured) and lists of lists
    (drawn as images by log_record) are left out."""
    out: dict[str, float] = {}
    evaluation = record.get("event") == "eval"
    for key, value in record.items():
        if key in ("event", "iter") or value is None or isinstance(value, str):
            continue
        split, _, name = key.partition("_")
        if evaluation and split in SPLITS and name:
            key = f"{split}/{name}"
        else:
            key = "train/step_loss" if key == "loss" else f"train/{key}"
        if isinstance(value, list):
            if value and isinstance(value[0], list):
                continue
            first = 1 if "seg" in name else 0
            out.update({f"{key}_{i + first}": float(v) for i, v in enumerate(value)})
        elif not (key == "train/mfu" and value < 0):
            out[key] = float(value)
    return out


def log_record(tracker: Tracker, record: dict[str, Any]) -> None:
    """Log one metrics.jsonl record at its iteration: its numbers (record_metrics) and, for an evaluation of a
    mixture of experts, the routing heatmap (segments x experts, mean routing probability, plot_segment_util)."""
    if isinstance(tracker, NoTracker):
        return
    metrics = record_metrics(record)
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        for split in SPLITS:
            if record.get(f"{split}_segment_util"):
                path = os.path.join(tmp, f"{split}_routing.png")
                title = f"{split} routing, iteration {record['iter']}"
                images[f"{split}/routing"] = plot_segment_util(record[f"{split}_segment_util"], path, title)
        tracker.log(metrics, record["iter"], images)


def draw_segment_util(fig: Figure, ax: Axes, segment_util: list[list[float]], title: str) -> None:
    """The routing heatmap: the mean routing probability of each expert (columns) at each segment (rows)."""
    S, k = len(segment_util), len(segment_util[0])  # (S, k)
    im = ax.imshow(segment_util, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for s, row in enumerate(segment_util):
        for j, p in enumerate(row):
            ax.text(j, s, f"{p:.2f}", ha="center", va="center", color="w" if p < 0.6 else "k")
    ax.set(xticks=range(k), yticks=range(S), xlabel="expert", ylabel="segment", title=title)
    ax.set_yticklabels([str(s + 1) for s in range(S)])
    fig.colorbar(im, ax=ax, shrink=0.8)


def plot_segment_util(segment_util: list[list[float]], path: str, title: str = "mean routing probability p") -> str:
    """The routing heatmap (draw_segment_util) alone: what a tracker shows at each evaluation."""
    from matplotlib.figure import Figure  # matplotlib only when there is something to draw

    S, k = len(segment_util), len(segment_util[0])
    fig = Figure(figsize=(1.8 + 0.7 * k, 1.3 + 0.4 * max(S, 4)), layout="constrained")
    draw_segment_util(fig, fig.subplots(), segment_util, title)
    fig.savefig(path, dpi=90)
    return path
