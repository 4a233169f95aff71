"""The Hugging Face source (`data.source=hf`): `data.hf.path` is a local folder (a snapshot of a hub repo, an
imagefolder, or parquet files) or a hub id, downloaded with `huggingface_hub.snapshot_download` (offline:
the local hub cache only). Whatever its form, its images go through the same pairing code (`match_by_name`).

Forms, tried in this order (`scan_hf`): the data set's own folder layout somewhere under the snapshot (hub
mirrors often wrap it in one or two folders), an imagefolder `train|test/{low,high}/`, parquet files
`*train*` / `*test*` (`validation` when there is no test) with either two image columns per row
(`data.hf.columns`, else the first of `HF_COLUMN_CANDIDATES` present) or one `image` column and a `label`
column naming low/high (an imagefolder pushed to the hub).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.errors import NetworkError
from core.network import hub_access
from data.layouts import Layout, folder_layout
from data.lowlight.folders import scan_folder_pairs
from data.lowlight.pairing import ImageRef, Problem, SplitScan, match_by_name
from data.mnist import DataFormatError

HF_COLUMN_CANDIDATES = (("low", "high"), ("input", "target"), ("low_image", "high_image"), ("lq", "gt"))
LOW_LABELS = ("low", "input")
HIGH_LABELS = ("high", "normal", "target", "gt")
HF_EXPECTED = (
    "expected: a snapshot holding the data set's folder layout, an imagefolder train|test/{low,high}/, "
    "or parquet files train-*/test-* with two image columns (data.hf.columns) or image + label"
)


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


def scan_hf(
    root: Path, layout: Layout, prefixes: tuple[str, ...], columns: Any, name_column: str | None
) -> tuple[Path, dict[str, SplitScan]]:
    """(the data set root, the scans of its splits) of a snapshot in any of the forms of the module docstring."""
    layout_root = find_layout_root(root, layout)
    if layout_root is not None:
        scans = {s: scan_folder_pairs(layout_root, fps, s, prefixes) for s, fps in layout.splits.items()}
        return layout_root, scans
    if (root / "train" / "low").is_dir() or (root / "test" / "low").is_dir():  # an imagefolder
        folders = [
            f"{s}/{side}" if (root / s / "low").is_dir() else None
            for s in ("train", "test")
            for side in ("low", "high")
        ]
        img = folder_layout(*folders)
        return root, {s: scan_folder_pairs(root, fps, s, prefixes) for s, fps in img.splits.items()}
    return root, read_hf_tables(root, columns, name_column, prefixes)


# ------------------------------------------------------------------------------------------ parquet
def parquet_splits(base: Path) -> dict[str, list[Path]]:
    """The parquet files under `base` by split (`validation` becomes `test` when there is no test)."""
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
    return by_split


def _image_cell(value: Any, where: str) -> tuple[bytes, str | None]:
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        data = value.get("bytes") or Path(value["path"]).read_bytes()
        return data, value.get("path")
    raise DataFormatError(
        f"{where}: expected an image cell ({{'bytes', 'path'}}), got {type(value).__name__}"
    )


def _label_names(table: Any, column: str):
    """value -> lower-case label name (the ClassLabel names in the table's Hugging Face metadata, if any)."""
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


def rows_of_two_columns(
    data: dict[str, list], f: Path, split: str, pair_cols: list[str], name_column: str | None
) -> tuple[list[ImageRef], list[ImageRef]]:
    """(lows, highs) of a table with a low and a high image per row, named by `name_column`, else the low
    image's file stem, else the row number."""
    lows, highs = [], []
    for i in range(len(data[pair_cols[0]])):
        where = f"{f.name} row {i}"
        low_bytes, low_path = _image_cell(data[pair_cols[0]][i], where)
        high_bytes, _ = _image_cell(data[pair_cols[1]][i], where)
        if name_column and name_column in data:
            stem = str(data[name_column][i])
        else:
            stem = Path(low_path).stem if low_path else f"{f.stem}-{i:06d}"
        lows.append(ImageRef(f"{split}/low/{stem}", data=low_bytes))
        highs.append(ImageRef(f"{split}/high/{stem}", data=high_bytes))
    return lows, highs


def rows_of_imagefolder(
    table: Any, data: dict[str, list], f: Path, split: str
) -> tuple[list[ImageRef], list[ImageRef]]:
    """(lows, highs) of an imagefolder pushed to the hub: `image` cells with their file paths, `label` low/high."""
    labels = _label_names(table, "label")
    lows, highs = [], []
    for i in range(table.num_rows):
        where = f"{f.name} row {i}"
        img, path = _image_cell(data["image"][i], where)
        label = labels(data["label"][i])
        if not path:
            raise DataFormatError(f"{where}: an imagefolder row needs the file path to pair by name")
        ref = ImageRef(f"{split}/{label}/{Path(path).name}", data=img)
        if label in LOW_LABELS:
            lows.append(ref)
        elif label in HIGH_LABELS:
            highs.append(ref)
        else:
            raise DataFormatError(f"{where}: label {label!r} is neither low nor high/normal")
    return lows, highs


def read_parquet_file(
    f: Path, split: str, columns: list[str] | None, name_column: str | None
) -> tuple[list[ImageRef], list[ImageRef]]:
    """(lows, highs) of one parquet file, in whichever of the two table forms it has."""
    import pyarrow.parquet as pq

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
    if pair_cols and all(c in cols for c in pair_cols):
        return rows_of_two_columns(table.to_pydict(), f, split, pair_cols, name_column)
    if "image" in cols and "label" in cols:
        return rows_of_imagefolder(table, table.to_pydict(), f, split)
    raise DataFormatError(
        f"{f}: columns {cols}; expected two image columns (data.hf.columns=[low, high], tried "
        f"{[list(c) for c in HF_COLUMN_CANDIDATES]}) or 'image' + 'label' (low/high)"
    )


def read_hf_tables(
    base: Path, columns: list[str] | None, name_column: str | None, prefixes: tuple[str, ...]
) -> dict[str, SplitScan]:
    """The scans of the parquet files under `base` (module docstring), paired by file name."""
    scans = {}
    for split, split_files in parquet_splits(base).items():
        lows, highs = [], []
        for f in split_files:
            file_lows, file_highs = read_parquet_file(f, split, columns, name_column)
            lows += file_lows
            highs += file_highs
        pairs, problems = match_by_name(lows, highs, f"{split} ({base})", prefixes)
        scans[split] = SplitScan(pairs=pairs, problems=problems)
        if not pairs:
            scans[split].problems.append(
                Problem("empty", f"{split}: no image pairs in the parquet files under {base}")
            )
    return scans
