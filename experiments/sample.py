"""`python -m experiments.sample ckpt_path=<ckpt> [sampler=<name>] [steps=<n>] num_samples=<n> seed=<s>
[guidance_scale=<w>] [class_label=<c>] [+sampling.<option>=<value>] [expensive_metrics=true]`: images from the
checkpoint of any generative model of the suite (a `lit_modules.generative.GenerativeModule` subclass: DDPM,
flow matching, ...).

The request is the generic keys (`sampler`, `steps`, `guidance_scale`, `class_label`; null = the checkpoint's
default) plus the `sampling:` block, passed unchanged to the model (`check_sampling`, `generate`), which refuses
a key it does not take. Older top-level spellings of model options (configs/sample.yaml `sampling_aliases`,
e.g. `eta=0.5`) join the block when set.

Writes, in a run directory like the other entry points: `samples/grid.png` (the first `grid_size` images),
`samples/images/seed_<seed>.png` (one file per image; `_class<c>` for class-conditional models), and
`metrics.json` with the sampling protocol and, with `expensive_metrics=true` (older spelling `fid.enabled=true`),
`test/fid` under the suite's FID protocol (lit_modules/fid.py; real statistics from the test split of the data
the checkpoint was trained on), computed by the same function as the test stage's FID
(`lit_modules.generative.fid_of_generated`). Image i has seed `seed + i` and depends only on it. Every bad
request fails before any sampling work. `sweep=ddpm_samplers` runs this over samplers x step counts (Hydra
multirun) and writes a table and a plot.
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
from lit_modules.fid import fid_of_generated
from lit_modules.generative import GENERIC_KEYS, GenerativeModule
from lit_modules.images import samples_figure
from lit_modules.metrics.speckle import background_speckle_pct
from runtime.checkpoints import model_from_checkpoint
from runtime.cli import entry_point
from runtime.config_checks import check_config
from runtime.cpu_features import slow_bf16_warning
from runtime.run import Run, log
from runtime.sweeps import run_job

EXPECTED = (
    "a generative model (a lit_modules.generative.GenerativeModule subclass; e.g. experiment=ddpm_mnist or "
    "ddpm_mnist_cfg)"
)


def load_generative_model(ckpt_path: str | Path) -> tuple[GenerativeModule, dict[str, Any]]:
    """The generative model a checkpoint describes (its `suite` record), with the checkpoint's weights, in
    eval mode, and the suite record. Raises CheckpointMismatchError for a checkpoint of anything else."""
    return model_from_checkpoint(
        ckpt_path,
        accept=lambda cls: isinstance(cls, type) and issubclass(cls, GenerativeModule),
        expected=EXPECTED,
        overrides={"fid_num_samples": 0},  # the FID request of this run comes from the sample config
    )


def sampling_request(cfg: DictConfig) -> dict[str, Any]:
    """The generic keys, the `sampling:` block and the set top-level aliases, as one flat request."""
    block = cfg.get("sampling")
    block = {} if block is None else OmegaConf.to_container(block, resolve=True)
    if not isinstance(block, dict):
        raise ConfigError(f"sampling={block!r}: expected a mapping of sampling options")
    for key in GENERIC_KEYS:
        if key in block:
            raise ConfigError(
                f"sampling.{key}: set {key} at the top level ({key}=...), not in the sampling block"
            )
    request = {key: cfg.get(key) for key in GENERIC_KEYS}
    for key in cfg.get("sampling_aliases") or ():
        value = cfg.get(key)
        if value is None:
            continue
        if block.get(key) is not None and block[key] != value:
            raise ConfigError(f"{key}={value!r} and sampling.{key}={block[key]!r} disagree: set one of them")
        block[key] = value
    request.update(block)
    return request


def check_request(cfg: DictConfig) -> None:
    if cfg.get("ckpt_path") is None:
        raise ConfigError("ckpt_path is required: pass ckpt_path=<run dir>/checkpoints/<file>.ckpt")
    for key in ("num_samples", "batch_size", "grid_size", "nrow"):  # steps: the model checks it
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"`{key}={value!r}`: expected a positive integer.")


def fid_protocol_for(cfg: DictConfig, model: GenerativeModule, suite: dict[str, Any]) -> Any:
    """The FID protocol of this run (None without `fid.enabled`), checked; the domain is the checkpoint's data's."""
    if not cfg.fid.enabled:
        return None
    from lit_modules.fid import FIDProtocol

    data_domain = OmegaConf.create(suite.get("data_config") or {}).get("domain")
    protocol = FIDProtocol(
        int(cfg.num_samples),
        cfg.fid.feature,
        bool(cfg.fid.allow_below_minimum),
        keys=("fid.feature", "num_samples", "fid.allow_below_minimum"),
        domain=model.hparams.get("fid_domain") or data_domain or "mnist",
        domain_key="the checkpoint's data.domain",
    )
    protocol.check()
    return protocol


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def class_labels(model: GenerativeModule, n: int, class_label: Any) -> torch.Tensor | None:
    """One label for all images (`class_label`), else 0..C-1 cycled; None for an unconditional model."""
    if not model.num_classes:
        return None
    return torch.full((n,), int(class_label)) if class_label is not None else model.default_labels(n)


def generate_images(
    model: GenerativeModule, request: dict[str, Any], seeds: list[int], labels: Any, cfg: DictConfig
) -> tuple[torch.Tensor, float]:
    """All images (on the CPU) in batches of `batch_size`, and the wall time it took."""
    device = model.device
    bs = int(cfg.batch_size)
    batches = model.generate_batches(seeds, labels, bs, progress=True, **request)
    desc = f"{request.get('sampler') or 'default sampler'}, batches of {bs}"
    images = []
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16)):
        for x in tqdm(batches, desc=desc, total=-(-len(seeds) // bs), disable=len(seeds) <= bs):
            images.append(x.float().cpu())
    return torch.cat(images), time.perf_counter() - start


def write_images(
    out_dir: Path,
    images: torch.Tensor,
    labels: Any,
    sampling: dict[str, Any],
    model: Any,
    cfg: DictConfig,
    source: Any,
) -> None:
    """grid.png: the first grid_size images, labelled (sampler, steps, guidance, weights; seeds per row; one column
    per class for a conditional model without a fixed class_label); one PNG per image with save_individual."""
    from PIL import Image

    from core.imageops import to_uint8

    seed, grid_n = int(cfg.seed), min(len(images), int(cfg.grid_size))
    grid = samples_figure(
        images[:grid_n], sampling, seed, model.num_classes or 0, source, int(cfg.nrow),
        family=model.family, title_options=model.TITLE_OPTIONS,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out_dir / "grid.png")
    if cfg.save_individual:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            suffix = f"_class{int(labels[i])}" if labels is not None else ""
            Image.fromarray(to_uint8(img)).save(out_dir / "images" / f"seed_{seed + i:07d}{suffix}.png")


def fid_against_test_split(
    protocol: Any, suite: dict[str, Any], images: torch.Tensor, seeds: list[int], device: torch.device
) -> tuple[float, dict[str, Any], Any]:
    """test/fid of `images` against the test split of the checkpoint's data (its own record); the FID loop is
    the test stage's (`fid_of_generated`). Returns (fid, protocol record, the datamodule)."""
    datamodule = hydra.utils.instantiate(OmegaConf.create(suite["data_config"]))
    datamodule.setup("test")
    metric = protocol.metric().to(device)
    for x, _ in datamodule.test_dataloader():
        metric.update(x.to(device), real=True)
    chunks = (images[k : k + 500] for k in range(0, len(images), 500))
    fid, record = fid_of_generated(protocol, metric, chunks, seeds)
    return fid, record, datamodule


def sample(cfg: DictConfig) -> dict[str, float]:
    # every refusal before the run directory is written and before any sampling work
    check_config(cfg)
    check_request(cfg)
    model, suite = load_generative_model(cfg.ckpt_path)
    request = sampling_request(cfg)
    model.check_sampling(**request)
    fid_protocol = fid_protocol_for(cfg, model, suite)
    run = Run(cfg, "sample")
    try:
        pl.seed_everything(cfg.seed, workers=True)  # the images use per-image seeds; this only pins the rest
        run.info["checkpoint"] = {"path": str(cfg.ckpt_path), "experiment": suite.get("experiment")}
        device = pick_device(cfg.device)
        model.to(device)
        slow = slow_bf16_warning("bf16=true", "bf16=false", device) if cfg.bf16 else None
        if slow:
            log.warning(slow)
        n, seed = int(cfg.num_samples), int(cfg.seed)
        seeds = list(range(seed, seed + n))
        labels = class_labels(model, n, request.get("class_label"))
        sampling = model.sampling_description(
            **request, seeds=f"{seed}..{seed + n - 1}", bf16_autocast=bool(cfg.bf16)
        )
        log.info("Sampling %d images: %s", n, sampling)
        images, elapsed = generate_images(model, request, seeds, labels, cfg)
        metrics = {"sample/wall_time_s": elapsed, "sample/images_per_second": n / elapsed}
        if images.shape[1] == 1:  # dark-background single-channel images (MNIST): grainy backgrounds show here
            metrics["sample/background_speckle_pct"] = background_speckle_pct(images)
        source = f"experiment {suite['experiment']}" if suite.get("experiment") else None
        write_images(run.run_dir / "samples", images, labels, sampling, model, cfg, source)
        # sampling fields at the top level, so `experiments.report` can tell a varied switch (sampler, steps)
        # from a protocol difference; the FID entry holds only what defines the FID itself
        protocol: dict[str, Any] = dict(sampling)
        datamodule = None
        if fid_protocol is not None:
            metrics["test/fid"], protocol["test/fid"], datamodule = fid_against_test_split(
                fid_protocol, suite, images, seeds, device
            )
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
