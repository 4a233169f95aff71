"""What the entry points share: composing objects from config, and opening/closing the run directory (the
closing console summary is `runtime.summary`)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from runtime import results, slurm
from runtime import run_dir as rd
from runtime.checkpoints import sweep_temporary_files
from runtime.cpu_features import slow_bf16_warning
from runtime.summary import console_metrics, print_summary
from runtime.tracking import ImageFileLogger, wandb_run_info

log = logging.getLogger("experiments")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def quiet_known_noise() -> None:
    """Silences messages that say nothing about the run: Lightning's product tip and a torch-internal
    deprecation warning raised inside Lightning's own code."""
    import warnings

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # on a machine with SLURM installed, outside a SLURM job: the suite's SLURM path is sbatch/the launcher
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system")
    # evaluate/test load a checkpoint written with training callbacks that test runs rightly do not have
    warnings.filterwarnings(
        "ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create"
    )


def instantiate_group(group: DictConfig | None, kind: str) -> list[Any]:
    """Instantiates every entry of a config group dict (`callbacks`, `logger`) that has a `_target_`."""
    out = []
    for name, conf in (group or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("Instantiating %s <%s> (%s)", kind, conf._target_, name)
            out.append(hydra.utils.instantiate(conf))
    return out


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config as plain containers, interpolations resolved, without Hydra's own node."""
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def hydra_overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not running under Hydra (compose API in tests)
        return None


def sweep_context() -> dict[str, Any] | None:
    """Where this job sits in a Hydra multirun (None for a single run)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return {"sweep_dir": str(hc.sweep.dir), "job_num": hc.job.num, "overrides": list(hc.overrides.task)}
    except Exception:  # noqa: BLE001 - not running under Hydra
        return None


# overrides that say where or how a run is executed, not what it computes: never W&B tags or report settings
INFRASTRUCTURE_PREFIXES = (
    "hydra",
    "paths.",
    "logger",
    "ckpt_path",
    "callbacks.progress_bar",
    "debug",
    "sweep",
    "+callbacks.epoch_timer",
)


def switch_overrides(overrides: list[str] | None) -> list[str]:
    """The overrides that change what a run computes (experiment= and infrastructure removed)."""
    keep = []
    for o in overrides or []:
        key = o.lstrip("+~").split("=", 1)[0]
        if (
            key == "experiment"
            or o.startswith(INFRASTRUCTURE_PREFIXES)
            or key.startswith(INFRASTRUCTURE_PREFIXES)
        ):
            continue
        keep.append(o)
    return keep


def is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


@dataclass
class Run:
    """One invocation of an entry point and the run directory it owns.

    Rank zero first takes the directory's lock (`runtime/run_dir.py::RunLock`: a second live invocation
    is refused, a stale lock taken over), then sweeps the temporary files of killed writes. In a directory
    whose record is a completed run, this invocation is recorded under `later_invocations` and the completed
    record, metrics.json and `.hydra/` stay until this one completes (`keep`). `close()` releases the lock."""

    cfg: DictConfig
    task: str
    run_dir: Path = field(init=False)
    info: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        """Under DDP every rank runs the entry point; only rank zero locks and writes the run directory."""
        quiet_known_noise()
        self.run_dir = Path(self.cfg.paths.output_dir)
        self.sweep = sweep_context()
        self.lock: rd.RunLock | None = None
        if is_rank_zero():
            self._take_directory()
        self._start_record()
        self._write_info()
        if self.keep is None:
            self._write_hydra()

    def _take_directory(self) -> None:
        """Rank zero: the directory's lock, the SLURM submission check, and the sweep of temporary files."""
        self.lock = rd.RunLock.acquire(self.run_dir, self.task, rd.command_line(self.task, hydra_overrides()))
        try:
            # a SLURM job may only enter a run directory of its own submission (checked before any write,
            # by rank zero: the other ranks of this invocation find the record rank zero has just written)
            slurm.check_submission(
                rd.read_run_info(self.run_dir), explicit_resume=self.cfg.get("ckpt_path") is not None
            )
        except BaseException:
            self.close()
            raise
        if self.lock.took_over:
            holder, why = self.lock.took_over
            log.warning(
                "%s: took over the lock of pid %s on %s (%s, since %s): %s.",
                self.run_dir,
                holder.get("pid"),
                holder.get("host"),
                holder.get("task"),
                holder.get("started"),
                why,
            )
        removed = sweep_temporary_files(self.run_dir)
        if removed:
            log.warning(
                "Removed %d temporary file(s) left in %s by an interrupted write: %s",
                len(removed),
                self.run_dir,
                ", ".join(str(p.relative_to(self.run_dir)) for p in removed),
            )

    def _start_record(self) -> None:
        """This invocation's record (`info`), the earlier `running` records marked killed, and `keep`: the
        completed run that stays the directory's record until this one completes."""
        self.keep = rd.completed_index(rd.read_run_info(self.run_dir))
        self.info = rd.new_run_info(
            self.run_dir, Path(self.cfg.paths.root_dir), self.task, self.cfg.get("seed"), hydra_overrides()
        )
        slurm.confirm_requeue(self.info)
        for rec in rd.mark_killed(
            self.info.get("previous_invocations", []), f"{self.task} (pid {os.getpid()})"
        ):
            log.warning(
                "%s: the invocation started %s (pid %s) ended without a record: recorded as killed.",
                self.run_dir,
                rec.get("started"),
                rec.get("pid", "?"),
            )
        if self.lock is not None:
            self.info["pid"] = self.lock.record["pid"]
            self.info["pid_start_ticks"] = self.lock.record["pid_start_ticks"]
        self.info["experiment"] = self.cfg.get("name")
        self.info["sweep"] = self.sweep
        if self.keep is not None and is_rank_zero():
            log.info(
                "%s holds a completed run: this %s is recorded under later_invocations in run_info.json until it "
                "completes; the completed record, metrics.json and .hydra/ stay as they are until then.",
                self.run_dir,
                self.task,
            )

    def _write_info(self) -> None:
        if is_rank_zero():
            rd.write_run_info(self.run_dir, rd.file_record(self.info, self.keep))

    def _write_hydra(self) -> None:
        if is_rank_zero():
            rd.write_hydra_files(self.run_dir, self.cfg)

    def _becomes_the_record(self) -> None:
        """This invocation completed: it replaces the completed run it found as the directory's record."""
        if self.keep is not None:
            self.keep = None
            self._write_hydra()

    def close(self) -> None:
        """Releases the run directory's lock; idempotent. Done by `finish`, `complete` and `fail` (the last write
        of an invocation), by train/evaluate at the end, and at interpreter exit."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def previous_wandb_id(self) -> str | None:
        for inv in reversed(self.info.get("previous_invocations", [])):
            wb = inv.get("wandb") or {}
            if wb.get("id") and inv.get("task", self.task) == self.task:
                return wb["id"]
        return None

    def loggers(self) -> list[Logger]:
        """The configured trackers, plus the PNG writer that puts every logged image into the run dir.

        W&B: a run directory that already had a W&B run (resume, SLURM requeue) continues the same run id;
        a job of a multirun joins the group `<experiment>/<sweep folder>` and is tagged with its switches.
        """
        group = self.cfg.get("logger")
        if group and "wandb" in group:
            extra: dict[str, Any] = {}
            if group.wandb.get("id") is None and self.previous_wandb_id():
                extra["id"] = self.previous_wandb_id()
            if self.sweep:
                extra["group"] = f"{self.cfg.get('name')}/{Path(self.sweep['sweep_dir']).name}"
                tags = [
                    *group.wandb.get("tags", []),
                    *(t[:64] for t in switch_overrides(self.sweep["overrides"])),
                ]
                extra["tags"] = list(dict.fromkeys(tags))
            if extra:
                group = OmegaConf.merge(group, {"wandb": extra})
        return [*instantiate_group(group, "logger"), ImageFileLogger(self.run_dir / "images")]

    def trainer(self, callbacks: list[Callback], loggers: list[Logger]) -> pl.Trainer:
        log.info("Instantiating trainer <%s>", self.cfg.trainer._target_)
        trainer = hydra.utils.instantiate(self.cfg.trainer, callbacks=callbacks, logger=loggers)
        self.info["device"] = rd.device_info(trainer)
        if "bf16" in str(trainer.precision) and is_rank_zero():
            setting, device = f"trainer.precision={trainer.precision}", trainer.strategy.root_device
            slow = slow_bf16_warning(setting, "trainer.precision=32-true", device)
            if slow:
                log.warning(slow)
        config = resolved_config(self.cfg)
        for lg in trainer.loggers:
            lg.log_hyperparams(config)
        if is_rank_zero():
            self.info["wandb"] = wandb_run_info(
                trainer.loggers
            )  # recorded now: a killed run can be resumed into it
        self._write_info()
        return trainer

    def complete(self, **extra: Any) -> None:
        """Marks the run completed for entry points without a trainer or metrics.json (`enhance`); `extra`
        (what was written, what was skipped) goes into run_info.json."""
        self.info.update(status="completed", finished=rd.now(), **extra)
        self._becomes_the_record()
        self._write_info()
        self.close()

    def requeued(self, signal_name: str, checkpoint: Path | None, requeue_error: str | None) -> None:
        """Records an invocation stopped by a SLURM signal. `requeued`: SLURM runs the job again, which
        resumes here; `interrupted`: it will not (the requeue failed); `terminated`: SIGTERM, and SLURM has not
        said yet whether it requeues or cancels the job (a restart turns it into `requeued`)."""
        state = "requeued" if requeue_error is None else "interrupted"
        if signal_name == "SIGTERM" and requeue_error is not None:
            state = "terminated"
        self.info.update(
            status=state,
            finished=rd.now(),
            requeue={
                "signal": signal_name,
                "checkpoint": str(checkpoint) if checkpoint else None,
                "slurm_restart_count": slurm.restart_count(),
                "error": requeue_error,
            },
        )
        self._write_info()

    def fail(self, err: BaseException) -> None:
        self.info.update(status="failed", finished=rd.now(), error=f"{type(err).__name__}: {err}")
        self._write_info()
        self.close()

    def stopped(self, status: str, signal_name: str) -> int:
        """Records an invocation stopped by a signal outside SLURM's requeue path: `interrupted` (Ctrl-C) or
        `terminated` (SIGTERM); returns its exit status (130, 143)."""
        code = rd.STOP_EXIT_CODES[status]
        self.info.update(status=status, finished=rd.now(), signal=signal_name, exit_code=code)
        self._write_info()
        return code

    def finish(
        self, trainer: pl.Trainer, metrics: dict[str, float], model: Any, datamodule: Any, **extra: Any
    ) -> None:
        """Writes metrics.json and the final run_info.json, prints the table and where the files are."""
        if not is_rank_zero():
            return
        data = datamodule.describe() if hasattr(datamodule, "describe") else None
        protocol = model.metric_protocol() if hasattr(model, "metric_protocol") else {}
        # multi-method runs (`test/<method>/<name>` keys): tables in metrics.json + results.md; per_image.csv
        # when the model has per-image rows (runtime/results.py, docs/DEVELOPING.md)
        tables = results.metric_tables(metrics, getattr(model, "table_order", None))
        scored = {"tested_checkpoint": extra.get("tested_checkpoint")} if "tested_checkpoint" in extra else {}
        rd.write_metrics(
            self.run_dir, metrics, protocol, data, extra={**scored, **({"tables": tables} if tables else {})}
        )
        results.write_result_files(self.run_dir, model, tables, data, protocol)
        wb = wandb_run_info(trainer.loggers)
        self.info.update(status="completed", finished=rd.now(), wandb=wb, data=data, **extra)
        self._becomes_the_record()
        self._write_info()
        finish_wandb()  # its own summary first, so the suite's table is the last thing printed
        self.close()
        print_summary(self.run_dir, metrics, wb, scored)


def finish_wandb(exit_code: int = 0) -> None:
    """Closes the W&B run, if any, so the next run in this process starts a new one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def best_or_last_checkpoint(trainer: pl.Trainer) -> str | None:
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is None:
        return None
    if ckpt_cb.best_model_path and Path(ckpt_cb.best_model_path).is_file():
        return ckpt_cb.best_model_path
    if ckpt_cb.last_model_path and Path(ckpt_cb.last_model_path).is_file():
        return ckpt_cb.last_model_path
    return None


def split_metrics(callback_metrics: dict[str, Any], splits: tuple[str, ...]) -> dict[str, float]:
    return {k: rd.to_float(v) for k, v in callback_metrics.items() if k.split("/", 1)[0] in splits}


__all__ = [
    "Run",
    "best_or_last_checkpoint",
    "console_metrics",
    "finish_wandb",
    "hydra_overrides",
    "instantiate_group",
    "is_rank_zero",
    "log",
    "print_summary",
    "quiet_known_noise",
    "resolved_config",
    "split_metrics",
    "sweep_context",
    "switch_overrides",
]
