"""NeRCo's evaluation outputs (Yang et al., ICCV 2023, arXiv 2303.11722, scored with the suite's PSNR/SSIM
protocol of `lit_modules.metrics.restoration`, not the paper's code, which has none): the validation figure
(one row per image: low | NeRCo | high, each with its PSNR against the ground truth), the cheap centre-crop
test and the text the metrics record carries about how NeRCo was run. Plain functions; the `NeRCo` module
(`lit_modules.nerco`) calls them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.figures import figure
from lit_modules.nerco_release import INFERENCE_RESIZE
from lit_modules.restoration import psnr_caption

CHEAP_TEST_SIDE = (
    128  # expensive_metrics=false: the test scores centre crops of this side (not the paper's protocol)
)
VALIDATION_COLUMNS = ["low (input)", "NeRCo", "high (ground truth)"]


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


def validation_triplets(low: Tensor, out: Tensor, high: Tensor, n: int) -> Tensor:
    """(3 m, C, H, W) on the CPU, m = min(n, batch): low, NeRCo, high of each of the first m images in turn."""
    n = min(n, low.shape[0])
    return torch.stack([low[:n], out[:n], high[:n]], dim=1).flatten(0, 1).detach().cpu()


def validation_captions(psnr_low: Tensor | None, psnr_out: Tensor | None, n: int) -> list[str | None]:
    """Captions of n figure rows: the input's and NeRCo's PSNR against the ground truth, then "reference"."""
    return [
        text for k in range(n) for text in (psnr_caption(psnr_low, k), psnr_caption(psnr_out, k), "reference")
    ]


def validation_names(batch: Any, n: int) -> list[str] | None:
    """The first n image names of a validation batch (`low_name`), or None where it has none."""
    names = batch.get("low_name") if isinstance(batch, Mapping) else None
    return [str(v) for v in names[:n]] if names is not None else None


def validation_rows(
    batch: Mapping[str, Any], out: Tensor, psnr_low: Tensor | None, psnr_out: Tensor | None, num_images: int
) -> tuple[Tensor, list[str | None], list[str] | None]:
    """What the validation figure shows of a paired batch (`low`, `high`, `low_name`) and NeRCo's output:
    the triplets, their captions and the image names of the first `num_images` images."""
    images = validation_triplets(batch["low"], out, batch["high"], num_images)
    n = len(images) // 3
    return images, validation_captions(psnr_low, psnr_out, n), validation_names(batch, n)


def validation_figure(
    images: Tensor,
    captions: Sequence[str | None] | None,
    names: Sequence[str] | None,
    epoch: int,
    step: int,
) -> np.ndarray:
    """The first validation images, one row each: low (input) | NeRCo | high (ground truth), each with its
    PSNR against the ground truth under the protocol; rows labelled with the image names."""
    n = len(images) // 3
    return figure(
        images,
        3,
        title=f"NeRCo validation, epoch {epoch}, step {step}: PSNR against the ground truth",
        row_labels=names or [f"image {k + 1}" for k in range(n)],
        col_labels=VALIDATION_COLUMNS,
        captions=captions,
        value_range=(-1.0, 1.0),
        min_size=128,  # as the test side-by-sides: small crops enlarged (exact pixels) so the labels fit
    )


def inference_description(expensive_metrics: bool, inference_resize: str, bf16: bool = False) -> str:
    """How the test ran NeRCo, for the metrics record: full resolution or the cheap centre crops, the batch,
    how sizes that are not multiples of 4 were handled, and bfloat16 autocast when it was on."""
    where = (
        "full resolution"
        if expensive_metrics
        else f"CENTRE {CHEAP_TEST_SIDE}x{CHEAP_TEST_SIDE} CROPS (expensive_metrics=false): not the "
        "paper's protocol, not comparable"
    )
    return (
        where + ", batch as the DataModule gives it (eval_batch_size 1); sizes not "
        f"divisible by 4: {INFERENCE_RESIZE[inference_resize]} (inference_resize={inference_resize})"
        + ("; networks under bfloat16 autocast (inference_bf16=true, not the released fp32)" if bf16 else "")
    )


def nerco_protocol(
    hparams: Mapping[str, Any], faithful: Mapping[str, Any], components: Mapping[str, bool], released: bool
) -> dict[str, Any]:
    """What the metrics record says about how NeRCo was run, beside the suite's restoration protocol:
    inference, variant, `faithful` entries, component switches, and whose weights (`released`: the
    released checkpoints of `official_ckpt_dir`)."""
    return {
        "inference": inference_description(
            hparams.get("expensive_metrics", True),
            hparams["inference_resize"],
            bool(hparams.get("inference_bf16", False)),
        ),
        "variant": hparams["variant"],
        "faithful": dict(faithful),
        "components": dict(components),
        "weights": f"released checkpoints from {hparams['official_ckpt_dir']}"
        if released
        else "trained in this suite",
    }
