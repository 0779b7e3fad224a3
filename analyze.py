"""
Routing analysis of a gated-memory-mixture model: how its writes are routed to the k experts, and what the experts
end up holding.

$ python analyze.py --out_dir=out-gmm-k4   # README: the quick start with four routed banks
$ python analyze.py --out_dir=out-gmm-k4 --batches=50 --n_segments=8   # longer sequences than trained on

It loads out_dir/ckpt.pt, runs the model over the evaluation batches of the data it was trained on, records each
segment's routing probabilities p (B, k), write gates (B, k), the expert states after the write and the tokens
written, and reports:

- utilisation: the mean p of each expert; hard share: the fraction of writes whose top (argmax) expert it is;
- routing entropy H = -sum_j p_j log p_j of each write: mean and std, in nats and over log k (0 = one expert takes
  every write whole, 1 = every write spread evenly);
- load balance: the Switch loss k * sum_j f_j P_j that training adds (1 = balanced, k = one expert takes all);
- consistency: how often consecutive segments of a sequence keep the same top expert, beside the rate that routing
  independent from segment to segment would give with the same hard shares (sum_j f_j^2);
- diversity: the cosine similarity of every pair of experts' states, after each write of real data, and their
  spread per segment (expert_spread: whether writing pulls them together);
- specialisation: the mutual information, in bits, between each write's top expert and a property of the segment it
  wrote (its index 1..S; on a synthetic key/value task also the smallest key the segment holds), beside the same with
  the top experts shuffled across writes (the bias floor of the estimate) and the p-value of that permutation test;
- warnings when routing has collapsed onto few experts or is diffuse (near uniform), with the settings to try, and a
  note when routing is content-independent (no property tells the top expert better than shuffled routing does).

It prints the report, writes out_dir/analysis.json and draws out_dir/analysis/*.png, with the loss and routing
curves of out_dir/metrics.jsonl. The functions on tensors (gmm.routing_stats, expert_diversity,
routing_mutual_information, diagnose) are checked by hand in tests/test_analyze.py; gmm.routing_stats is also what
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

from common import (
    DTYPES,
    autocast,
    check_device,
    default_device,
    default_dtype,
    fail,
    interactive,
    load_checkpoint,
    read_metrics,
)
from configurator import ConfigError, configure
from data.common import KEY0, N_KEYS
from data.loader import BatchSampler, episode_dir, get_batch, open_mask, open_split
from gmm import routing_stats
from model import GPT
from tracking import draw_segment_util

# when routing is called collapsed or diffuse (see diagnose)
COLLAPSE_SHARE = 0.9  # one expert is the top choice of at least this share of writes ...
COLLAPSE_EXCESS = 0.5  # ... and its utilisation is at least this far from uniform (1/k) towards 1
DEAD_SHARE = 0.02  # an expert is unused below this hard share, with utilisation under a quarter of uniform (1/k)
DIFFUSE_ENTROPY = 0.95  # mean routing entropy over log k at or above this: every write is spread nearly evenly
SIMILAR_EXPERTS = 0.9  # mean pairwise cosine similarity at or above this: the experts hold nearly the same state
INDEPENDENT_P = 0.05  # routing is content-independent when every property's permutation p-value is at least this
NO_KEY = -1  # the smallest_key label of a segment that holds no key

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


def expert_spread(experts: torch.Tensor) -> torch.Tensor:
    """How far apart the k experts' states are, relative to their size, per sample of experts (..., k, M, D) ->
    (...): the norm of their deviations from the experts' mean over the norm of the states. 0 when every expert
    holds the same state; sqrt(1 - 1/k) (0.87 at k = 4) for orthogonal states of equal norm. Where cosine similarity
    says whether the experts point the same way, this says whether writing has pulled them together."""
    flat = experts.float().flatten(-2)  # (..., k, M*D)
    deviation = flat - flat.mean(dim=-2, keepdim=True)
    spread: torch.Tensor = deviation.norm(dim=(-2, -1)) / flat.norm(dim=(-2, -1)).clamp_min(1e-12)
    return spread


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    """The mean of a (k, k) matrix over its k*(k-1) off-diagonal entries."""
    k = matrix.size(0)
    return ((matrix.sum() - matrix.diagonal().sum()) / (k * (k - 1))).item()


def entropy_bits(counts: torch.Tensor) -> float:
    """The entropy in bits of the distribution that counts (any shape, summed over all of it) are samples of."""
    p = counts[counts > 0].double() / counts.sum()
    return -(p * p.log2()).sum().item()


def mutual_information_bits(choices: torch.Tensor, labels: torch.Tensor, k: int, n_labels: int) -> float:
    """Plug-in mutual information in bits, H(C) + H(Y) - H(C, Y), of the joint counts of choices (N,) in 0..k-1 and
    labels (N,) in 0..n_labels-1."""
    joint = torch.bincount(choices * n_labels + labels, minlength=k * n_labels).view(k, n_labels)  # (k, L)
    mi = entropy_bits(joint.sum(dim=1)) + entropy_bits(joint.sum(dim=0)) - entropy_bits(joint)
    return max(0.0, mi)  # rounding can leave -1e-16 for independent counts


def routing_mutual_information(choices: torch.Tensor, labels: torch.Tensor, k: int, n_shuffles: int = 200,
                               seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """How much the top expert of each write says about a property of what it wrote: choices (the top expert, 0..k-1)
    and labels (any integers), one of each per write in the same shape. The plug-in estimate is biased upwards (by
    about (k-1)(L-1) / (2 N ln 2) bits for L label values), so it comes with its value when the choices are permuted
    across writes n_shuffles times, which keeps both marginals and breaks any dependence; p_value is the share of
    shuffles whose MI reaches the observed one, with the +1 correction (so never below 1 / (n_shuffles + 1)).
    mi_norm is mi / log2 k: 1 = the label fixes the top expert and the experts share the writes evenly."""
    c, y = choices.reshape(-1).long().cpu(), labels.reshape(-1).long().cpu()
    if c.numel() != y.numel() or c.numel() == 0:
        raise ValueError(f"choices ({c.numel()}) and labels ({y.numel()}) must hold the same number (> 0) of writes")
    if k < 2 or c.min() < 0 or c.max() >= k:
        raise ValueError(f"choices must lie in 0..k-1 with k >= 2 experts (k = {k})")
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles = {n_shuffles} must be a positive integer")
    values, y = torch.unique(y, return_inverse=True)  # labels -> 0..L-1
    L = values.numel()
    mi = mutual_information_bits(c, y, k, L)
    g = torch.Generator().manual_seed(seed)
    shuffled = torch.tensor([mutual_information_bits(c[torch.randperm(c.numel(), generator=g)], y, k, L)
                             for _ in range(n_shuffles)], dtype=torch.float64)  # fmt: skip
    # a shuffle whose table is the observed one up to relabelling gives the same MI up to rounding: count it as reached
    reached = (shuffled >= mi - 1e-12).sum().item()
    return {
        "mi": mi,
        "mi_shuffled_mean": shuffled.mean().item(),
        "mi_shuffled_std": shuffled.std(correction=0).item(),
        "p_value": (reached + 1) / (n_shuffles + 1),
        "mi_norm": mi / math.log2(k),
        "h_choice": entropy_bits(torch.bincount(c, minlength=k)),  # MI <= min(h_choice, h_label) <= log2 k
        "h_label": entropy_bits(torch.bincount(y)),
        "writes": c.numel(),
        "label_values": L,
        "shuffles": n_shuffles,
    }


def smallest_keys(tokens: torch.Tensor, block_size: int) -> torch.Tensor:
    """The smallest key id (data/common.py's KEY0..KEY0+N_KEYS-1) among each segment's tokens, NO_KEY where it holds
    none: tokens (N, L) of N sequences cut into segments of block_size -> (S, N), S = ceil(L / block_size)."""
    none = KEY0 + N_KEYS  # above every key: the min of a segment without keys
    keyed = torch.where((tokens >= KEY0) & (tokens < KEY0 + N_KEYS), tokens, none)  # (N, L)
    smallest = torch.stack([seg.min(dim=1).values for seg in keyed.split(block_size, dim=1)])  # (S, N)
    return torch.where(smallest == none, NO_KEY, smallest)


def write_properties(tokens: torch.Tensor, block_size: int, synthetic: bool) -> dict[str, torch.Tensor]:
    """The properties (S, N) of each segment's write that routing is tested against: its segment index 1..S and, on
    a synthetic key/value task, the smallest key it holds (text has no such label)."""
    N, S = tokens.size(0), -(-tokens.size(1) // block_size)
    properties = {"segment_index": torch.arange(1, S + 1).view(S, 1).expand(S, N)}
    if synthetic:
        properties["smallest_key"] = smallest_keys(tokens, block_size)
    return properties


def diagnose(stats: dict[str, Any], diversity: torch.Tensor | None = None,
             information: dict[str, dict[str, Any]] | None = None) -> list[str]:  # fmt: skip
    """Warnings, each with the settings to try, for collapsed routing (one expert takes most writes, or some take
    none) and diffuse routing (every write spread nearly evenly); empty when routing looks healthy. Given the
    routing_mutual_information of some properties, a note (starting "note:") when none of them tells the top expert
    better than shuffled routing does: content-independent routing is a finding, not a failure."""
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
    if information and all(d["p_value"] >= INDEPENDENT_P for d in information.values()):
        tested = ", ".join(f"{name.replace('_', ' ')} (p={d['p_value']:.2f})" for name, d in information.items())
        # with one top expert for every write there is no choice that could depend on anything
        same = " (every write has the same top expert)" if all(d["h_choice"] == 0 for d in information.values()) else ""
        warnings.append(
            f"note: routing is content-independent{same}: the top expert is no more tied to the {tested} than when "
            "shuffled across writes"
        )
    return warnings


# -----------------------------------------------------------------------------
# running a model over data


class Trace(NamedTuple):
    """What a model did over N sequences of S segments (k = 0 without memory)."""

    probs: torch.Tensor  # (S, N, k) routing probabilities of each segment's write
    gates: torch.Tensor  # (S, N, k) mean write strength of each expert in each write
    diversity: torch.Tensor  # (k, k) expert_diversity of the states after every write
    spread: list[float]  # expert_spread after each segment's write, averaged over sequences (empty for k <= 1)
    seg_loss: list[float]  # the language-model loss per segment (over targets != -1)
    tokens: torch.Tensor  # (N, L) the input tokens of each sequence; segment s wrote tokens[:, s*T : (s+1)*T]


@torch.no_grad()
def collect(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu",
            dtype: str = "float32") -> Trace:  # fmt: skip
    """Run batches of (inputs, targets), each (B, L), segment by segment as GPT.forward_segments does, keeping what
    each segment's write decided, the experts it left and the tokens it wrote."""
    model.eval()
    T, k = model.config.block_size, model.config.gmm_experts
    probs, gates, tokens, diversity, n = [], [], [], torch.zeros(k, k), 0
    spread: torch.Tensor | None = None  # (S,) summed over sequences
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
                experts.append(memory.experts[:, :k].float().cpu())  # the routed banks, not the shared one
        loss_sum = torch.stack(ce) if loss_sum is None else loss_sum + torch.stack(ce)
        count = torch.stack(valid) if count is None else count + torch.stack(valid)
        if p:
            probs.append(torch.stack(p))  # (S, B, k)
            gates.append(torch.stack(g))
            diversity += expert_diversity(torch.stack(experts)) * X.size(0)  # (S, B, k, M, D) -> (k, k)
            batch_spread = expert_spread(torch.stack(experts)).sum(dim=1)  # (S, B) -> (S,)
            spread = batch_spread if spread is None else spread + batch_spread
        tokens.append(X.cpu())
        n += X.size(0)
    if loss_sum is None or count is None:
        raise ValueError("no batches to analyse")
    S = len(loss_sum)
    empty = torch.zeros(S, n, 0)
    return Trace(
        torch.cat(probs, dim=1) if probs else empty,
        torch.cat(gates, dim=1) if gates else empty,
        diversity / max(1, n),
        (spread / max(1, n)).tolist() if spread is not None and k > 1 else [],
        (loss_sum / count.clamp_min(1)).tolist(),
        torch.cat(tokens),
    )


def load(cfg: AnalyzeConfig) -> tuple[GPT, dict[str, Any]]:
    """The model of out_dir/ckpt.pt in eval mode on cfg's device, and the checkpoint."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path)
    return GPT.from_checkpoint(ckpt, source=path).eval().to(resolve_device(cfg)[0]), ckpt


def resolve_device(cfg: AnalyzeConfig) -> tuple[str, str]:
    device = default_device() if cfg.device == "auto" else cfg.device
    check_device(device)
    return device, default_dtype(device) if cfg.dtype == "auto" else cfg.dtype


def eval_batches(cfg: AnalyzeConfig, ckpt: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """cfg.batches batches (X, Y) of the checkpoint's dataset, drawn as train.py's evaluation draws them. Missing
    data is an error here, before the first batch is drawn."""
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
    align = seq_len if "episode_len" in meta else 1
    sampler = BatchSampler(len(data), seq_len, seed, align, source=str(data.filename))
    device, batch_size = resolve_device(cfg)[0], cfg.batch_size or int(run["batch_size"])
    vocab_size = int(ckpt["model_args"]["vocab_size"])
    return (get_batch(data, sampler.draw(batch_size), seq_len, device, mask, vocab_size) for _ in range(cfg.batches))


# -----------------------------------------------------------------------------
# plots: each draws one PNG from plain numbers and returns its path; nothing touches pyplot's global state


def expert_colors(k: int) -> list[Any]:
    """One colour per expert, the same in every plot."""
    return [colormaps["tab10"](j) for j in range(k)]


def plot_routing(segment_util: list[list[float]], top: torch.Tensor, path: str, max_sequences: int = 32) -> str:
    """Left: the routing heatmap (draw_segment_util). Right: the top expert of each write of the first sequences
    (one column each), so a sequence that keeps its expert is one colour down its column."""
    S, k = len(segment_util), len(segment_util[0])
    fig = Figure(figsize=(10, 1.5 + 0.45 * max(S, 6)), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.4])
    draw_segment_util(fig, ax, segment_util, "mean routing probability p")
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


# -----------------------------------------------------------------------------
# the report


def analyze(cfg: AnalyzeConfig, progress: bool = True) -> dict[str, Any]:
    """Load the checkpoint, run it over cfg.batches batches, print the report, write analysis.json and the plots.
    Returns what analysis.json holds."""
    model, ckpt = load(cfg)
    mc = model.config
    k = mc.gmm_experts
    device, dtype = resolve_device(cfg)
    batches = tqdm(
        eval_batches(cfg, ckpt),
        total=cfg.batches,
        desc="analyze",
        disable=not progress or not interactive(),
        leave=False,
    )
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
        result["spread"] = trace.spread
        # does the top expert of a write depend on what was written? (a synthetic task's keys are known token ids)
        synthetic = (ckpt.get("tokenizer_meta") or {}).get("tokenizer") == "synthetic"
        top = trace.probs.argmax(dim=-1)  # (S, N)
        result["routing_mi"] = {
            name: routing_mutual_information(top, labels, k)
            for name, labels in write_properties(trace.tokens, mc.block_size, synthetic).items()
        }
        messages = diagnose(stats, trace.diversity, result["routing_mi"])
        result["warnings"] = [m for m in messages if not m.startswith("note:")]
        result["notes"] = [m for m in messages if m.startswith("note:")]
    elif k == 1:  # one bank: no routing, but its write gates still say how much each segment overwrites
        result["gate"] = trace.gates.mean(dim=(0, 1)).tolist()
        result["segment_gate"] = trace.gates.mean(dim=1).tolist()
    folder = os.path.join(cfg.out_dir, "analysis")
    plots = write_plots(cfg.out_dir, folder, stats, trace, k) if cfg.plots else []
    result["plots"] = plots
    with open(os.path.join(cfg.out_dir, "analysis.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(format_report(result))
    written = f" and {len(plots)} plots in {folder}" if plots else ""
    print(f"wrote {os.path.join(cfg.out_dir, 'analysis.json')}{written}")
    return result


def write_plots(out_dir: str, folder: str, stats: dict[str, Any] | None, trace: Trace, k: int) -> list[str]:
    """The routing heatmap, utilisation, diversity and routing history (k > 1) and the loss curves, in folder;
    returns their paths."""
    os.makedirs(folder, exist_ok=True)
    records = read_metrics(out_dir)
    plots = []
    if stats is not None:
        top = trace.probs.argmax(dim=-1)  # (S, N)
        plots.append(plot_routing(stats["segment_util"], top, os.path.join(folder, "routing.png")))
        plots.append(plot_utilisation(stats, os.path.join(folder, "utilisation.png")))
        plots.append(plot_diversity(trace.diversity, os.path.join(folder, "diversity.png")))
        history = plot_routing_history(records, k, os.path.join(folder, "routing_history.png"))
        plots += [history] if history else []
    losses = plot_losses(records, os.path.join(folder, "losses.png"))
    return plots + ([losses] if losses else [])


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
        f"expert spread     after each segment's write {' '.join(f'{v:.3f}' for v in r['spread'])}  (0 = the "
        f"same state, {math.sqrt(1 - 1 / k):.2f} = orthogonal states of equal size)",
        "expert " + "".join(f"{j:>7}" for j in range(k)),
        *(f"{i:<7}" + "".join(f"{v:>7.3f}" for v in row) for i, row in enumerate(r["diversity"])),
        "",
    ]
    for name, d in r["routing_mi"].items():
        lines.append(
            f"routing vs {name.replace('_', ' ')}: MI {d['mi']:.3f} bits (shuffled {d['mi_shuffled_mean']:.3f} ± "
            f"{d['mi_shuffled_std']:.3f}, p={d['p_value']:.3f}), MI/log2 k {d['mi_norm']:.3f}; {d['writes']} writes, "
            f"{d['label_values']} values"
        )
    lines.append("")
    lines += [f"warning: {w}" for w in r["warnings"]] or ["no warnings: routing is neither collapsed nor diffuse"]
    return "\n".join([*lines, *r["notes"]])


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
