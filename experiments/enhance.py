"""`python -m experiments.enhance input_dir=<dir> output_dir=<dir> (ckpt_path=<file> | model.official_ckpt_dir=<dir>)`

Enhances every image directly inside `input_dir` (the extensions of `data.images.IMAGE_EXTENSIONS`, any size;
subfolders are not searched) with a restoration model, and writes `<output_dir>/<stem>.png` (RGB, 8 bits) at
the input's size. Weights: `ckpt_path=` a checkpoint written by `experiments.train` (the model is rebuilt from
the config stored in it), or `model.official_ckpt_dir=` a folder with the released NeRCo files.

Inputs are only ever read. Refused before anything is written to `output_dir` (exit status 2, a message):
a missing or empty `input_dir`, an `output_dir` equal to or inside `input_dir`, outputs that already exist
(`overwrite=true` replaces them), missing or mismatched weights, and images whose estimated working memory
exceeds `memory_limit_mb` while `tiling.enabled=false`. Files that cannot be read (not an image, truncated) or
are too small for the network are skipped with a warning naming each, and listed again at the end.
Images that are not 8-bit RGB are converted, each with a warning saying how (`data.images.conversion_note`:
`grey.png: grey -> RGB (channel replicated)`, `alpha.png: RGBA -> RGB (alpha dropped)`, `deep.png: 16-bit grey
-> 8-bit RGB (scaled by 255/65535, channel replicated)`), recorded per image in enhance.json (`converted`) and
listed in run_info.json.

Memory: the NRN's MLP always runs in bands (`model.nrn_chunk_pixels`); an image whose estimate
(`model.inference_memory_mb`) exceeds the limit is processed in overlapping tiles when `tiling.enabled=true`
(`lit_modules.tiling`; an approximation for NeRCo, whose instance norms see each tile alone).

The run directory (`hydra.run.dir`, default logs/enhance/...) gets run_info.json (status, what was written
and skipped) and enhance.json (one record per image).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import MissingFileError, UserError
from data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    is_image_file,
    read_header,
    read_rgb_noted,
    write_atomic,
    write_png,
)
from experiments.checkpoints import CheckpointMismatchError, load_checkpoint, model_class_path
from experiments.cli import entry_point
from experiments.common import Run, log
from experiments.run_dir import write_json_atomic
from lit_modules.imageops import from_unit_range, to_unit_range
from lit_modules.nerco import INFERENCE_RESIZE, MIN_SIDE, OfficialCheckpointError
from lit_modules.tiling import run_tiled, tile_starts

MIN_TILE = 64  # smallest tile the automatic tile size goes down to
QUANTIZE = ("truncate", "round")


class EnhanceError(UserError, ValueError):
    """Bad input to `enhance`: the message says what to change; nothing has been written (exit status 2)."""


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


# ------------------------------------------------------------------------------------------ checks
def check_folders(input_dir: Any, output_dir: Any) -> tuple[Path, Path]:
    """Resolved (input, output) folders; refuses a missing input folder and an output inside the input."""
    usage = (
        "usage: python -m experiments.enhance input_dir=<folder of images> output_dir=<new folder> "
        "(ckpt_path=<checkpoint> | model.official_ckpt_dir=<folder>)"
    )
    if not input_dir:
        raise EnhanceError(f"input_dir is required\n{usage}")
    if not output_dir:
        raise EnhanceError(f"output_dir is required\n{usage}")
    inp = Path(str(input_dir)).expanduser()
    if not inp.exists():
        raise EnhanceError(f"input_dir={inp} does not exist")
    if not inp.is_dir():
        raise EnhanceError(f"input_dir={inp} is not a folder")
    inp = inp.resolve()
    out = Path(str(output_dir)).expanduser().resolve()
    if out == inp or inp in out.parents:
        raise EnhanceError(
            f"output_dir={out} is {'the input folder' if out == inp else 'inside input_dir=' + str(inp)}: "
            "outputs must go to a folder outside the inputs, so no input can be overwritten"
        )
    if out.exists() and not out.is_dir():
        raise EnhanceError(f"output_dir={out} exists and is not a folder")
    return inp, out


def plan_images(inp: Path, out: Path, overwrite: bool, min_side: int) -> Plan:
    """Lists the input images, reads their headers (skipping unreadable or too small ones with a warning)
    and names each output `<stem>.png` (`<stem>_<ext>.png` where two inputs share a stem)."""
    plan = Plan(inp, out)
    files = sorted(p for p in inp.iterdir() if not p.name.startswith("."))
    images = [p for p in files if is_image_file(p)]
    if not images:
        others = [p.name for p in files]
        raise EnhanceError(
            f"input_dir={inp} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}; subfolders are not "
            f"searched)"
            + (f"; it holds: {', '.join(others[:10])}{' ...' if len(others) > 10 else ''}" if others else "")
        )
    stems: dict[str, int] = {}
    for p in images:
        stems[p.stem.lower()] = stems.get(p.stem.lower(), 0) + 1
    for p in images:
        item = Item(p.name, p)
        unique = stems[p.stem.lower()] == 1
        item.output = out / (f"{p.stem}.png" if unique else f"{p.stem}_{p.suffix.lstrip('.').lower()}.png")
        try:
            header = read_header(p, p.name)
        except ImageReadError as err:
            item.skipped = str(err)
        else:
            item.width, item.height, item.mode = header.width, header.height, header.mode
            if min(header.width, header.height) < min_side:
                item.skipped = (
                    f"{p.name}: {header.width}x{header.height} is too small (the network needs at least "
                    f"{min_side}x{min_side} pixels)"
                )
        (plan.skipped if item.skipped else plan.items).append(item)
    for item in plan.skipped:
        log.warning("Skipping %s", item.skipped)
    if not plan.items:
        raise EnhanceError(
            f"none of the {len(images)} image file(s) in input_dir={inp} can be enhanced:\n  "
            + "\n  ".join(i.skipped or i.name for i in plan.skipped)
        )
    existing = [i.output.name for i in plan.items if i.output is not None and i.output.exists()]
    if existing and not overwrite:
        raise EnhanceError(
            f"output_dir={out} already holds {len(existing)} of the outputs ({', '.join(existing[:8])}"
            f"{' ...' if len(existing) > 8 else ''}); choose another output_dir or pass overwrite=true"
        )
    return plan


# ------------------------------------------------------------------------------------------ model
def instantiate_model(model_cfg: DictConfig) -> Any:
    """hydra.utils.instantiate, with the released-checkpoint loader's own error (missing files, keys, shapes)
    raised as is rather than wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(model_cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, OfficialCheckpointError):
            raise err.__cause__ from None
        raise


def load_model(cfg: DictConfig) -> tuple[torch.nn.Module, str]:
    """The model and a description of its weights: a training checkpoint (model rebuilt from the config
    stored in it) or the released NeRCo files (`model.official_ckpt_dir`)."""
    ckpt = cfg.get("ckpt_path")
    official = cfg.model.get("official_ckpt_dir") if "model" in cfg else None
    if ckpt and official:
        raise EnhanceError("give either ckpt_path=<checkpoint> or model.official_ckpt_dir=<folder>, not both")
    if not ckpt and not official:
        raise EnhanceError(
            "enhance needs weights: ckpt_path=<a checkpoint written by experiments.train> or "
            "model.official_ckpt_dir=<a folder with latest_net_G_A.pth, latest_net_Pre.pth, latest_net_H.pth>"
        )
    if official:
        log.info("Instantiating model <%s> with the released weights in %s", cfg.model._target_, official)
        return instantiate_model(cfg.model), f"released checkpoints in {official}"
    checkpoint = load_checkpoint(ckpt)
    suite = checkpoint.get("suite") or {}
    model_cfg = OmegaConf.create(suite["model_config"]) if suite.get("model_config") else cfg.model
    if "official_ckpt_dir" in model_cfg:
        model_cfg.official_ckpt_dir = None  # the checkpoint holds every weight
    log.info("Instantiating model <%s> from %s", model_cfg._target_, ckpt)
    model = instantiate_model(model_cfg)
    written_by = suite.get("model_class")
    if written_by and written_by != model_class_path(model):
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt} was written by {written_by}, not {model_class_path(model)}"
        )
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt} does not fit {model_class_path(model)}: {err}"
        ) from err
    return model, f"checkpoint {ckpt} (experiment {suite.get('experiment')!r})"


def apply_inference_options(model: Any, cfg: DictConfig) -> None:
    """`nrn_chunk_pixels` / `inference_resize` given to enhance replace the model's (also for a model rebuilt
    from a checkpoint, whose stored config ignores `model.*` overrides)."""
    for key in ("nrn_chunk_pixels", "inference_resize"):
        value = cfg.get(key)
        if value is None:
            continue
        hparams = getattr(model, "hparams", None)
        if hparams is None or key not in hparams:
            raise EnhanceError(f"{key}={value}: {type(model).__name__} has no such setting")
        if key == "inference_resize":
            if value not in INFERENCE_RESIZE:
                raise EnhanceError(f"inference_resize={value!r} is not one of {sorted(INFERENCE_RESIZE)}")
        elif int(value) < 1:
            raise EnhanceError(f"nrn_chunk_pixels={value}: expected a positive number of pixels")
        hparams[key] = value


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnhanceError(f"device={setting}: CUDA is not available here (device=auto or device=cpu)")
    return device


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def cpu_memory_limits_mb(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> dict[str, float]:
    """What bounds this process's memory, by source (MB): the kernel's MemAvailable, the cgroup's limit less
    its usage (v2 `memory.max`/`memory.current`, v1 `memory.limit_in_bytes`/`memory.usage_in_bytes`, at the
    process's own cgroup path), and RLIMIT_AS. A container or a SLURM job with a memory limit is then held to
    it, not to the machine's free memory."""
    out: dict[str, float] = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out["MemAvailable"] = int(line.split()[1]) / 1024
    except OSError:
        pass
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
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            out["RLIMIT_AS"] = soft / 2**20
    except (ImportError, OSError, ValueError):
        pass
    return out


def available_memory_mb(device: torch.device) -> float:
    """Free memory of the device: CUDA's free memory, or on the CPU the tightest of MemAvailable, the
    cgroup limit and RLIMIT_AS (`cpu_memory_limits_mb`)."""
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
        raise EnhanceError(f"memory_limit_mb={setting!r}: expected auto, null or a positive number of MB")
    return value


def plan_memory(model: Any, plan: Plan, limit: float | None, tiling: DictConfig) -> None:
    """Sets each item's estimate and, where the whole image exceeds the limit, its tile size; refuses
    (before anything is written) images that do not fit when tiling is off, or not even as tiles."""
    estimate = getattr(model, "inference_memory_mb", None)
    if limit is None or estimate is None:
        if limit is not None:
            log.warning("%s has no memory estimate: memory_limit_mb is not checked", type(model).__name__)
        return
    overlap = int(tiling.get("overlap", 32))
    too_large = []
    for item in plan.items:
        item.estimate_mb = round(float(estimate(item.height, item.width)), 1)
        if item.estimate_mb <= limit:
            continue
        if not tiling.get("enabled", False):
            too_large.append(item)
            continue
        tile = tiling.get("tile") or largest_tile(estimate, limit, max(item.height, item.width)) or MIN_TILE
        if estimate(tile, tile) > limit:
            raise EnhanceError(
                f"{item.name}: even a {tile}x{tile} tile needs ~{estimate(tile, tile):.0f} MB, more than "
                f"memory_limit_mb={limit:.0f}"
            )
        if tile <= overlap:
            raise EnhanceError(f"tiling.tile={tile} must be larger than tiling.overlap={overlap}")
        item.tile = int(tile)
        item.tiles = len(tile_starts(item.height, item.tile, overlap)) * len(
            tile_starts(item.width, item.tile, overlap)
        )
    if too_large:
        listed = ", ".join(f"{i.name} ({i.width}x{i.height}, ~{i.estimate_mb:.0f} MB)" for i in too_large[:8])
        raise EnhanceError(
            f"{len(too_large)} image(s) need more memory than memory_limit_mb={limit:.0f}: {listed}"
            f"{' ...' if len(too_large) > 8 else ''}. Pass tiling.enabled=true to process them in overlapping tiles "
            "(approximate: NeRCo's instance norms then see each tile alone), or raise memory_limit_mb"
        )


def largest_tile(estimate: Any, limit: float, longest_side: int) -> int | None:
    """The largest square tile (a multiple of 4, at least MIN_TILE) whose estimate fits the limit."""
    best = None
    size = MIN_TILE
    while size <= max(MIN_TILE, longest_side):
        if estimate(size, size) > limit:
            break
        best = size
        size += 32
    return best


# ------------------------------------------------------------------------------------------ processing
def to_uint8(image01: torch.Tensor, quantize: str) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8: `truncate` (released `tensor2im`: x * 255 cast) or `round`."""
    arr = image01[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0
    return (np.round(arr) if quantize == "round" else arr).astype(np.uint8)


def write_png_atomic(path: Path, array: np.ndarray) -> None:
    """PNG written to a hidden temporary file beside `path`, then renamed onto it (never half a file)."""
    write_atomic(path, lambda f: write_png(f, array))


def enhance_one(model: Any, item: Item, device: torch.device, overlap: int, quantize: str, bar: Any) -> None:
    image, item.converted = read_rgb_noted(item.path, item.name, non_rgb="convert")
    if item.converted:  # one line per file: what was done to it
        log.warning("%s: %s", item.name, item.converted)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)
    vr = tuple(getattr(model, "value_range", (0.0, 1.0)))
    x = from_unit_range(x, vr).to(device)
    with torch.inference_mode():
        if item.tile:
            y = run_tiled(
                model.enhance,
                x,
                item.tile,
                overlap,
                progress=lambda d, n: bar.set_postfix_str(f"{item.name} tile {d}/{n}"),
            )
        else:
            y = model.enhance(x)
    item.output.parent.mkdir(parents=True, exist_ok=True)  # created with the first output only
    if y.shape[-2:] != x.shape[-2:]:
        raise RuntimeError(
            f"{item.name}: the model returned {tuple(y.shape[-2:])} for an input of {tuple(x.shape[-2:])}"
        )
    write_png_atomic(item.output, to_uint8(to_unit_range(y, vr), quantize))


def enhance(cfg: DictConfig) -> dict[str, Any]:
    """Checks the inputs, loads the model, enhances each image; returns the summary written to the run dir."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # every refusal before the run directory is written
    if cfg.quantize not in QUANTIZE:
        raise EnhanceError(f"quantize={cfg.quantize!r} is not one of {QUANTIZE}")
    inp, out = check_folders(cfg.get("input_dir"), cfg.get("output_dir"))
    plan = plan_images(inp, out, bool(cfg.overwrite), MIN_SIDE)
    model, weights = load_model(cfg)
    if not callable(getattr(model, "enhance", None)):
        raise EnhanceError(f"{type(model).__name__} has no enhance(); enhance needs a restoration model (NeRCo)")
    apply_inference_options(model, cfg)
    device = pick_device(str(cfg.device))
    limit = memory_limit_mb(cfg.memory_limit_mb, device)
    plan_memory(model, plan, limit, cfg.tiling)
    run = Run(cfg, "enhance")
    try:
        model.to(device).eval()
        overlap = int(cfg.tiling.overlap)
        written: list[Item] = []
        with (
            logging_redirect_tqdm(),
            tqdm(plan.items, desc="enhance", unit="image", dynamic_ncols=True) as bar,
        ):
            for item in bar:
                bar.set_postfix_str(item.name)
                t0 = time.perf_counter()
                try:
                    enhance_one(model, item, device, overlap, str(cfg.quantize), bar)
                except ImageReadError as err:  # a truncated file is only found when decoded
                    item.skipped = str(err)
                    log.warning("Skipping %s", item.skipped)
                    plan.skipped.append(item)
                    continue
                item.seconds = round(time.perf_counter() - t0, 3)
                written.append(item)
        if not written:
            raise EnhanceError(
                f"none of the {len(plan.skipped)} image file(s) in input_dir={inp} can be enhanced:\n  "
                + "\n  ".join(i.skipped or i.name for i in plan.skipped)
            )
        summary = {
            "input_dir": str(inp),
            "output_dir": str(out),
            "weights": weights,
            "model_class": model_class_path(model),
            "device": str(device),
            "nrn_chunk_pixels": getattr(model, "hparams", {}).get("nrn_chunk_pixels"),
            "inference_resize": getattr(model, "hparams", {}).get("inference_resize"),
            "memory_limit_mb": None if limit is None else round(limit),
            "written": [i.record() for i in written],
            "skipped": [{"path": str(i.path), "reason": i.skipped} for i in plan.skipped],
            "converted": [f"{i.name}: {i.converted}" for i in written if i.converted],
        }
        write_json_atomic(run.run_dir / "enhance.json", summary)
        n_conv = len(summary["converted"])
        run.complete(
            enhance={k: v for k, v in summary.items() if k not in ("written", "skipped")}
            | {"n_written": len(written), "n_skipped": len(plan.skipped), "n_converted": n_conv}
        )
        tiled = sum(1 for i in written if i.tile)
        print(
            f"\nEnhanced {len(written)} image(s) into {out}"
            + (f" ({tiled} in tiles)" if tiled else "")
            + (f"; {n_conv} converted to 8-bit RGB first (see run_info.json)" if n_conv else ""),
            flush=True,
        )
        if plan.skipped:
            log.warning(
                "Skipped %d of %d file(s):\n  %s",
                len(plan.skipped),
                len(plan.skipped) + len(written),
                "\n  ".join(i.skipped or i.name for i in plan.skipped),
            )
        print(f"Run directory: {run.run_dir} (enhance.json lists every image)", flush=True)
        return summary
    except BaseException as err:
        run.fail(err)
        raise


@entry_point("enhance")
def main(cfg: DictConfig) -> None:
    """Bad input (core.errors.UserError: EnhanceError, a foreign checkpoint, a missing released file) ends in
    one message and exit status 2 (experiments.cli)."""
    try:
        enhance(cfg)
    except FileNotFoundError as err:
        if isinstance(err, UserError):
            raise
        raise MissingFileError(str(err)) from err


if __name__ == "__main__":
    main()
