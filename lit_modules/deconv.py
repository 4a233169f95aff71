"""Degradation g = h * f + eta and its classical inverses (seed 000; Gonzalez & Woods, ch. 5), as batched torch.

Glossary: f -> clean image, g -> degraded image, h -> point-spread function (PSF), eta -> additive noise with
mean m and variance sigma^2; capital letters are 2-D DFTs (F, G, H, P); P -> DFT of the Laplacian
[[0, -1, 0], [-1, 4, -1], [0, -1, 0]]; M x N -> the image size the DFT runs on. Images are (B, C, H, W)
float tensors (grey: C = 1, RGB: each channel filtered alike); PSFs are (kh, kw) or one per image (B, kh, kw);
everything runs on the tensors' device (CPU or GPU).

Filters (F_hat = filter * G, f_hat = IDFT(F_hat)):
- inverse:  F_hat = G / H, set to 0 where |H| < eps and, with `cutoff`, outside the radius cutoff * 0.5
  cycles/pixel (Gonzalez's radially limited inverse filter; cutoff=None: no limit).
- Wiener:   F_hat = H* G / (|H|^2 + K), K a constant, or the oracle noise-to-signal ratio
  K(u, v) = S_eta / S_f = M N sigma^2 / |F(u, v)|^2 (needs the clean image: labelled "oracle").
- CLS:      F_hat = H* G / (|H|^2 + gamma |P|^2)  (Gonzalez & Woods eq. 5.9-4), gamma fixed, or found from the
  noise mean and variance alone so that the residual r = g - h * f_hat satisfies ||r||^2 = ||eta||^2 +- a
  (eq. 5.9-5..8). ||r||^2 is computed in the frequency domain, R = G - H F_hat = G gamma|P|^2 / (|H|^2 +
  gamma|P|^2) (Parseval), and grows monotonically with gamma (every term does), so a bracketing search on
  log gamma followed by bisection converges (`cls_auto`; every iteration is recorded and logged).

Noise mean: Gonzalez & Woods write ||eta||^2 = M N (sigma^2 + m^2). The Laplacian sums to 0, so P(0, 0) = 0
and the CLS residual has no DC component: the m^2 part can never be matched and the search would
over-smooth to make up for it. All filters here therefore subtract the known noise mean from g first and
match the zero-mean part, ||eta - m||^2 = M N sigma^2 (identical to the book when m = 0).

Boundary handling (`boundary`), i.e. what the DFT filters assume lies beyond the frame:
- `circular`: the DFT's own assumption, g is one period of a periodic image. Exact when the blur really was
  circular (the textbook model g = h (*) f + eta, `data.blur_boundary=circular`).
- `symmetric`: g is extended by its whole-sample mirror image to one period of size (2H-2) x (2W-2), which is
  continuous across the period's borders; the result is the top-left H x W. Exact for a symmetric PSF
  (h(-x, y) = h(x, y) = h(x, -y): Gaussian, box) blurred with reflection at the frame
  (`data.blur_boundary=reflect`); approximate for asymmetric PSFs (motion at an angle, the seed's matrix).
- `reflect`: g is padded by reflection (`pad` pixels per side, default twice the PSF size) and cropped back,
  which moves the wrap-around jump away from the image but does not remove it.
The CLS residual target counts the pixels of the extended image (the extension repeats the noise, so its
energy per pixel is sigma^2). A boundary model that does not match the blur leaves a residual the noise cannot
explain; the search then drives gamma towards 0 and the result rings (measured in README: use `circular` for
circular blur and `symmetric` for reflective blur with a symmetric PSF).
The PSF is centred on its element (kh // 2, kw // 2) (as scikit-image's `uft.ir2tf`), so a symmetric PSF
does not shift the image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))
# Seed 000's example "degradation_matrix" (it sums to 3; as a PSF it is normalised to sum 1 by default).
SEED_MATRIX = ((0.9, 0.1, 0.0), (0.1, 0.8, 0.1), (0.0, 0.1, 0.9))
BOUNDARIES = ("circular", "symmetric", "reflect")
PSF_KINDS = ("gaussian", "motion", "box", "seed", "matrix", "image", "identity")


class DegenerateInputError(ValueError):
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
    if size < 1:
        raise DegenerateInputError(f"box PSF: size must be >= 1, got {size}")
    return torch.full((size, size), 1.0 / size**2, dtype=torch.float64)


def matrix_psf(kernel: Any, normalize: bool = True, what: str = "matrix PSF") -> torch.Tensor:
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
    {kind: box, size} | {kind: seed} | {kind: matrix, kernel} | {kind: image, path} | {kind: identity}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    try:
        if kind == "gaussian":
            return gaussian_psf(float(spec["sigma"]), spec.get("size"))
        if kind == "motion":
            return motion_psf(float(spec["length"]), float(spec.get("angle", 0.0)), spec.get("size"))
        if kind == "box":
            return box_psf(int(spec["size"]))
        if kind == "seed":
            return matrix_psf(SEED_MATRIX, spec.get("normalize", True), "seed 000's 3x3 matrix")
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


def laplacian_otf(shape_hw: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return psf_to_otf(torch.tensor(LAPLACIAN, dtype=dtype, device=device), shape_hw)


def _spectral(otf: torch.Tensor) -> torch.Tensor:
    """(H, W') or (B, H, W') -> broadcastable against (B, C, H, W')."""
    return otf.unsqueeze(-3) if otf.ndim == 3 else otf


def parseval_energy(X: torch.Tensor, width: int) -> torch.Tensor:
    """sum |x|^2 over the last two dims of x = irfft2(X, width), from its half spectrum (Parseval): the columns
    other than 0 (and W/2 for even W) stand for two conjugate columns. Returns X.shape[:-2]."""
    weight = torch.full((X.shape[-1],), 2.0, dtype=X.real.dtype, device=X.device)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    h = X.shape[-2]
    return (X.real**2 + X.imag**2).mul(weight).sum((-2, -1)) / (h * width)


# ------------------------------------------------------------------------------------------ boundaries
def default_pad(psf: torch.Tensor) -> int:
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
    raise ValueError(f"boundary={boundary!r} is not one of {BOUNDARIES}")


def _crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return x[..., top : top + h, left : left + w]


# ------------------------------------------------------------------------------------------ degradation
def blur(f: torch.Tensor, psf: torch.Tensor, boundary: str = "circular") -> torch.Tensor:
    """h * f: circular convolution (`circular`), or linear convolution of f extended by reflection
    (`reflect`: the scene mirrored at the frame, 'd c b | a b c d'). f: (B, C, H, W); psf: (kh, kw) or
    (B, kh, kw)."""
    check_psf(psf, f.shape[-2:])
    if boundary not in ("circular", "reflect"):
        raise ValueError(f"blur boundary={boundary!r} is not one of ('circular', 'reflect')")
    box = (0, 0, *f.shape[-2:])
    if boundary == "reflect":
        p = min(max(psf.shape[-2:]), f.shape[-2] - 1, f.shape[-1] - 1)
        f = F.pad(f, (p, p, p, p), mode="reflect")
        box = (p, p, *box[2:])
    H = _spectral(psf_to_otf(psf.to(f.dtype), f.shape[-2:]))
    return _crop(torch.fft.irfft2(torch.fft.rfft2(f) * H, s=f.shape[-2:]), box)


def degrade(
    f: torch.Tensor,
    psf: torch.Tensor,
    noise_mean: float = 0.0,
    noise_var: float = 0.0,
    generator: torch.Generator | None = None,
    boundary: str = "circular",
) -> tuple[torch.Tensor, torch.Tensor]:
    """g = h * f + eta, eta ~ N(noise_mean, noise_var) i.i.d. per pixel and channel; returns (g, eta)."""
    check_noise(noise_mean, noise_var)
    g = blur(f, psf, boundary)
    eta = torch.randn(g.shape, generator=generator, dtype=g.dtype, device="cpu").to(g.device)
    eta = noise_mean + math.sqrt(noise_var) * eta
    return g + eta, eta


# ------------------------------------------------------------------------------------------ filters
def _prepare(g: torch.Tensor, psf: torch.Tensor, noise_mean: Any, boundary: str, pad: int | None):
    check_psf(psf, g.shape[-2:])
    m = torch.as_tensor(noise_mean, dtype=g.dtype, device=g.device)
    g = g - (m.view(-1, 1, 1, 1) if m.ndim else m)
    gp, p = extend(g, boundary, pad, psf)
    shape = gp.shape[-2:]
    H = _spectral(psf_to_otf(psf.to(g.dtype), shape))
    return gp, p, shape, H, torch.fft.rfft2(gp)


def inverse_filter(
    g: torch.Tensor,
    psf: torch.Tensor,
    cutoff: float | None = None,
    eps: float = 1e-8,
    noise_mean: Any = 0.0,
    boundary: str = "circular",
    pad: int | None = None,
) -> torch.Tensor:
    """F_hat = G / H where |H| >= eps and the radius <= cutoff * 0.5 cycles/pixel, else 0."""
    gp, p, shape, H, G = _prepare(g, psf, noise_mean, boundary, pad)
    keep = H.abs() >= eps
    if cutoff is not None:
        if cutoff <= 0:
            raise ValueError(
                f"inverse filter cutoff must be > 0 (a fraction of 0.5 cycles/pixel), got {cutoff}"
            )
        fy = torch.fft.fftfreq(shape[0], dtype=g.dtype, device=g.device)
        fx = torch.fft.rfftfreq(shape[1], dtype=g.dtype, device=g.device)
        keep = keep & ((fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() <= cutoff * 0.5)
    Fh = torch.where(keep, G / torch.where(keep, H, torch.ones_like(H)), torch.zeros_like(G))
    return _crop(torch.fft.irfft2(Fh, s=shape), p)


def oracle_nsr(
    f: torch.Tensor, noise_var: Any, boundary: str = "circular", pad: int | None = None, psf=None
) -> torch.Tensor:
    """K(u, v) = M N sigma^2 / |F(u, v)|^2 per image and channel (the Wiener filter's noise-to-signal power
    ratio with the clean image's periodogram as S_f: an oracle, it needs f), on the extended image the
    filters see with this `boundary`."""
    fp, _ = extend(f, boundary, pad, psf if psf is not None else torch.ones(1, 1))
    Fs = torch.fft.rfft2(fp)
    v = torch.as_tensor(noise_var, dtype=f.dtype, device=f.device)
    v = v.view(-1, 1, 1, 1) if v.ndim else v
    mn = fp.shape[-2] * fp.shape[-1]
    return mn * v / (Fs.real**2 + Fs.imag**2).clamp_min(1e-30)


def wiener_filter(
    g: torch.Tensor,
    psf: torch.Tensor,
    k: float | torch.Tensor = 1e-3,
    noise_mean: Any = 0.0,
    boundary: str = "circular",
    pad: int | None = None,
) -> torch.Tensor:
    """F_hat = H* G / (|H|^2 + K); K a scalar, (B,) or a spectrum broadcastable to (B, C, H, W//2+1)."""
    gp, p, shape, H, G = _prepare(g, psf, noise_mean, boundary, pad)
    K = torch.as_tensor(k, dtype=g.dtype, device=g.device)
    if K.ndim == 1:
        K = K.view(-1, 1, 1, 1)
    if (K < 0).any():
        raise DegenerateInputError(f"Wiener K must be >= 0, got {k}")
    Fh = H.conj() * G / (H.real**2 + H.imag**2 + K)
    return _crop(torch.fft.irfft2(Fh, s=shape), p)


def cls_filter(
    g: torch.Tensor,
    psf: torch.Tensor,
    gamma: float | torch.Tensor,
    noise_mean: Any = 0.0,
    boundary: str = "circular",
    pad: int | None = None,
) -> torch.Tensor:
    """Constrained least squares with a fixed gamma (scalar or (B,)): F_hat = H* G / (|H|^2 + gamma |P|^2).
    With gamma = 0 it is the inverse filter (0 where H = 0)."""
    gp, p, shape, H, G = _prepare(g, psf, noise_mean, boundary, pad)
    gam = _gamma(gamma, g)
    P2 = _abs2(laplacian_otf(shape, g.dtype, g.device))
    return _crop(torch.fft.irfft2(_cls_spectrum(G, H, P2, gam), s=shape), p)


def _abs2(x: torch.Tensor) -> torch.Tensor:
    return x.real**2 + x.imag**2


def _gamma(gamma: Any, g: torch.Tensor) -> torch.Tensor:
    gam = torch.as_tensor(gamma, dtype=g.dtype, device=g.device)
    if (gam < 0).any():
        raise DegenerateInputError(f"CLS gamma must be >= 0, got {gamma}")
    return gam.view(-1, 1, 1, 1) if gam.ndim else gam


def _cls_spectrum(G: torch.Tensor, H: torch.Tensor, P2: torch.Tensor, gam: torch.Tensor) -> torch.Tensor:
    den = _abs2(H) + gam * P2
    ok = den > 0
    return torch.where(ok, H.conj() * G / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(G))


def cls_residual_energy(
    G: torch.Tensor, H: torch.Tensor, P2: torch.Tensor, gamma: torch.Tensor, width: int
) -> torch.Tensor:
    """||r||^2 = ||g - h * f_hat(gamma)||^2 per image (summed over channels and pixels), via Parseval."""
    R = G - H * _cls_spectrum(G, H, P2, gamma)
    return parseval_energy(R, width).sum(-1)


@dataclass
class GammaSearch:
    """What `cls_auto` did: the gamma found per image and every iteration of the search."""

    gamma: torch.Tensor  # (B,)
    residual: torch.Tensor  # (B,) ||r||^2 at gamma
    target: torch.Tensor  # (B,) ||eta - m||^2 = (pixels) * channels * sigma^2
    tolerance: torch.Tensor  # (B,) a
    converged: torch.Tensor  # (B,) bool
    iterations: int
    trace: list[dict[str, Any]] = field(default_factory=list)


def cls_auto(
    g: torch.Tensor,
    psf: torch.Tensor,
    noise_mean: Any,
    noise_var: Any,
    rel_tol: float = 1e-3,
    gamma_init: float = 1e-3,
    gamma_range: tuple[float, float] = (1e-12, 1e8),
    max_iter: int = 200,
    boundary: str = "circular",
    pad: int | None = None,
) -> tuple[torch.Tensor, GammaSearch]:
    """CLS with gamma chosen per image from the noise mean and variance only: ||r||^2 = ||eta||^2 +- a with
    a = rel_tol * ||eta||^2 (Gonzalez & Woods sec. 5.9; module docstring for the noise mean).

    Search, on log gamma, for all images of the batch at once:
      1. bracket: from gamma_init, multiply hi by 10 until phi(hi) >= target - a, divide lo by 10 until
         phi(lo) <= target + a (phi(gamma) = ||r(gamma)||^2 is non-decreasing);
      2. bisect: gamma = sqrt(lo * hi); phi < target - a -> lo = gamma; phi > target + a -> hi = gamma; else done.
    Zero noise variance gives gamma = 0 (the inverse filter). A target above phi(inf) (= the energy of g
    without its mean) cannot be met: gamma stops at gamma_range[1] and `converged` is False.
    """
    check_noise(noise_mean, noise_var)
    gp, p, shape, H, G = _prepare(g, psf, noise_mean, boundary, pad)
    b, c = g.shape[:2]
    P2 = laplacian_otf(shape, g.dtype, g.device)
    P2 = _abs2(P2)
    var = torch.as_tensor(noise_var, dtype=g.dtype, device=g.device).expand(b).clone()
    target = var * c * shape[0] * shape[1]
    tol = rel_tol * target

    # ||r||^2 = sum_(u,v) w(u,v) |G|^2 (gamma|P|^2 / (|H|^2 + gamma|P|^2))^2 / (M N): precompute the
    # channel-summed, Parseval-weighted |G|^2 once, so each evaluation is real arithmetic on one spectrum
    weight = torch.full((G.shape[-1],), 2.0, dtype=g.dtype, device=g.device)
    weight[0] = 1.0
    if shape[1] % 2 == 0:
        weight[-1] = 1.0
    A = _abs2(G).sum(-3) * weight / (shape[0] * shape[1])  # (B, H, W')
    H2 = _abs2(H).squeeze(-3) if H.ndim == 4 else _abs2(H)  # (B|1, H, W') or (H, W')

    def phi(gam: torch.Tensor, safe: bool = False) -> torch.Tensor:
        """||r(gamma)||^2 per image; gamma > 0 keeps |H|^2 + gamma|P|^2 > 0 (H(0, 0) != 0), `safe` handles
        gamma = 0 (where H = 0 the filter gives 0, so R = G there)."""
        gp2 = gam.view(-1, 1, 1) * P2
        den = H2 + gp2
        if safe:
            ratio = torch.where(
                den > 0, gp2 / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den)
            )
        else:
            ratio = gp2 / den
        return (A * ratio.square_()).sum((-2, -1))

    lo_lim, hi_lim = gamma_range
    active = var > 0  # zero noise: gamma = 0, no search
    lo = torch.full((b,), gamma_init, dtype=g.dtype, device=g.device)
    hi = lo.clone()
    trace: list[dict[str, Any]] = []
    it = 0
    # 1. bracket
    r_hi = phi(hi)
    while it < max_iter and (grow := active & (r_hi < target - tol) & (hi < hi_lim)).any():
        hi = torch.where(grow, (hi * 10).clamp(max=hi_lim), hi)
        r_hi = phi(hi)
        it += 1
        trace.append({"iteration": it, "step": "bracket_up", "gamma": hi.tolist(), "residual": r_hi.tolist()})
    r_lo = phi(lo)
    while it < max_iter and (shrink := active & (r_lo > target + tol) & (lo > lo_lim)).any():
        lo = torch.where(shrink, (lo / 10).clamp(min=lo_lim), lo)
        r_lo = phi(lo)
        it += 1
        trace.append(
            {"iteration": it, "step": "bracket_down", "gamma": lo.tolist(), "residual": r_lo.tolist()}
        )
    # 2. bisect (images already inside the band at an end of the bracket keep that end)
    in_hi, in_lo = (r_hi - target).abs() <= tol, (r_lo - target).abs() <= tol
    gam = torch.where(in_hi, hi, torch.where(in_lo, lo, (lo * hi).sqrt()))
    r = phi(gam)
    done = ~active | ((r - target).abs() <= tol)
    while it < max_iter and not bool(done.all()):
        lo = torch.where(~done & (r < target - tol), gam, lo)
        hi = torch.where(~done & (r > target + tol), gam, hi)
        gam = torch.where(done, gam, (lo * hi).sqrt())
        r = phi(gam)
        it += 1
        done = done | ((r - target).abs() <= tol) | (hi / lo <= 1 + 1e-12)
        trace.append({"iteration": it, "step": "bisect", "gamma": gam.tolist(), "residual": r.tolist()})
    gam = torch.where(active, gam, torch.zeros_like(gam))
    r = phi(gam, safe=True)
    converged = ((r - target).abs() <= tol) | ~active
    for entry in trace:
        log.debug("CLS gamma search %s", entry)
    if not bool(converged.all()):
        log.warning(
            "CLS gamma search: %d image(s) did not reach ||r||^2 = ||eta||^2 +- a (residual %s, target %s): "
            "the noise energy exceeds what any gamma in %s can explain",
            int((~converged).sum()),
            r[~converged].tolist(),
            target[~converged].tolist(),
            gamma_range,
        )
    fh = _crop(torch.fft.irfft2(_cls_spectrum(G, H, P2, gam.view(-1, 1, 1, 1)), s=shape), p)
    return fh, GammaSearch(gam, r, target, tol, converged, it, trace)
