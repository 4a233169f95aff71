"""Classical (non-learned) low-light enhancement baselines, scored with the suite's PSNR/SSIM protocol.

Each method maps a low-light image in [0, 1] to an enhanced image in [0, 1]; none sees the ground truth.

| method | what it does |
| --- | --- |
| `identity` | the low-light input itself (the floor every method must beat) |
| `gamma` | global gamma correction, out = x^(1/gamma) (gamma = 2.2 by default) |
| `auto_gamma` | per image, out = x^p with p = log(target) / log(mean luma of x), so that a mid-grey of the image's mean goes to `target` (0.5) |
| `he` | histogram equalisation (skimage.exposure.equalize_hist, 256 bins) of the V channel of HSV; hue and saturation kept |
| `clahe` | contrast-limited adaptive histogram equalisation (skimage.exposure.equalize_adapthist: V channel of HSV, kernel 1/8 of the image, clip limit 0.01) |
| `max_rgb_retinex` | LIME's initial illumination map without its refinement (Guo et al. 2017): T = Gaussian-smoothed max over RGB, out = x / max(T, eps)^gamma, gamma = 0.8 |

They are non-trainable LightningModules, evaluated by `python -m experiments.evaluate
experiment=lowlight_classical data=<lol|lolv2_real|lolv2_synthetic|lsrw|lowlight_folder>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.imageops import from_unit_range, rgb_to_grey
from lit_modules.restoration import RestorationModule


# ------------------------------------------------------------------------------------------ methods
def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def gamma_correction(x: torch.Tensor, gamma: float = 2.2) -> torch.Tensor:
    return x.clamp(0, 1).pow(1.0 / gamma)


def auto_gamma(x: torch.Tensor, target: float = 0.5, eps: float = 1e-4) -> torch.Tensor:
    mean = rgb_to_grey(x.clamp(0, 1)).mean(dim=(1, 2, 3), keepdim=True).clamp(eps, 1 - eps)
    p = math.log(target) / torch.log(mean)
    return x.clamp(0, 1).pow(p)


def _per_image_numpy(x: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Applies an (H, W, 3) float64 -> (H, W, 3) numpy function to each image of a (B, 3, H, W) batch."""
    outs = []
    for img in x.detach().clamp(0, 1).cpu().to(torch.float64):
        outs.append(torch.from_numpy(np.ascontiguousarray(fn(img.permute(1, 2, 0).numpy()))).permute(2, 0, 1))
    return torch.stack(outs).to(device=x.device, dtype=x.dtype)


def histogram_equalisation(x: torch.Tensor, nbins: int = 256) -> torch.Tensor:
    from skimage import color, exposure

    def he(img: np.ndarray) -> np.ndarray:
        hsv = color.rgb2hsv(img)
        hsv[..., 2] = exposure.equalize_hist(hsv[..., 2], nbins=nbins)
        return color.hsv2rgb(hsv)

    return _per_image_numpy(x, he)


def clahe(
    x: torch.Tensor, clip_limit: float = 0.01, kernel_size: int | None = None, nbins: int = 256
) -> torch.Tensor:
    from skimage import exposure

    return _per_image_numpy(
        x,
        lambda img: exposure.equalize_adapthist(
            img, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins
        ),
    )


def max_rgb_retinex(
    x: torch.Tensor, gamma: float = 0.8, sigma: float = 2.0, eps: float = 0.02
) -> torch.Tensor:
    t = x.clamp(0, 1).amax(dim=1, keepdim=True)
    if sigma > 0:
        radius = max(1, int(3 * sigma + 0.5))
        k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        g = torch.exp(-0.5 * (k / sigma) ** 2)
        g = g / g.sum()
        t = F.pad(t, (radius, radius, radius, radius), mode="replicate")
        t = F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return (x / t.clamp_min(eps).pow(gamma)).clamp(0, 1)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "identity": identity,
    "gamma": gamma_correction,
    "auto_gamma": auto_gamma,
    "he": histogram_equalisation,
    "clahe": clahe,
    "max_rgb_retinex": max_rgb_retinex,
}
DESCRIPTIONS = {
    "identity": "the low-light input",
    "gamma": "x^(1/gamma)",
    "auto_gamma": "x^p, p = log(target)/log(mean BT.601 luma of x)",
    "he": "skimage equalize_hist on the HSV V channel",
    "clahe": "skimage equalize_adapthist (HSV V channel)",
    "max_rgb_retinex": "x / max(Gaussian-smoothed max_c x, eps)^gamma (LIME's initial illumination map)",
}


class ClassicalLowLight(RestorationModule):
    """Runs every configured method on each test image and scores it: `test/<method>/{psnr,ssim}`.

    `methods` maps a method name from `METHODS` to its keyword arguments (an empty dict for the defaults).
    """

    def __init__(
        self,
        methods: dict[str, dict[str, Any] | None] | list[str] | None = None,
        value_range: Any = (0.0, 1.0),
        protocol: dict[str, Any] | None = None,
        num_side_by_side: int = 4,
    ):
        super().__init__(value_range=value_range, protocol=protocol, num_side_by_side=num_side_by_side)
        if methods is None:
            methods = {name: {} for name in METHODS}
        elif isinstance(methods, list):
            methods = {name: {} for name in methods}
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"model.methods: unknown method(s) {unknown}; known: {sorted(METHODS)}")
        if not methods:
            raise ValueError("model.methods is empty: name at least one of " + ", ".join(METHODS))
        self.methods = {name: dict(kwargs or {}) for name, kwargs in methods.items()}
        self.save_hyperparameters()

    def enhance(self, low01: torch.Tensor) -> dict[str, torch.Tensor]:
        """{method: enhanced image in [0, 1]} for a (B, 3, H, W) batch in [0, 1]."""
        return {name: METHODS[name](low01, **kwargs) for name, kwargs in self.methods.items()}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self.enhance(self.unit(batch["low"]))
        self.score_outputs(batch, {m: from_unit_range(o, self.value_range) for m, o in outputs.items()})

    def method_descriptions(self) -> dict[str, str]:
        return {
            name: DESCRIPTIONS[name] + (f" {kwargs}" if kwargs else " (defaults)")
            for name, kwargs in self.methods.items()
        }
