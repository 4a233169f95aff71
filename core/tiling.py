"""Running an image-to-image network over overlapping tiles, for images too large to process at once.

    y = run_tiled(fn, x, tile=256, overlap=32)

`x` (N, C, H, W) is cut into tiles of at most `tile` x `tile` pixels that overlap by at least `overlap` pixels;
`fn` maps each tile to an output of the same size; the outputs are blended with weights that ramp linearly
across the overlaps (`blend_weights`), so the seams do not show as steps. Memory is that of one tile plus the
(N, C, H, W) accumulators.

Tiling is exact only for networks whose output at a pixel depends on a neighbourhood smaller than the
overlap. Networks with global operations (instance normalisation, global pooling: NeRCo's generators and mask
extractor) see each tile alone, so tiles can differ in tone and the result differs from a whole-image pass;
use tiling only when the whole image does not fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` pixels in common
    between neighbours; one tile when it covers everything."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def blend_weights(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D weights of one tile: linear ramps (1/(overlap+1) ... 1) over `overlap` pixels at each side that
    meets a neighbour (`at_start`/`at_end` = the image border is there: no ramp), 1 elsewhere; never 0."""
    w = torch.ones(length)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        n = min(overlap, length)
        if not at_start:
            w[:n] = torch.minimum(w[:n], ramp[:n])
        if not at_end:
            w[-n:] = torch.minimum(w[-n:], ramp[:n].flip(0))
    return w


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """fn over overlapping tiles of x (N, C, H, W), blended; returns (N, C_out, H, W). `progress(done, total)`
    is called after each tile."""
    n, _, h, w = x.shape
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h, w, dtype=torch.float32, device=x.device)
    done, count = 0, len(rows) * len(cols)
    for top in rows:
        th = min(tile, h)
        wy = blend_weights(th, overlap, top == 0, top + th >= h)
        for left in cols:
            tw = min(tile, w)
            wx = blend_weights(tw, overlap, left == 0, left + tw >= w)
            y = fn(x[..., top : top + th, left : left + tw])
            if out is None:
                out = torch.zeros(n, y.shape[1], h, w, dtype=y.dtype, device=y.device)
            weight = (wy[:, None] * wx[None, :]).to(device=y.device, dtype=y.dtype)
            out[..., top : top + th, left : left + tw] += y * weight
            total[..., top : top + th, left : left + tw] += weight.float()
            done += 1
            if progress is not None:
                progress(done, count)
    assert out is not None
    return out / total.to(out.dtype)
