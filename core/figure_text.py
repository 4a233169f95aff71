"""The text of labelled figures (`core.figures`): PIL's default font, greedy word wrapping to a box width (long
words broken after '_', '-', '/', '.'), and text boxes drawn black on white, clipped to their box.

This module is a leaf: numpy and PIL only."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

BACKGROUND = 255  # label strips, captions and the margin
TEXT = 0
PAD = 3  # space between a text box's edge and its text
DEFAULT_FONT_SIZE = 12


@lru_cache(maxsize=8)
def load_font(size: int = DEFAULT_FONT_SIZE) -> Any:
    """PIL's default font at `size` px (Pillow >= 10.1), or its fixed-size bitmap default on older Pillow."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def text_width(text: str, font: Any) -> int:
    """The width of `text` in pixels (0 for none)."""
    return int(math.ceil(font.getbbox(text)[2])) if text else 0


def line_height(font: Any) -> int:
    """Pixels per line of text (the bottom of the lowest glyphs, plus one)."""
    return int(math.ceil(font.getbbox("Agy|")[3])) + 1


def _greedy(pieces: list[str], width: int, font: Any, sep: str) -> list[str]:
    lines, line = [], ""
    for piece in pieces:
        candidate = f"{line}{sep}{piece}" if line else piece
        if not line or text_width(candidate, font) <= width:
            line = candidate
        else:
            lines.append(line)
            line = piece
    return [*lines, line]


def _break_word(word: str, width: int, font: Any) -> list[str]:
    """A word wider than `width` -> pieces that fit: broken after '_', '-', '/' or '.' where possible,
    else between characters."""
    if text_width(word, font) <= width:
        return [word]
    parts = [p for p in re.split(r"(?<=[_\-/.])", word) if p]
    out = []
    for line in _greedy(parts, width, font, ""):
        out += [line] if text_width(line, font) <= width else _greedy(list(line), width, font, "")
    return out


def wrap(text: str | None, width: int | None, font: Any) -> list[str]:
    """Lines of `text`: explicit newlines kept, then words wrapped greedily to `width` px (None: no
    wrapping); a word wider than `width` is broken (after '_', '-', '/', '.', else between characters)."""
    if not text:
        return []
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        words = paragraph.split(" ")
        if width is None:
            lines.append(paragraph)
            continue
        pieces = [piece for word in words for piece in _break_word(word, width, font)]
        lines += _greedy(pieces, width, font, " ")
    return lines


def strip_height(lines_per_box: Sequence[list[str]], font: Any) -> int:
    """The height of a strip of text boxes: the most lines of any box, plus padding (0: no text)."""
    most = max((len(lines) for lines in lines_per_box), default=0)
    return most * line_height(font) + 2 * PAD if most else 0


def render_text_box(
    height: int, width: int, lines: list[str], font: Any, align: str = "center"
) -> np.ndarray:
    """(height, width) uint8: the lines in black on white, vertically centred, aligned "left"/"center";
    nothing is drawn outside the box."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (max(1, width), max(1, height)), BACKGROUND)
    if lines:
        draw = ImageDraw.Draw(img)
        lh = line_height(font)
        y = (height - len(lines) * lh) // 2
        for line in lines:
            w = text_width(line, font)
            x = PAD if align == "left" else max(PAD, (width - w) // 2)
            draw.text((x, y), line, fill=TEXT, font=font)
            y += lh
    return np.asarray(img)[:height, :width]
