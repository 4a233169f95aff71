"""The run directory contract (ARCHITECTURE.md): run_info.json, metrics.json, and the closing summary.

Files are written atomically (a temporary file, then `os.replace`), so a crash never leaves half a JSON
file, and a resumed run keeps the provenance of the invocations before it under `previous_invocations`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from data.images import write_atomic
from experiments import slurm

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


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=True) + "\n"
    write_atomic(path, text.encode())


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


def new_run_info(
    run_dir: Path, root: Path, task: str, seed: int | None, overrides: list[str] | None
) -> dict[str, Any]:
    """The provenance record written when a run starts (status "running")."""
    info: dict[str, Any] = {
        "task": task,
        "status": "running",
        "started": now(),
        "finished": None,
        "run_dir": str(run_dir),
        "command": command_line(task, overrides),
        "overrides": overrides,
        "seed": seed,
        "git": git_state(root),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "slurm": slurm.slurm_info(),
        "submission": slurm.submission(),
        "packages": package_versions(),
        "device": device_info(),
    }
    previous = read_run_info(run_dir)
    if previous and previous.get("task") == task:
        earlier = previous.pop("previous_invocations", [])
        info["previous_invocations"] = [*earlier, previous]
    return info


def read_run_info(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "run_info.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    write_json_atomic(run_dir / "run_info.json", info)


def to_float(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def write_metrics(
    run_dir: Path,
    metrics: dict[str, float],
    protocol: dict[str, Any],
    data: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """metrics.json: `{"split/name": value, ...}` plus `protocol` (how they were computed) and `data` (on what)."""
    body: dict[str, Any] = dict(sorted(metrics.items()))
    body["protocol"] = protocol
    body["data"] = data
    if extra:
        body.update(extra)
    path = run_dir / "metrics.json"
    write_json_atomic(path, body)
    return path


def format_table(metrics: dict[str, float], title: str = "metrics") -> str:
    rows = [
        (k, f"{v:.4f}" if math.isfinite(v) and abs(v) < 1e6 else f"{v:.6g}")
        for k, v in sorted(metrics.items())
    ]
    w1 = max([len(title), *(len(k) for k, _ in rows)])
    w2 = max([5, *(len(v) for _, v in rows)])
    line = f"+-{'-' * w1}-+-{'-' * w2}-+"
    out = [line, f"| {title:<{w1}} | {'value':>{w2}} |", line]
    out += [f"| {k:<{w1}} | {v:>{w2}} |" for k, v in rows]
    out.append(line)
    return "\n".join(out)
