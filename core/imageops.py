"""Pure tensor helpers for restoration models: value ranges, colour conversions, padding to a multiple of N.

Full-resolution evaluation: networks such as CycleGAN's ResNet generator need H and W divisible by 4. The
suite's DataModules hand over test images at full resolution; a model pads, runs, and crops back:

    y = run_padded(net, x, multiple=4)           # == crop_to(net(pad_to_multiple(x, 4)[0]), x.shape[-2:])

so every output pixel corresponds to an input pixel and metrics compare images of the ground truth's size.
NeRCo's released test code instead *resizes* to a multiple of 4 (CycleGAN's `__make_power_2`, bicubic);
`resize_to_multiple` reproduces that for a faithful run (docs/references.md section 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ConfigError

VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))

# ITU-R BT.601 luma weights (OpenCV's RGB2GRAY, PIL's "L")
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def to_unit_range(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Maps images in `value_range` ((0, 1) or (-1, 1)) to [0, 1] (no clipping)."""
    lo, hi = value_range
    return x if (lo, hi) == (0.0, 1.0) else (x - lo) / (hi - lo)


def from_unit_range(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = value_range
    return x if (lo, hi) == (0.0, 1.0) else x * (hi - lo) + lo


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 1, H, W), BT.601 luma."""
    w = x.new_tensor(GREY_WEIGHTS).view(3, 1, 1)
    return (x * w).sum(-3, keepdim=True)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) Y of BT.601 YCbCr in [16/255, 235/255], the convention
    of BasicSR's `rgb2ycbcr(img, y_only=True)` and of MATLAB's `rgb2ycbcr` used by SR/low-light papers."""
    w = x.new_tensor((65.481, 128.553, 24.966)).view(3, 1, 1)
    return ((x * w).sum(-3, keepdim=True) + 16.0) / 255.0


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pads (..., H, W) at the bottom and right so both sizes divide by `multiple`.

    Returns the padded tensor and the original (H, W) for `crop_to`. `mode` is F.pad's: `reflect` (default;
    falls back to `replicate` where the image is too small to reflect), `replicate`, `constant`.
    """
    if multiple < 1:
        raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    squeeze = x.ndim == 3
    y = x.unsqueeze(0) if squeeze else x
    y = F.pad(y, (0, pw, 0, ph), mode=mode)
    return (y.squeeze(0) if squeeze else y), (h, w)


def crop_to(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Undoes `pad_to_multiple`: the top-left (H, W) of (..., H', W')."""
    h, w = size_hw
    return x[..., :h, :w]


def run_padded(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int, mode: str = "reflect"
) -> torch.Tensor:
    """fn applied at a size divisible by `multiple`, output cropped back to x's (H, W)."""
    padded, size = pad_to_multiple(x, multiple, mode)
    return crop_to(fn(padded), size)


def resize_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(N, C, H, W) resized (bicubic) to the nearest multiple of `multiple` per side, at least `multiple`:
    the released NeRCo/CycleGAN test behaviour (`round(h / base) * base`); the output then has another size
    than the ground truth, so a faithful evaluation resizes it back before scoring."""
    h, w = x.shape[-2:]
    nh, nw = (max(multiple, int(round(s / multiple)) * multiple) for s in (h, w))
    if (nh, nw) == (h, w):
        return x
    return F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False)


def check_value_range(value_range: Any) -> tuple[float, float]:
    vr = tuple(float(v) for v in value_range)
    if vr not in VALUE_RANGES:
        raise ConfigError(f"value_range must be [0, 1] or [-1, 1], got {list(value_range)}")
    return vr  # type: ignore[return-value]


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
