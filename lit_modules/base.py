"""What every LightningModule of the suite shares: image logging, the metric protocol, checkpoint needs."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def planned_test_examples(datamodule: Any, limits: Any) -> int:
    """How many test examples `trainer.test` will see under the trainer's limits (`fast_dev_run`,
    `limit_test_batches` of a Trainer or of its config), by Lightning's rule (an int counts batches, a float
    is a fraction of them)."""

    def get(name: str) -> Any:
        return limits.get(name) if hasattr(limits, "get") else getattr(limits, name, None)

    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    total, num_batches = len(loader.dataset), len(loader)
    batches = num_batches
    fdr = get("fast_dev_run")
    if fdr:
        batches = min(num_batches, 1 if fdr is True else int(fdr))
    else:
        limit = get("limit_test_batches")
        if isinstance(limit, int) and not isinstance(limit, bool):
            batches = min(num_batches, limit)
        elif limit is not None:
            batches = int(num_batches * float(limit))
    return min(total, batches * (loader.batch_size or 1))


class SuiteModule(pl.LightningModule):
    """Base class. Subclasses describe how their test metrics are computed in `metric_protocol()`; the
    entry points write that description into metrics.json next to the numbers.

    Training metrics: `self.log` costs ~0.5 ms per call on a 2-core CPU (Lightning moves its result
    collection on every call), which is 10-20 % of a small model's step. So per-example training values go
    into `accumulate(...)` (a tensor add) and are logged once per epoch as means, and the step loss is
    logged every `trainer.log_every_n_steps` steps only (`log_step`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch_sums: dict[str, tuple[torch.Tensor, int]] = {}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Lightning's transfer, skipped when the batch is a tuple/list of tensors already on `device` (every CPU
        run): Lightning walks the batch with `apply_to_collection` on every step, ~1 % of a small model's epoch."""
        if isinstance(batch, (tuple, list)) and all(
            isinstance(x, torch.Tensor) and x.device == device for x in batch
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def accumulate(self, **values: torch.Tensor) -> None:
        """Adds per-example values (any shape) to running sums; `train__loss=...` is logged as `train/loss`."""
        for name, value in values.items():
            value = value.detach()
            total, count = self._epoch_sums.get(name, (0.0, 0))
            self._epoch_sums[name] = (total + value.sum(), count + value.numel())

    def training_loss(self, per_example: torch.Tensor, **terms: torch.Tensor) -> torch.Tensor:
        """The usual end of a `training_step`: accumulates `per_example` as `train/loss` (and each per-example
        term as `train/<name>`), logs the batch mean as `train/loss_step` on the logging cadence, returns it."""
        self.accumulate(train__loss=per_example, **{f"train__{name}": value for name, value in terms.items()})
        loss = per_example.mean()
        self.log_step("train/loss_step", loss)
        return loss

    def log_step(self, name: str, value: torch.Tensor) -> None:
        """Logs a step-level value (also to the progress bar) on the trainer's logging cadence only."""
        # Lightning's own predicate for "this step's metrics go to the loggers" (private, hence the getattr)
        if getattr(self.trainer._logger_connector, "should_update_logs", True):
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=True)

    def log_accumulated(self, split: str) -> None:
        """Logs the means of the `<split>__*` sums (all ranks' means averaged under DDP) and clears them."""
        names = [name for name in self._epoch_sums if name.startswith(f"{split}__")]
        if names:
            means = {}
            for name in names:
                total, count = self._epoch_sums.pop(name)
                means[name.replace("__", "/")] = total / count
            self.log_dict(means, on_step=False, on_epoch=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self.log_accumulated("train")

    def on_validation_epoch_end(self) -> None:
        """Validation values can be accumulated too (`val__loss=...`); subclasses overriding this call super()."""
        self.log_accumulated("val")

    def metric_protocol(self) -> dict[str, Any]:
        return {}

    @property
    def needs_checkpoint(self) -> bool:
        """Whether `experiments.evaluate` must be given trained weights (a model with parameters does)."""
        return any(True for _ in self.parameters())

    def preflight(self, datamodule: Any, limits: Any) -> None:
        """Called by `train` and `evaluate` before any work (`limits`: the trainer config): refuse a test that
        would fail at its end (e.g. an FID with too few real images under the trainer's limits). Raises
        `core.errors.ConfigError`."""

    def show_progress(self) -> bool:
        """Whether an extra progress bar (FID sampling, importance sampling) should be drawn: rank zero, and
        the trainer draws bars."""
        trainer = self._trainer
        return trainer is None or (trainer.is_global_zero and trainer.progress_bar_callback is not None)
