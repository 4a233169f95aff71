"""DDPM (Ho et al. 2020) with eps / x0 / v targets, classifier-free guidance (Ho & Salimans
2022), EMA weights, and a sampler zoo (lit_modules/diffusion/samplers.py); a `GenerativeModule`
(lit_modules/generative.py: sampling requests, grids, the FID loop).

Glossary: x -> data image in [0, 1] from the DataModule; x0 = 2x - 1 in [-1, 1] (the diffusion's data space,
as in DDPM); t -> timestep index in [0, T) (index t is the paper's t+1, see schedules.py); eps -> N(0, I)
noise; y -> class label, `num_classes` being the learned null class.

Training (DDPM Algorithm 1): t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, loss
= mean squared error between the network output and the target (eps: L_simple, eq. 14; or x0; or v). For a
class-conditional network, labels are replaced by the null class with probability `cond_drop_prob`.

EMA: the weights are averaged by the `runtime.ema.EMA` callback (Lightning's EMAWeightAveraging), which
swaps the averaged weights in for validation and writes them as the checkpoint's `state_dict`; so
`val/loss`, the validation sample grid (drawn in `validation_step`, while the averaged weights are in place),
the test metrics, `experiments.sample` and `experiments.evaluate` all use EMA weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from lit_modules.diffusion import (
    PREDICTION_TYPES,
    SAMPLERS,
    SPACINGS,
    alphas_cumprod_from_betas,
    check_steps,
    make_betas,
    q_sample,
    timestep_schedule,
    training_target,
)
from lit_modules.generative import GenerativeModule, check_lr_decay
from lit_modules.images import samples_figure as _samples_figure
from lit_modules.sampling import PerImageNoise


class DDPM(GenerativeModule):
    """A denoising diffusion model around any `net(x_t, t[, y])` (the suite's UNet by default).

    Sampling request (`generate`, `experiments.sample`'s `sampling:` block): `sampler` (a key of
    `lit_modules.diffusion.SAMPLERS`), `steps` (1..T), `guidance_scale`, `class_label`, the sampler's options
    (`clip_x0`; DDIM: `eta`) and the model-level `spacing` (which timesteps the grid visits)."""

    family = "DDPM"
    SAMPLERS = SAMPLERS
    TITLE_OPTIONS = ("eta",)
    CHECKPOINT_WEIGHTS = "EMA (checkpoint state_dict)"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_timesteps: int = 1000,
        schedule: str = "linear",
        prediction_type: str = "eps",
        warmup_steps: int = 500,
        lr_decay_start: int | None = None,
        lr_decay_steps: int = 0,
        cond_drop_prob: float = 0.1,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        spacing: str = "trailing",
        clip_x0: bool = True,
        guidance_scale: float = 0.0,
        image_every_n_epochs: int = 5,
        num_image_samples: int = 64,
        image_seed: int = 0,
        sample_batch_size: int = 250,
        fid_num_samples: int = 500,
        fid_feature: str | None = "mnist_classifier",
        fid_allow_below_minimum: bool = False,
        fid_seed: int = 1_000_000,
        expensive_metrics: bool = True,
        fid_domain: str | None = "mnist",
    ):
        super().__init__(**self.base_options(locals()))
        self.save_hyperparameters(ignore=["net", "optimizer"])
        check_lr_decay(lr_decay_start, lr_decay_steps)
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"model.prediction_type={prediction_type!r} is not one of {list(PREDICTION_TYPES)}"
            )
        if spacing not in SPACINGS:
            raise ConfigError(f"model.spacing={spacing!r} is not one of {list(SPACINGS)}")
        self.net = net
        self.optimizer_factory = optimizer
        # float64 schedule as a plain attribute: not a parameter or buffer, so EMA never touches it and it is
        # not in checkpoints (it is rebuilt from the config)
        self.alphas_cumprod = alphas_cumprod_from_betas(make_betas(schedule, num_timesteps))
        self.check_sampling(guidance_scale=guidance_scale or None)

    # ------------------------------------------------------------------------------------------- training
    def per_image_loss(
        self, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image mean squared error of the network output against the target, (B,). Noise and timesteps come
        from `generator` (CPU) when given, else from the global RNG (what exact resume restores)."""
        x0 = x * 2 - 1
        b = x0.shape[0]
        t = torch.randint(0, self.hparams.num_timesteps, (b,), generator=generator).to(self.device)
        eps = torch.randn(x0.shape, generator=generator).to(self.device, x0.dtype)
        abar = self.alphas_cumprod.to(self.device)[t].to(x0.dtype).view(b, *([1] * (x0.ndim - 1)))
        xt = q_sample(x0, t, eps, self.alphas_cumprod)
        target = training_target(x0, eps, abar, self.hparams.prediction_type)
        if self.num_classes:
            pred = self.net(xt, t, self.drop_labels(y, generator))
        else:
            pred = self.net(xt, t)
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)

    # ------------------------------------------------------------------------------------------- sampling
    def sampling_defaults(self) -> dict[str, Any]:
        h = self.hparams
        return {
            "sampler": h.sampler,
            "steps": h.steps,
            "guidance_scale": h.guidance_scale,
            "eta": h.eta,
            "spacing": h.spacing,
            "clip_x0": h.clip_x0,
        }

    def check_steps(self, steps: Any) -> None:
        check_steps(steps, self.hparams.num_timesteps)

    def check_sampling(self, **sampling: Any) -> dict[str, Any]:
        """The base checks, and the spacing and DDIM's eta."""
        resolved = super().check_sampling(**sampling)
        if resolved["spacing"] not in SPACINGS:
            raise ConfigError(
                f"spacing={resolved['spacing']!r}: unknown timestep spacing; valid: {list(SPACINGS)}"
            )
        if resolved.get("eta") is not None and resolved["eta"] < 0:
            raise ConfigError(f"eta={resolved['eta']}: must be >= 0")
        return resolved

    def model_description(self) -> dict[str, Any]:
        h = self.hparams
        return {
            "num_timesteps": h.num_timesteps,
            "schedule": h.schedule,
            "prediction_type": h.prediction_type,
        }

    def _generate(
        self, seeds: list[int], class_labels: torch.Tensor | None, progress: bool, **sampling: Any
    ) -> torch.Tensor:
        """x_T ~ N(0, I) per seed, the sampler over the `spacing` grid of `steps` timesteps, x0 -> [0, 1]."""
        sampler = self.SAMPLERS[sampling.pop("sampler")]
        grid = timestep_schedule(self.hparams.num_timesteps, sampling.pop("steps"), sampling.pop("spacing"))
        w = sampling.pop("guidance_scale") or 0.0
        noise = PerImageNoise(seeds, self.sample_shape(), self.device)
        x = sampler.run(
            self.conditioned(self.net, class_labels, w), noise(), grid, noise,
            alphas_cumprod=self.alphas_cumprod, prediction_type=self.hparams.prediction_type,
            progress=progress, **sampling,
        )  # fmt: skip
        return ((x.float() + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------------------------------- protocol
    def metric_protocol(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "test/loss": f"mean over test images of the {self.hparams.prediction_type}-prediction MSE at one "
            "fixed-seed (t, eps) draw per image, EMA weights",
        }
        out.update(self.fid_metric_protocol())  # top level: how the FID images were sampled; test/fid record
        return out


# the grid of `lit_modules.images.samples_figure` titled "DDPM samples: ..." with DDIM's eta in the title
samples_figure = partial(_samples_figure, family=DDPM.family, title_options=DDPM.TITLE_OPTIONS)
