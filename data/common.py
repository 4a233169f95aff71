"""Pieces shared by the DataModules: an epoch-seeded sampler, a training loader that resumes mid-epoch, and
an in-memory image dataset, and the spec a DataModule declares (`DataSpec`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.errors import ConfigError, InputError


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


def batches_consumed(trainer: Any) -> int | None:
    """How many training batches of the current epoch the fit loop has finished (its step and hooks done),
    or None outside `fit`. This is the loop's own count, not the loader's: the loop prefetches a batch ahead,
    and `limit_train_batches` stops it before the loader is exhausted."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return None if loop is None else int(loop.batch_progress.current.processed)


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position within the epoch travels in the checkpoint (Lightning's
    stateful-loader protocol: `state_dict` / `load_state_dict`), so a run resumed from a mid-epoch checkpoint
    (a SLURM requeue) sees exactly the batches the straight run would have seen next.

    The state is (sampler epoch, batches consumed); `position()` supplies the count (`batches_consumed` of the
    DataModule's trainer). After `load_state_dict` the next iterator sets the sampler to that epoch (under
    DDP through Lightning's sampler wrapper, so each rank skips its own shard) and skips that many index
    batches without loading them. Creating that iterator would draw a base seed from the global torch RNG,
    which the straight run drew once at the start of the epoch; the draw is undone so the restored RNG state
    is the one the straight run had at the checkpoint.
    """

    def __init__(self, *args: Any, position: Callable[[], int | None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.position = position
        self._resume: dict[str, int] | None = None
        self._skip = 0

    def _sampler_epoch(self) -> int:
        for obj in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if obj is not None and hasattr(obj, "epoch"):
                return int(obj.epoch)
        return 0

    def state_dict(self) -> dict[str, int]:
        consumed = self.position() if self.position is not None else None
        return {"epoch": self._sampler_epoch(), "consumed": -1 if consumed is None else int(consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("consumed", -1)) >= 0:
            self._resume = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}

    @property
    def _index_sampler(self) -> Any:
        base = super()._index_sampler
        return _SkipOnce(base, self._skip) if self._skip else base

    def __iter__(self) -> Any:
        if self._resume is None:
            return super().__iter__()
        from lightning_fabric.utilities.data import _set_sampler_epoch

        _set_sampler_epoch(self, self._resume["epoch"])
        self._skip = self._resume["consumed"]
        state = torch.get_rng_state()
        try:
            return super().__iter__()
        finally:
            torch.set_rng_state(state)
            self._resume, self._skip = None, 0


class _SkipOnce:
    """An index (batch) sampler whose first iteration leaves out its first `n` items (drawn, not loaded);
    later iterations (persistent workers reuse it) are whole."""

    def __init__(self, base: Any, n: int):
        self.base, self.n = base, n

    def __iter__(self) -> Iterator[Any]:
        n, self.n = self.n, 0
        return itertools.islice(iter(self.base), n, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.n, 0)


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


# ------------------------------------------------------------------------------------------ the data's spec
DOMAINS = ("mnist", "lowlight_rgb", "deblur")


@dataclass(frozen=True)
class DataSpec:
    """What a DataModule promises about its images, so models and metrics read it instead of hard-coding it:
    `image_shape` (C, H, W; H and W None for images of varying size), `num_classes` (None: unlabelled),
    `value_range` of the pixels, and `domain` (what kind of images: the FID looks its feature network up by it).
    Configs interpolate the same keys: `${data.image_shape[0]}`, `${data.num_classes}`, `${data.domain}`."""

    image_shape: tuple[int, int | None, int | None]
    num_classes: int | None
    value_range: tuple[float, float]
    domain: str

    @classmethod
    def from_config(
        cls, image_shape: Any, num_classes: Any, value_range: Any, domain: str, where: str = "data"
    ) -> DataSpec:
        shape = tuple(image_shape) if image_shape is not None else ()
        if (
            len(shape) != 3
            or not _positive_int(shape[0])
            or not all(s is None or _positive_int(s) for s in shape[1:])
        ):
            raise ConfigError(
                f"{where}.image_shape={list(shape) or image_shape!r}: expected [C, H, W] (H, W may be null)"
            )
        if num_classes is not None and not _positive_int(num_classes):
            raise ConfigError(f"{where}.num_classes={num_classes!r}: expected a positive integer or null")
        vr = tuple(float(v) for v in value_range)
        if len(vr) != 2 or not vr[0] < vr[1]:
            raise ConfigError(
                f"{where}.value_range={list(value_range)}: expected [low, high] with low < high"
            )
        if domain not in DOMAINS:
            raise ConfigError(f"{where}.domain={domain!r} is not one of {list(DOMAINS)}")
        return cls(
            (int(shape[0]), *(None if s is None else int(s) for s in shape[1:])),  # type: ignore[arg-type]
            None if num_classes is None else int(num_classes),
            vr,  # type: ignore[arg-type]
            domain,
        )

    def check_images(self, images: torch.Tensor, source: str, where: str = "data") -> None:
        """Raises InputError when (N, C, H, W) `images` (in `value_range`) contradict the spec."""
        got = tuple(images.shape[1:])
        want = self.image_shape
        if (
            len(got) != 3
            or got[0] != want[0]
            or any(w is not None and g != w for g, w in zip(got[1:], want[1:]))
        ):
            shown = "x".join("H" if w is None else str(w) for w in want).replace("H", "*")
            raise InputError(
                f"{where}.image_shape={list(want)} but {source} holds images of shape {'x'.join(map(str, got))} "
                f"(expected {shown}); set {where}.image_shape to the data's shape"
            )
        lo, hi = float(images.min()), float(images.max())
        if lo < self.value_range[0] or hi > self.value_range[1]:
            raise InputError(
                f"{where}.value_range={list(self.value_range)} but {source} has pixel values in [{lo:g}, {hi:g}]"
            )

    def check_labels(self, labels: torch.Tensor, source: str, where: str = "data") -> None:
        if self.num_classes is None or len(labels) == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise InputError(
                f"{where}.num_classes={self.num_classes} but {source} has labels {lo}..{hi}; "
                f"expected labels 0..{self.num_classes - 1}"
            )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
