"""What every generative model's sampling shares, whatever the model family (pure torch, no Lightning):
per-image seeded noise, the `Sampler` record a model's sampler registry holds, the check of a request's
sampler options, and classifier-free guidance on any network output.

One seed per image (as in NVlabs/edm): every image has its own `torch.Generator` (on the CPU, so results do not
depend on the device) for its initial noise and for every noise draw of a stochastic step, drawn in the same
order whatever the batch, so an image depends only on its seed, not on the batch size or batch composition.

A sampler integrates from the initial noise `x_init` along a `grid`, the sequence of times it visits: integer
timestep indices for DDPM (descending, lit_modules/diffusion/samplers.py), floats in [0, 1] for flow matching.
`model_fn(x, t_batch)` is the network call (already guided and label-bound, see `guided`), so a closed-form
function of (x, t) works as well as a network: that is how the tests check samplers on data whose exact
denoiser / velocity is known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t_batch) -> network output
StepCallback = Callable[[int, Any, torch.Tensor], None]  # (step number, grid time, x after the step)


class PerImageNoise:
    """N(0, I) draws of `shape` per image, each image from its own seeded CPU generator.

    `noise()` (or calling the object) returns (N, *shape) on `device` in `dtype`; the first draw is the
    sampler's initial noise, later draws the noise of stochastic steps."""

    def __init__(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if len(seeds) == 0:
            raise ValueError("at least one seed is needed (one per image)")
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.shape = tuple(shape)
        self.device, self.dtype = torch.device(device), dtype

    def noise(self) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)

    __call__ = noise


@dataclass(frozen=True)
class Sampler:
    """One entry of a model's sampler registry (`GenerativeModule.SAMPLERS`).

    `run(model_fn, x_init, grid, noise, *, progress=False, callback=None, **options) -> Tensor` integrates
    from `x_init` over the times of `grid` (`noise`: a `PerImageNoise`, drawn by stochastic steps only) and
    returns the final sample in the model's working space. `options` maps every user-facing option of this
    sampler to its default (e.g. DDIM's `eta`); a model may pass further keywords of its own (a diffusion
    schedule) that are not user options. `stochastic`: whether it draws noise after `x_init`;
    `evals_per_step`: network calls per grid step (the cost unit of a step count)."""

    name: str
    run: Callable[..., torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False
    evals_per_step: int = 1
    description: str = ""


def check_options(
    sampler: Sampler, options: Mapping[str, Any], where: str = "sampling", also_valid: Sequence[str] = ()
) -> None:
    """Refuses (ConfigError) an option key that `sampler` does not take, naming it (as `<where>.<key>`) and
    listing the valid ones; `also_valid`: keys the caller consumes itself (e.g. a timestep spacing)."""
    valid = list(sampler.options) + [k for k in also_valid if k not in sampler.options]
    unknown = [k for k in options if k not in valid]
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown option of sampler {sampler.name!r}"
            + (f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
            + f"; valid options: {listed}"
        )


def check_sampler_name(samplers: Mapping[str, Sampler], name: Any, where: str = "sampler") -> Sampler:
    """The registry entry `name`, or ConfigError naming `where` and listing the registry."""
    if not isinstance(name, str) or name not in samplers:
        raise ConfigError(f"{where}: unknown sampler {name!r}; valid samplers: {', '.join(samplers)}")
    return samplers[name]


def guided(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    guidance_scale: float,
    labels: torch.Tensor,
    null_label: int,
) -> ModelFn:
    """out~ = (1 + w) out(x, c) - w out(x, null) (Ho & Salimans 2022, eq. 6), w = guidance_scale, `null_label`
    the learned unconditional class; `model(x, t, y)`.

    Both evaluations go through the model as one batch of 2B. Applied to the raw output whatever it predicts:
    a diffusion model's x0 and v are affine in eps at fixed (x_t, t) with weights (1 + w) - w = 1, so guiding
    any of them is the same guidance; a flow-matching velocity is guided the same way."""
    labels = labels.long()

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(labels, null_label)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]).to(x.device))
        cond, uncond = out.chunk(2)
        return (1.0 + guidance_scale) * cond - guidance_scale * uncond

    return model_fn
