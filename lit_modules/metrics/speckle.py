"""Background speckle of generated images on a dark background (MNIST): the share of pixels that are grey
(`grey_min` < v < `stroke_min`) with no stroke pixel (v >= `stroke_min`) in their 3x3 neighbourhood, in percent.
Anti-aliased stroke edges are next to a stroke pixel and do not count; isolated specks away from the digit do.
A cheap check of what the eye sees in sample grids (deterministic samplers' grainy backgrounds), reported
beside the FID by `experiments.sample`; on the embedded MNIST images it is ~0.01 %."""

from __future__ import annotations

import torch
import torch.nn.functional as F

STROKE_MIN = 0.5  # a pixel of the digit
GREY_MIN = 0.1  # brighter than the background


def background_speckle_pct(
    images: torch.Tensor, stroke_min: float = STROKE_MIN, grey_min: float = GREY_MIN
) -> float:
    """Percent of pixels of `images` (N, 1, H, W) in [0, 1] that are grey and have no stroke pixel among their
    8 neighbours or themselves (module docstring)."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected single-channel images (N, 1, H, W), got shape {tuple(images.shape)}")
    x = images.float()
    near_stroke = F.max_pool2d((x >= stroke_min).float(), 3, stride=1, padding=1) > 0
    speck = (x > grey_min) & (x < stroke_min) & ~near_stroke
    return 100.0 * float(speck.float().mean())
