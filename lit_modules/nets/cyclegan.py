"""CycleGAN building blocks (Zhu et al. 2017) in the layout NeRCo's released code uses (`Ysz2022/NeRCo`,
`models/networks.py`): the ResNet generator, its trunk, and the 70x70 PatchGAN discriminator.

Module order is part of the contract: the indices of `model.<i>` are the state_dict keys of the released
checkpoints (`model.1` = first 7x7 conv, `model.10`..`model.18` = residual blocks, `model.26` = last conv), so
every layer, parameter-free ones included, sits at the index it has there. Instance norm without affine
parameters and convs with biases (the released `use_bias = norm is InstanceNorm2d`), reflect padding, no dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from lit_modules.nets.norms import InstanceNorm2d, is_channels_last, on_channels_last_inference_path


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """N(0, gain) for every Conv*/Linear weight, 0 for their biases (the released `init_type='normal'`)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                init.zeros_(m.bias)
    return net


def _norm(channels: int) -> nn.InstanceNorm2d:
    """Every norm here follows a convolution: in place on its output at inference (`nets.norms`)."""
    return InstanceNorm2d(channels, affine=False, track_running_stats=False, inplace=True)


BAND_PIXELS = 32768  # output pixels per band of `padded_conv_rows`


def _pad_width(pad: nn.Module) -> int | None:
    """The padding of a ReflectionPad2d that pads all four sides alike, else None."""
    if not isinstance(pad, nn.ReflectionPad2d) or len(set(pad.padding)) != 1:
        return None
    return int(pad.padding[0])


def _same_size_conv(conv: nn.Module | None, p: int) -> bool:
    """A plain Conv2d (stride 1, no padding or dilation, one group) whose k = 2p + 1 keeps the padded size."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.kernel_size == (2 * p + 1, 2 * p + 1)
    )


def padded_conv_rows(
    pad: nn.ReflectionPad2d,
    conv: nn.Conv2d,
    x: Tensor,
    band_pixels: int = BAND_PIXELS,
    inplace: bool = False,
) -> Tensor:
    """conv(pad(x)) computed in bands of output rows, each from its own reflection-padded slice of x (rows
    r0 - p .. r1 + p, reflected beyond the image's top and bottom only): the same values, without the padded
    copy of the whole image (59 MiB at 64 x 600 x 400) and its page faults. Output in x's memory layout.
    `inplace` (a conv that keeps the channels and dtype): the output overwrites x band by band, keeping
    the p input rows the next band still needs (its halo) before they are overwritten, so no second
    full-resolution buffer is alive."""
    p = _pad_width(pad)
    h, w = x.shape[-2:]
    rows = max(p + 1, band_pixels // max(w, 1))
    out, halo = None, None
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        top, bottom = max(0, p - r0), max(0, r1 + p - h)  # halo rows beyond the image: reflected
        if halo is None:
            src = x[:, :, r0 - p + top : r1 + p - bottom]
        else:  # rows r0 - p .. r0 - 1 of x are output already: their input values were kept
            src = torch.cat([halo, x[:, :, r0 : r1 + p - bottom]], dim=2)
        y = conv(F.pad(src, (p, p, top, bottom), mode="reflect"))
        if out is None:
            layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
            fits = inplace and y.shape[1] == x.shape[1] and y.dtype == x.dtype
            if fits and x.is_contiguous(memory_format=layout):
                out = x
            else:
                out = torch.empty((*y.shape[:2], h, w), dtype=y.dtype, device=y.device, memory_format=layout)
        if out is x and r1 < h:
            halo = x[:, :, r1 - p : r1].clone()
        out[:, :, r0:r1].copy_(y)
    return out


def run_layers(layers: nn.Sequential, x: Tensor) -> Tensor:
    """layers(x). On the channels-last inference path (no autograd, channels-last x: `NeRCo.for_inference`) and
    images of at least 2 x BAND_PIXELS pixels, each reflection pad followed by a convolution that keeps the
    size runs as `padded_conv_rows` (same values; that pair's own forward hooks see bands, the pad's none), in
    place on intermediate tensors (never on x itself, which the caller may still hold)."""
    if not on_channels_last_inference_path(x):
        return layers(x)
    given = x
    mods = list(layers)
    i = 0
    while i < len(mods):
        p = _pad_width(mods[i])
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if p is not None and _same_size_conv(nxt, p) and x.shape[-2] * x.shape[-1] >= 2 * BAND_PIXELS:
            x = padded_conv_rows(mods[i], nxt, x, inplace=x is not given)
            i += 2
        else:
            x = mods[i](x)
            i += 1
    return x


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, IN, ReLU, pad, conv3x3, IN](x); keys `conv_block.1` and `conv_block.5`."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not on_channels_last_inference_path(x):
            return x + self.conv_block(x)
        return run_layers(self.conv_block, x).add_(x)  # channels-last inference: into the block's fresh output


def resnet_trunk(in_channels: int, ngf: int = 64, n_blocks: int = 9) -> list[nn.Module]:
    """Layers 0-24 of CycleGAN's `resnet_9blocks`: 7x7 conv to ngf, two stride-2 convs (ngf -> 4 ngf),
    n_blocks residual blocks, two transposed convs back to ngf at full resolution (H, W multiples of 4)."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, kernel_size=7, padding=0, bias=True),
        _norm(ngf),
        nn.ReLU(True),
    ]
    for i in range(2):  # downsampling
        mult = 2**i
        layers += [
            nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
            _norm(ngf * mult * 2),
            nn.ReLU(True),
        ]
    layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
    for i in range(2):  # upsampling
        mult = 2 ** (2 - i)
        layers += [
            nn.ConvTranspose2d(
                ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
            ),
            _norm(ngf * mult // 2),
            nn.ReLU(True),
        ]
    return layers


class ResnetGenerator(nn.Module):
    """CycleGAN `resnet_9blocks`: trunk, ReflectionPad3, 7x7 conv to `out_channels`, tanh (outputs in (-1, 1)).

    NeRCo uses it as G_H (`netG_A`, 6 input channels: the image and the NRN output) and G_L (`netG_B`, 3).
    """

    def __init__(self, in_channels: int, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        layers = resnet_trunk(in_channels, ngf, n_blocks)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"ResnetGenerator needs H and W divisible by 4, got {tuple(x.shape[-2:])}")
        return run_layers(self.model, x)


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN (`NLayerDiscriminator`, n_layers=3, ndf=64): one logit per ~70x70 patch, no sigmoid
    (LSGAN). Keys `model.0`, `model.2`, `model.5`, `model.8`, `model.11`."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kw, padw = 4, 1
        seq: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=True),
                _norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=True),
            _norm(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
