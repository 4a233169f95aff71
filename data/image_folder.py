"""A folder of the user's own images to run a model on (`python -m experiments.enhance`): the folder checks,
the plan (one output name per input, unreadable or too small files skipped with a reason), and the memory
plan (each image's estimated working memory against a limit, and a tile size where the whole image does
not fit).

Inputs are only ever read: the output folder may not be the input folder or lie inside it, and outputs
that already exist are refused unless `overwrite`. Every refusal is an `ImageFolderError` (or a
`ConfigError` for a bad setting) raised before anything is written. Output names are `<stem>.png`, or
`<stem>_<ext>.png` where two inputs share a stem, each written to a temporary file and renamed onto it.

Memory limits (`memory_limit_mb`): `auto` = 80 % of the memory free now, on CUDA the device's free memory,
on the CPU the tightest of the kernel's MemAvailable, the cgroup's limit less its usage (v2
`memory.max`/`memory.current`, v1 `memory.limit_in_bytes`/`memory.usage_in_bytes`, at the process's own
cgroup path) and RLIMIT_AS, so a container or a SLURM job with a memory limit is held to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import ConfigError, InputError
from core.files import write_atomic
from core.tiling import tile_starts
from data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    is_image_file,
    read_header,
    read_rgb_noted,
    write_png,
)

log = logging.getLogger("experiments")  # the commands' logger: these lines belong to the command's log
MIN_TILE = 64  # smallest tile the automatic tile size goes down to
QUANTIZE = ("truncate", "round")  # float [0, 1] -> uint8 of the outputs (`to_uint8`)
Estimate = Callable[[int, int], float]  # (height, width) -> MB


class ImageFolderError(InputError):
    """A folder of images that cannot be processed as asked; the message says what to change."""


@dataclass
class Item:
    """One file of the input folder and what happens to it."""

    name: str
    path: Path
    output: Path | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    converted: str | None = None  # what reading it as 8-bit RGB did (None: it was 8-bit RGB)
    estimate_mb: float | None = None
    tile: int | None = None
    tiles: int = 1
    seconds: float | None = None
    skipped: str | None = None  # why it was skipped

    def record(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["path"], out["output"] = str(self.path), str(self.output) if self.output else None
        return out


@dataclass
class Plan:
    input_dir: Path
    output_dir: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)

    def skip(self, item: Item, reason: str) -> None:
        item.skipped = reason
        log.warning("Skipping %s", reason)
        if item in self.items:
            self.items.remove(item)
        self.skipped.append(item)

    def none_left(self, n_files: int) -> ImageFolderError:
        return ImageFolderError(
            f"none of the {n_files} image file(s) in input_dir={self.input_dir} can be enhanced:\n  "
            + "\n  ".join(i.skipped or i.name for i in self.skipped)
        )


# ------------------------------------------------------------------------------------------ the folders
def check_folders(input_dir: Any, output_dir: Any, usage: str) -> tuple[Path, Path]:
    """Resolved (input, output) folders; refuses a missing input folder and an output inside the input."""
    if not input_dir:
        raise ImageFolderError(f"input_dir is required\n{usage}")
    if not output_dir:
        raise ImageFolderError(f"output_dir is required\n{usage}")
    inp = Path(str(input_dir)).expanduser()
    if not inp.exists():
        raise ImageFolderError(f"input_dir={inp} does not exist")
    if not inp.is_dir():
        raise ImageFolderError(f"input_dir={inp} is not a folder")
    inp = inp.resolve()
    out = Path(str(output_dir)).expanduser().resolve()
    if out == inp or inp in out.parents:
        raise ImageFolderError(
            f"output_dir={out} is {'the input folder' if out == inp else 'inside input_dir=' + str(inp)}: "
            "outputs must go to a folder outside the inputs, so no input can be overwritten"
        )
    if out.exists() and not out.is_dir():
        raise ImageFolderError(f"output_dir={out} exists and is not a folder")
    return inp, out


def list_inputs(inp: Path) -> list[Path]:
    """The image files directly inside `inp` (subfolders are not searched)."""
    files = sorted(p for p in inp.iterdir() if not p.name.startswith("."))
    images = [p for p in files if is_image_file(p)]
    if not images:
        others = [p.name for p in files]
        raise ImageFolderError(
            f"input_dir={inp} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}; subfolders are not "
            f"searched)"
            + (f"; it holds: {', '.join(others[:10])}{' ...' if len(others) > 10 else ''}" if others else "")
        )
    return images


def plan_images(inp: Path, out: Path, overwrite: bool, min_side: int = 1) -> Plan:
    """Lists the input images, reads their headers (skipping unreadable ones, and those with a side under
    `min_side`, with a warning) and names each output; refuses outputs that exist unless `overwrite`."""
    plan = Plan(inp, out)
    images = list_inputs(inp)
    stems: dict[str, int] = {}
    for p in images:
        stems[p.stem.lower()] = stems.get(p.stem.lower(), 0) + 1
    for p in images:
        unique = stems[p.stem.lower()] == 1
        item = Item(
            p.name, p, out / (f"{p.stem}.png" if unique else f"{p.stem}_{p.suffix.lstrip('.').lower()}.png")
        )
        plan.items.append(item)
        try:
            header = read_header(p, p.name)
        except ImageReadError as err:
            plan.skip(item, str(err))
            continue
        item.width, item.height, item.mode = header.width, header.height, header.mode
    skip_smaller_than(plan, min_side, len(images))
    existing = [i.output.name for i in plan.items if i.output is not None and i.output.exists()]
    if existing and not overwrite:
        raise ImageFolderError(
            f"output_dir={out} already holds {len(existing)} of the outputs ({', '.join(existing[:8])}"
            f"{' ...' if len(existing) > 8 else ''}); choose another output_dir or pass overwrite=true"
        )
    return plan


def skip_smaller_than(plan: Plan, min_side: int, n_files: int | None = None) -> None:
    """Skips the images with a side under `min_side` (what the model needs); refuses a plan left empty."""
    for item in list(plan.items):
        if min(item.width, item.height) < min_side:
            plan.skip(
                item,
                f"{item.name}: {item.width}x{item.height} is too small (the network needs at least "
                f"{min_side}x{min_side} pixels)",
            )
    if not plan.items:
        raise plan.none_left(n_files if n_files is not None else len(plan.skipped))


def read_input(item: Item) -> np.ndarray:
    """The item's image as (H, W, 3) uint8; a conversion to 8-bit RGB is recorded and logged (one line)."""
    image, item.converted = read_rgb_noted(item.path, item.name, non_rgb="convert")
    if item.converted:
        log.warning("%s: %s", item.name, item.converted)
    return image


def to_uint8(image01: torch.Tensor, quantize: str) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8: `truncate` (released `tensor2im`: x * 255 cast) or `round`."""
    arr = image01[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0
    return (np.round(arr) if quantize == "round" else arr).astype(np.uint8)


def write_output(item: Item, image01: torch.Tensor, quantize: str) -> None:
    """The item's output PNG (the output folder is created with the first one), never half a file."""
    array = to_uint8(image01, quantize)
    item.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(item.output, lambda f: write_png(f, array))


# ------------------------------------------------------------------------------------------ memory
def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _cgroup_limits_mb(proc: Path, cgroup: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        entries = [line.split(":", 2) for line in (proc / "self" / "cgroup").read_text().splitlines()]
    except OSError:
        entries = []
    for _, controllers, rel in (e for e in entries if len(e) == 3):
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2 (unified)
            for base in (cgroup / rel, cgroup / "unified" / rel):
                limit, used = _read_int(base / "memory.max"), _read_int(base / "memory.current")
                if limit is not None:
                    out["cgroup v2 memory.max"] = (limit - (used or 0)) / 2**20
                    break
        elif "memory" in controllers.split(","):
            base = cgroup / "memory" / rel
            limit, used = _read_int(base / "memory.limit_in_bytes"), _read_int(base / "memory.usage_in_bytes")
            if limit is not None and limit < 2**60:  # v1 writes a huge number for no limit
                out["cgroup v1 memory.limit_in_bytes"] = (limit - (used or 0)) / 2**20
    return out


def cpu_memory_limits_mb(
    proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")
) -> dict[str, float]:
    """What bounds this process's memory, by source (MB): MemAvailable, the cgroup limit less its usage, and
    RLIMIT_AS (module docstring)."""
    out: dict[str, float] = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out["MemAvailable"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    out.update(_cgroup_limits_mb(proc, cgroup))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            out["RLIMIT_AS"] = soft / 2**20
    except (ImportError, OSError, ValueError):
        pass
    return out


def available_memory_mb(device: torch.device) -> float:
    """Free memory of the device: CUDA's free memory, or on the CPU the tightest of `cpu_memory_limits_mb`."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    limits = cpu_memory_limits_mb()
    if not limits:
        return float("inf")
    source = min(limits, key=limits.get)
    log.info("memory_limit_mb=auto: %.0f MB free by %s", limits[source], source)
    return max(limits[source], 0.0)


def memory_limit_mb(setting: Any, device: torch.device) -> float | None:
    """`auto` = 80 % of the memory free now; a number = that many MB; null = no check."""
    if setting is None:
        return None
    if str(setting).lower() == "auto":
        return 0.8 * available_memory_mb(device)
    try:
        value = float(setting)
    except (TypeError, ValueError):
        value = -1.0
    if value <= 0:
        raise ConfigError(f"memory_limit_mb={setting!r}: expected auto, null or a positive number of MB")
    return value


def largest_tile(estimate: Estimate, limit: float, longest_side: int) -> int | None:
    """The largest square tile (MIN_TILE + a multiple of 32) whose estimate fits the limit."""
    best = None
    size = MIN_TILE
    while size <= max(MIN_TILE, longest_side):
        if estimate(size, size) > limit:
            break
        best = size
        size += 32
    return best


def tile_item(item: Item, estimate: Estimate, limit: float, tile: int | None, overlap: int) -> None:
    """Sets the tile size of an image over the limit (`tile`, else the largest that fits) and its count."""
    tile = tile or largest_tile(estimate, limit, max(item.height, item.width)) or MIN_TILE
    if estimate(tile, tile) > limit:
        raise ImageFolderError(
            f"{item.name}: even a {tile}x{tile} tile needs ~{estimate(tile, tile):.0f} MB, more than "
            f"memory_limit_mb={limit:.0f}"
        )
    if tile <= overlap:
        raise ConfigError(f"tiling.tile={tile} must be larger than tiling.overlap={overlap}")
    item.tile = int(tile)
    item.tiles = len(tile_starts(item.height, item.tile, overlap)) * len(
        tile_starts(item.width, item.tile, overlap)
    )


def plan_memory(plan: Plan, estimate: Estimate | None, limit: float | None, tiling: Any) -> None:
    """Sets each item's estimate and, where the whole image exceeds the limit, its tile size; refuses
    (before anything is written) images that do not fit when tiling is off, or not even as tiles."""
    if limit is None or estimate is None:
        if limit is not None:
            log.warning("the model has no memory estimate: memory_limit_mb is not checked")
        return
    too_large = []
    for item in plan.items:
        item.estimate_mb = round(float(estimate(item.height, item.width)), 1)
        if item.estimate_mb <= limit:
            continue
        if not tiling.get("enabled", False):
            too_large.append(item)
            continue
        tile_item(item, estimate, limit, tiling.get("tile"), int(tiling.get("overlap", 32)))
    if too_large:
        listed = ", ".join(f"{i.name} ({i.width}x{i.height}, ~{i.estimate_mb:.0f} MB)" for i in too_large[:8])
        raise ImageFolderError(
            f"{len(too_large)} image(s) need more memory than memory_limit_mb={limit:.0f}: {listed}"
            f"{' ...' if len(too_large) > 8 else ''}. Pass tiling.enabled=true to process them in overlapping tiles "
            "(approximate: NeRCo's instance norms then see each tile alone), or raise memory_limit_mb"
        )
