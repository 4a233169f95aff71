"""`python -m experiments.evaluate experiment=<name> ckpt_path=<path> [overrides]`: seeded, test only.

Non-trainable models (classical baselines, CLS) and models that load their own released weights need no
checkpoint; every other model refuses to run without one rather than report numbers of random weights.
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from core.errors import ConfigError
from runtime import run_dir as rd
from runtime.checkpoints import check_compatible
from runtime.cli import entry_point
from runtime.config_checks import check_config
from runtime.run import Run, finish_wandb, instantiate_group, log, split_metrics
from runtime.sweeps import run_job


def evaluate(cfg: DictConfig) -> dict[str, float]:
    rd.install_sigterm_handler()  # SIGTERM is recorded `terminated` (exit 143), Ctrl-C `interrupted` (130)
    check_config(cfg)  # every refusal before the run directory is written
    pl.seed_everything(cfg.seed, workers=True)
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = hydra.utils.instantiate(cfg.model)
    if callable(getattr(model, "for_inference", None)):
        model.for_inference()  # NeRCo: channels-last weights and images; the checkpoint loads into them
    ckpt_path = cfg.get("ckpt_path")
    record = None
    if ckpt_path:
        record = {"path": str(ckpt_path), **check_compatible(ckpt_path, model)}
    elif getattr(model, "needs_checkpoint", False):
        raise ConfigError(
            f"ckpt_path is required to evaluate {type(model).__name__} (experiment {cfg.get('name')!r}): "
            "pass ckpt_path=<run dir>/checkpoints/<file>.ckpt"
        )
    if hasattr(model, "preflight"):
        model.preflight(datamodule, cfg.trainer)
    run = Run(cfg, "evaluate")
    try:
        if record is not None:
            run.info["checkpoint"] = record
        trainer = run.trainer(instantiate_group(cfg.get("callbacks"), "callback"), run.loggers())
        pl.seed_everything(
            cfg.seed, workers=True, verbose=False
        )  # the test draws the same noise however fit ran
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics = split_metrics(trainer.callback_metrics, ("test",))
        run.finish(trainer, metrics, model, datamodule, tested_checkpoint=ckpt_path)
    except BaseException as err:
        stop = rd.stop_reason(err)
        if stop is not None:  # Ctrl-C or SIGTERM: a stopped evaluation, not a failed one
            code = run.stopped(*stop)
            finish_wandb(exit_code=1)
            log.warning("%s: stopped by %s, recorded as %s (exit %d).", run.run_dir, stop[1], stop[0], code)
            raise SystemExit(code) from None
        run.fail(err)
        finish_wandb(exit_code=1)
        raise
    finally:
        run.close()
    finish_wandb()
    return metrics


@entry_point("evaluate")
def main(cfg: DictConfig) -> dict[str, float] | None:
    return run_job(evaluate, cfg)


if __name__ == "__main__":
    main()
