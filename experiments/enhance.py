"""`python -m experiments.enhance input_dir=<dir> output_dir=<dir> (ckpt_path=<file> | model.official_ckpt_dir=<dir>)`

Enhances every image directly inside `input_dir` (the extensions of `data.images.IMAGE_EXTENSIONS`, any size;
subfolders are not searched) with a restoration model, and writes `<output_dir>/<stem>.png` (RGB, 8 bits) at
the input's size. Weights: `ckpt_path=` a checkpoint written by `experiments.train` (the model is rebuilt from
the config stored in it, `runtime.checkpoints.model_from_checkpoint`), or `model.official_ckpt_dir=` a folder
with the released NeRCo files (`lit_modules.nerco_release`).

Inputs are only ever read. Refused before anything is written (exit status 2, a message): bad folders,
outputs that already exist (`overwrite=true` replaces them), images over `memory_limit_mb` while
`tiling.enabled=false` (all in `data.image_folder`), and missing or mismatched weights. Files that cannot be
read or are too small for the network are skipped with a warning naming each, listed again at the end.
Images that are not 8-bit RGB are converted, each with a warning saying how (`data.images.conversion_note`),
recorded per image in enhance.json (`converted`) and listed in run_info.json.

Memory and speed: the model's own inference options (`nrn_chunk_pixels`, `inference_resize`, `inference_bf16`:
`set_inference_options`) and its estimate (`inference_memory_mb`); an image over the limit is processed in
overlapping tiles when `tiling.enabled=true` (`core.tiling`; an approximation for NeRCo, whose instance norms
see each tile alone).

The run directory (`hydra.run.dir`, default logs/enhance/...) gets run_info.json (status, what was written
and skipped) and enhance.json (one record per image).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import InputError, MissingFileError, UserError
from core.files import write_json_atomic
from core.imageops import from_unit_range, to_unit_range
from core.tiling import run_tiled
from data.image_folder import (
    QUANTIZE,
    ImageFolderError,
    Item,
    Plan,
    check_folders,
    memory_limit_mb,
    plan_images,
    plan_memory,
    read_input,
    skip_smaller_than,
    write_output,
)
from data.images import ImageReadError
from runtime.checkpoints import model_class_path, model_from_checkpoint
from runtime.cli import entry_point
from runtime.cpu_features import slow_bf16_warning
from runtime.run import Run, log

MODEL_OPTIONS = ("nrn_chunk_pixels", "inference_resize", "inference_bf16")  # enhance.yaml keys for `set_inference_options`
USAGE = (
    "usage: python -m experiments.enhance input_dir=<folder of images> output_dir=<new folder> "
    "(ckpt_path=<checkpoint> | model.official_ckpt_dir=<folder>)"
)


class EnhanceError(InputError):
    """Bad input to `enhance`: the message says what to change; nothing has been written (exit status 2)."""


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """A refusal of the image folder's plan (`data.image_folder`) as this command's EnhanceError."""
    try:
        yield
    except ImageFolderError as err:
        raise EnhanceError(str(err)) from None


# ------------------------------------------------------------------------------------------ model
def instantiate_model(model_cfg: DictConfig) -> Any:
    """hydra.utils.instantiate, with a user error of the module (a released file missing, a key or shape
    that does not fit) raised as is rather than wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(model_cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def load_model(cfg: DictConfig) -> tuple[torch.nn.Module, str]:
    """The model and a description of its weights: a training checkpoint (the one loader,
    `model_from_checkpoint`) or the released NeRCo files (`model.official_ckpt_dir`)."""
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
        model, weights = instantiate_model(cfg.model), f"released checkpoints in {official}"
    else:
        log.info("Rebuilding the model of %s", ckpt)
        model, suite = model_from_checkpoint(
            ckpt,
            accept=lambda cls: callable(getattr(cls, "enhance", None)),
            expected="a restoration model with enhance() (NeRCo)",
            overrides={"official_ckpt_dir": None},  # the checkpoint holds every weight
            fallback_config=OmegaConf.to_container(cfg.model, resolve=True),
        )
        weights = f"checkpoint {ckpt} (experiment {suite.get('experiment')!r})"
    if not callable(getattr(model, "enhance", None)):
        raise EnhanceError(
            f"{type(model).__name__} has no enhance(); enhance needs a restoration model (NeRCo)"
        )
    apply_inference_options(model, cfg)
    return model, weights


def apply_inference_options(model: Any, cfg: DictConfig) -> None:
    """The `MODEL_OPTIONS` given to enhance replace the model's (also for a model rebuilt from a checkpoint,
    whose stored config ignores `model.*` overrides); the model checks them."""
    options = {k: cfg.get(k) for k in MODEL_OPTIONS if cfg.get(k) is not None}
    if not options:
        return
    if not callable(getattr(model, "set_inference_options", None)):
        given = ", ".join(f"{k}={v}" for k, v in options.items())
        raise EnhanceError(f"{given}: {type(model).__name__} has no such setting")
    model.set_inference_options(**options)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnhanceError(f"device={setting}: CUDA is not available here (device=auto or device=cpu)")
    return device


# ------------------------------------------------------------------------------------------ processing
def enhance_one(model: Any, item: Item, device: torch.device, overlap: int, quantize: str, bar: Any) -> None:
    x = torch.from_numpy(read_input(item)).permute(2, 0, 1)[None].float().div(255.0)
    vr = tuple(getattr(model, "value_range", (0.0, 1.0)))
    x = from_unit_range(x, vr).to(device)
    with torch.inference_mode():
        if item.tile:
            show = lambda d, n: bar.set_postfix_str(f"{item.name} tile {d}/{n}")  # noqa: E731
            y = run_tiled(model.enhance, x, item.tile, overlap, progress=show)
        else:
            y = model.enhance(x)
    if y.shape[-2:] != x.shape[-2:]:
        raise RuntimeError(
            f"{item.name}: the model returned {tuple(y.shape[-2:])} for an input of {tuple(x.shape[-2:])}"
        )
    write_output(item, to_unit_range(y, vr), quantize)


def run_plan(model: Any, plan: Plan, device: torch.device, cfg: DictConfig) -> list[Item]:
    """Enhances every planned image with a progress bar; files found truncated on decoding are skipped."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    written: list[Item] = []
    n_files = len(plan.items) + len(plan.skipped)
    with (
        logging_redirect_tqdm(),
        tqdm(list(plan.items), desc="enhance", unit="image", dynamic_ncols=True) as bar,
    ):
        for item in bar:
            bar.set_postfix_str(item.name)
            t0 = time.perf_counter()
            try:
                enhance_one(model, item, device, int(cfg.tiling.overlap), str(cfg.quantize), bar)
            except ImageReadError as err:  # a truncated file is only found when decoded
                plan.skip(item, str(err))
                continue
            item.seconds = round(time.perf_counter() - t0, 3)
            written.append(item)
    if not written:
        raise EnhanceError(str(plan.none_left(n_files)))
    return written


def summarise(model: Any, plan: Plan, written: list[Item], **facts: Any) -> dict[str, Any]:
    options = model.inference_options() if callable(getattr(model, "inference_options", None)) else {}
    return {
        "input_dir": str(plan.input_dir),
        "output_dir": str(plan.output_dir),
        **facts,
        "model_class": model_class_path(model),
        **{k: options.get(k) for k in MODEL_OPTIONS},
        "written": [i.record() for i in written],
        "skipped": [{"path": str(i.path), "reason": i.skipped} for i in plan.skipped],
        "converted": [f"{i.name}: {i.converted}" for i in written if i.converted],
    }


def report(run: Run, summary: dict[str, Any], plan: Plan, written: list[Item]) -> None:
    """enhance.json, run_info.json (completed) and the lines printed at the end."""
    write_json_atomic(run.run_dir / "enhance.json", summary)
    n_conv = len(summary["converted"])
    run.complete(
        enhance={k: v for k, v in summary.items() if k not in ("written", "skipped")}
        | {"n_written": len(written), "n_skipped": len(plan.skipped), "n_converted": n_conv}
    )
    tiled = sum(1 for i in written if i.tile)
    print(
        f"\nEnhanced {len(written)} image(s) into {plan.output_dir}"
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


def enhance(cfg: DictConfig) -> dict[str, Any]:
    """Checks the inputs, loads the model, enhances each image; returns the summary written to the run dir."""
    if cfg.quantize not in QUANTIZE:  # every refusal before the run directory is written
        raise EnhanceError(f"quantize={cfg.quantize!r} is not one of {QUANTIZE}")
    with refusals():
        inp, out = check_folders(cfg.get("input_dir"), cfg.get("output_dir"), USAGE)
        plan = plan_images(inp, out, bool(cfg.overwrite))
    model, weights = load_model(cfg)
    device = pick_device(str(cfg.device))
    limit = memory_limit_mb(cfg.memory_limit_mb, device)
    with refusals():
        skip_smaller_than(plan, int(getattr(model, "min_side", 1)))
        plan_memory(plan, getattr(model, "inference_memory_mb", None), limit, cfg.tiling)
    run = Run(cfg, "enhance")
    try:
        model.to(device).eval()
        options = model.inference_options() if callable(getattr(model, "inference_options", None)) else {}
        bf16 = bool(options.get("inference_bf16"))
        slow = slow_bf16_warning("inference_bf16=true", "inference_bf16=false", device) if bf16 else None
        if slow:
            log.warning(slow)
        if callable(getattr(model, "for_inference", None)):
            model.for_inference()  # NeRCo: channels-last weights and images (nerco_inference)
        written = run_plan(model, plan, device, cfg)
        memory = None if limit is None else round(limit)
        summary = summarise(model, plan, written, weights=weights, device=str(device), memory_limit_mb=memory)
        report(run, summary, plan, written)
        return summary
    except BaseException as err:
        run.fail(err)
        raise


@entry_point("enhance")
def main(cfg: DictConfig) -> None:
    """Bad input (core.errors.UserError) ends in one message and exit status 2 (runtime.cli)."""
    try:
        enhance(cfg)
    except FileNotFoundError as err:
        if isinstance(err, UserError):
            raise
        raise MissingFileError(str(err)) from err


if __name__ == "__main__":
    main()
