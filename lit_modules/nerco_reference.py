"""NeRCo's released test-time computation, step for step (Yang et al., ICCV 2023, arXiv 2303.11722; released
code `Ysz2022/NeRCo`: `test.py` -> `BaseModel.test` -> `NeRComodel.forward`, the NRN query in `models/mlp.py`),
as the baseline the suite's fast inference is measured against (`python -m experiments.benchmark nerco`).

What "literal" keeps from the released code, on purpose, although it changes nothing in the output:
- the NRN's local ensemble is evaluated four times: for each of the four (vx, vy) in {-1, 1}^2 the shifted query
  coordinates are built (and never used: the `grid_sample` lines are commented out in the release), the
  612-dim MLP input [unfold(features), coordinate - feature coordinate (+ encodings), cell * (h, w)] is
  concatenated anew and the whole image goes through the MLP; the four predictions are weighted by the swapped
  areas |dy * dx| + 1e-9 over their sum. The relative coordinate is exactly zero, so the four terms are the same
  numbers: the suite computes the MLP once (`lit_modules.nets.nerco.LocalImplicitHead`, "constant");
- fp32, batch 1, no chunking: the whole image in one pass (F.unfold of the 64-channel features, 9x larger);
- `full_forward=True` also runs what the released `forward()` computes at test time and `test.py` discards:
  rec_A = G_L(fake_B), fake_A = G_L(B * mask) (G_L is not loaded at test time: random weights), the NRN of
  fake_A, and rec_B = G_H([fake_A, NRN(fake_A)]). The output `fake_B` does not depend on it.

The input and output conventions are those of `lit_modules.nerco_release` (`released_input`, `released_uint8`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_modules.nets.nerco import NRN, PE_LEVELS, MaskExtractor, positional_encoding

ENSEMBLE_SHIFTS = (-1, 1)  # the released vx_lst = vy_lst
ENSEMBLE_EPS = 1e-6  # the released eps_shift


def released_coord_grid(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Cell centres of an (h, w) grid covering [-1, 1]^2 as the released `make_coord((h, w), flatten=False)`:
    (h, w, 2), last axis (row coordinate, column coordinate), float32."""
    seqs = []
    for n in (h, w):
        r = 2.0 / (2 * n)
        seqs.append(-1.0 + r + (2 * r) * torch.arange(n, device=device).float())
    return torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1)


def released_query_rgb(imnet: nn.Module, feat: Tensor, levels: int = PE_LEVELS) -> Tensor:
    """The released NRN head on (1, C, h, w) features, output at the features' size: four MLP passes over the
    whole image (the released `NRN.forward` + `query_rgb` with `local_ensemble`, `feat_unfold`, `cell_decode`
    on). Returns (1, 3, h, w)."""
    b, c, h, w = feat.shape
    if b != 1:
        raise ValueError(f"the released NRN query runs batch size 1, got {b}")
    dev = feat.device
    # NRN.forward: the query coordinates (the output grid, flattened) with their encoding, and the cell
    coord = released_coord_grid(h, w, dev).view(-1, 2)
    cell = torch.ones_like(coord)
    cell[:, 0] *= 2 / h
    cell[:, 1] *= 2 / w
    cell, coord = cell[None], coord[None]
    coord = torch.cat([coord, positional_encoding(coord, levels)], dim=-1)  # (1, n, 2 + 4L)
    # query_rgb
    feat = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
    rx, ry = 2 / h / 2, 2 / w / 2
    feat_coord = released_coord_grid(h, w, dev).permute(2, 0, 1)[None].expand(b, 2, h, w)
    preds, areas = [], []
    for vx in ENSEMBLE_SHIFTS:
        for vy in ENSEMBLE_SHIFTS:
            shifted = coord.clone()  # the released shifted query, unused since grid_sample is commented out
            shifted[:, :, 0] += vx * rx + ENSEMBLE_EPS
            shifted[:, :, 1] += vy * ry + ENSEMBLE_EPS
            shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
            q_feat = feat.view(b, c * 9, -1).permute(0, 2, 1)
            q_coord = feat_coord.reshape(b, 2, -1).permute(0, 2, 1)
            q_coord = torch.cat([q_coord, positional_encoding(q_coord, levels)], dim=-1)
            rel_coord = coord - q_coord
            rel_coord[:, :, 0] *= h
            rel_coord[:, :, 1] *= w
            inp = torch.cat([q_feat, rel_coord], dim=-1)
            rel_cell = cell.clone()
            rel_cell[:, :, 0] *= h
            rel_cell[:, :, 1] *= w
            inp = torch.cat([inp, rel_cell], dim=-1)
            n = coord.shape[1]
            preds.append(imnet(inp.view(b * n, -1)).view(b, n, -1))
            areas.append(torch.abs(rel_coord[:, :, 0] * rel_coord[:, :, 1]) + 1e-9)
            del inp, q_feat, rel_coord, shifted
    total = torch.stack(areas).sum(dim=0)
    areas[0], areas[3] = areas[3], areas[0]  # each term weighted by the opposite area
    areas[1], areas[2] = areas[2], areas[1]
    ret = 0
    for pred, area in zip(preds, areas):
        ret = ret + pred * (area / total).unsqueeze(-1)
    return ret.view(b, h, w, -1).permute(0, 3, 1, 2)


def released_nrn(pre: NRN, x: Tensor) -> Tensor:
    """The released `PreProcess.forward`: trunk, then the four-pass NRN query."""
    return released_query_rgb(pre.mlp.imnet, pre.model(x), pre.mlp.pe_levels)


@torch.no_grad()
def released_literal_enhance(
    g_a: nn.Module,
    pre: NRN,
    h: MaskExtractor,
    x: Tensor,
    full_forward: bool = False,
    g_b: nn.Module | None = None,
    real_b: Tensor | None = None,
) -> Tensor:
    """The released test step on one image (1, 3, H, W) in [-1, 1], H and W multiples of 4, fp32: pre_A =
    NRN(A) (four passes), (H, mask) = netH(A), fake_B = G_H([A, pre_A] * mask); returns (fake_B + 1) / 2 in
    [0, 1] (quantise with `nerco_release.released_uint8`). `full_forward`: also the rest of the released
    `forward()` (needs `g_b`; `real_b` is the testB image, `x` if None), computed and discarded as `test.py` does."""
    if x.shape[0] != 1:
        raise ValueError(f"the released test path runs batch size 1, got {x.shape[0]}")
    if x.dtype != torch.float32:
        raise ValueError(f"the released test path runs in float32, got {x.dtype}")
    pre_a = released_nrn(pre, x)
    _, mask = h(x)
    fake_b = g_a(torch.cat((x, pre_a), 1) * mask)
    if full_forward:
        if g_b is None:
            raise ValueError("full_forward=True needs g_b (G_L, netG_B)")
        real_b = x if real_b is None else real_b
        rec_a = g_b(fake_b)
        fake_a = g_b(real_b * mask)
        pre_a1 = released_nrn(pre, fake_a)
        rec_b = g_a(torch.cat((fake_a, pre_a1), 1))
        del rec_a, rec_b
    return (fake_b + 1) / 2
