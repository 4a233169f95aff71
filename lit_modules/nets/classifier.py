"""A small MNIST CNN whose penultimate layer is the feature space of the suite's MNIST FID (lit_modules/fid.py)."""

from __future__ import annotations

import torch
from torch import nn


class MNISTConvNet(nn.Module):
    """(B, 1, 28, 28) images in [0, 1] -> 10 logits; `features` gives the `feature_dim` penultimate activations.

    conv 3x3 (32) -> conv 3x3 (32) -> maxpool -> conv 3x3 (64) -> conv 3x3 (64) -> maxpool -> flatten ->
    fc (feature_dim) + ReLU = features -> dropout -> fc (10). BatchNorm-free, so eval features do not depend
    on the batch, and small (~0.27 M parameters) so its weights can be committed.
    """

    def __init__(self, feature_dim: int = 64, dropout: float = 0.3):
        super().__init__()
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
