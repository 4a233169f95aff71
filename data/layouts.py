"""The folder layouts of the paired low-light data sets (LOL: Wei et al. 2018; LOL-v2: Yang et al. 2021;
LSRW: Hai et al. 2023), as data.

A layout maps each split to one or more (low folder, high folder) pairs relative to the data set root.
Pairs are matched by file name inside each folder pair (see `data.lowlight.pairing.pair_key`); the folder pair is
part of an image's name, so LSRW's Huawei and Nikon images may share file names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ConfigError


@dataclass(frozen=True)
class FolderPair:
    low: str  # relative to the data set root
    high: str
    group: str = ""  # a label for reports and subset selection (LSRW: "Huawei" / "Nikon")


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    default_dir: str  # folder name under paths.data_dir
    splits: dict[str, tuple[FolderPair, ...]]
    # how the synthetic generator names files in this layout (LOL-v2 Real_captured: low00001 / normal00001)
    low_prefix: str = ""
    high_prefix: str = ""
    extension: str = ".png"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def expected(self, groups: tuple[str, ...] | None = None) -> str:
        """The expected layout, for error messages."""
        lines = [f"expected layout of {self.title} under the data set root:"]
        for split, pairs in self.splits.items():
            for fp in pairs:
                if groups and fp.group and fp.group not in groups:
                    continue
                lines.append(f"  {fp.low}/  and  {fp.high}/   ({split}; matching file names)")
        return "\n".join(lines)


LAYOUTS: dict[str, Layout] = {
    "lol": Layout(
        name="lol",
        title="LOL (v1, Wei et al. 2018)",
        default_dir="LOL",
        splits={
            "train": (FolderPair("our485/low", "our485/high"),),
            "test": (FolderPair("eval15/low", "eval15/high"),),
        },
        notes=("485 train / 15 test pairs of 600x400 PNG",),
    ),
    "lolv2_real": Layout(
        name="lolv2_real",
        title="LOL-v2 Real_captured",
        default_dir="LOL-v2",
        splits={
            "train": (FolderPair("Real_captured/Train/Low", "Real_captured/Train/Normal"),),
            "test": (FolderPair("Real_captured/Test/Low", "Real_captured/Test/Normal"),),
        },
        low_prefix="low",
        high_prefix="normal",
        notes=("689 train / 100 test pairs of 600x400; files low00001.png pair with normal00001.png",),
    ),
    "lolv2_synthetic": Layout(
        name="lolv2_synthetic",
        title="LOL-v2 Synthetic",
        default_dir="LOL-v2",
        splits={
            "train": (FolderPair("Synthetic/Train/Low", "Synthetic/Train/Normal"),),
            "test": (FolderPair("Synthetic/Test/Low", "Synthetic/Test/Normal"),),
        },
        notes=("384x384 images",),
    ),
    "lsrw": Layout(
        name="lsrw",
        title="LSRW (Hai et al., R2RNet)",
        default_dir="LSRW",
        splits={
            "train": (
                FolderPair("Training data/Huawei/low", "Training data/Huawei/high", "Huawei"),
                FolderPair("Training data/Nikon/low", "Training data/Nikon/high", "Nikon"),
            ),
            "test": (
                FolderPair("Eval/Huawei/low", "Eval/Huawei/high", "Huawei"),
                FolderPair("Eval/Nikon/low", "Eval/Nikon/high", "Nikon"),
            ),
        },
        extension=".jpg",
        notes=("JPG; some outdoor pairs are not pixel-aligned",),
    ),
}
LSRW_GROUPS = ("Huawei", "Nikon")


def folder_layout(
    train_low: str | None, train_high: str | None, test_low: str | None, test_high: str | None
) -> Layout:
    """Any folder pair given by paths (absolute, or relative to the data set root). A split whose two
    folders are both null is absent (e.g. test folders only, for evaluation)."""
    splits = {}
    for split, low, high in (("train", train_low, train_high), ("test", test_low, test_high)):
        if low is None and high is None:
            continue
        if low is None or high is None:
            raise ConfigError(
                f"data.folders: {split}_low and {split}_high must both be set or both be null (got {low!r}, {high!r})"
            )
        splits[split] = (FolderPair(str(low), str(high)),)
    if not splits:
        raise ConfigError(
            "data.dataset=folder needs data.folders.{train,test}_{low,high} (at least one split)"
        )
    return Layout(name="folder", title="a folder pair given by paths", default_dir="", splits=splits)


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ConfigError(f"data.dataset={name!r} is not one of {[*LAYOUTS, 'folder']}")
    return LAYOUTS[name]
