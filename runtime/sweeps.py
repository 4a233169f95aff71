"""Multirun support: a failed job does not stop the sweep, and the sweep ends with a summary of its jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runtime.run import sweep_context

log = logging.getLogger("experiments")


def run_job(fn: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float] | None:
    """Runs an entry point's function. In a multirun, an exception fails this job only: it is logged with
    its traceback (and recorded in the job's run_info.json by the entry point), and the sweep goes on."""
    ctx = sweep_context()
    if ctx is None:
        return fn(cfg)
    try:
        return fn(cfg)
    except Exception as err:  # noqa: BLE001 - one failed job must not end the sweep
        from runtime.cli import full_trace, user_message

        message = user_message(err)
        if message is not None and not full_trace():
            log.error("Job #%s of the sweep refused: %s. The sweep goes on.", ctx["job_num"], message)
            return None
        log.exception(
            "Job #%s of the sweep failed (%s: %s); the sweep goes on. Its run directory records the error.",
            ctx["job_num"],
            type(err).__name__,
            err,
        )
        return None


class SweepSummary(Callback):
    """Before a multirun: refuses the SLURM launcher where SLURM is missing or no node can hold the request
    (before any job is submitted).
    After it: a table of every job (switches, status, error, test metrics) printed and written to
    `<sweep dir>/sweep_summary.md`; exits with status 1 if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from runtime.slurm import check_request, require_sbatch

        launcher = config.hydra.launcher
        if "SlurmLauncher" in str(launcher.get("_target_", "")):
            try:
                require_sbatch()
                check_request(
                    launcher.tasks_per_node,
                    launcher.cpus_per_task,
                    launcher.gpus_per_node,
                    launcher.partition,
                )
            except (
                RuntimeError,
                ValueError,
            ) as err:  # Hydra turns exceptions of callbacks into warnings: exit
                log.error("%s", err)
                raise SystemExit(2) from err

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runtime.reporting import find_runs

        sweep_dir = Path(str(config.hydra.sweep.dir))
        runs = find_runs([sweep_dir], strict=False)
        if not runs:
            log.error("Sweep %s: no job wrote a run directory.", sweep_dir)
            raise SystemExit(1)
        text = summary_table(runs)
        (sweep_dir / "sweep_summary.md").write_text(f"# Sweep {sweep_dir}\n\n{text}\n")
        print(f"\nSweep summary ({sweep_dir / 'sweep_summary.md'}):\n{text}", flush=True)
        failed = [r for r in runs if r.status != "completed"]
        if failed:
            log.error(
                "%d of %d jobs did not complete: %s",
                len(failed),
                len(runs),
                ", ".join(r.path.name for r in failed),
            )
            raise SystemExit(1)


def summary_table(runs: list[Any]) -> str:
    """The body of sweep_summary.md: one row per job (job number order) with its switches (the overrides
    that differ between the jobs, the seed included), its seed, status, test metrics and error. "(as
    configured)" is a job without any override; one whose overrides are all shared says so."""
    from runtime.reporting import assign_settings, markdown_table

    metric_keys = sorted({k for r in runs for k in r.metrics if k.startswith("test/")})[:6]
    common = assign_settings(runs, with_seed=True)
    rows = []
    for r in sorted(runs, key=lambda r: r.path.name.zfill(6)):
        values = [f"{r.metrics[k]:.4f}" if k in r.metrics else "" for k in metric_keys]
        error = (r.info.get("error") or "")[:80].replace("|", "/")
        if r.setting:
            switches = " ".join(r.setting)
        elif r.job_overrides:
            switches = "(only the shared overrides)"
        else:
            switches = "(as configured)"
        rows.append([r.path.name, switches, r.seed_text, r.status, *values, error])
    text = markdown_table(["job", "switches", "seed", "status", *metric_keys, "error"], rows)
    if common:
        text = f"Overrides shared by all jobs: {' '.join(common)}\n\n{text}"
    return text
