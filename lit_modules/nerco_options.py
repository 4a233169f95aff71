"""NeRCo's options and input contracts (Yang et al., "Implicit Neural Representation for Cooperative Low-light
Image Enhancement", ICCV 2023, arXiv 2303.11722; released code `Ysz2022/NeRCo`): what each variant computes,
the component switches and loss weights with their released defaults, and the checks that reject a wrong
option, DataModule or training batch before any step. Plain constants and functions; the `NeRCo` module
(`lit_modules.nerco`) merges and applies them. Where the released code and the paper differ:
docs/references.md, section 1, and docs/nerco.md ("Variants").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from core.errors import ConfigError
from lit_modules.nerco_release import INFERENCE_RESIZE

# What each variant computes. Every entry can be overridden alone through `faithful.<key>` (null = variant's).
VARIANTS: dict[str, dict[str, Any]] = {
    "official": {  # what the released code computes (Ysz2022/NeRCo, where it differs from the paper)
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
VALUE_RANGE = (-1.0, 1.0)  # NeRCo's images: Normalize(0.5, 0.5) of [0, 1], tanh outputs
# image pools (history of 50 images each, the released `ImagePool`) of every discriminator input
POOLS = ("fake_A", "fake_B", "pre_A", "fake_A_edge", "fake_B_edge", "fake_A_text", "fake_B_text")


def merge_options(defaults: Mapping[str, Any], given: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """`defaults` with the entries of `given` that are not None; a key of `given` that `defaults` lacks is a
    ConfigError naming `model.<what>` and the valid keys."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown model.{what} keys {unknown}; valid: {sorted(defaults)}")
    return {k: (defaults[k] if given.get(k) is None else given[k]) for k in defaults}


def check_variant(variant: str) -> None:
    """`model.variant` is one of VARIANTS (ConfigError)."""
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant must be one of {sorted(VARIANTS)}, got {variant!r}")


def check_inference_options(
    nrn_chunk_pixels: int | None, inference_resize: str, inference_bf16: Any = False
) -> None:
    """`nrn_chunk_pixels` null or positive, `inference_resize` one of INFERENCE_RESIZE, `inference_bf16` a
    boolean (ConfigError)."""
    if not isinstance(inference_bf16, bool):
        raise ConfigError(f"inference_bf16={inference_bf16!r}: expected true or false")
    if inference_resize not in INFERENCE_RESIZE:
        raise ConfigError(
            f"inference_resize must be one of {sorted(INFERENCE_RESIZE)}, got {inference_resize!r}"
        )
    if nrn_chunk_pixels is not None and int(nrn_chunk_pixels) < 1:
        raise ConfigError(
            f"nrn_chunk_pixels={nrn_chunk_pixels}: expected a positive number of pixels or null"
        )


def check_datamodule(dm: Any, stage: str) -> None:
    """NeRCo's images are RGB in [-1, 1] (the DataModule's declared `image_shape` and `value_range`); its
    training data are unpaired (a wrong setting fails or warns here, before any step, rather than training
    on the wrong range or on aligned pairs). `dm` None (no DataModule attached): nothing to check."""
    if dm is None:
        return
    shape = getattr(dm, "image_shape", None)
    if shape is not None and shape[0] != 3:
        raise ConfigError(
            f"NeRCo enhances RGB images but the DataModule declares image_shape={list(shape)} "
            "(data.image_shape[0] must be 3)"
        )
    vr = getattr(dm, "value_range", None)
    if vr is not None and tuple(float(v) for v in vr) != VALUE_RANGE:
        raise ConfigError(
            f"NeRCo works on images in [-1, 1] but the DataModule yields {list(vr)}: set "
            "data.value_range=[-1,1] (the nerco_* experiments do)"
        )
    if stage == "fit" and getattr(dm, "mode", None) == "paired":
        warnings.warn(
            "data.mode=paired: NeRCo's normal-light image B is then the low image's own partner; the paper and "
            "the released code train unpaired (data.mode=unpaired, as in the nerco_* experiments).",
            stacklevel=2,
        )


def training_pair(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(A, B) of a training batch: `{"A", "B"}`, or the low-light DataModule's `{"low", "high"}` (unpaired mode:
    `low` = trainA, `high` = an independently drawn normal-light image, trainB). A and B must have one shape."""
    if "A" in batch and "B" in batch:
        A, B = batch["A"], batch["B"]
    elif "low" in batch and "high" in batch:
        A, B = batch["low"], batch["high"]
    else:
        raise KeyError(
            "NeRCo training batches need keys A and B (or low and high from data.mode=unpaired); "
            f"got {sorted(batch)}"
        )
    if A.shape != B.shape:
        raise ValueError(f"batch['A'] {tuple(A.shape)} and batch['B'] {tuple(B.shape)} must have one shape")
    return A, B


def warn_official_batch(variant: str, batch_size: int) -> bool:
    """Warns (and returns True) when variant=official runs a batch of more than one image, which the released
    code cannot (its NRN takes batch size 1); this suite then runs the per-pixel extension of it."""
    if variant != "official" or batch_size <= 1:
        return False
    warnings.warn(
        f"variant=official with batch size {batch_size}: the released code only runs with batch size 1 "
        "(its NRN cannot take more); this runs the per-pixel extension of it.",
        stacklevel=3,
    )
    return True
