"""Synthetic low-light pairs, generated once into a cached folder with a real data set's layout.

The embedded default of the low-light DataModules: normal-light images are crops of the photos
that ship with scikit-image, scikit-learn and matplotlib (`data.photos`); each low-light partner comes from
a documented, seeded camera model. The folder is written in the layout of LOL (or LOL-v2, LSRW), and the
DataModule reads it with exactly the code that reads the real data set. Numbers on it are synthetic: they
are never comparable with published LOL/LSRW results (`describe()["comparable_with_papers"] = False`).

Low-light model, per image i with its own generator `rng_i = default_rng(SeedSequence([seed, split, i]))`
(so an image depends only on (seed, split, i), not on how many images are generated or in what order):

  0. high: a random crop of a source photo (area fraction `crop_scale`, the target aspect ratio), bicubic
     resize to (height, width), random horizontal flip; 8-bit sRGB.
  1. linearise (IEC 61966-2-1 sRGB transfer function):   x = srgb_to_linear(high / 255)
  2. exposure scaling, k ~ LogUniform(exposure):          s = k * x
  3. colour cast, per channel, g_c = exp(N(0, cast_sigma)) normalised to mean 1:   s_c = g_c * s_c
  4. sensor noise, heteroscedastic Gaussian approximation of Poisson shot noise + Gaussian read noise
     (Foi et al. 2008; Brooks et al. 2019, "Unprocessing", sec. 3):
         y = s + sqrt(a * s + b) * n,   n ~ N(0, 1),   a ~ LogUniform(shot_noise),   b = r^2, r ~ LogUniform(read_noise)
     then clipped to [0, 1]
  5. tone curve: sRGB encoding and an extra exponent, t ~ Uniform(gamma):   z = linear_to_srgb(y) ** t
  6. quantisation to 8 bits:   low = round(255 * z)
All parameters of every image are written to `manifest.json` beside the images.

Caching and atomicity: the folder `<cache_dir>/synthetic_lowlight/<layout>-<key>/` is named by a hash of the
generator version, the layout, every parameter and the bytes of the source photos. It is generated in a
hidden temporary sibling folder; `manifest.json` (with `"complete": true`) is written last, and the folder
is then renamed into place in one atomic `os.rename`. So a half-written cache is never at the final path;
an interrupted generation leaves only a `.<name>.tmp-*` folder, which is never read (and can be deleted).
A final folder without a complete manifest (edited by hand) is refused, naming the folder to delete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.files import write_atomic
from data import photos
from data.layouts import Layout

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLIT_IDS = {"train": 0, "test": 1}


class SyntheticCacheError(ValueError):
    """A folder at the synthetic cache's final path is not a complete cache."""


@dataclass(frozen=True)
class LowLightModel:
    """Parameters of the synthetic low-light camera model (module docstring, steps 0-6)."""

    seed: int = 0
    num_train: int = 240
    num_test: int = 15
    height: int = 400  # LOL's 600x400 (w x h)
    width: int = 600
    crop_scale: tuple[float, float] = (0.35, 1.0)  # area fraction of the source photo, uniform
    exposure: tuple[float, float] = (0.01, 0.06)  # linear-light gain k, log-uniform
    cast_sigma: float = 0.08  # std of the log channel gains
    shot_noise: tuple[float, float] = (1e-4, 1.5e-3)  # a in var = a*s + b (linear units), log-uniform
    read_noise: tuple[float, float] = (5e-4, 4e-3)  # r = sqrt(b), std of the read noise, log-uniform
    gamma: tuple[float, float] = (1.0, 1.4)  # extra tone-curve exponent t, uniform
    train_photos: tuple[str, ...] = photos.LOWLIGHT_TRAIN_PHOTOS
    test_photos: tuple[str, ...] = photos.LOWLIGHT_TEST_PHOTOS

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> LowLightModel:
        cfg = dict(cfg or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"data.synthetic: unknown key(s) {unknown}; known: {sorted(names)}")
        out = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in cfg.items()}
        model = cls(**out)
        model.validate()
        return model

    def validate(self) -> None:
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError(
                f"data.synthetic: num_train and num_test must be >= 1, got {self.num_train}, {self.num_test}"
            )
        if self.height < 8 or self.width < 8:
            raise ValueError(f"data.synthetic: height and width must be >= 8, got {self.height}x{self.width}")
        for name in ("crop_scale", "exposure", "shot_noise", "read_noise", "gamma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(
                    f"data.synthetic.{name} must be [low, high] with 0 < low <= high, got {[lo, hi]}"
                )
        if not 0 < self.crop_scale[1] <= 1:
            raise ValueError(f"data.synthetic.crop_scale must lie in (0, 1], got {list(self.crop_scale)}")
        if set(self.train_photos) & set(self.test_photos):
            raise ValueError("data.synthetic: train_photos and test_photos must not share a photo")
        for name in (*self.train_photos, *self.test_photos):
            photos.photo(name)

    def key(self, layout: Layout) -> str:
        body = json.dumps(
            {
                "version": GENERATOR_VERSION,
                "layout": layout.name,
                "model": dataclasses.asdict(self),
                "photos": photos.fingerprint(sorted({*self.train_photos, *self.test_photos})),
            },
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- the model
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 inverse transfer function, x in [0, 1]."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(y: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 transfer function, y in [0, 1]."""
    y = np.clip(y, 0.0, 1.0)
    return np.where(y <= 0.0031308, 12.92 * y, 1.055 * np.power(y, 1 / 2.4) - 0.055)


_SRGB_LUT = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def crop_high(
    rng: np.random.Generator, source: np.ndarray, height: int, width: int, crop_scale: tuple[float, float]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 0: a random crop of the target aspect ratio covering `crop_scale` of the photo, resized."""
    from PIL import Image

    sh, sw = source.shape[:2]
    aspect = width / height
    full_h = min(sh, sw / aspect)  # the largest crop of the target aspect ratio
    scale = float(np.sqrt(rng.uniform(*crop_scale)))  # side fraction from an area fraction
    ch = max(1, int(round(full_h * scale)))
    cw = max(1, min(sw, int(round(ch * aspect))))
    top = int(rng.integers(0, sh - ch + 1))
    left = int(rng.integers(0, sw - cw + 1))
    flip = bool(rng.random() < 0.5)
    crop = Image.fromarray(source[top : top + ch, left : left + cw]).resize((width, height), Image.BICUBIC)
    out = np.asarray(crop)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out), {"box_tlhw": [top, left, ch, cw], "hflip": flip}


def darken(rng: np.random.Generator, high: np.ndarray, m: LowLightModel) -> tuple[np.ndarray, dict[str, Any]]:
    """Steps 1-6 of the low-light model: (H, W, 3) uint8 high -> uint8 low and the drawn parameters."""
    x = _SRGB_LUT[high]  # 1 (srgb_to_linear of the 256 code values)
    k = _log_uniform(rng, m.exposure)  # 2
    gains = np.exp(rng.normal(0.0, m.cast_sigma, size=3))  # 3
    gains = gains / gains.mean()
    s = x * k * gains
    a = _log_uniform(rng, m.shot_noise)  # 4
    r = _log_uniform(rng, m.read_noise)
    y = np.clip(s + np.sqrt(a * s + r * r) * rng.standard_normal(s.shape), 0.0, 1.0)
    t = float(rng.uniform(*m.gamma))  # 5
    z = linear_to_srgb(y) ** t
    low = np.clip(np.round(z * 255.0), 0, 255).astype(np.uint8)  # 6
    params = {"exposure": k, "gains": gains.tolist(), "shot_a": a, "read_std": r, "gamma": t}
    return low, params


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], index]))


def generate_pair(
    m: LowLightModel, split: str, index: int, sources: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(low, high, params) of image `index` of `split`; depends only on (m, split, index)."""
    names = m.train_photos if split == "train" else m.test_photos
    name = names[index % len(names)]
    rng = image_rng(m.seed, split, index)
    high, crop = crop_high(rng, sources[name], m.height, m.width, m.crop_scale)
    low, params = darken(rng, high, m)
    return low, high, {"photo": name, **crop, **params}


# ------------------------------------------------------------------------------------------- the cache
def file_names(layout: Layout, index: int) -> tuple[str, str]:
    stem = f"{index + 1:05d}" if layout.low_prefix else str(index + 1)
    return f"{layout.low_prefix}{stem}{layout.extension}", f"{layout.high_prefix}{stem}{layout.extension}"


def _encode(array: np.ndarray, extension: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if extension in (".jpg", ".jpeg"):
        Image.fromarray(array).save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cache_folder(cache_dir: Path, layout: Layout, m: LowLightModel) -> Path:
    return Path(cache_dir) / "synthetic_lowlight" / f"{layout.name}-{m.key(layout)}"


def _check_complete(folder: Path, key: str) -> dict[str, Any]:
    man = read_manifest(folder)
    if not man or not man.get("complete") or man.get("key") != key:
        raise SyntheticCacheError(
            f"{folder} exists but is not a complete synthetic cache (manifest.json missing, incomplete or for "
            f"another key than {key}). It was not written by this code's atomic generator; delete the folder "
            "and it will be generated again."
        )
    return man


def ensure_synthetic_lowlight(cache_dir: str | Path, layout: Layout, m: LowLightModel) -> Path:
    """The root of the cached synthetic data set (generated now if absent); safe under concurrent callers."""
    if layout.name == "folder":
        raise ValueError(
            "data.source=synthetic needs a named layout (lol, lolv2_real, lolv2_synthetic, lsrw), not folder"
        )
    final = cache_folder(Path(cache_dir), layout, m)
    key = m.key(layout)
    if final.exists():
        _check_complete(final, key)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("Generating the synthetic %s-layout low-light set into %s (once; cached)", layout.name, final)
    start = time.perf_counter()
    try:
        manifest = _generate(tmp, layout, m, key)
        try:
            os.rename(tmp, final)  # atomic; fails if another process has put a folder there meanwhile
        except OSError:
            if final.exists():
                _check_complete(final, key)
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "Generated %d pairs in %.1f s",
        sum(len(v) for v in manifest["images"].values()),
        time.perf_counter() - start,
    )
    return final


def _generate(tmp: Path, layout: Layout, m: LowLightModel, key: str) -> dict[str, Any]:
    sources = {name: photos.load_photo(name) for name in (*m.train_photos, *m.test_photos)}
    images: dict[str, list[dict[str, Any]]] = {}
    for split, count in (("train", m.num_train), ("test", m.num_test)):
        pairs = layout.splits[split]
        images[split] = []
        for fp in pairs:
            (tmp / fp.low).mkdir(parents=True, exist_ok=True)
            (tmp / fp.high).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            fp = pairs[i % len(pairs)]  # LSRW: alternate Huawei / Nikon
            low, high, params = generate_pair(m, split, i, sources)
            low_name, high_name = file_names(layout, i)
            (tmp / fp.low / low_name).write_bytes(_encode(low, layout.extension))
            (tmp / fp.high / high_name).write_bytes(_encode(high, layout.extension))
            images[split].append({"low": f"{fp.low}/{low_name}", "high": f"{fp.high}/{high_name}", **params})
    manifest = {
        "complete": True,
        "key": key,
        "generator_version": GENERATOR_VERSION,
        "layout": layout.name,
        "model": dataclasses.asdict(m),
        "label": "synthetic low-light pairs (not comparable with published numbers)",
        "model_doc": (__doc__ or "").split("Caching and atomicity")[0].strip(),
        "images": images,
    }
    write_atomic(tmp / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
