"""NeRCo (Yang et al., "Implicit Neural Representation for Cooperative Low-light Image Enhancement", ICCV 2023,
arXiv 2303.11722) as a LightningModule with manual optimisation, faithful to the released code
(`Ysz2022/NeRCo`) under `variant="official"` and to the paper under `variant="paper"`.

Glossary (paper -> released -> here): A / I_L = low light, B / I_H = normal light (unpaired); NRN -> netPre;
Mask Extractor -> netH (returns H, the residual "noise" image, and `mask`); G_H -> netG_A (enhance, input
[image, NRN(image)] * mask); G_L -> netG_B (degrade); colour discriminators D_A (judges fake_B, the enhanced
image) and D_B (judges fake_A and NRN(A)); edge discriminators D_A_edge, D_B_edge; text-driven discriminator
-> a frozen CLIP RN50 scoring "low light image" vs "high light image" (`lit_modules/nets/clip_backend.py`).

Training iteration (released `optimize_parameters`): `forward_train` (the released `forward`); G step (D
frozen) on loss_G; D step on the pooled, detached fakes. The module composes the networks of
`lit_modules/nets/` and calls plain functions: `nerco_options` (variants, switches, weights, checks),
`nerco_objectives` (forward and losses, term by term), `nerco_inference` (any size, NRN chunking),
`nerco_eval` (validation figure, cheap test crops, protocol record), `nerco_release` (released checkpoints,
released test path). Data: unpaired training batches `{"A", "B"}` or `{"low", "high"}` (`data.mode=unpaired`),
paired validation/test items at full resolution, images in [-1, 1]; test scoring from `RestorationModule`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_modules import nerco_eval, nerco_objectives
from lit_modules.images import log_figure
from lit_modules.metrics.restoration import score
from lit_modules.nerco_eval import CHEAP_TEST_SIDE, centre_crop_batch
from lit_modules.nerco_inference import channels_last_networks, enhance_image
from lit_modules.nerco_losses import ImagePool, apply_lr_factor, linear_decay_factor, load_pools, pools_state
from lit_modules.nerco_objectives import Nets, generator_input
from lit_modules.nerco_options import (
    COMPONENTS,
    POOLS,
    VALUE_RANGE,
    VARIANTS,
    WEIGHTS,
    check_datamodule,
    check_inference_options,
    check_variant,
    merge_options,
    training_pair,
    warn_official_batch,
)
from lit_modules.nerco_release import (
    MIN_SIDE,
    OFFICIAL_FILES,
    OfficialCheckpointError,
    check_official_dir,
    inference_memory_estimate_mb,
    load_official_state_dicts,
)
from lit_modules.nets.clip_backend import TextImageBackend, build_text_backend
from lit_modules.nets.cyclegan import PatchDiscriminator, ResnetGenerator
from lit_modules.nets.nerco import NRN, EdgeOperator, MaskExtractor
from lit_modules.restoration import RestorationModule

log = logging.getLogger(__name__)


class NeRCo(RestorationModule):
    """NeRCo with two optimizers (Pre+G_A+G_B+H; the four discriminators), manual optimisation.

    Batches, images in [-1, 1]:
      training: `{"A": low (B,3,h,w), "B": normal (B,3,h,w)}`, unpaired, same size; or the low-light
        DataModule's items `{"low", "high", ...}` with `data.mode=unpaired` (then `low` is trainA and `high` a
        normal-light image drawn independently of it, NeRCo's trainB), which this module reads as A and B;
      validation/test: the DataModule's paired items `{"low", "high", "low_name", ...}`, any size (`enhance`).
    """

    output_label = "NeRCo"  # the side-by-side panel of the model
    min_side = MIN_SIDE  # smallest image side `enhance` takes
    # manual optimisation: generators, then discriminators (global_step counts both)
    optimizer_steps_per_batch = 2

    def __init__(
        self,
        variant: str = "official",
        faithful: Mapping[str, Any] | None = None,
        components: Mapping[str, bool] | None = None,
        weights: Mapping[str, float] | None = None,
        edge_operator: str = "central",
        edge_scale: float = 4.0,
        text_discriminator: Mapping[str, Any] | None = None,
        ngf: int = 64,
        ndf: int = 64,
        n_blocks: int = 9,
        pool_size: int = 50,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        n_epochs: int = 100,
        n_epochs_decay: int = 200,
        nrn_chunk_pixels: int | None = 16384,
        inference_resize: str = "round_to_4",
        inference_bf16: bool = False,
        official_ckpt_dir: str | None = None,
        num_val_images: int = 4,
        save_pools_in_checkpoint: bool = False,
        protocol: Mapping[str, Any] | None = None,
        num_side_by_side: int = 4,
        expensive_metrics: bool = True,
    ):
        super().__init__(value_range=VALUE_RANGE, protocol=protocol, num_side_by_side=num_side_by_side)
        check_variant(variant)
        check_inference_options(nrn_chunk_pixels, inference_resize, inference_bf16)
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        self.faithful = merge_options(VARIANTS[variant], faithful, "faithful")
        self.components = merge_options(COMPONENTS, components, "components")
        self.weights = merge_options(WEIGHTS, weights, "weights")
        self.text_options = dict(text_discriminator or {"backend": "open_clip"})
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
        if official_ckpt_dir:  # cheap checks first: a wrong directory fails before ~50M parameters are built
            check_official_dir(official_ckpt_dir, list(OFFICIAL_FILES))
        self._build_networks(ngf, ndf, n_blocks, edge_operator, edge_scale)
        # the text backend is kept out of the state_dict (frozen, ~100 MB for RN50, rebuilt at each fit)
        self._text: list[TextImageBackend] = []
        self.pools = {name: ImagePool(pool_size) for name in POOLS}
        self.val_metrics = nn.ModuleDict({k: MeanMetric() for k in ("psnr", "ssim", "loss")})
        self._val_images: Tensor | None = None
        self._val_captions: list[str | None] | None = None
        self._val_names: list[str] | None = None
        self._warned_batch = False
        self._channels_last = False  # for_inference(): enhance on channels-last images (CPU)
        self.official_weights: dict[str, str] | None = None
        if official_ckpt_dir:
            self.official_weights = self.load_official_weights(official_ckpt_dir)

    def _build_networks(
        self, ngf: int, ndf: int, n_blocks: int, edge_operator: str, edge_scale: float
    ) -> None:
        """G_H (netG_A), G_L (netG_B), the NRN (netPre), the mask extractor (netH), the colour discriminators and,
        where switched on, the edge discriminators with their edge operator."""
        c = self.components
        self.netG_A = ResnetGenerator(6, 3, ngf, n_blocks)
        self.netG_B = ResnetGenerator(3, 3, ngf, n_blocks)
        self.netPre = (
            NRN(3, ngf, n_blocks, coordinates=self.faithful["nrn_coordinates"]) if c["nrn"] else None
        )
        self.netH = MaskExtractor(3, 3, ngf) if c["mask_extractor"] else None
        self.netD_A = PatchDiscriminator(3, ndf)
        self.netD_B = PatchDiscriminator(3, ndf)
        if c["edge_discriminators"]:
            self.netD_A_edge = PatchDiscriminator(3, ndf)
            self.netD_B_edge = PatchDiscriminator(3, ndf)
            self.edge = EdgeOperator(edge_operator, self.faithful["edge_rgb"], edge_scale)
        else:
            self.netD_A_edge = self.netD_B_edge = self.edge = None

    # ------------------------------------------------------------------------------------------ set-up
    @property
    def generators(self) -> list[nn.Module]:
        return [n for n in (self.netPre, self.netG_A, self.netG_B, self.netH) if n is not None]

    @property
    def discriminators(self) -> list[nn.Module]:
        return [n for n in (self.netD_A, self.netD_B, self.netD_A_edge, self.netD_B_edge) if n is not None]

    @property
    def nets(self) -> Nets:
        """The networks the objectives call (`lit_modules.nerco_objectives`)."""
        return Nets.of(self)

    @property
    def text_backend(self) -> TextImageBackend | None:
        return self._text[0] if self._text else None

    def build_text_backend(self) -> TextImageBackend | None:
        """Builds the text-driven discriminator's backend once (fails with instructions if none can be had)."""
        if not self.components["text_discriminator"]:
            return None
        if not self._text:
            opts = dict(self.text_options)
            backend = build_text_backend(opts.pop("backend", "open_clip"), **opts)
            self._text.append(backend)
            log.info("text-driven discriminator backend: %s", backend.source)
        return self._text[0]

    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        check_datamodule(dm, stage)  # RGB in [-1, 1], unpaired training data
        if stage == "fit":  # start-up failure, before any step, when no backend can be had
            self.build_text_backend()

    def on_fit_start(self) -> None:
        if self.text_backend is not None:
            self.text_backend.to(self.device)

    @property
    def needs_checkpoint(self) -> bool:
        return self.official_weights is None

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_g = self.optimizer_factory(itertools.chain(*(n.parameters() for n in self.generators)))
        opt_d = self.optimizer_factory(itertools.chain(*(n.parameters() for n in self.discriminators)))
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        return [opt_g, opt_d]

    def lr_factor(self, epoch: int) -> float:
        h = self.hparams
        return linear_decay_factor(
            epoch, h.n_epochs, h.n_epochs_decay, self.faithful["lr_step_at_epoch_start"]
        )

    def apply_lr_schedule(self, optimizers: list[torch.optim.Optimizer], epoch: int) -> float:
        """Sets every group's lr to initial_lr * factor(epoch); stateless, so resuming restores it exactly."""
        return apply_lr_factor(optimizers, self.lr_factor(epoch))

    def _schedule(self, epoch: int) -> None:
        self.apply_lr_schedule([getattr(o, "optimizer", o) for o in self.optimizers()], epoch)

    # The rate is set before each epoch's callbacks run (LearningRateMonitor logs at epoch start): at train
    # start (also after a resume) for the first epoch, and at each epoch's end for the next one.
    def on_train_start(self) -> None:
        self._schedule(self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self._schedule(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._schedule(self.current_epoch + 1)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, low: Tensor) -> Tensor:
        """fake_B = G_H([A, NRN(A)] * mask(A)) in [-1, 1]; H and W must be multiples of 4."""
        # the mask extractor first: its full-resolution blocks set the memory peak, and run first they do not
        # stack on what the NRN leaves in the allocator (same outputs in either order)
        mask = self.netH.mask(low) if self.netH is not None else None
        pre = self.netPre(low) if self.netPre is not None else None
        return self.netG_A(generator_input(low, pre, mask))

    @torch.no_grad()
    def enhance(self, low: Tensor) -> Tensor:
        """Enhances images of any size in [-1, 1] -> [-1, 1] at the input size, so metrics compare with the
        ground truth pixel for pixel. Sizes that are not multiples of 4 are handled by `inference_resize`:
        `round_to_4` (released rule: bicubic resize to the nearest multiples of 4 and the output back) or `pad`
        (reflection padding, output cropped; `core.imageops`). The NRN's MLP runs in chunks of
        `nrn_chunk_pixels`; the NRN computes its four equal ensemble terms once (`LocalImplicitHead`). With
        `inference_bf16` the networks run under bfloat16 autocast (output float32; not the released numerics:
        `python -m experiments.benchmark nerco` measures the difference). Sides must be at least `MIN_SIDE`
        pixels (the generators' reflection padding)."""
        h = self.hparams
        bf16 = bool(h.get("inference_bf16", False))
        channels_last = self._channels_last and low.device.type == "cpu"
        if channels_last and not next(self.netG_A.parameters()).is_contiguous(memory_format=torch.channels_last):
            channels_last_networks(self.netPre, self.netH, self.netG_A)  # once, on the first CPU call
        return enhance_image(
            self, self.netPre, low, h.nrn_chunk_pixels, h.inference_resize, bf16, channels_last
        )

    def for_inference(self) -> NeRCo:
        """For processes that only run inference (`experiments.enhance`, `experiments.evaluate`): on a CPU,
        `enhance` then runs the networks it needs on channels-last weights (converted at its first call) and
        images (`nerco_inference.channels_last_networks`; same function up to float rounding, 1.4-1.5x faster
        here than channel-first, `python -m experiments.benchmark nerco`). GPU runs keep channel-first (not
        measured here)."""
        self._channels_last = True
        return self

    def inference_memory_mb(self, height: int, width: int) -> float:
        """Estimated working memory (MB) of `enhance` on one (height, width) image: `inference_memory_estimate_mb`
        with this model's settings."""
        return inference_memory_estimate_mb(
            height,
            width,
            chunk_pixels=self.hparams.nrn_chunk_pixels,
            coordinates=self.netPre.coordinates if self.netPre is not None else None,
            ngf=self.hparams.ngf,
            inference_resize=self.hparams.inference_resize,
        )

    def set_inference_options(
        self,
        nrn_chunk_pixels: int | None = None,
        inference_resize: str | None = None,
        inference_bf16: bool | None = None,
    ) -> None:
        """Replaces the inference settings given (not None), also of a model rebuilt from a checkpoint:
        `nrn_chunk_pixels` (the NRN's MLP in bands of about this many pixels), `inference_resize` and
        `inference_bf16` (bfloat16 autocast)."""
        chunk = self.hparams.nrn_chunk_pixels if nrn_chunk_pixels is None else int(nrn_chunk_pixels)
        resize = self.hparams.inference_resize if inference_resize is None else str(inference_resize)
        bf16 = self.hparams.get("inference_bf16", False) if inference_bf16 is None else inference_bf16
        check_inference_options(chunk, resize, bf16)
        self.hparams.nrn_chunk_pixels, self.hparams.inference_resize = chunk, resize
        self.hparams.inference_bf16 = bool(bf16)

    def inference_options(self) -> dict[str, Any]:
        """The settings `set_inference_options` takes, as they are now (for run records)."""
        return {
            "nrn_chunk_pixels": self.hparams.nrn_chunk_pixels,
            "inference_resize": self.hparams.inference_resize,
            "inference_bf16": bool(self.hparams.get("inference_bf16", False)),
        }

    def forward_train(self, A: Tensor, B: Tensor) -> dict[str, Tensor | None]:
        """The released `forward` (with components switched off where configured)."""
        return nerco_objectives.released_forward(self.nets, A, B, self.components)

    # ------------------------------------------------------------------------------------------ losses
    def text_terms(self, o: Mapping[str, Tensor | None]) -> tuple[Tensor, Tensor]:
        """(TEXT_A, TEXT_B): released `loss_D_A_CLIP`, `loss_D_B_CLIP`, before the lambda_text weight."""
        backend = self.build_text_backend()
        aa = bool(self.text_options.get("antialias", False))
        score_text = nerco_objectives.text_scorer(backend.logits, backend.image_size, aa)
        inputs = nerco_objectives.text_inputs(o, self.faithful["text_inputs"], self.pools)
        return nerco_objectives.text_terms(score_text, *inputs)

    def generator_loss(
        self, A: Tensor, B: Tensor, o: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """loss_G and its weighted terms (they sum to loss_G): `nerco_objectives.generator_terms`."""
        c, w, edge_mode = self.components, self.weights, self.faithful["edge_generator_input"]
        t = nerco_objectives.generator_terms(self.nets, A, B, o, c, w, edge_mode, self.text_terms)
        return sum(t.values()), t

    def discriminator_losses(
        self, A: Tensor, B: Tensor, o: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The four discriminators' LSGAN losses on pooled fakes, in the released order (the order in which
        the pools and the random edge projections draw random numbers): `nerco_objectives.discriminator_terms`."""
        t = nerco_objectives.discriminator_terms(self.nets, A, B, o, self.components, self.pools)
        return sum(t.values()), t

    # ------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        A, B = training_pair(batch)
        if not self._warned_batch:
            self._warned_batch = warn_official_batch(self.hparams.variant, A.shape[0])
        opt_g, opt_d = self.optimizers()
        o = self.forward_train(A, B)

        self.toggle_optimizer(opt_g)  # discriminators frozen (released set_requires_grad(D, False))
        loss_g, g_terms = self.generator_loss(A, B, o)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        loss_d, d_terms = self.discriminator_losses(A, B, o)
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        terms = {f"train__{k}": v.detach() for k, v in {**g_terms, **d_terms}.items() if torch.is_tensor(v)}
        self.accumulate(train__loss_G=loss_g.detach(), train__loss_D=loss_d.detach(), **terms)
        self.log_step("train/loss_G_step", loss_g.detach())

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        """PSNR/SSIM under the suite's protocol (`self.protocol`) and val/loss = L1 in [0, 1] (what a
        monitoring ModelCheckpoint would use) on the paired validation split."""
        out = self.enhance(batch["low"])
        pred, target = self.unit(out), self.unit(batch["high"])
        values = score(pred, target, self.protocol)
        values["loss"] = (pred.clamp(0, 1) - target).abs().mean(dim=(1, 2, 3))
        if batch_idx == 0:
            psnr_low = self.panel_psnr(self.unit(batch["low"]), target)
            rows = nerco_eval.validation_rows(
                batch, out, psnr_low, values["psnr"], self.hparams.num_val_images
            )
            self._val_images, self._val_captions, self._val_names = rows
        for name, value in values.items():
            self.val_metrics[name].update(value.float())
            self.log(
                f"val/{name}", self.val_metrics[name], on_step=False, on_epoch=True, prog_bar=name == "psnr"
            )

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """`test/psnr`, `test/ssim`, per-image rows and side-by-side PNGs (low | NeRCo | high), RestorationModule.
        With expensive_metrics=false the images are centre crops of CHEAP_TEST_SIDE pixels (labelled so)."""
        if not self.hparams.get("expensive_metrics", True):
            batch = centre_crop_batch(batch, CHEAP_TEST_SIDE, keys=("low", "high"))
        self.score_outputs(batch, self.enhance(batch["low"]))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._val_images is not None and not self.trainer.sanity_checking:
            log_figure(self, "val/enhanced", self.validation_figure(), caption="low | NeRCo | high")
        self._val_images = None

    def validation_figure(self) -> np.ndarray:
        """The first validation images, one row each: low (input) | NeRCo | high (ground truth), each with its
        PSNR against the ground truth under the protocol; rows labelled with the image names."""
        return nerco_eval.validation_figure(
            self._val_images, self._val_captions, self._val_names, self.current_epoch, self.global_step
        )

    def method_descriptions(self) -> dict[str, str]:
        return {"model": "NeRCo fake_B = G_H([A, NRN(A)] * mask(A)), (x + 1) / 2 scored"}

    def metric_protocol(self) -> dict[str, Any]:
        """The suite's restoration protocol (images (x + 1) / 2 of the [-1, 1] tensors) plus how NeRCo was run."""
        extra = nerco_eval.nerco_protocol(
            self.hparams, self.faithful, self.components, bool(self.official_weights)
        )
        return {**super().metric_protocol(), **extra}

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.save_pools_in_checkpoint:
            checkpoint["nerco_pools"] = pools_state(self.pools)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_pools(self.pools, checkpoint.get("nerco_pools"), self.device)

    def load_official_weights(self, ckpt_dir: str | Path) -> dict[str, str]:
        """Loads the released `latest_net_{G_A,Pre,H}.pth` into netG_A, netPre, netH (strict)."""
        nets = {"G_A": self.netG_A, "Pre": self.netPre, "H": self.netH}
        off = [k for k, n in nets.items() if n is None]
        if off:
            raise OfficialCheckpointError(
                f"official_ckpt_dir={ckpt_dir} needs the NRN and the mask extractor; switched off here: {off}"
            )
        return load_official_state_dicts(ckpt_dir, nets)
