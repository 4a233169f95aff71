"""Paired low-light data (LOL, LOL-v2, LSRW, any folder pair) as a LightningDataModule, paired or unpaired.

Sources (`data.source`):
- `synthetic` (default, offline): a synthetic folder in the chosen data set's layout, generated once into
  `paths.cache_dir` by `data.synthetic` and then read by the same code as the real data set. Labelled
  synthetic everywhere; `describe()["comparable_with_papers"]` is False.
- `local`: the real data set in its standard layout under `data.path` (`data.layouts` lists the layouts).
- `hf`: a Hugging Face data set (`data.lowlight.hub`), a local folder or a hub id; its images go through
  the same pairing code.

Pairing (`data.lowlight.pairing`): within each (low folder, high folder) of a split, images pair by file
name, ignoring the extension and a leading `low` / `normal` / `high` token. Any image without a partner, on
either side, is an error listing the names.

Modes (`data.mode`):
- `paired`: training items are aligned pairs; the random crop/flip is the same on both sides.
- `unpaired` (NeRCo's trainA/trainB, Yang et al., ICCV 2023): trainA = the low images of the training
  split, trainB = normal-light images (`data.unpaired.high_from`, `data.lowlight.splits`), drawn uniformly
  with replacement (`data.lowlight.sampler`). Crops and flips are drawn independently for A and B.
  Validation and test stay paired.

Randomness: what a sample looks like depends only on the seeds and its place in the epoch, never on the
number of workers, the batch size or the global RNG (exact resume, DDP; `data.lowlight.sampler`).

Items are dicts: `low`, `high` (float (3, H, W) in `value_range`), `low_name`, `high_name` (paths relative to
the data set root). Test/val items are at full resolution (or `eval_resize`), so the declared `image_shape`
is [3, null, null] (`data.lowlight.settings`); use `core.imageops.pad_to_multiple` / `crop_to` around a
network that needs sizes divisible by N.

Bad data fails in `setup()` with the files and the expected layout named: missing folders
(FileNotFoundError), unmatched names or duplicate keys (PairingError), an empty split (EmptySplitError),
unreadable image headers (ImageReadError), low/high size mismatches (PairSizeError), non-RGB or 16-bit
images (converted to 8-bit RGB with one warning naming each file and what is done to it, or NonRGBImageError
for a non-RGB mode with `non_rgb=error`); a training crop larger than a training image fails when the
training loader is made. Truncated pixel data is found by `check(full=True)` (`python -m experiments.prepare`)
or when the image is loaded.

Files: `settings` (every option, checked), `pairing`, `folders` (local folders), `hub` (Hugging Face),
`splits` (validation hold-out, trainA/trainB), `sampler` (training order and items), `report` (`check()`),
`module` (the DataModule). Everything is re-exported here: `data.lowlight.LowLightDataModule` is the
`_target_` of configs/data/lol.yaml and of the records in older checkpoints.
"""

from data.images import ImageReadError, NonRGBImageError
from data.layouts import LAYOUTS, LSRW_GROUPS, FolderPair, Layout, folder_layout, get_layout
from data.lowlight.folders import check_headers, check_pixels, scan_folder_pairs
from data.lowlight.hub import (
    HF_COLUMN_CANDIDATES,
    find_layout_root,
    read_hf_tables,
    resolve_hf_path,
    scan_hf,
)
from data.lowlight.module import LowLightDataModule, check_crop_fits
from data.lowlight.pairing import (
    DEFAULT_PREFIXES,
    EmptySplitError,
    ImageRef,
    Pair,
    PairingError,
    PairSizeError,
    Problem,
    SplitScan,
    match_by_name,
    pair_key,
    raise_problems,
)
from data.lowlight.report import CheckReport
from data.lowlight.sampler import DrawSampler, LowLightPairs, decode_draw
from data.lowlight.settings import (
    CHECKS,
    DOMAIN,
    HIGH_FROM,
    MODES,
    SOURCES,
    LowLightSettings,
    UnpairedSettings,
)
from data.lowlight.splits import build_splits, hold_out, unpaired_lists

__all__ = [
    "CHECKS",
    "DEFAULT_PREFIXES",
    "DOMAIN",
    "HF_COLUMN_CANDIDATES",
    "HIGH_FROM",
    "LAYOUTS",
    "LSRW_GROUPS",
    "MODES",
    "SOURCES",
    "CheckReport",
    "DrawSampler",
    "EmptySplitError",
    "FolderPair",
    "ImageReadError",
    "ImageRef",
    "Layout",
    "LowLightDataModule",
    "LowLightPairs",
    "LowLightSettings",
    "NonRGBImageError",
    "Pair",
    "PairSizeError",
    "PairingError",
    "Problem",
    "SplitScan",
    "UnpairedSettings",
    "build_splits",
    "check_crop_fits",
    "check_headers",
    "check_pixels",
    "decode_draw",
    "find_layout_root",
    "folder_layout",
    "get_layout",
    "hold_out",
    "match_by_name",
    "pair_key",
    "raise_problems",
    "read_hf_tables",
    "resolve_hf_path",
    "scan_folder_pairs",
    "scan_hf",
    "unpaired_lists",
]
