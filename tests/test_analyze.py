"""analyze.py, the routing analysis.

- routing_stats gives the utilisation, hard share, entropy, load balance and consistency of a hand-made routing
  (2 sequences x 3 segments x 2 experts) that are computed here by hand.
- expert_diversity is 1 for identical experts, 0 for orthogonal ones, -1 for opposite ones, averaged over samples.
- diagnose flags collapsed, partly collapsed and diffuse routing, each with settings to try, and not healthy routing;
  it notes content-independent routing only when no property's p-value is below 0.05.
- routing_mutual_information: identical choices and labels give H(label) with a small p-value; exactly and randomly
  independent ones give about the shuffled MI and a large p-value; a 2 x 2 table gives its MI computed by hand.
- smallest_keys and write_properties label each segment of a hand-built batch of synthetic tokens with its smallest
  key (values and fillers beside the key range are not keys), or no key; text gets only the segment index.
- collect equals GPT.forward_segments: the same routing, the same per-segment loss, the experts of every segment.
- Every plot is written as a non-empty PNG, from a run's metrics with or without the routing statistics.
- End to end on a tiny checkpoint: the routing statistics train.py logs at evaluation (metrics.jsonl, wandb) equal
  the analyzer's over the same batches; the CLI prints the report (with routing vs segment index) and writes
  analysis.json and the plots; a
  checkpoint without memory or with one bank reports what applies; a missing checkpoint or a bad flag is one line
  and exit status 2.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import analyze
import train
from analyze import (
    NO_KEY,
    collect,
    diagnose,
    expert_diversity,
    expert_spread,
    routing_mutual_information,
    smallest_keys,
)
from common import read_metrics
from data.common import COPY, FILLER0, KEY0, N_KEYS, QUERY, VALUE0
from gmm import routing_stats
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=4",
        "--gradient_accumulation_steps=1", "--eval_iters=2", "--log_interval=1", "--gmm_slots=2", "--block_size=8",
        "--n_segments=3", "--max_iters=4", "--eval_interval=2", "--dataset=shakespeare_char"]  # fmt: skip

# 3 segments (rows) x 2 sequences x 2 experts
PROBS = torch.tensor(
    [
        [[0.8, 0.2], [0.4, 0.6]],
        [[0.7, 0.3], [0.1, 0.9]],
        [[0.3, 0.7], [0.2, 0.8]],
    ]
)
GATES = torch.tensor(
    [
        [[0.5, 0.1], [0.2, 0.4]],
        [[0.6, 0.0], [0.0, 0.3]],
        [[0.1, 0.2], [0.1, 0.6]],
    ]
)


def H(p: float) -> float:
    """Entropy in nats of the two-expert routing (p, 1 - p)."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_routing_stats_by_hand() -> None:
    s = routing_stats(PROBS, GATES)
    assert s["util"] == pytest.approx([2.5 / 6, 3.5 / 6])  # expert 0: (0.8 + 0.4 + 0.7 + 0.1 + 0.3 + 0.2) / 6
    # top experts: segment 1 -> (0, 1), segment 2 -> (0, 1), segment 3 -> (1, 1)
    assert s["hard_share"] == pytest.approx([2 / 6, 4 / 6])
    assert s["gate"] == pytest.approx([1.5 / 6, 1.6 / 6])
    entropies = [H(p) for p in (0.8, 0.4, 0.7, 0.1, 0.3, 0.2)]
    mean = sum(entropies) / 6
    std = math.sqrt(sum((h - mean) ** 2 for h in entropies) / 6)
    assert s["entropy"] == pytest.approx(mean)
    assert s["entropy_std"] == pytest.approx(std)
    assert s["entropy_norm"] == pytest.approx(mean / math.log(2))
    assert s["entropy_norm_std"] == pytest.approx(std / math.log(2))
    assert s["load_balance"] == pytest.approx(2 * (2 / 6 * 2.5 / 6 + 4 / 6 * 3.5 / 6))  # k * sum_j f_j P_j
    # sequence 1 keeps expert 0 from segment 1 to 2, then changes; sequence 2 keeps expert 1 throughout: 3 of 4
    assert s["consistency"] == pytest.approx(3 / 4)
    assert s["consistency_chance"] == pytest.approx((1 / 3) ** 2 + (2 / 3) ** 2)
    torch.testing.assert_close(torch.tensor(s["segment_util"]), torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.25, 0.75]]))
    torch.testing.assert_close(torch.tensor(s["segment_gate"]), torch.tensor([[0.35, 0.25], [0.3, 0.15], [0.1, 0.4]]))
    assert routing_stats(PROBS[:1], GATES[:1])["consistency"] is None  # one segment: no consecutive pair


def test_expert_spread() -> None:
    """0 for identical experts, sqrt(1 - 1/k) for orthogonal ones of equal norm, per sample; scale-free."""
    same = torch.randn(1, 2, 3).expand(4, 2, 3)  # (k, M, D): four copies of one state
    assert expert_spread(same).item() == pytest.approx(0.0, abs=1e-6)
    orth = torch.eye(4).view(4, 1, 4) * 3.0  # four orthogonal states of norm 3
    assert expert_spread(orth).item() == pytest.approx((1 - 1 / 4) ** 0.5)
    both = expert_spread(torch.stack([same[:, :1, :], orth[:, :, :3] + orth[:, :, 1:]]))  # (2, k, 1, 3): per sample
    assert both.shape == (2,) and both[0].item() == pytest.approx(0.0, abs=1e-6) and both[1].item() > 0.5


def test_expert_diversity() -> None:
    e = torch.randn(1, 3, 4)  # one expert state (M=3, D=4)
    identical = e.expand(3, 3, 4)  # (k=3, M, D)
    assert torch.allclose(expert_diversity(identical), torch.ones(3, 3))
    basis = torch.eye(6)[:2].view(2, 3, 2)  # two orthogonal states of 3 x 2 numbers
    orth = torch.stack([basis[0], basis[1]])  # (k=2, M=3, D=2)
    assert torch.allclose(expert_diversity(orth), torch.eye(2))
    opposite = torch.stack([e[0], -2 * e[0]])
    assert torch.allclose(expert_diversity(opposite), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    # the mean over the leading dimensions: one identical pair and one orthogonal pair
    both = torch.stack([torch.stack([basis[0], basis[0]]), orth])  # (2, k=2, M, D)
    assert torch.allclose(expert_diversity(both), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    assert expert_diversity(torch.zeros(2, 3, 4))[0, 1] == 0.0  # a zero state counts as orthogonal, not NaN
    assert analyze.off_diagonal_mean(torch.tensor([[1.0, 0.2], [0.4, 1.0]])) == pytest.approx(0.3)


def constant(row: list[float], S: int = 4, N: int = 8) -> torch.Tensor:
    return torch.tensor(row).expand(S, N, len(row))


def test_diagnose() -> None:
    k = 4
    distinct = torch.eye(k).view(k, 1, k).expand(k, 2, k)  # (k, M=2, D=k): orthogonal experts
    collapsed = routing_stats(constant([0.97, 0.01, 0.01, 0.01]), constant([0.5] * k))
    (warning,) = diagnose(collapsed, distinct)
    assert warning.startswith("collapse: expert 0 is the top choice of 100% of writes")
    assert "gmm_load_balance" in warning and "gmm_temperature" in warning and "gmm_entropy" in warning

    # expert 3 never chosen, utilisation 0.01 < 0.25 / k
    probs = torch.tensor([[0.6, 0.2, 0.19, 0.01], [0.2, 0.6, 0.19, 0.01], [0.2, 0.19, 0.6, 0.01]])
    partial = routing_stats(probs.repeat(4, 1).view(4, 3, k), constant([0.5] * k, 4, 3))
    (warning,) = diagnose(partial, distinct)
    assert warning.startswith("partial collapse: expert 3 takes almost no writes") and "gmm_load_balance" in warning

    diffuse = routing_stats(constant([0.26, 0.25, 0.25, 0.24]), constant([0.5] * k))
    (warning,) = diagnose(diffuse, torch.ones(k, k))
    assert warning.startswith("diffuse") and "nearly the same state (mean cosine 1.00)" in warning
    assert "gmm_entropy > 0" in warning and "gmm_temperature" in warning and "gmm_init=orthogonal" in warning
    (warning,) = diagnose(diffuse, torch.eye(k))
    assert "nearly the same state" not in warning  # diffuse routing, but over distinct experts

    # sharp, balanced routing: each sequence sticks to one expert, the experts share the sequences evenly
    sharp = torch.full((3, 8, k), 0.02)
    sharp[:, torch.arange(8), torch.arange(8) % k] = 0.94
    assert diagnose(routing_stats(sharp, sharp), distinct) == []

    # content-independent routing is a note, and only when no property is significant
    mi = {"segment_index": {"p_value": 0.4, "h_choice": 2.0}, "smallest_key": {"p_value": 0.05, "h_choice": 2.0}}
    (note,) = diagnose(routing_stats(sharp, sharp), distinct, mi)
    assert note == (
        "note: routing is content-independent: the top expert is no more tied to the segment index (p=0.40), "
        "smallest key (p=0.05) than when shuffled across writes"
    )
    (note,) = diagnose(routing_stats(sharp, sharp), distinct, {"segment_index": {"p_value": 1.0, "h_choice": 0.0}})
    assert note.startswith("note: routing is content-independent (every write has the same top expert): ")
    mi["smallest_key"]["p_value"] = 0.01
    assert diagnose(routing_stats(sharp, sharp), distinct, mi) == []


def bits(*p: float) -> float:
    """Entropy in bits of the distribution p."""
    return -sum(q * math.log2(q) for q in p if q > 0)


def test_routing_mutual_information_by_hand() -> None:
    # identical choices and labels: MI = H(label) = H(1/2, 1/4, 1/4) = 1.5 bits, and few shuffles reach it
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0] * 4)
    same = routing_mutual_information(labels, labels, k=3)
    assert same["mi"] == pytest.approx(1.5) and same["h_label"] == pytest.approx(1.5)
    assert same["mi_norm"] == pytest.approx(1.5 / math.log2(3))
    assert same["mi_shuffled_mean"] < 0.2 and same["p_value"] == pytest.approx(1 / 201)
    assert (same["writes"], same["label_values"], same["shuffles"]) == (32, 3, 200)
    # labels are names, not indices: any integers, in any order, give the same
    assert routing_mutual_information(labels, 66 - 70 * labels, k=3)["mi"] == pytest.approx(1.5)

    # a 2 x 2 table with counts [[3, 1], [1, 3]]: p(c, y) = 3/8 on the diagonal, marginals 1/2 each
    choices = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    table = routing_mutual_information(choices, torch.tensor([0, 0, 0, 1, 0, 1, 1, 1]), k=2)
    by_hand = 2 * 3 / 8 * math.log2((3 / 8) / (1 / 4)) + 2 * 1 / 8 * math.log2((1 / 8) / (1 / 4))
    assert table["mi"] == pytest.approx(by_hand) and by_hand == pytest.approx(1 - bits(1 / 4, 3 / 4))
    assert table["h_choice"] == pytest.approx(1.0) and table["h_label"] == pytest.approx(1.0)
    # of the 70 ways to place the four label-0 writes, 34 give at least this MI (0, 1, 3 or 4 of them with choice 0)
    assert 0.35 < table["p_value"] < 0.65

    # exactly independent: every (choice, label) pair equally often, MI 0, every shuffle reaches it
    n = torch.arange(24)
    flat = routing_mutual_information(n % 2, n // 2 % 3, k=2)
    assert flat["mi"] == 0.0 and flat["p_value"] == 1.0 and flat["mi_shuffled_mean"] > 0
    # independent draws: the estimate is its bias, as large as the shuffled ones, and not significant
    g = torch.Generator().manual_seed(0)
    free = routing_mutual_information(torch.randint(4, (2000,), generator=g), torch.randint(5, (2000,), generator=g), 4)
    assert abs(free["mi"] - free["mi_shuffled_mean"]) < 3 * free["mi_shuffled_std"] and free["p_value"] > 0.05
    assert free["mi_shuffled_mean"] == pytest.approx(3 * 4 / (2 * 2000 * math.log(2)), rel=0.3)  # (k-1)(L-1)/2N ln 2

    # the same seed, the same shuffles
    assert routing_mutual_information(choices, torch.tensor([0, 0, 0, 1, 0, 1, 1, 1]), k=2) == table
    for args, message in [((choices, choices[:3], 2), "same number"), ((choices + 1, choices, 2), "0..k-1")]:
        with pytest.raises(ValueError, match=message):
            routing_mutual_information(*args)


def test_smallest_keys_of_synthetic_tokens() -> None:
    f, v = FILLER0, VALUE0
    last_filler, first_value = KEY0 - 1, KEY0 + N_KEYS  # right beside the key range, and not keys
    tokens = torch.tensor(
        [
            [f, KEY0 + 5, f, KEY0 + 2, last_filler, f, QUERY, v, f, v],
            [KEY0, v, KEY0 + 15, f, COPY, KEY0 + 15, first_value, f, f, KEY0 + 9],
        ]
    )  # (N=2, L=10): segments of 4, 4 and 2 tokens
    expected = torch.tensor([[KEY0 + 2, KEY0], [NO_KEY, KEY0 + 15], [NO_KEY, KEY0 + 9]])  # (S=3, N=2)
    torch.testing.assert_close(smallest_keys(tokens, 4), expected)
    properties = analyze.write_properties(tokens, 4, synthetic=True)
    torch.testing.assert_close(properties["smallest_key"], expected)
    torch.testing.assert_close(properties["segment_index"], torch.tensor([[1, 1], [2, 2], [3, 3]]))
    assert list(analyze.write_properties(tokens, 4, synthetic=False)) == ["segment_index"]  # text: no key labels


def tiny_model(k: int, **kw: Any) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=4, vocab_size=20, n_layer=1, n_head=2, n_embd=16, gmm_experts=k, gmm_slots=2, **kw))


@pytest.mark.parametrize("mixture", [{}, dict(gmm_read="concat", gmm_top_k=1, gmm_shared_expert=True)])
def test_collect_equals_forward_segments(mixture: dict[str, Any]) -> None:
    """...for a dense mixture, and for a sparse concat one with a shared bank (whose diversity is the routed
    banks')."""
    model = tiny_model(3, **mixture).eval()
    T, S = 4, 3
    batches = [(torch.randint(20, (2, T * S)), torch.randint(20, (2, T * S))) for _ in range(2)]
    batches[1][1][0, :5] = -1  # ignored targets count in neither the loss nor its denominator
    trace = collect(model, batches)
    with torch.no_grad():
        outs = [model.forward_segments(X, Y) for X, Y in batches]
        probs = torch.cat([torch.stack([r.probs for r in out.routing]) for out in outs], dim=1)  # (S, 4, k)
        gates = torch.cat([torch.stack([r.gates for r in out.routing]) for out in outs], dim=1)
        torch.testing.assert_close(trace.probs, probs)
        torch.testing.assert_close(trace.gates, gates)
        torch.testing.assert_close(trace.tokens, torch.cat([X for X, _ in batches]))  # the tokens each write saw
        for s in range(S):
            logits = torch.cat([out.logits[:, s * T : (s + 1) * T] for out in outs if out.logits is not None])
            targets = torch.cat([Y[:, s * T : (s + 1) * T] for _, Y in batches])
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1)
            assert trace.seg_loss[s] == pytest.approx(ce.item(), rel=1e-5)
        # the experts after each segment's write: those the first s + 1 segments leave behind
        div = torch.stack(
            [
                analyze.expert_diversity(model.forward_segments(X[:, : T * (s + 1)]).memory.experts[:, :3])  # type: ignore[union-attr]
                for X, _ in batches
                for s in range(S)
            ]
        ).mean(dim=0)
    torch.testing.assert_close(trace.diversity, div)


@pytest.mark.parametrize("k", [0, 1])
def test_collect_without_routing(k: int) -> None:
    trace = collect(tiny_model(k), [(torch.randint(20, (2, 8)), torch.randint(20, (2, 8)))])
    assert trace.probs.shape == (2, 2, k) and len(trace.seg_loss) == 2


# --- plots -----------------------------------------------------------------------------------------------------------


def is_png(path: str | None) -> bool:
    return path is not None and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(path).stat().st_size > 5000


def test_each_plot_is_written(tmp_path: Path) -> None:
    stats = routing_stats(PROBS, GATES)
    assert is_png(analyze.plot_routing(stats["segment_util"], PROBS.argmax(-1), str(tmp_path / "routing.png")))
    assert is_png(analyze.plot_utilisation(stats, str(tmp_path / "utilisation.png")))
    assert is_png(analyze.plot_diversity(torch.tensor([[1.0, 0.3], [0.3, 1.0]]), str(tmp_path / "diversity.png")))
    routing = {"val_entropy_norm": 0.87, "val_consistency": 0.5, "val_util": [0.4, 0.6], "val_hard_share": [0.3, 0.7],
               "val_seg_loss": [2.9, 2.7]}  # fmt: skip
    records = [
        {"event": "eval", "iter": 0, "train_loss": 3.0, "val_loss": 3.1, "val_entropy": 0.69, "val_seg_loss": [3, 3]},
        {"event": "train", "iter": 1, "loss": 2.9},
        {"event": "train", "iter": 2, "loss": 2.7},
        {"event": "eval", "iter": 2, "train_loss": 2.6, "val_loss": 2.8, "val_entropy": 0.6, **routing},
        {"event": "eval", "iter": 4, "train_loss": 2.5, "val_loss": 2.7, "val_entropy": 0.5, **routing},
    ]
    # the first evaluation is a run from before routing statistics were logged: entropy / log k stands in
    assert is_png(analyze.plot_routing_history(records, 2, str(tmp_path / "routing_history.png")))
    assert is_png(analyze.plot_losses(records, str(tmp_path / "losses.png")))
    assert analyze.plot_routing_history(records[1:3], 2, str(tmp_path / "none.png")) is None
    assert analyze.plot_losses([], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


# --- end to end ------------------------------------------------------------------------------------------------------


class FakeImage:
    """wandb.Image: reads its file when made, as wandb does."""

    def __init__(self, path: str) -> None:
        self.data = Path(path).read_bytes()


class FakeWandb:
    """Stands in for the wandb module: keeps what a run logs."""

    logged: list[dict[str, Any]] = []
    Image = FakeImage

    @classmethod
    def init(cls, **kwargs: Any) -> type[FakeWandb]:
        return cls

    @classmethod
    def log(cls, data: dict[str, Any]) -> None:
        cls.logged.append(data)

    @classmethod
    def finish(cls) -> None:
        pass


@pytest.fixture(scope="module")
def gmm_run(shakespeare_char_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out_dir of a 4-step run of a tiny model with 3 experts on 3 segments of 8 characters, logged to FakeWandb."""
    out = tmp_path_factory.mktemp("out-gmm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "wandb", FakeWandb)
        args = [*TINY, f"--data_dir={shakespeare_char_data}", f"--out_dir={out}", "--gmm_experts=3"]
        train.main([*args, "--wandb_log=True"])
    return out


def test_training_logs_routing_statistics(gmm_run: Path) -> None:
    evals = [r for r in read_metrics(str(gmm_run)) if r["event"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert len(r["val_util"]) == 3 and sum(r["val_util"]) == pytest.approx(1.0, abs=1e-5)
        assert len(r["val_hard_share"]) == 3 and sum(r["val_hard_share"]) == pytest.approx(1.0)
        assert 0.0 <= r["val_entropy_norm"] <= 1.0 and 0.0 <= r["val_consistency"] <= 1.0
        assert r["val_entropy_norm"] == pytest.approx(r["val_entropy"] / math.log(3), rel=1e-4)
        assert "train_util" in r
    # wandb gets scalars: one per expert, the entropy and consistency; and the routing heatmap as an image
    logged = [d for d in FakeWandb.logged if "val/loss" in d]
    assert len(logged) == 3
    for d, r in zip(logged, evals, strict=True):
        assert [d[f"val/util_{j}"] for j in range(3)] == r["val_util"]
        assert [d[f"val/hard_share_{j}"] for j in range(3)] == r["val_hard_share"]
        assert d["val/entropy_norm"] == r["val_entropy_norm"] and d["val/consistency"] == r["val_consistency"]
        rows = r["val_segment_util"]  # segments x experts: the heatmap's numbers
        assert len(rows) == 3 and all(sum(row) == pytest.approx(1, abs=1e-3) for row in rows)
        assert d["val/routing"].data[:8] == b"\x89PNG\r\n\x1a\n" and len(d["val/routing"].data) > 5000


def test_cli_end_to_end(gmm_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the batches evaluation drew (eval_iters=2 of batch_size=4), so the analyzer must equal the last evaluation
    analyze.main([f"--out_dir={gmm_run}", "--device=cpu", "--batches=2"])
    report = capsys.readouterr().out
    for line in ("expert   utilisation  hard share  write gate", "routing entropy", "load balance", "consistency",
                 "expert diversity", "loss per segment", "routing vs segment index: MI "):  # fmt: skip
        assert line in report
    assert "routing vs smallest key" not in report  # text: no keys to label segments with
    result = json.loads((gmm_run / "analysis.json").read_text())
    last = [r for r in read_metrics(str(gmm_run)) if r["event"] == "eval"][-1]
    assert result["util"] == pytest.approx(last["val_util"], rel=1e-5)
    assert result["hard_share"] == pytest.approx(last["val_hard_share"])
    assert result["entropy_norm"] == pytest.approx(last["val_entropy_norm"], rel=1e-5)
    assert result["consistency"] == pytest.approx(last["val_consistency"])
    assert result["seg_loss"] == pytest.approx(last["val_seg_loss"], rel=1e-4)
    assert (result["sequences"], result["segments"], len(result["diversity"])) == (8, 3, 3)
    assert len(result["spread"]) == 3 and all(0 <= v <= 1 for v in result["spread"])  # after each segment's write
    assert "expert spread     after each segment's write" in report
    (name, mi), *rest = result["routing_mi"].items()
    assert name == "segment_index" and rest == []
    assert (mi["writes"], mi["label_values"], mi["shuffles"]) == (24, 3, 200)
    assert 0 <= mi["mi"] <= min(mi["h_choice"], math.log2(3)) + 1e-9 and 1 / 201 <= mi["p_value"] <= 1
    assert mi["mi_norm"] == pytest.approx(mi["mi"] / math.log2(3))
    # content-independent routing is a note beside the warnings, not one of them
    assert len(result["notes"]) == (mi["p_value"] >= 0.05)
    assert all(n.startswith("note: routing is content-independent") and n in report for n in result["notes"])
    names = sorted(Path(p).name for p in result["plots"])
    assert names == ["diversity.png", "losses.png", "routing.png", "routing_history.png", "utilisation.png"]
    assert all(is_png(p) for p in result["plots"])
    # longer sequences than trained on, from the train split
    analyze.main([f"--out_dir={gmm_run}", "--device=cpu", "--batches=1", "--n_segments=5", "--split=train",
                  "--plots=False"])  # fmt: skip
    assert json.loads((gmm_run / "analysis.json").read_text())["segments"] == 5


@pytest.mark.parametrize("k", [0, 1])
def test_cli_without_routing(k: int, shakespeare_char_data: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """No memory, or one bank: no routing to analyse, but the loss per segment (and the bank's gates) still are."""
    args = [a for a in TINY if not a.startswith(("--max_iters", "--eval_interval"))]
    train.main([*args, f"--data_dir={shakespeare_char_data}", f"--out_dir={tmp_path}", f"--gmm_experts={k}",
                "--max_iters=1", "--eval_interval=1"])  # fmt: skip
    capsys.readouterr()
    analyze.main([f"--out_dir={tmp_path}", "--device=cpu", "--batches=1"])
    report = capsys.readouterr().out
    assert "there is no routing to analyse" in report and "loss per segment" in report
    result = json.loads((tmp_path / "analysis.json").read_text())
    assert len(result["seg_loss"]) == 3 and ("gate" in result) == (k == 1)
    assert [Path(p).name for p in result["plots"]] == ["losses.png"]


def test_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    argv = [sys.executable, "analyze.py", f"--out_dir={tmp_path}", "--device=cpu"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == f"error: checkpoint '{tmp_path / 'ckpt.pt'}' not found\n"
    assert not (tmp_path / "analysis.json").exists()


def test_bad_flags_exit_2(gmm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--batchs=3"], "unknown config key 'batchs'"),
        (["--split=test"], "split = 'test' must be one of train, val"),
        (["--batches=0"], "batches = 0 must be a positive integer"),
        ([f"--out_dir={gmm_run}", "--device=cpu", f"--data_dir={tmp_path}"], f"no val.bin in {tmp_path}"),
    ]:
        with pytest.raises(SystemExit) as e:
            analyze.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1
