"""`LowLightDataModule`: LOL / LOL-v2 / LSRW / any folder pair, paired or unpaired (package docstring)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from core.errors import ConfigError, MissingFileError
from data.common import ResumableDataLoader, batches_consumed
from data.images import warn_converted
from data.layouts import LAYOUTS, Layout, folder_layout
from data.lowlight.folders import check_headers, check_pixels, scan_folder_pairs
from data.lowlight.hub import HF_EXPECTED, resolve_hf_path, scan_hf
from data.lowlight.pairing import EmptySplitError, SplitScan, raise_problems
from data.lowlight.report import CheckReport, check_report
from data.lowlight.sampler import DrawSampler, LowLightPairs
from data.lowlight.settings import LowLightSettings
from data.lowlight.splits import build_splits
from data.synthetic import ensure_synthetic_lowlight
from data.transforms import PairTransform


def check_crop_fits(scans: dict[str, SplitScan], train: PairTransform) -> None:
    """The training crop fits every training image (by its header, or the `resize` size): a crop that does
    not fit fails when the training loader is made, naming the images, not in the middle of an epoch."""
    if train.crop is None or "train" not in scans:
        return
    ch, cw = train.crop
    if train.resize is not None:
        sizes = [(f"data.resize={list(train.resize)}", *train.resize)]
    else:
        headers = [h for pair in scans["train"].headers.values() for h in pair]
        sizes = [(f"{h.path} ({h.width}x{h.height})", h.height, h.width) for h in headers]
    small = [name for name, h, w in sizes if h < ch or w < cw]
    if small:
        raise ConfigError(
            f"data.crop={list(train.crop)} (h x w) is larger than {len(small)} training image size(s): "
            f"{', '.join(small[:8])}{' ...' if len(small) > 8 else ''}; lower data.crop or change data.resize"
        )


class LowLightDataModule(pl.LightningDataModule):
    """LOL / LOL-v2 / LSRW / any folder pair, paired or unpaired.

    Keyword arguments: the keys of configs/data/lol.yaml (`LowLightSettings`). The declared shape is exposed
    as `image_shape`, `num_classes`, `domain` and `value_range` (contract of every DataModule of the suite).
    """

    def __init__(self, **options: Any):
        super().__init__()
        s = self.settings = LowLightSettings.from_options(**options)
        self.dataset, self.source, self.path, self.mode = s.dataset, s.source, s.path, s.mode
        self.folders, self.subset, self.hf = s.folders, s.subset, s.hf
        self.spec = s.spec  # checked against every item loaded (LowLightPairs)
        self.image_shape, self.num_classes = self.spec.image_shape, self.spec.num_classes
        self.value_range, self.domain = self.spec.value_range, self.spec.domain
        self.train_transform, self.eval_transform = s.train_transform, s.eval_transform
        self.batch_size = s.batch_size
        self.root: Path | None = None
        self.scans: dict[str, SplitScan] = {}
        self.splits: dict[str, LowLightPairs] = {}

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
            return ensure_synthetic_lowlight(self.settings.cache_dir, full, self.settings.synthetic)
        if self.source == "local":
            if self.path is None:
                if self.dataset == "folder":
                    return Path("/")  # folders are absolute paths (or relative to the working directory)
                raise ConfigError("data.source=local needs data.path (the data set root)")
            root = Path(self.path).expanduser()
            if not root.is_dir():
                raise MissingFileError(
                    f"data.source=local: the data set root {root} does not exist.\n{self.layout.expected(self.subset)}\n"
                    "Set data.path (or SUITE_DATA_DIR), or use data.source=synthetic for the embedded default."
                )
            return root
        if not self.hf.get("path"):
            raise ConfigError("data.source=hf needs data.hf.path (a local folder or a hub id owner/name)")
        return resolve_hf_path(str(self.hf["path"]), self.hf.get("revision"))

    def scan(self, full: bool = False) -> dict[str, SplitScan]:
        """Pairs and problems of every split (no exception for problems: see `setup` and `check`)."""
        self.root = root = self.resolve_root()
        layout, prefixes = self.layout, self.settings.name_prefixes
        if self.source == "hf":
            self.root, scans = scan_hf(
                root, layout, prefixes, self.hf.get("columns"), self.hf.get("name_column")
            )
        else:
            scans = {s: scan_folder_pairs(root, fps, s, prefixes) for s, fps in layout.splits.items()}
        if self.settings.check == "header" or full:
            for scan in scans.values():
                check_headers(scan, self.settings.non_rgb)
        if full:
            for scan in scans.values():
                check_pixels(scan)
        return scans

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        scans = self.scan()
        raise_problems([p for s in scans.values() for p in s.problems], self._expected())
        if "test" not in scans:
            raise EmptySplitError(
                f"{self.dataset}: no test split (folders: {self.folders})\n{self._expected()}"
            )
        self.scans = scans
        headers = [h for s in scans.values() for pair in s.headers.values() for h in pair]
        warn_converted(headers, f"{self.dataset} ({self.root})")
        self.splits = build_splits(scans, self.settings, self.train_transform, self.eval_transform)
        for ds in self.splits.values():
            ds.spec = self.spec

    def _expected(self) -> str:
        return self.layout.expected(self.subset) if self.source != "hf" else HF_EXPECTED

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        ds, s = self.splits[split], self.settings
        sampler = DrawSampler(len(ds.lows), ds.n_b, s.shuffle_seed, unpaired=ds.unpaired) if train else None
        loader, extra = (
            (ResumableDataLoader, {"position": self._train_position}) if train else (DataLoader, {})
        )
        return loader(
            ds,
            batch_size=s.batch_size if train else s.eval_batch_size,
            sampler=sampler,
            **extra,
            num_workers=s.num_workers,
            persistent_workers=s.num_workers > 0,
            pin_memory=s.pin_memory,
            drop_last=False,
        )

    def _train_position(self) -> int | None:
        return batches_consumed(self.trainer)

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.splits:
            raise EmptySplitError(
                f"{self.dataset}: no training split (data.folders / layout)\n{self._expected()}"
            )
        check_crop_fits(self.scans, self.train_transform)
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # ------------------------------------------------------------------ description and checks
    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    def label(self) -> str:
        """One line naming the data the numbers were computed on."""
        if self.is_synthetic:
            return (
                f"synthetic-{self.dataset}: SYNTHETIC low-light pairs from bundled photos in the {self.layout.title} "
                "layout (data.synthetic); not comparable with published numbers"
            )
        if self.dataset == "folder":
            return f"paired folders {self.folders}"
        return f"{self.layout.title} from {self.root}" + (
            f" ({'+'.join(self.subset)})" if self.subset else ""
        )

    def describe(self) -> dict[str, Any]:
        """What the numbers were computed on; written into metrics.json and run_info.json."""
        self.setup()
        t = self.train_transform
        # real-custom: the user's own paired folders, real images without published numbers to compare with
        kind = "synthetic" if self.is_synthetic else "real-custom" if self.dataset == "folder" else "real"
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "source": self.source,
            "label": self.label(),
            "comparable_with_papers": kind == "real",
            "synthetic": self.is_synthetic,
            "kind": kind,
            "root": str(self.root),
            "mode": self.mode,
            "value_range": list(self.value_range),
            "image_shape": list(self.image_shape),
            "domain": self.domain,
            "train_transform": {
                k: getattr(t, k) for k in ("resize", "crop", "hflip", "vflip", "independent")
            },
            "eval_resize": self.eval_transform.resize,
            **{f"n_{k}": len(v) for k, v in self.splits.items()},
        }
        if self.mode == "unpaired" and "train" in self.splits:
            n = {"n_A": len(self.splits["train"].lows), "n_B": self.splits["train"].n_b}
            out["unpaired"] = {**dataclasses.asdict(self.settings.unpaired), **n}
        if self.subset:
            out["subset"] = list(self.subset)
        if self.is_synthetic:
            out["synthetic_model"] = dataclasses.asdict(self.settings.synthetic)
            out["synthetic_key"] = self.settings.synthetic.key(LAYOUTS[self.dataset])
        if self.source == "hf":
            out["hf"] = dict(self.hf)
        return out

    def check(self, full: bool = True) -> CheckReport:
        """Counts, sizes, modes and every problem, without raising (`python -m experiments.prepare`)."""
        try:
            scans = self.scan(full=full)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            return CheckReport(str(self.root or self.path), self.dataset, {}, [str(err)], [])
        return check_report(scans, str(self.root), self.layout.title, self.settings.non_rgb)
