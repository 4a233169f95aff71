"""Paired low-light data (LOL, LOL-v2, LSRW, any folder pair) as a LightningDataModule, paired or unpaired.

Sources (`data.source`):
- `synthetic` (default, offline): a synthetic folder in the chosen data set's layout, generated once into
  `paths.cache_dir` by `data.synthetic` and then read by the same code as the real data set. Labelled
  synthetic everywhere; `describe()["comparable_with_papers"]` is False.
- `local`: the real data set in its standard layout under `data.path` (`data.layouts` lists the layouts).
- `hf`: a Hugging Face data set, `data.hf.path` = a local folder (a snapshot of a hub repo, an imagefolder,
  or parquet files) or a hub id (downloaded with `huggingface_hub.snapshot_download`; offline, only the local
  hub cache is used). Its images go through the same pairing code (`match_by_name`).

Pairing: within each (low folder, high folder) of a split, images pair by file name, ignoring the extension
and a leading `low` / `normal` / `high` token (LOL-v2 Real_captured: `low00001.png` <-> `normal00001.png`).
Any image without a partner, on either side, is an error listing the names.

Modes (`data.mode`):
- `paired`: training items are aligned pairs; the random crop/flip is the same on both sides.
- `unpaired` (NeRCo's trainA/trainB, REFERENCE.md section 1): trainA = the low images of the training split,
  trainB = normal-light images (`data.unpaired.high_from`: `train` = all training high images, `disjoint` =
  the pairs split in two halves by a seeded permutation, A from one and B from the other, so no A image's
  own partner is in B, or `folder` = any folder of images), optionally a seeded random subset of
  `data.unpaired.num_high` images. An epoch has N = max(|A|, |B|) items; in epoch e, with
  g = torch.Generator().manual_seed(shuffle_seed + e): A index = randperm(N, g) mod |A| and
  B index = randint(0, |B|, (N,), g), i.e. B drawn uniformly with replacement (CycleGAN's `UnalignedDataset`
  with `serial_batches=False`). Crops and flips are drawn independently for A and B (NeRCo's flips).
  Validation and test stay paired.

Randomness: the sampler yields one integer per draw that encodes (epoch, position, A index, B index); each
item's crop/flip generator is `numpy.random.default_rng([augment_seed, epoch, position])`. So what a sample
looks like depends only on the seeds and its place in the epoch, never on the number of workers, the batch
size or the global RNG (exact resume, DDP).

Items are dicts: `low`, `high` (float (3, H, W) in `value_range`), `low_name`, `high_name` (paths relative to
the data set root). Test/val items are at full resolution (or `eval_resize`); use
`lit_modules.imageops.pad_to_multiple` / `crop_to` around a network that needs sizes divisible by N.

Bad data fails in `setup()` with the files and the expected layout named: missing folders
(FileNotFoundError), unmatched names or duplicate keys (PairingError), an empty split (EmptySplitError),
unreadable image headers (ImageReadError), low/high size mismatches (PairSizeError), non-RGB or 16-bit
images (converted to 8-bit RGB with one warning naming each file and what is done to it, or NonRGBImageError
for a non-RGB mode with `non_rgb=error`). Truncated pixel data is found by
`check(full=True)` (`python -m experiments.prepare`) or when the image is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.errors import NetworkError
from core.network import hub_access
from data.common import ResumableDataLoader, batches_consumed
from data.images import (
    IMAGE_EXTENSIONS,
    ImageHeader,
    ImageReadError,
    NonRGBImageError,
    converted_lines,
    list_images,
    name_list,
    read_header,
    read_rgb,
    warn_converted,
)
from data.layouts import LAYOUTS, LSRW_GROUPS, FolderPair, Layout, folder_layout, get_layout
from data.mnist import DataFormatError
from data.synthetic import LowLightModel, ensure_synthetic_lowlight
from data.transforms import PairTransform, check_value_range

log = logging.getLogger(__name__)
CONVERTED_LISTED = 10  # check(): files named in the warning on conversions to 8-bit RGB, then "and N more"

SOURCES = ("synthetic", "local", "hf")
MODES = ("paired", "unpaired")
HIGH_FROM = ("train", "disjoint", "folder")
CHECKS = ("header", "none")
DEFAULT_PREFIXES = ("low", "normal", "high")
HF_COLUMN_CANDIDATES = (("low", "high"), ("input", "target"), ("low_image", "high_image"), ("lq", "gt"))


class PairingError(DataFormatError):
    """Low and high images do not match one to one."""


class PairSizeError(DataFormatError):
    """The two images of a pair have different sizes."""


class EmptySplitError(DataFormatError):
    """A split has no images."""


# --------------------------------------------------------------------------------------------- pairing
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


def pair_key(stem: str, prefixes: tuple[str, ...] = DEFAULT_PREFIXES) -> str:
    """The name two partner files share: the stem without a leading `low`/`normal`/`high` token (and a
    separator after it), case-insensitive. `low00001` -> `00001`, `normal00001` -> `00001`, `12` -> `12`."""
    if prefixes:
        pattern = r"^(?:" + "|".join(re.escape(p) for p in prefixes) + r")[_\-. ]?(?=.)"
        stem = re.sub(pattern, "", stem, flags=re.IGNORECASE)
    return stem.lower()


@dataclass
class Problem:
    kind: str  # missing | unmatched | duplicate | empty | unreadable | size | mode
    message: str


_ERRORS = {
    "missing": FileNotFoundError,
    "unmatched": PairingError,
    "duplicate": PairingError,
    "empty": EmptySplitError,
    "unreadable": ImageReadError,
    "size": PairSizeError,
    "mode": NonRGBImageError,
}


def _names(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")


def match_by_name(
    lows: list[ImageRef],
    highs: list[ImageRef],
    where: str,
    prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
    group: str = "",
) -> tuple[list[Pair], list[Problem]]:
    """Pairs low and high images by `pair_key` of their names; problems list every unmatched name."""
    problems: list[Problem] = []

    def index(refs: list[ImageRef], side: str) -> dict[str, ImageRef]:
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

    lo, hi = index(lows, "low"), index(highs, "high")
    only_low = sorted(set(lo) - set(hi))
    only_high = sorted(set(hi) - set(lo))
    if only_low:
        problems.append(
            Problem(
                "unmatched",
                f"{where}: {len(only_low)} low image(s) without a high partner: {_names([lo[k].name for k in only_low])}",
            )
        )
    if only_high:
        problems.append(
            Problem(
                "unmatched",
                f"{where}: {len(only_high)} high image(s) without a low partner: {_names([hi[k].name for k in only_high])}",
            )
        )
    keys = sorted(set(lo) & set(hi), key=_natural)
    prefix = f"{group}/" if group else ""
    return [Pair(prefix + k, lo[k], hi[k], group) for k in keys], problems


def _natural(key: str) -> list[Any]:
    """Natural sort: '2' before '10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def raise_problems(problems: list[Problem], expected: str) -> None:
    """Raises the exception of the first kind of problem found, with every message of that kind."""
    for kind in _ERRORS:
        msgs = [p.message for p in problems if p.kind == kind]
        if msgs:
            raise _ERRORS[kind]("\n".join(msgs) + ("\n" + expected if expected else ""))


# --------------------------------------------------------------------------------------------- reading
@dataclass
class SplitScan:
    """What a split of a data set holds: pairs, files that are not images, and problems found."""

    pairs: list[Pair] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    headers: dict[str, tuple[ImageHeader, ImageHeader]] = field(default_factory=dict)


def _display(root: Path, p: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def scan_folder_pairs(
    root: Path, pairs: tuple[FolderPair, ...], split: str, prefixes: tuple[str, ...]
) -> SplitScan:
    scan = SplitScan()
    for fp in pairs:
        low_dir, high_dir = root / fp.low, root / fp.high
        missing = [str(d) for d in (low_dir, high_dir) if not d.is_dir()]
        if missing:
            scan.problems.append(Problem("missing", f"{split}: missing folder(s) {', '.join(missing)}"))
            continue
        refs = {}
        for side, d in (("low", low_dir), ("high", high_dir)):
            images, others = list_images(d)
            scan.ignored += [_display(root, p) for p in others]
            refs[side] = [ImageRef(_display(root, p), path=p) for p in images]
        found, problems = match_by_name(
            refs["low"], refs["high"], f"{split} ({fp.low} | {fp.high})", prefixes, fp.group
        )
        scan.pairs += found
        scan.problems += problems
    if not scan.pairs and not any(p.kind == "missing" for p in scan.problems):
        folders = ", ".join(f"{root / fp.low} + {root / fp.high}" for fp in pairs)
        scan.problems.append(Problem("empty", f"{split}: no image pairs in {folders}"))
    return scan


def check_headers(scan: SplitScan, non_rgb: str) -> None:
    """Reads every header: unreadable files, size mismatches within pairs, non-RGB modes -> problems."""
    for pair in scan.pairs:
        try:
            hl, hh = pair.low.header(), pair.high.header()
        except ImageReadError as err:
            scan.problems.append(Problem("unreadable", str(err)))
            continue
        scan.headers[pair.key] = (hl, hh)
        if hl.size_hw != hh.size_hw:
            scan.problems.append(
                Problem(
                    "size",
                    f"pair {pair.key!r}: {hl.path} is {hl.width}x{hl.height} but {hh.path} is {hh.width}x{hh.height}",
                )
            )
        if non_rgb == "error":
            for h in (hl, hh):
                if h.mode != "RGB":
                    scan.problems.append(
                        Problem("mode", f"{h.path}: mode {h.mode} is not RGB (non_rgb=error)")
                    )


def check_pixels(scan: SplitScan, non_rgb: str) -> None:
    """Decodes every image (finds truncated files); slow: used by `experiments.prepare`."""
    for pair in scan.pairs:
        for ref in (pair.low, pair.high):
            try:
                ref.read("convert")
            except ImageReadError as err:
                scan.problems.append(Problem("unreadable", str(err)))


# ------------------------------------------------------------------------------------ Hugging Face source
def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def resolve_hf_path(path_or_id: str, revision: str | None = None) -> Path:
    """A local folder as is; a hub id through `snapshot_download` (offline: the local hub cache only)."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"data.hf.path={p} is a file; expected a folder or a hub id")
        return p
    if path_or_id.count("/") != 1 or path_or_id.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"data.hf.path={path_or_id!r}: no such folder, and not a hub id (owner/name)")
    alternatives = (
        "Offline alternatives: data.source=synthetic (the embedded default) or data.source=local "
        "data.path=<the data set in its standard layout>, or data.hf.path=<a local snapshot folder>."
    )
    hub_access(f"data.hf.path={path_or_id}")  # bounded: a few seconds, then the local cache only
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_id, repo_type="dataset", revision=revision))
    except Exception as err:  # the hub raises many types for "not reachable / not cached"
        hint = (
            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set, so it can only come from the local hub cache."
            if _hf_offline()
            else "Downloading it needs a network connection to huggingface.co."
        )
        raise NetworkError(
            f"data.source=hf: could not get {path_or_id!r} ({type(err).__name__}: {err}). {hint} {alternatives}"
        ) from err


def find_layout_root(base: Path, layout: Layout, max_depth: int = 3) -> Path | None:
    """The folder under `base` (itself included, up to `max_depth` levels down) that holds the layout's
    first folder pair: hub mirrors often wrap the data set in one or two extra folders."""
    first = next(iter(layout.splits.values()))[0]
    frontier = [base]
    for _ in range(max_depth + 1):
        for d in frontier:
            if (d / first.low).is_dir() and (d / first.high).is_dir():
                return d
        frontier = [
            c for d in frontier for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")
        ]
    return None


def _image_cell(value: Any, where: str) -> tuple[bytes, str | None]:
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        data = value.get("bytes") or Path(value["path"]).read_bytes()
        return data, value.get("path")
    raise DataFormatError(
        f"{where}: expected an image cell ({{'bytes', 'path'}}), got {type(value).__name__}"
    )


def read_hf_tables(
    base: Path, columns: list[str] | None, name_column: str | None, prefixes
) -> dict[str, SplitScan]:
    """Parquet files `*train*.parquet` / `*test*.parquet` (`validation` when there is no test) with either two
    image columns (low, high) per row, or one `image` column and a `label` column naming low/high (an
    imagefolder pushed to the hub), paired by file name."""
    import pyarrow.parquet as pq

    files = sorted(base.rglob("*.parquet"))
    by_split: dict[str, list[Path]] = {}
    for f in files:
        name = f.name.lower()
        split = next(
            (s for s in ("train", "test", "validation") if name.startswith(s) or f"/{s}" in str(f).lower()),
            None,
        )
        if split:
            by_split.setdefault(split, []).append(f)
    if "test" not in by_split and "validation" in by_split:
        by_split["test"] = by_split.pop("validation")
    by_split.pop("validation", None)
    if not by_split:
        raise FileNotFoundError(
            f"data.hf.path={base}: no parquet files named train-*/test-* (found {[str(f) for f in files[:5]]}) "
            "and no low/high folder layout"
        )
    scans = {}
    for split, split_files in by_split.items():
        lows, highs = [], []
        for f in split_files:
            try:
                table = pq.read_table(f)
            except Exception as err:  # pyarrow raises several types for broken files
                raise DataFormatError(f"{f}: not a readable parquet file ({err})") from err
            cols = table.column_names
            pair_cols = (
                list(columns)
                if columns
                else next(([a, b] for a, b in HF_COLUMN_CANDIDATES if a in cols and b in cols), None)
            )
            data = table.to_pydict()
            if pair_cols and all(c in cols for c in pair_cols):
                for i in range(table.num_rows):
                    where = f"{f.name} row {i}"
                    low_bytes, low_path = _image_cell(data[pair_cols[0]][i], where)
                    high_bytes, high_path = _image_cell(data[pair_cols[1]][i], where)
                    stem = (
                        str(data[name_column][i])
                        if name_column and name_column in cols
                        else (Path(low_path).stem if low_path else f"{f.stem}-{i:06d}")
                    )
                    lows.append(ImageRef(f"{split}/low/{stem}", data=low_bytes))
                    highs.append(ImageRef(f"{split}/high/{stem}", data=high_bytes))
            elif "image" in cols and "label" in cols:
                labels = _label_names(table, "label")
                for i in range(table.num_rows):
                    where = f"{f.name} row {i}"
                    img, path = _image_cell(data["image"][i], where)
                    label = labels(data["label"][i])
                    stem = Path(path).stem if path else None
                    if stem is None:
                        raise DataFormatError(
                            f"{where}: an imagefolder row needs the file path to pair by name"
                        )
                    ref = ImageRef(f"{split}/{label}/{Path(path).name}", data=img)
                    if label in ("low", "input"):
                        lows.append(ref)
                    elif label in ("high", "normal", "target", "gt"):
                        highs.append(ref)
                    else:
                        raise DataFormatError(f"{where}: label {label!r} is neither low nor high/normal")
            else:
                raise DataFormatError(
                    f"{f}: columns {cols}; expected two image columns (data.hf.columns=[low, high], tried "
                    f"{[list(c) for c in HF_COLUMN_CANDIDATES]}) or 'image' + 'label' (low/high)"
                )
        pairs, problems = match_by_name(lows, highs, f"{split} ({base})", prefixes)
        scans[split] = SplitScan(pairs=pairs, problems=problems)
        if not pairs:
            scans[split].problems.append(
                Problem("empty", f"{split}: no image pairs in the parquet files under {base}")
            )
    return scans


def _label_names(table, column: str):
    names = None
    try:
        meta = table.schema.metadata or {}
        info = json.loads(meta.get(b"huggingface", b"{}"))
        names = info.get("info", {}).get("features", {}).get(column, {}).get("names")
    except (ValueError, AttributeError):
        names = None

    def label(value: Any) -> str:
        if isinstance(value, str):
            return value.lower()
        return str(names[value]).lower() if names else str(value)

    return label


# ------------------------------------------------------------------------------------------- datasets
def decode_draw(k: int, n_a: int, n_b: int, n: int) -> tuple[int, int, int, int]:
    """Inverse of `DrawSampler.encode`: (epoch, position, a, b)."""
    rest, b = divmod(int(k), n_b)
    rest, a = divmod(rest, n_a)
    epoch, pos = divmod(rest, n)
    return epoch, pos, a, b


class DrawSampler(Sampler[int]):
    """Training order that depends only on (seed, epoch): paired (n_b = 1) or unpaired (module docstring)."""

    def __init__(self, n_a: int, n_b: int = 1, seed: int = 0, unpaired: bool = False):
        self.n_a, self.n_b, self.seed, self.unpaired = n_a, n_b, seed, unpaired
        self.epoch = 0

    @property
    def epoch_length(self) -> int:
        return max(self.n_a, self.n_b) if self.unpaired else self.n_a

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def encode(self, epoch: int, pos: int, a: int, b: int) -> int:
        return ((epoch * self.epoch_length + pos) * self.n_a + a) * self.n_b + b

    def draws(self) -> tuple[list[int], list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = self.epoch_length
        if not self.unpaired:
            return torch.randperm(n, generator=g).tolist(), [0] * n
        a = (torch.randperm(n, generator=g) % self.n_a).tolist()
        b = torch.randint(0, self.n_b, (n,), generator=g).tolist()
        return a, b

    def __iter__(self) -> Iterator[int]:
        a, b = self.draws()
        return iter(self.encode(self.epoch, pos, ai, bi) for pos, (ai, bi) in enumerate(zip(a, b)))

    def __len__(self) -> int:
        return self.epoch_length


class LowLightPairs(Dataset):
    """Items of a paired split (training with random crop/flips, or evaluation), or unpaired training items
    when `highs` is given (then `lows`/`highs` are independent image lists). Indices: see `DrawSampler`."""

    def __init__(
        self,
        lows: list[ImageRef],
        highs: list[ImageRef] | None,
        transform: PairTransform,
        augment_seed: int = 0,
        non_rgb: str = "convert",
        paired_highs: list[ImageRef] | None = None,
    ):
        self.lows = lows
        self.unpaired = highs is not None
        self.highs = highs if highs is not None else paired_highs
        if self.highs is None or (not self.unpaired and len(self.highs) != len(lows)):
            raise ValueError("LowLightPairs: paired items need one high image per low image")
        self.transform = transform
        self.augment_seed = augment_seed
        self.non_rgb = non_rgb
        self.n_b = len(self.highs) if self.unpaired else 1
        self.epoch_length = max(len(lows), self.n_b) if self.unpaired else len(lows)

    @classmethod
    def paired(
        cls, pairs: list[Pair], transform: PairTransform, augment_seed: int = 0, non_rgb: str = "convert"
    ):
        return cls([p.low for p in pairs], None, transform, augment_seed, non_rgb, [p.high for p in pairs])

    def __len__(self) -> int:
        return self.epoch_length

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, pos, a, b = decode_draw(k, len(self.lows), self.n_b, self.epoch_length)
        low_ref = self.lows[a]
        high_ref = self.highs[b] if self.unpaired else self.highs[a]
        rng = np.random.default_rng([self.augment_seed, epoch, pos]) if self.transform.is_random else None
        low_img, high_img = low_ref.read(self.non_rgb), high_ref.read(self.non_rgb)
        if not self.unpaired and low_img.shape != high_img.shape:
            raise PairSizeError(
                f"{low_ref.name} is {low_img.shape[1]}x{low_img.shape[0]} but {high_ref.name} is "
                f"{high_img.shape[1]}x{high_img.shape[0]}"
            )
        low, high, _ = self.transform(low_img, high_img, rng, where=f"{low_ref.name} | {high_ref.name}")
        return {"low": low, "high": high, "low_name": low_ref.name, "high_name": high_ref.name}


# ------------------------------------------------------------------------------------------- the module
@dataclass
class CheckReport:
    """What `LowLightDataModule.check()` found (printed by `python -m experiments.prepare`)."""

    root: str
    layout: str
    splits: dict[str, dict[str, Any]]
    problems: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"data set root: {self.root}", f"layout: {self.layout}"]
        for split, info in self.splits.items():
            sizes = ", ".join(f"{s} x{n}" for s, n in info["sizes"].items()) or "-"
            lines.append(f"  {split}: {info['pairs']} pairs; sizes (w x h): {sizes}")
            for group, n in info.get("groups", {}).items():
                lines.append(f"    {group}: {n} pairs")
            if info.get("modes"):
                lines.append(f"    modes: {info['modes']}")
            if info.get("ignored"):
                lines.append(f"    ignored (not images): {_names(info['ignored'], 8)}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


class LowLightDataModule(pl.LightningDataModule):
    """LOL / LOL-v2 / LSRW / any folder pair, paired or unpaired (module docstring for every option)."""

    def __init__(
        self,
        dataset: str = "lol",
        source: str = "synthetic",
        path: str | None = None,
        folders: dict[str, str | None] | None = None,
        subset: list[str] | None = None,
        hf: dict[str, Any] | None = None,
        synthetic: dict[str, Any] | None = None,
        cache_dir: str = ".cache",
        mode: str = "paired",
        unpaired: dict[str, Any] | None = None,
        resize: Any = None,
        crop: Any = None,
        hflip: bool = False,
        vflip: bool = False,
        eval_resize: Any = None,
        value_range: Any = (0.0, 1.0),
        val_size: int = 0,
        split_seed: int = 1234,
        shuffle_seed: int = 0,
        augment_seed: int | None = None,
        batch_size: int = 1,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        non_rgb: str = "convert",
        check: str = "header",
        name_prefixes: list[str] | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        from omegaconf import DictConfig, ListConfig, OmegaConf

        def plain(v: Any) -> Any:
            return OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v

        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} is not one of {SOURCES}")
        if mode not in MODES:
            raise ValueError(f"data.mode={mode!r} is not one of {MODES}")
        if check not in CHECKS:
            raise ValueError(f"data.check={check!r} is not one of {CHECKS}")
        if dataset != "folder":
            get_layout(dataset)
        elif source == "synthetic":
            raise ValueError(
                "data.dataset=folder reads folders you name (data.folders); use data.source=local"
            )
        self.dataset = dataset
        self.source = source
        self.path = path
        self.folders = plain(folders) or {}
        self.subset = tuple(plain(subset) or ())
        bad = [g for g in self.subset if g not in LSRW_GROUPS]
        if bad or (self.subset and dataset != "lsrw"):
            raise ValueError(
                f"data.subset={list(self.subset)}: only for dataset=lsrw, groups from {LSRW_GROUPS}"
            )
        self.hf = {"path": None, "columns": None, "name_column": None, "revision": None, **(plain(hf) or {})}
        self.synthetic_model = LowLightModel.from_config(plain(synthetic))
        self.cache_dir = cache_dir
        self.mode = mode
        self.unpaired_cfg = {
            "high_from": "train",
            "high_dir": None,
            "num_high": None,
            "seed": 0,
            **(plain(unpaired) or {}),
        }
        if self.unpaired_cfg["high_from"] not in HIGH_FROM:
            raise ValueError(
                f"data.unpaired.high_from={self.unpaired_cfg['high_from']!r} is not one of {HIGH_FROM}"
            )
        self.value_range = check_value_range(plain(value_range))
        self.train_transform = PairTransform(
            resize=plain(resize),
            crop=plain(crop),
            hflip=hflip,
            vflip=vflip,
            independent=mode == "unpaired",
            value_range=self.value_range,
        )
        self.eval_transform = PairTransform(resize=plain(eval_resize), value_range=self.value_range)
        self.val_size = val_size
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.augment_seed = shuffle_seed if augment_seed is None else augment_seed
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        if non_rgb not in ("convert", "error"):
            raise ValueError(f"data.non_rgb={non_rgb!r} is not one of ('convert', 'error')")
        self.non_rgb = non_rgb
        self.check_level = check
        self.prefixes = tuple(plain(name_prefixes) if name_prefixes is not None else DEFAULT_PREFIXES)
        self.pin_memory = pin_memory
        self.root: Path | None = None
        self.scans: dict[str, SplitScan] = {}
        self.splits: dict[str, LowLightPairs] = {}
        self._info: dict[str, Any] = {}

    # ------------------------------------------------------------------ where the data come from
    @property
    def layout(self) -> Layout:
        if self.dataset == "folder":
            f = self.folders
            return folder_layout(
                f.get("train_low"), f.get("train_high"), f.get("test_low"), f.get("test_high")
            )
        layout = LAYOUTS[self.dataset]
        if self.subset:
            splits = {
                s: tuple(fp for fp in fps if fp.group in self.subset) for s, fps in layout.splits.items()
            }
            layout = dataclasses.replace(layout, splits=splits)
        return layout

    def resolve_root(self) -> Path:
        """The data set root (generating the synthetic folder if needed)."""
        if self.source == "synthetic":
            full = LAYOUTS[self.dataset]  # generate every group; `subset` only filters what is read
            return ensure_synthetic_lowlight(self.cache_dir, full, self.synthetic_model)
        if self.source == "local":
            if self.path is None:
                if self.dataset == "folder":
                    return Path("/")  # folders are absolute paths (or relative to the working directory)
                raise ValueError("data.source=local needs data.path (the data set root)")
            root = Path(self.path).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(
                    f"data.source=local: the data set root {root} does not exist.\n{self.layout.expected(self.subset)}\n"
                    "Set data.path (or SUITE_DATA_DIR), or use data.source=synthetic for the embedded default."
                )
            return root
        if not self.hf.get("path"):
            raise ValueError("data.source=hf needs data.hf.path (a local folder or a hub id owner/name)")
        return resolve_hf_path(str(self.hf["path"]), self.hf.get("revision"))

    def scan(self, full: bool = False) -> dict[str, SplitScan]:
        """Pairs and problems of every split (no exception for problems: see `setup` and `check`)."""
        root = self.resolve_root()
        self.root = root
        layout = self.layout
        scans: dict[str, SplitScan]
        if self.source == "hf":
            layout_root = find_layout_root(root, layout)
            if layout_root is not None:
                self.root = root = layout_root
                scans = {
                    s: scan_folder_pairs(root, fps, s, self.prefixes) for s, fps in layout.splits.items()
                }
            elif (root / "train" / "low").is_dir() or (root / "test" / "low").is_dir():  # an imagefolder
                img = folder_layout(
                    *(
                        f"{s}/{side}" if (root / s / "low").is_dir() else None
                        for s in ("train", "test")
                        for side in ("low", "high")
                    )
                )
                scans = {s: scan_folder_pairs(root, fps, s, self.prefixes) for s, fps in img.splits.items()}
            else:
                scans = read_hf_tables(
                    root, self.hf.get("columns"), self.hf.get("name_column"), self.prefixes
                )
        else:
            scans = {s: scan_folder_pairs(root, fps, s, self.prefixes) for s, fps in layout.splits.items()}
        if self.check_level == "header" or full:
            for scan in scans.values():
                check_headers(scan, self.non_rgb)
        if full:
            for scan in scans.values():
                check_pixels(scan, self.non_rgb)
        return scans

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        scans = self.scan()
        problems = [p for s in scans.values() for p in s.problems]
        raise_problems(problems, self._expected())
        if "test" not in scans:
            raise EmptySplitError(
                f"{self.dataset}: no test split (folders: {self.folders})\n{self._expected()}"
            )
        self.scans = scans
        headers = [h for s in scans.values() for pair in s.headers.values() for h in pair]
        warn_converted(headers, f"{self.dataset} ({self.root})")
        self._build()

    def _expected(self) -> str:
        return (
            self.layout.expected(self.subset)
            if self.source != "hf"
            else (
                "expected: a snapshot holding the data set's folder layout, an imagefolder train|test/{low,high}/, "
                "or parquet files train-*/test-* with two image columns (data.hf.columns) or image + label"
            )
        )

    def _build(self) -> None:
        nr = self.non_rgb
        train_pairs = list(self.scans["train"].pairs) if "train" in self.scans else []
        val_pairs: list[Pair] = []
        if self.val_size:
            if self.val_size >= len(train_pairs):
                raise ValueError(
                    f"data.val_size={self.val_size} is not smaller than the {len(train_pairs)} training pairs"
                )
            perm = np.random.default_rng(self.split_seed).permutation(len(train_pairs))
            val_pairs = [train_pairs[i] for i in sorted(perm[: self.val_size])]
            keep = sorted(perm[self.val_size :])
            train_pairs = [train_pairs[i] for i in keep]
        if train_pairs:
            if self.mode == "paired":
                self.splits["train"] = LowLightPairs.paired(
                    train_pairs, self.train_transform, self.augment_seed, nr
                )
            else:
                lows, highs = self._unpaired(train_pairs)
                self.splits["train"] = LowLightPairs(lows, highs, self.train_transform, self.augment_seed, nr)
        if val_pairs:
            self.splits["val"] = LowLightPairs.paired(val_pairs, self.eval_transform, 0, nr)
        self.splits["test"] = LowLightPairs.paired(self.scans["test"].pairs, self.eval_transform, 0, nr)

    def _unpaired(self, pairs: list[Pair]) -> tuple[list[ImageRef], list[ImageRef]]:
        """trainA (low) and trainB (normal-light) lists of unpaired training (module docstring)."""
        u = self.unpaired_cfg
        rng = np.random.default_rng(u["seed"])
        lows = [p.low for p in pairs]
        if u["high_from"] == "train":
            highs = [p.high for p in pairs]
        elif u["high_from"] == "disjoint":
            if len(pairs) < 2:
                raise ValueError("data.unpaired.high_from=disjoint needs at least 2 training pairs")
            perm = rng.permutation(len(pairs))
            half = len(pairs) // 2
            lows = [pairs[i].low for i in sorted(perm[half:])]
            highs = [pairs[i].high for i in sorted(perm[:half])]
        else:
            if not u["high_dir"]:
                raise ValueError("data.unpaired.high_from=folder needs data.unpaired.high_dir")
            d = Path(u["high_dir"]).expanduser()
            if not d.is_dir():
                raise FileNotFoundError(
                    f"data.unpaired.high_dir={d} does not exist (a folder of normal-light images)"
                )
            images, _ = list_images(d)
            if not images:
                raise EmptySplitError(
                    f"data.unpaired.high_dir={d} holds no images (extensions {IMAGE_EXTENSIONS})"
                )
            highs = [ImageRef(str(p), path=p) for p in images]
            for ref in highs:
                ref.header()
        n = u["num_high"]
        if n is not None:
            if not 0 < n <= len(highs):
                raise ValueError(
                    f"data.unpaired.num_high={n} must be in 1..{len(highs)} (the available normal-light images)"
                )
            pick = sorted(rng.choice(len(highs), size=n, replace=False).tolist())
            highs = [highs[i] for i in pick]
        return lows, highs

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.splits[split]
        sampler = (
            DrawSampler(len(ds.lows), ds.n_b, self.shuffle_seed, unpaired=ds.unpaired) if train else None
        )
        loader, extra = (
            (ResumableDataLoader, {"position": self._train_position}) if train else (DataLoader, {})
        )
        return loader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            **extra,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def _train_position(self) -> int | None:
        return batches_consumed(self.trainer)

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.splits:
            raise EmptySplitError(
                f"{self.dataset}: no training split (data.folders / layout)\n{self._expected()}"
            )
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # ------------------------------------------------------------------ description and checks
    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    def describe(self) -> dict[str, Any]:
        """What the numbers were computed on; written into metrics.json and run_info.json."""
        self.setup()
        real = not self.is_synthetic and self.dataset != "folder"
        if self.is_synthetic:
            label = (
                f"synthetic-{self.dataset}: SYNTHETIC low-light pairs from bundled photos in the {self.layout.title} "
                "layout (data.synthetic); not comparable with published numbers"
            )
        elif self.dataset == "folder":
            label = f"paired folders {self.folders}"
        else:
            label = f"{self.layout.title} from {self.root}" + (
                f" ({'+'.join(self.subset)})" if self.subset else ""
            )
        # real-custom: the user's own paired folders, real images without published numbers to compare with
        kind = "synthetic" if self.is_synthetic else "real-custom" if self.dataset == "folder" else "real"
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "source": self.source,
            "label": label,
            "comparable_with_papers": real,
            "synthetic": self.is_synthetic,
            "kind": kind,
            "root": str(self.root),
            "mode": self.mode,
            "value_range": list(self.value_range),
            "train_transform": {
                "resize": self.train_transform.resize,
                "crop": self.train_transform.crop,
                "hflip": self.train_transform.hflip,
                "vflip": self.train_transform.vflip,
                "independent": self.train_transform.independent,
            },
            "eval_resize": self.eval_transform.resize,
            **{f"n_{k}": len(v) for k, v in self.splits.items()},
        }
        if self.mode == "unpaired" and "train" in self.splits:
            out["unpaired"] = {
                **self.unpaired_cfg,
                "n_A": len(self.splits["train"].lows),
                "n_B": self.splits["train"].n_b,
            }
        if self.subset:
            out["subset"] = list(self.subset)
        if self.is_synthetic:
            out["synthetic_model"] = dataclasses.asdict(self.synthetic_model)
            out["synthetic_key"] = self.synthetic_model.key(LAYOUTS[self.dataset])
        if self.source == "hf":
            out["hf"] = dict(self.hf)
        return out

    def check(self, full: bool = True) -> CheckReport:
        """Counts, sizes, modes and every problem, without raising (`python -m experiments.prepare`)."""
        try:
            scans = self.scan(full=full)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            return CheckReport(str(self.root or self.path), self.dataset, {}, [str(err)], [])
        splits, problems, warns = {}, [], []
        for split, scan in scans.items():
            low_sizes = Counter(f"{h[0].width}x{h[0].height}" for h in scan.headers.values())
            modes = Counter(h.mode for pair in scan.headers.values() for h in pair)
            splits[split] = {
                "pairs": len(scan.pairs),
                "sizes": dict(low_sizes.most_common()),
                "modes": dict(modes),
                "groups": dict(Counter(p.group for p in scan.pairs if p.group)),
                "ignored": scan.ignored,
            }
            problems += [p.message for p in scan.problems]
            converted = converted_lines([h for pair in scan.headers.values() for h in pair])
            if converted:
                splits[split]["converted"] = converted  # every file, in check.json
            if converted and self.non_rgb == "convert":
                warns.append(
                    f"{split}: {len(converted)} image(s) are not 8-bit RGB and will be converted "
                    f"(non_rgb=convert):\n    " + name_list(converted, CONVERTED_LISTED, "\n    ")
                )
        if "test" not in scans:
            problems.append("no test split")
        return CheckReport(str(self.root), self.layout.title, splits, problems, warns)
