"""Labelled figures: image tiles laid out in a grid, with the text a reader needs to understand them.

`figure(tiles, ncols, title=..., row_labels=..., col_labels=..., captions=...)` returns one (H, W, 3) uint8
array (what W&B's `log_image` and PIL's `Image.fromarray` take as they are). From top to bottom it holds:

- an optional title strip across the whole figure (wrapped to its width);
- an optional column-label strip, one label centred above each column;
- the grid: tile i sits in row i // ncols, column i % ncols, each cell framed by a thin grey separator; an
  optional row label sits left of each row, and optional per-panel captions (e.g. "PSNR 24.31 dB") sit in a
  strip directly under each tile.

Tiles are tensors or arrays, (C, H, W) or (H, W, C) with C = 1 or 3, or (H, W); floats in `value_range`
(default [0, 1]; clipped) or uint8 as they are. Small tiles are enlarged by an integer factor with
nearest-neighbour repetition (so every source pixel becomes an exact s x s block), until their shorter side
is at least `min_size` pixels (MNIST's 28 px become 84 px at the default 64). Tiles of different sizes sit
centred in cells as large as the largest tile. Text is PIL's default font, black on white; every piece of
text is clipped to its own box, so a box without a label stays blank.

`figure_layout(...)` computes the same geometry without drawing (the boxes of every strip and tile), for
callers and tests that need to know where things are; the text (font, wrapping, text boxes) is
`core.figure_text`. This module is a leaf: numpy, PIL and (optionally, for tensor input) torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.figure_text import (
    BACKGROUND,
    DEFAULT_FONT_SIZE,
    PAD,
    load_font,
    render_text_box,
    strip_height,
    text_width,
    wrap,
)

SEPARATOR = 176  # the thin lines between cells
MARGIN = 4  # white border around the whole figure
DEFAULT_MIN_SIZE = 64
DEFAULT_MAX_SCALE = 8

Box = tuple[int, int, int, int]  # (top, left, height, width)


# ------------------------------------------------------------------------------------------ tiles
def tile_to_uint8(tile: Any, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """One tile -> (H, W, 3) uint8. Floats are mapped from `value_range` to [0, 255] (float32 arithmetic,
    clipped, rounded half to even, like `lit_modules.images.to_uint8`); uint8 is kept; grey is repeated
    into the three channels. A 3-d tile with 1 or 3 leading entries is read as (C, H, W), otherwise as
    (H, W, C)."""
    if hasattr(tile, "detach"):  # a torch tensor, without importing torch here
        tile = tile.detach().cpu().numpy()
    arr = np.asarray(tile)
    if arr.ndim == 3:
        if arr.shape[0] in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        elif arr.shape[-1] not in (1, 3):
            raise ValueError(f"a tile must have 1 or 3 channels, got shape {arr.shape}")
    elif arr.ndim == 2:
        arr = arr[..., None]
    else:
        raise ValueError(f"a tile must be (C, H, W), (H, W, C) or (H, W), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        lo, hi = (np.float32(v) for v in value_range)
        x = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        x = np.clip((x - lo) / (hi - lo), 0, 1) * np.float32(255)
        arr = np.round(x).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def as_tile_list(tiles: Any) -> list[Any]:
    """A 4-d batch (N, C, H, W) / (N, H, W, C), or a sequence of tiles (None = an empty cell) -> a list."""
    if hasattr(tiles, "ndim") and getattr(tiles, "ndim", 0) == 4:
        return [tiles[i] for i in range(tiles.shape[0])]
    if hasattr(tiles, "ndim"):
        raise ValueError(
            f"tiles: expected a 4-d batch or a sequence of tiles, got shape {tuple(tiles.shape)}"
        )
    return list(tiles)


def upscale_factor(
    height: int, width: int, min_size: int = DEFAULT_MIN_SIZE, max_scale: int = DEFAULT_MAX_SCALE
) -> int:
    """The smallest integer s >= 1 with min(height, width) * s >= min_size, at most `max_scale`."""
    short = max(1, min(height, width))
    return int(min(max(1, math.ceil(min_size / short)), max(1, max_scale)))


def upscale(tile: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor: each pixel becomes a scale x scale block."""
    if scale == 1:
        return tile
    return np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class FigureLayout:
    """Where everything of a figure goes, in pixels; boxes are (top, left, height, width)."""

    nrows: int
    ncols: int
    scale: int  # the integer upscaling factor of every tile
    cell_h: int  # a cell: the largest tile, upscaled
    cell_w: int
    gap: int  # separator width between cells
    title_h: int  # 0: no title strip
    col_label_h: int  # 0: no column-label strip
    row_label_w: int  # 0: no row labels
    caption_h: int  # 0: no captions
    height: int
    width: int
    tile_sizes: tuple[tuple[int, int] | None, ...]  # source (h, w) of each tile, None for an empty cell
    title_lines: tuple[str, ...] = ()
    col_label_lines: tuple[tuple[str, ...], ...] = ()
    row_label_lines: tuple[tuple[str, ...], ...] = ()
    caption_lines: tuple[tuple[str, ...], ...] = ()

    @property
    def grid_box(self) -> Box:
        """The separator-framed area that holds the cells (and the captions under them)."""
        top, left = MARGIN + self.title_h + self.col_label_h, MARGIN + self.row_label_w
        return top, left, self.height - MARGIN - top, self.width - MARGIN - left

    def cell_box(self, row: int, col: int) -> Box:
        top, left, _, _ = self.grid_box
        pitch_y = self.cell_h + self.caption_h + self.gap
        return (
            top + self.gap + row * pitch_y,
            left + self.gap + col * (self.cell_w + self.gap),
            self.cell_h,
            self.cell_w,
        )

    def tile_box(self, i: int) -> Box | None:
        """Where tile i's upscaled pixels go (centred in its cell); None for an empty cell."""
        size = self.tile_sizes[i]
        if size is None:
            return None
        top, left, _, _ = self.cell_box(*divmod(i, self.ncols))
        h, w = size[0] * self.scale, size[1] * self.scale
        return top + (self.cell_h - h) // 2, left + (self.cell_w - w) // 2, h, w

    def title_box(self) -> Box | None:
        return (MARGIN, MARGIN, self.title_h, self.width - 2 * MARGIN) if self.title_h else None

    def col_label_box(self, col: int) -> Box | None:
        if not self.col_label_h:
            return None
        _, left, _, w = self.cell_box(0, col)
        return MARGIN + self.title_h, left, self.col_label_h, w

    def row_label_box(self, row: int) -> Box | None:
        if not self.row_label_w:
            return None
        top, _, h, _ = self.cell_box(row, 0)
        return top, MARGIN, h, self.row_label_w

    def caption_box(self, i: int) -> Box | None:
        if not self.caption_h:
            return None
        top, left, h, w = self.cell_box(*divmod(i, self.ncols))
        return top + h, left, self.caption_h, w


def _tile_size(tile: Any) -> tuple[int, int] | None:
    if tile is None:
        return None
    shape = tuple(tile.shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return (shape[1], shape[2]) if shape[0] in (1, 3) else (shape[0], shape[1])
    raise ValueError(f"a tile must be (C, H, W), (H, W, C) or (H, W), got shape {shape}")


def _labels(labels: Sequence[str | None] | None, n: int, what: str) -> list[str | None] | None:
    if labels is None:
        return None
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{what}: {len(labels)} given for {n}")
    return labels


def _grid_shape(
    sizes: list[tuple[int, int] | None], ncols: int | None, col_labels: Sequence[str | None] | None
) -> tuple[int, int]:
    """(nrows, ncols): `ncols` defaults to the number of column labels, else min(8, number of tiles)."""
    if not sizes or all(s is None for s in sizes):
        raise ValueError("a figure needs at least one tile")
    if ncols is None:
        ncols = len(col_labels) if col_labels is not None else min(8, len(sizes))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    return math.ceil(len(sizes) / ncols), ncols


def _cell_scale(
    sizes: list[tuple[int, int] | None], min_size: int, max_scale: int, scale: int | None
) -> tuple[int, int, int]:
    """(s, src_h, src_w): the upscaling factor and the largest tile's source size."""
    src_h = max(s[0] for s in sizes if s is not None)
    src_w = max(s[1] for s in sizes if s is not None)
    s = int(scale) if scale is not None else upscale_factor(src_h, src_w, min_size, max_scale)
    if s < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return s, src_h, src_w


def figure_layout(
    tile_sizes: Sequence[tuple[int, int] | None],
    ncols: int | None = None,
    *,
    title: str | None = None,
    row_labels: Sequence[str | None] | None = None,
    col_labels: Sequence[str | None] | None = None,
    captions: Sequence[str | None] | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_scale: int = DEFAULT_MAX_SCALE,
    scale: int | None = None,
    gap: int = 2,
    font_size: int = DEFAULT_FONT_SIZE,
) -> FigureLayout:
    """The geometry `figure` draws, from the source (h, w) of each tile (None for an empty cell).

    `ncols` defaults to the number of column labels, else min(8, number of tiles). `row_labels` has one
    entry per row, `col_labels` one per column, `captions` one per tile; None or "" entries leave their box
    blank. `scale` fixes the upscaling factor, otherwise it is `upscale_factor(cell, min_size, max_scale)`.
    """
    sizes = list(tile_sizes)
    nrows, ncols = _grid_shape(sizes, ncols, col_labels)
    row_labels = _labels(row_labels, nrows, "row_labels (one per row)")
    col_labels = _labels(col_labels, ncols, "col_labels (one per column)")
    captions = _labels(captions, len(sizes), "captions (one per tile)")
    s, src_h, src_w = _cell_scale(sizes, min_size, max_scale, scale)
    cell_h, cell_w = src_h * s, src_w * s
    font = load_font(font_size)
    text_w = cell_w - 2 * PAD

    col_lines = [wrap(t, text_w, font) for t in col_labels] if col_labels else []
    cap_lines = [wrap(t, text_w, font) for t in captions] if captions else []
    row_lines = [wrap(t, None, font) for t in row_labels] if row_labels else []
    widest = max((text_width(line, font) for lines in row_lines for line in lines), default=0)
    row_label_w = widest + 4 * PAD if widest else 0  # PAD left, 3 PAD before the cells

    width = MARGIN + row_label_w + gap + ncols * (cell_w + gap) + MARGIN
    title_lines = wrap(title, width - 2 * MARGIN - 2 * PAD, font)
    title_h, col_label_h = strip_height([title_lines], font), strip_height(col_lines, font)
    caption_h = strip_height(cap_lines, font)
    height = MARGIN + title_h + col_label_h + gap + nrows * (cell_h + caption_h + gap) + MARGIN
    return FigureLayout(
        nrows=nrows,
        ncols=ncols,
        scale=s,
        cell_h=cell_h,
        cell_w=cell_w,
        gap=gap,
        title_h=title_h,
        col_label_h=col_label_h,
        row_label_w=row_label_w,
        caption_h=caption_h,
        height=height,
        width=width,
        tile_sizes=tuple(sizes),
        title_lines=tuple(title_lines),
        col_label_lines=tuple(tuple(lines) for lines in col_lines),
        row_label_lines=tuple(tuple(lines) for lines in row_lines),
        caption_lines=tuple(tuple(lines) for lines in cap_lines),
    )


# ------------------------------------------------------------------------------------------ drawing
def _paste_text(canvas: np.ndarray, box: Box | None, lines: Sequence[str], font: Any, align: str) -> None:
    if box is None:
        return
    top, left, h, w = box
    canvas[top : top + h, left : left + w] = render_text_box(h, w, list(lines), font, align)[..., None]


def figure(
    tiles: Any,
    ncols: int | None = None,
    *,
    title: str | None = None,
    row_labels: Sequence[str | None] | None = None,
    col_labels: Sequence[str | None] | None = None,
    captions: Sequence[str | None] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    min_size: int = DEFAULT_MIN_SIZE,
    max_scale: int = DEFAULT_MAX_SCALE,
    scale: int | None = None,
    gap: int = 2,
    font_size: int = DEFAULT_FONT_SIZE,
) -> np.ndarray:
    """The labelled figure of `tiles` (module docstring) as an (H, W, 3) uint8 array.

    `tiles`: a 4-d batch (N, C, H, W) or (N, H, W, C), or a sequence of tiles (None leaves a cell empty),
    laid out row by row, `ncols` per row. The other arguments are those of `figure_layout`; `value_range`
    is the range of float tiles."""
    items = as_tile_list(tiles)
    layout = figure_layout(
        [_tile_size(t) for t in items],
        ncols,
        title=title,
        row_labels=row_labels,
        col_labels=col_labels,
        captions=captions,
        min_size=min_size,
        max_scale=max_scale,
        scale=scale,
        gap=gap,
        font_size=font_size,
    )
    font = load_font(font_size)
    canvas = np.full((layout.height, layout.width, 3), BACKGROUND, dtype=np.uint8)
    top, left, h, w = layout.grid_box
    canvas[top : top + h, left : left + w] = SEPARATOR
    for i, tile in enumerate(items):
        r, c = divmod(i, layout.ncols)
        ct, cl, ch, cw = layout.cell_box(r, c)
        canvas[ct : ct + ch, cl : cl + cw] = BACKGROUND
        if tile is not None:
            tt, tl, th, tw = layout.tile_box(i)
            canvas[tt : tt + th, tl : tl + tw] = upscale(tile_to_uint8(tile, value_range), layout.scale)
        if layout.caption_h:
            _paste_text(canvas, layout.caption_box(i), layout.caption_lines[i], font, "center")
    for i in range(len(items), layout.nrows * layout.ncols):  # the empty cells after the last tile
        ct, cl, ch, cw = layout.cell_box(*divmod(i, layout.ncols))
        canvas[ct : ct + ch + layout.caption_h, cl : cl + cw] = BACKGROUND
    _paste_text(canvas, layout.title_box(), layout.title_lines, font, "center")
    for c, lines in enumerate(layout.col_label_lines):
        _paste_text(canvas, layout.col_label_box(c), lines, font, "center")
    for r, lines in enumerate(layout.row_label_lines):
        _paste_text(canvas, layout.row_label_box(r), lines, font, "left")
    return canvas
