"""Small on-disk layouts of LOL, LOL-v2 and LSRW for the low-light tests.

Every high image is random; its low partner is `high // 4` (exactly), so a test can tell from the pixels
whether two images were paired correctly and were cropped/flipped the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data.layouts import LAYOUTS


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # JPEG is lossy: the tests that check pixel relations use PNG layouts
        Image.fromarray(array).save(path, quality=100)
    else:
        Image.fromarray(array).save(path)
    return path


def pair_arrays(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    high = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return high // 4, high


def make_layout(
    root: Path, name: str, n_train: int = 4, n_test: int = 2, size: tuple[int, int] = (24, 32), seed: int = 0
) -> Path:
    """Writes a tiny copy of layout `name` under root; returns root. LSRW: each camera gets n pairs, with
    the same file names in both cameras (as in the real data set)."""
    layout = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for fp in layout.splits[split]:
            for i in range(count):
                low, high = pair_arrays(rng, *size)
                stem = f"{i + 1:05d}" if layout.low_prefix else str(i + 1)
                write(root / fp.low / f"{layout.low_prefix}{stem}{layout.extension}", low)
                write(root / fp.high / f"{layout.high_prefix}{stem}{layout.extension}", high)
    return root
