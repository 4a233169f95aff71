"""The training order and the items of the low-light data: one integer per draw that encodes (epoch,
position, A index, B index), and the dataset that decodes it.

Paired (n_b = 1): in epoch e the order is randperm(n, g) with g = torch.Generator().manual_seed(seed + e).
Unpaired (NeRCo's trainA / trainB, Yang et al., ICCV 2023, drawn as CycleGAN's `UnalignedDataset` with
`serial_batches=False`): an epoch has N = max(|A|, |B|) draws, A index = randperm(N, g) mod |A| and
B index = randint(0, |B|, (N,), g), i.e. B uniformly with replacement. Each item's crop/flip generator is
`numpy.random.default_rng([augment_seed, epoch, position])`, so what a sample looks like depends only on the
seeds and its place in the epoch, never on the number of workers, the batch size or the global RNG (exact
resume, DDP).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.common import DataSpec
from data.lowlight.pairing import ImageRef, Pair, PairSizeError
from data.transforms import PairTransform


def decode_draw(k: int, n_a: int, n_b: int, n: int) -> tuple[int, int, int, int]:
    """Inverse of `DrawSampler.encode`: (epoch, position, a, b)."""
    rest, b = divmod(int(k), n_b)
    rest, a = divmod(rest, n_a)
    epoch, pos = divmod(rest, n)
    return epoch, pos, a, b


class DrawSampler(Sampler[int]):
    """Training order that depends only on (seed, epoch): paired (n_b = 1) or unpaired (module docstring)."""

    def __init__(self, n_a: int, n_b: int = 1, seed: int = 0, unpaired: bool = False):
        self.n_a, self.n_b, self.seed, self.unpaired = n_a, n_b, seed, unpaired
        self.epoch = 0

    @property
    def epoch_length(self) -> int:
        return max(self.n_a, self.n_b) if self.unpaired else self.n_a

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def encode(self, epoch: int, pos: int, a: int, b: int) -> int:
        return ((epoch * self.epoch_length + pos) * self.n_a + a) * self.n_b + b

    def draws(self) -> tuple[list[int], list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = self.epoch_length
        if not self.unpaired:
            return torch.randperm(n, generator=g).tolist(), [0] * n
        a = (torch.randperm(n, generator=g) % self.n_a).tolist()
        b = torch.randint(0, self.n_b, (n,), generator=g).tolist()
        return a, b

    def __iter__(self) -> Iterator[int]:
        a, b = self.draws()
        return iter(self.encode(self.epoch, pos, ai, bi) for pos, (ai, bi) in enumerate(zip(a, b)))

    def __len__(self) -> int:
        return self.epoch_length


class LowLightPairs(Dataset):
    """Items of a paired split (training with random crop/flips, or evaluation), or unpaired training items
    when `highs` is given (then `lows`/`highs` are independent image lists). Indices: see `DrawSampler`.

    Items are dicts: `low`, `high` (float (3, H, W) in the transform's value range), `low_name`, `high_name`
    (paths relative to the data set root). With `spec` (the DataModule's), each item is checked against it."""

    spec: DataSpec | None = None

    def __init__(
        self,
        lows: list[ImageRef],
        highs: list[ImageRef] | None,
        transform: PairTransform,
        augment_seed: int = 0,
        non_rgb: str = "convert",
        paired_highs: list[ImageRef] | None = None,
    ):
        self.lows = lows
        self.unpaired = highs is not None
        self.highs = highs if highs is not None else paired_highs
        if self.highs is None or (not self.unpaired and len(self.highs) != len(lows)):
            raise ValueError("LowLightPairs: paired items need one high image per low image")
        self.transform = transform
        self.augment_seed = augment_seed
        self.non_rgb = non_rgb
        self.n_b = len(self.highs) if self.unpaired else 1
        self.epoch_length = max(len(lows), self.n_b) if self.unpaired else len(lows)

    @classmethod
    def paired(
        cls, pairs: list[Pair], transform: PairTransform, augment_seed: int = 0, non_rgb: str = "convert"
    ):
        return cls([p.low for p in pairs], None, transform, augment_seed, non_rgb, [p.high for p in pairs])

    def __len__(self) -> int:
        return self.epoch_length

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, pos, a, b = decode_draw(k, len(self.lows), self.n_b, self.epoch_length)
        low_ref = self.lows[a]
        high_ref = self.highs[b] if self.unpaired else self.highs[a]
        rng = np.random.default_rng([self.augment_seed, epoch, pos]) if self.transform.is_random else None
        low_img, high_img = low_ref.read(self.non_rgb), high_ref.read(self.non_rgb)
        if not self.unpaired and low_img.shape != high_img.shape:
            raise PairSizeError(
                f"{low_ref.name} is {low_img.shape[1]}x{low_img.shape[0]} but {high_ref.name} is "
                f"{high_img.shape[1]}x{high_img.shape[0]}"
            )
        low, high, _ = self.transform(low_img, high_img, rng, where=f"{low_ref.name} | {high_ref.name}")
        if self.spec is not None:
            for ref, x in ((low_ref, low), (high_ref, high)):
                self.spec.check_images(x[None], ref.name)
        return {"low": low, "high": high, "low_name": low_ref.name, "high_name": high_ref.name}
