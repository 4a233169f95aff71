"""Paired blurred/clean images for the classical restoration experiment (docs/classical.md): g = h * f + eta.

Clean images (`data.source`):
- `photos` (default, offline): photos bundled in scikit-image / scikit-learn / matplotlib (`data.photos`).
- `folder`: every image directly inside `data.path` (any folder of clean images).
Each is centre-cropped to `size` x `size` (null: full size) and converted to RGB (each channel degraded and
restored alike) or to grey (`colour: grey`, BT.601 luma).

Degradations: every combination of a blur (`blurs`: name -> PSF spec, `core.degradation.make_psf`:
gaussian / motion (length, angle) / box / example3x3 (a 3x3 example matrix) / matrix / image file) and a noise
level (`noises`: name -> {mean, var}, additive Gaussian on the [0, 1] scale). The setting `<blur>_<noise>` of
image i is degraded with `torch.Generator().manual_seed(hash of (seed, setting index, i))`, so an item depends
only on the seed and its place, never on the batch size or the workers. `blur_boundary` says how the blur
treats the image border: `reflect` (the scene extends beyond the frame, as for a camera; the filters must deal
with a non-periodic image) or `circular` (the textbook's periodic model, which the DFT filters invert exactly).
The degraded image is not clipped or quantised (the model g = h * f + eta exactly as written).

Items (test split only; the methods are not trained): `low` = g, `high` = f (float32 (C, H, W)), `psf`
(zero-padded to one size per data set, centre kept), `noise_mean`, `noise_var`, `setting`, `low_name`
(`<setting>/<image>`), `high_name` (`<image>`).
Degenerate settings (a PSF summing to 0, a PSF larger than the image, a negative noise variance) fail at
construction with `core.degradation.DegenerateInputError` (a ConfigError) naming the setting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from core.degradation import DegenerateInputError, check_noise, check_psf, degrade, make_psf, pad_psf
from core.errors import ConfigError, InputError, MissingFileError
from data import photos as bundled
from data.common import DataSpec
from data.images import ImageReadError, list_images, read_rgb
from data.lowlight import CheckReport, EmptySplitError

SOURCES = ("photos", "folder")
COLOURS = ("rgb", "grey")


@dataclass(frozen=True)
class Setting:
    name: str
    blur: str
    noise: str
    psf_spec: dict[str, Any]
    noise_mean: float
    noise_var: float


def centre_crop(image: np.ndarray, size: int | None, where: str) -> np.ndarray:
    if size is None:
        return image
    h, w = image.shape[:2]
    if h < size or w < size:
        raise InputError(f"{where}: {w}x{h} is smaller than the crop size {size} (data.size)")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


class DegradedImages(Dataset):
    def __init__(
        self,
        images: list[tuple[str, torch.Tensor]],
        settings: list[Setting],
        psfs: list[torch.Tensor],
        seed: int,
        blur_boundary: str,
    ):
        self.images, self.settings, self.psfs = images, settings, psfs
        self.seed, self.blur_boundary = seed, blur_boundary
        k = max(max(p.shape) for p in psfs)
        k += 1 - k % 2  # odd, so every PSF's centre sits on the centre pixel
        self.psf_size = k
        self.padded = [pad_psf(p, (k, k)) for p in psfs]

    def __len__(self) -> int:
        return len(self.settings) * len(self.images)

    def item_seed(self, s: int, i: int) -> int:
        digest = hashlib.sha256(f"{self.seed}/{s}/{i}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, i = divmod(index, len(self.images))
        setting, (name, f) = self.settings[s], self.images[i]
        gen = torch.Generator().manual_seed(self.item_seed(s, i))
        g, _ = degrade(
            f[None].double(), self.psfs[s], setting.noise_mean, setting.noise_var, gen, self.blur_boundary
        )
        return {
            "low": g[0].float(),
            "high": f.float(),
            "psf": self.padded[s].float(),
            "noise_mean": setting.noise_mean,
            "noise_var": setting.noise_var,
            "setting": setting.name,
            "low_name": f"{setting.name}/{name}",
            "high_name": name,
        }


class DeblurDataModule(pl.LightningDataModule):
    """Blurred + noisy / clean pairs from bundled photos or a folder, for every (blur, noise) setting."""

    def __init__(
        self,
        source: str = "photos",
        photos: list[str] | None = None,
        path: str | None = None,
        size: int | None = 256,
        colour: str = "rgb",
        blurs: dict[str, dict[str, Any]] | None = None,
        noises: dict[str, dict[str, float]] | None = None,
        blur_boundary: str = "circular",
        seed: int = 0,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        max_images: int | None = None,
        image_shape: Any = None,
        num_classes: Any = None,
        value_range: Any = (0.0, 1.0),
        domain: str = "deblur",
    ):
        super().__init__()
        # plain containers: configs/data/deblur.yaml sets Hydra's `_convert_: all`
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not one of {SOURCES}")
        if colour not in COLOURS:
            raise ConfigError(f"data.colour={colour!r} is not one of {COLOURS}")
        if blur_boundary not in ("reflect", "circular"):
            raise ConfigError(f"data.blur_boundary={blur_boundary!r} is not one of ('reflect', 'circular')")
        self.source, self.path, self.size, self.colour = source, path, size, colour
        self._declare(image_shape, num_classes, value_range, domain)
        self.photo_names = list(photos or bundled.DEBLUR_PHOTOS)
        self.blur_boundary, self.seed = blur_boundary, seed
        self.eval_batch_size, self.num_workers, self.max_images = eval_batch_size, num_workers, max_images
        blurs = dict(blurs or {"gauss_s2": {"kind": "gaussian", "sigma": 2.0}})
        noises = dict(noises or {"var1e-4": {"mean": 0.0, "var": 1e-4}})
        self.settings: list[Setting] = []
        self.psfs: list[torch.Tensor] = []
        for bname, spec in blurs.items():
            try:
                psf = make_psf(spec)
                if size is not None:
                    check_psf(psf, (size, size), f"blur {bname!r}")
            except DegenerateInputError as err:
                raise DegenerateInputError(f"data.blurs.{bname} = {spec}: {err}") from err
            for nname, noise in noises.items():
                mean, var = float(noise.get("mean", 0.0)), float(noise.get("var", 0.0))
                try:
                    check_noise(mean, var)
                except DegenerateInputError as err:
                    raise DegenerateInputError(f"data.noises.{nname} = {noise}: {err}") from err
                self.settings.append(Setting(f"{bname}_{nname}", bname, nname, dict(spec), mean, var))
                self.psfs.append(psf)
        self.test_set: DegradedImages | None = None
        self._names: list[str] = []

    def _declare(self, image_shape: Any, num_classes: Any, value_range: Any, domain: str) -> None:
        """The data's spec (data.common.DataSpec): [C, size, size] with C = 3 (rgb) or 1 (grey) unless given;
        a given C must match `colour`."""
        channels = 1 if self.colour == "grey" else 3
        if image_shape is None:
            image_shape = (channels, self.size, self.size)
        self.spec = DataSpec.from_config(image_shape, num_classes, value_range, domain)
        if self.spec.image_shape[0] != channels:
            raise ConfigError(
                f"data.image_shape={list(self.spec.image_shape)} but data.colour={self.colour} gives {channels} "
                f"channel(s): set data.image_shape=[{channels}, {self.size}, {self.size}]".replace(
                    "None", "null"
                )
            )
        self.image_shape, self.num_classes = self.spec.image_shape, self.spec.num_classes
        self.value_range, self.domain = self.spec.value_range, self.spec.domain

    # ------------------------------------------------------------------ clean images
    def _sources(self) -> list[tuple[str, Path | None]]:
        if self.source == "photos":
            return [(name, None) for name in self.photo_names]
        if not self.path:
            raise ConfigError("data.source=folder needs data.path (a folder of clean images)")
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise MissingFileError(f"data.path={folder}: no such folder (expected a folder of clean images)")
        images, _ = list_images(folder)
        if not images:
            raise EmptySplitError(
                f"data.path={folder}: no images (png, jpg, jpeg, bmp, tif, tiff, webp) in the folder"
            )
        return [(p.name, p) for p in images]

    def _load(self, name: str, path: Path | None) -> np.ndarray:
        rgb = bundled.load_photo(name) if path is None else read_rgb(path, str(path))
        return centre_crop(rgb, self.size, str(path or f"bundled photo {name}"))

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(rgb.astype(np.float64) / 255.0).permute(2, 0, 1)
        if self.colour == "grey":
            w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)
            x = (x * w).sum(0, keepdim=True)
        return x.float()

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        sources = self._sources()[: self.max_images]
        images = [(name, self._to_tensor(self._load(name, path))) for name, path in sources]
        for name, x in images:
            self.spec.check_images(x[None], f"clean image {name}")
        shapes = {tuple(x.shape) for _, x in images}
        if self.size is None:
            for (name, x), psf in ((im, p) for im in images for p in self.psfs):
                check_psf(psf, x.shape[-2:], f"{name}")
        self.test_set = DegradedImages(images, self.settings, self.psfs, self.seed, self.blur_boundary)
        self._names = [n for n, _ in images]
        self._shapes = sorted(shapes)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        batch = self.eval_batch_size if len(self._shapes) == 1 else 1
        return DataLoader(self.test_set, batch_size=batch, shuffle=False, num_workers=self.num_workers)

    def describe(self) -> dict[str, Any]:
        self.setup()
        photos = self.source == "photos"
        return {
            "dataset": "deblur",
            "source": self.source,
            "label": (
                f"bundled photos {self._names} (centre {self.size}px, {self.colour}), synthetic degradations"
                if photos
                else f"clean images from {self.path} (centre {self.size}px, {self.colour}), synthetic degradations"
            ),
            "comparable_with_papers": False,
            # the clean images are real photos, but every degraded input is generated here
            "kind": "synthetic",
            "synthetic": True,
            "images": self._names,
            "size": self.size,
            "colour": self.colour,
            "blur_boundary": self.blur_boundary,
            "seed": self.seed,
            "settings": [
                {"name": s.name, "psf": s.psf_spec, "noise_mean": s.noise_mean, "noise_var": s.noise_var}
                for s in self.settings
            ],
            "n_test": len(self.test_set),
        }

    def check(self, full: bool = True) -> CheckReport:
        """Counts, sizes and unreadable/too-small images of the clean-image source (`experiments.prepare`)."""
        problems, sizes = [], {}
        try:
            sources = self._sources()
        except (FileNotFoundError, ValueError) as err:
            return CheckReport(str(self.path), "clean images", {}, [str(err)], [])
        for name, path in sources:
            try:
                rgb = bundled.load_photo(name) if path is None else read_rgb(path, str(path))
                sizes[f"{rgb.shape[1]}x{rgb.shape[0]}"] = sizes.get(f"{rgb.shape[1]}x{rgb.shape[0]}", 0) + 1
                centre_crop(rgb, self.size, str(path or name))
            except (ImageReadError, ValueError, FileNotFoundError) as err:
                problems.append(str(err))
        info = {
            "pairs": len(sources) * len(self.settings),
            "sizes": sizes,
            "modes": {},
            "groups": {},
            "ignored": [],
        }
        return CheckReport(
            str(self.path or "bundled photos"), "clean images x settings", {"test": info}, problems, []
        )
