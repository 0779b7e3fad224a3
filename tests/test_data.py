"""Data pipeline: the three data/*/prepare.py scripts and tokenizer.py.

Proves that prepare.py writes uint16 bins and a meta.json that decode back to the input through tokenizer.py; that on
the real tiny-shakespeare the char and GPT-2 datasets have nanoGPT's exact vocab and token counts; that the openwebtext
recipe (run offline through --text_files) writes every document once, followed by eot; that a failed download exits 1
with one line naming the file to provide and leaves out_dir empty; and that bad tokenizer input is a one-line
ValueError. Offline, CPU only; outputs go to tmp_path, never into the repo's data/ folders.
"""

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tokenizer import get_tokenizer, gpt2_encoding, load_meta

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the project root (a device checkout may hold it at ./shared)
SHARED = next((p for p in (ROOT.parent / "shared", ROOT / "shared") if p.is_dir()), ROOT.parent / "shared")
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
TIKTOKEN_CACHE = SHARED / "tiktoken_cache"
EOT = 50256

needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} not found")
needs_bpe = pytest.mark.skipif(not TIKTOKEN_CACHE.is_dir(), reason=f"{TIKTOKEN_CACHE} not found")


@functools.cache
def load_prepare(name: str) -> ModuleType:
    """Import data/<name>/prepare.py as a module, the way a test or notebook would, without running it."""
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", ROOT / "data" / name / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_bin(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint16, mode="r")  # exactly how train.py reads them


def is_empty(out_dir: Path) -> bool:
    return not out_dir.exists() or not any(out_dir.iterdir())


@pytest.fixture
def bpe_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken reads its GPT-2 files from the shared cache: no network."""
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"{TIKTOKEN_CACHE} not found")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def urlopen(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


# --- shakespeare_char -------------------------------------------------------------------------------------------------


def test_char_prepare_small_text(tmp_path: Path) -> None:
    text = "hello world\nthe quick brown fox\n" * 5 + "Zz!"
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert load_prepare("shakespeare_char").main(["--out_dir", str(out), "--input", str(tmp_path / "input.txt")]) == 0

    meta = load_meta(str(out))
    assert meta["tokenizer"] == "char"
    assert meta["itos"] == sorted(set(text))
    assert meta["vocab_size"] == len(set(text))
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    n = int(len(text) * 0.9)
    assert (len(train), len(val)) == (n, len(text) - n) == (meta["train_tokens"], meta["val_tokens"])

    tok = get_tokenizer(meta)
    assert tok.eot is None
    assert tok.decode(train.tolist()) == text[:n]
    assert tok.decode(val.tolist()) == text[n:]
    assert tok.encode(text) == np.concatenate([train, val]).tolist()


@needs_shakespeare
def test_char_prepare_tiny_shakespeare(tmp_path: Path) -> None:
    assert load_prepare("shakespeare_char").main(["--out_dir", str(tmp_path), "--input", str(SHAKESPEARE)]) == 0
    meta = load_meta(str(tmp_path))
    assert meta["vocab_size"] == len(meta["itos"]) == 65
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)  # nanoGPT's counts
    assert len(read_bin(tmp_path / "train.bin")) == 1_003_854
    assert len(read_bin(tmp_path / "val.bin")) == 111_540


@needs_shakespeare
def test_char_prepare_runs_as_a_script(tmp_path: Path) -> None:
    """As a user runs it: from the repo root, no PYTHONPATH, reading the shared text."""
    script = "data/shakespeare_char/prepare.py"
    cmd = [sys.executable, script, "--out_dir", str(tmp_path), "--input", str(SHAKESPEARE)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1,003,854" in result.stdout and "111,540" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]

    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = get_tokenizer(load_meta(str(tmp_path)))
    assert tok.decode(read_bin(tmp_path / "val.bin").tolist()) == text[1_003_854:]


# --- shakespeare (GPT-2 BPE) ------------------------------------------------------------------------------------------


@needs_shakespeare
def test_gpt2_prepare_tiny_shakespeare(tmp_path: Path, bpe_cache: None) -> None:
    assert load_prepare("shakespeare").main(["--out_dir", str(tmp_path), "--input", str(SHAKESPEARE)]) == 0
    meta = load_meta(str(tmp_path))
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)  # nanoGPT's counts
    train, val = read_bin(tmp_path / "train.bin"), read_bin(tmp_path / "val.bin")
    assert (len(train), len(val)) == (301_966, 36_059)

    text = SHAKESPEARE.read_text(encoding="utf-8")
    n = int(len(text) * 0.9)
    tok = get_tokenizer(meta)
    assert tok.decode(train.tolist()) == text[:n]
    assert tok.decode(val.tolist()) == text[n:]


def test_gpt2_tokenizer_roundtrip_and_eot(bpe_cache: None) -> None:
    tok = get_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257})
    assert tok.eot == EOT
    ids = tok.encode("Hello world<|endoftext|>")
    assert ids[-1] == EOT  # a prompt may contain the document separator
    assert tok.decode(ids) == "Hello world<|endoftext|>"


# --- openwebtext recipe, offline through --text_files -----------------------------------------------------------------


@pytest.mark.slow
def test_openwebtext_from_text_files(tmp_path: Path, bpe_cache: None) -> None:
    docs = [
        "First document.\nIt has two lines.\n",
        "Second one, no trailing newline",
        "Ünïcödé and emoji 🙂\n\n\nblank lines kept\n",
        "a literal <|endoftext|> in web text stays text",
    ]
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "docs" / f"{i}.txt").write_text(doc, encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--out_dir", str(out), "--text_files", str(tmp_path / "docs" / "*.txt"), "--num_proc", "2"]
    # as a script: its 2 worker processes are forked, which a test process full of other tests' threads could
    # deadlock; HF_DATASETS_CACHE keeps ~/.cache clean
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    script = ROOT / "data" / "openwebtext" / "prepare.py"
    result = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]

    meta = load_meta(str(out))
    enc = gpt2_encoding()
    found = []
    for split in ("train", "val"):
        ids = read_bin(out / f"{split}.bin")
        assert len(ids) == meta[f"{split}_tokens"] > 0
        assert ids[-1] == EOT  # every document, the last included, ends with eot
        # cut at the eot ids: the literal "<|endoftext|>" of doc 3 must not be one
        cuts = np.flatnonzero(ids == EOT)
        starts = np.concatenate([[0], cuts[:-1] + 1])
        found += [enc.decode(ids[s:e].tolist()) for s, e in zip(starts, cuts, strict=True)]
    assert sorted(found) == sorted(docs)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257


# --- failures a user can act on ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shakespeare_char", "shakespeare"])
def test_download_failure_is_one_line_and_leaves_nothing(
    name: str, tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert load_prepare(name).main(["--out_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not download tiny-shakespeare")
    assert str(out / "input.txt") in err and "--input PATH" in err
    assert is_empty(out)


def test_openwebtext_download_failure(
    tmp_path: Path, bpe_cache: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def load_dataset(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'openwebtext' on the Hub (LocalEntryNotFoundError)")

    owt = load_prepare("openwebtext")
    monkeypatch.setattr(owt, "load_dataset", load_dataset)
    out = tmp_path / "out"
    assert owt.main(["--out_dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download 'openwebtext'" in err and "--text_files" in err
    assert is_empty(out)


def test_missing_bpe_files_say_to_set_tiktoken_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tiktoken

    def get_encoding(name: str) -> None:
        raise ConnectionError("no network")  # what tiktoken raises offline with an empty cache

    monkeypatch.setattr(tiktoken, "get_encoding", get_encoding)
    (tmp_path / "input.txt").write_text("some text " * 10, encoding="utf-8")
    assert load_prepare("shakespeare").main(["--out_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TIKTOKEN_CACHE_DIR" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]


def test_tokenizer_errors_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"^unknown tokenizer 'x': known are char, gpt2, synthetic$"):
        get_tokenizer({"tokenizer": "x"})

    tok = get_tokenizer({"tokenizer": "char", "itos": list("ehlo ")})
    assert tok.decode(tok.encode("hello")) == "hello"
    with pytest.raises(ValueError, match=r"character 'a' at position 1 ") as e:
        tok.encode("hallo")
    assert "\n" not in str(e.value)


def test_load_meta_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta.json not found") as e:
        load_meta(str(tmp_path))
    assert str(tmp_path / "meta.json") in str(e.value)

    (tmp_path / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="could not be read as JSON") as e:
        load_meta(str(tmp_path))
    assert str(tmp_path / "meta.json") in str(e.value) and "\n" not in str(e.value)

    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 65}), encoding="utf-8")
    with pytest.raises(ValueError, match="'tokenizer'"):
        load_meta(str(tmp_path))


# --- pycode -----------------------------------------------------------------------------------------------------------


def small_tree(root: Path) -> dict[str, str]:
    """A folder of .py files, with a test suite, a cache and a file that is not UTF-8 that must be left out; returns
    the files the corpus holds (path below root -> text)."""
    kept = {
        f"pkg{i // 4}/mod{i}.py": f"NAME_{i} = {i}\n\n\ndef use():\n    return NAME_{i} * 2  # é\n" for i in range(24)
    }
    left_out = {"tests/test_a.py": "assert True\n", "pkg0/test/t.py": "x = 1\n", "__pycache__/m.py": "y = 2\n"}
    for rel, text in {**kept, **left_out}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    return kept


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_pycode_prepare_splits_by_file_in_a_fixed_order(tmp_path: Path, bpe_cache: None, tokenizer: str) -> None:
    prepare = load_prepare("pycode")
    kept = small_tree(tmp_path / "src")
    for out in ("a", "b"):
        assert (
            prepare.main(
                ["--source", str(tmp_path / "src"), "--out_dir", str(tmp_path / out), "--tokenizer", tokenizer]
            )
            == 0
        )
    meta = load_meta(str(tmp_path / "a"))
    tok = get_tokenizer(meta)
    val = sorted(rel for rel in kept if prepare.is_val(Path(rel)))
    train = sorted(rel for rel in kept if rel not in val)
    assert val and train and meta["files"] == {"train": len(train), "val": len(val), "skipped_not_utf8": 1}
    for split, files in (("train", train), ("val", val)):
        ids = read_bin(tmp_path / "a" / f"{split}.bin").tolist()
        docs = [f"# file: {rel}\n{kept[rel]}" for rel in files]  # the files in path order, each whole
        if tokenizer == "gpt2":
            assert ids.count(EOT) == len(files) and ids[-1] == EOT
            assert tok.decode([i for i in ids if i != EOT]) == "".join(docs)
        else:
            assert tok.decode(ids) == "".join(doc + "\x1c" for doc in docs)
        assert meta["sha256"][split] == hashlib.sha256("\n".join(docs).encode()).hexdigest()
    assert meta["provenance"] == {"folder": str((tmp_path / "src").resolve())}
    # the same files give the same bins
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_pycode_char_is_pycode_at_the_character_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """data/pycode_char (what config/train_gmm_pycode.py trains) writes the bins pycode writes with --tokenizer char,
    and refuses another tokenizer in one line."""
    small_tree(tmp_path / "src")
    src = ["--source", str(tmp_path / "src")]
    assert load_prepare("pycode").main([*src, "--out_dir", str(tmp_path / "a"), "--tokenizer", "char"]) == 0
    assert load_prepare("pycode_char").main([*src, "--out_dir", str(tmp_path / "b")]) == 0
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert load_prepare("pycode_char").main([*src, "--out_dir", str(tmp_path / "c"), "--tokenizer=gpt2"]) == 2
    assert "always --tokenizer char" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_pycode_prepare_defaults_to_the_standard_library_and_says_so(tmp_path: Path, bpe_cache: None) -> None:
    """Without --source: this interpreter's standard library, without its test suites (the file list is checked
    here; the full corpus is ~5 M tokens)."""
    import sysconfig

    prepare = load_prepare("pycode")
    files = prepare.python_files(Path(sysconfig.get_paths()["stdlib"]))
    assert len(files) > 500 and Path("os.py") in files and Path("json/decoder.py") in files
    assert not any({"test", "tests", "idle_test", "site-packages"} & set(f.parts[:-1]) for f in files)
    assert files == sorted(files, key=lambda p: p.as_posix())
    assert 0.05 < sum(prepare.is_val(f) for f in files) / len(files) < 0.15  # about a tenth of the files are val


def test_pycode_prepare_bad_source_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare = load_prepare("pycode")
    assert prepare.main(["--source", str(tmp_path / "none"), "--out_dir", str(tmp_path / "o")]) == 1
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.py").write_text("x = 1\n")
    assert prepare.main(["--source", str(tmp_path / "one"), "--out_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is not a folder" in err[0] and "too few to split by file" in err[1]
    assert is_empty(tmp_path / "o")
