"""From the scanned pairs to the datasets of each split: a seeded validation hold-out, and for
`mode=unpaired` the trainA (low) and trainB (normal-light) lists (NeRCo's unpaired training data, Yang et
al., ICCV 2023):

- `high_from=train`: trainB = every training high image (so each A image's own partner is among them);
- `high_from=disjoint`: the training pairs split in two halves by a permutation seeded by `unpaired.seed`,
  A from one and B from the other, so no A image's own partner is in B;
- `high_from=folder`: trainB = every image of `unpaired.high_dir`;
then optionally a seeded random subset of `unpaired.num_high` images of trainB.
Validation and test stay paired, without random crops or flips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import ConfigError, MissingFileError
from data.images import IMAGE_EXTENSIONS, list_images
from data.lowlight.pairing import EmptySplitError, ImageRef, Pair, SplitScan
from data.lowlight.sampler import LowLightPairs
from data.lowlight.settings import LowLightSettings, UnpairedSettings
from data.transforms import PairTransform


def hold_out(pairs: list[Pair], val_size: int, split_seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, validation pairs): `val_size` pairs drawn by a permutation seeded by `split_seed`,
    both lists in their original order."""
    if not val_size:
        return pairs, []
    if val_size >= len(pairs):
        raise ConfigError(f"data.val_size={val_size} is not smaller than the {len(pairs)} training pairs")
    perm = np.random.default_rng(split_seed).permutation(len(pairs))
    return [pairs[i] for i in sorted(perm[val_size:])], [pairs[i] for i in sorted(perm[:val_size])]


def folder_highs(high_dir: str | None) -> list[ImageRef]:
    """trainB of `high_from=folder`: every image of the folder (headers read, so broken files fail here)."""
    if not high_dir:
        raise ConfigError("data.unpaired.high_from=folder needs data.unpaired.high_dir")
    d = Path(high_dir).expanduser()
    if not d.is_dir():
        raise MissingFileError(f"data.unpaired.high_dir={d} does not exist (a folder of normal-light images)")
    images, _ = list_images(d)
    if not images:
        raise EmptySplitError(f"data.unpaired.high_dir={d} holds no images (extensions {IMAGE_EXTENSIONS})")
    highs = [ImageRef(str(p), path=p) for p in images]
    for ref in highs:
        ref.header()
    return highs


def unpaired_lists(pairs: list[Pair], u: UnpairedSettings) -> tuple[list[ImageRef], list[ImageRef]]:
    """trainA (low) and trainB (normal-light) of unpaired training (module docstring)."""
    rng = np.random.default_rng(u.seed)
    lows = [p.low for p in pairs]
    if u.high_from == "train":
        highs = [p.high for p in pairs]
    elif u.high_from == "disjoint":
        if len(pairs) < 2:
            raise ConfigError("data.unpaired.high_from=disjoint needs at least 2 training pairs")
        perm = rng.permutation(len(pairs))
        half = len(pairs) // 2
        lows = [pairs[i].low for i in sorted(perm[half:])]
        highs = [pairs[i].high for i in sorted(perm[:half])]
    else:
        highs = folder_highs(u.high_dir)
    if u.num_high is not None:
        if not 0 < u.num_high <= len(highs):
            raise ConfigError(
                f"data.unpaired.num_high={u.num_high} must be in 1..{len(highs)} (the available normal-light images)"
            )
        pick = sorted(rng.choice(len(highs), size=u.num_high, replace=False).tolist())
        highs = [highs[i] for i in pick]
    return lows, highs


def build_splits(
    scans: dict[str, SplitScan], s: LowLightSettings, train: PairTransform, evaluation: PairTransform
) -> dict[str, LowLightPairs]:
    """The datasets `train` (if the layout has training pairs), `val` (if `val_size`) and `test`."""
    nr, out = s.non_rgb, {}
    train_pairs = list(scans["train"].pairs) if "train" in scans else []
    train_pairs, val_pairs = hold_out(train_pairs, s.val_size, s.split_seed)
    if train_pairs and s.mode == "paired":
        out["train"] = LowLightPairs.paired(train_pairs, train, s.item_augment_seed, nr)
    elif train_pairs:
        lows, highs = unpaired_lists(train_pairs, s.unpaired)
        out["train"] = LowLightPairs(lows, highs, train, s.item_augment_seed, nr)
    if val_pairs:
        out["val"] = LowLightPairs.paired(val_pairs, evaluation, 0, nr)
    out["test"] = LowLightPairs.paired(scans["test"].pairs, evaluation, 0, nr)
    return out
