"""The gated memory mixture, proved on tiny CPU models.

- Causality: no logit at position t depends on a token after t, across segment boundaries, for every memory mode.
- Memory carries information: segment 1 changes segment 3's logits with memory on, and not with memory off.
- The language-model loss alone trains every memory parameter (router, gates, candidates, initial states, writes).
- The auxiliary losses and the expert update match hand-computed values.
- The incremental decoder (generation) equals the full forward across segment boundaries, with rope too.
- The gated read starts as memory off, exactly, and opens by gradient. Transformer-XL attention over two segments
  is causal attention over both; registers (gmm_carry = False) carry
  nothing; weight decay spares the memory's states, embeddings and biases.
- Truncated BPTT stops gradients where it should; gradient checkpointing changes nothing.
- Sparse routing (top-k) leaves the experts it did not choose bit for bit unchanged, and still trains the router;
  the shared expert takes every write; the concat read exposes every bank's slots.
- Every bad memory setting is one line naming the field and what is allowed.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gmm
import model as model_module
from configurator import ConfigError, configure
from decode import SegmentDecoder
from gmm import ExpertUpdater, Memory, expert_scale, load_balance_loss, routing_entropy, top_k_mask
from model import GPT, GPTConfig
from train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
T, V = 8, 50  # block_size (tokens per segment) and vocabulary of the tiny models


def tiny(**kw: object) -> GPT:
    torch.manual_seed(0)
    args: dict[str, Any] = dict(block_size=T, vocab_size=V, n_layer=2, n_head=2, n_embd=32, gmm_slots=3)
    args.update(kw)
    model = GPT(GPTConfig(**args)).eval()
    if model.transformer.shift is not None:  # token_shift starts at zero: drawn here so that it matters
        with torch.no_grad():
            model.transformer.shift.weight.normal_(0.0, 0.1)
    return model


MODES: list[dict[str, Any]] = [
    dict(gmm_experts=k, gmm_routing=r, gmm_pooling=p)
    for k in (0, 1, 4)
    for r in ("write", "read")
    for p in ("mean", "max", "attention")
    if k > 1 or (r == "write" and p == "mean")  # routing and pooling only exist with k > 1
]
# the mixture's structural settings: sparse routing, the shared expert, the concat read, the normalised read
MIXTURES: list[dict[str, Any]] = [
    dict(gmm_experts=4, gmm_top_k=1),
    dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True),
    dict(gmm_experts=4, gmm_read="concat"),
    dict(gmm_experts=4, gmm_read="concat", gmm_top_k=1),
    dict(gmm_experts=4, gmm_read="concat", gmm_top_k=2, gmm_shared_expert=True, gmm_pooling="max"),
    dict(gmm_experts=2, gmm_read="concat", gmm_shared_expert=True),
    dict(gmm_experts=4, gmm_top_k=1, gmm_write_scale="prob", gmm_read_scale=0.02),
    dict(gmm_experts=1, gmm_read_scale=0.02, gmm_init_scale=0.02, gmm_gate_bias=1.0),
]
MODES += MIXTURES


def mode_id(mode: dict[str, Any]) -> str:
    return "-".join(f"{k.removeprefix('gmm_')}={v}" for k, v in mode.items())


@pytest.mark.parametrize("mode", MODES, ids=mode_id)
def test_causal_across_segments(mode: dict[str, Any]) -> None:
    model = tiny(**mode)
    idx = torch.randint(V, (2, 3 * T + 3))  # three full segments and a short one
    logits, _ = model(idx, idx)
    for t in (2, T - 1, T, 2 * T + 1):  # inside a segment, at the end of one, at the start of the next
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % V
        logits2, _ = model(changed, changed)
        assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1]), f"position <= {t} saw the future"
        assert not torch.allclose(logits[:, t + 1 :], logits2[:, t + 1 :])  # the change itself is visible


@pytest.mark.parametrize(
    "mode",
    [dict(gmm_experts=k, gmm_write_input=w) for k in (0, 1, 4) for w in ("read", "learned")] + MIXTURES,
    ids=mode_id,
)
def test_memory_carries_segment_1_to_segment_3(mode: dict[str, Any]) -> None:
    # with write_input='read' the write tokens start as the read; learned initial states (RMS 1) then dominate the
    # first write at init and segment 1's imprint is ~1e-4, so that mode starts from zero states: segment 1's text
    # makes the first write, and what it wrote must reach segment 3
    experts = mode["gmm_experts"]
    init = "zeros" if mode.get("gmm_write_input", "read") == "read" else "learned"
    model = tiny(**{"gmm_init": init, **mode})
    idx = torch.randint(V, (2, 3 * T))
    changed = idx.clone()
    changed[:, :T] = (changed[:, :T] + 7) % V  # segment 1 only
    seg3 = slice(2 * T, 3 * T)
    diff = (model(idx, idx)[0][:, seg3] - model(changed, changed)[0][:, seg3]).abs().max().item()
    if experts == 0:
        assert diff == 0.0  # without memory the segments are independent
    else:
        assert diff > 1e-4


def test_write_tokens_enter_as_the_read_memory() -> None:
    """write_input='read': the write tokens' inputs are the segment's read slots plus the learned embeddings,
    so a segment whose blocks add nothing writes back (after ln_f) the memory it read; 'learned': the embeddings."""
    for write_input in ("read", "learned"):
        model = tiny(gmm_experts=4, gmm_write_input=write_input)
        assert model.memory is not None
        memory = model.memory.initial(2)
        read = model.memory.read(memory)
        tokens = model.memory.write_tokens(read)
        expected = model.memory.write_emb + (read if write_input == "read" else 0)
        assert torch.equal(tokens, expected.expand(2, -1, -1))


def test_checkpoints_from_before_write_input_keep_learned_write_tokens() -> None:
    """A checkpoint saved before gmm_write_input existed had learned write tokens, and loads so; any other dict
    (a from_pretrained override, a config) gets the documented default."""
    old: dict[str, Any] = dict(block_size=T, vocab_size=V, n_layer=2, n_head=2, n_embd=32, gmm_experts=1, gmm_slots=3)
    assert GPTConfig.from_dict(old, checkpoint=True).gmm_write_input == "learned"
    assert GPTConfig.from_dict({**old, "gmm_write_input": "read"}, checkpoint=True).gmm_write_input == "read"
    weights = GPT(GPTConfig(**old, gmm_write_input="learned")).state_dict()
    assert GPT.from_checkpoint({"model_args": old, "model": weights}).config.gmm_write_input == "learned"
    assert GPTConfig.from_dict(old).gmm_write_input == "read"  # e.g. from_pretrained("gpt2", {"gmm_experts": 1})
    assert GPTConfig().gmm_write_input == "read"  # new models default to RMT's layout


GRADIENT_CASES = [
    dict(gmm_experts=k, gmm_candidate=c, gmm_routing=r) for k in (1, 4) for c in ("write", "projected")
    for r in ("write", "read")
] + [
    dict(gmm_experts=4, gmm_read=read, gmm_write_scale=scale, gmm_routing=r, **sparse)
    for read in ("mixture", "concat") for scale in ("normalized", "prob") for r in ("write", "read")
    for sparse in ({"gmm_top_k": 1}, {"gmm_top_k": 2, "gmm_shared_expert": True}, {})
    if (sparse or read == "concat") and not (read == "concat" and r == "read")
] + [dict(gmm_experts=2, gmm_read="concat", gmm_shared_expert=True)]  # fmt: skip


@pytest.mark.parametrize("mode", GRADIENT_CASES, ids=mode_id)
def test_lm_loss_alone_trains_every_memory_parameter(mode: dict[str, Any]) -> None:
    """Every memory parameter, the router's included, gets a gradient from the language-model loss alone over a
    batch, whatever the routing: with top-1 a renormalised weight would be exactly 1 and leave the router none."""
    experts, candidate, routing = mode["gmm_experts"], mode.get("gmm_candidate"), mode.get("gmm_routing")
    read = mode.get("gmm_read", "mixture")
    model = tiny(gmm_pooling="attention", **mode)
    model.train()
    idx = torch.randint(V, (2, 3 * T))
    out = model.forward_segments(idx, idx)
    assert out.lm_loss is not None
    out.lm_loss.backward()
    assert model.memory is not None
    names = [n for n, _ in model.memory.named_parameters()]
    for expected in ("init_states", "write_emb", "updater.gate_weight"):
        assert expected in names
    if experts > 1:
        assert "gate.router.weight" in names and "gate.query" in names
    if candidate == "projected":
        assert "updater.cand_weight" in names
    if routing == "read" and experts > 1:
        assert "reader.scorer.weight" in names
    if read == "concat":
        assert "read_emb" in names
    for name, p in model.memory.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient from the LM loss"


def test_load_balance_hand_computed() -> None:
    # two decisions, k = 2: tops are expert 0 and expert 0 -> f = (1, 0); P = mean probs = (0.75, 0.25)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    assert load_balance_loss(probs).item() == pytest.approx(2 * (1.0 * 0.75 + 0.0 * 0.25))
    # uniform routing -> 1; everything on one expert -> k
    assert load_balance_loss(torch.full((5, 4), 0.25)).item() == pytest.approx(1.0)
    assert load_balance_loss(torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)).item() == pytest.approx(4.0)


def test_routing_entropy_hand_computed() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert routing_entropy(probs).item() == pytest.approx((math.log(2) + 0.0) / 2)
    assert routing_entropy(torch.full((3, 8), 1 / 8)).item() == pytest.approx(math.log(8))


def test_aux_losses_are_added_with_their_weights() -> None:
    model = tiny(gmm_experts=4, gmm_load_balance=0.5, gmm_entropy=-0.25)
    idx = torch.randint(V, (2, 2 * T))
    out = model.forward_segments(idx, idx)
    assert out.loss is not None and out.lm_loss is not None
    expected = out.lm_loss + 0.5 * out.aux["load_balance"] - 0.25 * out.aux["entropy"]
    assert torch.allclose(out.loss, expected)
    probs = torch.cat([r.probs for r in out.routing])
    assert torch.allclose(out.aux["load_balance"], load_balance_loss(probs))
    # evaluation reports the LM loss alone: it is the cross-entropy of the logits
    assert out.logits is not None
    ce = torch.nn.functional.cross_entropy(out.logits.view(-1, V), idx.view(-1))
    assert torch.allclose(out.lm_loss, ce)


@pytest.mark.parametrize("write_scale", ["prob", "normalized"])
def test_expert_update_formula(write_scale: str) -> None:
    torch.manual_seed(1)
    B, k, M, D = 2, 3, 4, 5
    up = ExpertUpdater(D, k, "write")
    experts, W = torch.randn(B, k, M, D), torch.randn(B, M, D)
    p = torch.softmax(torch.randn(B, k), dim=-1)
    new, a = up(experts, W.unsqueeze(1), write_scale_of(p, write_scale))
    for b in range(B):
        for j in range(k):
            g = torch.sigmoid(torch.cat([experts[b, j], W[b]], dim=-1) @ up.gate_weight[j] + up.gate_bias[j])
            s = p[b, j] if write_scale == "prob" else p[b, j] / p[b].max()
            assert torch.allclose(a[b, j], s * g, atol=1e-6)
            assert torch.allclose(new[b, j], (1 - s * g) * experts[b, j] + s * g * W[b], atol=1e-6)


def write_scale_of(p: torch.Tensor, mode: str) -> torch.Tensor:
    return expert_scale(p, torch.ones_like(p), mode, sparse=False)


def test_sparse_write_scale_keeps_full_strength_and_a_router_gradient() -> None:
    """Top-1, normalized: the chosen expert writes at scale exactly 1 and the others at 0, yet the scale still
    depends on p (Switch's raw-probability scaling), where a renormalised top-1 weight would be the constant 1."""
    logits = torch.tensor([[0.3, 1.2, -0.5, 0.1], [2.0, 0.0, 0.0, 0.1]], requires_grad=True)
    p = torch.softmax(logits, dim=-1)
    chosen = top_k_mask(p, 1)
    assert torch.equal(chosen, torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]))
    s = expert_scale(p, chosen, "normalized", sparse=True)
    assert torch.equal(s.detach(), chosen)
    (g,) = torch.autograd.grad(s.sum(), logits, retain_graph=True)
    assert g.abs().sum() > 0
    renormalised = p * chosen / (p * chosen).sum(dim=-1, keepdim=True)  # what would starve the router
    (g0,) = torch.autograd.grad(renormalised.sum(), logits)
    assert g0.abs().max() < 1e-7
    # top-2 keeps two experts; prob scales by p itself
    assert top_k_mask(p, 2).sum(dim=-1).tolist() == [2.0, 2.0]
    assert torch.allclose(expert_scale(p, chosen, "prob", sparse=True), p * chosen)


@pytest.mark.parametrize("mode", [dict(gmm_top_k=1), dict(gmm_top_k=2, gmm_shared_expert=True),
                                  dict(gmm_top_k=1, gmm_read="concat")], ids=mode_id)  # fmt: skip
def test_top_k_leaves_unchosen_experts_bit_for_bit(mode: dict[str, Any]) -> None:
    model = tiny(gmm_experts=4, **mode)
    assert model.memory is not None
    idx = torch.randint(V, (3, 4 * T))
    out = model.forward_segments(idx, idx)
    memory = model.memory.initial(3)
    for s, routing in enumerate(out.routing):
        chosen = routing.chosen.bool()  # (B, k)
        assert chosen.sum(dim=-1).tolist() == [mode["gmm_top_k"]] * 3
        assert torch.equal(chosen, top_k_mask(routing.probs, mode["gmm_top_k"]).bool())
        _, memory_next, _ = model.segment(idx[:, s * T : (s + 1) * T], memory)
        assert memory_next is not None
        before, after = memory.experts[:, :4], memory_next.experts[:, :4]
        assert torch.equal(after[~chosen], before[~chosen]), f"segment {s + 1}: an unchosen expert changed"
        assert not torch.equal(after[chosen], before[chosen])  # the chosen ones did take the write
        if mode.get("gmm_shared_expert"):
            assert not torch.equal(memory_next.experts[:, 4], memory.experts[:, 4])  # the shared bank always writes
        # the next segment reads the chosen experts only, their weights renormalised
        assert torch.allclose(memory_next.route.sum(dim=-1), torch.ones(3))
        assert torch.all(memory_next.route[~chosen] == 0)
        memory = memory_next


def test_load_balance_counts_the_hard_choices() -> None:
    """Sparse routing: f_i is the share of the chosen slots that went to i, each decision counting once."""
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    chosen = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # top-2 of each row
    f = torch.tensor([0.25, 0.5, 0.25])
    P = probs.mean(dim=0)
    assert load_balance_loss(probs, chosen).item() == pytest.approx(3 * (f * P).sum().item())
    # top-1 choices give back the dense (argmax) definition
    top1 = top_k_mask(probs, 1)
    assert load_balance_loss(probs, top1).item() == pytest.approx(load_balance_loss(probs).item())
    model = tiny(gmm_experts=4, gmm_top_k=2)
    idx = torch.randint(V, (2, 2 * T))
    out = model.forward_segments(idx, idx)
    probs_all = torch.cat([r.probs for r in out.routing])
    chosen_all = torch.cat([r.chosen for r in out.routing])
    assert torch.allclose(out.aux["load_balance"], load_balance_loss(probs_all, chosen_all))


def test_concat_read_exposes_every_bank() -> None:
    """concat: R = banks * M read slots, bank by bank, each slot plus its own learned embedding; the write tokens
    are as many, and bank j's candidate is its own M write states."""
    model = tiny(gmm_experts=3, gmm_slots=2, gmm_read="concat", gmm_shared_expert=True)
    assert model.memory is not None and model.memory.read_emb is not None
    assert model.memory.n_read == 4 * 2
    memory = model.memory.initial(2)
    read = model.memory.read(memory)
    expected = memory.experts.reshape(2, 8, 32) + model.memory.read_emb
    assert torch.equal(read, expected)
    W = torch.randn(2, 8, 32)
    new, routing = model.memory.write(memory, W)
    up = model.memory.updater
    for j in range(4):  # bank j moves towards its own write states W[:, 2j:2j+2], at its own scale
        E, Wj = memory.experts[:, j], W[:, 2 * j : 2 * j + 2]  # (B, M, D)
        gate = torch.sigmoid(torch.cat([E, Wj], dim=-1) @ up.gate_weight[j] + up.gate_bias[j])
        p = routing.probs
        scale = p[:, j] / p.max(dim=-1).values if j < 3 else torch.ones(2)  # the shared bank takes every write
        a = scale[:, None, None] * gate
        assert torch.allclose(new.experts[:, j], (1 - a) * E + a * Wj, atol=1e-6), f"bank {j}"


def test_raw_write_input_keeps_the_carry_at_its_scale() -> None:
    """write_input='raw': the read slots are normalised by read_scale, the write tokens start from the read before
    it; without a read scale 'raw' is 'read', exactly."""
    model = tiny(gmm_experts=2, gmm_read_scale=0.05, gmm_write_input="raw")
    assert model.memory is not None
    memory = model.memory.initial(2)
    read, write = model.memory.inputs(memory)
    raw = torch.einsum("bk,bkmd->bmd", model.memory.read_weights(memory), memory.experts)
    assert torch.equal(read, model.memory.read(memory))
    assert torch.allclose(read.pow(2).mean(dim=-1).sqrt(), torch.full((2, read.size(1)), 0.05), atol=1e-4)
    assert torch.allclose(write, raw + model.memory.write_emb, atol=1e-6)
    a = tiny(gmm_experts=2, gmm_write_input="raw")
    b = tiny(gmm_experts=2, gmm_write_input="read")
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, V, (2, 3 * T))
    assert torch.equal(a(idx, idx)[0], b(idx, idx)[0])


def test_read_scale_normalises_the_read() -> None:
    model = tiny(gmm_experts=2, gmm_read_scale=0.05)
    assert model.memory is not None
    read = model.memory.read(model.memory.initial(2))
    rms = read.pow(2).mean(dim=-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.05), atol=1e-4)  # the gain starts at read_scale


def test_initial_states() -> None:
    model = tiny(gmm_experts=3, gmm_slots=4, gmm_init="learned,orthogonal,zeros")
    assert model.memory is not None
    states = model.memory.init_states.detach()
    ortho = states[1].view(4, -1)  # 4 slots x 32 dims: orthogonal rows of norm sqrt(32)
    assert torch.allclose(ortho @ ortho.T, 32 * torch.eye(4), atol=1e-4)
    assert torch.equal(states[2], torch.zeros_like(states[2]))
    model.train()
    idx = torch.randint(V, (2, 2 * T))
    out = model.forward_segments(idx, idx)
    assert out.lm_loss is not None
    out.lm_loss.backward()
    grad = model.memory.init_states.grad
    assert grad is not None
    assert grad[0].abs().sum() > 0  # learned
    assert grad[1].abs().sum() == 0 and grad[2].abs().sum() == 0  # fixed starting points


@pytest.mark.parametrize(
    "mode",
    [
        dict(gmm_experts=0),
        dict(gmm_experts=1),
        dict(gmm_experts=4, gmm_routing="read"),
        dict(gmm_experts=4, gmm_write_input="learned"),
        *MIXTURES,
        dict(gmm_experts=0, pos_emb="rope"),
        dict(gmm_experts=1, pos_emb="rope"),
        dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, pos_emb="rope"),
        dict(gmm_experts=1, gmm_carry=False),
        dict(gmm_experts=0, pos_emb="rope", xl_attention=True),
        dict(gmm_experts=1, gmm_read_gate=True),
        dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, gmm_read_gate=True, pos_emb="rope"),
        dict(gmm_experts=4, gmm_read="concat", gmm_read_gate=True),
        dict(gmm_experts=1, gmm_read_initial=False, pos_emb="rope"),
        dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, gmm_read_initial=False),
        dict(gmm_experts=0, token_shift=True),
        dict(gmm_experts=1, token_shift=True, pos_emb="rope"),
        dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, token_shift=True),
        dict(gmm_experts=0, pos_emb="rope", xl_attention=True, token_shift=True),
    ],
    ids=mode_id,
)
def test_incremental_decoding_equals_full_forward(mode: dict[str, Any]) -> None:
    model = tiny(**mode)
    idx = torch.randint(V, (2, 3 * T + 5))
    full, _ = model(idx, idx)
    with torch.no_grad():
        decoder = SegmentDecoder(model, 2)
        chunks = [idx[:, :5], idx[:, 5:6], idx[:, 6 : 2 * T + 1], *idx[:, 2 * T + 1 :].split(1, dim=1)]
        incremental = torch.cat([decoder.feed(c) for c in chunks], dim=1)
    assert torch.allclose(full, incremental, atol=1e-5)


@pytest.mark.parametrize(
    "mode",
    [
        dict(gmm_experts=4),
        dict(gmm_experts=4, pos_emb="rope"),
        dict(pos_emb="rope", xl_attention=True),
        dict(gmm_experts=1, token_shift=True),
    ],
    ids=mode_id,
)
def test_generation_streams_past_block_size_with_and_without_cache(mode: dict[str, Any]) -> None:
    model = tiny(**mode)
    prompt = torch.randint(V, (2, 3))
    cached = model.generate(prompt, 4 * T, temperature=0)
    recomputed = model.generate(prompt, 4 * T, temperature=0, use_cache=False)
    assert cached.shape == (2, 3 + 4 * T)
    assert torch.equal(cached, recomputed)


def test_xl_attention_is_causal_attention_over_two_segments() -> None:
    """xl_attention: over two segments, the second attends to the first's cached keys and values and to itself, which
    is plain causal attention over 2T tokens (the same weights, one segment of 2T, rope); no gradient reaches the
    first segment through the cache; and segment 3 sees segment 2 but not segment 1's tokens directly (only what
    segment 2's states took from them)."""
    xl = tiny(pos_emb="rope", xl_attention=True)
    whole = tiny(pos_emb="rope", block_size=2 * T)
    whole.load_state_dict(xl.state_dict())
    idx = torch.randint(V, (2, 2 * T))
    with torch.no_grad():
        torch.testing.assert_close(xl(idx, idx)[0], whole(idx, idx)[0], atol=1e-5, rtol=0)
    xl.train()
    embeddings: list[torch.Tensor] = []
    hook = xl.transformer.drop.register_forward_hook(lambda m, i, o, seen=embeddings: seen.append(o))
    out = xl.forward_segments(idx, idx)
    hook.remove()
    assert out.logits is not None
    seg2 = torch.nn.functional.cross_entropy(out.logits[0, T:], idx[0, T:])
    first, second = torch.autograd.grad(seg2, embeddings, allow_unused=True)
    assert first is None or first.abs().sum() == 0  # the cache is detached
    assert second is not None and second.abs().sum() > 0
    with pytest.raises(ValueError, match="xl_attention = True needs pos_emb = 'rope'"):
        GPTConfig(xl_attention=True)
    with pytest.raises(ValueError, match="gmm_experts = 0"):
        GPTConfig(xl_attention=True, pos_emb="rope", gmm_experts=1)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_an_empty_memory_is_not_read(pos_emb: str) -> None:
    """gmm_read_initial = False: segment 1 (nothing written yet) has no read slots, so its logits are those of memory
    off with the same weights; it still writes, segment 2 reads it (segment 1's tokens reach segment 2), and the
    gradient reaches the initial states through the write tokens. Combinations that need segment 1's read slots
    are refused."""
    mode = dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, pos_emb=pos_emb)
    model, off = tiny(**mode, gmm_read_initial=False), tiny(pos_emb=pos_emb)
    off.load_state_dict({k: v for k, v in model.state_dict().items() if k in off.state_dict()})
    idx = torch.randint(V, (2, 2 * T))
    changed = idx.clone()
    changed[:, :T] = (changed[:, :T] + 7) % V
    with torch.no_grad():
        logits = model(idx, idx)[0]
        torch.testing.assert_close(logits[:, :T], off(idx, idx)[0][:, :T], atol=1e-6, rtol=0)
        assert (logits[:, T:] - model(changed, changed)[0][:, T:]).abs().max() > 1e-4
    model.train()
    loss = model(idx, idx)[1]
    assert loss is not None and model.memory is not None
    (grad,) = torch.autograd.grad(loss, [model.memory.init_states])
    assert grad.abs().sum() > 0
    for bad in (dict(gmm_carry=False), dict(gmm_read_gate=True)):
        with pytest.raises(ValueError, match="gmm_read_initial = False leaves the first segment without read slots"):
            GPTConfig(gmm_experts=1, gmm_read_initial=False, **bad)  # type: ignore[arg-type]
    assert GPTConfig(gmm_experts=0, gmm_read_initial=False).gmm_read_initial  # no memory: nothing to skip


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_read_gate_starts_as_memory_off(pos_emb: str) -> None:
    """gmm_read_gate: at initialisation the text ignores the memory exactly (the logits of memory off with the same
    weights) and the gate still gets the language model's gradient; once it opens, segment 1 reaches segment 3, and
    the explicit softmax path equals SDPA."""
    mode = dict(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, gmm_init="zeros", pos_emb=pos_emb)
    gated, off = tiny(**mode, gmm_read_gate=True), tiny(pos_emb=pos_emb)
    off.load_state_dict({k: v for k, v in gated.state_dict().items() if k in off.state_dict()})
    idx = torch.randint(V, (2, 3 * T))
    with torch.no_grad():
        torch.testing.assert_close(gated(idx, idx)[0], off(idx, idx)[0], atol=1e-6, rtol=0)
    gates = [attn.read_gate for attn in gated.attentions() if attn.read_gate is not None]
    assert len(gates) == 2
    gated.train()
    loss = gated(idx, idx)[1]
    assert loss is not None
    for g in torch.autograd.grad(loss, gates):
        assert g.abs().min() > 0  # every head of every layer is pulled to open (or stay shut)
    gated.eval()
    changed = idx.clone()
    changed[:, :T] = (changed[:, :T] + 7) % V
    seg3 = slice(2 * T, 3 * T)
    with torch.no_grad():
        for g in gates:
            g.fill_(1.0)
        sdpa = gated(idx, idx)[0]
        assert (sdpa[:, seg3] - gated(changed, changed)[0][:, seg3]).abs().max() > 1e-4
        for attn in gated.attentions():
            attn.flash = False
        torch.testing.assert_close(gated(idx, idx)[0], sdpa, atol=1e-5, rtol=0)


def test_a_prompt_needs_the_head_on_its_last_position_only() -> None:
    """SegmentDecoder.feed(last_only=True) gives the last position's logits of feed() over several segments; under
    bfloat16 autocast the KV cache holds bfloat16 (not float32 to be cast at every step) and generation runs."""
    model = tiny(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True)
    idx = torch.randint(V, (2, 2 * T + 3))
    with torch.no_grad():
        every = SegmentDecoder(model, 2).feed(idx)
        last = SegmentDecoder(model, 2).feed(idx, last_only=True)
        assert last.shape == (2, 1, V)
        torch.testing.assert_close(last, every[:, -1:], atol=1e-6, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert SegmentDecoder(model, 2).cache.k[0].dtype == torch.bfloat16
            assert model.generate(idx, 2 * T, temperature=0).shape == (2, 4 * T + 3)


def test_registers_carry_nothing() -> None:
    """gmm_carry = False: every segment reads the initial memory, so a segment's logits are those of the same model
    (same weights) run on that segment alone, whatever came before; with the carry, segment 1 reaches segment 3."""
    registers, carrying = tiny(gmm_experts=1, gmm_carry=False), tiny(gmm_experts=1)
    assert torch.equal(registers.state_dict()["memory.init_states"], carrying.state_dict()["memory.init_states"])
    idx = torch.randint(V, (2, 3 * T))
    with torch.no_grad():
        logits, _ = registers(idx, idx)
        for s in range(3):
            alone, _ = carrying(idx[:, s * T : (s + 1) * T], idx[:, s * T : (s + 1) * T])
            torch.testing.assert_close(logits[:, s * T : (s + 1) * T], alone, atol=1e-6, rtol=0)
        changed = idx.clone()
        changed[:, :T] = (changed[:, :T] + 7) % V
        assert torch.equal(registers(changed, changed)[0][:, T:], logits[:, T:])
        assert not torch.allclose(carrying(changed, changed)[0][:, 2 * T :], carrying(idx, idx)[0][:, 2 * T :])


def test_memory_states_are_not_decayed() -> None:
    """Weight decay on the memory's matmul weights only: its states, embeddings, gains and gate biases are kept
    (decaying them pulls even the fixed experts to zero); decay_memory_states restores the rule of >= 2-D = decay."""
    model = tiny(gmm_experts=4, gmm_read="concat", gmm_candidate="projected", gmm_read_scale=0.02)
    names = {id(p): n for n, p in model.named_parameters()}
    for old_rule in (False, True):
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", decay_memory_states=old_rule)
        decay, no_decay = opt.param_groups
        decayed = {names[id(p)] for p in decay["params"]}
        kept = {names[id(p)] for p in no_decay["params"]}
        states = {"memory.init_states", "memory.write_emb", "memory.read_emb", "memory.updater.gate_bias",
                  "memory.updater.cand_bias"}  # fmt: skip
        weights = {"memory.updater.gate_weight", "memory.updater.cand_weight", "memory.gate.router.weight"}
        assert weights <= decayed and "memory.read_gain" in kept and "transformer.wte.weight" in decayed
        assert states <= (decayed if old_rule else kept)
        assert decayed | kept == set(names.values()) and not decayed & kept


def test_truncated_bptt_stops_gradient() -> None:
    """The loss of segment 3 reaches segment 1's input embeddings through the memory, unless the memory was
    detached in between: bptt_segments = k detaches it before segments k+1, 2k+1, ..."""
    model = tiny(gmm_experts=2)
    model.train()
    idx = torch.randint(V, (1, 3 * T))
    for bptt, reaches in ((0, True), (1, False), (2, False), (3, True)):
        embeddings: list[torch.Tensor] = []  # each segment's input embeddings, in order
        hook = model.transformer.drop.register_forward_hook(lambda m, i, o, seen=embeddings: seen.append(o))
        out = model.forward_segments(idx, idx, bptt_segments=bptt)
        hook.remove()
        assert out.logits is not None
        seg3 = torch.nn.functional.cross_entropy(out.logits[0, 2 * T :], idx[0, 2 * T :])
        (g,) = torch.autograd.grad(seg3, embeddings[0], allow_unused=True)
        assert (g is not None and g.abs().sum().item() > 0) == reaches, f"bptt_segments={bptt}"


@pytest.mark.parametrize("mode", ["block", "segment"])
@pytest.mark.parametrize("loss_chunk", [0, 3 * V])
@pytest.mark.parametrize("read_initial", [True, False])
def test_gradient_checkpointing_with_memory_gives_same_gradients(
    mode: str, loss_chunk: int, read_initial: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recomputing each block, or each whole segment (only the memory between segments kept), in backward gives
    plain backprop's loss and gradients, with dropout on (the recompute replays the same masks), with the logits
    not kept, and with the head's loss in chunks of 3 rows (each chunk recomputed in backward); segment 1 with read
    slots or without (gmm_read_initial)."""
    if loss_chunk:
        monkeypatch.setattr(model_module, "LOSS_CHUNK", loss_chunk)
    results = []
    for ckpt, keep in (("none", True), (mode, False)):
        model = tiny(gmm_experts=4, gmm_top_k=2, gmm_shared_expert=True, dropout=0.1, gmm_read_initial=read_initial)
        model.train()
        model.gradient_checkpointing = ckpt
        idx = torch.randint(V, (2, 3 * T), generator=torch.Generator().manual_seed(3))
        targets = idx.masked_fill(torch.rand(idx.shape, generator=torch.Generator().manual_seed(4)) < 0.3, -1)
        torch.manual_seed(5)
        out = model(idx, targets, keep_logits=keep, details=True)
        assert out.loss is not None and out.token_loss is not None and (out.logits is None) != keep
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.token_loss.detach(), grads))
    (loss0, tokens0, grads0), (loss1, tokens1, grads1) = results
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens1, tokens0, atol=1e-5, rtol=0)
    assert (tokens0[targets == -1] == 0).all()
    assert grads0.keys() == grads1.keys() and "memory.init_states" in grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--gmm_experts=9", "gmm_experts = 9 must be 0 (no memory), 1 (one bank) or 2..8 experts"),
        ("--gmm_experts=-1", "gmm_experts = -1 must be"),
        ("--gmm_slots=0", "gmm_slots = 0 must be a positive integer"),
        ("--gmm_pooling=sum", "gmm_pooling = 'sum' must be one of mean, max, attention"),
        ("--gmm_temperature=0", "gmm_temperature = 0.0 must be > 0"),
        ("--gmm_candidate=delta", "gmm_candidate = 'delta' must be one of write, projected"),
        ("--gmm_write_scale=full", "gmm_write_scale = 'full' must be one of prob, normalized"),
        ("--gmm_routing=both", "gmm_routing = 'both' must be one of write, read"),
        ("--gmm_init=random", "gmm_init = 'random' must be one of learned, orthogonal, zeros"),
        (
            "--gmm_init=learned,zeros",
            "gmm_init = 'learned,zeros' must be one of learned, orthogonal, zeros or a comma-separated list of 4",
        ),
        ("--gmm_load_balance=-1", "gmm_load_balance = -1.0 must be >= 0"),
        ("--gmm_top_k=4", "gmm_top_k = 4 must be 0 (dense) or 1..3 experts per write"),
        ("--gmm_read=sum", "gmm_read = 'sum' must be one of mixture, concat"),
        (
            "--gmm_read=concat",
            "gmm_routing = 'read' weighs a mixture read: with gmm_read = 'concat' every bank is read",
        ),
        ("--gmm_read_scale=-1", "gmm_init_scale = 1.0 and gmm_read_scale = -1.0 must be >= 0"),
        ("--gmm_experts=two", "gmm_experts = 'two' in --gmm_experts=two has the wrong type: expected int"),
        ("--n_segments=0", "n_segments = 0 must be a positive integer"),
        ("--bptt_segments=-2", "bptt_segments = -2 must be >= 0"),
        ("--segment_curriculum=[2,0]", "segment_curriculum = [2, 0] must hold positive segment counts"),
    ],
)
def test_bad_memory_settings_are_one_clear_line(arg: str, message: str) -> None:
    extra = ["--gmm_experts=4"] if "gmm_init=learned,zeros" in arg or "top_k" in arg else []
    extra += ["--gmm_routing=read"] if arg == "--gmm_read=concat" else []
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        configure([*extra, arg], TrainConfig(), GPTConfig())


def test_bad_memory_setting_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "train.py", "config/train_gmm_shakespeare.py", "--gmm_pooling=sum", f"--out_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: gmm_pooling = 'sum' must be one of mean, max, attention"]
    assert not any(tmp_path.iterdir())  # nothing written


def test_memory_state_is_explicit() -> None:
    """A segment's memory goes in as an argument and comes out as a value: feeding segment 2 with the memory
    segment 1 returned reproduces the two-segment forward, and the module keeps no state between calls."""
    model = tiny(gmm_experts=4)
    idx = torch.randint(V, (2, 2 * T))
    full = model.forward_segments(idx, idx)
    assert model.memory is not None
    first = model.forward_segments(idx[:, :T], idx[:, :T])
    second = model.forward_segments(idx[:, T:], idx[:, T:], memory=first.memory)
    assert first.logits is not None and second.logits is not None and full.logits is not None
    assert torch.allclose(torch.cat([first.logits, second.logits], dim=1), full.logits, atol=1e-6)
    assert isinstance(first.memory, Memory) and first.memory.experts.shape == (2, 4, 3, 32)
    assert len(full.routing) == 2 and full.routing[0].probs.shape == (2, 4)
    with pytest.raises(ValueError, match="gmm_init"):
        gmm.parse_init("learned,learned", 3)


@pytest.mark.slow
def test_compiled_memory_model_equals_eager() -> None:
    """torch.compile keeps working with memory on: compiled block by block (GPT.compile_blocks, what train.py's
    compile does), the same loss and gradients as eager mode, and the same state dict keys. The graphs go through
    dynamo and AOT autograd but not inductor's code generation (aot_eager), which tests/test_gpu.py runs on CUDA:
    on a CPU that would cost half a minute of C++ compiling."""
    model = tiny(gmm_experts=4)
    model.train()
    idx = torch.randint(V, (2, 2 * T))
    _, loss = model(idx, idx)
    assert loss is not None
    loss.backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    keys = list(model.state_dict())
    model.compile_blocks(backend="aot_eager")
    _, loss_c = model(idx, idx)
    assert loss_c is not None
    loss_c.backward()
    assert torch.allclose(loss_c, loss, atol=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, eager[name], atol=1e-5), name
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints keep their keys


def test_compiled_blocks_do_not_recompile_for_more_segments() -> None:
    """compile_blocks compiles the unit every segment calls: a sequence of 2 segments and then one of 4 (a
    segment curriculum's next stage), forward and backward, compile nothing new; the whole model compiled does
    (its graph unrolls the segment loop)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    short, long = torch.randint(V, (2, 2 * T)), torch.randint(V, (2, 4 * T))
    counts = {}
    for unit in ("blocks", "model"):
        model, counter = tiny(gmm_experts=2), CompileCounter()
        model.train()
        if unit == "blocks":
            model.compile_blocks(backend=counter)
            step: Any = model
        else:
            step = torch.compile(model, backend=counter)
        for idx in (short, long):
            _, loss = step(idx, idx)
            assert loss is not None
            loss.backward()
            counts[unit, idx.size(1)] = counter.frame_count
        torch._dynamo.reset()
    assert counts["blocks", 4 * T] == counts["blocks", 2 * T] > 0
    assert counts["model", 4 * T] > counts["model", 2 * T]


@pytest.mark.parametrize("k", [0, 1])
def test_mixture_settings_do_not_apply_without_a_mixture(k: int) -> None:
    """With no memory or one bank there is nothing to route: a config's top-k and shared expert (the quick start
    sets both) leave exactly the model of plain k, so its --gmm_experts=0 and 1 baselines stay what they say."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=16, gmm_experts=k, gmm_top_k=2,
                       gmm_shared_expert=True)  # fmt: skip
    assert (config.gmm_top_k, config.gmm_shared_expert) == (0, False)
    plain = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=16, gmm_experts=k))
    shapes = {name: p.shape for name, p in GPT(config).state_dict().items()}
    assert shapes == {name: p.shape for name, p in plain.state_dict().items()}
