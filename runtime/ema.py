"""EMA weights through Lightning's `EMAWeightAveraging`, with two fixes for how pytorch_lightning 2.6.6 behaves.

What the stock callback does (read in pytorch_lightning/callbacks/weight_averaging.py, 2.6.6):
- It builds an `AveragedModel` (a deep copy of the LightningModule) at `setup("fit")`, updates it after every
  optimizer step, swaps the averaged weights in at `on_validation_epoch_start` and back at
  `on_validation_epoch_end`, and copies them into the module at `on_train_end`.
- Checkpoints hold the averaged weights under `state_dict` and the raw weights under `current_model_state`.
  So `evaluate`, `sample` and `load_state_dict(ckpt["state_dict"])` see EMA weights, and resuming `fit`
  restores both.
- Callback `on_validation_epoch_end` hooks run *before* the LightningModule's, so a module that draws its
  sample grid in `on_validation_epoch_end` would draw it with the raw weights; the DDPM module draws it in
  `validation_step` instead, while the averaged weights are in place.

Fixed here:
1. `fit` then `test` in one Trainer (what `experiments.train` does): the averaged model still exists, so the
   stock `on_load_checkpoint` loads `current_model_state` (the raw weights) over the averaged weights that
   Lightning had just restored from `state_dict`, and the test would score the raw weights. This subclass
   only restores EMA state while fitting; in test/validate/predict the module keeps `state_dict` (EMA).
2. Decay warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n updates (as diffusers' `EMAModel`), so a
   short CPU run is not dominated by the random initial weights (0.999^2000 = 13 % of them otherwise).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


def ema_update(
    averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor, decay: float, warmup: bool
) -> torch.Tensor:
    """averaged <- d * averaged + (1 - d) * current, d = min(decay, (1 + n) / (10 + n)) with warm-up."""
    d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged))) if warmup else decay
    return averaged + (current - averaged) * (1.0 - d)


class EMA(EMAWeightAveraging):
    """`EMAWeightAveraging` with the test-stage checkpoint fix and an optional decay warm-up (module docstring)."""

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = True,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
        use_buffers: bool = True,
    ):
        super().__init__(
            device=device,
            use_buffers=use_buffers,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = decay
        self.warmup = warmup
        # AveragedModel calls avg_fn(averaged_param, current_param, num_averaged) for every parameter and buffer
        self._kwargs["avg_fn"] = partial(ema_update, decay=decay, warmup=warmup)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # keep the averaged weights Lightning restored from checkpoint["state_dict"]
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
