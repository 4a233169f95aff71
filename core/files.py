"""Atomic file writes: the one writer every layer uses for JSON, results, PNGs, checkpoints and generated data."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Writes `path` through a hidden temporary file beside it, then `os.replace`s it onto `path`: readers see
    the old file or the new one, never half of one, and a failure (Ctrl-C included) leaves the old file and no
    temporary. `content` is the bytes, or a function that writes into the open binary file (a checkpoint's
    `torch.save`, an image encoder), so large outputs stream to disk. The suite's one atomic writer: run
    directory JSON, results, PNGs, checkpoints, synthetic data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=True) + "\n"
    write_atomic(path, text.encode())
