"""NeRCo inference on images of any size (Yang et al., ICCV 2023, arXiv 2303.11722; the released test path
and its size rules are in `lit_modules.nerco_release`): the smallest side the generators take, sizes that
are not multiples of 4 (`round_to_4`, the released rule, or `pad`), and the NRN's MLP evaluated in bands of
pixels to bound memory (the estimate `experiments.enhance` plans with is
`nerco_release.inference_memory_estimate_mb`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from core.imageops import resize_to_multiple, run_padded
from lit_modules.nerco_release import MIN_SIDE


def check_min_side(low: Tensor, min_side: int = MIN_SIDE) -> None:
    """Both sides at least `min_side` pixels (after the two stride-2 stages the residual blocks
    reflection-pad by 1); ValueError otherwise."""
    h, w = low.shape[-2:]
    if min(h, w) < min_side:
        raise ValueError(f"NeRCo needs images of at least {min_side}x{min_side} pixels, got {w}x{h} (w x h)")


def enhance_any_size(model: Callable[[Tensor], Tensor], low: Tensor, inference_resize: str) -> Tensor:
    """`model` (multiples of 4 only) on images of any size, output at the input size: `pad` reflection-pads
    the bottom/right and crops back (`core.imageops.run_padded`); `round_to_4` resizes (bicubic) to the
    nearest multiples of 4 and the output back, clamped to [-1, 1]."""
    h, w = low.shape[-2:]
    if inference_resize == "pad":
        return run_padded(model, low, 4)
    out = model(resize_to_multiple(low, 4))
    if out.shape[-2:] != (h, w):
        out = F.interpolate(out, (h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
    return out


@contextlib.contextmanager
def nrn_chunking(net_pre: nn.Module | None, chunk_pixels: int | None) -> Iterator[None]:
    """The NRN's MLP in bands of about `chunk_pixels` pixels while the block runs (inference only: under
    autograd every band would stay alive anyway), its own setting restored after; no NRN: nothing to do."""
    if net_pre is None:
        yield
        return
    saved, net_pre.chunk_pixels = net_pre.chunk_pixels, chunk_pixels
    try:
        yield
    finally:
        net_pre.chunk_pixels = saved
