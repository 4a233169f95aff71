"""The suite's PSNR/SSIM protocol for restoration models (low-light enhancement, deblurring).

Every restoration model (NeRCo, CLS, the classical baselines) scores with this module, so their numbers are
computed the same way and `metrics.json["protocol"]` says how (`RestorationProtocol.describe()`).

Protocol (defaults; docs/references.md section 3):
- images are float RGB in [0, 1] (models map their range with `core.imageops.to_unit_range`);
  the output is clipped to [0, 1] first (`clip`), optionally quantised to 8 bits (`quantize_8bit`, what
  scoring saved PNGs gives); the ground truth is used as loaded (8-bit PNG/JPG values / 255).
- optional GT-mean correction (`gt_mean`, off by default): the output is multiplied by
  mean(grey(gt)) / mean(grey(output)) (BT.601 grey), then clipped to [0, 1], per image. Papers that use it
  say so; numbers with and without it are not comparable.
- colour: `rgb` (default, all three channels) or `y` (BT.601 luma of YCbCr, the SR convention).
- `crop_border` pixels removed on each side before scoring (0 by default).
- PSNR per image: 10 log10(data_range^2 / MSE) with the MSE over all channels and pixels of the image,
  data_range = 1 fixed; the reported number is the mean over images (not the PSNR of the pooled MSE).
- SSIM per image: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5, normalised), K1 = 0.01,
  K2 = 0.03, data range 1, population (not sample) covariances, computed per channel on the "valid" part of
  the image (5 pixels from each border are not window centres) and averaged over channels and pixels; the
  reported number is the mean over images. This equals scikit-image's `structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)` (which
  filters with reflection and then crops the same 5-pixel border; a test checks agreement to 1e-4) and of
  Wang et al.'s MATLAB `ssim_index` ('valid' filtering). torchmetrics' `StructuralSimilarityIndexMeasure`
  differs slightly: it averages over the whole reflection-padded image, border included (e.g. 0.9454 vs
  0.9466 on a 40x50 noisy test image), so its numbers are not interchangeable with these.
- Computed in float64 (`dtype`), whatever the model's dtype.

Metric keys (docs/DEVELOPING.md): `test/psnr`, `test/ssim` for a single-method model; `test/<method>/psnr`
for several methods in one run; `test/<setting>/<method>/psnr` for a sweep of degradations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from core.imageops import rgb_to_grey, rgb_to_y

COLOURS = ("rgb", "y")


@dataclass(frozen=True)
class RestorationProtocol:
    """How restoration metrics are computed (module docstring). `describe()` lands in metrics.json."""

    data_range: float = 1.0
    colour: str = "rgb"
    gt_mean: bool = False
    clip: bool = True
    quantize_8bit: bool = False
    crop_border: int = 0
    ssim_kernel: int = 11
    ssim_sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"metric protocol colour={self.colour!r} is not one of {COLOURS}")
        if self.data_range != 1.0:
            raise ValueError(
                f"metric protocol data_range={self.data_range}: the suite scores images in [0, 1] with data range 1 "
                "(map images to [0, 1] instead of changing the range)"
            )
        if self.ssim_kernel % 2 != 1 or self.ssim_kernel < 3:
            raise ValueError(f"metric protocol ssim_kernel must be odd and >= 3, got {self.ssim_kernel}")
        if self.crop_border < 0:
            raise ValueError(f"metric protocol crop_border must be >= 0, got {self.crop_border}")

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> RestorationProtocol:
        cfg = dict(cfg or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"metric protocol: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**cfg)

    def describe(self) -> dict[str, Any]:
        colour = "RGB (mean over the 3 channels)" if self.colour == "rgb" else "Y of BT.601 YCbCr (BasicSR)"
        out = "clipped to [0, 1]" if self.clip else "not clipped"
        if self.quantize_8bit:
            out += ", quantised to 8 bits"
        return {
            "name": "suite-restoration-v1",
            "images": f"float in [0, 1], data_range={self.data_range}; output {out}; ground truth as loaded",
            "colour": colour,
            "gt_mean_correction": self.gt_mean,
            "crop_border": self.crop_border,
            "psnr": "10*log10(data_range^2 / MSE) per image (MSE over channels and pixels), mean over images",
            "ssim": (
                f"Gaussian window {self.ssim_kernel}x{self.ssim_kernel}, sigma {self.ssim_sigma}, K1={self.k1}, "
                f"K2={self.k2}, population covariances, valid region (no padding), per channel, mean over "
                "channels and pixels, then mean over images (= skimage structural_similarity with "
                "gaussian_weights=True, use_sample_covariance=False)"
            ),
            "dtype": "float64",
        }


# ------------------------------------------------------------------------------------------ the math
def gt_mean_correct(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred * mean(grey(target)) / mean(grey(pred)) per image, clipped to [0, 1]; (B, 3, H, W)."""
    m_pred = rgb_to_grey(pred).mean(dim=(1, 2, 3), keepdim=True)
    m_target = rgb_to_grey(target).mean(dim=(1, 2, 3), keepdim=True)
    return (pred * m_target / m_pred.clamp_min(1e-12)).clamp(0, 1)


def prepare(
    pred: torch.Tensor, target: torch.Tensor, p: RestorationProtocol
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies the protocol's clipping, quantisation, GT-mean, colour and border crop; float64 out."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"restoration metrics need (B, C, H, W) images of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred, target = pred.detach().to(torch.float64), target.detach().to(torch.float64)
    if p.clip:
        pred = pred.clamp(0, 1)
    if p.quantize_8bit:
        pred = torch.round(pred * 255) / 255
    if p.gt_mean:
        pred = gt_mean_correct(pred, target)
    if p.colour == "y":
        if pred.shape[1] != 3:
            raise ValueError(f"colour=y needs RGB images, got {pred.shape[1]} channels")
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    b = p.crop_border
    if b:
        pred, target = pred[..., b:-b, b:-b], target[..., b:-b, b:-b]
    return pred, target


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) PSNR in dB of each image; +inf for identical images."""
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps (scipy's gaussian_filter with truncate=(size//2)/sigma)."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def valid_filter_matrix(g: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n - k + 1) matrix T with x @ T = the "valid" correlation of x's last dim with the k taps g."""
    k = g.numel()
    m = n - k + 1
    t = torch.zeros(n, m, dtype=g.dtype, device=g.device)
    cols = torch.arange(m, device=g.device)
    for i in range(k):
        t[cols + i, cols] = g[i]
    return t


def _filter_banded(g: torch.Tensor, h: int, w: int):
    tw, th = valid_filter_matrix(g, w), valid_filter_matrix(g, h)

    def filt(x: torch.Tensor) -> torch.Tensor:  # "valid" separable Gaussian: th^T @ x @ tw
        return th.transpose(0, 1) @ (x @ tw)

    return filt


def _filter_cpu(g: torch.Tensor):
    from scipy.ndimage import correlate1d

    taps = g.cpu().numpy()
    r = (len(taps) - 1) // 2

    def filt(x: torch.Tensor) -> torch.Tensor:  # filter everything, keep the "valid" region
        y = correlate1d(correlate1d(x.numpy(), taps, axis=-1, mode="nearest"), taps, axis=-2, mode="nearest")
        return torch.from_numpy(y[..., r:-r, r:-r])

    return filt


def ssim_per_image(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    banded: bool = False,
) -> torch.Tensor:
    """(B,) SSIM of each (C, H, W) image (module docstring); H and W must be >= kernel_size.

    The Gaussian filtering runs through scipy.ndimage on CPU tensors and as a banded matrix product on other
    devices (`banded=True` forces the latter; both are float64-exact, a test checks they agree)."""
    h, w = pred.shape[-2:]
    if h < kernel_size or w < kernel_size:
        raise ValueError(
            f"SSIM with a {kernel_size}x{kernel_size} window needs images of at least that size, got {h}x{w}"
        )
    g = gaussian_window(kernel_size, sigma, pred.dtype, pred.device)
    filt = _filter_cpu(g) if pred.device.type == "cpu" and not banded else _filter_banded(g, h, w)
    mu_x, mu_y = filt(pred), filt(target)
    sxx = filt(pred * pred) - mu_x * mu_x
    syy = filt(target * target) - mu_y * mu_y
    sxy = filt(pred * target) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def score(
    pred: torch.Tensor, target: torch.Tensor, p: RestorationProtocol | None = None
) -> dict[str, torch.Tensor]:
    """Per-image {"psnr": (B,), "ssim": (B,)} under protocol `p` (default protocol if None)."""
    p = p or RestorationProtocol()
    x, y = prepare(pred, target, p)
    return {
        "psnr": psnr_per_image(x, y, p.data_range),
        "ssim": ssim_per_image(x, y, p.data_range, p.ssim_kernel, p.ssim_sigma, p.k1, p.k2),
    }


# ------------------------------------------------------------------------------------- accumulation
def metric_key(split: str, method: str | None, name: str) -> str:
    """`split/name` for one method, `split/<method>/name` for several (method may hold a setting level)."""
    return f"{split}/{method}/{name}" if method else f"{split}/{name}"


def _item(value: Any, i: int, batch: int) -> Any:
    """Row value of image i: element i of a (B,) tensor or a length-B list, else the value itself."""
    if torch.is_tensor(value):
        return value.item() if value.ndim == 0 else value[i].item()
    if isinstance(value, list | tuple) and len(value) == batch:
        return value[i]
    return value


class RestorationScores(nn.Module):
    """Means of per-image PSNR/SSIM per method (torchmetrics, so DDP-safe) and the per-image rows.

    `update(method, pred, target, names)` takes images in [0, 1]; `log(module)` logs every mean as
    `split/<method>/psnr` (or `split/psnr` for method ""). Methods are registered on first use, so a sweep
    can add (setting, method) combinations as they come; under DDP every rank must see the same methods.
    """

    NAMES = ("psnr", "ssim")

    def __init__(self, protocol: RestorationProtocol | None = None, split: str = "test"):
        super().__init__()
        self.protocol = protocol or RestorationProtocol()
        self.split = split
        self.means = nn.ModuleDict()
        self.keys: dict[str, str] = {}  # ModuleDict-safe name -> metric key
        self.rows: list[dict[str, Any]] = []
        self.order: list[str] = []  # methods in order of first appearance

    def _metric(self, method: str, name: str, device: torch.device) -> MeanMetric:
        key = metric_key(self.split, method, name)
        safe = key.replace("/", "__").replace(".", "_")
        if safe not in self.means:
            self.means[safe] = MeanMetric().set_dtype(torch.float64).to(device)
            self.keys[safe] = key
        if method not in self.order:
            self.order.append(method)
        return self.means[safe]

    def update(
        self,
        method: str,
        pred: torch.Tensor,
        target: torch.Tensor,
        names: list[str],
        rows: bool = True,
        values: dict[str, torch.Tensor] | None = None,
        **extra: Any,
    ) -> dict[str, torch.Tensor]:
        """Scores a batch (or takes already computed `values`), adds it to the means of `method`, and records
        one row per image unless `rows=False` (an aggregate over settings that already have rows)."""
        values = values if values is not None else score(pred, target, self.protocol)
        for name, v in values.items():
            self._metric(method, name, pred.device).update(v)
        if not rows:
            return values
        for i, image in enumerate(names):
            row = {"image": image, "method": method or "model"}
            row.update({k: float(v[i]) for k, v in values.items()})
            row.update({k: _item(v, i, len(names)) for k, v in extra.items()})
            self.rows.append(row)
        return values

    def log(self, module: Any) -> None:
        for safe, metric in self.means.items():
            # metric_attribute: the metric may have been created after Lightning indexed the module's metrics
            module.log(self.keys[safe], metric, on_step=False, on_epoch=True, metric_attribute=safe)

    def gather_rows(self) -> list[dict[str, Any]]:
        """Per-image rows of every rank (DDP), in rank order; this rank's rows otherwise."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            out: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(out, self.rows)
            return [r for part in out for r in part]
        return list(self.rows)

    def reset_rows(self) -> None:
        self.rows = []
