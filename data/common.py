"""What the prepare scripts share: getting the text (a local file or a download) and writing a dataset folder.

A dataset folder holds train.bin and val.bin (flat uint16 token ids) and meta.json, written last, so that its
presence means the folder is complete.
"""

import http.client
import json
import os
import urllib.request
from pathlib import Path

import numpy as np

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def download(url: str, dest: Path) -> None:
    """Fetch url into dest through a temp file, so a failed or interrupted download leaves nothing behind."""
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(out_dir: Path, input_path: Path | None, url: str = TINY_SHAKESPEARE_URL) -> tuple[str, str]:
    """(text, source) from --input, else <out_dir>/input.txt, else a download of tiny-shakespeare from url.
    A RuntimeError is a one-line user error."""
    if input_path is not None:
        path, source = input_path, str(input_path)
        if not path.is_file():
            raise RuntimeError(f"--input {path} is not a file")
    else:
        path = out_dir / "input.txt"
        source = str(path)
        if not path.exists():
            print(f"downloading tiny-shakespeare to {path}")
            try:
                download(url, path)
            except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
                reason = getattr(e, "reason", None) or e
                raise RuntimeError(
                    f"could not download tiny-shakespeare ({reason}); put the text at {path} or pass --input PATH"
                ) from e
            source = url
    try:
        return path.read_text(encoding="utf-8"), source
    except UnicodeDecodeError as e:
        raise RuntimeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def write_dataset(out_dir: Path, train_ids: np.ndarray, val_ids: np.ndarray, meta: dict) -> None:
    """Flat uint16 bins, then meta.json last: its presence means the folder is complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_ids.astype(np.uint16).tofile(out_dir / "train.bin")
    val_ids.astype(np.uint16).tofile(out_dir / "val.bin")
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
