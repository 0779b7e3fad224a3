"""
Evaluation on fixed batches: the language-model loss per segment and per position, answer accuracy on episode
datasets, and how a mixture of experts routed its writes. train.py evaluates with it every eval_interval steps, and
benchmark.py evaluates each finished run at every segment count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

import gmm
from common import autocast
from data.common import ANSWER
from data.loader import BatchSampler, answer_marks, get_batch, open_mask, open_split
from model import GPT


class EvalSettings(Protocol):
    """What estimate_loss reads of a run's settings (a TrainConfig has them)."""

    eval_iters: int  # batches per split
    batch_size: int  # sequences per batch
    seed: int  # the evaluation batches are drawn from seed + 1, the same at every evaluation


@dataclass
class FixedBatches:
    """EvalSettings for a caller without a TrainConfig (benchmark.py evaluating a finished run)."""

    eval_iters: int
    batch_size: int
    seed: int


def opening_answers(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) answer positions -> (B, L) bool, True at each row's first answer position (rows are episodes): the
    opening question's answer, which no earlier answer of its episode can inform."""
    first = valid.int().argmax(dim=1)  # the first True of each row (0 where a row has none)
    opening = torch.zeros_like(valid)
    opening[torch.arange(valid.size(0), device=valid.device), first] = valid.any(dim=1)
    return opening


@torch.no_grad()
def estimate_loss(
    model: GPT,
    data_dir: str,
    seq_len: int,
    cfg: EvalSettings,
    device: str,
    dtype: str,
    align: int = 1,
    seg_len: int = 0,
    splits: tuple[str, ...] = ("train", "val"),
    positions: bool = False,
) -> dict[str, Any]:
    """Evaluate eval_iters batches of each split; the batches are the same at every evaluation (a fixed seed), so
    successive estimates differ by the model alone. Losses are reported per chunk of seg_len positions (0 = the
    model's block_size: its segments). Returns per split:
    - split: the mean language-model loss (over answer tokens only where the dataset has an answer mask);
    - split_seg_loss: that loss per segment index, a list of n_segments values;
    - split_acc_token, split_acc_answer: with an answer mask, the share of answer tokens predicted right
      (greedy) and of answers (all tokens of a sequence's answer) entirely right;
    - split_acc_first: the share right of the answer tokens the mask marks 1, leaving out answers to questions asked
      before in the episode (marked REPEAT, whose value is in context);
    - split_acc_open: the share right of each episode's first answer token (its opening question): no answer
      before it in the episode can inform it, by repetition or by elimination (the one value not yet given), so it
      is what memory holds;
    - split_load_balance, split_entropy: with memory of k > 1 experts, the unweighted auxiliary losses;
    - split_util, split_hard_share, split_entropy_norm, split_consistency, split_segment_util: with k > 1 experts,
      how the writes were routed (gmm.routing_stats: utilisation and top-expert share per expert, entropy over
      log k, how often consecutive segments keep their top expert, mean routing probability per segment and expert:
      the routing heatmap);
    - split_pos_loss: with positions, the loss at each of the seq_len positions (where in a window context helps)."""
    out: dict[str, Any] = {}
    model.eval()
    T = seg_len or model.config.block_size
    n_seg = -(-seq_len // T)
    for split in splits:
        data, mask = open_split(data_dir, split), open_mask(data_dir, split)
        sampler = BatchSampler(len(data), seq_len, seed=cfg.seed + 1, align=align, source=str(data.filename))
        seg_sum, seg_count = torch.zeros(n_seg), torch.zeros(n_seg)
        pos_sum, pos_count = torch.zeros(seq_len), torch.zeros(seq_len)
        sums = dict.fromkeys(
            ("tok_right", "tok", "ans_right", "ans", "first_right", "first", "open_right", "open"), 0.0
        )
        aux: dict[str, float] = {}
        probs, gates = [], []  # (S, B, k) per batch: every write's routing, for the routing statistics
        for _ in range(cfg.eval_iters):
            offsets = sampler.draw(cfg.batch_size)
            X, Y = get_batch(data, offsets, seq_len, device, mask, model.config.vocab_size)
            with autocast(device, dtype):  # the logits are kept only where answers are scored (small vocabularies)
                result = model.forward_segments(X, Y, keep_logits=mask is not None)
            assert result.token_loss is not None
            valid = Y != -1  # (B, L)
            ce = result.token_loss.float()  # (B, L), 0 where there is no target
            seg = torch.arange(seq_len, device=Y.device) // T  # (L,) segment index of each position
            seg_sum += torch.zeros(n_seg, device=Y.device).index_add_(0, seg, (ce * valid).sum(0)).cpu()
            seg_count += torch.zeros(n_seg, device=Y.device).index_add_(0, seg, valid.sum(0).float()).cpu()
            if positions:
                pos_sum += (ce * valid).sum(0).cpu()
                pos_count += valid.sum(0).float().cpu()
            if result.logits is not None:
                hit = (result.logits.argmax(-1) == Y) & valid  # (B, L) answer tokens predicted right
                has_answer = valid.any(dim=1)
                sums["tok_right"] += hit.sum().item()
                sums["tok"] += valid.sum().item()
                sums["ans_right"] += ((hit | ~valid).all(dim=1) & has_answer).sum().item()
                sums["ans"] += has_answer.sum().item()
                assert mask is not None  # logits are kept only with a mask
                first = valid & (answer_marks(mask, offsets, seq_len, Y.device) == ANSWER)
                sums["first_right"] += (hit & first).sum().item()
                sums["first"] += first.sum().item()
                opening = opening_answers(valid)
                sums["open_right"] += (hit & opening).sum().item()
                sums["open"] += opening.sum().item()
            for k, v in result.aux.items():
                aux[f"{split}_{k}"] = aux.get(f"{split}_{k}", 0.0) + v.item() / cfg.eval_iters
            if model.config.gmm_experts > 1:
                probs.append(torch.stack([r.probs for r in result.routing]))
                gates.append(torch.stack([r.gates for r in result.routing]))
        out[split] = (seg_sum.sum() / seg_count.sum().clamp_min(1)).item()
        out[f"{split}_seg_loss"] = [round(v, 5) for v in (seg_sum / seg_count.clamp_min(1)).tolist()]
        if positions:
            out[f"{split}_pos_loss"] = [round(v, 4) for v in (pos_sum / pos_count.clamp_min(1)).tolist()]
        if mask is not None:
            out[f"{split}_acc_token"] = sums["tok_right"] / max(1.0, sums["tok"])
            out[f"{split}_acc_answer"] = sums["ans_right"] / max(1.0, sums["ans"])
            out[f"{split}_acc_first"] = sums["first_right"] / max(1.0, sums["first"])
            out[f"{split}_acc_open"] = sums["open_right"] / max(1.0, sums["open"])
        out.update(aux)
        if probs:
            stats = gmm.routing_stats(torch.cat(probs, dim=1), torch.cat(gates, dim=1))
            out.update({f"{split}_{k}": stats[k] for k in ("util", "hard_share", "entropy_norm", "consistency")})
            out[f"{split}_segment_util"] = [[round(p, 4) for p in row] for row in stats["segment_util"]]
    model.train()
    return out
