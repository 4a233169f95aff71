"""Callbacks the entry points rely on: RNG states in checkpoints, and a self-description of each checkpoint."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


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
    """Stores the global RNG states in every checkpoint and restores them when training resumes.

    Lightning checkpoints hold model, optimizer and loop state but not the global RNGs, so without this a
    resumed run draws different noise (dropout, VAE reparameterisation, diffusion timesteps) from the
    straight run. The states are captured when the checkpoint is written (end of an epoch, after
    validation) and restored as soon as Lightning hands the callback its state while resuming `fit`: that is
    before Lightning creates the first training iterator (which draws a seed from the global RNG, exactly as
    the straight run does at the start of the next epoch) and before the RNG-isolated sanity check. Under DDP
    the states are rank zero's; other ranks keep their freshly seeded states.
    """

    def __init__(self) -> None:
        self._fitting = False
        self._world_size = 1

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        self._world_size = trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"rank0": capture_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fitting and self._world_size == 1 and "rank0" in state_dict:
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
