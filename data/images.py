"""Reading image files for the restoration DataModules: one policy for formats, modes and broken files.

Policy (stated once, applied everywhere):
- Formats: the extensions in `IMAGE_EXTENSIONS` (case-insensitive). Other files in an image folder are
  ignored, and `experiments.prepare` lists them.
- Modes: RGB is read as is. Grey (`L`, `LA`, `I;16`, `I`, `F`), palette (`P`), `RGBA`, `CMYK` and other modes
  are **converted to RGB with a warning** naming the files (grey is replicated to three channels, 16-bit
  grey is scaled to 8 bits, alpha is dropped, not composited). `non_rgb="error"` refuses them instead.
- Broken files: a file PIL cannot identify, or whose pixel data is truncated, raises `ImageReadError`
  naming the file. Truncation is only visible when the pixels are decoded, so the DataModules check image
  *headers* (size, mode) in `setup()` and a full decode happens in `experiments.prepare` (and, lazily, when
  a sample is loaded).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NON_RGB_POLICIES = ("convert", "error")


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (not an image, truncated, unsupported)."""


class NonRGBImageError(ValueError):
    """An image is not RGB and the policy is `non_rgb="error"`."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding the pixels."""

    path: str
    width: int
    height: int
    mode: str

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height, self.width


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) directly inside `folder`, sorted by name. Hidden files are skipped."""
    images, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if is_image_file(p):
            images.append(p)
        elif p.is_file():
            others.append(p)
    return images, others


def _open(source: Path | bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{where}: not a readable image ({type(err).__name__}: {err})") from err


def read_header(source: Path | bytes, where: str | None = None) -> ImageHeader:
    """Size and mode from the header only (fast; does not detect truncated pixel data)."""
    where = where or str(source)
    img = _open(source, where)
    with img:
        return ImageHeader(where, img.width, img.height, img.mode)


def to_rgb_array(img, where: str) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 under the module's conversion policy (no warning here)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        grey = np.clip(np.round(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as err:
        raise ImageReadError(f"{where}: cannot convert mode {mode} to RGB ({err})") from err


def read_rgb(source: Path | bytes, where: str | None = None, non_rgb: str = "convert") -> np.ndarray:
    """Decodes an image fully into (H, W, 3) uint8 RGB.

    Raises ImageReadError for unreadable/truncated files and NonRGBImageError for a non-RGB image when
    `non_rgb="error"`. With `"convert"` the conversion is silent here: callers warn once per data set
    (see `warn_converted`), not once per file.
    """
    where = where or str(source)
    if non_rgb not in NON_RGB_POLICIES:
        raise ValueError(f"non_rgb={non_rgb!r} is not one of {NON_RGB_POLICIES}")
    img = _open(source, where)
    with img:
        try:
            img.load()  # decodes the pixels: a truncated file fails here (PIL's LOAD_TRUNCATED_IMAGES is False)
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(
                f"{where}: the image data cannot be decoded, the file is probably truncated or corrupt "
                f"({type(err).__name__}: {err})"
            ) from err
        if img.mode != "RGB" and non_rgb == "error":
            raise NonRGBImageError(
                f"{where}: mode {img.mode} is not RGB (set non_rgb=convert to convert grey/RGBA/palette "
                "images to RGB with a warning)"
            )
        return to_rgb_array(img, where)


def check_mode(header: ImageHeader, non_rgb: str) -> None:
    if header.mode != "RGB" and non_rgb == "error":
        raise NonRGBImageError(
            f"{header.path}: mode {header.mode} is not RGB (set non_rgb=convert to convert grey/RGBA/palette "
            "images to RGB with a warning)"
        )


def warn_converted(headers: list[ImageHeader], what: str) -> None:
    """One warning for all non-RGB images of a data set (names the first few)."""
    bad = [h for h in headers if h.mode != "RGB"]
    if not bad:
        return
    modes = sorted({h.mode for h in bad})
    names = ", ".join(f"{h.path} ({h.mode})" for h in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(
        f"{what}: {len(bad)} image(s) are not RGB (modes {modes}) and are converted to RGB "
        f"(grey replicated, alpha dropped): {names}{more}. Set non_rgb=error to refuse them.",
        UserWarning,
        stacklevel=3,
    )


def write_png(path: Path | BinaryIO, array: np.ndarray) -> None:
    """Writes (H, W, 3) or (H, W) uint8 as PNG (deterministic bytes for the same pixels and Pillow)."""
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", optimize=False)


def write_image(path: Path, array: np.ndarray, jpeg_quality: int = 95) -> None:
    from PIL import Image

    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, format="JPEG", quality=jpeg_quality, subsampling=0)
    else:
        write_png(path, array)


def write_atomic(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Writes `path` through a hidden temporary file beside it, then `os.replace`s it onto `path`: readers see
    the old file or the new one, never half of one, and a failure (Ctrl-C included) leaves the old file and no
    temporary. `content` is the bytes, or a function that writes into the open binary file (a checkpoint's
    `torch.save`, an image encoder), so large outputs stream to disk. The suite's one atomic writer: run
    directory JSON, results, PNGs, checkpoints, synthetic data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
