"""
Routing analysis of a gated-memory-mixture model: how its writes are routed to the k experts, and what the experts
end up holding.

$ python analyze.py --out_dir=out-gmm-shakespeare
$ python analyze.py --out_dir=out-gmm-shakespeare --batches=50 --n_segments=8   # longer sequences than trained on

It loads out_dir/ckpt.pt, runs the model over the evaluation batches of the data it was trained on, records each
segment's routing probabilities p (B, k), write gates (B, k) and the expert states after the write, and reports:

- utilisation: the mean p of each expert; hard share: the fraction of writes whose top (argmax) expert it is;
- routing entropy H = -sum_j p_j log p_j of each write: mean and std, in nats and over log k (0 = one expert takes
  every write whole, 1 = every write spread evenly);
- load balance: the Switch loss k * sum_j f_j P_j that training adds (1 = balanced, k = one expert takes all);
- consistency: how often consecutive segments of a sequence keep the same top expert, beside the rate that routing
  independent from segment to segment would give with the same hard shares (sum_j f_j^2);
- diversity: the cosine similarity of every pair of experts' states, after each write of real data;
- warnings when routing has collapsed onto few experts or is diffuse (near uniform), with the settings to try.

It prints the report, writes out_dir/analysis.json and draws out_dir/analysis/*.png, with the loss and routing
curves of out_dir/metrics.jsonl. The functions on tensors (gmm.routing_stats, expert_diversity, diagnose) are what
train.py's evaluation logs, and notebooks/gmm_analysis.ipynb walks through the plots.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch.nn import functional as F
from tqdm import tqdm

from common import DTYPES, autocast, check_device, default_device, default_dtype, fail, load_checkpoint
from configurator import ConfigError, configure
from gmm import routing_stats
from model import GPT

# when routing is called collapsed or diffuse (see diagnose)
COLLAPSE_SHARE = 0.9  # one expert is the top choice of at least this share of writes ...
COLLAPSE_EXCESS = 0.5  # ... and its utilisation is at least this far from uniform (1/k) towards 1
DEAD_SHARE = 0.02  # an expert is unused below this hard share, with utilisation under a quarter of uniform (1/k)
DIFFUSE_ENTROPY = 0.95  # mean routing entropy over log k at or above this: every write is spread nearly evenly
SIMILAR_EXPERTS = 0.9  # mean pairwise cosine similarity at or above this: the experts hold nearly the same state

# -----------------------------------------------------------------------------


@dataclass
class AnalyzeConfig:
    out_dir: str = "out"  # reads out_dir/ckpt.pt and out_dir/metrics.jsonl; writes analysis.json and analysis/
    split: str = "val"  # the data the writes come from: val | train
    batches: int = 20  # batches of sequences to run
    batch_size: int = 0  # sequences per batch; 0 = the checkpoint's
    n_segments: int = 0  # segments per sequence; 0 = the checkpoint's (more shows routing past the trained length)
    data_dir: str = ""  # the folder that holds <dataset>/; "" = the checkpoint's
    seed: int | None = None  # batch seed; None = the batches evaluation uses (the run's seed + 1)
    device: str = "auto"  # 'auto' = cuda, then mps, then cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' = bfloat16/float16 on CUDA, float32 elsewhere; or 'float32', 'bfloat16', 'float16'
    plots: bool = True  # draw out_dir/analysis/*.png

    def __post_init__(self) -> None:
        if self.split not in ("train", "val"):
            raise ValueError(f"split = '{self.split}' must be one of train, val")
        if self.batches < 1:
            raise ValueError(f"batches = {self.batches} must be a positive integer")
        for name in ("batch_size", "n_segments"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 0 (0 = the checkpoint's)")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype = '{self.dtype}' must be one of auto, {', '.join(DTYPES)}")


# -----------------------------------------------------------------------------
# statistics: plain functions on tensors, checked against hand-computed values in tests/test_analyze.py


def expert_diversity(experts: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity (k, k) between every pair of experts' states, each flattened to M*D numbers, over the
    leading dimensions of experts (..., k, M, D): 1 = the same direction, 0 = orthogonal. A zero state counts 0."""
    k = experts.size(-3)
    flat = experts.float().reshape(-1, k, experts.size(-2) * experts.size(-1))  # (n, k, M*D)
    unit = F.normalize(flat, dim=-1)
    return (unit @ unit.transpose(1, 2)).mean(dim=0)  # (n, k, k) -> (k, k)


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    """The mean of a (k, k) matrix over its k*(k-1) off-diagonal entries."""
    k = matrix.size(0)
    return ((matrix.sum() - matrix.diagonal().sum()) / (k * (k - 1))).item()


def diagnose(stats: dict[str, Any], diversity: torch.Tensor | None = None) -> list[str]:
    """Warnings, each with the settings to try, for collapsed routing (one expert takes most writes, or some take
    none) and diffuse routing (every write spread nearly evenly); empty when routing looks healthy."""
    util, share = stats["util"], stats["hard_share"]
    k = len(util)
    warnings = []
    j = max(range(k), key=lambda i: share[i])
    dead = [i for i in range(k) if share[i] < DEAD_SHARE and util[i] < 0.25 / k]
    raise_balance = "raise gmm_load_balance (e.g. 0.05), raise gmm_temperature (e.g. 2.0)"
    # a top choice that barely beats the rest (p = 0.26, 0.25, 0.25, 0.24) is diffuse routing, not collapse
    if share[j] >= COLLAPSE_SHARE and util[j] >= 1 / k + COLLAPSE_EXCESS * (1 - 1 / k):
        warnings.append(
            f"collapse: expert {j} is the top choice of {share[j]:.0%} of writes (utilisation {util[j]:.2f}, "
            f"H/log k {stats['entropy_norm']:.2f}); {raise_balance}, or lower gmm_entropy (e.g. -0.01 spreads routing)"
        )
    elif dead:
        who = f"expert {dead[0]} takes" if len(dead) == 1 else f"experts {', '.join(map(str, dead))} take"
        warnings.append(
            f"partial collapse: {who} almost no writes (utilisation {', '.join(f'{util[i]:.2f}' for i in dead)}); "
            f"{raise_balance}"
        )
    if stats["entropy_norm"] >= DIFFUSE_ENTROPY:
        similar = ""
        if diversity is not None and off_diagonal_mean(diversity) >= SIMILAR_EXPERTS:
            similar = f", and the experts hold nearly the same state (mean cosine {off_diagonal_mean(diversity):.2f})"
        warnings.append(
            f"diffuse: every write is spread nearly evenly over the experts (H/log k {stats['entropy_norm']:.2f})"
            f"{similar}; try gmm_entropy > 0 (e.g. 0.01), a lower gmm_temperature (e.g. 0.5), gmm_init=orthogonal"
        )
    return warnings


# -----------------------------------------------------------------------------
# running a model over data


class Trace(NamedTuple):
    """What a model did over N sequences of S segments (k = 0 without memory)."""

    probs: torch.Tensor  # (S, N, k) routing probabilities of each segment's write
    gates: torch.Tensor  # (S, N, k) mean write strength of each expert in each write
    diversity: torch.Tensor  # (k, k) expert_diversity of the states after every write
    seg_loss: list[float]  # the language-model loss per segment (over targets != -1)


@torch.no_grad()
def collect(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu",
            dtype: str = "float32") -> Trace:  # fmt: skip
    """Run batches of (inputs, targets), each (B, L), segment by segment as GPT.forward_segments does, keeping what
    each segment's write decided and the experts it left."""
    model.eval()
    T, k = model.config.block_size, model.config.gmm_experts
    probs, gates, diversity, n = [], [], torch.zeros(k, k), 0
    loss_sum: torch.Tensor | None = None
    count: torch.Tensor | None = None
    for X, Y in batches:
        memory = model.memory.initial(X.size(0)) if model.memory is not None else None
        p, g, experts, ce, valid = [], [], [], [], []
        for start in range(0, X.size(1), T):
            with autocast(device, dtype):
                logits, memory, routing = model.segment(X[:, start : start + T], memory)
            assert logits is not None
            y = Y[:, start : start + T]
            ce.append(F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="sum").cpu())
            valid.append((y != -1).sum().cpu())
            if routing is not None and memory is not None:
                p.append(routing.probs.float().cpu())
                g.append(routing.gates.float().cpu())
                experts.append(memory.experts.float().cpu())
        loss_sum = torch.stack(ce) if loss_sum is None else loss_sum + torch.stack(ce)
        count = torch.stack(valid) if count is None else count + torch.stack(valid)
        if p:
            probs.append(torch.stack(p))  # (S, B, k)
            gates.append(torch.stack(g))
            diversity += expert_diversity(torch.stack(experts)) * X.size(0)  # (S, B, k, M, D) -> (k, k)
        n += X.size(0)
    if loss_sum is None or count is None:
        raise ValueError("no batches to analyse")
    S = len(loss_sum)
    empty = torch.zeros(S, n, 0)
    return Trace(
        torch.cat(probs, dim=1) if probs else empty,
        torch.cat(gates, dim=1) if gates else empty,
        diversity / max(1, n),
        (loss_sum / count.clamp_min(1)).tolist(),
    )


def load(cfg: AnalyzeConfig) -> tuple[GPT, dict[str, Any]]:
    """The model of out_dir/ckpt.pt in eval mode on cfg's device, and the checkpoint."""
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    return GPT.from_checkpoint(ckpt).eval().to(resolve_device(cfg)[0]), ckpt


def resolve_device(cfg: AnalyzeConfig) -> tuple[str, str]:
    device = default_device() if cfg.device == "auto" else cfg.device
    check_device(device)
    return device, default_dtype(device) if cfg.dtype == "auto" else cfg.dtype


def eval_batches(cfg: AnalyzeConfig, ckpt: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """cfg.batches batches (X, Y) of the checkpoint's dataset, drawn as train.py's evaluation draws them. Missing
    data is an error here, before the first batch is drawn."""
    # imported here, not at the top: train.py imports this module for its evaluation
    from train import BatchSampler, episode_dir, get_batch, open_mask, open_split

    run = ckpt.get("config") or {}
    if "dataset" not in run:
        raise ValueError(f"{cfg.out_dir}/ckpt.pt holds no training config: it does not say which data to analyse")
    folder = os.path.join(cfg.data_dir or run["data_dir"], run["dataset"])
    T = int(ckpt["model_args"]["block_size"])
    n_seg = cfg.n_segments or int(run["n_segments"])
    meta = ckpt.get("tokenizer_meta") or {}
    folder = episode_dir(folder, meta, n_seg, T)
    if not os.path.isfile(os.path.join(folder, f"{cfg.split}.bin")):
        raise ValueError(
            f"no {cfg.split}.bin in {folder} (the data the checkpoint trained on): prepare it, or pass --data_dir="
            "the folder that holds it"
        )
    data, mask = open_split(folder, cfg.split), open_mask(folder, cfg.split)
    seq_len = T * n_seg
    seed = cfg.seed if cfg.seed is not None else int(run["seed"]) + 1
    sampler = BatchSampler(len(data), seq_len, seed, align=seq_len if "episode_len" in meta else 1)
    device, batch_size = resolve_device(cfg)[0], cfg.batch_size or int(run["batch_size"])
    return (get_batch(data, sampler.draw(batch_size), seq_len, device, mask) for _ in range(cfg.batches))


# -----------------------------------------------------------------------------
# plots: each draws one PNG from plain numbers and returns its path; nothing touches pyplot's global state


def expert_colors(k: int) -> list[Any]:
    """One colour per expert, the same in every plot."""
    return [colormaps["tab10"](j) for j in range(k)]


def plot_routing(segment_util: list[list[float]], top: torch.Tensor, path: str, max_sequences: int = 32) -> str:
    """Left: the mean routing probability of each expert at each segment position (segments x experts). Right: the
    top expert of each write of the first sequences (one column each), so a sequence that keeps its expert is one
    colour down its column."""
    util = torch.tensor(segment_util)  # (S, k)
    S, k = util.shape
    fig = Figure(figsize=(10, 1.5 + 0.45 * max(S, 6)), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.4])
    im = ax.imshow(util.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for s in range(S):
        for j in range(k):
            ax.text(j, s, f"{util[s, j]:.2f}", ha="center", va="center", color="w" if util[s, j] < 0.6 else "k")
    ax.set(xticks=range(k), yticks=range(S), xlabel="expert", ylabel="segment", title="mean routing probability p")
    ax.set_yticklabels([str(s + 1) for s in range(S)])
    fig.colorbar(im, ax=ax, shrink=0.8)
    n = min(max_sequences, top.size(1))
    cmap = ListedColormap(expert_colors(k))
    im2 = ax2.imshow(top[:, :n].numpy(), cmap=cmap, vmin=-0.5, vmax=k - 0.5, aspect="auto", interpolation="nearest")
    ax2.set(xlabel="sequence", ylabel="segment", title=f"top expert of each write, first {n} sequences")
    ax2.set_yticks(range(S), [str(s + 1) for s in range(S)])
    bar = fig.colorbar(im2, ax=ax2, shrink=0.8, ticks=range(k))
    bar.set_ticklabels([f"expert {j}" for j in range(k)])
    fig.savefig(path, dpi=110)
    return path


def plot_utilisation(stats: dict[str, Any], path: str) -> str:
    """Utilisation (mean p) and hard share (argmax) of each expert, against the uniform 1/k."""
    k = len(stats["util"])
    fig = Figure(figsize=(1.5 + 1.1 * k, 3.6), layout="constrained")
    ax = fig.subplots()
    x = torch.arange(k).float()
    colors = expert_colors(k)
    ax.bar((x - 0.2).tolist(), stats["util"], width=0.4, color=colors, label="utilisation (mean p)")
    ax.bar((x + 0.2).tolist(), stats["hard_share"], width=0.4, color=colors, alpha=0.45, hatch="//",
           label="hard share (top expert)")  # fmt: skip
    ax.axhline(1 / k, color="k", ls="--", lw=1, label=f"uniform 1/k = {1 / k:.2f}")
    ax.set(xticks=range(k), xlabel="expert", ylim=(0, 1.05), title="expert utilisation")
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)
    return path


def plot_diversity(diversity: torch.Tensor, path: str) -> str:
    """The experts' pairwise cosine similarity (k x k): near 1 off the diagonal, the experts hold the same state."""
    k = diversity.size(0)
    fig = Figure(figsize=(1.8 + 0.8 * k, 1.2 + 0.7 * k), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(diversity.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(k):
        for j in range(k):
            color = "w" if abs(diversity[i, j]) > 0.7 else "k"
            ax.text(j, i, f"{diversity[i, j]:.2f}", ha="center", va="center", color=color)
    ax.set(xticks=range(k), yticks=range(k), xlabel="expert", ylabel="expert")
    ax.set_title(f"expert states: cosine similarity\n(mean off-diagonal {off_diagonal_mean(diversity):.2f})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110)
    return path


def plot_routing_history(records: list[dict[str, Any]], k: int, path: str) -> str | None:
    """Routing entropy over log k (and consistency) at each evaluation of the run, and each expert's utilisation;
    None if the run's evaluations logged no routing."""
    evals = [r for r in records if r.get("event") == "eval" and "val_entropy" in r]
    if not evals:
        return None
    it = [r["iter"] for r in evals]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(it, [r.get("val_entropy_norm", r["val_entropy"] / math.log(k)) for r in evals], "o-", label="H / log k")
    consistency = [r for r in evals if r.get("val_consistency") is not None and "val_hard_share" in r]
    if consistency:
        at = [r["iter"] for r in consistency]
        line = ax.plot(at, [r["val_consistency"] for r in consistency], "s-", label="consistency")[0]
        # what routing independent from segment to segment would give with the same hard shares
        chance = [sum(f * f for f in r["val_hard_share"]) for r in consistency]
        ax.plot(at, chance, ":", color=line.get_color(), label="consistency if independent")
    ax.set(xlabel="iteration", ylim=(0, 1.05), title="routing over training (val)")
    ax.legend(fontsize=8)
    with_util = [r for r in evals if "val_util" in r]
    for j, color in enumerate(expert_colors(k)):
        ax2.plot([r["iter"] for r in with_util], [r["val_util"][j] for r in with_util], "o-", color=color,
                 label=f"expert {j}")  # fmt: skip
    ax2.axhline(1 / k, color="k", ls="--", lw=1)
    ax2.set(xlabel="iteration", ylim=(0, 1.05), title="utilisation (mean p, val)")
    ax2.legend(fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    return path


def plot_losses(records: list[dict[str, Any]], path: str) -> str | None:
    """Training loss per logged step and evaluated train/val loss; the val loss of each segment position if logged.
    None if the run logged nothing."""
    steps = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not steps and not evals:
        return None
    if len(evals) > 2 and evals[0]["iter"] == 0:
        evals = evals[1:]  # the untrained model's loss (log vocab_size) would flatten every later difference
    per_segment = [r for r in evals if r.get("val_seg_loss")]
    fig = Figure(figsize=(10 if per_segment else 6, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if per_segment else 1, squeeze=False)[0]
    ax = axes[0]
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6, label="train (step)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set(xlabel="iteration", ylabel="loss", title="loss")
    ax.legend(fontsize=8)
    if per_segment:
        n_seg = len(per_segment[-1]["val_seg_loss"])
        rows = [r for r in per_segment if len(r["val_seg_loss"]) == n_seg]
        for s in range(n_seg):
            axes[1].plot([r["iter"] for r in rows], [r["val_seg_loss"][s] for r in rows], "o-", label=f"seg {s + 1}")
        axes[1].set(xlabel="iteration", ylabel="val loss", title="val loss per segment")
        axes[1].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
    """The records of out_dir/metrics.jsonl, [] if there is none."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# -----------------------------------------------------------------------------
# the report


def analyze(cfg: AnalyzeConfig, progress: bool = True) -> dict[str, Any]:
    """Load the checkpoint, run it over cfg.batches batches, print the report, write analysis.json and the plots.
    Returns what analysis.json holds."""
    model, ckpt = load(cfg)
    mc = model.config
    k = mc.gmm_experts
    device, dtype = resolve_device(cfg)
    batches = tqdm(eval_batches(cfg, ckpt), total=cfg.batches, desc="analyze", disable=not progress, leave=False)
    trace = collect(model, batches, device, dtype)
    S, N = len(trace.seg_loss), trace.probs.size(1)
    result: dict[str, Any] = {
        "checkpoint": os.path.join(cfg.out_dir, "ckpt.pt"),
        "iter": ckpt.get("iter_num"),
        "experts": k,
        "slots": mc.gmm_slots if k else 0,
        "split": cfg.split,
        "sequences": N,
        "segments": S,
        "seg_loss": trace.seg_loss,
    }
    stats = routing_stats(trace.probs, trace.gates) if k > 1 else None
    if stats is not None:
        result.update(stats)
        result["diversity"] = trace.diversity.tolist()
        result["diversity_mean"] = off_diagonal_mean(trace.diversity)
        result["warnings"] = diagnose(stats, trace.diversity)
    elif k == 1:  # one bank: no routing, but its write gates still say how much each segment overwrites
        result["gate"] = trace.gates.mean(dim=(0, 1)).tolist()
        result["segment_gate"] = trace.gates.mean(dim=1).tolist()
    plots: list[str] = []
    folder = os.path.join(cfg.out_dir, "analysis")
    if cfg.plots:
        os.makedirs(folder, exist_ok=True)
        records = read_metrics(cfg.out_dir)
        if stats is not None:
            top = trace.probs.argmax(dim=-1)  # (S, N)
            plots.append(plot_routing(stats["segment_util"], top, os.path.join(folder, "routing.png")))
            plots.append(plot_utilisation(stats, os.path.join(folder, "utilisation.png")))
            plots.append(plot_diversity(trace.diversity, os.path.join(folder, "diversity.png")))
            history = plot_routing_history(records, k, os.path.join(folder, "routing_history.png"))
            plots += [history] if history else []
        losses = plot_losses(records, os.path.join(folder, "losses.png"))
        plots += [losses] if losses else []
    result["plots"] = plots
    with open(os.path.join(cfg.out_dir, "analysis.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(format_report(result))
    written = f" and {len(plots)} plots in {folder}" if plots else ""
    print(f"wrote {os.path.join(cfg.out_dir, 'analysis.json')}{written}")
    return result


def format_report(r: dict[str, Any]) -> str:
    """The report analyze prints, from what analysis.json holds."""
    k = r["experts"]
    lines = [
        f"{r['checkpoint']}: iteration {r['iter']}, {k} expert{'s' * (k != 1)}"
        + (f" of {r['slots']} slots" if k else "")
        + f"; {r['sequences']} {r['split']} sequences of {r['segments']} segments",
        "loss per segment  " + " ".join(f"{v:.4f}" for v in r["seg_loss"]),
    ]
    if k == 0:
        return "\n".join([*lines, "no memory (gmm_experts = 0): there is no routing to analyse"])
    if k == 1:
        gates = " ".join(f"{g[0]:.3f}" for g in r["segment_gate"])
        lines += [
            "one memory bank (gmm_experts = 1): every write goes to it, so there is no routing to analyse",
            f"write gate per segment  {gates}  (the share of the bank each write replaces)",
        ]
        return "\n".join(lines)
    lines += ["", f"{'expert':<7}  {'utilisation':>11}  {'hard share':>10}  {'write gate':>10}"]
    lines += [f"{j:<7}  {r['util'][j]:>11.3f}  {r['hard_share'][j]:>10.3f}  {r['gate'][j]:>10.3f}" for j in range(k)]
    consistency = "n/a (one segment)" if r["consistency"] is None else f"{r['consistency']:.3f}"
    lines += [
        f"{'uniform':<7}  {1 / k:>11.3f}  {1 / k:>10.3f}",
        "",
        f"routing entropy   {r['entropy']:.3f} ± {r['entropy_std']:.3f} nats, H/log k {r['entropy_norm']:.3f} ± "
        f"{r['entropy_norm_std']:.3f}  (0 = one expert per write, 1 = uniform)",
        f"load balance      {r['load_balance']:.3f}  (1 = balanced, {k} = one expert takes every write)",
        f"consistency       {consistency}  (consecutive segments keep their top expert; "
        f"{r['consistency_chance']:.3f} if independent)",
        f"expert diversity  mean pairwise cosine similarity {r['diversity_mean']:.3f}  (1 = identical, 0 = orthogonal)",
        "expert " + "".join(f"{j:>7}" for j in range(k)),
        *(f"{i:<7}" + "".join(f"{v:>7.3f}" for v in row) for i, row in enumerate(r["diversity"])),
        "",
    ]
    lines += [f"warning: {w}" for w in r["warnings"]] or ["no warnings: routing is neither collapsed nor diffuse"]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    try:
        (cfg,) = configure(argv, AnalyzeConfig())
    except ConfigError as e:
        fail(str(e))
    try:
        analyze(cfg)
    except ValueError as e:  # no or bad checkpoint, missing data, bad device: one line
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
