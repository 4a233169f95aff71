"""Every option of the low-light DataModule (configs/data/lol.yaml), as one frozen record checked once.

`LowLightSettings.from_options(**options)` takes the config's keys (OmegaConf containers or plain values),
refuses unknown keys and values outside their choices with a `ConfigError` naming the key, and turns nested
containers into plain tuples and dicts.

Declared shape (`data.common.DataSpec`, shared by every DataModule of the suite): `image_shape` = [3, null, null]: RGB images of
variable size (evaluation items come at each image's full resolution); [3, H, W] is accepted only where
every item has that size, i.e. the training crop (or resize, without a crop) and `eval_resize` are both
(H, W). `num_classes` = null (the pairs are unlabelled), `domain` = `lowlight_rgb`, `value_range` = [0, 1]
or [-1, 1] (NeRCo).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.imageops import check_value_range
from data.common import DataSpec
from data.layouts import LAYOUTS, LSRW_GROUPS
from data.lowlight.pairing import DEFAULT_PREFIXES
from data.synthetic import LowLightModel
from data.transforms import PairTransform

SOURCES = ("synthetic", "local", "hf")
MODES = ("paired", "unpaired")
HIGH_FROM = ("train", "disjoint", "folder")
CHECKS = ("header", "none")
NON_RGB = ("convert", "error")
DOMAIN = "lowlight_rgb"
CHANNELS = 3  # every image is read as 8-bit RGB (data.images)


def plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"data.{key}={value!r} is not one of {choices}")


def known_keys(cls: type, values: dict[str, Any], key: str) -> dict[str, Any]:
    """`values` unchanged where every key is a field of the dataclass `cls`; else a ConfigError naming them."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; valid: {names}")
    return values


@dataclass(frozen=True)
class UnpairedSettings:
    """How trainA (low) and trainB (normal light) are chosen for `mode=unpaired`."""

    high_from: str = "train"  # train (all training high images) | disjoint (halves) | folder
    high_dir: str | None = None  # high_from=folder: any folder of normal-light images
    num_high: int | None = None  # a seeded random subset of trainB of this size
    seed: int = 0  # seeds the disjoint halves and the subset

    def __post_init__(self) -> None:
        choice("unpaired.high_from", self.high_from, HIGH_FROM)


@dataclass(frozen=True)
class LowLightSettings:
    """The keys of configs/data/lol.yaml (each explained there), checked and normalised."""

    dataset: str = "lol"
    source: str = "synthetic"
    path: str | None = None
    folders: dict[str, str | None] = field(default_factory=dict)
    subset: tuple[str, ...] = ()
    hf: dict[str, Any] = field(default_factory=dict)
    synthetic: LowLightModel = field(default_factory=LowLightModel)
    cache_dir: str = ".cache"
    mode: str = "paired"
    unpaired: UnpairedSettings = field(default_factory=UnpairedSettings)
    resize: Any = None
    crop: Any = None
    hflip: bool = False
    vflip: bool = False
    eval_resize: Any = None
    value_range: tuple[float, float] = (0.0, 1.0)
    image_shape: tuple[int, int | None, int | None] = (CHANNELS, None, None)
    num_classes: int | None = None
    domain: str = DOMAIN
    val_size: int = 0
    split_seed: int = 1234
    shuffle_seed: int = 0
    augment_seed: int | None = None  # null: shuffle_seed
    batch_size: int = 1
    eval_batch_size: int = 1
    num_workers: int = 0
    non_rgb: str = "convert"
    check: str = "header"
    name_prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    pin_memory: bool = False

    @classmethod
    def from_options(cls, **options: Any) -> LowLightSettings:
        """The settings of config keys (missing keys: the defaults above); unknown keys are refused."""
        o = {k: plain(v) for k, v in known_keys(cls, options, "data (the low-light DataModule)").items()}
        hf = {"path": None, "columns": None, "name_column": None, "revision": None, **(o.get("hf") or {})}
        o.update(
            folders=o.get("folders") or {},
            subset=tuple(o.get("subset") or ()),
            hf=hf,
            synthetic=LowLightModel.from_config(o.get("synthetic")),
            unpaired=UnpairedSettings(
                **known_keys(UnpairedSettings, o.get("unpaired") or {}, "data.unpaired")
            ),
            value_range=check_value_range(o.get("value_range", (0.0, 1.0))),
            image_shape=tuple(o.get("image_shape") or (CHANNELS, None, None)),
        )
        if o.get("name_prefixes") is not None:
            o["name_prefixes"] = tuple(o["name_prefixes"])
        else:
            o.pop("name_prefixes", None)
        return cls(**o)

    def __post_init__(self) -> None:
        choice("source", self.source, SOURCES)
        choice("mode", self.mode, MODES)
        choice("check", self.check, CHECKS)
        choice("non_rgb", self.non_rgb, NON_RGB)
        if self.dataset != "folder":
            choice("dataset", self.dataset, (*LAYOUTS, "folder"))
        elif self.source == "synthetic":
            raise ConfigError(
                "data.dataset=folder reads folders you name (data.folders); use data.source=local"
            )
        bad = [g for g in self.subset if g not in LSRW_GROUPS]
        if bad or (self.subset and self.dataset != "lsrw"):
            raise ConfigError(
                f"data.subset={list(self.subset)}: only for dataset=lsrw, groups from {LSRW_GROUPS}"
            )
        self.check_declared_shape()

    # ------------------------------------------------------------------ derived
    @property
    def train_transform(self) -> PairTransform:
        return PairTransform(
            resize=self.resize,
            crop=self.crop,
            hflip=self.hflip,
            vflip=self.vflip,
            independent=self.mode == "unpaired",
            value_range=self.value_range,
        )

    @property
    def eval_transform(self) -> PairTransform:
        return PairTransform(resize=self.eval_resize, value_range=self.value_range)

    @property
    def spec(self) -> DataSpec:
        return DataSpec.from_config(self.image_shape, self.num_classes, self.value_range, self.domain)

    @property
    def item_augment_seed(self) -> int:
        return self.shuffle_seed if self.augment_seed is None else self.augment_seed

    def check_declared_shape(self) -> None:
        """`image_shape`, `num_classes`, `domain` against what this module yields (module docstring)."""
        shape = self.spec.image_shape
        if len(shape) != 3 or shape[0] != CHANNELS or (shape[1] is None) != (shape[2] is None):
            raise ConfigError(
                f"data.image_shape={list(shape)}: the low-light images are RGB; expected [3, null, null] "
                "(any size) or [3, H, W]"
            )
        if shape[1] is not None:
            train = self.train_transform
            sizes = {
                "crop (or resize)": train.crop or train.resize,
                "eval_resize": self.eval_transform.resize,
            }
            wrong = {k: v for k, v in sizes.items() if v != (shape[1], shape[2])}
            if wrong:
                raise ConfigError(
                    f"data.image_shape={list(shape)} declares every item {shape[1]}x{shape[2]} (h x w), but "
                    f"data.{' and data.'.join(f'{k}={v}' for k, v in wrong.items())}; use [3, null, null] "
                    "for full-resolution evaluation items"
                )
        if self.num_classes is not None:
            raise ConfigError(f"data.num_classes={self.num_classes}: low-light pairs are unlabelled (null)")
        if self.domain != DOMAIN:
            raise ConfigError(f"data.domain={self.domain!r}: the low-light DataModule's domain is {DOMAIN}")
