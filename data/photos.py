"""Photos that ship inside installed wheels (scikit-image, scikit-learn, matplotlib), read from disk.

They are the clean images of the embedded defaults (synthetic low-light pairs, synthetic deblurring pairs).
Only files that are *inside the wheels* are used: `skimage.data`'s loader functions are never called,
because some of them fetch images over the network with pooch. A missing file fails with its package and
path rather than falling back to another image.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.images import read_rgb


@dataclass(frozen=True)
class Photo:
    name: str
    package: str
    relpath: str
    colour: bool  # a natural colour photo (else a grey one)

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"bundled photo {self.name!r} needs the `{self.package}` package")
        path = Path(next(iter(spec.submodule_search_locations))) / self.relpath
        if not path.is_file():
            raise FileNotFoundError(
                f"bundled photo {self.name!r} is missing from the {self.package} install: {path}"
            )
        return path


# Natural photos only (no charts, logos, synthetic phantoms or binary masks). The `split` of each low-light
# photo is fixed here, so the synthetic test images never share a source photo with the training images.
PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "data/astronaut.png", True),
    Photo("chelsea", "skimage", "data/chelsea.png", True),
    Photo("coffee", "skimage", "data/coffee.png", True),
    Photo("motorcycle_left", "skimage", "data/motorcycle_left.png", True),
    Photo("motorcycle_right", "skimage", "data/motorcycle_right.png", True),
    Photo("rocket", "skimage", "data/rocket.jpg", True),
    Photo("ihc", "skimage", "data/ihc.png", True),
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", True),
    Photo("china", "sklearn", "datasets/images/china.jpg", True),
    Photo("flower", "sklearn", "datasets/images/flower.jpg", True),
    Photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", True),
    Photo("camera", "skimage", "data/camera.png", False),
    Photo("moon", "skimage", "data/moon.png", False),
    Photo("coins", "skimage", "data/coins.png", False),
    Photo("brick", "skimage", "data/brick.png", False),
    Photo("grass", "skimage", "data/grass.png", False),
    Photo("gravel", "skimage", "data/gravel.png", False),
    Photo("clock_motion", "skimage", "data/clock_motion.png", False),
)
BY_NAME = {p.name: p for p in PHOTOS}

# Low-light synthetic split by source photo (motorcycle_left/right are one scene: same side).
LOWLIGHT_TRAIN_PHOTOS = (
    "astronaut",
    "chelsea",
    "motorcycle_left",
    "motorcycle_right",
    "rocket",
    "ihc",
    "flower",
    "hubble_deep_field",
)
LOWLIGHT_TEST_PHOTOS = ("coffee", "china", "grace_hopper")
# Deblurring default: natural photos (colour and grey) at least 256 px on each side.
DEBLUR_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "china", "grace_hopper", "moon", "rocket")


def photo(name: str) -> Photo:
    if name not in BY_NAME:
        raise KeyError(f"unknown bundled photo {name!r}; available: {sorted(BY_NAME)}")
    return BY_NAME[name]


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB (grey photos replicated to 3 channels)."""
    p = photo(name)
    return read_rgb(p.path(), non_rgb="convert")


def load_photo_grey(name: str) -> np.ndarray:
    """(H, W) uint8: the photo's luminance (ITU-R 601-2, PIL's "L" conversion) or the grey photo itself."""
    from PIL import Image

    with Image.open(photo(name).path()) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()


def fingerprint(names: tuple[str, ...] | list[str]) -> str:
    """sha256 over the named photo files: part of every cache key built from them."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(photo(name).path().read_bytes())
    return h.hexdigest()[:16]
