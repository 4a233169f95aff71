"""SLURM: allocation checks, the job's record, resume of a requeued job (the requeue itself: runtime/requeue.py).

A job submitted with `--signal=USR1@<s> --requeue` (configs/slurm/*.sbatch, hydra/launcher=slurm|slurm_cpu)
gets SIGUSR1 `s` seconds (SLURM: up to 60 s more) before its time limit, or whenever `scancel --signal=USR1`
is sent. The signal handler only marks the request; `SlurmRequeue` acts on it at the next batch boundary,
the same one on every DDP rank (the mark is all-reduced after each training batch):

1. `checkpoints/requeue.ckpt` is written (collectively: every rank's RNG states, the loader's position in
   the epoch via `data.common.ResumableDataLoader`), so the requeued run continues the straight run's batch
   sequence bit for bit;
2. the invocation is recorded as `requeued` in run_info.json and the W&B run is closed;
3. rank zero calls `scontrol requeue <job>` and the process exits (status 0) without returning a result,
   so a submitit launcher keeps waiting for the job instead of recording a failure.

The requeued job starts again with `SLURM_RESTART_COUNT` > 0 in the same run directory, which belongs to
that submission (cluster + job id, recorded in run_info.json): `train` resumes from the newest of the run's
own checkpoints (requeue.ckpt, last.ckpt, Lightning's hpc_ckpt_N.ckpt) after checking it fits the model, and
records it as `resumed_from`. A signal before training starts or between fit and test requeues at once (the
restart finds the state it needs in last.ckpt); one during the test is noted and the run completes. SIGTERM
(scancel, `scontrol requeue`, preemption) also stops at the next batch boundary, with the same checkpoint,
but leaves the requeue to SLURM. Superseded requeue/hpc checkpoints are deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError

log = logging.getLogger("experiments")

REQUEUE_CHECKPOINT = "requeue.ckpt"  # in <run dir>/checkpoints/


def in_slurm_batch_job(env: Mapping[str, str] = os.environ) -> bool:
    return "SLURM_JOB_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    value = env.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """`<array job>_<task>` for a job array task, else SLURM_JOB_ID (what `scontrol requeue` takes)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


# ------------------------------------------------------------------------------------- allocation
def _count(devices: Any) -> int | None:
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if isinstance(devices, str):
        return int(devices) if devices.isdigit() else None  # "auto", "-1": Lightning decides
    try:
        return len(devices)  # a list of device indices
    except TypeError:
        return None


def check_allocation(devices: Any, num_nodes: int, env: Mapping[str, str] = os.environ) -> None:
    """Raises ValueError when trainer.devices / trainer.num_nodes disagree with the SLURM allocation.

    Lightning runs one process per device, and under SLURM those processes are the job's tasks, so
    tasks per node must equal `trainer.devices` and the job's node count must equal `trainer.num_nodes`.
    """
    if not in_slurm_batch_job(env):
        return
    nnodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    per_node = env.get("SLURM_NTASKS_PER_NODE")
    if per_node is None and "SLURM_NTASKS" in env:
        per_node = str(int(env["SLURM_NTASKS"]) // max(nnodes, 1))
    tasks = int(re.match(r"\d+", per_node).group()) if per_node else None
    wanted = _count(devices)
    problems = []
    if wanted is not None and tasks is not None and wanted != tasks:
        problems.append(
            f"trainer.devices={wanted} but the job has {tasks} task(s) per node (--ntasks-per-node)"
        )
    if int(num_nodes) != nnodes:
        problems.append(f"trainer.num_nodes={num_nodes} but the job has {nnodes} node(s) (--nodes)")
    if problems:
        raise ConfigError(
            "The trainer does not match the SLURM allocation of job "
            f"{env.get('SLURM_JOB_ID')}: {'; '.join(problems)}. Lightning runs one task per device: set "
            "trainer.devices=<tasks per node> trainer.num_nodes=<nodes>, or change the sbatch/launcher request."
        )


def threads_from_allocation(env: Mapping[str, str] = os.environ) -> int | None:
    """In a SLURM job, limits torch (and OpenMP, for processes started later) to `SLURM_CPUS_PER_TASK`
    threads instead of every core of the node; returns the count set, or None outside SLURM."""
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if not in_slurm_batch_job(env) or not cpus.isdigit():
        return None
    import torch

    torch.set_num_threads(int(cpus))
    os.environ.setdefault("OMP_NUM_THREADS", cpus)
    return int(cpus)


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "hydra/launcher=slurm (or slurm_cpu) submits jobs with SLURM's `sbatch`, which is not on this "
            "machine's PATH. Run the same sweep here with hydra/launcher=submitit_local (one local process "
            "per job), or submit from a SLURM login node."
        )


def check_request(
    tasks_per_node: int, cpus_per_task: int | None, gpus_per_node: int | None, partition: str | None
) -> None:
    """Refuses a launcher request that no node of the partition can hold (SLURM would accept it and let it
    pend forever, `Reason=PartitionConfig`), or GPUs where the partition has no GPU GRES (`sbatch: error:
    Invalid generic resource (gres) specification`). Says nothing where `sinfo` cannot answer."""
    cmd = ["sinfo", "-h", "-N", "-o", "%c|%G"] + (["-p", str(partition)] if partition else [])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return
    rows = [line.split("|", 1) for line in res.stdout.split() if "|" in line]
    if res.returncode != 0 or not rows:
        return
    where = f"partition {partition!r}" if partition else "the default partition"
    max_cpus = max(int(c) for c, _ in rows if c.isdigit())
    if gpus_per_node and not any("gpu" in g for _, g in rows):
        raise ConfigError(
            f"The launcher asks for {gpus_per_node} GPU(s) per node, but no node of {where} has GPUs (GRES "
            f"{sorted({g for _, g in rows})}). On CPU nodes use hydra/launcher=slurm_cpu (and trainer=cpu or "
            "ddp_cpu), or pick a GPU partition with hydra.launcher.partition=<name>."
        )
    cpus = int(tasks_per_node) * int(cpus_per_task or 1)
    if cpus > max_cpus:
        raise ConfigError(
            f"The launcher asks for {tasks_per_node} task(s) x {cpus_per_task or 1} CPU(s) = {cpus} CPUs per "
            f"node, but the largest node of {where} has {max_cpus}: SLURM would keep the job pending forever "
            "(Reason=PartitionConfig). Lower hydra.launcher.cpus_per_task or trainer.devices."
        )


# ------------------------------------------------------------------------------------- the record
SLURM_KEYS = (
    "SLURM_CLUSTER_NAME",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION",
    "SLURM_RESTART_COUNT",
    "SLURM_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_CPUS_PER_TASK",
    "SLURM_PROCID",
    "SLURM_SUBMIT_DIR",
)


def slurm_info(env: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    found = {k: env[k] for k in SLURM_KEYS if k in env}
    return found or None


def submission(env: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """What identifies one SLURM submission across its requeues: cluster and job id (a requeue keeps both;
    `SLURM_RESTART_COUNT` counts the restarts)."""
    if not in_slurm_batch_job(env):
        return None
    return {"cluster": env.get("SLURM_CLUSTER_NAME"), "job": job_id(env), "restart": restart_count(env)}


class SubmissionMismatchError(RuntimeError):
    """The run directory belongs to another SLURM submission."""


def check_submission(
    previous: Mapping[str, Any] | None, explicit_resume: bool, env: Mapping[str, str] = os.environ
) -> None:
    """Refuses to enter a run directory that belongs to another submission, before anything is written.

    A fresh job (restart count 0) must not find a run directory made by a SLURM job unless `ckpt_path` was
    given on purpose; a requeued job (restart count > 0) must find its own cluster and job id there. Job ids
    restart at 1 after a cluster reset, so `logs/.../<job id>` alone can name another run's directory.
    """
    mine = submission(env)
    if mine is None or not previous:
        return
    theirs = previous.get("submission") or (
        {"cluster": (previous.get("slurm") or {}).get("SLURM_CLUSTER_NAME"), "job": _old_job(previous)}
        if previous.get("slurm")
        else None
    )
    if theirs is None:
        return
    same = theirs.get("cluster") == mine["cluster"] and str(theirs.get("job")) == str(mine["job"])
    where = previous.get("run_dir", "the run directory")
    owner = (
        f"job {theirs.get('job')} of cluster {theirs.get('cluster')!r} (started {previous.get('started')}, "
        f"seed {previous.get('seed')})"
    )
    if mine["restart"] > 0 and not same:
        raise SubmissionMismatchError(
            f"{where} belongs to {owner}, but this is restart {mine['restart']} of job {mine['job']} of cluster "
            f"{mine['cluster']!r}: refusing to resume another submission's run. Give each job its own "
            "hydra.run.dir (the sbatch scripts name it <cluster>_<job id>_<submit time>)."
        )
    if mine["restart"] == 0 and not explicit_resume:
        raise SubmissionMismatchError(
            f"{where} already holds a run of {owner}; this is a new submission (job {mine['job']} of cluster "
            f"{mine['cluster']!r}, not a requeue). Refusing to train into it: choose another hydra.run.dir, or "
            "pass ckpt_path=last (or a checkpoint path) to continue that run on purpose."
        )


def confirm_requeue(info: dict[str, Any], env: Mapping[str, str] = os.environ) -> None:
    """In a restarted job: the invocation before this one was requeued, whatever it could record when it was
    stopped (SIGTERM leaves it `terminated`, a node failure or SIGKILL leaves it `running`)."""
    mine = submission(env)
    earlier = info.get("previous_invocations") or []
    if mine is None or mine["restart"] == 0 or not earlier:
        return
    last = earlier[-1]
    theirs = last.get("submission") or {}
    if theirs.get("job") == mine["job"] and theirs.get("restart") == mine["restart"] - 1:
        if last.get("status") in ("running", "terminated", "failed"):
            last["status_recorded"] = last.get("status")
            last["status"] = "requeued"
            last["requeue_confirmed_by"] = f"restart {mine['restart']} of job {mine['job']}"


def _old_job(previous: Mapping[str, Any]) -> str | None:
    s = previous.get("slurm") or {}
    if s.get("SLURM_ARRAY_JOB_ID") and s.get("SLURM_ARRAY_TASK_ID"):
        return f"{s['SLURM_ARRAY_JOB_ID']}_{s['SLURM_ARRAY_TASK_ID']}"
    return s.get("SLURM_JOB_ID")


# ------------------------------------------------------------------------------------- resume
def own_checkpoints(run_dir: Path) -> list[Path]:
    """The run's resumable checkpoints, newest first: requeue.ckpt, last.ckpt, Lightning's hpc_ckpt_N."""
    found = [run_dir / "checkpoints" / REQUEUE_CHECKPOINT, run_dir / "checkpoints" / "last.ckpt"]
    found += list(run_dir.glob("hpc_ckpt_*.ckpt"))
    found = [p for p in found if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def requeue_resume_path(run_dir: Path, env: Mapping[str, str] = os.environ) -> Path | None:
    """For a requeued job (restart count > 0): the newest checkpoint the run wrote, else None (start over)."""
    if not in_slurm_batch_job(env) or restart_count(env) == 0:
        return None
    found = own_checkpoints(run_dir)
    return found[0] if found else None


def remove_superseded(run_dir: Path) -> list[Path]:
    """Deletes requeue.ckpt and hpc_ckpt_N.ckpt files older than last.ckpt (a newer state supersedes them)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return []
    newest = last.stat().st_mtime_ns
    removed = []
    for p in [run_dir / "checkpoints" / REQUEUE_CHECKPOINT, *run_dir.glob("hpc_ckpt_*.ckpt")]:
        if p.is_file() and p.stat().st_mtime_ns <= newest:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
