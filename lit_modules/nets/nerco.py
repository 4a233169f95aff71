"""NeRCo's own networks (Yang et al., ICCV 2023, arXiv 2303.11722): the neural representation normalisation
(NRN, released name `netPre`), the mask extractor (`netH`) and the edge (high-frequency) operator.

Glossary (paper -> released code -> here): NRN -> `PreProcess` + `mlp.NRN` -> `NRN` + `LocalImplicitHead`;
Mask Extractor -> `ResnetExtractor` -> `MaskExtractor`; high-pass filter of the edge discriminators ->
`sobel.tran` -> `EdgeOperator`. Facts about the released code are from `Ysz2022/NeRCo` (models/mlp.py,
models/networks.py, models/sobel.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_modules.nets.cyclegan import ResnetBlock, init_weights, resnet_trunk, run_layers
from lit_modules.nets.norms import InstanceNorm2d, on_channels_last_inference_path

PE_LEVELS = (
    8  # L of the positional encoding: 2 coordinates x (sin, cos) x L = 32 dims, + the 2 raw coordinates
)
CoordinateMode = Literal["constant", "liif"]


# ------------------------------------------------------------------------------------------- coordinates
def make_coord(n: int, device: torch.device | None = None) -> Tensor:
    """Centres of n cells covering [-1, 1] (LIIF's `make_coord`, same float32 arithmetic): -1 + r + 2r*i, r = 1/n."""
    r = 1.0 / n
    return (-1.0 + r) + (2 * r) * torch.arange(n, device=device).float()


def positional_encoding(x: Tensor, levels: int = PE_LEVELS) -> Tensor:
    """gamma(x) = [sin(2^k pi x_n) for k<L, cos(2^k pi x_n) for k<L] for each coordinate n: (..., N) -> (..., 2NL)."""
    freq = 2 ** torch.arange(levels, dtype=torch.float32, device=x.device) * math.pi
    spectrum = x[..., None] * freq  # (..., N, L)
    return torch.stack([spectrum.sin(), spectrum.cos()], dim=-2).flatten(-3)


class MLP(nn.Module):
    """in_dim -> hidden... -> out_dim with ReLU between, no output activation (keys `layers.{0,2,4,6}`)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for h in hidden:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LocalImplicitHead(nn.Module):
    """The NRN's coordinate MLP (LIIF-style, Chen et al. 2021): per output pixel, the 3x3 unfolded feature
    (9 C = 576 dims), the relative coordinate with its positional encoding (2 + 4L = 34 dims) and the cell
    (2 dims) -> 612 -> 256 -> 256 -> 256 -> 3, combined over a 4-way local ensemble weighted by opposite areas.

    `coordinates`:
      - "constant" (what the released code computes; its `grid_sample` lines are commented out): the query
        and the feature grids coincide, so the relative coordinate and its encoding are exactly 0, the cell is
        (2/h * h, 2/w * w) = (2, 2), and the four ensemble terms are the same prediction with weight 1/4 each.
        Exact shortcut (the query coordinates coincide with the feature centres): the MLP runs once per pixel
        (the released code runs it four times on identical inputs, `lit_modules.nerco_reference`) and the four
        equal terms are summed as the released code sums them. The zero coordinate inputs drop out of the first
        layer and the constant cell folds into its bias, so the first layer is a 3x3 convolution (64 -> 256) of
        the features (no 612-dim input is unfolded or concatenated), the others are matrix products on
        (256, pixels) with in-place ReLUs, and the output comes out channel-first. Same function up to float
        rounding (~1e-7 relative). Works for any batch size (the released code only runs batch size 1).
      - "liif" (the paper's description: real relative coordinates and cells): the released formula with LIIF's
        nearest-feature sampling restored. With the output at the feature resolution, the query at pixel (i, j)
        takes the features of (i, j), (i, j+1), (i+1, j), (i+1, j+1) (clamped at the border, as LIIF's
        eps-shifted, clamped coordinates do), relative coordinates (x_q - v) * (h, w) in {0, -2}, the encoding
        difference gamma(x_q) - gamma(v), cell (2, 2) (the query grid equals the feature grid), and area weights.

    `chunk_pixels`: evaluate the MLP over bands of about this many pixels (whole rows), so the 612-dim inputs
    and 256-dim activations of a 600x400 image (~2 GB at once) are never all alive; `None` = one pass.
    Chunking changes memory, not the function (up to float rounding of the matrix products).
    """

    def __init__(
        self, feat_channels: int = 64, hidden: Sequence[int] = (256, 256, 256), pe_levels: int = PE_LEVELS
    ):
        super().__init__()
        self.feat_channels = feat_channels
        self.pe_levels = pe_levels
        self.coord_dim = 2 + 4 * pe_levels
        self.imnet = MLP(feat_channels * 9 + self.coord_dim + 2, 3, hidden)

    def forward(
        self, feat: Tensor, coordinates: CoordinateMode = "constant", chunk_pixels: int | None = None
    ) -> Tensor:
        b, c, h, w = feat.shape
        rows = h if not chunk_pixels else max(1, min(h, chunk_pixels // w))
        if coordinates not in ("constant", "liif"):
            raise ValueError(f"coordinates must be 'constant' or 'liif', got {coordinates!r}")
        if coordinates == "constant":
            folded = self._folded_layers(h, w)
            out = [self._constant_rows(feat, r0, min(h, r0 + rows), folded) for r0 in range(0, h, rows)]
        else:
            padded = F.pad(feat, (1, 1, 1, 1))  # F.unfold(feat, 3, padding=1) pads with zeros
            out = [self._liif_rows(padded, r0, min(h, r0 + rows), h, w) for r0 in range(0, h, rows)]
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)

    def _folded_layers(self, h: int, w: int) -> list[tuple[Tensor, Tensor] | None]:
        """The MLP for the constant coordinates, (weight, bias) per Linear and None per ReLU: the first layer
        keeps its feature columns as a 3x3 convolution kernel (F.unfold's channel order c * 9 + 3 * i + j is
        conv2d's (c, i, j)), since the coordinate inputs are exactly 0, and adds its cell columns times the
        cell to its bias."""
        layers: list[tuple[Tensor, Tensor] | None] = []
        for i, m in enumerate(self.imnet.layers):
            if isinstance(m, nn.ReLU):
                layers.append(None)
            elif i == 0:
                c, n_feat = self.feat_channels, self.feat_channels * 9
                cell = self._cell(h, w, m.weight)
                kernel = m.weight[:, :n_feat].reshape(m.out_features, c, 3, 3)
                layers.append((kernel, m.bias + m.weight[:, n_feat + self.coord_dim :] @ cell))
            else:
                layers.append((m.weight, m.bias[:, None]))
        return layers

    def _cell(self, h: int, w: int, like: Tensor) -> Tensor:
        # released: cell = 2/h (float32), then rel_cell = cell * h -> (2, 2) up to float32 rounding
        two_over = torch.tensor([2 / h, 2 / w], dtype=torch.float32, device=like.device)
        return (two_over * torch.tensor([h, w], dtype=torch.float32, device=like.device)).to(like.dtype)

    def _unfold_rows(self, padded: Tensor, r0: int, r1: int) -> Tensor:
        """3x3 unfolded features of rows r0..r1-1: (B, 9C, r1 - r0, W), channel order as F.unfold's."""
        b, c, hp, wp = padded.shape
        z = F.unfold(padded[:, :, r0 : r1 + 2], 3)
        return z.view(b, c * 9, r1 - r0, wp - 2)

    def _constant_rows(
        self, feat: Tensor, r0: int, r1: int, layers: list[tuple[Tensor, Tensor] | None]
    ) -> Tensor:
        h = feat.shape[2]
        kernel, bias = layers[0]
        # rows r0-1..r1 of the zero-padded features, padded per band (no padded copy of the whole image)
        top, bottom = int(r0 == 0), int(r1 == h)
        band = F.pad(feat[:, :, r0 - 1 + top : r1 + 1 - bottom], (1, 1, top, bottom))
        hidden = F.conv2d(band, kernel, bias)  # = unfold + the first Linear, (B, 256, r, w)
        if on_channels_last_inference_path(hidden):
            pred = self._pointwise_layers(hidden, layers[1:])
        else:
            pred = self._matrix_layers(hidden, layers[1:])
        # four equal ensemble terms, each weighted area / total area with area = |0 * 0| + 1e-9
        area = pred.new_full((1,), 1e-9)
        weight = area / torch.stack([area] * 4).sum(0)
        ret = pred * weight
        for _ in range(3):
            ret = ret + pred * weight
        return ret

    @staticmethod
    def _pointwise_layers(hidden: Tensor, layers: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        """The MLP's later layers as 1x1 convolutions on channels-last hidden features (inference): oneDNN's
        1x1 convolution on (pixels, 256) rows runs ~2x faster here than the matrix products on the transposed
        (256, pixels) view, the same function up to float rounding. ReLUs in place. (B, 3, r, w), channels-last."""
        y = hidden
        for layer in layers:
            if layer is None:
                y = y.relu_()
            else:
                weight, bias = layer
                y = F.conv2d(y, weight[:, :, None, None], bias[:, 0])
        return y

    @staticmethod
    def _matrix_layers(hidden: Tensor, layers: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        """The MLP's later layers as matrix products on (256, pixels) per image, ReLUs in place. (B, 3, r, w)."""
        b, r, w = hidden.shape[0], hidden.shape[2], hidden.shape[3]
        preds = []
        for k in range(b):
            y = hidden[k].view(hidden.shape[1], -1)  # (256, n), pixels along the columns
            for layer in layers:
                y = y.relu_() if layer is None else torch.addmm(layer[1], layer[0], y)
            preds.append(y)
        return torch.stack(preds).view(b, -1, r, w)

    def _liif_rows(self, padded: Tensor, r0: int, r1: int, h: int, w: int) -> Tensor:
        b = padded.shape[0]
        dev = padded.device
        last = min(r1 + 1, h)  # neighbour rows reach one below the band
        z = self._unfold_rows(padded, r0, last)  # (B, 576, last - r0, W)
        rows_q = torch.arange(r0, r1, device=dev)
        cols_q = torch.arange(w, device=dev)
        ys, xs = make_coord(h, dev), make_coord(w, dev)
        yq, xq = torch.meshgrid(ys[rows_q], xs[cols_q], indexing="ij")
        coord_q = torch.stack([yq, xq], dim=-1).reshape(-1, 2)  # (n, 2): (row, col) as make_coord((h, w))
        pe_q = positional_encoding(coord_q, self.pe_levels)
        cell = self._cell(h, w, z)
        scale = torch.tensor([h, w], dtype=z.dtype, device=dev)
        preds, areas = [], []
        for di in (0, 1):  # released loop order: vx (rows) outer, vy (cols) inner
            for dj in (0, 1):
                ri = (rows_q + di).clamp(max=h - 1)
                cj = (cols_q + dj).clamp(max=w - 1)
                q_feat = z[:, :, ri - r0][:, :, :, cj].flatten(2).transpose(1, 2)  # (B, n, 576)
                vy, vx = torch.meshgrid(ys[ri], xs[cj], indexing="ij")
                v = torch.stack([vy, vx], dim=-1).reshape(-1, 2)
                rel = (coord_q - v) * scale
                rel_pe = pe_q - positional_encoding(v, self.pe_levels)
                n = rel.shape[0]
                inp = torch.cat(
                    [q_feat, torch.cat([rel, rel_pe, cell.expand(n, 2)], -1).expand(b, n, -1)], dim=-1
                )
                preds.append(self.imnet(inp))
                areas.append((rel[:, 0] * rel[:, 1]).abs() + 1e-9)
        total = torch.stack(areas).sum(0)
        areas = [areas[3], areas[2], areas[1], areas[0]]  # each term is weighted by the opposite area
        ret = 0
        for pred, area in zip(preds, areas):
            ret = ret + pred * (area / total)[None, :, None]
        return ret.view(b, r1 - r0, w, 3).permute(0, 3, 1, 2)


class NRN(nn.Module):
    """Neural representation normalisation (released `netPre`): the ResNet trunk (9 blocks, no final conv)
    encodes the image into 64-channel features at full resolution; the local implicit head maps them to an
    RGB image (no output activation). Keys `model.1`..`model.22` and `mlp.imnet.layers.{0,2,4,6}`."""

    def __init__(
        self,
        in_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        hidden: Sequence[int] = (256, 256, 256),
        coordinates: CoordinateMode = "constant",
        chunk_pixels: int | None = None,
    ):
        super().__init__()
        self.coordinates = coordinates
        self.chunk_pixels = chunk_pixels
        self.mlp = LocalImplicitHead(ngf, hidden)
        self.model = nn.Sequential(*resnet_trunk(in_channels, ngf, n_blocks))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"NRN needs H and W divisible by 4, got {tuple(x.shape[-2:])}")
        return self.mlp(run_layers(self.model, x), self.coordinates, self.chunk_pixels)


class MaskExtractor(nn.Module):
    """Mask extractor (released `ResnetExtractor`): returns (H, mask).

    features f = [pad3, 7x7 conv 3->64, IN, ReLU, 3 residual blocks, pad3](x)      (H+6, W+6)
    H    = tanh(7x7 valid conv 64->3 (f))                                             (B, 3, H, W)
    channel attention: a = conv_ca(fc2(ReLU(fc1([avgpool f, maxpool f]))))  128->4->128->64, no bias,
                       g = a * f (no sigmoid, as released)
    mask = sigmoid(7x7 valid conv 2->1 ([mean_c g, max_c g]))                         (B, 1, H, W)
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, padding=0, bias=True),
            InstanceNorm2d(ngf, affine=False, inplace=True),
            nn.ReLU(True),
        ]
        layers += [ResnetBlock(ngf) for _ in range(n_blocks)]
        layers.append(nn.ReflectionPad2d(3))
        self.model = nn.Sequential(*layers)
        self.output = nn.Conv2d(ngf, out_channels, kernel_size=7, padding=0)
        self.fc1 = nn.Conv2d(ngf * 2, max(1, ngf // 16), 1, bias=False)
        self.fc2 = nn.Conv2d(max(1, ngf // 16), ngf * 2, 1, bias=False)
        self.conv1 = nn.Conv2d(2, 1, 7, padding=0, bias=False)
        self.conv_ca = nn.Conv2d(ngf * 2, ngf, kernel_size=1, padding=0, bias=False)
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = run_layers(self.model, x)
        return torch.tanh(self.output(f)), self._mask(f)

    def mask(self, x: Tensor) -> Tensor:
        """The mask alone (what G_H's input needs), without H's 7x7 output convolution."""
        return self._mask(run_layers(self.model, x))

    def _mask(self, f: Tensor) -> Tensor:
        pooled = torch.cat([f.mean(dim=(2, 3), keepdim=True), f.amax(dim=(2, 3), keepdim=True)], dim=1)
        g = self.conv_ca(self.fc2(F.relu(self.fc1(pooled)))) * f
        spatial = torch.cat([g.mean(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(spatial))


# --------------------------------------------------------------------------------------------- edges
EdgeKind = Literal["central", "sobel", "laplacian"]
GREY_COEFFS = (65.738 / 256, 129.057 / 256, 25.064 / 256)  # released `get_gray` (BT.601 studio-swing weights)


class EdgeOperator(nn.Module):
    """Grey-level high-frequency map fed to the edge discriminators, 3 channels, times `scale`.

    kind: "central" (released: [-1, 0, 1] in x and y, magnitude sqrt(gx^2 + gy^2 + 1e-6)); "sobel" (Sobel
    kernels / 4, so a smooth ramp gives the same magnitude as central differences); "laplacian" (an
    alternative high-pass filter: sqrt(lap^2 + 1e-6) with the 4-neighbour Laplacian). Zero padding, as released.

    rgb: "repeat" copies the grey map into 3 channels. "random_per_call" reproduces a quirk of the released
    code only (faithfulness option): `sobel.tran` builds a new `GradLayer` on every call, whose 1x1 conv
    grey->RGB is freshly initialised by PyTorch's default (weights and bias ~ U(-1, 1), from the global RNG)
    and never trained, so every call projects with different random weights.
    """

    def __init__(self, kind: EdgeKind = "central", rgb: str = "repeat", scale: float = 4.0):
        super().__init__()
        if kind not in ("central", "sobel", "laplacian"):
            raise ValueError(f"edge operator must be central, sobel or laplacian, got {kind!r}")
        if rgb not in ("repeat", "random_per_call"):
            raise ValueError(f"edge rgb projection must be repeat or random_per_call, got {rgb!r}")
        self.kind, self.rgb, self.scale = kind, rgb, scale
        if kind == "central":
            ky = torch.tensor([[0.0, -1, 0], [0, 0, 0], [0, 1, 0]])
            kx = torch.tensor([[0.0, 0, 0], [-1, 0, 1], [0, 0, 0]])
            kernels = torch.stack([ky, kx])
        elif kind == "sobel":
            kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 4
            kernels = torch.stack([kx.t(), kx])
        else:
            kernels = torch.tensor([[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]])
        self.register_buffer("kernels", kernels[:, None], persistent=False)
        self.register_buffer("grey", torch.tensor(GREY_COEFFS).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 3:
            x = (x * self.grey).sum(dim=1, keepdim=True)
        responses = F.conv2d(x, self.kernels.to(x.dtype), padding=1)
        mag = torch.sqrt(responses.pow(2).sum(dim=1, keepdim=True) + 1e-6)
        if self.rgb == "random_per_call":
            proj = nn.Conv2d(1, 3, kernel_size=1).to(device=x.device, dtype=x.dtype)
            out = proj(mag)
        else:
            out = mag.expand(-1, 3, -1, -1)
        return out * self.scale
