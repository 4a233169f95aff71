"""NeRCo inference on images of any size (Yang et al., ICCV 2023, arXiv 2303.11722; the released test path
and its size rules are in `lit_modules.nerco_release`): the smallest side the generators take, sizes that
are not multiples of 4 (`round_to_4`, the released rule, or `pad`), and the NRN's MLP evaluated in bands of
pixels to bound memory (the estimate `experiments.enhance` plans with is
`nerco_release.inference_memory_estimate_mb`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
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


def bf16_autocast(model: Callable[[Tensor], Tensor], device: torch.device) -> Callable[[Tensor], Tensor]:
    """`model` under bfloat16 autocast on `device` (convolutions and matrix products in bf16, reductions such
    as the instance norms in float32, as autocast decides), its output returned as float32."""

    def run(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model(x).float()

    return run


def in_layout(model: Callable[[Tensor], Tensor], channels_last: bool) -> Callable[[Tensor], Tensor]:
    """`model` on its input laid out channels-last or channel-first (its convolutions then keep that layout,
    whatever strides the caller's image had: a permuted HxWxC array is channels-last already), its output
    returned channel-first."""
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def run(x: Tensor) -> Tensor:
        return model(x.contiguous(memory_format=layout)).contiguous()

    return run


def channels_last_networks(*nets: nn.Module | None) -> None:
    """The 4-D weights of `nets` in channels-last memory, for `enhance_image(..., channels_last=True)`: on
    this CPU oneDNN runs NeRCo's convolutions faster with channels-last images and weights (the
    64-channel full-resolution ones ~1.6x) than channel-first (`python -m experiments.benchmark nerco`).
    For inference-only processes: training keeps channel-first weights (its instance norms are torch's)."""
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: the weights may train later
        for net in nets:
            if net is not None:
                net.to(memory_format=torch.channels_last)


def enhance_image(
    forward: Callable[[Tensor], Tensor],
    net_pre: nn.Module | None,
    low: Tensor,
    chunk_pixels: int | None,
    inference_resize: str,
    bf16: bool = False,
    channels_last: bool = False,
) -> Tensor:
    """What `NeRCo.enhance` runs (the benchmark calls it on bare networks): `forward` (multiples of 4 only) on
    `low` of any size, the NRN's MLP in bands of `chunk_pixels`, optionally under bfloat16 autocast, on
    channel-first images, or with `channels_last` on a CPU on channels-last ones (for networks given
    `channels_last_networks`; the instance norms stay exact, `lit_modules.nets.norms`: same function up to
    float rounding)."""
    check_min_side(low, MIN_SIDE)
    net = bf16_autocast(forward, low.device) if bf16 else forward
    net = in_layout(net, channels_last and low.device.type == "cpu")
    with nrn_chunking(net_pre, chunk_pixels):
        return enhance_any_size(net, low, inference_resize)


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
