"""export.py: a trained model as a folder the Hub takes, loaded back with the same logits. Memory off: transformers'
GPT2LMHeadModel and AutoTokenizer (character level and GPT-2 BPE); memory on: GPT.from_pretrained and sample.py's
streaming; train.py and sample.py with --init_from=<export>; the model card's figures; only safetensors and JSON;
the upload up to the network boundary, offline."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN

import export
import hub
import sample
import train
from common import load_checkpoint, save_checkpoint
from model import GPT, GPTConfig
from tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_TRAIN, "--max_iters=4", "--eval_interval=2"]
GMM = ["--gmm_experts=2", "--gmm_slots=2", "--n_segments=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shakespeare_char_data: Path) -> dict[str, Path]:
    """Three tiny trained char runs (memory off, k=2 experts, memory off with rope and the token shift) and their
    exports."""
    root = tmp_path_factory.mktemp("export")
    data = [f"--data_dir={shakespeare_char_data}", "--dataset=shakespeare_char"]
    paths = {}
    for name, extra in (("plain", []), ("gmm", GMM), ("rope", ["--pos_emb=rope", "--token_shift=True"])):
        train.main([*data, *TINY, *extra, f"--out_dir={root / name}"])
        export.main([f"--out_dir={root / name}", f"--to={root / (name + '-export')}"])
        paths[name], paths[name + "-export"] = root / name, root / (name + "-export")
    paths["data"] = shakespeare_char_data
    return paths


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(x, x)[0]  # with targets: the logits of every position
        return out


def test_plain_export_is_a_transformers_gpt2(runs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder = runs["plain-export"]
    ckpt = load_checkpoint(str(runs["plain"] / "ckpt.pt"))
    ours = GPT.from_checkpoint(ckpt).eval()
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    x = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, logits(ours, x), atol=1e-4, rtol=0)
    # the tokenizer round-trips the dataset's text, with the dataset's ids
    text = val_text(runs["data"])
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.encode(text)
    assert ids == get_tokenizer(ckpt["tokenizer_meta"]).encode(text)
    assert tok.decode(ids) == text


def val_text(data: Path) -> str:
    """A stretch of the char dataset's text, decoded from val.bin (newlines, punctuation, capitals)."""
    meta = json.loads((data / "shakespeare_char" / "meta.json").read_text())
    ids = np.fromfile(data / "shakespeare_char" / "val.bin", dtype=np.uint16)[:3000]
    return get_tokenizer(meta).decode(ids.tolist())


def test_bpe_export_has_gpt2s_tokenizer(tmp_path: Path) -> None:
    """A GPT-2 BPE model (bias on, vocabulary padded to 50304): transformers' logits, and a tokenizer that gives
    tiktoken's ids."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50304, bias=True)
    model = GPT(config).eval()
    meta = {"tokenizer": "gpt2", "vocab_size": 50257}
    (tmp_path / "run").mkdir()
    ckpt = {"model": model.state_dict(), "model_args": asdict(config), "config": {"dataset": "shakespeare"},
            "tokenizer_meta": meta, "iter_num": 0}  # fmt: skip
    save_checkpoint(ckpt, str(tmp_path / "run" / "ckpt.pt"))
    folder = export.export(export.ExportConfig(out_dir=str(tmp_path / "run"), to=str(tmp_path / "bpe")))
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(GPT2LMHeadModel.from_pretrained(folder).eval()(x).logits, logits(model, x), atol=1e-4)
    text = "What is the answer to life, the universe, and everything?\n  Forty-two.<|endoftext|>"
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.encode(text) == get_tokenizer(meta).encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_gmm_export_loads_with_the_same_logits_and_streams(runs: dict[str, Path], capsys: Any) -> None:
    """Memory on: GPT.from_pretrained(export) equals the checkpoint over several segments, and sample.py from the
    export streams past block_size exactly as from ckpt.pt."""
    folder = runs["gmm-export"]
    assert hub.export_kind(folder) == "gmm"
    config = json.loads((folder / "config.json").read_text())
    assert {f: config[f] for f in asdict(GPTConfig())} == asdict(GPT.from_pretrained(str(folder)).config)
    ckpt_model = GPT.from_checkpoint(load_checkpoint(str(runs["gmm"] / "ckpt.pt"))).eval()
    exported = GPT.from_pretrained(str(folder)).eval()
    x = torch.randint(0, 65, (2, 48), generator=torch.Generator().manual_seed(2))  # 3 segments of 16
    assert torch.equal(logits(exported, x), logits(ckpt_model, x))
    texts = []
    for source in (f"--out_dir={runs['gmm']}", f"--init_from={folder}"):
        sample.main(["--device=cpu", "--num_samples=1", "--max_new_tokens=40", "--seed=7", "--start=ROMEO:", source])
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and "ROMEO:" in texts[0] and len(texts[0]) > 40


def test_a_rope_export_is_the_projects_format_and_says_why(runs: dict[str, Path], capsys: Any) -> None:
    """Rotary positions and the token shift do not fit transformers' GPT-2: auto exports the project's format (the
    same logits back, a card that says why), and asking for a transformers GPT-2 is one line naming both."""
    folder = runs["rope-export"]
    assert hub.export_kind(folder) == "gmm"
    ckpt_model = GPT.from_checkpoint(load_checkpoint(str(runs["rope"] / "ckpt.pt"))).eval()
    exported = GPT.from_pretrained(str(folder)).eval()
    assert exported.config.pos_emb == "rope" and exported.transformer.wpe is None and exported.config.token_shift
    assert exported.transformer.shift is not None and exported.transformer.shift.weight.any()  # trained, so it counts
    x = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(logits(exported, x), logits(ckpt_model, x))
    card = (folder / "README.md").read_text()
    assert "transformers' GPT-2 cannot hold" in card and "token shift" in card
    target = runs["rope"].parent / "rope-as-gpt2"
    with pytest.raises(SystemExit) as e:
        export.main([f"--out_dir={runs['rope']}", f"--to={target}", "--format=transformers"])
    assert e.value.code != 0 and not target.exists()
    err = capsys.readouterr().err.strip()
    assert "pos_emb = 'rope'" in err and "token_shift = True" in err and "--format=project" in err
    assert len(err.splitlines()) == 1


def test_an_export_holds_only_safetensors_json_and_text(runs: dict[str, Path]) -> None:
    for name in ("plain-export", "gmm-export"):
        files = [p for p in runs[name].rglob("*") if p.is_file()]
        assert {"config.json", "model.safetensors", "meta.json", "README.md", "tokenizer.json"} <= {
            p.name for p in files
        }
        for path in files:
            assert path.suffix in (".json", ".safetensors", ".txt", ".md"), path
            assert path.read_bytes()[:1] != b"\x80", f"{path} starts like a pickle"


def test_the_model_card_holds_the_runs_figures(runs: dict[str, Path]) -> None:
    for name in ("plain", "gmm"):
        card = (runs[name + "-export"] / "README.md").read_text()
        evals = [json.loads(line) for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in evals if r["event"] == "eval"][-1]
        assert f"| val loss | {last['val_loss']:.4f} |" in card
        assert f"| train loss | {last['train_loss']:.4f} |" in card
        assert "python train.py --data_dir=" in card and f"--out_dir={runs[name]}" in card  # the command itself
        assert "Trained at the project's commit `" in card and "shakespeare_char" in card
        if name == "gmm":
            segs = ", ".join(f"{v:.3f}" for v in last["val_seg_loss"])
            assert f"Val loss per segment (1 to 3), last evaluation: {segs}." in card
            assert "library_name: gmm-gpt" in card and "GPT.from_pretrained" in card
        else:
            assert "library_name: transformers" in card and "AutoModelForCausalLM" in card


@pytest.mark.parametrize("name", ["plain", "gmm"])
def test_fine_tuning_starts_from_the_export(runs: dict[str, Path], tmp_path: Path, name: str) -> None:
    """train.py --init_from=<export>: its first evaluation (the same fixed batches) is the run's last one."""
    out = tmp_path / "tuned"
    extra = GMM if name == "gmm" else []
    data = [f"--data_dir={runs['data']}", "--dataset=shakespeare_char"]
    train.main([*data, *TINY, *extra, f"--init_from={runs[name + '-export']}", f"--out_dir={out}"])
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    before = [json.loads(line) for line in (runs[name] / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals[0]["val_loss"] == pytest.approx(before[-1]["val_loss"], abs=1e-5)
    assert evals[-1]["iter"] == 4


def test_a_folder_that_is_not_an_export_is_one_line(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(SystemExit) as e:
        sample.main(["--device=cpu", f"--init_from={tmp_path}", "--max_new_tokens=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "is not an exported model" in err[0], err


def test_push_reaches_the_network_boundary(runs: dict[str, Path], tmp_path: Path, monkeypatch: Any) -> None:
    """The upload is the Hub client's create_repo and upload_folder on the export folder; offline, it is one line
    and the export stays complete."""
    calls: list[tuple[str, dict[str, Any]]] = []

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id: str, **kwargs: Any) -> None:
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs: Any) -> str:
            calls.append(("upload_folder", kwargs))
            return "https://huggingface.co/me/tiny/commit/abc"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    export.main([f"--out_dir={runs['plain']}", f"--to={tmp_path / 'up'}", "--push_to_hub=me/tiny", "--private=True"])
    assert calls == [
        ("init", {"token": "hf_test"}),
        ("create_repo", {"repo_id": "me/tiny", "private": True, "exist_ok": True}),
        ("upload_folder", {"folder_path": str(tmp_path / "up"), "repo_id": "me/tiny", "commit_message": "export.py"}),
    ]
    assert "me/tiny" in (tmp_path / "up" / "README.md").read_text()  # the card names the repo it loads from
    # offline, as a user would run it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test", "OMP_NUM_THREADS": "1"}
    argv = [
        sys.executable,
        "export.py",
        f"--out_dir={runs['plain']}",
        f"--to={tmp_path / 'off'}",
        "--push_to_hub=me/tiny",
    ]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: push_to_hub = 'me/tiny' failed") and "the export is complete in" in lines[0]
    assert (tmp_path / "off" / "model.safetensors").is_file()


def test_a_hub_id_offline_is_one_line(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [sys.executable, "sample.py", "--init_from=nobody/no-such-model", "--device=cpu"]
    env = {**os.environ, "HF_HOME": str(tmp_path)}
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "'nobody/no-such-model' could not be fetched from the Hugging Face Hub" in lines[0]


def test_a_hub_id_loads_from_the_hub_cache_offline(runs: dict[str, Path], tmp_path: Path) -> None:
    """--init_from=owner/name as after a download: the export in the Hugging Face cache's layout, read offline by
    sample.py, gives the same text as the folder itself."""
    snapshot = tmp_path / "hub" / "models--me--tiny-gmm" / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    shutil.copytree(runs["gmm-export"], snapshot)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    texts = []
    for source in ("me/tiny-gmm", str(runs["gmm-export"])):
        argv = [sys.executable, "sample.py", f"--init_from={source}", "--device=cpu", "--num_samples=1",
                "--max_new_tokens=30", "--seed=3", "--start=KING:"]  # fmt: skip
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        texts.append(result.stdout)
    assert texts[0] == texts[1] and "KING:" in texts[0]
