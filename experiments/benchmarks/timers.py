"""Lightning callbacks the benchmarks add to the suite's runs (`+callbacks.<name>._target_=...`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class EpochTimer(Callback):
    """Wall time of each epoch as the user experiences it: from one epoch's start to the next one's (training,
    validation, checkpointing, logging and progress bars included). Written to `path` as JSON at the end."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ends = [*self.starts[1:], time.perf_counter()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps([e - s for s, e in zip(self.starts, ends)]))


class StartupTimer(Callback):
    """Seconds from the command's launch (`SUITE_BENCH_T0`, a time.time() set by the benchmark) to the first
    training batch, written to `path` as JSON by rank zero."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.done = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.done and trainer.is_global_zero and "SUITE_BENCH_T0" in os.environ:
            self.done = True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"startup_s": time.time() - float(os.environ["SUITE_BENCH_T0"])}))
