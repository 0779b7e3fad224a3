"""Pretrained models by name: OpenAI's GPT-2 sizes, a local folder, or a Hugging Face Hub repo id, and what kind of
export a folder holds. GPT.from_pretrained, train.py and sample.py (init_from) resolve names here.

    kind 'gpt2': a transformers GPT-2 folder (config.json with model_type 'gpt2'; export.py writes one for a model
                 without memory, and any save_pretrained of GPT2LMHeadModel is one)
    kind 'gmm':  the project's own format (config.json with every GPTConfig field, model.safetensors), written by
                 export.py (GPT.save_pretrained) for a model with memory
Both may hold meta.json, the tokenizer of the dataset the model was trained on (tokenizer.py's format).
"""

import json
import os
import re
from pathlib import Path
from typing import Any

EXPORT_FILES = ["*.json", "*.safetensors", "*.txt", "*.md"]  # all an export holds: no pickle is ever fetched
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(name: str) -> bool:
    """'owner/name' that is not a local path."""
    return bool(REPO_ID.fullmatch(name)) and not os.path.exists(name)


def local_folder(name: str) -> Path:
    """The folder `name` points at: itself if it is a folder, else the Hub repo's files (safetensors and JSON only),
    downloaded or from the local cache. A one-line ValueError if neither."""
    if os.path.isdir(name):
        return Path(name)
    if not is_repo_id(name):
        raise ValueError(f"'{name}' is neither a folder nor a Hugging Face Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=EXPORT_FILES))
    except Exception as e:  # offline, no such repo, no access: the library's own words, on one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"'{name}' could not be fetched from the Hugging Face Hub ({type(e).__name__}: {first})"
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder} is not an exported model: it has no config.json (export.py writes one)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} could not be read as JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return config


def export_kind(folder: Path) -> str:
    """'gpt2' or 'gmm' (see the module's docstring); a one-line ValueError for a folder that is neither."""
    config = read_config(folder)
    if config.get("model_type") == "gpt2":
        return "gpt2"
    if "gmm_experts" in config and "n_embd" in config:
        if not (folder / "model.safetensors").is_file():
            raise ValueError(f"{folder} is not an exported model: it has no model.safetensors (export.py writes one)")
        return "gmm"
    raise ValueError(
        f"{folder} is not an exported model: its config.json is neither a transformers GPT-2 (model_type 'gpt2') "
        "nor this project's (GPTConfig fields)"
    )


def export_meta(folder: Path) -> dict[str, Any] | None:
    """The tokenizer meta an export carries (meta.json), None if it has none (a plain GPT-2 folder: GPT-2's BPE)."""
    path = folder / "meta.json"
    if not path.is_file():
        return None
    from tokenizer import load_meta

    return load_meta(str(folder))
