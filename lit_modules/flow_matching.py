"""Flow matching (Lipman et al. 2023) with the linear path of rectified flow (Liu et al. 2023), the suite's
second image generative model: the same UNet as DDPM predicts a velocity, sampled by an Euler or Heun ODE
solver (lit_modules/flow/samplers.py), with classifier-free guidance on the velocity (Ho & Salimans 2022) and
EMA weights. docs/flow_matching.md has the method, the equations and the commands.

Glossary: x -> data image in [0, 1] from the DataModule; x1 = 2x - 1 in [-1, 1] (the working space, as DDPM's
x0); x0 -> noise x_0 ~ N(0, I); t in [0, 1] with t = 0 noise, t = 1 data; x_t = (1 - t) x_0 + t x_1;
u = x_1 - x_0 (the target); y -> class label, `num_classes` being the learned null class.

Training (rectified flow, Liu et al. 2023 eq. 1; conditional flow matching, Lipman et al. 2023 eq. 23 with
sigma_min = 0): t ~ U(0, 1) (or logit-normal, Esser et al. 2024 sec. 3.1), x_0 ~ N(0, I), loss = mean squared
error between v_theta(x_t, t) and u. For a class-conditional network, labels are replaced by the null class
with probability `cond_drop_prob` (classifier-free guidance training).

Time input of the network: the UNet's sinusoidal embedding (DDPM's, max period 10^4) was designed for integer
timesteps 0..999, so the network is fed `time_embedding_scale * t` (1000 by default): the embedding then sees
the same range of arguments as DDPM's, and its low frequencies still separate nearby times.

EMA: as DDPM, the weights are averaged by the `runtime.ema.EMA` callback (configs/experiment/flow_mnist.yaml),
which swaps them in for validation and writes them as the checkpoint's `state_dict`; so `val/loss`, the
validation grid, the test metrics and `experiments.sample` all use EMA weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError
from lit_modules.flow import SAMPLERS, TIME_SAMPLINGS, cfm_loss, interpolate, sample, sample_time, time_grid
from lit_modules.generative import GenerativeModule, check_lr_decay
from lit_modules.sampling import ModelFn


class FlowMatching(GenerativeModule):
    """A flow-matching model around any velocity network `net(x_t, s t[, y])` (the suite's UNet by default),
    s = `time_embedding_scale`."""

    family = "Flow matching"
    SAMPLERS = SAMPLERS
    CHECKPOINT_WEIGHTS = "EMA (checkpoint state_dict)"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        time_sampling: str = "uniform",
        logit_normal_loc: float = 0.0,
        logit_normal_scale: float = 1.0,
        time_embedding_scale: float = 1000.0,
        warmup_steps: int = 200,
        lr_decay_start: int | None = None,
        lr_decay_steps: int = 0,
        cond_drop_prob: float = 0.1,
        sampler: str = "heun",
        steps: int = 50,
        time_shift: float = 1.0,
        guidance_scale: float = 0.0,
        image_every_n_epochs: int = 5,
        num_image_samples: int = 64,
        image_seed: int = 0,
        sample_batch_size: int = 250,
        fid_num_samples: int = 500,
        fid_feature: str | None = "mnist_classifier",
        fid_allow_below_minimum: bool = False,
        fid_seed: int = 1_000_000,
        fid_domain: str | None = "mnist",
        expensive_metrics: bool = True,
    ):
        super().__init__(**self.base_options(locals()))
        self.save_hyperparameters(ignore=["net", "optimizer"])
        check_lr_decay(lr_decay_start, lr_decay_steps)
        if time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(f"model.time_sampling={time_sampling!r} is not one of {list(TIME_SAMPLINGS)}")
        if time_sampling == "logit_normal" and not logit_normal_scale > 0:
            raise ConfigError(f"model.logit_normal_scale={logit_normal_scale}: must be > 0")
        if not time_embedding_scale > 0:
            raise ConfigError(f"model.time_embedding_scale={time_embedding_scale}: must be > 0 (e.g. 1000)")
        if not 0 <= cond_drop_prob < 1:
            raise ConfigError(f"model.cond_drop_prob={cond_drop_prob}: must be in [0, 1)")
        self.net = net
        self.optimizer_factory = optimizer
        # the configured defaults (sampler, steps, time_shift, guidance) must be servable: refuse them now
        self.check_sampling(guidance_scale=guidance_scale or None)

    # ------------------------------------------------------------------------------------------- training
    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's time input: s t with s = time_embedding_scale (module docstring)."""
        return t * self.hparams.time_embedding_scale

    def per_image_loss(
        self, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image conditional flow matching loss, (B,). Times and noise come from `generator` (CPU) when
        given, else from the global RNG (what exact resume restores)."""
        h = self.hparams
        x1 = x * 2 - 1
        b = x1.shape[0]
        t = sample_time(b, h.time_sampling, generator, h.logit_normal_loc, h.logit_normal_scale)
        t = t.to(self.device)
        x0 = torch.randn(x1.shape, generator=generator).to(self.device, x1.dtype)
        xt = interpolate(x0, x1, t)
        if self.num_classes:
            v = self.net(xt, self.network_time(t), self.drop_labels(y, generator))
        else:
            v = self.net(xt, self.network_time(t))
        return cfm_loss(v, x0, x1)

    # ------------------------------------------------------------------------------------------- sampling
    def sampling_defaults(self) -> dict[str, Any]:
        h = self.hparams
        return {
            "sampler": h.sampler,
            "steps": h.steps,
            "guidance_scale": h.guidance_scale if self.num_classes else None,
            "time_shift": h.time_shift,  # model-level: shapes the time grid of every sampler
        }

    def check_sampling(self, **sampling: Any) -> dict[str, Any]:
        resolved = super().check_sampling(**sampling)
        time_grid(resolved["steps"], resolved["time_shift"])  # refuses a bad time_shift before any work
        return resolved

    def model_description(self) -> dict[str, Any]:
        h = self.hparams
        return {
            "path": "linear (rectified flow): x_t = (1 - t) x_0 + t x_1, t = 0 noise, t = 1 data",
            "time_sampling": h.time_sampling
            + (
                f" (loc {h.logit_normal_loc:g}, scale {h.logit_normal_scale:g})"
                if h.time_sampling == "logit_normal"
                else ""
            ),
            "time_embedding_scale": h.time_embedding_scale,
        }

    def velocity(self, labels: torch.Tensor | None, guidance_scale: float) -> ModelFn:
        """v(x, t) for the samplers: the network at time s t, labels bound; with guidance_scale w > 0,
        v~ = (1 + w) v(x, t, c) - w v(x, t, null) (Ho & Salimans 2022 eq. 6, on the velocity)."""
        return self.conditioned(lambda x, t, y: self.net(x, self.network_time(t), y), labels, guidance_scale)

    def _generate(
        self, seeds: list[int], class_labels: torch.Tensor | None, progress: bool, **sampling: Any
    ) -> torch.Tensor:
        sampler, steps = sampling.pop("sampler"), sampling.pop("steps")
        guidance_scale = sampling.pop("guidance_scale", None) or 0.0
        time_shift = sampling.pop("time_shift")
        shape = self.sample_shape()
        x1 = sample(
            self.velocity(class_labels, guidance_scale),
            shape,
            seeds,
            sampler=sampler,
            steps=steps,
            time_shift=time_shift,
            device=self.device,
            progress=progress,
            **sampling,
        )
        # x_1 is clamped to the data range once, at the end (never inside the ODE)
        return ((x1.float() + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------------------------------- protocol
    def metric_protocol(self) -> dict[str, Any]:
        return {
            "test/loss": "mean over test images of the conditional flow matching loss (velocity MSE) at one "
            f"fixed-seed (t, x_0) draw per image ({self.hparams.time_sampling} t), EMA weights",
            **self.fid_metric_protocol(),
        }
