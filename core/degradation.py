"""The degradation model g = h * f + eta (Gonzalez & Woods, Digital Image Processing, eq. 5.1-1), batched torch.

Glossary: f -> clean image, g -> degraded image, h -> point-spread function (PSF), eta -> additive noise with
mean m and variance sigma^2; capital letters are 2-D DFTs (F, G, H); M x N -> the image size the DFT runs on.
Images are (B, C, H, W) float tensors (grey: C = 1, RGB: each channel degraded alike); PSFs are (kh, kw) or one
per image (B, kh, kw); everything runs on the tensors' device (CPU or GPU).

PSFs (`make_psf`): Gaussian, uniform linear motion, box, a matrix (the 3x3 example matrix among them), an
image file, or the identity; each is normalised to sum 1 by default, so g keeps f's mean brightness. A PSF is
centred on its element (kh // 2, kw // 2) (as scikit-image's `uft.ir2tf`), so a symmetric PSF does not shift
the image.

Blur boundaries (`blur(..., boundary)`), i.e. what lies beyond the frame of f:
- `circular`: f is one period of a periodic image, g = h (*) f (the textbook model, which the DFT inverts);
- `reflect`: the scene mirrored at the frame ('d c b | a b c d'), as for a camera.
`extend` gives the image the DFT filters of `lit_modules.deconv` see for their boundary handling
(`circular`, `symmetric`, `reflect`; described there).

Degenerate settings (a PSF summing to 0 or larger than the image, non-finite values, a negative noise
variance) raise `DegenerateInputError`, a `core.errors.ConfigError` naming what is wrong.

This module is a leaf: it imports nothing of the suite except `core.errors`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import ConfigError

# A 3x3 example degradation matrix (it sums to 3; as a PSF it is normalised to sum 1 by default): near-identity
# with a little diagonal spread, an asymmetric PSF for testing the boundary models.
EXAMPLE_MATRIX = ((0.9, 0.1, 0.0), (0.1, 0.8, 0.1), (0.0, 0.1, 0.9))
BOUNDARIES = ("circular", "symmetric", "reflect")  # what the DFT filters assume beyond the frame (`extend`)
BLUR_BOUNDARIES = ("circular", "reflect")  # how `blur` treats the frame
PSF_KINDS = ("gaussian", "motion", "box", "example3x3", "matrix", "image", "identity")
PSF_KIND_ALIASES = {"seed": "example3x3"}  # an older spelling of the same kind


class DegenerateInputError(ConfigError):
    """A PSF or noise setting that the degradation model or the filters cannot work with."""


# ------------------------------------------------------------------------------------------------ PSFs
def _normalise(psf: torch.Tensor, what: str) -> torch.Tensor:
    total = psf.sum()
    if not torch.isfinite(psf).all():
        raise DegenerateInputError(f"{what}: the PSF has non-finite entries")
    if abs(float(total)) <= 1e-12 * max(float(psf.abs().sum()), 1e-300):
        raise DegenerateInputError(
            f"{what}: the PSF sums to {float(total):.3g}; a blur kernel must sum to a non-zero value (it is "
            "normalised to sum 1: g keeps f's mean brightness)"
        )
    return psf / total


def gaussian_psf(sigma: float, size: int | None = None) -> torch.Tensor:
    """Isotropic Gaussian, `size` x `size` (default 2 * ceil(3 sigma) + 1), normalised to sum 1."""
    if sigma <= 0:
        raise DegenerateInputError(f"gaussian PSF: sigma must be > 0, got {sigma}")
    size = size or 2 * math.ceil(3 * sigma) + 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return _normalise(g[:, None] * g[None, :], "gaussian PSF")


def motion_psf(length: float, angle: float, size: int | None = None, oversample: int = 16) -> torch.Tensor:
    """Uniform linear motion of `length` pixels at `angle` degrees (counter-clockwise from the +x axis, y up),
    through the kernel centre: points sampled every 1/`oversample` pixel along the segment are splatted
    bilinearly into the grid, then normalised to sum 1. Size: the smallest odd square that holds the segment."""
    if length < 1:
        raise DegenerateInputError(f"motion PSF: length must be >= 1 pixel, got {length}")
    theta = math.radians(angle)
    dx, dy = math.cos(theta), -math.sin(theta)  # rows grow downwards
    half = (length - 1) / 2
    size = size or 2 * math.ceil(half * max(abs(dx), abs(dy)) + 1) + 1
    c = (size - 1) / 2
    n = max(2, int(math.ceil((length - 1) * oversample)) + 1)
    t = torch.linspace(-half, half, n, dtype=torch.float64)
    xs, ys = c + t * dx, c + t * dy
    psf = torch.zeros(size, size, dtype=torch.float64)
    x0, y0 = xs.floor(), ys.floor()
    for ox in (0, 1):
        for oy in (0, 1):
            w = (1 - (xs - x0 - ox).abs()) * (1 - (ys - y0 - oy).abs())
            xi, yi = (x0 + ox).long(), (y0 + oy).long()
            ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size) & (w > 0)
            psf.index_put_((yi[ok], xi[ok]), w[ok], accumulate=True)
    return _normalise(psf, "motion PSF")


def box_psf(size: int) -> torch.Tensor:
    """A `size` x `size` uniform average."""
    if size < 1:
        raise DegenerateInputError(f"box PSF: size must be >= 1, got {size}")
    return torch.full((size, size), 1.0 / size**2, dtype=torch.float64)


def matrix_psf(kernel: Any, normalize: bool = True, what: str = "matrix PSF") -> torch.Tensor:
    """A PSF given as a 2-D array, normalised to sum 1 (or only checked to have a non-zero sum)."""
    k = torch.as_tensor(kernel, dtype=torch.float64)
    if k.ndim != 2 or min(k.shape) < 1:
        raise DegenerateInputError(f"{what}: expected a 2-D kernel, got shape {tuple(k.shape)}")
    return _normalise(k, what) if normalize else _check_sum(k, what)


def _check_sum(k: torch.Tensor, what: str) -> torch.Tensor:
    _normalise(k, what)  # raises for a zero sum
    return k


def image_psf(path: str | Path, normalize: bool = True) -> torch.Tensor:
    """A PSF from an image file: its grey levels (PIL "L", or 16-bit as is), normalised to sum 1."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(
                img.convert("I") if img.mode.startswith("I;16") else img.convert("L"), dtype=np.float64
            )
    except (OSError, UnidentifiedImageError) as err:
        raise DegenerateInputError(f"image PSF {path}: not a readable image ({err})") from err
    return matrix_psf(arr, normalize, f"image PSF {path}")


def make_psf(spec: dict[str, Any]) -> torch.Tensor:
    """A PSF from a config dict: {kind: gaussian, sigma, size?} | {kind: motion, length, angle} |
    {kind: box, size} | {kind: example3x3} | {kind: matrix, kernel} | {kind: image, path} | {kind: identity}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    kind = PSF_KIND_ALIASES.get(kind, kind)
    try:
        if kind == "gaussian":
            return gaussian_psf(float(spec["sigma"]), spec.get("size"))
        if kind == "motion":
            return motion_psf(float(spec["length"]), float(spec.get("angle", 0.0)), spec.get("size"))
        if kind == "box":
            return box_psf(int(spec["size"]))
        if kind == "example3x3":
            return matrix_psf(EXAMPLE_MATRIX, spec.get("normalize", True), "the 3x3 example matrix")
        if kind == "matrix":
            return matrix_psf(spec["kernel"], spec.get("normalize", True))
        if kind == "image":
            return image_psf(spec["path"], spec.get("normalize", True))
        if kind == "identity":
            return torch.ones(1, 1, dtype=torch.float64)
    except KeyError as err:
        raise DegenerateInputError(f"PSF {{kind: {kind}}} needs the key {err}") from err
    raise DegenerateInputError(f"unknown PSF kind {kind!r}; known: {PSF_KINDS}")


def check_psf(psf: torch.Tensor, image_hw: tuple[int, int], what: str = "PSF") -> None:
    """Raises DegenerateInputError for a PSF that sums to 0, is not finite, or is larger than the image."""
    kh, kw = psf.shape[-2:]
    h, w = image_hw
    if kh > h or kw > w:
        raise DegenerateInputError(f"{what}: the PSF ({kh}x{kw}) is larger than the image ({h}x{w})")
    sums = psf.reshape(-1, kh * kw).sum(-1)
    mags = psf.reshape(-1, kh * kw).abs().sum(-1)
    if not torch.isfinite(psf).all():
        raise DegenerateInputError(f"{what}: the PSF has non-finite entries")
    if (sums.abs() <= 1e-12 * mags.clamp_min(1e-300)).any():
        raise DegenerateInputError(f"{what}: the PSF sums to 0 (its DC gain H(0, 0) is 0: nothing to invert)")


def check_noise(mean: Any, var: Any, what: str = "noise") -> None:
    """Raises DegenerateInputError for a non-finite noise mean or variance, or a negative variance."""
    v = torch.as_tensor(var, dtype=torch.float64)
    m = torch.as_tensor(mean, dtype=torch.float64)
    if not (torch.isfinite(v).all() and torch.isfinite(m).all()):
        raise DegenerateInputError(f"{what}: mean and variance must be finite, got {mean}, {var}")
    if (v < 0).any():
        raise DegenerateInputError(f"{what}: the noise variance must be >= 0, got {var}")


def pad_psf(psf: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Zero-pads a (kh, kw) PSF to (H, W) keeping its centre (kh // 2, kw // 2) at (H // 2, W // 2), so PSFs
    of several sizes can share one batch tensor."""
    kh, kw = psf.shape[-2:]
    h, w = size_hw
    top, left = h // 2 - kh // 2, w // 2 - kw // 2
    return F.pad(psf, (left, w - kw - left, top, h - kh - top))


# ------------------------------------------------------------------------------------------------ DFTs
def psf_to_otf(psf: torch.Tensor, shape_hw: tuple[int, int]) -> torch.Tensor:
    """H = rfft2 of the PSF zero-padded to (H, W) and rolled so its centre (kh//2, kw//2) is at (0, 0) (the
    same transfer function as scikit-image's `uft.ir2tf`). (kh, kw) -> (H, W//2+1); (B, kh, kw) -> (B, H, W//2+1)."""
    kh, kw = psf.shape[-2:]
    h, w = shape_hw
    if kh > h or kw > w:
        raise DegenerateInputError(f"the PSF ({kh}x{kw}) is larger than the image ({h}x{w})")
    padded = F.pad(psf, (0, w - kw, 0, h - kh))
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def per_channel(otf: torch.Tensor) -> torch.Tensor:
    """(H, W') or (B, H, W') -> broadcastable against (B, C, H, W')."""
    return otf.unsqueeze(-3) if otf.ndim == 3 else otf


# ------------------------------------------------------------------------------------------ boundaries
def default_pad(psf: torch.Tensor) -> int:
    """Reflection padding per side of the `reflect` boundary handling: twice the PSF size."""
    return 2 * max(psf.shape[-2:])


def symmetric_extension(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2H-2, 2W-2): x followed by its whole-sample mirror image along both axes, one
    period of the even (reflect) extension of x, which is continuous across the period's borders."""
    if min(x.shape[-2:]) < 2:
        raise DegenerateInputError(
            f"symmetric boundary handling needs images of at least 2x2, got {tuple(x.shape[-2:])}"
        )
    x = torch.cat([x, x.flip(-2)[..., 1:-1, :]], dim=-2)
    return torch.cat([x, x.flip(-1)[..., :, 1:-1]], dim=-1)


def extend(
    g: torch.Tensor, boundary: str, pad: int | None, psf: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The image the DFT filters see, and the (top, left, height, width) box of g inside it."""
    h, w = g.shape[-2:]
    if boundary == "circular":
        return g, (0, 0, h, w)
    if boundary == "symmetric":
        return symmetric_extension(g), (0, 0, h, w)
    if boundary == "reflect":
        p = default_pad(psf) if pad is None else int(pad)
        p = max(0, min(p, h - 1, w - 1))
        return (F.pad(g, (p, p, p, p), mode="reflect") if p else g), (p, p, h, w)
    raise ConfigError(f"boundary={boundary!r} is not one of {BOUNDARIES}")


def crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The (top, left, height, width) box of x (the inverse of `extend`)."""
    top, left, h, w = box
    return x[..., top : top + h, left : left + w]


# ------------------------------------------------------------------------------------------ degradation
def blur(f: torch.Tensor, psf: torch.Tensor, boundary: str = "circular") -> torch.Tensor:
    """h * f: circular convolution (`circular`), or linear convolution of f extended by reflection
    (`reflect`: the scene mirrored at the frame, 'd c b | a b c d'). f: (B, C, H, W); psf: (kh, kw) or
    (B, kh, kw)."""
    check_psf(psf, f.shape[-2:])
    if boundary not in BLUR_BOUNDARIES:
        raise ConfigError(f"blur boundary={boundary!r} is not one of {BLUR_BOUNDARIES}")
    box = (0, 0, *f.shape[-2:])
    if boundary == "reflect":
        p = min(max(psf.shape[-2:]), f.shape[-2] - 1, f.shape[-1] - 1)
        f = F.pad(f, (p, p, p, p), mode="reflect")
        box = (p, p, *box[2:])
    H = per_channel(psf_to_otf(psf.to(f.dtype), f.shape[-2:]))
    return crop(torch.fft.irfft2(torch.fft.rfft2(f) * H, s=f.shape[-2:]), box)


def degrade(
    f: torch.Tensor,
    psf: torch.Tensor,
    noise_mean: float = 0.0,
    noise_var: float = 0.0,
    generator: torch.Generator | None = None,
    boundary: str = "circular",
) -> tuple[torch.Tensor, torch.Tensor]:
    """g = h * f + eta (Gonzalez & Woods eq. 5.1-1), eta ~ N(noise_mean, noise_var) i.i.d. per pixel and
    channel, drawn on the CPU from `generator`; returns (g, eta)."""
    check_noise(noise_mean, noise_var)
    g = blur(f, psf, boundary)
    eta = torch.randn(g.shape, generator=generator, dtype=g.dtype, device="cpu").to(g.device)
    eta = noise_mean + math.sqrt(noise_var) * eta
    return g + eta, eta
