"""The interface of every image generative model of the suite (DDPM, flow matching, ...) and what they share:
a sampling request and its checks, seeded generation in batches, labelled sample grids, and the ONE FID loop
(`fid_of_generated`), used by the test hook here and by `experiments.sample`.

A sampling request is a flat dict: the generic keys `sampler`, `steps`, `guidance_scale`, `class_label`,
plus the model's own options (the chosen sampler's options, `Sampler.options`, and model-level ones such as
DDPM's timestep `spacing`). Unset keys (absent or None) take the model's defaults (`sampling_defaults()`,
from its hyperparameters). A key no sampler of the model takes is refused naming it; a key only *another*
sampler of the model takes (DDIM's `eta` with `sampler=dpmpp_2m`) is ignored, as it always was.

Glossary: seeds -> one int per image (image i depends only on its seed, lit_modules/sampling.py); labels ->
class labels (N,) of a class-conditional model, `num_classes` being its learned null class.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torchmetrics import MeanMetric

from core.errors import ConfigError
from lit_modules.base import SuiteModule, planned_test_examples
from lit_modules.fid import FIDProtocol, fid_of_generated
from lit_modules.images import log_figure, samples_figure
from lit_modules.sampling import ModelFn, Sampler, check_options, check_sampler_name, guided

log = logging.getLogger(__name__)

GENERIC_KEYS = ("sampler", "steps", "guidance_scale", "class_label")


def requested(sampling: dict[str, Any]) -> dict[str, Any]:
    """The keys of a request that are set (None means "the model's default")."""
    return {k: v for k, v in sampling.items() if v is not None}


def lr_factor(step: int, warmup_steps: int, decay_start: int | None = None, decay_steps: int = 0) -> float:
    """The learning-rate factor at optimizer step `step` (0-based): linear warm-up min(1, (step + 1) /
    warmup_steps) (Goyal et al. 2017), constant, then from `decay_start` a linear decay to 0 over `decay_steps`
    steps (the "cool-down" of warmup-stable-decay schedules, Hägele et al. 2024, arXiv 2405.18392), so a
    constant-rate run can be continued in parts and cooled down at the end."""
    factor = min(1.0, (step + 1) / max(1, warmup_steps))
    if decay_start is not None and step >= decay_start:
        factor *= max(0.0, 1.0 - (step - decay_start + 1) / decay_steps)
    return factor


def check_lr_decay(decay_start: Any, decay_steps: Any) -> None:
    """`model.lr_decay_start` null or a step >= 0; with it, `model.lr_decay_steps` a positive number (ConfigError)."""
    if decay_start is None:
        return
    if isinstance(decay_start, bool) or not isinstance(decay_start, int) or decay_start < 0:
        raise ConfigError(f"model.lr_decay_start={decay_start!r}: expected null or an optimizer step >= 0")
    if isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps <= 0:
        raise ConfigError(
            f"model.lr_decay_steps={decay_steps!r}: expected a positive number of steps when "
            f"model.lr_decay_start is set ({decay_start})"
        )


class GenerativeModule(SuiteModule):
    """Base class of the suite's image generative models.

    Subclasses set `family` (figure titles, e.g. "DDPM"), `SAMPLERS` (name -> `Sampler`), optionally
    `TITLE_OPTIONS` (sampler options shown in grid titles) and `CHECKPOINT_WEIGHTS` (which weights a
    checkpoint holds), and implement:
      - `sampling_defaults() -> dict`: the default request from the hyperparameters (sampler, steps,
        guidance_scale and every option, sampler options and model-level ones);
      - `_generate(seeds, class_labels, progress, **sampling) -> Tensor` (N, C, H, W) in the data's value
        range [0, 1], `sampling` being the complete, checked request; called in eval mode under no_grad;
      - optionally `check_steps(steps)` (e.g. at most the training T) and `model_description()` (what defines
        the model's sampling beyond the request, for metrics.json).
    They call `super().__init__(fid_..., ...)` first and `self.check_sampling()` once their state is built.
    A `test_step` feeds real images to the FID with `self.update_fid_real(x)`.
    """

    family: str = "Generative model"
    SAMPLERS: dict[str, Sampler] = {}
    TITLE_OPTIONS: tuple[str, ...] = ()
    CHECKPOINT_WEIGHTS: str = "checkpoint state_dict"

    def __init__(
        self,
        fid_num_samples: int = 500,
        fid_feature: str | None = "mnist_classifier",
        fid_allow_below_minimum: bool = False,
        fid_seed: int = 1_000_000,
        sample_batch_size: int = 250,
        expensive_metrics: bool = True,
        image_every_n_epochs: int = 5,
        num_image_samples: int = 64,
        image_seed: int = 0,
        fid_domain: str | None = "mnist",
    ):
        super().__init__()
        self.fid_seed, self.sample_batch_size = int(fid_seed), int(sample_batch_size)
        self.image_every_n_epochs, self.num_image_samples = image_every_n_epochs, int(num_image_samples)
        self.image_seed = int(image_seed)
        self.fid_protocol = (
            FIDProtocol(
                fid_num_samples,
                fid_feature,
                fid_allow_below_minimum,
                keys=("model.fid_feature", "model.fid_num_samples", "model.fid_allow_below_minimum"),
                domain=fid_domain,
            )
            if fid_num_samples and expensive_metrics
            else None
        )
        if self.fid_protocol is not None:
            self.fid_protocol.check()  # refuse a below-minimum request now, before any training
        # torchmetrics FID, built at test start; object.__setattr__ keeps it out of the module tree
        # (state_dict, EMA swaps)
        object.__setattr__(self, "_fid", None)
        self._fid_result: dict[str, Any] = {}
        self.test_loss = MeanMetric()

    @classmethod
    def base_options(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments of `GenerativeModule.__init__` out of a subclass's `locals()`, so a subclass's
        constructor lists them (for configs and `save_hyperparameters`) and forwards them in one line."""
        names = list(inspect.signature(GenerativeModule.__init__).parameters)[1:]
        return {k: arguments[k] for k in names if k in arguments}

    # ------------------------------------------------------------------------------ what subclasses provide
    def sampling_defaults(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement sampling_defaults()")

    def _generate(
        self, seeds: list[int], class_labels: torch.Tensor | None, progress: bool, **sampling: Any
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _generate(...)")

    def per_image_loss(
        self, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training objective per image, (B,), for data images `x` in [0, 1] and labels `y`. Its random draws
        (noise, times, label dropout) come from `generator` (CPU) when given, else from the global RNG (what
        exact resume restores)."""
        raise NotImplementedError(f"{type(self).__name__} must implement per_image_loss(...)")

    # ------------------------------------------------------------------------------ training (shared)
    def configure_optimizers(self) -> dict[str, Any]:
        """`model.optimizer` with the learning-rate factor `lr_factor` per optimizer step: a linear warm-up
        over `warmup_steps`, constant, then (with `lr_decay_start` set) a linear decay to 0 over
        `lr_decay_steps`. The factor is a function of the step only, so a run resumed with a decay set later
        (`ckpt_path=last model.lr_decay_start=...`) decays from the step after the restored one."""
        optimizer = self.optimizer_factory(self.parameters())
        h = self.hparams
        start, length = h.get("lr_decay_start"), int(h.get("lr_decay_steps") or 0)  # checked in __init__
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, int(h.warmup_steps), start, length)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def drop_labels(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1): each label becomes the null
        class `num_classes` with probability `cond_drop_prob`."""
        drop = torch.rand(len(y), generator=generator).to(self.device) < self.hparams.cond_drop_prob
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def conditioned(
        self, net_fn: Callable[..., torch.Tensor], labels: torch.Tensor | None, guidance_scale: float
    ) -> ModelFn:
        """The sampler's `model_fn(x, t)` from `net_fn(x, t, y)`: unconditional (y None: an unconditional
        network, or the null class of a conditional one), conditional on `labels`, or guided with w =
        `guidance_scale` > 0 (Ho & Salimans 2022 eq. 6, one batched call of 2B)."""
        if not self.num_classes or labels is None:
            return lambda x, t: net_fn(x, t, None)
        labels = labels.to(self.device).long()
        if not guidance_scale:
            return lambda x, t: net_fn(x, t, labels)
        return guided(net_fn, guidance_scale, labels, null_label=self.num_classes)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.training_loss(self.per_image_loss(x, y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        # fixed draws per validation batch: val/loss compares epochs, not draws, and the global RNG (restored
        # on resume) is left alone
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        self.log("val/loss", self.per_image_loss(x, y, g).mean(), batch_size=len(x), sync_dist=True)
        every = self.image_every_n_epochs
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
        self.test_loss.update(self.per_image_loss(x, y, g))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.update_fid_real(x)

    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one generated image: the network's."""
        return (self.net.in_channels, self.net.image_size, self.net.image_size)

    def check_steps(self, steps: Any) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps={steps!r}: must be a positive integer")

    def model_description(self) -> dict[str, Any]:
        """What defines this model's samples beyond the request (e.g. a diffusion schedule), for metrics.json."""
        return {}

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional model (its network's `num_classes`), None when unconditional."""
        return getattr(getattr(self, "net", None), "num_classes", None) or None

    # ------------------------------------------------------------------------------------ requests
    def option_keys(self) -> list[str]:
        """Every non-generic key this model takes: model-level options and any sampler's options."""
        keys = [k for k in self.sampling_defaults() if k not in GENERIC_KEYS]
        for s in self.SAMPLERS.values():
            keys += [k for k in s.options if k not in keys]
        return keys

    def check_sampling(self, **sampling: Any) -> dict[str, Any]:
        """Refuses (ConfigError) a request this model cannot serve, before any sampling work; returns the
        complete request (defaults merged in, options of other samplers dropped)."""
        asked = requested(sampling)
        defaults = self.sampling_defaults()
        name = asked.get("sampler", defaults["sampler"])
        sampler = check_sampler_name(self.SAMPLERS, name)
        sampler_keys = {k for s in self.SAMPLERS.values() for k in s.options}
        model_level = [k for k in defaults if k not in GENERIC_KEYS and k not in sampler_keys]
        # options only another sampler of this model takes are dropped (DDIM's eta with dpmpp_2m); the rest are
        # checked against this sampler's options and the model-level ones
        options = {
            k: v
            for k, v in asked.items()
            if k not in GENERIC_KEYS and not (k in sampler_keys and k not in sampler.options)
        }
        check_options(sampler, options, "sampling", model_level)
        self.check_steps(asked.get("steps", defaults["steps"]))
        self._check_conditioning(asked.get("guidance_scale"), asked.get("class_label"))
        resolved = {
            k: v for k, v in defaults.items() if k in GENERIC_KEYS or k in model_level or k in sampler.options
        }
        for k, v in sampler.options.items():
            resolved.setdefault(k, v)
        resolved.update({k: v for k, v in asked.items() if k in resolved or k in GENERIC_KEYS})
        if not self.num_classes:
            resolved["guidance_scale"] = None
        return resolved

    def _check_conditioning(self, guidance_scale: Any, class_label: Any) -> None:
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

    def sampling_description(self, **sampling: Any) -> dict[str, Any]:
        """How images are sampled, for metrics.json and grid titles: the complete request (options another
        sampler takes are None), the model's own description and which weights; extra keys of `sampling`
        that are no sampling key (seeds, weights, ...) are kept as given."""
        extra = {k: v for k, v in sampling.items() if k not in GENERIC_KEYS and k not in self.option_keys()}
        resolved = self.check_sampling(**{k: v for k, v in sampling.items() if k not in extra})
        d: dict[str, Any] = {"sampler": resolved["sampler"], "steps": resolved["steps"]}
        d.update({k: resolved.get(k) for k in self.option_keys()})
        d["guidance_scale"] = resolved.get("guidance_scale") if self.num_classes else None
        if "class_label" in sampling:
            d["class_label"] = sampling["class_label"]
        d.update(self.model_description())
        d["weights"] = self.CHECKPOINT_WEIGHTS
        d.update(extra)
        return d

    def default_labels(self, n: int) -> torch.Tensor:
        """Class labels 0, 1, ..., C-1, 0, 1, ... for n images (balanced classes for grids and FID)."""
        return torch.arange(n) % self.num_classes

    # ------------------------------------------------------------------------------------ generation
    def generate(
        self,
        seeds: Sequence[int],
        class_labels: torch.Tensor | None = None,
        progress: bool = False,
        **sampling: Any,
    ) -> torch.Tensor:
        """One image per seed, in [0, 1], (N, C, H, W); unset keys of `sampling` come from the model's defaults.
        A `class_label` without `class_labels` gives every image that label. One batch: callers chunk (an
        image depends only on its seed, so chunking does not change it)."""
        resolved = self.check_sampling(**sampling)
        class_label = resolved.pop("class_label", None)
        if class_labels is None and class_label is not None:
            class_labels = torch.full((len(seeds),), int(class_label))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self._generate(list(seeds), class_labels, progress, **resolved)
        finally:
            self.train(was_training)

    def generate_batches(
        self,
        seeds: Sequence[int],
        class_labels: torch.Tensor | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        **sampling: Any,
    ) -> Iterator[torch.Tensor]:
        """`generate` over consecutive chunks of `batch_size` seeds (default `sample_batch_size`), one batch of
        images at a time."""
        seeds = list(seeds)
        step = int(batch_size or self.sample_batch_size)
        for start in range(0, len(seeds), step):
            chunk = seeds[start : start + step]
            labels = None if class_labels is None else class_labels[start : start + len(chunk)]
            yield self.generate(chunk, class_labels=labels, progress=progress, **sampling)

    def log_sample_grid(self, key: str) -> None:
        """A fixed-seed labelled grid (the same seeds every time, so grids of different epochs compare)."""
        n = self.num_image_samples
        if self._trainer is not None and self.trainer.fast_dev_run:
            n = min(n, 2 * (self.num_classes or 4))  # debug=fdr: does the code run, not a grid to look at
        seeds = range(self.image_seed, self.image_seed + n)
        labels = self.default_labels(n) if self.num_classes else None
        images = self.generate(list(seeds), class_labels=labels)
        weights = self.weights_text()
        sampling = self.sampling_description(weights=weights)
        caption = f"{sampling['sampler']}, {sampling['steps']} steps, {weights}"
        if self.num_classes:
            caption += (
                f", guidance {sampling['guidance_scale']:g}, columns = classes 0-{self.num_classes - 1}"
            )
        when = "test" if key.startswith("test/") else f"epoch {self.current_epoch}"
        when += f", step {self.global_step}"
        grid = samples_figure(
            images.cpu(), sampling, self.image_seed, self.num_classes or 0, when,
            family=self.family, title_options=self.TITLE_OPTIONS,
        )  # fmt: skip
        log_figure(self, key, grid, caption)

    def weights_text(self) -> str:
        """'EMA weights' when an EMA callback (Lightning's WeightAveraging) is attached to the trainer."""
        from pytorch_lightning.callbacks import WeightAveraging

        callbacks = getattr(self._trainer, "callbacks", None) or []
        if any(isinstance(cb, WeightAveraging) for cb in callbacks):
            return "EMA weights"
        return "no EMA callback"

    # ------------------------------------------------------------------------------------ FID (test stage)
    def preflight(self, datamodule: Any, limits: Any) -> None:
        """The FID's real statistics come from the test split as the trainer limits it: refuse before fit."""
        if self.fid_protocol is not None:
            self.fid_protocol.check_real(planned_test_examples(datamodule, limits))

    def on_test_start(self) -> None:
        if self.fid_protocol is not None:
            object.__setattr__(self, "_fid", self.fid_protocol.metric().to(self.device))
            self._fid_result = {}

    def update_fid_real(self, x: torch.Tensor) -> None:
        """Real test images (in [0, 1]) into the FID's real statistics; called from `test_step`."""
        if self._fid is not None:
            self._fid.update(x, real=True)

    def on_test_epoch_end(self) -> None:
        self.log_sample_grid("test/samples")
        if self._fid is None:
            return
        n = self.fid_protocol.num_samples
        seeds = list(range(self.fid_seed, self.fid_seed + n))
        labels = self.default_labels(n) if self.num_classes else None
        sampling = self.check_sampling()
        log.info(
            "test/fid: generating %d images (%s, %d steps); expensive_metrics=false skips it",
            n, sampling["sampler"], sampling["steps"],
        )  # fmt: skip
        from tqdm.auto import tqdm

        batches = tqdm(
            self.generate_batches(seeds, labels),
            desc="test/fid: sampling", unit="batch", disable=not self.show_progress(),
            total=-(-n // self.sample_batch_size),
        )  # fmt: skip
        fid, self._fid_result = fid_of_generated(self.fid_protocol, self._fid, batches, seeds)
        self.log("test/fid", torch.tensor(fid, dtype=torch.float32), on_step=False, on_epoch=True)
        object.__setattr__(self, "_fid", None)

    def fid_metric_protocol(self) -> dict[str, Any]:
        """The sampling description (top level: how the FID images were sampled) and the `test/fid` record,
        once a test computed it; {} otherwise. For a subclass's `metric_protocol`."""
        if not self._fid_result:
            return {}
        return {**self.sampling_description(), "test/fid": self._fid_result}
