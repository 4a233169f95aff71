"""MNIST classifier: the feature network of the suite's MNIST FID protocol (`experiment=mnist_classifier`).

Trained on the training split only; its test accuracy is recorded next to its committed weights
(lit_modules/weights/, written by `python -m experiments.fid_features export ...`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_modules.base import SuiteModule


class MNISTClassifier(SuiteModule):
    """Cross-entropy training; logs val/loss, val/accuracy, test/accuracy (micro: fraction of correct images)."""

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer]):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.val_accuracy = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_loss = MeanMetric()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.training_loss(F.cross_entropy(self.net(x), y, reduction="none"))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_accuracy.update(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(x), sync_dist=True)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.test_accuracy.update(logits, y)
        self.test_loss.update(F.cross_entropy(logits, y, reduction="none"))
        self.log("test/accuracy", self.test_accuracy, on_epoch=True)
        self.log("test/loss", self.test_loss, on_epoch=True)

    def metric_protocol(self) -> dict[str, Any]:
        return {"test/accuracy": "fraction of test images whose argmax logit is the label (micro average)"}
