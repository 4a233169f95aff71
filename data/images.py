"""Reading image files for the restoration DataModules: one policy for formats, modes and broken files.

Policy (stated once, applied everywhere):
- Formats: the extensions in `IMAGE_EXTENSIONS` (case-insensitive). Other files in an image folder are
  ignored, and `experiments.prepare` lists them.
- Modes: 8-bit RGB is read as is. Grey (`L`, `LA`, `I;16`, `I`, `F`), palette (`P`), `RGBA`, `CMYK`, other
  modes and 16-bit RGB are **converted to 8-bit RGB with a warning** naming each file and what was done to it
  (`conversion_note`: grey is replicated to three channels, 16-bit grey is scaled by 255/65535, 16-bit RGB
  keeps its high byte, alpha is dropped, not composited). `non_rgb="error"` refuses non-RGB modes instead.
- Broken files: a file PIL cannot identify, or whose pixel data is truncated, raises `ImageReadError`
  naming the file. Truncation is only visible when the pixels are decoded, so the DataModules check image
  *headers* (size, mode) in `setup()` and a full decode happens in `experiments.prepare` (and, lazily, when
  a sample is loaded).
"""

from __future__ import annotations

import io
import warnings
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
    bits: int = 8  # bits per sample in the file (16 for a 16-bit PNG or TIFF), from the decoder's raw mode

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def conversion(self) -> str | None:
        """What reading this image as 8-bit RGB does to it (`conversion_note`), None for 8-bit RGB."""
        return conversion_note(self.mode, self.bits)


# What `to_rgb_array` does to each mode (8-bit RGB: nothing). Modes not listed: Pillow's convert("RGB").
_CONVERSIONS = {
    "RGBA": "RGBA -> RGB (alpha dropped)",
    "RGBa": "RGBa -> RGB (premultiplied alpha dropped)",
    "RGBX": "RGBX -> RGB (padding channel dropped)",
    "L": "grey -> RGB (channel replicated)",
    "LA": "grey+alpha -> RGB (channel replicated, alpha dropped)",
    "La": "grey+alpha -> RGB (channel replicated, alpha dropped)",
    "1": "1-bit -> RGB (0/255, channel replicated)",
    "P": "palette -> RGB (colours looked up)",
    "PA": "palette+alpha -> RGB (colours looked up, alpha dropped)",
    "I;16": "16-bit grey -> 8-bit RGB (scaled by 255/65535, channel replicated)",
    "F": "32-bit float grey -> 8-bit RGB (x 255, clipped to 0..255, channel replicated)",
    "CMYK": "CMYK -> RGB (Pillow's conversion, no colour profile)",
}


def conversion_note(mode: str, bits: int = 8, scaled_from: float | None = None) -> str | None:
    """What reading an image of this mode (and bits per sample) as 8-bit RGB does to it, for messages such as
    `low/003.png: RGBA -> RGB (alpha dropped)`; None for 8-bit RGB. `scaled_from`: for 32-bit integer grey
    (`I`), the full scale found in the pixels (65535 or 255); None says it depends on them."""
    if mode.startswith("I;16"):
        return _CONVERSIONS["I;16"]
    if mode == "I":
        if scaled_from is None:
            how = "scaled by 255/65535 if a value exceeds 255, else kept"
        elif scaled_from == 255.0:
            how = "values 0..255 kept"
        else:
            how = f"scaled by 255/{scaled_from:.0f}"
        return f"32-bit integer grey -> 8-bit RGB ({how}, clipped, channel replicated)"
    if bits > 8 and mode in ("RGB", "RGBA"):
        alpha = ", alpha dropped" if mode == "RGBA" else ""
        return f"{bits}-bit {mode} -> 8-bit RGB (high byte kept: v // 256{alpha})"
    if mode == "RGB":
        return None
    return _CONVERSIONS.get(mode, f"{mode} -> RGB (Pillow's conversion)")


def name_list(items: list[str], limit: int = 10, sep: str = ", ") -> str:
    """The first `limit` items joined by `sep`, then `and N more`."""
    shown = sep.join(items[:limit])
    return shown + (f"{sep}and {len(items) - limit} more" if len(items) > limit else "")


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


def _bits_per_sample(img) -> int:
    """16 where the decoder's raw mode says 16-bit samples (`RGB;16B`, `I;16`), else 8 (32 for `I`, `F`)."""
    if img.mode in ("I", "F"):
        return 32
    if img.mode.startswith("I;16"):
        return 16
    try:
        args = img.tile[0][3] if img.tile else None
    except (IndexError, TypeError):
        return 8
    raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
    return 16 if isinstance(raw, str) and ";16" in raw else 8


def read_header(source: Path | bytes, where: str | None = None) -> ImageHeader:
    """Size, mode and bits per sample from the header only (fast; does not detect truncated pixel data)."""
    where = where or str(source)
    img = _open(source, where)
    with img:
        return ImageHeader(where, img.width, img.height, img.mode, _bits_per_sample(img))


def to_rgb_array(img, where: str) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) uint8 under the module's conversion policy (no warning here)."""
    return convert_to_rgb(img, where)[0]


def convert_to_rgb(img, where: str, bits: int | None = None) -> tuple[np.ndarray, str | None]:
    """A decoded PIL image -> ((H, W, 3) uint8, what was converted (`conversion_note`) or None for 8-bit RGB).
    `bits`: bits per sample of the file, if read before decoding (the decoder's raw mode is gone after it)."""
    mode = img.mode
    bits = _bits_per_sample(img) if bits is None else bits
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy(), conversion_note(mode, bits)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1), conversion_note(mode, bits, top)
    if mode == "F":
        grey = np.clip(np.round(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1), conversion_note(mode, bits)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), conversion_note(mode, bits)
    except (OSError, ValueError) as err:
        raise ImageReadError(f"{where}: cannot convert mode {mode} to RGB ({err})") from err


def read_rgb(source: Path | bytes, where: str | None = None, non_rgb: str = "convert") -> np.ndarray:
    """Decodes an image fully into (H, W, 3) uint8 RGB.

    Raises ImageReadError for unreadable/truncated files and NonRGBImageError for a non-RGB image when
    `non_rgb="error"`. With `"convert"` the conversion is silent here: callers warn once per data set
    (see `warn_converted`), or per file with `read_rgb_noted`.
    """
    return read_rgb_noted(source, where, non_rgb)[0]


def read_rgb_noted(
    source: Path | bytes, where: str | None = None, non_rgb: str = "convert"
) -> tuple[np.ndarray, str | None]:
    """`read_rgb` and what the conversion did (`conversion_note`, e.g. `RGBA -> RGB (alpha dropped)`), None
    for an 8-bit RGB file."""
    where = where or str(source)
    if non_rgb not in NON_RGB_POLICIES:
        raise ValueError(f"non_rgb={non_rgb!r} is not one of {NON_RGB_POLICIES}")
    img = _open(source, where)
    with img:
        bits = _bits_per_sample(img)  # before load(): decoding drops the raw mode
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
        return convert_to_rgb(img, where, bits)


def check_mode(header: ImageHeader, non_rgb: str) -> None:
    if header.mode != "RGB" and non_rgb == "error":
        raise NonRGBImageError(
            f"{header.path}: mode {header.mode} is not RGB (set non_rgb=convert to convert grey/RGBA/palette "
            "images to RGB with a warning)"
        )


def converted_lines(headers: list[ImageHeader]) -> list[str]:
    """`<file>: <what reading it as 8-bit RGB does>` for each header that is not 8-bit RGB."""
    return [f"{h.path}: {h.conversion}" for h in headers if h.conversion]


def warn_converted(headers: list[ImageHeader], what: str, limit: int = 10) -> None:
    """One warning for all images of a data set that are not 8-bit RGB, naming each (up to `limit`, then
    `and N more`) with what is done to it."""
    lines = converted_lines(headers)
    if not lines:
        return
    modes = sorted({h.mode for h in headers if h.conversion})
    warnings.warn(
        f"{what}: {len(lines)} image(s) are not 8-bit RGB (modes {modes}) and are converted to 8-bit RGB: "
        f"{name_list(lines, limit, '; ')}. Set non_rgb=error to refuse non-RGB modes.",
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
