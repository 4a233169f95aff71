"""Classical deblurring (Gonzalez & Woods, Digital Image Processing, ch. 5): inverse, Wiener and constrained least squares filters as a non-trainable
LightningModule, scored with the suite's PSNR/SSIM protocol over a sweep of blurs and noise levels.

Methods (`methods`: name -> {kind, options}; the filters are `lit_modules.deconv`, the degradation model
`core.degradation`):
- `degraded`: g itself (the floor);
- `inverse`: G / H (`cutoff`: radially limited to cutoff * 0.5 cycles/pixel; `eps`: 0 where |H| < eps);
- `wiener`: constant K; `wiener_oracle`: K(u, v) = M N sigma^2 / |F(u, v)|^2 from the clean image (an oracle);
- `cls`: fixed gamma; `cls_auto`: gamma from the noise mean and variance so that ||r||^2 = ||eta||^2 +- a.
All filters know the PSF and subtract the known noise mean (lit_modules/deconv.py); they run in float64 on the
batch's device with the configured `boundary` handling. Outputs are not clipped (the protocol clips to [0, 1]).

Metric keys: `test/<setting>/<method>/{psnr,ssim}` per setting (`<blur>_<noise>`) and `test/<method>/...`
over all settings; per-image rows add the setting, the filter time, and for `cls_auto` the gamma found, the
residual, the target and the number of search iterations (each search is logged, see `log_every_search`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from core.errors import ConfigError
from lit_modules import deconv
from lit_modules.restoration import RestorationModule

log = logging.getLogger(__name__)

KINDS = ("degraded", "inverse", "wiener", "wiener_oracle", "cls", "cls_auto")
DEFAULT_METHODS = {
    "degraded": {"kind": "degraded"},
    "inverse": {"kind": "inverse"},
    "inverse_cutoff": {"kind": "inverse", "cutoff": 0.3},
    "wiener": {"kind": "wiener", "k": 1e-3},
    "wiener_oracle": {"kind": "wiener_oracle"},
    "cls_auto": {"kind": "cls_auto", "rel_tol": 1e-3},
}


class ClassicalDeblur(RestorationModule):
    def __init__(
        self,
        methods: dict[str, dict[str, Any]] | None = None,
        boundary: str = "circular",
        pad: int | None = None,
        compute_dtype: str = "float64",
        protocol: dict[str, Any] | None = None,
        num_side_by_side: int = 1,
        log_every_search: bool = False,
    ):
        super().__init__(value_range=(0.0, 1.0), protocol=protocol, num_side_by_side=num_side_by_side)
        # plain dicts: the config that builds this sets Hydra's `_convert_: all` (configs/model/cls_deblur.yaml)
        methods = dict(methods if methods is not None else DEFAULT_METHODS)
        for name, spec in methods.items():
            kind = (spec or {}).get("kind")
            if kind not in KINDS:
                raise ConfigError(f"model.methods.{name}: kind {kind!r} is not one of {KINDS}")
            if "/" in name:
                raise ConfigError(f"model.methods.{name}: method names must not contain '/'")
        if not methods:
            raise ConfigError("model.methods is empty")
        if boundary not in deconv.BOUNDARIES:
            raise ConfigError(f"model.boundary={boundary!r} is not one of {deconv.BOUNDARIES}")
        self.methods = {name: dict(spec) for name, spec in methods.items()}
        self.boundary, self.pad = boundary, pad
        self.dtype_ = getattr(torch, compute_dtype)
        self.log_every_search = log_every_search
        self._settings: list[str] = []
        self._searches_logged: set[str] = set()
        self.save_hyperparameters()

    # ------------------------------------------------------------------ the filters
    def restore(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
        """{method: f_hat (B, C, H, W) in compute dtype} and per-method row extras for one batch."""
        dt = self.dtype_
        g, f, psf = batch["low"].to(dt), batch["high"].to(dt), batch["psf"].to(dt)
        m = torch.as_tensor(batch["noise_mean"], dtype=dt, device=g.device)
        v = torch.as_tensor(batch["noise_var"], dtype=dt, device=g.device)
        common = {"noise_mean": m, "boundary": self.boundary, "pad": self.pad}
        outputs, extras = {}, {}
        for name, spec in self.methods.items():
            opts = {k: val for k, val in spec.items() if k != "kind"}
            kind = spec["kind"]
            start = time.perf_counter()
            extra: dict[str, Any] = {}
            if kind == "degraded":
                out = g
            elif kind == "inverse":
                out = deconv.inverse_filter(g, psf, **opts, **common)
            elif kind == "wiener":
                out = deconv.wiener_filter(g, psf, k=opts.get("k", 1e-3), **common)
            elif kind == "wiener_oracle":
                nsr = deconv.oracle_nsr(f, v, self.boundary, self.pad, psf)
                out = deconv.wiener_filter(g, psf, k=nsr, **common)
            elif kind == "cls":
                out = deconv.cls_filter(g, psf, gamma=opts["gamma"], **common)
                extra["gamma"] = float(opts["gamma"])
            else:
                out, search = deconv.cls_auto(g, psf, m, v, **opts, boundary=self.boundary, pad=self.pad)
                extra = {
                    "gamma": search.gamma,
                    "residual": search.residual,
                    "residual_target": search.target,
                    "converged": search.converged.to(torch.float64),
                    "search_iterations": search.iterations,
                }
                self._log_search(batch, name, search)
            if out.device.type == "cuda":
                torch.cuda.synchronize(out.device)
            extra["seconds_per_image"] = (time.perf_counter() - start) / g.shape[0]
            outputs[name], extras[name] = out, extra
        return outputs, extras

    def _log_search(self, batch: dict[str, Any], method: str, search: deconv.GammaSearch) -> None:
        """Every search: one INFO line per image; every iteration of the first search per setting (or of all
        searches with `log_every_search`) at INFO, the rest at DEBUG."""
        names = list(batch["low_name"])
        first = [s for s in batch["setting"] if s not in self._searches_logged]
        verbose = self.log_every_search or bool(first)
        self._searches_logged.update(batch["setting"])
        level = logging.INFO if verbose else logging.DEBUG
        for entry in search.trace:
            log.log(
                level,
                "%s gamma search [%s] iteration %d (%s): gamma=%s ||r||^2=%s target=%s",
                method,
                ", ".join(names),
                entry["iteration"],
                entry["step"],
                [f"{x:.4g}" for x in entry["gamma"]],
                [f"{x:.6g}" for x in entry["residual"]],
                [f"{x:.6g}" for x in search.target.tolist()],
            )
        for i, name in enumerate(names):
            log.info(
                "%s %s: gamma=%.4g after %d iterations, ||r||^2=%.6g, ||eta||^2=%.6g +- %.3g, converged=%s",
                method,
                name,
                search.gamma[i].item(),
                search.iterations,
                search.residual[i].item(),
                search.target[i].item(),
                search.tolerance[i].item(),
                bool(search.converged[i]),
            )

    # ------------------------------------------------------------------ test
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs, extras = self.restore(batch)
        target = batch["high"]
        settings = list(batch["setting"])
        for s in dict.fromkeys(settings):
            if s not in self._settings:
                self._settings.append(s)
            idx = [i for i, x in enumerate(settings) if x == s]
            sub = {k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx]) for k, v in batch.items()}
            sub_out = {f"{s}/{m}": out[idx].to(target.dtype) for m, out in outputs.items()}
            sub_extra = {f"{s}/{m}": {k: _select(v, idx) for k, v in ex.items()} for m, ex in extras.items()}
            values = self.score_outputs(sub, sub_out, group=s, method_extra=sub_extra, setting=s)
            for m in outputs:  # the aggregate over all settings, from the same per-image numbers
                self.test_scores.update(
                    m, sub_out[f"{s}/{m}"], sub["high"], [], rows=False, values=values[f"{s}/{m}"]
                )

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._searches_logged = set()

    @property
    def table_order(self) -> list[str]:
        return [f"{s}/{m}" for s in self._settings for m in self.methods] + list(self.methods)

    def method_descriptions(self) -> dict[str, str]:
        text = {
            "degraded": "the degraded image g",
            "inverse": "G/H (0 where |H| < eps; radially limited with cutoff)",
            "wiener": "H* G / (|H|^2 + K), constant K",
            "wiener_oracle": "H* G / (|H|^2 + M N sigma^2 / |F|^2): oracle NSR from the clean image",
            "cls": "H* G / (|H|^2 + gamma |P|^2), fixed gamma, P = Laplacian",
            "cls_auto": "CLS with gamma from the noise mean/variance: ||r||^2 = ||eta||^2 +- a (bisection on log gamma)",
        }
        out = {}
        for name, spec in self.methods.items():
            opts = {k: v for k, v in spec.items() if k != "kind"}
            out[name] = text[spec["kind"]] + (f" {opts}" if opts else "")
        pad = f", reflection padding of {self.pad if self.pad is not None else '2 x PSF size'} px"
        out["boundary"] = (
            f"{self.boundary}{pad if self.boundary == 'reflect' else ''}; the known noise mean is subtracted "
            f"from g before filtering; {self.dtype_}"
        )
        return out

    def metric_protocol(self) -> dict[str, Any]:
        out = super().metric_protocol()
        out["keys"] = (
            "test/<blur>_<noise>/<method>/{psnr,ssim} per setting; test/<method>/{psnr,ssim} over all settings"
        )
        return out


def _select(value: Any, idx: list[int]) -> Any:
    if torch.is_tensor(value) and value.ndim:
        return value[idx]
    return value
