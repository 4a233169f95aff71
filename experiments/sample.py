"""`python -m experiments.sample ckpt_path=<ckpt> sampler=<name> steps=<n> num_samples=<n> seed=<s>
[guidance_scale=<w>] [class_label=<c>] [expensive_metrics=true]`: images from a diffusion checkpoint.

Writes, in a run directory like the other entry points: `samples/grid.png` (the first `grid_size` images),
`samples/images/seed_<seed>.png` (one file per image; `_class<c>` for class-conditional models), and
`metrics.json` with the sampling protocol and, with `expensive_metrics=true` (older spelling `fid.enabled=true`), `test/fid` under the suite's FID
protocol (lit_modules/fid.py; real statistics from the test split of the data the checkpoint was trained on).
Image i has seed `seed + i` and depends only on it. Every bad request fails before any sampling work.
`sweep=ddpm_samplers` runs this over samplers x step counts (Hydra multirun) and writes a table and a plot.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from core.errors import ConfigError
from experiments.checkpoints import CheckpointMismatchError, check_compatible, load_checkpoint
from experiments.cli import entry_point
from experiments.common import Run, log
from experiments.config_checks import check_config
from experiments.sweeps import run_job

DIFFUSION_CLASSES = ("lit_modules.ddpm.DDPM",)


def load_diffusion_model(ckpt_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The DDPM a checkpoint describes (its `suite` record), with the checkpoint's (EMA) weights, in eval mode.
    Raises CheckpointMismatchError for a checkpoint of anything else."""
    ckpt = load_checkpoint(ckpt_path)
    suite = ckpt.get("suite") or {}
    written_by = suite.get("model_class")
    if written_by not in DIFFUSION_CLASSES:
        raise CheckpointMismatchError(
            f"ckpt_path={ckpt_path} is not a diffusion model checkpoint: it was written by "
            f"{written_by or 'an unknown model (no suite record)'} (experiment {suite.get('experiment')!r}). "
            f"experiments.sample needs a checkpoint of {', '.join(DIFFUSION_CLASSES)} "
            "(experiment=ddpm_mnist or ddpm_mnist_cfg)."
        )
    model_cfg = OmegaConf.create(suite["model_config"])
    model_cfg.fid_num_samples = 0  # the FID request of this run comes from the sample config
    model = hydra.utils.instantiate(model_cfg)
    check_compatible(ckpt_path, model)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), suite


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from lit_modules.images import to_uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)


def sample(cfg: DictConfig) -> dict[str, float]:
    # every refusal before the run directory is written and before any sampling work
    check_config(cfg)
    if cfg.get("ckpt_path") is None:
        raise ConfigError("ckpt_path is required: pass ckpt_path=<run dir>/checkpoints/<file>.ckpt")
    for key in ("num_samples", "batch_size", "grid_size", "nrow"):  # steps: the model checks it
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"`{key}={value!r}`: expected a positive integer.")
    model, suite = load_diffusion_model(cfg.ckpt_path)
    model.check_sampling(cfg.sampler, cfg.steps, cfg.get("guidance_scale"), cfg.get("class_label"))
    fid_protocol = None
    if cfg.fid.enabled:
        from lit_modules.fid import FIDProtocol

        fid_protocol = FIDProtocol(
            int(cfg.num_samples),
            cfg.fid.feature,
            bool(cfg.fid.allow_below_minimum),
            keys=("fid.feature", "num_samples", "fid.allow_below_minimum"),
        )
        fid_protocol.check()
    run = Run(cfg, "sample")
    try:
        pl.seed_everything(cfg.seed, workers=True)  # the images use per-image seeds; this only pins the rest
        run.info["checkpoint"] = {"path": str(cfg.ckpt_path), "experiment": suite.get("experiment")}
        device = torch.device(
            "cuda"
            if cfg.device == "auto" and torch.cuda.is_available()
            else ("cpu" if cfg.device == "auto" else cfg.device)
        )
        model.to(device)
        n, seed = int(cfg.num_samples), int(cfg.seed)
        labels = None
        if model.num_classes:
            labels = (
                torch.full((n,), int(cfg.class_label))
                if cfg.get("class_label") is not None
                else model.default_labels(n)
            )
        guidance = cfg.get("guidance_scale")
        sampling = model.sampling_description(
            sampler=cfg.sampler,
            steps=int(cfg.steps),
            eta=float(cfg.eta) if cfg.sampler == "ddim" else None,
            spacing=cfg.spacing,
            clip_x0=bool(cfg.clip_x0),
            guidance_scale=(model.hparams.guidance_scale if guidance is None else float(guidance))
            if model.num_classes
            else None,
            class_label=cfg.get("class_label"),
            seeds=f"{seed}..{seed + n - 1}",
            bf16_autocast=bool(cfg.bf16),
        )
        log.info("Sampling %d images: %s", n, sampling)

        out_dir = run.run_dir / "samples"
        images = []
        start = time.perf_counter()
        batches = range(0, n, int(cfg.batch_size))
        for b in tqdm(
            batches,
            desc=f"{cfg.sampler} {cfg.steps} steps, batches of {cfg.batch_size}",
            disable=len(batches) < 2,
        ):
            seeds = list(range(seed + b, seed + min(b + int(cfg.batch_size), n)))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16)):
                x = model.generate(
                    seeds,
                    sampler=cfg.sampler,
                    steps=int(cfg.steps),
                    eta=float(cfg.eta),
                    spacing=cfg.spacing,
                    guidance_scale=None if guidance is None else float(guidance),
                    class_labels=None if labels is None else labels[b : b + len(seeds)],
                    clip_x0=bool(cfg.clip_x0),
                    progress=True,
                )
            images.append(x.cpu())
        elapsed = time.perf_counter() - start
        images_t = torch.cat(images)
        metrics = {"sample/wall_time_s": elapsed, "sample/images_per_second": n / elapsed}

        from PIL import Image

        from lit_modules.ddpm import samples_figure

        # grid.png: the first grid_size images, labelled (sampler, steps, guidance, weights; seeds per row;
        # one column per class for a conditional model without a fixed class_label)
        grid_n = min(n, int(cfg.grid_size))
        source = f"experiment {suite['experiment']}" if suite.get("experiment") else None
        grid = samples_figure(images_t[:grid_n], sampling, seed, model.num_classes, source, int(cfg.nrow))
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out_dir / "grid.png")
        if cfg.save_individual:
            for i, img in enumerate(images_t):
                suffix = f"_class{int(labels[i])}" if labels is not None else ""
                save_png(img, out_dir / "images" / f"seed_{seed + i:07d}{suffix}.png")

        # sampling fields at the top level, so `experiments.report` can tell a varied switch (sampler, steps)
        # from a protocol difference; the FID entry holds only what defines the FID itself
        protocol: dict[str, Any] = dict(sampling)
        datamodule = None
        if fid_protocol is not None:
            datamodule = hydra.utils.instantiate(OmegaConf.create(suite["data_config"]))
            datamodule.setup("test")
            metric = fid_protocol.metric().to(device)
            real = 0
            for x, _ in datamodule.test_dataloader():
                metric.update(x.to(device), real=True)
                real += len(x)
            fid_protocol.check_real(real)
            for k in range(0, n, 500):
                metric.update(images_t[k : k + 500].to(device), real=False)
            metrics["test/fid"] = float(metric.compute())
            protocol["test/fid"] = fid_protocol.describe(n, real)
        run.finish(
            SimpleNamespace(loggers=[]),
            metrics,
            SimpleNamespace(metric_protocol=lambda: protocol),
            datamodule,
        )
    except BaseException as err:
        run.fail(err)
        raise
    return metrics


@entry_point("sample")
def main(cfg: DictConfig) -> float | None:
    metrics = run_job(sample, cfg)  # in a multirun, a failed job is recorded and the sweep goes on
    return (metrics or {}).get("test/fid")


if __name__ == "__main__":
    main()
