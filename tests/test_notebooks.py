"""Every notebook in notebooks/ runs headlessly, top to bottom without an error, on the checkpoint of a tiny GMM
run (the notebooks read GMM_OUT_DIR), so the notebooks cannot rot. The committed files are executed in memory and
left as they are."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def gmm_out_dir(shakespeare_char_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out_dir of a 4-step run of a tiny model with 3 experts on 3 segments of 8 characters."""
    out = tmp_path_factory.mktemp("out-gmm")
    train.main(
        ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=8",
         "--n_segments=3", "--gmm_experts=3", "--gmm_slots=2", "--batch_size=4", "--gradient_accumulation_steps=1",
         "--max_iters=4", "--eval_interval=2", "--eval_iters=2", "--log_interval=1", "--dataset=shakespeare_char",
         f"--data_dir={shakespeare_char_data}", f"--out_dir={out}"]
    )  # fmt: skip
    return out


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["gmm_analysis.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, gmm_out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMM_OUT_DIR", str(gmm_out_dir))  # the kernel inherits this process's environment
    monkeypatch.setenv("GMM_BATCHES", "2")
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # every plot was drawn and shown
    text = "".join(o.get("text", "") for o in outputs)
    assert "utilisation  hard share" in text and "segment 3: p =" in text
    assert path.read_bytes() == before
