"""`python -m experiments.evaluate experiment=<name> ckpt_path=<path> [overrides]`: seeded, test only.

Non-trainable models (classical baselines, CLS) and models that load their own released weights need no
checkpoint; every other model refuses to run without one rather than report numbers of random weights.
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from experiments.checkpoints import check_compatible
from experiments.common import Run, finish_wandb, instantiate_group, log, split_metrics
from experiments.config import config_path
from experiments.sweeps import run_job


def evaluate(cfg: DictConfig) -> dict[str, float]:
    run = Run(cfg, "evaluate")
    try:
        pl.seed_everything(cfg.seed, workers=True)
        log.info("Instantiating datamodule <%s>", cfg.data._target_)
        datamodule = hydra.utils.instantiate(cfg.data)
        log.info("Instantiating model <%s>", cfg.model._target_)
        model = hydra.utils.instantiate(cfg.model)
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path:
            run.info["checkpoint"] = {"path": str(ckpt_path), **check_compatible(ckpt_path, model)}
        elif getattr(model, "needs_checkpoint", False):
            raise ValueError(
                f"ckpt_path is required to evaluate {type(model).__name__} (experiment {cfg.get('name')!r}): "
                "pass ckpt_path=<run dir>/checkpoints/<file>.ckpt"
            )
        trainer = run.trainer(instantiate_group(cfg.get("callbacks"), "callback"), run.loggers())
        pl.seed_everything(
            cfg.seed, workers=True, verbose=False
        )  # the test draws the same noise however fit ran
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics = split_metrics(trainer.callback_metrics, ("test",))
        run.finish(trainer, metrics, model, datamodule)
    except BaseException as err:
        run.fail(err)
        finish_wandb(exit_code=1)
        raise
    finish_wandb()
    return metrics


@hydra.main(version_base="1.3", config_path=config_path(), config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, float] | None:
    return run_job(evaluate, cfg)


if __name__ == "__main__":
    main()
