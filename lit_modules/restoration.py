"""Base class of the restoration models (low-light enhancement, deblurring): one way to test and report.

A subclass produces outputs in its `test_step` and hands them to `score_outputs(batch, {method: output})`.
The base class then
- scores every output against the ground truth with the suite's protocol (`lit_modules.metrics.restoration`)
  and logs `test/<method>/psnr`, `test/<method>/ssim` (or `test/psnr`, `test/ssim` for the single method "");
- keeps one row per image and method (`per_image_rows()`, written by the entry points to
  `<run dir>/per_image.csv`);
- logs a side-by-side PNG (input | outputs... | ground truth) for the first `num_side_by_side` test images
  (`images/test/side_by_side/<image>.png`);
- reports `metric_protocol()` (the protocol and what each method is) for metrics.json, and `table_order`
  (row order of the results table the entry points write to `<run dir>/results.md`).

Batches are dicts with the degraded image under `input_key` (default "low"), the ground truth under
`target_key` ("high") and names under `name_key` ("low_name"), in `value_range` ((0, 1) or (-1, 1)).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from data.transforms import check_value_range
from lit_modules.base import SuiteModule
from lit_modules.imageops import to_unit_range
from lit_modules.metrics.restoration import RestorationProtocol, RestorationScores


def image_slug(name: str) -> str:
    """'eval15/low/1.png' -> 'eval15_low_1' (a file-name-safe key for side-by-side images)."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "image"


class RestorationModule(SuiteModule):
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
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(protocol, DictConfig):
            protocol = OmegaConf.to_container(protocol, resolve=True)
        if isinstance(value_range, ListConfig):
            value_range = OmegaConf.to_container(value_range, resolve=True)
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
        self._log_side_by_side(batch, outputs, panels_before or {}, names, group)
        return values

    def _log_side_by_side(
        self,
        batch: dict[str, Any],
        outputs: dict[str, torch.Tensor],
        panels_before: dict[str, torch.Tensor],
        names: list[str],
        group: str = "",
    ) -> None:
        if self._side_by_side_logged.get(group, 0) >= self.num_side_by_side:
            return
        low, high = self.unit(batch[self.input_key]), self.unit(batch[self.target_key])
        titles = [self.input_key, *panels_before, *(m or "output" for m in outputs), self.target_key]
        for i, name in enumerate(names):
            if self._side_by_side_logged.get(group, 0) >= self.num_side_by_side:
                break
            row = [low[i], *(self.unit(p[i]) for p in panels_before.values())]
            row += [self.unit(o[i]) for o in outputs.values()] + [high[i]]
            row = [p.expand(3, *p.shape[-2:]) if p.shape[0] == 1 else p for p in row]
            self.log_image_grid(
                f"test/side_by_side/{image_slug(name)}",
                torch.stack([p.clamp(0, 1) for p in row]),
                nrow=len(row),
                caption=f"{name}: " + " | ".join(titles),
            )
            self._side_by_side_logged[group] = self._side_by_side_logged.get(group, 0) + 1

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
