"""Objects the tests inject through Hydra overrides (`+callbacks.crash._target_=tests.helpers.CrashAt`)."""

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
