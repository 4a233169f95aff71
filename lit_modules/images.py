"""Image tensors to grids and uint8 arrays, without torchvision (it cannot be installed beside the CPU torch),
and the logging of labelled figures (`core.figures`) from a LightningModule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tiles (N, C, H, W) images row by row into one (C, H', W') image, `nrow` images per row."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = images.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def to_uint8(image: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(C, H, W) float in `value_range` -> (H, W) for grey or (H, W, C) uint8, rounded and clipped.

    W&B stores float images as-is and shows [0, 1] floats as black, so every logged image goes through here.
    """
    lo, hi = value_range
    x = (image.detach().float().cpu() - lo) / (hi - lo)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.numpy()


def log_figure(module: Any, key: str, image: np.ndarray, caption: str | None = None) -> None:
    """Logs one finished (H, W, 3) uint8 figure (`core.figures.figure`) under `key` to every logger of
    `module` that takes images (W&B, and the PNG writer the entry points always attach). Rank zero only;
    nothing without a trainer."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not trainer.is_global_zero:
        return
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise TypeError(
            f"log_figure({key!r}): expected an (H, W, 3) uint8 figure, got {image.dtype} {image.shape}"
        )
    for logger in module.loggers:
        log_image = getattr(logger, "log_image", None)
        if callable(log_image):
            kwargs = {"caption": [caption]} if caption else {}
            log_image(key=key, images=[image], step=module.global_step, **kwargs)


def psnr_text(value: float) -> str:
    """'PSNR 24.31 dB' (an identical image: 'PSNR inf dB (identical)')."""
    value = float(value)
    if math.isinf(value) and value > 0:
        return "PSNR inf dB (identical)"
    return f"PSNR {value:.2f} dB"


def seed_row_labels(first_seed: int, n: int, ncols: int) -> list[str]:
    """One label per grid row of n images with seeds first_seed, first_seed + 1, ...: 'seeds 0-7', ..."""
    labels = []
    for start in range(0, n, ncols):
        lo, hi = first_seed + start, first_seed + min(start + ncols, n) - 1
        labels.append(f"seed {lo}" if lo == hi else f"seeds {lo}-{hi}")
    return labels
