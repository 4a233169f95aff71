"""Objects the tests inject through Hydra overrides (`+callbacks.crash._target_=tests.helpers.CrashAt`)."""

from pathlib import Path

import pytorch_lightning as pl


class SimulatedCrash(RuntimeError):
    pass


class CrashAt(pl.Callback):
    """Raises in the middle of training epoch `epoch` (0-based), after `batch` batches of it."""

    def __init__(self, epoch: int = 1, batch: int = 2):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SimulatedCrash(f"simulated crash in epoch {self.epoch} at batch {self.batch}")


class SignalAt(pl.Callback):
    """Test helper: sends this process `signal` once per run directory (a marker file keeps the resumed
    invocation from signalling again): after training step `step`, or in the Lightning hook `hook`
    (`on_fit_start`: start-up; `on_train_end`: between fit and test). Added with
    `+callbacks.signal_at._target_=tests.helpers.SignalAt +callbacks.signal_at.step=N ...marker=<file>`."""

    def __init__(
        self, marker: str, step: int | None = None, hook: str | None = None, signal: str = "SIGUSR1"
    ):
        self.step, self.hook, self.marker, self.signal = step, hook, Path(marker), signal

    def _send(self, trainer) -> None:
        import os
        import signal as sig

        if self.marker.exists():
            return
        trainer.strategy.barrier("SignalAt")
        if trainer.is_global_zero:
            self.marker.write_text(str(trainer.global_step))
        os.kill(os.getpid(), getattr(sig, self.signal))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step == self.step:
            self._send(trainer)

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.hook == "on_fit_start":
            self._send(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.hook == "on_train_end":
            self._send(trainer)
