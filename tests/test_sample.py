"""sample.py, on a checkpoint that train.py writes (4 steps of a tiny char model on tiny-shakespeare) and on a random
tiny Hugging Face GPT-2 directory.

Proves that sample.py run as a user runs it prints num_samples samples of max_new_tokens characters separated by
nanoGPT's dashes; that the same seed gives the same text and another seed another; that the KV cache changes nothing
at temperature 0, past block_size too; that streamed output equals the unstreamed; that a FILE: prompt is read; that a
bad prompt, a missing file or checkpoint and a bad setting exit 2 with one line on stderr; that an HF directory
samples with the GPT-2 tokenizer and gives the greedy continuation GPT.generate gives; and that streaming BPE tokens
one by one reassembles multi-byte characters exactly. CPU only, offline.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
import train
from model import GPT, GPTConfig
from sample import SampleConfig, TextStream
from tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the project root (a device checkout may hold it at ./shared)
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"
SEPARATOR = "\n---------------\n"


@pytest.fixture(scope="module")
def out_dir(shakespeare_char_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out_dir/ckpt.pt from a 4-step run of a 1-layer char model with block_size 16."""
    out = tmp_path_factory.mktemp("out")
    train.main(
        [
            "--max_iters=4", "--eval_interval=2", "--eval_iters=1", "--device=cpu", "--compile=False",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=2",
            "--gradient_accumulation_steps=1", "--dataset=shakespeare_char",
            f"--data_dir={shakespeare_char_data}", f"--out_dir={out}",
        ]
    )  # fmt: skip
    assert (out / "ckpt.pt").is_file()
    return out


@pytest.fixture
def bpe_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken reads its GPT-2 files from the shared cache: no network."""
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"{TIKTOKEN_CACHE} not found")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT2LMHeadModel (vocab 101: GPT-2's ids 0..100, mostly printable ASCII) saved with
    save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=32, vocab_size=101)
    path = tmp_path_factory.mktemp("hf_gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def run_sample(args: list[str]) -> subprocess.CompletedProcess[str]:
    """sample.py as a user runs it, from the repo root."""
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(TIKTOKEN_CACHE)}
    cmd = [sys.executable, "sample.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def samples_of(stdout: str) -> list[str]:
    """The samples printed, in order (the output ends with a separator)."""
    assert stdout.endswith(SEPARATOR)
    return stdout[: -len(SEPARATOR)].split(SEPARATOR)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """sample.main in this process: (exit status, stdout, stderr)."""
    try:
        sample.main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def cfg_for(out_dir: Path, **kwargs: object) -> SampleConfig:
    settings = dict(out_dir=str(out_dir), num_samples=2, max_new_tokens=20, device="cpu")
    return SampleConfig(**{**settings, **kwargs})  # type: ignore[arg-type]


# -----------------------------------------------------------------------------


@pytest.mark.slow  # a fresh python importing torch: ~5 s on 2 cores
def test_sample_script_prints_samples(out_dir: Path) -> None:
    args = ["--init_from=resume", f"--out_dir={out_dir}", "--num_samples=2", "--max_new_tokens=20", "--device=cpu"]
    result = run_sample(args)
    assert result.returncode == 0, result.stderr
    texts = samples_of(result.stdout)
    assert len(texts) == 2
    itos = torch.load(out_dir / "ckpt.pt", weights_only=True)["tokenizer_meta"]["itos"]
    for text in texts:
        assert text.startswith("\n") and len(text) == 1 + 20  # the prompt, then one character per token
        assert set(text) <= set(itos)
    assert texts[0] != texts[1]


def test_same_seed_same_text(out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = sample.sample(cfg_for(out_dir, seed=7))
    again = sample.sample(cfg_for(out_dir, seed=7))
    other = sample.sample(cfg_for(out_dir, seed=8))
    capsys.readouterr()
    assert first == again
    assert first != other
    assert all(len(t) == 20 for t in first)


def test_kv_cache_changes_nothing_at_temperature_0(out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Greedy, 40 tokens after a 10-character prompt: the 16-token window slides for the last 34."""
    kw = dict(start="ROMEO: hi\n", temperature=0.0, num_samples=1, max_new_tokens=40)
    with_cache = sample.sample(cfg_for(out_dir, kv_cache=True, **kw))
    printed = capsys.readouterr().out
    without = sample.sample(cfg_for(out_dir, kv_cache=False, **kw))
    assert with_cache == without and len(with_cache[0]) == 40
    assert capsys.readouterr().out == printed


def test_stream_prints_what_unstreamed_prints(out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample.sample(cfg_for(out_dir, stream=True))
    streamed = capsys.readouterr().out
    sample.sample(cfg_for(out_dir, stream=False))
    assert capsys.readouterr().out == streamed
    assert len(samples_of(streamed)) == 2


def test_file_prompt(out_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING RICHARD III:\nNow is", encoding="utf-8")
    args = [f"--out_dir={out_dir}", "--device=cpu", f"--start=FILE:{prompt}", "--num_samples=1", "--max_new_tokens=9"]
    code, out, _ = run_main(args, capsys)
    assert code == 0
    (text,) = samples_of(out)
    assert text.startswith("KING RICHARD III:\nNow is") and len(text) == len("KING RICHARD III:\nNow is") + 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start=Ωmega"], "'Ω' at position 0 is not in the char vocabulary"),
        (["--start=FILE:/no/such/prompt.txt"], "FILE:/no/such/prompt.txt"),
        (["--start="], "start is empty"),
        (["--temperature=-1"], "temperature"),
        (["--top_p=0"], "top_p"),
        (["--top_k=0"], "top_k"),
        (["--max_new_token=5"], "did you mean 'max_new_tokens'"),
        (["--init_from=gpt3"], "init_from"),
    ],
)
def test_bad_input_one_line_exit_2(
    out_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main([f"--out_dir={out_dir}", "--device=cpu", *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert out == ""


def test_missing_checkpoint_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main([f"--out_dir={tmp_path / 'nothing'}", "--device=cpu"], capsys)
    assert code == 2
    assert err == f"error: checkpoint '{tmp_path / 'nothing' / 'ckpt.pt'}' not found\n"


@pytest.mark.slow  # a fresh python importing torch and transformers: ~10 s on 2 cores
def test_hf_dir_samples_with_gpt2_tokenizer(hf_dir: Path, bpe_cache: None) -> None:
    """Greedy sampling from an HF directory prints exactly GPT.generate's continuation, decoded by GPT-2's BPE."""
    args = [f"--init_from={hf_dir}", "--start=A", "--num_samples=2", "--max_new_tokens=12", "--temperature=0"]
    result = run_sample(args)
    assert result.returncode == 0, result.stderr
    texts = samples_of(result.stdout.split("\n", 1)[1])  # after from_pretrained's "loading weights" line
    model = GPT.from_pretrained(str(hf_dir)).eval()
    tokenizer = get_tokenizer({"tokenizer": "gpt2"})
    greedy = model.generate(torch.tensor([tokenizer.encode("A")]), 12, temperature=0.0)
    assert texts == [tokenizer.decode(greedy[0].tolist())] * 2


@pytest.mark.slow  # imports transformers: ~8 s on 2 cores
def test_hf_dir_prompt_outside_vocab(hf_dir: Path, bpe_cache: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main([f"--init_from={hf_dir}", "--start=Hello", "--device=cpu"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "token id 15496 is outside the model's vocabulary of 101" in err


def test_text_stream_reassembles_multibyte_characters(bpe_cache: None) -> None:
    tokenizer = get_tokenizer({"tokenizer": "gpt2"})
    text = "naïve café — 世界 🙂 done"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text.split())  # some characters span several tokens
    stream = TextStream(tokenizer.decode)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_padding_ids_are_never_sampled() -> None:
    """A vocabulary padded past the tokenizer's (here 70 ids, text for 65) never yields a padding id."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=70)).eval()
    with torch.no_grad():
        best = model(torch.zeros(1, 1, dtype=torch.long))[0].argmax()
        model.lm_head.weight[65:] = 10 * model.lm_head.weight[best]  # make the padding ids the likeliest
        assert model(torch.zeros(1, 1, dtype=torch.long))[0].argmax() >= 65
        sample.mask_padding_ids(model, 65)
        logits, _ = model(torch.zeros(1, 1, dtype=torch.long))
    assert torch.isinf(logits[..., 65:]).all() and torch.isfinite(logits[..., :65]).all()
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 30, temperature=1.0, top_k=None)
    assert out.max() < 65


def test_sampling_with_a_disagreeing_model_setting_is_one_line(
    out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [f"--out_dir={out_dir}", "--device=cpu", "--num_samples=1", "--max_new_tokens=3"]
    code, _, err = run_main([*base, "--gmm_experts=4"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: gmm_experts = 4 disagrees with {out_dir / 'ckpt.pt'}, which was trained with gmm_experts = 0: "
        "drop the setting, or train a new model in another out_dir"
    ]
    code, _, err = run_main([*base, "--gmm_experts=0", "--n_layer=1"], capsys)  # agreeing settings are fine
    assert code == 0, err


def test_memory_model_streams_past_block_size(
    shakespeare_char_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GMM checkpoint samples 3 segments' worth of text in one stream, and the cached stream (segment by
    segment through the memory) prints exactly what recomputing everything prints."""
    train.main(
        [
            "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--device=cpu", "--compile=False",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=2", "--n_segments=2",
            "--gmm_experts=2", "--gmm_slots=4", "--dataset=shakespeare_char", "--gradient_accumulation_steps=1",
            f"--data_dir={shakespeare_char_data}", f"--out_dir={tmp_path}",
        ]
    )  # fmt: skip
    capsys.readouterr()
    outputs = []
    for cache in (True, False):
        argv = [f"--out_dir={tmp_path}", "--device=cpu", "--num_samples=1", "--max_new_tokens=48"]
        code, out, err = run_main([*argv, "--temperature=0", f"--kv_cache={cache}"], capsys)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert len(samples_of(outputs[0])[0]) == 1 + 48  # the prompt "\n" and 48 characters
