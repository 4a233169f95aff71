"""Image tensors to grids and uint8 arrays, without torchvision (it cannot be installed beside the CPU torch)."""

from __future__ import annotations

import math

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
