"""The classical inverses of the degradation g = h * f + eta (Gonzalez & Woods, ch. 5), as batched torch.

The degradation model itself (PSFs, blur, noise, boundary extension) is `core.degradation`; this module holds
the filters. Glossary: f -> clean image, g -> degraded image, h -> point-spread function (PSF), eta -> additive
noise with mean m and variance sigma^2; capital letters are 2-D DFTs (F, G, H, P); P -> DFT of the Laplacian
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

Boundary handling (`boundary`, `core.degradation.extend`), i.e. what the DFT filters assume lies beyond the
frame:
- `circular`: the DFT's own assumption, g is one period of a periodic image. Exact when the blur really was
  circular (the textbook model g = h (*) f + eta, `data.blur_boundary=circular`).
- `symmetric`: g is extended by its whole-sample mirror image to one period of size (2H-2) x (2W-2), which is
  continuous across the period's borders; the result is the top-left H x W. Exact for a symmetric PSF
  (h(-x, y) = h(x, y) = h(x, -y): Gaussian, box) blurred with reflection at the frame
  (`data.blur_boundary=reflect`); approximate for asymmetric PSFs (motion at an angle, the 3x3 example matrix).
- `reflect`: g is padded by reflection (`pad` pixels per side, default twice the PSF size) and cropped back,
  which moves the wrap-around jump away from the image but does not remove it.
The CLS residual target counts the pixels of the extended image (the extension repeats the noise, so its
energy per pixel is sigma^2). A boundary model that does not match the blur leaves a residual the noise cannot
explain; the search then drives gamma towards 0 and the result rings (measured in docs/classical.md: use `circular` for
circular blur and `symmetric` for reflective blur with a symmetric PSF).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from core.degradation import (
    BOUNDARIES,
    DegenerateInputError,
    check_noise,
    check_psf,
    crop,
    extend,
    per_channel,
    psf_to_otf,
)
from core.errors import ConfigError

log = logging.getLogger(__name__)

LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))

__all__ = [
    "BOUNDARIES",
    "LAPLACIAN",
    "DegenerateInputError",
    "GammaSearch",
    "cls_auto",
    "cls_filter",
    "cls_residual_energy",
    "inverse_filter",
    "laplacian_otf",
    "oracle_nsr",
    "parseval_energy",
    "wiener_filter",
]


# ------------------------------------------------------------------------------------------------ DFTs
def laplacian_otf(shape_hw: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """P(u, v): the DFT of the Laplacian operator p(x, y) (Gonzalez & Woods eq. 5.9-4), as an OTF."""
    return psf_to_otf(torch.tensor(LAPLACIAN, dtype=dtype, device=device), shape_hw)


def parseval_weights(width: int, n_cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per column of a half spectrum (rfft2 of width `width`, `n_cols` = width // 2 + 1 columns): 2 for the
    columns that stand for two conjugate columns, 1 for column 0 (and W/2 for even W)."""
    weight = torch.full((n_cols,), 2.0, dtype=dtype, device=device)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return weight


def parseval_energy(X: torch.Tensor, width: int) -> torch.Tensor:
    """sum |x|^2 over the last two dims of x = irfft2(X, width), from its half spectrum (Parseval): the columns
    other than 0 (and W/2 for even W) stand for two conjugate columns. Returns X.shape[:-2]."""
    weight = parseval_weights(width, X.shape[-1], X.real.dtype, X.device)
    h = X.shape[-2]
    return (X.real**2 + X.imag**2).mul(weight).sum((-2, -1)) / (h * width)


# ------------------------------------------------------------------------------------------ filters
def _prepare(g: torch.Tensor, psf: torch.Tensor, noise_mean: Any, boundary: str, pad: int | None):
    check_psf(psf, g.shape[-2:])
    m = torch.as_tensor(noise_mean, dtype=g.dtype, device=g.device)
    g = g - (m.view(-1, 1, 1, 1) if m.ndim else m)
    gp, p = extend(g, boundary, pad, psf)
    shape = gp.shape[-2:]
    H = per_channel(psf_to_otf(psf.to(g.dtype), shape))
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
            raise ConfigError(
                f"inverse filter cutoff must be > 0 (a fraction of 0.5 cycles/pixel), got {cutoff}"
            )
        fy = torch.fft.fftfreq(shape[0], dtype=g.dtype, device=g.device)
        fx = torch.fft.rfftfreq(shape[1], dtype=g.dtype, device=g.device)
        keep = keep & ((fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() <= cutoff * 0.5)
    Fh = torch.where(keep, G / torch.where(keep, H, torch.ones_like(H)), torch.zeros_like(G))
    return crop(torch.fft.irfft2(Fh, s=shape), p)


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
    return crop(torch.fft.irfft2(Fh, s=shape), p)


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
    return crop(torch.fft.irfft2(_cls_spectrum(G, H, P2, gam), s=shape), p)


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


Phi = Callable[..., torch.Tensor]


def residual_target(
    noise_var: Any, b: int, c: int, shape: tuple[int, int], rel_tol: float, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(||eta - m||^2, a) per image: the noise energy M N C sigma^2 the residual must match, and the accuracy
    a = rel_tol * ||eta - m||^2 of ||r||^2 = ||eta||^2 +- a (Gonzalez & Woods eq. 5.9-7, zero-mean part)."""
    var = torch.as_tensor(noise_var, dtype=like.dtype, device=like.device).expand(b).clone()
    target = var * c * shape[0] * shape[1]
    return target, rel_tol * target


def residual_energy_fn(G: torch.Tensor, H: torch.Tensor, P2: torch.Tensor, shape: tuple[int, int]) -> Phi:
    """phi(gamma) = ||r(gamma)||^2 per image (Gonzalez & Woods eq. 5.9-6), with r = g - h * f_hat (eq. 5.9-5)
    from R = G - H F_hat = G gamma|P|^2 / (|H|^2 + gamma|P|^2) (eq. 5.9-8) and Parseval:
    ||r||^2 = sum_(u,v) w(u,v) |G|^2 (gamma|P|^2 / (|H|^2 + gamma|P|^2))^2 / (M N). The channel-summed,
    Parseval-weighted |G|^2 is computed once, so each evaluation is real arithmetic on one spectrum."""
    weight = parseval_weights(shape[1], G.shape[-1], G.real.dtype, G.device)
    A = _abs2(G).sum(-3) * weight / (shape[0] * shape[1])  # (B, H, W')
    H2 = _abs2(H).squeeze(-3) if H.ndim == 4 else _abs2(H)  # (B|1, H, W') or (H, W')

    def phi(gam: torch.Tensor, safe: bool = False) -> torch.Tensor:
        """gamma > 0 keeps |H|^2 + gamma|P|^2 > 0 (H(0, 0) != 0); `safe` handles gamma = 0 (where H = 0 the
        filter gives 0, so R = G there)."""
        gp2 = gam.view(-1, 1, 1) * P2
        den = H2 + gp2
        if safe:
            ratio = torch.where(
                den > 0, gp2 / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den)
            )
        else:
            ratio = gp2 / den
        return (A * ratio.square_()).sum((-2, -1))

    return phi


@dataclass
class _Bracket:
    """The state of the gamma search: lo <= gamma <= hi with phi(lo), phi(hi); iterations so far and trace."""

    lo: torch.Tensor
    hi: torch.Tensor
    r_lo: torch.Tensor
    r_hi: torch.Tensor
    it: int
    trace: list[dict[str, Any]]


def bracket_gamma(
    phi: Phi,
    target: torch.Tensor,
    tol: torch.Tensor,
    active: torch.Tensor,
    gamma_init: float,
    gamma_range: tuple[float, float],
    max_iter: int,
) -> _Bracket:
    """Step 1 of the search: from gamma_init, multiply hi by 10 until phi(hi) >= target - a, then divide lo by
    10 until phi(lo) <= target + a (phi is non-decreasing in gamma, Gonzalez & Woods eq. 5.9-6..7)."""
    lo_lim, hi_lim = gamma_range
    lo = torch.full(target.shape, gamma_init, dtype=target.dtype, device=target.device)
    hi = lo.clone()
    trace: list[dict[str, Any]] = []
    it = 0
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
    return _Bracket(lo, hi, r_lo, r_hi, it, trace)


def bisect_gamma(
    phi: Phi, br: _Bracket, target: torch.Tensor, tol: torch.Tensor, active: torch.Tensor, max_iter: int
) -> torch.Tensor:
    """Step 2 of the search, on log gamma: gamma = sqrt(lo * hi); phi < target - a -> lo = gamma;
    phi > target + a -> hi = gamma; else done (||r||^2 = ||eta||^2 +- a, Gonzalez & Woods eq. 5.9-7). Images
    already inside the band at an end of the bracket keep that end. Updates `br.it` and `br.trace`."""
    lo, hi = br.lo, br.hi
    in_hi, in_lo = (br.r_hi - target).abs() <= tol, (br.r_lo - target).abs() <= tol
    gam = torch.where(in_hi, hi, torch.where(in_lo, lo, (lo * hi).sqrt()))
    r = phi(gam)
    done = ~active | ((r - target).abs() <= tol)
    while br.it < max_iter and not bool(done.all()):
        lo = torch.where(~done & (r < target - tol), gam, lo)
        hi = torch.where(~done & (r > target + tol), gam, hi)
        gam = torch.where(done, gam, (lo * hi).sqrt())
        r = phi(gam)
        br.it += 1
        done = done | ((r - target).abs() <= tol) | (hi / lo <= 1 + 1e-12)
        br.trace.append({"iteration": br.it, "step": "bisect", "gamma": gam.tolist(), "residual": r.tolist()})
    return gam


def _log_unconverged(search: GammaSearch, gamma_range: tuple[float, float]) -> None:
    for entry in search.trace:
        log.debug("CLS gamma search %s", entry)
    converged = search.converged
    if not bool(converged.all()):
        log.warning(
            "CLS gamma search: %d image(s) did not reach ||r||^2 = ||eta||^2 +- a (residual %s, target %s): "
            "the noise energy exceeds what any gamma in %s can explain",
            int((~converged).sum()),
            search.residual[~converged].tolist(),
            search.target[~converged].tolist(),
            gamma_range,
        )


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
    """CLS (Gonzalez & Woods eq. 5.9-4) with gamma chosen per image from the noise mean and variance only:
    ||r||^2 = ||eta||^2 +- a with a = rel_tol * ||eta||^2 (eq. 5.9-5..8; module docstring for the noise mean).

    Search, on log gamma, for all images of the batch at once: `bracket_gamma`, then `bisect_gamma`.
    Zero noise variance gives gamma = 0 (the inverse filter). A target above phi(inf) (= the energy of g
    without its mean) cannot be met: gamma stops at gamma_range[1] and `converged` is False.
    """
    check_noise(noise_mean, noise_var)
    _, p, shape, H, G = _prepare(g, psf, noise_mean, boundary, pad)
    b, c = g.shape[:2]
    P2 = _abs2(laplacian_otf(shape, g.dtype, g.device))
    target, tol = residual_target(noise_var, b, c, shape, rel_tol, g)
    phi = residual_energy_fn(G, H, P2, shape)
    active = target > 0  # zero noise: gamma = 0, no search
    br = bracket_gamma(phi, target, tol, active, gamma_init, gamma_range, max_iter)
    gam = bisect_gamma(phi, br, target, tol, active, max_iter)
    gam = torch.where(active, gam, torch.zeros_like(gam))
    r = phi(gam, safe=True)
    converged = ((r - target).abs() <= tol) | ~active
    search = GammaSearch(gam, r, target, tol, converged, br.it, br.trace)
    _log_unconverged(search, gamma_range)
    fh = crop(torch.fft.irfft2(_cls_spectrum(G, H, P2, gam.view(-1, 1, 1, 1)), s=shape), p)
    return fh, search
