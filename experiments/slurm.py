"""SLURM: checks that a run's devices and nodes match the allocation, and the launcher guard."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from typing import Any


def in_slurm_batch_job(env: Mapping[str, str] = os.environ) -> bool:
    return "SLURM_JOB_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


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
        raise ValueError(
            "The trainer does not match the SLURM allocation of job "
            f"{env.get('SLURM_JOB_ID')}: {'; '.join(problems)}. Lightning runs one task per device: set "
            "trainer.devices=<tasks per node> trainer.num_nodes=<nodes>, or change the sbatch/launcher request."
        )


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise RuntimeError(
            "hydra/launcher=slurm submits jobs with SLURM's `sbatch`, which is not on this machine's PATH. "
            "Run the same sweep here with hydra/launcher=submitit_local (one local process per job), or "
            "submit from a SLURM login node."
        )
