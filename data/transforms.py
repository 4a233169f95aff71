"""Transforms for image pairs that keep low and high aligned: one set of random parameters for both sides.

Order: resize (optional, bicubic on the uint8 image, aspect ratio ignored, as NeRCo's `--preprocess resize`
to 512x512) -> random crop (optional) -> random flips -> float tensor in `value_range`.
The random parameters come from a `numpy.random.Generator` the caller seeds per sample (see
`data.lowlight`), so a sample's crop depends only on its seed, not on the worker that loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import ConfigError, InputError
from core.imageops import check_value_range


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    """None, an int (square) or [h, w] -> (h, w)."""
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ConfigError(f"{name} must be null, a positive int or [height, width], got {value}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class CropFlip:
    """Random parameters of one draw: crop box (top, left, height, width) and flips."""

    top: int
    left: int
    height: int
    width: int
    hflip: bool
    vflip: bool


def resize_uint8(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8, PIL bicubic (what CycleGAN/NeRCo's data loader uses)."""
    from PIL import Image

    if image.shape[:2] == tuple(size_hw):
        return image
    return np.asarray(Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def sample_crop_flip(
    rng: np.random.Generator,
    size_hw: tuple[int, int],
    crop_hw: tuple[int, int] | None,
    hflip: bool,
    vflip: bool,
    where: str = "image",
) -> CropFlip:
    h, w = size_hw
    ch, cw = crop_hw or (h, w)
    if ch > h or cw > w:
        raise ConfigError(f"{where}: crop {ch}x{cw} (h x w) is larger than the image {h}x{w}")
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return CropFlip(top, left, ch, cw, bool(hflip and rng.random() < 0.5), bool(vflip and rng.random() < 0.5))


def apply_crop_flip(image: np.ndarray, p: CropFlip) -> np.ndarray:
    out = image[p.top : p.top + p.height, p.left : p.left + p.width]
    if p.hflip:
        out = out[:, ::-1]
    if p.vflip:
        out = out[::-1]
    return np.ascontiguousarray(out)


def to_tensor(image: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in `value_range` ([0, 1]: x/255; [-1, 1]: x/127.5 - 1)."""
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # e.g. np.asarray of a PIL image
        image = image.copy()
    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
    if value_range == (-1.0, 1.0):
        x = x.mul_(2.0).sub_(1.0)
    return x


@dataclass
class PairTransform:
    """Applies the same resize, crop and flips to a low/high pair (or independent draws with `independent`).

    - `resize`: None, an int or (h, w): bicubic resize of both images first (NeRCo: 512 -> 512x512).
    - `crop`: None, an int or (h, w): a random crop of that size (the same box on both sides).
    - `hflip`/`vflip`: random flips with probability 1/2 each.
    - `independent`: draw the crop/flips separately for the two images (unpaired training: NeRCo flips
      trainA and trainB independently); paired data must keep it False.
    - `value_range`: (0, 1) or (-1, 1).
    """

    resize: Any = None
    crop: Any = None
    hflip: bool = False
    vflip: bool = False
    independent: bool = False
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        self.resize = _pair(self.resize, "resize")
        self.crop = _pair(self.crop, "crop")
        self.value_range = check_value_range(self.value_range)

    @property
    def is_random(self) -> bool:
        return self.crop is not None or self.hflip or self.vflip

    def __call__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        rng: np.random.Generator | None = None,
        where: str = "pair",
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, CropFlip | None]]:
        """Returns (low, high) tensors and the parameters used (for tests and debugging)."""
        if self.resize is not None:
            low, high = resize_uint8(low, self.resize), resize_uint8(high, self.resize)
        if not self.independent and low.shape != high.shape:
            raise InputError(
                f"{where}: low is {low.shape[1]}x{low.shape[0]} but high is {high.shape[1]}x{high.shape[0]}"
            )
        params: dict[str, CropFlip | None] = {"low": None, "high": None}
        if self.is_random:
            if rng is None:
                raise ValueError("PairTransform with random crop/flips needs a numpy Generator")
            params["low"] = sample_crop_flip(rng, low.shape[:2], self.crop, self.hflip, self.vflip, where)
            params["high"] = (
                sample_crop_flip(rng, high.shape[:2], self.crop, self.hflip, self.vflip, where)
                if self.independent
                else params["low"]
            )
            low, high = apply_crop_flip(low, params["low"]), apply_crop_flip(high, params["high"])
        return to_tensor(low, self.value_range), to_tensor(high, self.value_range), params
