"""`python -m experiments.train experiment=<name> [overrides]`: fit, then test the best (or last) checkpoint.

Resume a run with `hydra.run.dir=<its directory> ckpt_path=last` (or any checkpoint path). A completed run
with nothing left to train is not tested again unless `retest=true` (it says so and exits 0). Ctrl-C is
recorded `interrupted` (exit 130), SIGTERM `terminated` (exit 143); runtime/run_dir.py has the statuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigError, MissingFileError
from runtime import run_dir as rd
from runtime.callbacks import CheckpointInfo, PerRankSeed
from runtime.checkpoints import check_compatible, model_class_path
from runtime.cli import entry_point
from runtime.config_checks import check_config
from runtime.requeue import (
    Requeued,
    RequeueRequested,
    SlurmRequeue,
    Terminated,
    install_signal_handlers,
    job_state,
    requested,
    scontrol_requeue,
)
from runtime.run import (
    Run,
    best_or_last_checkpoint,
    finish_wandb,
    instantiate_group,
    is_rank_zero,
    log,
    split_metrics,
    sweep_context,
)
from runtime.slurm import (
    check_allocation,
    in_slurm_batch_job,
    remove_superseded,
    requeue_resume_path,
    threads_from_allocation,
)
from runtime.sweeps import run_job


def resolve_resume(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` means checkpoints/last.ckpt of this run directory, which must exist."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if str(ckpt) == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise MissingFileError(
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
        raise ConfigError(
            "trainer.strategy=ddp inside a local multirun (-m) is not supported: Lightning's launcher re-runs the "
            "command line, i.e. the whole sweep, in every rank. Run the jobs one at a time, or launch the sweep "
            "with hydra/launcher=slurm (one SLURM task per device)."
        )


def prepare(cfg: DictConfig) -> tuple[str | None, Any, Any]:
    """Every check that can refuse the run, before anything is written: signal handlers, the config, DDP,
    the checkpoint to resume (a SLURM restart's own newest one first); then seeds and builds the data and the
    model, checks the checkpoint fits the model and the test's protocol under the trainer's limits
    (`preflight`). Returns (ckpt_path, datamodule, model)."""
    if not install_signal_handlers():  # again: a launcher (submitit) installs its own when the job starts
        rd.install_sigterm_handler()  # outside SLURM: SIGTERM is recorded `terminated`, exit 143
    threads_from_allocation()
    check_config(cfg)
    check_distributed(cfg, multirun=sweep_context() is not None)
    ckpt_path = resolve_resume(cfg)
    requeued_from = requeue_resume_path(Path(cfg.paths.output_dir))
    if requeued_from is not None:
        log.info("SLURM restart: resuming from the run's newest checkpoint %s", requeued_from)
        ckpt_path = str(requeued_from)
    pl.seed_everything(cfg.seed, workers=True)
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = hydra.utils.instantiate(cfg.model)
    if ckpt_path:
        check_compatible(ckpt_path, model)
    if cfg.get("test", True) and hasattr(model, "preflight"):
        model.preflight(datamodule, cfg.trainer)
    return ckpt_path, datamodule, model


def train_callbacks(cfg: DictConfig, run: Run, model: Any) -> list[Any]:
    """The configured callbacks, the checkpoint's suite record (`CheckpointInfo`: the model and data config
    that rebuild it), per-rank seeding, and SLURM's requeue handler inside a SLURM batch job."""
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
    if in_slurm_batch_job():
        callbacks.append(SlurmRequeue(run.run_dir))
    return callbacks


def fit_and_test(
    cfg: DictConfig, run: Run, model: Any, datamodule: Any, ckpt_path: str | None
) -> dict[str, float]:
    """Fits (when the model has a training_step and `train` is on), then tests the best (or last) checkpoint
    with the seed reset; writes the run's results (`Run.finish`). Returns the val and test metrics."""
    trainer = run.trainer(train_callbacks(cfg, run, model), run.loggers())
    metrics: dict[str, float] = {}
    fits = type(model).training_step is not pl.LightningModule.training_step
    if cfg.get("train", True) and not fits:
        log.info("%s has nothing to train (no training_step): testing only.", type(model).__name__)
    if cfg.get("train", True) and fits:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(split_metrics(trainer.callback_metrics, ("val",)))
        if requested():  # signalled between fit and test: last.ckpt holds the finished fit
            raise RequeueRequested(requested(), None)
    tested = None
    if cfg.get("test", True):
        tested = best_or_last_checkpoint(trainer)
        if tested is None and fits and cfg.get("train", True):
            log.warning(
                "No checkpoint was written (fast_dev_run or checkpointing disabled): testing the current weights."
            )
        pl.seed_everything(
            cfg.seed, workers=True, verbose=False
        )  # the test draws the same noise however fit ran
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, verbose=False)
        metrics.update(split_metrics(trainer.callback_metrics, ("test",)))
    if in_slurm_batch_job():  # nothing left to requeue: a later SIGUSR1 (even at interpreter exit) is moot
        import signal as _signal

        _signal.signal(_signal.SIGUSR1, _signal.SIG_IGN)
    if requested():
        log.info("SLURM sent %s during the test: the run is complete, nothing to requeue.", requested())
    if is_rank_zero():
        remove_superseded(run.run_dir)
    run.finish(trainer, metrics, model, datamodule, tested_checkpoint=tested)
    return metrics


def stop_or_fail(run: Run, err: BaseException) -> None:
    """Records how an invocation ended by `err` and re-raises: Ctrl-C or SIGTERM outside SLURM is a stopped
    run (`interrupted` 130, `terminated` 143: SystemExit with that status), anything else a failed one."""
    stop = rd.stop_reason(err)
    if stop is not None:  # Ctrl-C or SIGTERM outside SLURM: a stopped run, not a failed one
        code = run.stopped(*stop)
        finish_wandb(exit_code=1)
        log.warning(
            "%s: stopped by %s, recorded as %s (exit %d). Resume with hydra.run.dir=%s ckpt_path=last.",
            run.run_dir,
            stop[1],
            stop[0],
            code,
            run.run_dir,
        )
        raise SystemExit(code) from None
    run.fail(err)
    finish_wandb(exit_code=1)
    raise err


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, compose data/model/callbacks/loggers/trainer from config, fit, test; returns the test metrics.

    Every check that can refuse the run (config values, the checkpoint to resume, the test's protocol under
    the trainer's limits) runs before the run directory is written and before any training (`prepare`)."""
    ckpt_path, datamodule, model = prepare(cfg)
    run_dir = Path(cfg.paths.output_dir)
    done = rd.completed_run_note(run_dir, ckpt_path, cfg)
    if done is not None:  # nothing is written: the completed run's record and metrics.json stand
        log.info("%s", done)
        body = json.loads((run_dir / "metrics.json").read_text())
        return {k: float(v) for k, v in body.items() if "/" in k and isinstance(v, int | float)}
    run = Run(cfg, "train")
    try:
        if ckpt_path:
            run.info["resumed_from"] = ckpt_path
        metrics = fit_and_test(cfg, run, model, datamodule, ckpt_path)
    except RequeueRequested as req:
        stop_for_slurm(run, req.signal_name, req.checkpoint)
    except Terminated:
        stop_for_slurm(run, "SIGTERM", None)
    except BaseException as err:
        stop_or_fail(run, err)
    finally:
        run.close()
    finish_wandb()
    return metrics


def stop_for_slurm(run: Run, signal_name: str, checkpoint: Path | None) -> None:
    """Ends an invocation that SLURM signalled: record, close W&B, requeue (SIGUSR1 only; after SIGTERM
    SLURM itself requeues or cancels), exit without a result (0 after a requeue, 143 after SIGTERM)."""
    import signal as _signal

    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)  # the requeue terminates this job step: finish first
    try:
        finish_wandb(exit_code=1)
    except Exception as err:  # noqa: BLE001 - SLURM signals the W&B service process too
        log.warning("W&B could not be closed cleanly (%s); the requeued job continues the same run id.", err)
    if not is_rank_zero():
        raise Requeued(f"rank stopped for {signal_name}")
    error = None
    if signal_name == "SIGUSR1":
        run.requeued(signal_name, checkpoint, None)  # recorded before the requeue kills this job step
        error = scontrol_requeue()
        if error:
            run.requeued(signal_name, checkpoint, error)
    else:
        state = job_state() or ""
        requeue = "REQUEUE" in state or state == "PENDING"
        run.requeued(signal_name, checkpoint, None if requeue else f"SIGTERM with the job {state or 'ended'}")
    where = f"; state saved in {checkpoint}" if checkpoint else ""
    if error:
        log.error(
            "SLURM %s: could not requeue the job (%s)%s. Resume by hand with ckpt_path=<that file>.",
            signal_name,
            error,
            where,
        )
        raise SystemExit(1)
    if signal_name == "SIGTERM":
        log.warning(
            "SLURM SIGTERM: stopped%s. If SLURM requeues the job, it resumes in %s.", where, run.run_dir
        )
        raise SystemExit(128 + 15)  # a SIGTERMed job step exits as such; SLURM records REQUEUED or CANCELLED
    log.warning(
        "SLURM %s: stopped at a batch boundary%s; the job is requeued and resumes in %s.",
        signal_name,
        where,
        run.run_dir,
    )
    raise Requeued(f"{signal_name}{where}")


@entry_point("train")
def main(cfg: DictConfig) -> dict[str, float] | None:
    return run_job(train, cfg)


if __name__ == "__main__":
    main()
