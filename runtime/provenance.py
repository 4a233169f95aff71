"""Provenance of an invocation for run_info.json: package versions, the git state, the host's devices, the
command that reruns it, and the UTC time."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "lightning-repro-suite",
    "torch",
    "pytorch-lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "wandb",
    "numpy",
    "scipy",
    "scikit-image",
    "mlxtend",
    "datasets",
    "pillow",
    "matplotlib",
    # optional extras, recorded when installed
    "diffusers",
    "torch-fidelity",
    "open-clip-torch",
    "hydra-submitit-launcher",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {
            "commit": None,
            "dirty": None,
            "branch": None,
            "note": f"{root} is not a git checkout (or git is missing)",
        }
    return {
        "commit": commit,
        "dirty": bool(status),
        "branch": branch,
        "changed_files": status.splitlines()[:50],
    }


def device_info(trainer: Any | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    if trainer is not None:
        info.update(
            root_device=str(trainer.strategy.root_device),
            accelerator=type(trainer.accelerator).__name__,
            strategy=type(trainer.strategy).__name__,
            world_size=trainer.world_size,
            num_nodes=trainer.num_nodes,
            precision=str(trainer.precision),
        )
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(task: str | None = None, overrides: list[str] | None = None) -> str:
    """A command that reruns this invocation. Under a launcher (submitit's bootstrap is `sys.argv`) it is
    rebuilt from the job's own Hydra overrides."""
    argv0 = sys.argv[0]
    if argv0.endswith(".py") and Path(argv0).parent.name == "experiments":
        return shlex.join(["python", "-m", f"experiments.{Path(argv0).stem}", *sys.argv[1:]])
    if task and overrides is not None:
        return shlex.join(["python", "-m", f"experiments.{task}", *overrides])
    return shlex.join(sys.argv)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
