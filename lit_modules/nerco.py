"""NeRCo (Yang et al., "Implicit Neural Representation for Cooperative Low-light Image Enhancement", ICCV 2023,
arXiv 2303.11722; seed 002) as a LightningModule with manual optimisation, faithful to the released code
(`Ysz2022/NeRCo`) under `variant="official"` and to the paper under `variant="paper"`.

Glossary (paper -> released -> here): A / I_L = low light, B / I_H = normal light (unpaired); NRN -> netPre;
Mask Extractor -> netH (returns H, the residual "noise" image, and `mask`); G_H -> netG_A (enhance, input
[image, NRN(image)] * mask); G_L -> netG_B (degrade); colour discriminators D_A (judges fake_B, the enhanced
image) and D_B (judges fake_A and NRN(A)); edge discriminators D_A_edge, D_B_edge; text-driven discriminator
-> a frozen CLIP RN50 scoring "low light image" vs "high light image" (`lit_modules/nets/clip_backend.py`).

Training iteration (released `optimize_parameters`): forward; G step (D frozen) on loss_G; D step on the
(pooled, detached) fakes. Forward (released `forward`):
  pre_A = NRN(A);  H, mask = MaskExtractor(A)
  fake_B = G_H([A, pre_A] * mask);  rec_A = G_L(fake_B)                       (A -> B -> A loop)
  fake_A = G_L(B * mask);  rec_B = G_H([fake_A, NRN(fake_A)])                  (B -> A -> B loop)
Generator loss (released `backward_G`; weights from config, released values in brackets):
  loss_A = GAN(D_A(fake_B)) + l_A |rec_A - A| [10] + l_B l_idt |G_H([B, B]) - B| [5]
           + l_text TEXT(fake_B, rec_B -> "high") [0.5] + l_edge GAN(D_A_edge(e(fake_B))) [0.5]
  loss_B = GAN(D_B(fake_A)) + GAN(D_B(pre_A)) + l_B |rec_B - B| + l_A l_idt |G_L(A) - A|
           + l_text TEXT(fake_A, rec_A -> "low") + l_edge GAN(D_B_edge(e(fake_A)))
  loss_PreConsis = l_pre |pre_A - A| [40] + GAN(D_B(pre_A))
  loss_H = |fake_B - (A + H)| + |B - G_H([B - H, B - H])| + GAN(D_A(A + H)) + GAN(D_B(B - H))
           + |H - (fake_B - A)| + |fake_A - (B - H(fake_A))|
  loss_G = loss_A + loss_B + l_mask loss_H [0.5] + loss_PreConsis
where e(x) is the edge map under variant=paper and x itself (RGB) under variant=official (released quirk).

Data (phase 2): training batches come from the low-light DataModule in `data.mode=unpaired` (`low` = trainA,
`high` = a normal-light image drawn independently: NeRCo's trainB), or as `{"A", "B"}`; images in [-1, 1].
Validation and test take the paired split at full resolution; test scoring, per-image rows and side-by-side
PNGs come from `RestorationModule` with the suite's PSNR/SSIM protocol (`lit_modules.metrics.restoration`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from core.errors import InputError
from core.figures import figure
from lit_modules.imageops import resize_to_multiple, run_padded
from lit_modules.images import log_figure
from lit_modules.metrics.restoration import score
from lit_modules.nerco_losses import (
    HIGH,
    LOW,
    ImagePool,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    linear_decay_factor,
    lsgan,
    mask_bypass_loss,
    mask_self_loss,
    pre_consistency_l1,
    resize_for_text_encoder,
    text_loss,
)
from lit_modules.nets.clip_backend import TextImageBackend, build_text_backend
from lit_modules.nets.cyclegan import PatchDiscriminator, ResnetGenerator
from lit_modules.nets.nerco import NRN, EdgeOperator, MaskExtractor
from lit_modules.restoration import RestorationModule, psnr_caption

log = logging.getLogger(__name__)

# What each variant computes. Every entry can be overridden alone through `faithful.<key>` (null = variant's).
VARIANTS: dict[str, dict[str, Any]] = {
    "official": {  # what the released code computes (REFERENCE.md section 1, "differences")
        "text_inputs": "pooled",  # CLIP sees pool outputs (.data: detached, no gradient); fake_A via the fake_B pool
        "edge_generator_input": "rgb",  # G loss feeds RGB to D_A_edge / D_B_edge (trained on edge maps)
        "nrn_coordinates": "constant",  # grid_sample commented out: zero relative coordinates, cell (2, 2)
        "edge_rgb": "random_per_call",  # grey->RGB by a fresh random 1x1 conv on every call
        "lr_step_at_epoch_start": True,  # train.py steps the LR scheduler before each epoch
    },
    "paper": {  # what the paper describes
        "text_inputs": "direct",  # the text-driven discriminator supervises the outputs: gradient reaches G
        "edge_generator_input": "edge",  # edge maps into the edge discriminators, as they are trained
        "nrn_coordinates": "liif",  # real relative coordinates, cells and area-weighted local ensemble
        "edge_rgb": "repeat",  # deterministic grey map copied to 3 channels
        "lr_step_at_epoch_start": False,  # 100 constant epochs, then 200 of linear decay (CycleGAN schedule)
    },
}
COMPONENTS = {
    "nrn": True,  # NRN (netPre); off: G_H gets [A, A], no pre_A terms
    "mask_extractor": True,  # netH; off: mask = 1, no loss_H
    "text_discriminator": True,  # CLIP terms
    "edge_discriminators": True,  # D_A_edge, D_B_edge and their terms
    "second_loop": True,  # B -> A -> B loop (fake_A, rec_B and every term that uses them)
    "identity": True,  # identity terms |G_H([B,B]) - B|, |G_L(A) - A|
    "consistency": True,  # NRN pre-consistency loss_PreConsis
}
WEIGHTS = {
    "lambda_A": 10.0,
    "lambda_B": 10.0,
    "lambda_identity": 0.5,
    "lambda_text": 0.5,
    "lambda_edge": 0.5,
    "lambda_mask": 0.5,
    "lambda_pre_l1": 40.0,
    "lambda_pre_gan": 1.0,
}
OFFICIAL_FILES = {"G_A": "latest_net_G_A.pth", "Pre": "latest_net_Pre.pth", "H": "latest_net_H.pth"}
# How test/inference handle sizes that are not multiples of 4 (the generators' two stride-2 stages):
INFERENCE_RESIZE = {
    "round_to_4": "resize (bicubic) to the nearest multiples of 4, as the released test code does "
    "(CycleGAN's __make_power_2), and the output back to the input size",
    "pad": "reflection-pad the bottom/right to multiples of 4 and crop the output back (no resampling)",
}
VALUE_RANGE = (-1.0, 1.0)  # NeRCo's images: Normalize(0.5, 0.5) of [0, 1], tanh outputs


class OfficialCheckpointError(InputError):
    """A released-checkpoint directory that does not hold the three state_dicts the architecture needs."""


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid: {sorted(defaults)}")
    return {k: (defaults[k] if given.get(k) is None else given[k]) for k in defaults}


CHEAP_TEST_SIDE = 128  # expensive_metrics=false: the test scores centre crops of this side (not the paper's protocol)


def centre_crop_batch(batch: Mapping[str, Any], side: int, keys: tuple[str, ...]) -> dict[str, Any]:
    """The batch with the image tensors under `keys` cropped to their central `side` x `side` pixels (or less
    where an image is smaller); other entries (names) unchanged."""
    out = dict(batch)
    for key in keys:
        x = batch[key]
        h, w = x.shape[-2:]
        ch, cw = min(side, h), min(side, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        out[key] = x[..., top : top + ch, left : left + cw]
    return out


MIN_SIDE = 8  # smallest image side: after the two stride-2 stages the residual blocks reflection-pad by 1


def inference_memory_estimate_mb(
    height: int,
    width: int,
    chunk_pixels: int | None = 16384,
    coordinates: str | None = "constant",
    ngf: int = 64,
    inference_resize: str = "round_to_4",
) -> float:
    """Estimated working memory (MB) of NeRCo's inference (`NeRCo.enhance`, no autograd) on one image, beyond the
    loaded weights: activations of the NRN trunk, the mask extractor and G_H, ~0.9 KB per pixel at ngf 64,
    plus the NRN's MLP on one band of rows, ~7 KB per pixel of the band (twice that for `liif` coordinates),
    times a 1.25 margin, plus 64 MB. `coordinates=None`: no NRN. Fitted to peak resident-set measurements on
    CPU at 600x400 and 960x720; `python -m experiments.benchmark nerco` prints it beside each measured peak."""
    if inference_resize == "round_to_4":
        th, tw = released_size(height, width)
    else:
        th, tw = height + (-height) % 4, width + (-width) % 4
    th, tw = max(th, 4), max(tw, 4)
    mb = th * tw * 0.9e-3 * (ngf / 64)
    if coordinates is not None:
        rows = th if not chunk_pixels else max(1, min(th, chunk_pixels // tw))
        mb += rows * tw * 7.0e-3 * (2.0 if coordinates == "liif" else 1.0)
    return 1.25 * mb + 64.0


def training_pair(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(A, B) of a training batch: `{"A", "B"}`, or the low-light DataModule's `{"low", "high"}` (unpaired mode:
    `low` = trainA, `high` = an independently drawn normal-light image, trainB)."""
    if "A" in batch and "B" in batch:
        return batch["A"], batch["B"]
    if "low" in batch and "high" in batch:
        return batch["low"], batch["high"]
    raise KeyError(
        f"NeRCo training batches need keys A and B (or low and high from data.mode=unpaired); got {sorted(batch)}"
    )


def released_size(height: int, width: int, base: int = 4) -> tuple[int, int]:
    """The released test-time rule `__make_power_2`: round each side to the nearest multiple of `base`
    (Python's round: halves to even)."""
    return int(round(height / base) * base), int(round(width / base) * base)


class NeRCo(RestorationModule):
    """NeRCo with two optimizers (Pre+G_A+G_B+H; the four discriminators), manual optimisation.

    Batches, images in [-1, 1]:
      training: `{"A": low (B,3,h,w), "B": normal (B,3,h,w)}`, unpaired, same size; or the low-light
        DataModule's items `{"low", "high", ...}` with `data.mode=unpaired` (then `low` is trainA and `high` a
        normal-light image drawn independently of it, NeRCo's trainB), which this module reads as A and B;
      validation/test: the DataModule's paired items `{"low", "high", "low_name", ...}`, any size (`enhance`).
    """

    output_label = "NeRCo"  # the side-by-side panel of the model
    optimizer_steps_per_batch = 2  # manual optimisation: generators, then discriminators (global_step counts both)

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
        official_ckpt_dir: str | None = None,
        num_val_images: int = 4,
        save_pools_in_checkpoint: bool = False,
        protocol: Mapping[str, Any] | None = None,
        num_side_by_side: int = 4,
        expensive_metrics: bool = True,
    ):
        # Hydra hands nested options over as DictConfig; plain containers keep the checkpoints' hyperparameters
        # loadable with torch.load(weights_only=True) (Lightning's default when it tests a checkpoint)
        faithful, components, weights, text_discriminator, protocol = (
            _plain(v) for v in (faithful, components, weights, text_discriminator, protocol)
        )
        super().__init__(value_range=VALUE_RANGE, protocol=protocol, num_side_by_side=num_side_by_side)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if inference_resize not in INFERENCE_RESIZE:
            raise ValueError(
                f"inference_resize must be one of {sorted(INFERENCE_RESIZE)}, got {inference_resize!r}"
            )
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        self.faithful = _merge(VARIANTS[variant], faithful, "faithful")
        self.components = _merge(COMPONENTS, components, "components")
        self.weights = _merge(WEIGHTS, weights, "weights")
        self.text_options = dict(text_discriminator or {"backend": "open_clip"})
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
        c = self.components
        if official_ckpt_dir:  # cheap checks first: a wrong directory fails before ~50M parameters are built
            check_official_dir(official_ckpt_dir, list(OFFICIAL_FILES))

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
        # the text backend is kept out of the state_dict (frozen, ~100 MB for RN50, rebuilt at each fit)
        self._text: list[TextImageBackend] = []
        pool_names = ["fake_A", "fake_B", "pre_A", "fake_A_edge", "fake_B_edge", "fake_A_text", "fake_B_text"]
        self.pools = {name: ImagePool(pool_size) for name in pool_names}
        self.val_metrics = nn.ModuleDict({k: MeanMetric() for k in ("psnr", "ssim", "loss")})
        self._val_images: Tensor | None = None
        self._val_captions: list[str | None] | None = None
        self._val_names: list[str] | None = None
        self._warned_batch = False
        self.official_weights: dict[str, str] | None = None
        if official_ckpt_dir:
            self.official_weights = self.load_official_weights(official_ckpt_dir)

    # ------------------------------------------------------------------------------------------ set-up
    @property
    def generators(self) -> list[nn.Module]:
        return [n for n in (self.netPre, self.netG_A, self.netG_B, self.netH) if n is not None]

    @property
    def discriminators(self) -> list[nn.Module]:
        return [n for n in (self.netD_A, self.netD_B, self.netD_A_edge, self.netD_B_edge) if n is not None]

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
        self._check_datamodule(stage)
        if stage == "fit":  # start-up failure, before any step, when no backend can be had
            self.build_text_backend()

    def _check_datamodule(self, stage: str) -> None:
        """NeRCo's images are in [-1, 1]; its training data are unpaired (a wrong setting fails or warns here,
        before any step, rather than training on the wrong range or on aligned pairs)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        vr = getattr(dm, "value_range", None)
        if vr is not None and tuple(float(v) for v in vr) != VALUE_RANGE:
            raise ValueError(
                f"NeRCo works on images in [-1, 1] but the DataModule yields {list(vr)}: set "
                "data.value_range=[-1,1] (the nerco_* experiments do)"
            )
        if stage == "fit" and getattr(dm, "mode", None) == "paired":
            warnings.warn(
                "data.mode=paired: NeRCo's normal-light image B is then the low image's own partner; the paper and "
                "the released code train unpaired (data.mode=unpaired, as in the nerco_* experiments).",
                stacklevel=2,
            )

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
        factor = self.lr_factor(epoch)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor
        return factor

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
    def _g_a_input(self, x: Tensor, pre: Tensor | None, mask: Tensor | None) -> Tensor:
        inp = torch.cat([x, pre if pre is not None else x], dim=1)
        return inp * mask if mask is not None else inp

    def forward(self, low: Tensor) -> Tensor:
        """fake_B = G_H([A, NRN(A)] * mask(A)) in [-1, 1]; H and W must be multiples of 4."""
        pre = self.netPre(low) if self.netPre is not None else None
        mask = self.netH(low)[1] if self.netH is not None else None
        return self.netG_A(self._g_a_input(low, pre, mask))

    @torch.no_grad()
    def enhance(self, low: Tensor) -> Tensor:
        """Enhances images of any size in [-1, 1] -> [-1, 1] at the input size, so metrics compare with the
        ground truth pixel for pixel. Sizes that are not multiples of 4 are handled by `inference_resize`:
        `round_to_4` (released rule: bicubic resize to the nearest multiples of 4 and the output back) or `pad`
        (reflection padding, output cropped; `lit_modules.imageops`). The NRN's MLP runs in chunks of
        `nrn_chunk_pixels`. Sides must be at least `MIN_SIDE` pixels (the generators' reflection padding)."""
        h, w = low.shape[-2:]
        if min(h, w) < MIN_SIDE:
            raise ValueError(
                f"NeRCo needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {w}x{h} (w x h)"
            )
        with self._nrn_chunking():
            if self.hparams.inference_resize == "pad":
                return run_padded(self, low, 4)
            x = resize_to_multiple(low, 4)
            out = self(x)
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, (h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
        return out

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

    @contextlib.contextmanager
    def _nrn_chunking(self) -> Iterator[None]:
        """Chunked NRN evaluation for inference only (under autograd, chunks would all stay alive anyway)."""
        if self.netPre is None:
            yield
            return
        saved, self.netPre.chunk_pixels = self.netPre.chunk_pixels, self.hparams.nrn_chunk_pixels
        try:
            yield
        finally:
            self.netPre.chunk_pixels = saved

    def forward_train(self, A: Tensor, B: Tensor) -> dict[str, Tensor | None]:
        """The released `forward` (with components switched off where configured)."""
        c = self.components
        o: dict[str, Tensor | None] = {"pre_A": None, "H": None, "mask": None, "fake_A": None, "rec_B": None}
        if c["nrn"]:
            o["pre_A"] = self.netPre(A)
        if c["mask_extractor"]:
            o["H"], o["mask"] = self.netH(A)
        o["fake_B"] = self.netG_A(self._g_a_input(A, o["pre_A"], o["mask"]))
        o["rec_A"] = self.netG_B(o["fake_B"])
        if c["second_loop"]:
            o["fake_A"] = self.netG_B(B * o["mask"] if o["mask"] is not None else B)
            pre_fake_a = self.netPre(o["fake_A"]) if c["nrn"] else None
            o["rec_B"] = self.netG_A(self._g_a_input(o["fake_A"], pre_fake_a, None))
        return o

    # ------------------------------------------------------------------------------------------ losses
    def text_terms(self, o: Mapping[str, Tensor | None]) -> tuple[Tensor, Tensor]:
        """(TEXT_A, TEXT_B): released `loss_D_A_CLIP`, `loss_D_B_CLIP`, before the lambda_text weight."""
        backend = self.build_text_backend()
        size, aa = backend.image_size, bool(self.text_options.get("antialias", False))

        def score(images: Tensor, target: int) -> Tensor:
            return text_loss(backend.logits(resize_for_text_encoder(images, size, aa)), target)

        if self.faithful["text_inputs"] == "pooled":
            # released: three queries of the fake_B pool (fake_B, rec_B and fake_A), one of the fake_A pool
            # (rec_A); the pools return detached copies, so these terms send no gradient to any generator
            pool_b, pool_a = self.pools["fake_B_text"], self.pools["fake_A_text"]
            fake_b = pool_b.query(o["fake_B"])
            rec_b = pool_b.query(o["rec_B"]) if o["rec_B"] is not None else None
            fake_a = pool_b.query(o["fake_A"]) if o["fake_A"] is not None else None
            rec_a = pool_a.query(o["rec_A"])
        elif self.faithful["text_inputs"] == "direct":
            fake_b, rec_b, fake_a, rec_a = o["fake_B"], o["rec_B"], o["fake_A"], o["rec_A"]
        else:
            raise ValueError(
                f"faithful.text_inputs must be pooled or direct, got {self.faithful['text_inputs']!r}"
            )
        text_a = score(fake_b, HIGH) + (score(rec_b, HIGH) if rec_b is not None else 0.0)
        text_b = (score(fake_a, LOW) if fake_a is not None else 0.0) + score(rec_a, LOW)
        return text_a, text_b

    def _edge_for_generator(self, x: Tensor) -> Tensor:
        mode = self.faithful["edge_generator_input"]
        if mode == "rgb":  # released quirk: the RGB image itself, although D_*_edge are trained on edge maps
            return x
        if mode == "edge":
            return self.edge(x)
        raise ValueError(f"faithful.edge_generator_input must be rgb or edge, got {mode!r}")

    def generator_loss(
        self, A: Tensor, B: Tensor, o: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """loss_G and its weighted terms (they sum to loss_G)."""
        c, w = self.components, self.weights
        t: dict[str, Tensor] = {}
        fake_b, fake_a, pre_a = o["fake_B"], o["fake_A"], o["pre_A"]
        # loss_A / loss_B: adversarial, cycle, identity
        t["G_A"] = lsgan(self.netD_A(fake_b), True)
        t["cycle_A"] = cycle_loss(o["rec_A"], A, w["lambda_A"])
        if c["second_loop"]:
            t["G_B"] = lsgan(self.netD_B(fake_a), True)
            t["cycle_B"] = cycle_loss(o["rec_B"], B, w["lambda_B"])
        if c["nrn"]:
            t["G_B_pre"] = lsgan(self.netD_B(pre_a), True)
        if c["identity"]:
            t["idt_A"] = identity_loss(
                self.netG_A(torch.cat([B, B], 1)), B, w["lambda_B"], w["lambda_identity"]
            )
            t["idt_B"] = identity_loss(self.netG_B(A), A, w["lambda_A"], w["lambda_identity"])
        if c["edge_discriminators"]:
            t["G_A_edge"] = w["lambda_edge"] * lsgan(self.netD_A_edge(self._edge_for_generator(fake_b)), True)
            if c["second_loop"]:
                t["G_B_edge"] = w["lambda_edge"] * lsgan(
                    self.netD_B_edge(self._edge_for_generator(fake_a)), True
                )
        if c["text_discriminator"]:
            text_a, text_b = self.text_terms(o)
            t["text_A"], t["text_B"] = w["lambda_text"] * text_a, w["lambda_text"] * text_b
        # loss_PreConsis
        if c["nrn"] and c["consistency"]:
            t["pre_consis"] = pre_consistency_l1(pre_a, A, w["lambda_pre_l1"]) + w["lambda_pre_gan"] * lsgan(
                self.netD_B(pre_a), True
            )
        # loss_H (mask extractor)
        if c["mask_extractor"]:
            h = o["H"]
            bypass = mask_bypass_loss(fake_b, A, h, B, self.netG_A(torch.cat([B - h, B - h], 1)))
            adv = lsgan(self.netD_A(A + h), True) + lsgan(self.netD_B(B - h), True)
            h_fake_a = self.netH(fake_a)[0] if fake_a is not None else None
            self_term = mask_self_loss(h, fake_b, A, fake_a, B, h_fake_a)
            t["mask"] = w["lambda_mask"] * (bypass + adv + self_term)
        return sum(t.values()), t

    def discriminator_losses(
        self, A: Tensor, B: Tensor, o: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The four discriminators' LSGAN losses on pooled fakes, in the released order (the order in which
        the pools and the random edge projections draw random numbers)."""
        c, pools = self.components, self.pools
        t: dict[str, Tensor] = {}
        fake_b = o["fake_B"].detach()
        t["D_A"] = discriminator_loss(self.netD_A(B), self.netD_A(pools["fake_B"].query(fake_b)))
        d_b = []
        if c["second_loop"]:
            d_b.append(
                discriminator_loss(self.netD_B(A), self.netD_B(pools["fake_A"].query(o["fake_A"].detach())))
            )
        if c["nrn"]:
            d_b.append(
                discriminator_loss(self.netD_B(A), self.netD_B(pools["pre_A"].query(o["pre_A"].detach())))
            )
        if d_b:
            t["D_B"] = sum(d_b)
        if c["edge_discriminators"]:
            fake_edge = pools["fake_B_edge"].query(self.edge(fake_b))
            t["D_A_edge"] = discriminator_loss(self.netD_A_edge(self.edge(B)), self.netD_A_edge(fake_edge))
            if c["second_loop"]:
                fake_edge = pools["fake_A_edge"].query(self.edge(o["fake_A"].detach()))
                t["D_B_edge"] = discriminator_loss(
                    self.netD_B_edge(self.edge(A)), self.netD_B_edge(fake_edge)
                )
        return sum(t.values()), t

    # ------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        A, B = training_pair(batch)
        if A.shape != B.shape:
            raise ValueError(
                f"batch['A'] {tuple(A.shape)} and batch['B'] {tuple(B.shape)} must have one shape"
            )
        if self.hparams.variant == "official" and A.shape[0] > 1 and not self._warned_batch:
            self._warned_batch = True
            warnings.warn(
                f"variant=official with batch size {A.shape[0]}: the released code only runs with batch size 1 "
                "(its NRN cannot take more); this runs the per-pixel extension of it.",
                stacklevel=2,
            )
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
            self._val_images = self._triplets(batch["low"], out, batch["high"])
            n = len(self._val_images) // 3
            psnr_low = self.panel_psnr(self.unit(batch["low"]), target)
            self._val_captions = [
                text
                for k in range(n)
                for text in (psnr_caption(psnr_low, k), psnr_caption(values["psnr"], k), "reference")
            ]
            names = batch.get("low_name") if isinstance(batch, Mapping) else None
            self._val_names = [str(v) for v in names[:n]] if names is not None else None
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

    def _triplets(self, low: Tensor, out: Tensor, high: Tensor) -> Tensor:
        n = min(self.hparams.num_val_images, low.shape[0])
        return torch.stack([low[:n], out[:n], high[:n]], dim=1).flatten(0, 1).detach().cpu()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._val_images is not None and not self.trainer.sanity_checking:
            log_figure(self, "val/enhanced", self.validation_figure(), caption="low | NeRCo | high")
        self._val_images = None

    def validation_figure(self) -> np.ndarray:
        """The first validation images, one row each: low (input) | NeRCo | high (ground truth), each with its
        PSNR against the ground truth under the protocol; rows labelled with the image names."""
        n = len(self._val_images) // 3
        return figure(
            self._val_images,
            3,
            title=f"NeRCo validation, epoch {self.current_epoch}, step {self.global_step}: PSNR against the "
            "ground truth",
            row_labels=self._val_names or [f"image {k + 1}" for k in range(n)],
            col_labels=["low (input)", "NeRCo", "high (ground truth)"],
            captions=self._val_captions,
            value_range=(-1.0, 1.0),
            min_size=128,  # as the test side-by-sides: small crops enlarged (exact pixels) so the labels fit
        )

    def method_descriptions(self) -> dict[str, str]:
        return {"model": "NeRCo fake_B = G_H([A, NRN(A)] * mask(A)), (x + 1) / 2 scored"}

    def metric_protocol(self) -> dict[str, Any]:
        """The suite's restoration protocol (images (x + 1) / 2 of the [-1, 1] tensors) plus how NeRCo was run."""
        out = super().metric_protocol()
        out.update(
            {
                "inference": (
                    "full resolution"
                    if self.hparams.get("expensive_metrics", True)
                    else f"CENTRE {CHEAP_TEST_SIDE}x{CHEAP_TEST_SIDE} CROPS (expensive_metrics=false): not the "
                    "paper's protocol, not comparable"
                )
                + ", batch as the DataModule gives it (eval_batch_size 1); sizes not "
                f"divisible by 4: {INFERENCE_RESIZE[self.hparams.inference_resize]} "
                f"(inference_resize={self.hparams.inference_resize})",
                "variant": self.hparams.variant,
                "faithful": dict(self.faithful),
                "components": dict(self.components),
                "weights": f"released checkpoints from {self.hparams.official_ckpt_dir}"
                if self.official_weights
                else "trained in this suite",
            }
        )
        return out

    # ------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.save_pools_in_checkpoint:
            checkpoint["nerco_pools"] = {k: p.state() for k, p in self.pools.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, images in (checkpoint.get("nerco_pools") or {}).items():
            if name in self.pools:
                self.pools[name].load([img.to(self.device) for img in images])

    def load_official_weights(self, ckpt_dir: str | Path) -> dict[str, str]:
        """Loads the released `latest_net_{G_A,Pre,H}.pth` into netG_A, netPre, netH (strict)."""
        nets = {"G_A": self.netG_A, "Pre": self.netPre, "H": self.netH}
        off = [k for k, n in nets.items() if n is None]
        if off:
            raise OfficialCheckpointError(
                f"official_ckpt_dir={ckpt_dir} needs the NRN and the mask extractor; switched off here: {off}"
            )
        return load_official_state_dicts(ckpt_dir, nets)


# ---------------------------------------------------------------------------------- released checkpoints
def _describe_mismatch(fname: str, ours: Mapping[str, Tensor], theirs: Mapping[str, Any]) -> list[str]:
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = sorted(
        k
        for k in set(ours) & set(theirs)
        if torch.is_tensor(theirs[k]) and tuple(theirs[k].shape) != tuple(ours[k].shape)
    )
    lines = []
    if missing:
        lines.append(
            f"  {fname}: missing keys ({len(missing)}): {missing[:12]}{' ...' if len(missing) > 12 else ''}"
        )
    if unexpected:
        lines.append(
            f"  {fname}: unexpected keys ({len(unexpected)}): {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}"
        )
    for k in shapes[:12]:
        lines.append(
            f"  {fname}: {k} has shape {tuple(theirs[k].shape)} in the file, {tuple(ours[k].shape)} in the model"
        )
    if len(shapes) > 12:
        lines.append(f"  {fname}: ... and {len(shapes) - 12} more shape differences")
    return lines


def check_official_dir(ckpt_dir: str | Path, names: list[str]) -> Path:
    """The directory exists and holds the released file of each network in `names` (G_A, Pre, H)."""
    d = Path(ckpt_dir)
    expected = ", ".join(OFFICIAL_FILES[k] for k in names)
    if not d.is_dir():
        raise OfficialCheckpointError(
            f"official_ckpt_dir={d} is not a directory; it must hold {expected} (the released NeRCo archive)"
        )
    missing_files = [OFFICIAL_FILES[k] for k in names if not (d / OFFICIAL_FILES[k]).is_file()]
    if missing_files:
        raise OfficialCheckpointError(
            f"official_ckpt_dir={d} lacks {missing_files}; it must hold {expected} (the released NeRCo archive "
            "for LOL or LSRW, unpacked)"
        )
    return d


def load_official_state_dicts(ckpt_dir: str | Path, nets: Mapping[str, nn.Module]) -> dict[str, str]:
    """Checks then loads each released file (plain state_dict, `weights_only=True`) into its network with
    `strict=True`. Raises OfficialCheckpointError listing missing files, missing/unexpected keys and shapes."""
    d = check_official_dir(ckpt_dir, list(nets))
    states, problems = {}, []
    for name, net in nets.items():
        path = d / OFFICIAL_FILES[name]
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types for non-checkpoints
            problems.append(f"  {path.name}: not a readable PyTorch state_dict ({type(err).__name__}: {err})")
            continue
        if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
            problems.append(
                f"  {path.name}: not a plain state_dict (a mapping of parameter names to tensors)"
            )
            continue
        if sd and all(k.startswith("module.") for k in sd):  # a DataParallel-wrapped save
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        problems += _describe_mismatch(path.name, net.state_dict(), sd)
        states[name] = sd
    if problems:
        raise OfficialCheckpointError(
            f"official_ckpt_dir={d} does not fit the released NeRCo architecture:\n" + "\n".join(problems)
        )
    for name, net in nets.items():
        net.load_state_dict(states[name], strict=True)
    return {name: str(d / OFFICIAL_FILES[name]) for name in nets}


# ---------------------------------------------------------------------------------- released inference
def released_input(image: Any) -> Tensor:
    """A PIL image -> (1, 3, h', w') in [-1, 1] as the released test loader makes it (`--preprocess none`):
    RGB, resized with PIL bicubic to the nearest multiples of 4 only if needed, ToTensor, Normalize(0.5, 0.5)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    th, tw = released_size(h, w)
    if (th, tw) != (h, w):
        image = image.resize((tw, th), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return ((arr - 0.5) / 0.5)[None]


@torch.no_grad()
def released_enhance(
    g_a: nn.Module, pre: NRN, h: MaskExtractor, x: Tensor, chunk_pixels: int | None = 16384
) -> Tensor:
    """The released test path on one image (batch 1, H and W multiples of 4): fake_B = G_A([x, Pre(x)] *
    mask(x)) with the NRN's constant coordinates, returned as (fake_B + 1) / 2 in [0, 1]."""
    if x.shape[0] != 1:
        raise ValueError(f"the released test path runs batch size 1, got {x.shape[0]}")
    pre_x = pre.mlp(pre.model(x), "constant", chunk_pixels)
    fake_b = g_a(torch.cat([x, pre_x], 1) * h(x)[1])
    return (fake_b + 1) / 2


def released_uint8(image01: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 as the released `tensor2im`: * 255 and truncate (no rounding)."""
    arr = image01[0].detach().cpu().float().numpy().transpose(1, 2, 0) * 255.0
    return arr.astype(np.uint8)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "NeRCo",
    "OfficialCheckpointError",
    "VARIANTS",
    "COMPONENTS",
    "WEIGHTS",
    "OFFICIAL_FILES",
    "check_official_dir",
    "load_official_state_dicts",
    "released_input",
    "released_enhance",
    "released_uint8",
    "released_size",
    "training_pair",
    "inference_memory_estimate_mb",
    "count_parameters",
    "INFERENCE_RESIZE",
    "MIN_SIDE",
]
