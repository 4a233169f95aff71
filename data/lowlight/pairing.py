"""Pairing low and high images by file name, and the problems a split can have.

Within each (low folder, high folder) of a split, images pair by `pair_key` of their names: the stem without
its extension and a leading `low` / `normal` / `high` token (LOL-v2 Real_captured: `low00001.png` <->
`normal00001.png`). Any image without a partner, on either side, is a problem listing the names; problems
are collected first and raised together (`raise_problems`), the first kind found deciding the exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.images import ImageHeader, ImageReadError, NonRGBImageError, read_header, read_rgb
from data.mnist import DataFormatError

DEFAULT_PREFIXES = ("low", "normal", "high")


class PairingError(DataFormatError):
    """Low and high images do not match one to one."""


class PairSizeError(DataFormatError):
    """The two images of a pair have different sizes."""


class EmptySplitError(DataFormatError):
    """A split has no images."""


@dataclass(frozen=True)
class ImageRef:
    """An image file, or image bytes from a table (Hugging Face parquet); `name` is what messages show."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def header(self) -> ImageHeader:
        return read_header(self.path if self.path is not None else self.data, self.name)

    def read(self, non_rgb: str = "convert") -> np.ndarray:
        return read_rgb(self.path if self.path is not None else self.data, self.name, non_rgb)


@dataclass(frozen=True)
class Pair:
    key: str
    low: ImageRef
    high: ImageRef
    group: str = ""


@dataclass
class Problem:
    kind: str  # missing | unmatched | duplicate | empty | unreadable | size | mode
    message: str


@dataclass
class SplitScan:
    """What a split of a data set holds: pairs, files that are not images, and problems found."""

    pairs: list[Pair] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    headers: dict[str, tuple[ImageHeader, ImageHeader]] = field(default_factory=dict)


# the exception of each kind of problem, in the order `raise_problems` looks for them
_ERRORS = {
    "missing": FileNotFoundError,
    "unmatched": PairingError,
    "duplicate": PairingError,
    "empty": EmptySplitError,
    "unreadable": ImageReadError,
    "size": PairSizeError,
    "mode": NonRGBImageError,
}


def pair_key(stem: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> str:
    """The name two partner files share: the stem without a leading `low`/`normal`/`high` token (and a
    separator after it), case-insensitive. `low00001` -> `00001`, `normal00001` -> `00001`, `12` -> `12`."""
    if prefixes:
        pattern = r"^(?:" + "|".join(re.escape(p) for p in prefixes) + r")[_\-. ]?(?=.)"
        stem = re.sub(pattern, "", stem, flags=re.IGNORECASE)
    return stem.lower()


def names_shown(items: list[str], limit: int = 12) -> str:
    """The first `limit` names, then how many more."""
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")


def natural_key(key: str) -> list[Any]:
    """Natural sort: '2' before '10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def index_by_key(
    refs: list[ImageRef], side: str, where: str, prefixes: tuple[str, ...], problems: list[Problem]
) -> dict[str, ImageRef]:
    """`pair_key` -> image of one side; two images with one key are a `duplicate` problem."""
    out: dict[str, ImageRef] = {}
    for ref in refs:
        key = pair_key(Path(ref.name).stem, prefixes)
        if key in out:
            problems.append(
                Problem(
                    "duplicate",
                    f"{where}: {out[key].name} and {ref.name} ({side}) map to the same pair name {key!r} "
                    "(same stem with another extension or low/normal/high prefix)",
                )
            )
        out[key] = ref
    return out


def match_by_name(
    lows: list[ImageRef],
    highs: list[ImageRef],
    where: str,
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
    group: str = "",
) -> tuple[list[Pair], list[Problem]]:
    """Pairs low and high images by `pair_key` of their names; problems list every unmatched name."""
    problems: list[Problem] = []
    lo = index_by_key(lows, "low", where, prefixes, problems)
    hi = index_by_key(highs, "high", where, prefixes, problems)
    for side, mine, other, partner in (("low", lo, hi, "high"), ("high", hi, lo, "low")):
        alone = sorted(set(mine) - set(other))
        if alone:
            problems.append(
                Problem(
                    "unmatched",
                    f"{where}: {len(alone)} {side} image(s) without a {partner} partner: "
                    f"{names_shown([mine[k].name for k in alone])}",
                )
            )
    keys = sorted(set(lo) & set(hi), key=natural_key)
    prefix = f"{group}/" if group else ""
    return [Pair(prefix + k, lo[k], hi[k], group) for k in keys], problems


def raise_problems(problems: list[Problem], expected: str) -> None:
    """Raises the exception of the first kind of problem found, with every message of that kind."""
    for kind in _ERRORS:
        msgs = [p.message for p in problems if p.kind == kind]
        if msgs:
            raise _ERRORS[kind]("\n".join(msgs) + ("\n" + expected if expected else ""))
