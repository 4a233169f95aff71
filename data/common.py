"""Pieces shared by the DataModules: an epoch-seeded sampler and an in-memory image dataset."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch), like DistributedSampler's `seed + epoch`.

    Lightning calls `set_epoch` at the start of every epoch (also through its DDP wrapper), so the data
    order of epoch e is the same in a straight run, a resumed run and a run with another batch size, and no
    global RNG state is consumed by shuffling.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ImageTensorDataset(Dataset):
    """uint8 images (N, H, W) or (N, C, H, W) and int labels held in memory; items are (float image in
    [0, 1] of shape (C, H, W), label). `__getitems__` indexes a whole batch at once (no per-item loop)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"ImageTensorDataset expects uint8 images, got {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"ImageTensorDataset: {len(images)} images but {len(labels)} labels")
        self.images = images if images.ndim == 4 else images.unsqueeze(1)
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().div_(255), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices)
        x = self.images[idx].float().div_(255)
        return list(zip(x.unbind(0), self.labels[idx].unbind(0)))
