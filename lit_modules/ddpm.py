"""DDPM (Ho et al. 2020; seeds 003 and 004) with eps / x0 / v targets, classifier-free guidance (Ho & Salimans
2022), EMA weights, and a sampler zoo (lit_modules/diffusion/samplers.py).

Glossary: x -> data image in [0, 1] from the DataModule; x0 = 2x - 1 in [-1, 1] (the diffusion's data space,
as in DDPM); t -> timestep index in [0, T) (index t is the paper's t+1, see schedules.py); eps -> N(0, I)
noise; y -> class label, `num_classes` being the learned null class.

Training (DDPM Algorithm 1): t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, loss
= mean squared error between the network output and the target (eps: L_simple, eq. 14; or x0; or v). For a
class-conditional network, labels are replaced by the null class with probability `cond_drop_prob`.

EMA: the weights are averaged by the `experiments.ema.EMA` callback (Lightning's EMAWeightAveraging), which
swaps the averaged weights in for validation and writes them as the checkpoint's `state_dict`; so
`val/loss`, the validation sample grid (drawn in `validation_step`, while the averaged weights are in place),
the test metrics, `experiments.sample` and `experiments.evaluate` all use EMA weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from tqdm.auto import tqdm

from core.errors import ConfigError
from core.figures import figure
from lit_modules.base import SuiteModule, planned_test_examples
from lit_modules.diffusion import (
    PREDICTION_TYPES,
    SPACINGS,
    alphas_cumprod_from_betas,
    check_sampler,
    check_steps,
    classifier_free_guidance,
    make_betas,
    q_sample,
    sample,
    training_target,
)
from lit_modules.fid import FIDProtocol
from lit_modules.images import log_figure, seed_row_labels

log = logging.getLogger(__name__)


class DDPM(SuiteModule):
    """A denoising diffusion model around any `net(x_t, t[, y])` (the suite's UNet by default)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_timesteps: int = 1000,
        schedule: str = "linear",
        prediction_type: str = "eps",
        warmup_steps: int = 500,
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
        fid_feature: str = "mnist_classifier",
        fid_allow_below_minimum: bool = False,
        fid_seed: int = 1_000_000,
        expensive_metrics: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
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
        self.check_sampling(sampler, steps, guidance_scale if guidance_scale else None, None)
        self.fid_protocol = (
            FIDProtocol(
                fid_num_samples,
                fid_feature,
                fid_allow_below_minimum,
                keys=("model.fid_feature", "model.fid_num_samples", "model.fid_allow_below_minimum"),
            )
            if fid_num_samples and expensive_metrics
            else None
        )
        if self.fid_protocol is not None:
            self.fid_protocol.check()  # refuse a below-minimum request now, before any training
        self.test_loss = MeanMetric()
        object.__setattr__(
            self, "_fid", None
        )  # torchmetrics FID, built at test start; kept out of the module tree
        self._fid_result: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- training
    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        warmup = max(1, int(self.hparams.warmup_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def diffusion_loss(
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
            drop = torch.rand(b, generator=generator).to(self.device) < self.hparams.cond_drop_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            pred = self.net(xt, t, y)
        else:
            pred = self.net(xt, t)
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.training_loss(self.diffusion_loss(x, y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        # fixed noise and timesteps per validation batch: val/loss compares epochs, not noise draws, and the
        # global RNG (restored on resume) is left alone
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        self.log("val/loss", self.diffusion_loss(x, y, g).mean(), batch_size=len(x), sync_dist=True)
        every = self.hparams.image_every_n_epochs
        if (
            batch_idx == 0
            and every
            and not self.trainer.sanity_checking
            and (self.current_epoch + 1) % every == 0
        ):
            self.log_sample_grid("val/samples")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        g = torch.Generator().manual_seed(20_000 + batch_idx)
        self.test_loss.update(self.diffusion_loss(x, y, g))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        if self._fid is not None:
            self._fid.update(x, real=True)

    def preflight(self, datamodule: Any, limits: Any) -> None:
        """The FID's real statistics come from the test split as the trainer limits it: refuse before fit."""
        if self.fid_protocol is not None:
            self.fid_protocol.check_real(planned_test_examples(datamodule, limits))

    def on_test_start(self) -> None:
        if self.fid_protocol is not None:
            # object.__setattr__: a Module assigned normally would join the module tree (state_dict, EMA swaps)
            object.__setattr__(self, "_fid", self.fid_protocol.metric().to(self.device))
            self._fid_result = {}

    def on_test_epoch_end(self) -> None:
        self.log_sample_grid("test/samples")
        if self._fid is None:
            return
        num_real = int(self._fid.real_features_num_samples)
        self.fid_protocol.check_real(num_real)
        n = self.fid_protocol.num_samples
        seeds = range(self.hparams.fid_seed, self.hparams.fid_seed + n)
        labels = self.default_labels(n) if self.num_classes else None
        log.info(
            "test/fid: generating %d images (%s, %d steps) against %d real ones; expensive_metrics=false skips it",
            n, self.hparams.sampler, self.hparams.steps, num_real,
        )
        batches = range(0, n, self.hparams.sample_batch_size)
        for start in tqdm(batches, desc="test/fid: sampling", unit="batch", disable=not self.show_progress()):
            chunk = list(seeds[start : start + self.hparams.sample_batch_size])
            images = self.generate(
                chunk, class_labels=None if labels is None else labels[start : start + len(chunk)]
            )
            self._fid.update(images, real=False)
        fid = float(self._fid.compute())
        self._fid_result = self.fid_protocol.describe(n, num_real, seeds=f"{seeds[0]}..{seeds[-1]}")
        self.log("test/fid", torch.tensor(fid, dtype=torch.float32), on_step=False, on_epoch=True)
        object.__setattr__(self, "_fid", None)

    # ------------------------------------------------------------------------------------------- sampling
    def check_sampling(
        self, sampler: str, steps: int, guidance_scale: float | None, class_label: int | None
    ) -> None:
        """Raises ValueError for a request this model cannot serve (before any sampling work)."""
        check_sampler(sampler)
        check_steps(steps, self.hparams.num_timesteps)
        if guidance_scale is not None and not self.num_classes:
            raise ConfigError(
                f"guidance_scale={guidance_scale}: this checkpoint is an unconditional model (no class conditioning), "
                "so classifier-free guidance does not apply; leave guidance_scale unset"
            )
        if guidance_scale is not None and guidance_scale < 0:
            raise ConfigError(
                f"guidance_scale={guidance_scale}: must be >= 0 (0 = the conditional model alone)"
            )
        if class_label is not None:
            if not self.num_classes:
                raise ConfigError(f"class_label={class_label}: this checkpoint is an unconditional model")
            if not 0 <= int(class_label) < self.num_classes:
                raise ConfigError(
                    f"class_label={class_label} is out of range: valid labels are 0..{self.num_classes - 1}"
                )

    def default_labels(self, n: int) -> torch.Tensor:
        """Class labels 0, 1, ..., C-1, 0, 1, ... for n images (balanced classes for grids and FID)."""
        return torch.arange(n) % self.num_classes

    def denoiser(self, labels: torch.Tensor | None, guidance_scale: float) -> Callable:
        net = self.net
        if not self.num_classes:
            return lambda x, t: net(x, t)
        if labels is None:  # the unconditional model inside a conditional network
            return lambda x, t: net(x, t, None)
        labels = labels.to(self.device)
        if guidance_scale == 0:
            return lambda x, t: net(x, t, labels)
        return classifier_free_guidance(net, guidance_scale, labels, null_label=self.num_classes)

    def sampling_description(self, **overrides: Any) -> dict[str, Any]:
        h = self.hparams
        d = {
            "sampler": h.sampler,
            "steps": h.steps,
            "eta": h.eta if h.sampler == "ddim" else None,
            "spacing": h.spacing,
            "clip_x0": h.clip_x0,
            "guidance_scale": h.guidance_scale if self.num_classes else None,
            "num_timesteps": h.num_timesteps,
            "schedule": h.schedule,
            "prediction_type": h.prediction_type,
            "weights": "EMA (checkpoint state_dict)",
        }
        d.update(overrides)
        return d

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int],
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        spacing: str | None = None,
        guidance_scale: float | None = None,
        class_labels: torch.Tensor | None = None,
        clip_x0: bool | None = None,
        progress: bool = False,
        callback: Callable | None = None,
    ) -> torch.Tensor:
        """One image per seed, in [0, 1], (N, C, H, W); unset options come from the config. One batch: callers
        chunk (an image depends only on its seed, so chunking does not change it)."""
        h = self.hparams
        sampler = sampler or h.sampler
        steps = steps or h.steps
        w = h.guidance_scale if guidance_scale is None else guidance_scale
        was_training = self.net.training
        self.net.eval()
        try:
            x = sample(
                self.denoiser(class_labels, w if self.num_classes else 0.0),
                (self.net.in_channels, self.net.image_size, self.net.image_size),
                list(seeds),
                self.alphas_cumprod,
                sampler=sampler,
                steps=steps,
                prediction_type=h.prediction_type,
                eta=h.eta if eta is None else eta,
                spacing=spacing or h.spacing,
                clip_x0=h.clip_x0 if clip_x0 is None else clip_x0,
                device=self.device,
                progress=progress,
                callback=callback,
            )
        finally:
            self.net.train(was_training)
        return ((x.float() + 1) / 2).clamp(0, 1)

    def log_sample_grid(self, key: str) -> None:
        """A fixed-seed grid (the same seeds every time, so grids of different epochs compare)."""
        n = self.hparams.num_image_samples
        if self._trainer is not None and self.trainer.fast_dev_run:
            n = min(n, 2 * (self.num_classes or 4))  # debug=fdr: does the code run, not a grid to look at
        seeds = range(self.hparams.image_seed, self.hparams.image_seed + n)
        labels = self.default_labels(n) if self.num_classes else None
        images = self.generate(list(seeds), class_labels=labels)
        weights = self._weights_text()
        caption = f"{self.hparams.sampler}, {self.hparams.steps} steps, {weights}"
        if self.num_classes:
            caption += (
                f", guidance {self.hparams.guidance_scale:g}, columns = classes 0-{self.num_classes - 1}"
            )
        when = "test" if key.startswith("test/") else f"epoch {self.current_epoch}"
        sampling = self.sampling_description(weights=weights)
        when += f", step {self.global_step}"
        grid = samples_figure(images.cpu(), sampling, self.hparams.image_seed, self.num_classes, when)
        log_figure(self, key, grid, caption)

    def _weights_text(self) -> str:
        """'EMA weights' when an EMA callback (Lightning's WeightAveraging) is attached to the trainer."""
        from pytorch_lightning.callbacks import WeightAveraging

        callbacks = getattr(self._trainer, "callbacks", None) or []
        if any(isinstance(cb, WeightAveraging) for cb in callbacks):
            return "EMA weights"
        return "no EMA callback"

    # ------------------------------------------------------------------------------------------- protocol
    def metric_protocol(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "test/loss": f"mean over test images of the {self.hparams.prediction_type}-prediction MSE at one "
            "fixed-seed (t, eps) draw per image, EMA weights",
        }
        if self._fid_result:
            out.update(self.sampling_description())  # top level: how the FID images were sampled
            out["test/fid"] = self._fid_result
        return out


def samples_figure(
    images: torch.Tensor,
    sampling: dict[str, Any],
    first_seed: int,
    num_classes: int = 0,
    when: str | None = None,
    ncols: int | None = None,
) -> np.ndarray:
    """A labelled grid of diffusion samples; image i has seed first_seed + i. The title names the sampler,
    its steps, DDIM eta, the guidance scale, a fixed class label and the weights (`sampling`, as
    `DDPM.sampling_description` gives it); rows are labelled with their seeds. Without a fixed
    `class_label`, a conditional model's images have labels 0, 1, ..., C-1, 0, ... and the grid has one
    column per class, labelled "class c"."""
    per_class = bool(num_classes) and sampling.get("class_label") is None
    ncols = num_classes if per_class else min(ncols or 8, len(images))
    parts = [f"{sampling['sampler']}, {sampling['steps']} steps"]
    if sampling.get("eta") is not None:
        parts.append(f"eta {sampling['eta']:g}")
    if sampling.get("guidance_scale") is not None:
        parts.append(f"guidance {sampling['guidance_scale']:g}")
    if sampling.get("class_label") is not None:
        parts.append(f"class {int(sampling['class_label'])}")
    if sampling.get("weights"):
        parts.append(str(sampling["weights"]))
    return figure(
        images,
        ncols,
        title=f"DDPM samples: {', '.join(parts)}" + (f" ({when})" if when else ""),
        row_labels=seed_row_labels(first_seed, len(images), ncols),
        col_labels=[f"class {c}" for c in range(num_classes)] if per_class else None,
    )
