"""Base class of the restoration models (low-light enhancement, deblurring): one way to test and report.

A subclass produces outputs in its `test_step` and hands them to `score_outputs(batch, {method: output})`.
The base class then
- scores every output against the ground truth with the suite's protocol (`lit_modules.metrics.restoration`)
  and logs `test/<method>/psnr`, `test/<method>/ssim` (or `test/psnr`, `test/ssim` for the single method "");
- keeps one row per image and method (`per_image_rows()`, written by the entry points to
  `<run dir>/per_image.csv`);
- logs a side-by-side PNG for the first `num_side_by_side` test images (`images/test/side_by_side/<image>.png`):
  one row input | outputs... | ground truth, each panel labelled with its method above and its PSNR against
  the ground truth under the protocol below (`side_by_side_figure`), the image name (and group) as title;
- reports `metric_protocol()` (the protocol and what each method is) for metrics.json, and `table_order`
  (row order of the results table the entry points write to `<run dir>/results.md`).

Batches are dicts with the degraded image under `input_key` (default "low"), the ground truth under
`target_key` ("high") and names under `name_key` ("low_name"), in `value_range` ((0, 1) or (-1, 1)).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from core.figures import figure
from core.imageops import check_value_range, to_unit_range
from lit_modules.base import SuiteModule
from lit_modules.images import log_figure, psnr_text
from lit_modules.metrics.restoration import RestorationProtocol, RestorationScores, prepare, psnr_per_image


def image_slug(name: str) -> str:
    """'eval15/low/1.png' -> 'eval15_low_1' (a file-name-safe key for side-by-side images)."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "image"


def psnr_caption(values: torch.Tensor | None, i: int) -> str | None:
    """'PSNR 24.31 dB' for image i of (B,) PSNR values; None without values."""
    return None if values is None else psnr_text(float(values[i]))


def side_by_side_figure(panels: list[tuple[str, torch.Tensor, str | None]], title: str) -> np.ndarray:
    """One row of panels (label, (C, H, W) image in [0, 1], caption or None): the label above each panel,
    the caption (its PSNR against the ground truth) under it, `title` above all. Panels smaller than 128 px
    are enlarged by an integer factor (pixels kept exact), so the labels fit."""
    return figure(
        [p[1].detach().float().clamp(0, 1).cpu() for p in panels],
        len(panels),
        min_size=128,
        title=title,
        col_labels=[p[0] for p in panels],
        captions=[p[2] for p in panels],
    )


class RestorationModule(SuiteModule):
    output_label = "output"  # the panel label of the single method "" (subclasses name their model)

    def __init__(
        self,
        value_range: Any = (0.0, 1.0),
        protocol: dict[str, Any] | None = None,
        num_side_by_side: int = 4,
        input_key: str = "low",
        target_key: str = "high",
        name_key: str = "low_name",
    ):
        super().__init__()
        # plain containers: the configs that build restoration models set Hydra's `_convert_: all`
        self.value_range = check_value_range(value_range)
        self.protocol = RestorationProtocol.from_config(protocol)
        self.test_scores = RestorationScores(self.protocol, "test")
        self.num_side_by_side = num_side_by_side
        self.input_key, self.target_key, self.name_key = input_key, target_key, name_key
        self._side_by_side_logged: dict[str, int] = {}
        self._rows: list[dict[str, Any]] = []

    @property
    def needs_checkpoint(self) -> bool:
        return False if not any(True for _ in self.parameters()) else super().needs_checkpoint

    # ------------------------------------------------------------------ scoring
    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """Images in this module's value range -> [0, 1]."""
        return to_unit_range(x, self.value_range)

    def score_outputs(
        self,
        batch: dict[str, Any],
        outputs: dict[str, torch.Tensor] | torch.Tensor,
        panels_before: dict[str, torch.Tensor] | None = None,
        group: str = "",
        method_extra: dict[str, dict[str, Any]] | None = None,
        **row_extra: Any,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Scores `outputs` ({method: (B, C, H, W)} in the module's value range, or one tensor for method "")
        against `batch[target_key]`; returns {method: {"psnr": (B,), "ssim": (B,)}}.

        `row_extra` values (scalars, (B,) tensors or length-B lists) go into every per-image row,
        `method_extra[method]` into that method's rows only. Side-by-side images are counted per `group`
        (a sweep logs `num_side_by_side` images for each setting)."""
        if torch.is_tensor(outputs):
            outputs = {"": outputs}
        target = self.unit(batch[self.target_key])
        names = list(batch[self.name_key])
        values = {}
        for method, out in outputs.items():
            extra = {**row_extra, **((method_extra or {}).get(method) or {})}
            values[method] = self.test_scores.update(method, self.unit(out), target, names, **extra)
        self.test_scores.log(self)
        psnr = {method: v["psnr"] for method, v in values.items()}
        self._log_side_by_side(batch, outputs, panels_before or {}, names, group, psnr)
        return values

    def _log_side_by_side(
        self,
        batch: dict[str, Any],
        outputs: dict[str, torch.Tensor],
        panels_before: dict[str, torch.Tensor],
        names: list[str],
        group: str = "",
        psnr: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """One labelled figure per image (`side_by_side_figure`), the first `num_side_by_side` per group."""
        if self._side_by_side_logged.get(group, 0) >= self.num_side_by_side:
            return
        low, high = self.unit(batch[self.input_key]), self.unit(batch[self.target_key])
        titles = [self.input_key, *panels_before, *(m or "output" for m in outputs), self.target_key]
        before = {k: self.unit(p) for k, p in panels_before.items()}
        outs = {m: self.unit(o) for m, o in outputs.items()}
        # PSNR of every panel against the ground truth, as the methods are scored (protocol)
        psnr = dict(psnr or {})
        psnr_low = self.panel_psnr(low, high)
        psnr_before = {k: self.panel_psnr(p, high) for k, p in before.items()}
        for i, name in enumerate(names):
            if self._side_by_side_logged.get(group, 0) >= self.num_side_by_side:
                break
            panels = [(f"{self.input_key} (input)", low[i], psnr_caption(psnr_low, i))]
            panels += [(k, p[i], psnr_caption(psnr_before[k], i)) for k, p in before.items()]
            panels += [
                (self.method_label(m, group), o[i], psnr_caption(psnr.get(m), i)) for m, o in outs.items()
            ]
            panels.append((f"{self.target_key} (ground truth)", high[i], "reference"))
            where = f"{name}, {group}" if group and group not in name else name
            title = f"{where}: PSNR of each panel against the ground truth"
            log_figure(
                self,
                f"test/side_by_side/{image_slug(name)}",
                side_by_side_figure(panels, title),
                caption=f"{name}: " + " | ".join(titles),
            )
            self._side_by_side_logged[group] = self._side_by_side_logged.get(group, 0) + 1

    def method_label(self, method: str, group: str = "") -> str:
        """The panel label of a method: its name without the group prefix (`<setting>/<method>` ->
        `<method>`); the single method "" is `output_label`."""
        if group and method.startswith(f"{group}/"):
            method = method[len(group) + 1 :]
        return method or self.output_label

    def panel_psnr(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """(B,) PSNR in dB of [0, 1] images against the ground truth under this module's protocol (clipping,
        GT-mean, colour, border crop, as the methods are scored); None where the sizes differ."""
        if pred.shape != target.shape:
            return None
        x, y = prepare(pred, target, self.protocol)
        return psnr_per_image(x, y, self.protocol.data_range)

    # ------------------------------------------------------------------ hooks and reports
    def on_test_epoch_start(self) -> None:
        self.test_scores.reset_rows()
        self._side_by_side_logged = {}

    def on_test_epoch_end(self) -> None:
        self._rows = self.test_scores.gather_rows()

    def per_image_rows(self) -> list[dict[str, Any]]:
        """One dict per (image, method): image, method, psnr, ssim, and any extras (entry points write the CSV)."""
        return list(self._rows)

    @property
    def table_order(self) -> list[str]:
        """Row keys of the results table (the `<method>` part of `test/<method>/<metric>`), in display order."""
        return list(self.test_scores.order)

    def method_descriptions(self) -> dict[str, str]:
        return {}

    def metric_protocol(self) -> dict[str, Any]:
        out: dict[str, Any] = {"restoration": self.protocol.describe()}
        methods = self.method_descriptions()
        if methods:
            out["methods"] = methods
        return out
