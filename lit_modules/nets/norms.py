"""Instance normalisation (Ulyanov et al. 2016, arXiv 1607.08022) with a fast, accurate path for
channels-last images at inference.

y = (x - mu_c) / sqrt(sigma_c^2 + eps), mu_c and sigma_c^2 the mean and biased variance of channel c of one
image over its H x W pixels. torch's `instance_norm` on a channels-last tensor copies it to channel-first
and back (4x slower than on channel-first data at 600x400x64 here), and its channels-last batch-norm
kernel, which for one image computes the same statistics, accumulates them sequentially in float32 over all
pixels (errors ~1e-4 relative, ~100x torch's channel-first path). `channel_moments` instead takes the
statistics of bands of rows with that kernel (`torch.batch_norm_update_stats`, no output written) and
combines them in float64 with Chan, Golub and LeVeque's pairwise update (1979), on data shifted by a
per-channel value near the mean; the normalisation is then one pass y = alpha x + beta. Same function,
about the accuracy of the channel-first path (`tests/test_channels_last_inference.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BAND_PIXELS = 8192  # pixels per band of rows whose moments the float32 kernel accumulates


def channel_moments(x: Tensor, band_pixels: int = BAND_PIXELS) -> tuple[Tensor, Tensor]:
    """(mean, biased variance) of each image and channel of x (B, C, H, W) over H x W, shapes (B, C), float32
    (float64 for float64 x): per band of rows b with n_b pixels, mean m_b and variance v_b; then
    m = sum n_b m_b / n and v = sum n_b (v_b + (m_b - m)^2) / n in float64 (Chan et al. 1979)."""
    if x.dim() != 4:
        raise ValueError(f"channel_moments takes images (B, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    rows = max(1, band_pixels // max(w, 1))
    out = x.dtype if x.dtype == torch.float64 else torch.float32  # bf16/fp16 inputs: float32 statistics
    n_b = torch.tensor(
        [min(rows, h - r0) * w for r0 in range(0, h, rows)], dtype=torch.float64, device=x.device
    )
    n_b = n_b[:, None]
    means, variances = [], []
    for k in range(x.shape[0]):
        stats = [
            torch.batch_norm_update_stats(x[k : k + 1, :, r0 : r0 + rows], None, None, 0.0)
            for r0 in range(0, h, rows)
        ]
        m_b = torch.stack([m for m, _ in stats]).double()
        v_b = torch.stack([v for _, v in stats]).double()
        mean = (n_b * m_b).sum(0) / (h * w)
        means.append(mean)
        variances.append((n_b * (v_b + (m_b - mean) ** 2)).sum(0) / (h * w))
    return torch.stack(means).to(out), torch.stack(variances).to(out)


def instance_norm_channels_last(
    x: Tensor,
    eps: float,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inplace: bool = False,
) -> Tensor:
    """Instance norm of channels-last images (B, C, H, W): y = alpha (x - s) + beta with a shift s per image
    and channel (the mean of its first row; 0 for bf16/fp16 x), alpha = gamma / sqrt(sigma^2 + eps) and
    beta = b - (mu - s) alpha (gamma = 1, b = 0 without affine parameters), mu and sigma^2 from
    `channel_moments` of x - s. The shift keeps a large mean over a small spread from costing float32 digits
    (x - s is exact where x lies within a factor 2 of s, Sterbenz's lemma); the rest is one pass. `inplace`
    writes y into x (a fresh full-resolution output costs ~16 ms of page faults per 59 MiB here; in place the
    two passes take ~4 ms)."""
    if x.dtype not in (torch.float32, torch.float64):
        # bf16/fp16 (autocast): x - s would round, so no shift; torch's batch-norm kernel applies float32
        # statistics to bf16 data with one rounding (a mixed-dtype addcmul is ~40x slower here)
        mean, var = channel_moments(x)
        return torch.cat(
            [F.batch_norm(x[k : k + 1], mean[k], var[k], weight, bias, False, 0.0, eps) for k in range(len(x))]
        )
    shift = x[:, :, :1].mean(dim=(2, 3), keepdim=True)
    out = x.sub_(shift) if inplace else x - shift
    mean, var = channel_moments(out)
    alpha = torch.rsqrt(var + eps)
    if weight is not None:
        alpha = alpha * weight
    beta = -mean * alpha
    if bias is not None:
        beta = beta + bias
    return torch.addcmul(beta[:, :, None, None], out, alpha[:, :, None, None], out=out)


def is_channels_last(x: Tensor) -> bool:
    """x is 4-D and laid out channels-last (and not also channel-first contiguous, as 1x1 images are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def on_channels_last_inference_path(x: Tensor) -> bool:
    """No autograd and a channels-last x: where the nets' inference shortcuts (this norm, the banded convolutions
    and in-place adds of `nets.cyclegan`) apply; training and channel-first data keep torch's ops."""
    return not torch.is_grad_enabled() and is_channels_last(x)


class InstanceNorm2d(nn.InstanceNorm2d):
    """`nn.InstanceNorm2d` (same parameters and state_dict keys). Without autograd, on channels-last images
    and without running statistics, it normalises with `instance_norm_channels_last`, float32/float64 in
    place when built with `inplace=True` (for norms that follow a convolution, whose output nothing else
    holds); everything else (training, channel-first tensors) is torch's."""

    def __init__(self, num_features: int, *args: object, inplace: bool = False, **kwargs: object):
        super().__init__(num_features, *args, **kwargs)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        if not self.track_running_stats and on_channels_last_inference_path(x):
            return instance_norm_channels_last(x, self.eps, self.weight, self.bias, self.inplace)
        return super().forward(x)
