"""Shared pytest setup: put the repo root on sys.path so tests import model, train, tokenizer... as top-level modules
(`uv run pytest` does not add the working directory itself)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
