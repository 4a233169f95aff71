"""NeRCo's released checkpoints and inference rules (Yang et al., ICCV 2023, arXiv 2303.11722; the released
code `Ysz2022/NeRCo`): not a Lightning module, plain functions and constants that the `NeRCo` module,
`experiments.enhance` and the benchmarks share.

- Files: a released archive (LOL or LSRW, unpacked) holds `latest_net_{G_A,Pre,H}.pth`, plain state_dicts of
  G_H (netG_A), the NRN (netPre) and the mask extractor (netH): `check_official_dir`,
  `load_official_state_dicts` (strict, `weights_only=True`, every mismatch listed in one
  `OfficialCheckpointError`).
- The released test path: `released_input` (a PIL image -> (1, 3, h', w') in [-1, 1], resized to the nearest
  multiples of 4 as CycleGAN's `__make_power_2` does), `released_enhance` (fake_B = G_H([x, NRN(x)] * mask(x))
  with the NRN's constant coordinates, computed the suite's fast way; step for step as released:
  `lit_modules.nerco_reference`), `released_uint8` (the released `tensor2im`: * 255, truncated).
- Sizes: `INFERENCE_RESIZE` (how sizes that are not multiples of 4 are handled), `MIN_SIDE`, `released_size`,
  and `inference_memory_estimate_mb`, the working-memory model `experiments.enhance` holds to its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import InputError
from lit_modules.nets.nerco import NRN, MaskExtractor

OFFICIAL_FILES = {"G_A": "latest_net_G_A.pth", "Pre": "latest_net_Pre.pth", "H": "latest_net_H.pth"}
# How test/inference handle sizes that are not multiples of 4 (the generators' two stride-2 stages):
INFERENCE_RESIZE = {
    "round_to_4": "resize (bicubic) to the nearest multiples of 4, as the released test code does "
    "(CycleGAN's __make_power_2), and the output back to the input size",
    "pad": "reflection-pad the bottom/right to multiples of 4 and crop the output back (no resampling)",
}
MIN_SIDE = 8  # smallest image side: after the two stride-2 stages the residual blocks reflection-pad by 1


class OfficialCheckpointError(InputError):
    """A released-checkpoint directory that does not hold the three state_dicts the architecture needs."""


# ------------------------------------------------------------------------------------------ sizes
def released_size(height: int, width: int, base: int = 4) -> tuple[int, int]:
    """The released test-time rule `__make_power_2`: round each side to the nearest multiple of `base`
    (Python's round: halves to even)."""
    return int(round(height / base) * base), int(round(width / base) * base)


def inference_memory_estimate_mb(
    height: int,
    width: int,
    chunk_pixels: int | None = 16384,
    coordinates: str | None = "constant",
    ngf: int = 64,
    inference_resize: str = "round_to_4",
) -> float:
    """Estimated working memory (MB) of NeRCo's inference (`NeRCo.enhance`, no autograd) on one image, beyond the
    loaded weights: activations of the NRN trunk, the mask extractor and G_H, ~0.9 KB per pixel at ngf 64,
    plus the NRN's MLP on one band of rows, ~7 KB per pixel of the band (twice that for `liif` coordinates),
    times a 1.25 margin, plus 64 MB. `coordinates=None`: no NRN. Fitted to peak resident-set measurements on
    CPU at 600x400 and 960x720; `python -m experiments.benchmark nerco` prints it beside each measured peak."""
    if inference_resize == "round_to_4":
        th, tw = released_size(height, width)
    else:
        th, tw = height + (-height) % 4, width + (-width) % 4
    th, tw = max(th, 4), max(tw, 4)
    mb = th * tw * 0.9e-3 * (ngf / 64)
    if coordinates is not None:
        rows = th if not chunk_pixels else max(1, min(th, chunk_pixels // tw))
        mb += rows * tw * 7.0e-3 * (2.0 if coordinates == "liif" else 1.0)
    return 1.25 * mb + 64.0


# ------------------------------------------------------------------------------------------ checkpoint files
def _describe_mismatch(fname: str, ours: Mapping[str, Tensor], theirs: Mapping[str, Any]) -> list[str]:
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = sorted(
        k
        for k in set(ours) & set(theirs)
        if torch.is_tensor(theirs[k]) and tuple(theirs[k].shape) != tuple(ours[k].shape)
    )
    lines = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = " ..." if len(keys) > 12 else ""
            lines.append(f"  {fname}: {what} keys ({len(keys)}): {keys[:12]}{more}")
    for k in shapes[:12]:
        lines.append(
            f"  {fname}: {k} has shape {tuple(theirs[k].shape)} in the file, {tuple(ours[k].shape)} in the model"
        )
    if len(shapes) > 12:
        lines.append(f"  {fname}: ... and {len(shapes) - 12} more shape differences")
    return lines


def check_official_dir(ckpt_dir: str | Path, names: list[str]) -> Path:
    """The directory exists and holds the released file of each network in `names` (G_A, Pre, H)."""
    d = Path(ckpt_dir)
    expected = ", ".join(OFFICIAL_FILES[k] for k in names)
    if not d.is_dir():
        raise OfficialCheckpointError(
            f"official_ckpt_dir={d} is not a directory; it must hold {expected} (the released NeRCo archive)"
        )
    missing_files = [OFFICIAL_FILES[k] for k in names if not (d / OFFICIAL_FILES[k]).is_file()]
    if missing_files:
        raise OfficialCheckpointError(
            f"official_ckpt_dir={d} lacks {missing_files}; it must hold {expected} (the released NeRCo archive "
            "for LOL or LSRW, unpacked)"
        )
    return d


def read_state_dict(path: Path, problems: list[str]) -> dict[str, Tensor] | None:
    """A released file as a plain state_dict (a DataParallel `module.` prefix removed), or None with the
    reason added to `problems`."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for non-checkpoints
        problems.append(f"  {path.name}: not a readable PyTorch state_dict ({type(err).__name__}: {err})")
        return None
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        problems.append(f"  {path.name}: not a plain state_dict (a mapping of parameter names to tensors)")
        return None
    if sd and all(k.startswith("module.") for k in sd):  # a DataParallel-wrapped save
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def load_official_state_dicts(ckpt_dir: str | Path, nets: Mapping[str, nn.Module]) -> dict[str, str]:
    """Checks then loads each released file (plain state_dict, `weights_only=True`) into its network with
    `strict=True`. Raises OfficialCheckpointError listing missing files, missing/unexpected keys and shapes.
    Returns network name -> the file loaded."""
    d = check_official_dir(ckpt_dir, list(nets))
    states, problems = {}, []
    for name, net in nets.items():
        path = d / OFFICIAL_FILES[name]
        sd = read_state_dict(path, problems)
        if sd is not None:
            problems += _describe_mismatch(path.name, net.state_dict(), sd)
            states[name] = sd
    if problems:
        raise OfficialCheckpointError(
            f"official_ckpt_dir={d} does not fit the released NeRCo architecture:\n" + "\n".join(problems)
        )
    for name, net in nets.items():
        net.load_state_dict(states[name], strict=True)
    return {name: str(d / OFFICIAL_FILES[name]) for name in nets}


# ------------------------------------------------------------------------------------------ released test path
def released_input(image: Any) -> Tensor:
    """A PIL image -> (1, 3, h', w') in [-1, 1] as the released test loader makes it (`--preprocess none`):
    RGB, resized with PIL bicubic to the nearest multiples of 4 only if needed, ToTensor, Normalize(0.5, 0.5)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    th, tw = released_size(h, w)
    if (th, tw) != (h, w):
        image = image.resize((tw, th), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    arr = arr.float().div(255)  # channel-first in memory, as ToTensor returns it
    return ((arr - 0.5) / 0.5)[None]


@torch.no_grad()
def released_enhance(
    g_a: nn.Module, pre: NRN, h: MaskExtractor, x: Tensor, chunk_pixels: int | None = 16384
) -> Tensor:
    """The released test path on one image (batch 1, H and W multiples of 4): fake_B = G_A([x, Pre(x)] *
    mask(x)) with the NRN's constant coordinates, returned as (fake_B + 1) / 2 in [0, 1]. Computed the suite's
    way (the NRN's four equal ensemble terms once, in chunks of `chunk_pixels`); the released code's own
    sequence of operations is `lit_modules.nerco_reference.released_literal_enhance`."""
    if x.shape[0] != 1:
        raise ValueError(f"the released test path runs batch size 1, got {x.shape[0]}")
    pre_x = pre.mlp(pre.model(x), "constant", chunk_pixels)
    fake_b = g_a(torch.cat([x, pre_x], 1) * h.mask(x))
    return (fake_b + 1) / 2


def released_uint8(image01: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 as the released `tensor2im`: * 255 and truncate (no rounding)."""
    arr = image01[0].detach().cpu().float().numpy().transpose(1, 2, 0) * 255.0
    return arr.astype(np.uint8)
