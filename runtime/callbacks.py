"""Callbacks the entry points rely on: RNG states in checkpoints, and a self-description of each checkpoint."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ RNG states
def capture_rng_state() -> dict[str, torch.Tensor]:
    """torch, CUDA, numpy and Python RNG states as tensors (safe to load with `weights_only=True`)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_meta": torch.tensor([py_version, 0 if py_gauss is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor(0.0 if py_gauss is None else py_gauss, dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_meta"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(state["numpy_gauss"]),
        )
    )
    version, has_py_gauss = (int(v) for v in state["python_meta"])
    random.setstate(
        (
            version,
            tuple(int(v) for v in state["python"]),
            float(state["python_gauss"]) if has_py_gauss else None,
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


class RNGStateCheckpoint(Callback):
    """Stores the global RNG states of every rank in every checkpoint and restores them when training resumes.

    Lightning checkpoints hold model, optimizer and loop state but not the global RNGs, so without this a
    resumed run draws different noise (dropout, VAE reparameterisation, diffusion timesteps) from the
    straight run. The states are captured when the checkpoint is written (end of an epoch after validation,
    or after a training batch when a SLURM requeue saves mid-epoch) and restored as soon as Lightning hands
    the callback its state while resuming `fit`: that is before Lightning creates the first training
    iterator and before the RNG-isolated sanity check. Under DDP every rank's states are gathered into the
    checkpoint (`ranks`, indexed by global rank) and each rank gets its own back, provided the world size is
    the one the checkpoint was written with; checkpoints of older versions hold only `rank0`, used by a
    single process.
    """

    def __init__(self) -> None:
        self._fitting = False
        self._world_size = 1
        self._rank = 0

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        self._world_size = trainer.world_size
        self._rank = trainer.global_rank

    def state_dict(self) -> dict[str, Any]:
        # every rank builds the checkpoint at the same point (trainer.save_checkpoint is collective)
        mine = capture_rng_state()
        if self._world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks: list[Any] = [None] * self._world_size
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"rank0": ranks[0], "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._fitting:
            return
        ranks = state_dict.get("ranks")
        if ranks is not None and len(ranks) == self._world_size:
            restore_rng_state(ranks[self._rank])
        elif self._world_size == 1 and "rank0" in state_dict:
            restore_rng_state(state_dict["rank0"])


class CheckpointInfo(Callback):
    """Writes `checkpoint["suite"]`: the model's class and config, the experiment and data it was trained on.

    That makes a checkpoint self-describing, so `evaluate` and `sample` can refuse a checkpoint of another
    model with a clear message and rebuild a model from the checkpoint alone.
    """

    def __init__(self, info: dict[str, Any]):
        self.info = info

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["suite"] = dict(self.info)


class PerRankSeed(Callback):
    """Under DDP, reseeds each rank with `seed + global_rank` once the ranks exist.

    Every rank is seeded with the run seed first, so models are built identically (DDP also broadcasts rank
    zero's weights); afterwards each rank needs its own stream, or all ranks would draw the same noise for
    their different examples. A single process keeps `seed` unchanged.
    """

    def __init__(self, seed: int | None):
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is not None and trainer.world_size > 1:
            pl.seed_everything(self.seed + trainer.global_rank, workers=True, verbose=False)


# ------------------------------------------------------------------------------------------ checkpoints
class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's `ModelCheckpoint` with a `last.ckpt` that is always the latest state.

    Two changes, both at the checkpointing points of the stock callback (the end of every `every_n_epochs`-th
    epoch, after validation):

    1. **`last.ckpt` is written even when no top-k checkpoint was.** In pytorch_lightning 2.6.6 the stock
       callback writes `last.ckpt` only in a step where it also wrote a top-k file, so with `monitor=` set
       `last.ckpt` stays at the last *improving* epoch (and `ckpt_path=last` silently resumes from there), and
       with `save_top_k: 0` it is written only when training ends (a crashed run has nothing to resume from).
       tests/test_checkpoints.py shows both against the stock callback.
    2. **No second serialisation in an improving epoch.** When a top-k file was written at this global step,
       `last.ckpt` becomes a hard link to it (made under a temporary name, then renamed over `last.ckpt`, so a
       crash leaves the previous `last.ckpt` intact). The bytes are the ones `last.ckpt` would hold apart from
       this callback's own bookkeeping entry. Checkpoint files are only ever replaced by rename, never
       rewritten in place, so the link never sees a later write. Where hard links are not supported the file
       is copied instead. `link_last=false` restores a full save.
    """

    def __init__(self, *args: Any, link_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link_last = link_last
        self._last_written_step: int | None = None
        self._link_source: str | None = None

    # -- a moved or copied run directory resumes into its own last.ckpt
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores its bookkeeping only when the checkpoint's `dirpath` is this one; for a run
        directory that was moved or copied (scratch -> project space, a fork of a run) it forgets
        `last_model_path`, finds `last.ckpt` "taken" and writes `last-v1.ckpt`, so the next `ckpt_path=last`
        would resume from the stale `last.ckpt`. Here paths in the old directory are rebased onto this one
        (same file names) and the state is restored as if the directory had never moved."""
        old = state_dict.get("dirpath")
        if old is None or self.dirpath is None or os.path.abspath(old) == os.path.abspath(self.dirpath):
            super().load_state_dict(state_dict)
            return

        def rebase(path: Any) -> Any:
            if (
                isinstance(path, str)
                and path
                and os.path.dirname(os.path.abspath(path)) == os.path.abspath(old)
            ):
                return os.path.join(self.dirpath, os.path.basename(path))
            return path

        moved = dict(state_dict, dirpath=self.dirpath)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in moved:
                moved[key] = rebase(moved[key])
        if "best_k_models" in moved:
            moved["best_k_models"] = {rebase(k): v for k, v in moved["best_k_models"].items()}
        log.info(
            "checkpoints: the run directory moved (%s -> %s); resuming into the new one", old, self.dirpath
        )
        super().load_state_dict(moved)

    # -- always keep last.ckpt current
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._epoch_checkpoint_due(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if due:
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._epoch_checkpoint_due(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if due:
            self._ensure_last(trainer)

    def _epoch_checkpoint_due(self, trainer: pl.Trainer) -> bool:
        return (
            bool(self.save_last)
            and not self._should_skip_saving_checkpoint(trainer)
            and self._every_n_epochs >= 1
            and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        )

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        if self._last_written_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # -- link instead of writing the same state twice
    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self.save_last and self.link_last and not self.last_model_path:
            # A top-k file written now may become last.ckpt: it must already name last.ckpt as this callback's
            # own, as a written last.ckpt does (else a resumed run finds last.ckpt "taken" and versions it).
            self.last_model_path = self._last_checkpoint_path(trainer, monitor_candidates)
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _last_checkpoint_path(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> str:
        """The name `_save_last_checkpoint` will pick (same rule, version counter included)."""
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        if self._enable_version_counter:
            version = self.STARTING_VERSION
            while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
                filepath = self.format_checkpoint_name(
                    monitor_candidates, self.CHECKPOINT_NAME_LAST, ver=version
                )
                version += 1
        return filepath

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not self.save_last:
            return
        same_step = self._last_global_step_saved == trainer.global_step and bool(self._last_checkpoint_saved)
        self._link_source = self._last_checkpoint_saved if (same_step and self.link_last) else None
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._link_source = None
        self._last_written_step = trainer.global_step

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        source = self._link_source
        if source is None or self.save_last == "link" or os.path.abspath(source) == os.path.abspath(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            replace_with_link(source, filepath)
        trainer.strategy.barrier("ModelCheckpoint.link_last")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def replace_with_link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Makes `target` name the file `source` names (a hard link; a copy where links are not supported),
    atomically: the new name is prepared beside `target` and renamed over it."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class ProgressBar(pl.callbacks.TQDMProgressBar):
    """Lightning's tqdm bar, whose epoch total also respects `trainer.max_steps`: a 3-step run shows 0/3,
    not 0/240 with the ETA of a whole epoch (Lightning caps the total only when max_epochs is -1).

    Optimizer steps per training batch: `accumulate_grad_batches` inverted under automatic optimisation; a
    model with manual optimisation says how many it takes with `optimizer_steps_per_batch` (NeRCo: 2)."""

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        trainer = self.trainer
        max_steps = trainer.max_steps
        if max_steps is None or max_steps <= 0:
            return total
        model = trainer.lightning_module
        if model.automatic_optimization:
            batches_per_step = trainer.accumulate_grad_batches
            remaining = (max_steps - trainer.global_step) * batches_per_step
        else:
            per_batch = getattr(model, "optimizer_steps_per_batch", None)
            if not per_batch:
                return total
            remaining = -(-(max_steps - trainer.global_step) // per_batch)
        return min(total, max(remaining, 0))
