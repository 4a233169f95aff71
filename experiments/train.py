"""`python -m experiments.train experiment=<name> [overrides]`: fit, then test the best (or last) checkpoint.

Resume a run with `hydra.run.dir=<its directory> ckpt_path=last` (or any checkpoint path).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from experiments.callbacks import CheckpointInfo, PerRankSeed
from experiments.checkpoints import check_compatible, model_class_path
from experiments.common import (
    Run,
    best_or_last_checkpoint,
    finish_wandb,
    instantiate_group,
    log,
    split_metrics,
)
from experiments.config import config_path
from experiments.slurm import check_allocation, in_slurm_batch_job
from experiments.sweeps import run_job


def resolve_resume(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` means checkpoints/last.ckpt of this run directory, which must exist."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if str(ckpt) == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last: {path} does not exist. To resume, point hydra.run.dir at the run directory "
                "that holds checkpoints/last.ckpt, or pass ckpt_path=<path to a .ckpt file>."
            )
        return str(path)
    return str(ckpt)


def check_distributed(cfg: DictConfig, multirun: bool) -> None:
    """Refuses DDP set-ups that would silently go wrong, before anything is written."""
    t = cfg.trainer
    check_allocation(t.get("devices", 1), t.get("num_nodes", 1))
    ddp = str(t.get("strategy", "auto")).startswith("ddp") and str(t.get("devices", 1)) not in ("1", "[0]")
    if ddp and multirun and not in_slurm_batch_job():
        raise ValueError(
            "trainer.strategy=ddp inside a local multirun (-m) is not supported: Lightning's launcher re-runs the "
            "command line, i.e. the whole sweep, in every rank. Run the jobs one at a time, or launch the sweep "
            "with hydra/launcher=slurm (one SLURM task per device)."
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, compose data/model/callbacks/loggers/trainer from config, fit, test; returns the test metrics."""
    run = Run(cfg, "train")
    try:
        ckpt_path = resolve_resume(cfg)
        check_distributed(cfg, multirun=run.sweep is not None)
        pl.seed_everything(cfg.seed, workers=True)
        log.info("Instantiating datamodule <%s>", cfg.data._target_)
        datamodule = hydra.utils.instantiate(cfg.data)
        log.info("Instantiating model <%s>", cfg.model._target_)
        model = hydra.utils.instantiate(cfg.model)
        if ckpt_path:
            check_compatible(ckpt_path, model)
            run.info["resumed_from"] = ckpt_path
        info = {
            "model_class": model_class_path(model),
            "experiment": cfg.get("name"),
            "model_config": OmegaConf.to_yaml(cfg.model, resolve=True),
            "data_config": OmegaConf.to_yaml(cfg.data, resolve=True),
        }
        callbacks = [
            *instantiate_group(cfg.get("callbacks"), "callback"),
            CheckpointInfo(info),
            PerRankSeed(cfg.seed),
        ]
        trainer = run.trainer(callbacks, run.loggers())
        metrics: dict[str, float] = {}
        if cfg.get("train", True):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update(split_metrics(trainer.callback_metrics, ("val",)))
        tested = None
        if cfg.get("test", True):
            tested = best_or_last_checkpoint(trainer)
            if tested is None:
                log.warning(
                    "No checkpoint was written (fast_dev_run or checkpointing disabled): testing the current weights."
                )
            trainer.test(model, datamodule=datamodule, ckpt_path=tested, verbose=False)
            metrics.update(split_metrics(trainer.callback_metrics, ("test",)))
        run.finish(trainer, metrics, model, datamodule, tested_checkpoint=tested)
    except BaseException as err:
        run.fail(err)
        finish_wandb(exit_code=1)
        raise
    finish_wandb()
    return metrics


@hydra.main(version_base="1.3", config_path=config_path(), config_name="train")
def main(cfg: DictConfig) -> dict[str, float] | None:
    return run_job(train, cfg)


if __name__ == "__main__":
    main()
