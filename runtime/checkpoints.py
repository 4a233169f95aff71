"""Checking a checkpoint against the model a run builds, before Lightning touches it; writing checkpoints
atomically, and sweeping the temporary files a killed write leaves behind."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO
from torch import nn

from core.errors import InputError, MissingFileError
from core.files import write_atomic


class CheckpointMismatchError(InputError):
    """The checkpoint was written by another model (class or architecture)."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ckpt_path={path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoints
        # torch's own text suggests weights_only=False (running the file's pickled code): not advice to relay
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err):
            first = (
                "it holds objects other than tensors and plain containers (not a checkpoint of this suite)"
            )
        raise CheckpointMismatchError(
            f"ckpt_path={path}: not a readable PyTorch checkpoint ({first[:200]}). Expected a .ckpt file written "
            "by experiments.train (checkpoints/last.ckpt or best-*.ckpt of a run directory)."
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"ckpt_path={path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def model_class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def check_compatible(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Raises CheckpointMismatchError naming what differs; returns the checkpoint's `suite` record."""
    ckpt = load_checkpoint(path)
    suite = ckpt.get("suite") or {}
    expected = model_class_path(model)
    written_by = suite.get("model_class")
    if written_by and written_by != expected:
        raise CheckpointMismatchError(
            f"ckpt_path={path} was written by {written_by} (experiment {suite.get('experiment')!r}), but this run "
            f"builds {expected}. Pass the experiment= the checkpoint was trained with."
        )
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(
                "shape differences "
                + ", ".join(f"{k}: checkpoint {theirs[k]} vs model {ours[k]}" for k in shapes[:8])
            )
        raise CheckpointMismatchError(
            f"ckpt_path={path} does not fit {expected} as configured ({'; '.join(parts)}). "
            f"It was written by {written_by or 'an unknown model'} (experiment {suite.get('experiment')!r})."
        )
    return suite


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, streaming to disk: `torch.save` into a temporary file beside the target,
    then `os.replace` onto it. As crash-safe as Lightning's own writer (a crash leaves the previous file
    whole), but Lightning first serialises the whole checkpoint into memory (`io.BytesIO`), which costs one
    more checkpoint's size of RAM (~550 MB for NeRCo) and a copy. Remote paths (`s3://...`) go to Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(path, lambda f: torch.save(checkpoint, f))


# The suite's temporary names: `data.images.write_atomic` (checkpoints via AtomicCheckpointIO, run-directory
# JSON, PNGs) writes `.<name>.<8 characters of mkstemp>.tmp` beside the target, `runtime.callbacks.
# replace_with_link` (last.ckpt as a link) `.<name>.<pid>.tmp`. A SIGKILL between the write and the rename
# leaves one behind, possibly as large as a checkpoint.
TEMPORARY_NAME = re.compile(r"^\..+\.(?:[a-z0-9_]{8}|\d+)\.tmp$")


def sweep_temporary_files(run_dir: str | Path) -> list[Path]:
    """Deletes the suite's temporary files (`TEMPORARY_NAME`) in `run_dir` and its folders, and returns them.
    Only for the invocation that holds the run directory's lock (no live writer can own them); W&B's folder
    and run directories nested inside (a `run_info.json` or `.lock` of their own) are left alone."""
    run_dir = Path(run_dir)
    removed = []
    for root, dirs, files in os.walk(run_dir):
        here = Path(root)
        dirs[:] = [
            d
            for d in dirs
            if d != "wandb" and not ((here / d / "run_info.json").exists() or (here / d / ".lock").exists())
        ]
        for name in files:
            if TEMPORARY_NAME.match(name):
                try:
                    (here / name).unlink()
                except FileNotFoundError:
                    continue
                removed.append(here / name)
    return sorted(removed)


def model_from_checkpoint(
    ckpt_path: str | Path,
    *,
    accept: Callable[[type], bool] | None = None,
    expected: str = "a model of this suite",
    overrides: dict[str, Any] | None = None,
    fallback_config: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The one loader of "the model a checkpoint describes": the LightningModule rebuilt from the checkpoint's
    own `suite.model_config` record (with `overrides` applied to that config first, e.g. switching off a
    training-only metric), its weights loaded strictly, in eval mode. Returns (model, suite record).

    `accept(model_class)` refuses a checkpoint of the wrong kind before anything is built, with an error naming
    what wrote it and `expected` (what the caller needs). `fallback_config` is used for a checkpoint without a
    record (written before records existed). Raises CheckpointMismatchError / MissingFileError."""
    import hydra
    from omegaconf import OmegaConf

    ckpt = load_checkpoint(ckpt_path)
    suite = ckpt.get("suite") or {}
    record = suite.get("model_config")
    if record is None and fallback_config is None:
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt_path} has no suite record (the model's config), so the model it holds cannot be "
            f"rebuilt; expected a checkpoint written by experiments.train of {expected}"
        )
    model_cfg = OmegaConf.create(record) if record is not None else OmegaConf.create(fallback_config)
    for key, value in (overrides or {}).items():
        if key in model_cfg:
            model_cfg[key] = value
    if accept is not None:
        cls = hydra.utils.get_class(model_cfg._target_)
        if not accept(cls):
            raise CheckpointMismatchError(
                f"ckpt_path={ckpt_path} is not a checkpoint of {expected}: it was written by "
                f"{suite.get('model_class') or model_cfg._target_} (experiment {suite.get('experiment')!r})"
            )
    model = hydra.utils.instantiate(model_cfg)
    written_by = suite.get("model_class")
    if written_by and written_by != model_class_path(model):
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt_path} was written by {written_by}, but its record builds {model_class_path(model)}"
        )
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt_path} does not fit {model_class_path(model)}: {err}"
        ) from err
    return model.eval(), suite
