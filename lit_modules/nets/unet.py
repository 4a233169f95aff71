"""The DDPM UNet (Ho et al. 2020, appendix B; the PixelCNN++-style backbone), sized by config.

Glossary: x -> the noisy image x_t, (B, C, H, W); t -> the training timestep index in [0, T) (float or int,
(B,)); y -> class labels (B,) in [0, num_classes), or `num_classes` itself for the learned null class used by
classifier-free guidance (Ho & Salimans 2022). The network returns a tensor of x's shape: whatever the
training target is (epsilon, x0 or v); it knows nothing of schedules.

Layout, per resolution level k (channels = base_channels * channel_mults[k]):
  down: num_res_blocks x [ResBlock (+ self-attention if the level's resolution is in attention_resolutions)],
        then a stride-2 conv (not after the last level)
  middle: ResBlock, self-attention, ResBlock
  up:   (num_res_blocks + 1) x [concat skip, ResBlock (+ attention)], then nearest x2 + conv (not after level 0)
The time embedding (sinusoidal, then a 2-layer MLP) and the class embedding are added and fed to every
ResBlock as a per-channel shift. Output convs of residual branches start at zero (as in the DDPM code), so
a fresh network is close to the identity on its skip paths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lit_modules.nets.norms import is_channels_last


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer position encoding of the timestep (Vaswani et al. 2017, sec. 3.5), as DDPM's
    `get_timestep_embedding`: frequencies exp(-log(max_period) * i / (half - 1)), [sin | cos]. (B,) -> (B, dim)."""
    if dim % 2 or dim < 4:
        raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1)
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def conv1x1(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a 1x1 convolution (or any other module, e.g. an identity skip); for a convolution on
    channels-last x, the same map as one matrix product over the B*H*W pixels (x viewed as (B, H, W, C) @ W^T
    + b), output channels-last, with no layout reorder (faster than oneDNN's 1x1 path there)."""
    if not (isinstance(conv, nn.Conv2d) and is_channels_last(x)):
        return conv(x)
    out = F.linear(x.permute(0, 2, 3, 1), conv.weight.view(conv.out_channels, conv.in_channels), conv.bias)
    return out.permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> + emb shift -> GroupNorm -> SiLU -> dropout -> conv3x3 (zero init), + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return conv1x1(self.skip, x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (DDPM uses it at 16x16), residual, output zero-init."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention: {ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if is_channels_last(x):
            # (B, H, W, C) in memory: heads are split from the pixel-major qkv without a copy
            qkv = conv1x1(self.qkv, self.norm(x)).permute(0, 2, 3, 1)
            q, k, v = qkv.reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, c)
            return x + conv1x1(self.proj, out.permute(0, 3, 1, 2))
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (B, heads, HW, head_dim) for scaled_dot_product_attention
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


# nearest x2 upsampling followed by a 3x3 convolution (padding 1) is one stride-2 transposed convolution with a
# 4x4 kernel K = M W M^T per channel pair: output row 2i+a (a = 0, 1) reads input rows {i-1, i} (a = 0, weights
# W0 and W1+W2) or {i, i+1} (a = 1, weights W0+W1 and W2); in conv_transpose2d's indexing (padding 1) those are
# kernel taps (3, 1) and (2, 0). Same function, ~4/9 of the multiply-adds (no multiply by repeated pixels).
_NEAREST_UP_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


class _UpConvTranspose(torch.autograd.Function):
    """conv_transpose2d(x, kernel, bias, stride=2, padding=1) whose kernel gradient is taken as the weight
    gradient of the adjoint convolution conv2d(gy, kernel, stride=2, padding=1) with x as its output gradient
    (the same sum, dK[i,o,k,l] = sum_{b,p,q} x[b,i,p,q] gy[b,o,2p+k-1,2q+l-1]). On channels-last data oneDNN's
    transposed-convolution weight gradient took 6.5 ms here where the convolution's took 3.0 ms (64 channels,
    14 -> 28, batch 32); the forward and the input gradient are the ones autograd would use."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, kernel)
        ctx.has_bias = bias is not None
        return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, kernel = ctx.saved_tensors
        gx = gk = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.conv2d(gy, kernel, None, stride=2, padding=1)
        if ctx.needs_input_grad[1]:
            gk = torch.nn.grad.conv2d_weight(gy, kernel.shape, x, stride=2, padding=1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gk, gb


def nearest_up_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3x3(nearest_upsample_x2(x), weight, bias, padding=1), computed as one transposed convolution on x's
    grid (equal up to float rounding; ~2.3x faster forward + backward on CPU at 64 channels). On channels-last x
    outside autocast, the kernel is channels-last too and its gradient comes from `_UpConvTranspose`."""
    m = torch.tensor(_NEAREST_UP_TAPS, dtype=weight.dtype, device=weight.device)
    kernel = torch.einsum("ka,oiab,lb->iokl", m, weight, m)  # (in, out, 4, 4), conv_transpose2d's layout
    if is_channels_last(x) and not torch.is_autocast_enabled(x.device.type):
        return _UpConvTranspose.apply(x, kernel.contiguous(memory_format=torch.channels_last), bias)
    return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest x2 then conv3x3 (DDPM's upsampling layer), computed by `nearest_up_conv3x3`."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return nearest_up_conv3x3(x, self.conv.weight, self.conv.bias)


def check_layout(
    image_size: int,
    base_channels: int,
    channel_mults: Sequence[int],
    attention_resolutions: Sequence[int],
    groups: int,
) -> list[int]:
    """The feature-map size of every level; ValueError naming the setting that does not fit."""
    levels = len(channel_mults)
    if image_size % 2 ** (levels - 1):
        raise ValueError(
            f"UNet: image_size={image_size} is not divisible by 2^{levels - 1} (channel_mults={list(channel_mults)} "
            f"has {levels} levels); use fewer levels (28 -> 3 levels: 28, 14, 7) or pad the images"
        )
    resolutions = [image_size // 2**k for k in range(levels)]
    unknown = sorted(set(attention_resolutions) - set(resolutions))
    if unknown:
        raise ValueError(
            f"UNet: attention_resolutions {unknown} are not feature-map sizes of this network ({resolutions})"
        )
    for m in channel_mults:
        if (base_channels * m) % groups:
            raise ValueError(
                f"UNet: {base_channels * m} channels are not divisible into {groups} GroupNorm groups"
            )
    return resolutions


class UNet(nn.Module):
    """eps/x0/v network for (B, C, H, W) images; optional class conditioning with a learned null class.

    `image_size` must be divisible by 2^(len(channel_mults) - 1): 28 works with 3 levels (28, 14, 7), 32 with
    up to 4 (32, 16, 8, 4). `attention_resolutions` lists feature-map sizes (e.g. [7] or [14]).
    `channels_last` lays weights and activations out channels-last (same function and state_dict; the output
    is returned channel-first): on a CPU in fp32, oneDNN's convolutions then skip their per-call reorders
    (docs/benchmarks.md has the measured step times); under bf16 autocast on CPU it was slower.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (7,),
        attention_heads: int = 4,
        dropout: float = 0.1,
        num_classes: int | None = None,
        groups: int = 8,
        channels_last: bool = False,
    ):
        super().__init__()
        resolutions = check_layout(image_size, base_channels, channel_mults, attention_resolutions, groups)
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.channel_mults = tuple(channel_mults)
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.attention_heads = attention_heads
        self.groups = groups
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # label `num_classes` is the null class ("no condition"): classifier-free guidance trains it by dropping labels
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        # construction order = parameter-initialisation order: kept, so a seed gives the same weights as before
        block = partial(ResBlock, emb_dim=emb_dim, dropout=dropout, groups=groups)
        attention = partial(SelfAttention, heads=attention_heads, groups=groups)
        self.down, skips = self._down_path(block, attention, resolutions)
        ch = skips[-1]
        self.mid = nn.ModuleList([block(ch, ch), attention(ch), block(ch, ch)])
        self.up, ch = self._up_path(block, attention, resolutions, skips)
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, out_channels or in_channels, 3, padding=1))
        self.channels_last = channels_last
        if channels_last:  # same function and state_dict; weights and activations laid out (.., H, W, C)
            self.to(memory_format=torch.channels_last)

    def _down_path(self, block, attention, resolutions: list[int]) -> tuple[nn.ModuleList, list[int]]:
        """The encoder's layers and the channel count of every skip connection it leaves (conv_in's first)."""
        layers, ch = nn.ModuleList(), self.base_channels
        skips = [ch]
        for k, mult in enumerate(self.channel_mults):
            out = self.base_channels * mult
            for _ in range(self.num_res_blocks):
                layers.append(block(ch, out))
                ch = out
                if resolutions[k] in self.attention_resolutions:
                    layers.append(attention(ch))
                skips.append(ch)
            if k < len(self.channel_mults) - 1:
                layers.append(Downsample(ch))
                skips.append(ch)
        return layers, skips

    def _up_path(
        self, block, attention, resolutions: list[int], skips: list[int]
    ) -> tuple[nn.ModuleList, int]:
        """The decoder's layers (each ResBlock takes one skip, last in first out) and its output channels."""
        layers, ch, skips = nn.ModuleList(), skips[-1], list(skips)
        for k in reversed(range(len(self.channel_mults))):
            out = self.base_channels * self.channel_mults[k]
            for _ in range(self.num_res_blocks + 1):
                layers.append(block(ch + skips.pop(), out))
                ch = out
                if resolutions[k] in self.attention_resolutions:
                    layers.append(attention(ch))
            if k > 0:
                layers.append(Upsample(ch))
        return layers, ch

    @property
    def conditional(self) -> bool:
        return self.class_emb is not None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels).to(self.time_mlp[0].weight.dtype))
        if self.class_emb is not None:
            if y is None:  # unconditional evaluation of a conditional model: the null class
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("UNet: class labels given to an unconditional network (num_classes is None)")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb)
            if not isinstance(layer, SelfAttention):
                hs.append(h)
            else:
                hs[-1] = h  # the skip is taken after the block's attention
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h, emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.contiguous() if self.channels_last else out
