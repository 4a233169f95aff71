"""The logging of labelled figures (`core.figures`) from a LightningModule, their row labels, and the labelled grid
of a generative model's samples (`samples_figure`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.figures import figure


def log_figure(module: Any, key: str, image: np.ndarray, caption: str | None = None) -> None:
    """Logs one finished (H, W, 3) uint8 figure (`core.figures.figure`) under `key` to every logger of
    `module` that takes images (W&B, and the PNG writer the entry points always attach). Rank zero only;
    nothing without a trainer."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not trainer.is_global_zero:
        return
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise TypeError(
            f"log_figure({key!r}): expected an (H, W, 3) uint8 figure, got {image.dtype} {image.shape}"
        )
    for logger in module.loggers:
        log_image = getattr(logger, "log_image", None)
        if callable(log_image):
            kwargs = {"caption": [caption]} if caption else {}
            log_image(key=key, images=[image], step=module.global_step, **kwargs)


def psnr_text(value: float) -> str:
    """'PSNR 24.31 dB' (an identical image: 'PSNR inf dB (identical)')."""
    value = float(value)
    if math.isinf(value) and value > 0:
        return "PSNR inf dB (identical)"
    return f"PSNR {value:.2f} dB"


def seed_row_labels(first_seed: int, n: int, ncols: int) -> list[str]:
    """One label per grid row of n images with seeds first_seed, first_seed + 1, ...: 'seeds 0-7', ..."""
    labels = []
    for start in range(0, n, ncols):
        lo, hi = first_seed + start, first_seed + min(start + ncols, n) - 1
        labels.append(f"seed {lo}" if lo == hi else f"seeds {lo}-{hi}")
    return labels


def samples_figure(
    images: torch.Tensor,
    sampling: dict[str, Any],
    first_seed: int,
    num_classes: int = 0,
    when: str | None = None,
    ncols: int | None = None,
    family: str = "Generative model",
    title_options: Sequence[str] = (),
) -> np.ndarray:
    """A labelled grid of samples; image i has seed first_seed + i. The title "<family> samples: ..." names the
    sampler, its steps, the `title_options` of `sampling` that are set (DDPM: DDIM's eta), the guidance scale,
    a fixed class label and the weights (`sampling`, as `GenerativeModule.sampling_description` gives it);
    rows are labelled with their seeds. Without a fixed `class_label`, a conditional model's images have
    labels 0, 1, ..., C-1, 0, ... and the grid has one column per class, labelled "class c"."""
    per_class = bool(num_classes) and sampling.get("class_label") is None
    ncols = num_classes if per_class else min(ncols or 8, len(images))
    parts = [f"{sampling['sampler']}, {sampling['steps']} steps"]
    for key in title_options:
        value = sampling.get(key)
        if value is not None:
            parts.append(f"{key} {value:g}" if isinstance(value, (int, float)) else f"{key} {value}")
    if sampling.get("guidance_scale") is not None:
        parts.append(f"guidance {sampling['guidance_scale']:g}")
    if sampling.get("class_label") is not None:
        parts.append(f"class {int(sampling['class_label'])}")
    if sampling.get("weights"):
        parts.append(str(sampling["weights"]))
    return figure(
        images,
        ncols,
        title=f"{family} samples: {', '.join(parts)}" + (f" ({when})" if when else ""),
        row_labels=seed_row_labels(first_seed, len(images), ncols),
        col_labels=[f"class {c}" for c in range(num_classes)] if per_class else None,
    )
