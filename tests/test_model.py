"""The GPT in model.py, on tiny CPU configs (memory off).

Proves that GPT.from_pretrained loads a Hugging Face GPT-2 checkpoint (a random tiny one saved with save_pretrained) and
then gives HF's logits and loss within 1e-4, and refuses to override anything but dropout and gmm_* settings; that KV-
cache decoding equals the cache-less path (incremental logits at every position, greedy generation token for token past
block_size and with batch > 1); that the SDPA attention equals the explicit-softmax one; that gradient checkpointing
changes neither loss nor gradients; that crop_block_size keeps the first positions' logits; that configure_optimizers
decays exactly the >= 2-D parameters; that rotary position embeddings (pos_emb = 'rope') equal a direct complex-number
computation, and KV-cache decoding with them equals the full forward; that sample_next's greedy, top-k and top-p
(nucleus) filters keep exactly the tokens they should (a hand-computed case); that estimate_mfu equals a hand-computed
value; that the exact GELU (gelu = 'exact') round-trips through transformers; and that a bad GPTConfig names its
field.
"""

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.utils.checkpoint
from torch.nn import functional as F

import model as model_module
from decode import KVCache, sample_next
from model import GPT, CausalSelfAttention, GPTConfig

TINY = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_gpt(seed: int = 0, std: float = 0.0, **overrides: object) -> GPT:
    """A tiny GPT in eval mode. std > 0 redraws every parameter from N(0, std), biases and LayerNorms included,
    so that they all matter and greedy decoding does not collapse onto one token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))  # type: ignore[arg-type]
    if std > 0:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std)
    return model.eval()


def attentions(model: GPT) -> list[CausalSelfAttention]:
    layers = [block.attn for block in model.transformer.h]
    assert all(isinstance(a, CausalSelfAttention) for a in layers)
    return layers  # type: ignore[return-value]


# -----------------------------------------------------------------------------
# Hugging Face GPT-2


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT2LMHeadModel saved with save_pretrained. Every parameter (LayerNorm gains and biases too)
    is redrawn so that a transposed, swapped or skipped tensor changes the logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=101, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(path)
    return path


def hf_model(path: Path) -> torch.nn.Module:
    from transformers import GPT2LMHeadModel

    model: torch.nn.Module = GPT2LMHeadModel.from_pretrained(path).eval()
    return model


@pytest.mark.slow  # importing transformers and saving the checkpoint take ~10 s on 2 cores
def test_from_pretrained_matches_hf_logits(hf_dir: Path) -> None:
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    hf = hf_model(hf_dir)
    assert ours.config.vocab_size == 101 and ours.config.block_size == 64 and ours.config.bias
    idx = torch.randint(101, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits  # (B, T, vocab)
        logits, loss = ours(idx, targets=idx)
        last, no_loss = ours(idx)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(last, expected[:, [-1]], atol=1e-4, rtol=0)
    assert no_loss is None and loss is not None
    torch.testing.assert_close(loss, F.cross_entropy(expected.flatten(0, 1), idx.flatten()), atol=1e-5, rtol=0)
    assert expected.std() > 0.1  # the logits spread 1000x the tolerance: equality is not trivial


@pytest.mark.slow
def test_from_pretrained_overrides(hf_dir: Path) -> None:
    with pytest.raises(ValueError, match="n_layer"):
        GPT.from_pretrained(str(hf_dir), {"n_layer": 3})
    with pytest.raises(ValueError, match="block_size"):
        GPT.from_pretrained(str(hf_dir), {"dropout": 0.1, "block_size": 32})
    model = GPT.from_pretrained(str(hf_dir), {"dropout": 0.1, "gmm_experts": 0})
    assert model.config.dropout == 0.1 and model.config.n_layer == 2


@pytest.mark.slow
def test_the_exact_gelu_round_trips_through_transformers(tmp_path: Path) -> None:
    """gelu = 'exact' exports as transformers' 'gelu' and loads back as 'exact', with the same logits both ways; the
    two GELU forms give different logits (so the round trip checks the form, not only the weights); an activation
    model.py has not is one line naming the allowed ones."""
    import export

    ours = tiny_gpt(std=0.5, bias=True, gelu="exact")
    hf = export.to_transformers(ours).eval()
    assert hf.config.activation_function == "gelu"
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = ours(idx, targets=idx)
        torch.testing.assert_close(hf(idx).logits, expected, atol=1e-4, rtol=0)
        tanh = tiny_gpt(std=0.5, bias=True)
        tanh.load_state_dict(ours.state_dict())
        assert (tanh(idx, targets=idx)[0] - expected).abs().max() > 5e-4  # 5x the tolerance of the checks
    hf.save_pretrained(tmp_path / "exact")
    back = GPT.from_pretrained(str(tmp_path / "exact")).eval()
    assert back.config.gelu == "exact"
    with torch.no_grad():
        torch.testing.assert_close(back(idx, targets=idx)[0], expected, atol=1e-4, rtol=0)
    hf.config.activation_function = "relu"
    hf.save_pretrained(tmp_path / "relu")
    with pytest.raises(ValueError, match="activation_function = 'relu' must be one of gelu_new, gelu_pytorch_tanh"):
        GPT.from_pretrained(str(tmp_path / "relu"))


# -----------------------------------------------------------------------------
# KV cache, attention paths, gradient checkpointing


@pytest.mark.parametrize("token_shift", [False, True])
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("chunks", [[1] * 16, [4, 3, 1, 5, 1, 2]])
def test_kv_cache_logits_equal_full_forward(flash: bool, chunks: list[int], pos_emb: str, token_shift: bool) -> None:
    """Feeding the sequence in chunks through the cache gives, at each chunk's last position, the logits of the
    full forward: chunks of one token, and longer chunks that continue a filled cache (the masked path; with
    token_shift, a chunk's first token reads the cache's last one)."""
    model = tiny_gpt(std=0.1, pos_emb=pos_emb, token_shift=token_shift)
    for attn in attentions(model):
        attn.flash = flash
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.config, 2, 16, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        full, _ = model(idx, targets=idx)  # (B, T, vocab)
        start = 0
        for n in chunks:
            logits, _ = model(idx[:, start : start + n], kv_cache=cache)
            start += n
            assert cache.pos == start
            torch.testing.assert_close(logits[:, -1], full[:, start - 1], atol=1e-5, rtol=0)
    assert start == 16


@pytest.mark.parametrize("pos_emb", ["learned", "rope", "learned+shift"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_kv_cache_generation_equals_cacheless(batch: int, temperature: float, pos_emb: str) -> None:
    """Decoding with and without the cache gives the same tokens, running 21 tokens past block_size so the window
    slides (the cache is refilled every step there): greedy, and sampling with the same generator seed."""
    # a seed whose greedy output does not collapse onto one repeated token
    positions, _, shift = pos_emb.partition("+")
    model = tiny_gpt(seed=2, std=0.1, pos_emb=positions, token_shift=bool(shift))
    prompt = torch.randint(50, (batch, 5), generator=torch.Generator().manual_seed(0))
    new = 2 * model.config.block_size  # 5 + 32 positions
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(0)
        outs.append(model.generate(prompt, new, temperature=temperature, use_cache=use_cache, generator=g))
    assert outs[0].shape == (batch, 5 + new)
    assert torch.equal(outs[0], outs[1])
    if temperature > 0 or pos_emb == "learned":  # a random rope model's greedy output falls into a short cycle
        assert len(set(outs[0][0, 5:].tolist())) > 5  # varied output, not one token repeated


def rope_reference(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The logits of a rope model computed directly, in float64: each head's pair of dimensions (i, i + hs/2) is
    the complex number q_i + j q_{i+hs/2}, multiplied by exp(j p base^(-2i/hs)) at position p; then causal softmax
    attention by hand. Only the layers' weights are the model's."""
    cfg = model.config
    B, T = idx.shape
    nh, C = cfg.n_head, cfg.n_embd
    hs = C // nh
    theta = cfg.rope_base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    turn = torch.polar(torch.ones(T, hs // 2, dtype=torch.float64), torch.arange(T)[:, None] * theta)  # (T, hs/2)

    def rotated(t: torch.Tensor) -> torch.Tensor:  # (B, nh, T, hs)
        z = torch.complex(t[..., : hs // 2], t[..., hs // 2 :]) * turn
        return torch.cat([z.real, z.imag], dim=-1)

    x = model.transformer.wte(idx)  # no position table
    for block in model.transformer.h:
        assert isinstance(block, model_module.Block)
        q, k, v = block.attn.c_attn(block.ln_1(x)).double().split(C, dim=2)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))
        att = rotated(q) @ rotated(k).transpose(-2, -1) / hs**0.5  # (B, nh, T, T)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C).float()
        x = x + block.attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    out: torch.Tensor = model.lm_head(model.transformer.ln_f(x))
    return out


def test_token_shift_adds_the_mapped_previous_token_and_starts_as_a_no_op() -> None:
    """token_shift: each token's embedding plus shift(the previous token's), nothing for a segment's first token
    (each segment on its own); a fresh model gives the logits of the same weights without it."""
    torch.manual_seed(0)
    shifted = GPT(GPTConfig(**{**TINY, "token_shift": True}))  # type: ignore[arg-type]
    plain = GPT(GPTConfig(**TINY))  # type: ignore[arg-type]
    plain.load_state_dict({k: v for k, v in shifted.state_dict().items() if k != "transformer.shift.weight"})
    T = int(TINY["block_size"])
    idx = torch.randint(50, (2, 2 * T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert shifted.transformer.shift is not None and not shifted.transformer.shift.weight.any()
        torch.testing.assert_close(shifted(idx, idx)[0], plain(idx, idx)[0], atol=0, rtol=0)
        shifted.transformer.shift.weight.normal_(0.0, 0.1)
        wpe = shifted.transformer.wpe
        assert wpe is not None
        e = shifted.transformer.wte(idx[:, :T]) + wpe.weight[:T]
        e[:, 1:] += shifted.transformer.wte(idx[:, : T - 1]) @ shifted.transformer.shift.weight.T
        torch.testing.assert_close(shifted.embed(idx[:, :T], 0), e)
        # continuing after a token: the first one reads it
        torch.testing.assert_close(shifted.embed(idx[:, 5:9], 5, idx[:, 4:5]), shifted.embed(idx[:, :9], 0)[:, 5:])
        assert not torch.allclose(shifted(idx, idx)[0], plain(idx, idx)[0])


def test_rope_equals_a_direct_rotary_computation() -> None:
    model = tiny_gpt(std=0.1, pos_emb="rope")
    assert model.transformer.wpe is None and "rotary" not in str(list(model.state_dict()))  # nothing to learn
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(idx, targets=idx)
        torch.testing.assert_close(logits, rope_reference(model, idx), atol=1e-5, rtol=0)
        # and positions matter: the same tokens in another order are not the same logits permuted
        flipped, _ = model(idx.flip(1), targets=idx)
    assert not torch.allclose(flipped.flip(1), logits, atol=1e-3)


def test_sdpa_equals_explicit_softmax() -> None:
    model = tiny_gpt(std=0.1)
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sdpa, _ = model(idx, targets=idx)
        for attn in attentions(model):
            assert attn.flash  # this torch has scaled_dot_product_attention
            attn.flash = False
        explicit, _ = model(idx, targets=idx)
    torch.testing.assert_close(sdpa, explicit, atol=1e-5, rtol=0)


def test_gradient_checkpointing_same_loss_and_grads(monkeypatch: pytest.MonkeyPatch) -> None:
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint  # what model.py calls

    def counting_checkpoint(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(model_module, "checkpoint", counting_checkpoint)
    for gc in ("none", "block"):
        model = tiny_gpt(seed=0, std=0.1).train()
        model.gradient_checkpointing = gc
        _, loss = model(idx, targets=idx)
        assert loss is not None
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == model.config.n_layer  # the second run really went through checkpoint, once per block
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss0, loss1, atol=0, rtol=0)
    for name, g in grads0.items():
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(grads1[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_crop_block_size() -> None:
    model = tiny_gpt(std=0.1)
    idx = torch.randint(50, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, _ = model(idx, targets=idx)
        model.crop_block_size(8)
        after, _ = model(idx, targets=idx)
    assert model.config.block_size == 8
    assert model.transformer.wpe is not None and model.transformer.wpe.weight.shape == (8, 32)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="block_size"):
        model.crop_block_size(9)


def test_configure_optimizers_decays_exactly_matrices() -> None:
    model = tiny_gpt()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    params = dict(model.named_parameters())  # the tied lm_head/wte weight appears once
    expected_decay = {n for n, p in params.items() if p.dim() >= 2}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight"} <= expected_decay
    names = {id(p): n for n, p in params.items()}
    assert {names[id(p)] for p in decay["params"]} == expected_decay
    assert {names[id(p)] for p in no_decay["params"]} == set(params) - expected_decay
    assert len(decay["params"]) + len(no_decay["params"]) == len(params)


# -----------------------------------------------------------------------------
# sampling


def test_sample_next_greedy_and_top_k() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    argmax = logits.argmax(dim=-1, keepdim=True)
    assert torch.equal(sample_next(logits, temperature=0.0), argmax)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert torch.equal(sample_next(logits, temperature=2.0, top_k=1, generator=g), argmax)
        assert torch.equal(sample_next(logits, temperature=2.0, top_p=1e-6, generator=g), argmax)
    top3 = logits.topk(3, dim=-1).indices
    drawn = sample_next(logits.repeat(200, 1), temperature=5.0, top_k=3, generator=g).view(200, 4).t()  # (4, 200)
    assert all(set(drawn[b].tolist()) == set(top3[b].tolist()) for b in range(4))


@pytest.mark.parametrize(("top_p", "kept"), [(0.45, {1}), (0.75, {1, 3}), (0.85, {1, 3, 0}), (1.0, {0, 1, 2, 3})])
def test_sample_next_top_p_keeps_smallest_set_reaching_p(top_p: float, kept: set[int]) -> None:
    """Probabilities 0.15, 0.5, 0.05, 0.3 (ids 0..3, not sorted). Ranked: 0.5 (id 1), 0.3 (id 3), 0.15 (id 0),
    0.05 (id 2); cumulative 0.5, 0.8, 0.95, 1.0. The smallest set whose mass reaches top_p is ranked 1 for 0.45,
    ranks 1-2 for 0.75, ranks 1-3 for 0.85, and everything for 1.0. Kept tokens keep their relative odds."""
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    # the second row is the same distribution permuted, to check the filter maps back to each row's own ids
    perm = torch.tensor([2, 0, 3, 1])
    logits = torch.stack([probs.log(), probs[perm].log()])
    n = 4000  # draws per row, all in one call: row r of the batch is row r % 2 of logits
    drawn = sample_next(logits.repeat(n, 1), 1.0, top_p=top_p, generator=torch.Generator().manual_seed(0))
    drawn = drawn.view(n, 2).t()  # (2, n)
    assert set(drawn[0].tolist()) == kept
    assert set(perm[drawn[1]].tolist()) == kept  # row 1's ids mapped back to row 0's
    mass = sum(probs[i].item() for i in kept)
    for i in kept:
        assert abs((drawn[0] == i).float().mean().item() - probs[i].item() / mass) < 0.04


# -----------------------------------------------------------------------------
# MFU and config validation


def test_estimate_mfu_hand_computed() -> None:
    model = GPT(GPTConfig(**{**TINY, "vocab_size": 50}))  # type: ignore[arg-type]
    # per block: ln_1 64 + c_attn 32*96+96 + attn c_proj 32*32+32 + ln_2 64 + c_fc 32*128+128 + mlp c_proj 128*32+32
    block = 64 + 3168 + 1056 + 64 + 4224 + 4128
    n_params = 50 * 32 + 2 * block + 64  # wte (tied to lm_head) + blocks + ln_f; wpe is not counted
    assert n_params == 27072 and model.get_num_params() == n_params
    # PaLM: 6N + 12 * n_layer * n_head * head_size * block_size = 162432 + 12 * 2 * 2 * 16 * 16
    flops_per_token = 6 * 27072 + 12288
    mfu = model.estimate_mfu(tokens_per_iter=1000, dt=0.5, peak_flops=1e9)
    assert mfu == pytest.approx(flops_per_token * 1000 / 0.5 / 1e9) == pytest.approx(0.34944)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd"),
        ({"n_layer": 0}, "n_layer"),
        ({"block_size": -1}, "block_size"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"pos_emb": "alibi"}, "pos_emb"),
        ({"gelu": "relu"}, "gelu = 'relu' must be one of tanh, exact"),
        ({"pos_emb": "rope", "n_embd": 30, "n_head": 2}, "pos_emb"),
        ({"pos_emb": "rope", "rope_base": 0.0}, "rope_base"),
    ],
)
def test_config_validation_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field) as e:
        GPTConfig(**{**TINY, **overrides})
    assert "\n" not in str(e.value)
