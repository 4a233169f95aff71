"""The run directory contract (ARCHITECTURE.md): run_info.json, metrics.json, and the closing summary.

Files are written atomically (a temporary file, then `os.replace`), so a crash never leaves half a JSON
file, and a resumed run keeps the provenance of the invocations before it under `previous_invocations`.

One live invocation per run directory: `RunLock` (`<run dir>/.lock`: pid, host, start, command) is taken by
rank zero before the suite writes anything and released at exit; a second invocation is refused
(`RunDirectoryInUse`, exit 2) naming the holder, and a lock whose holder is gone (its pid on this host, an
earlier restart of the same SLURM job, or no heartbeat from another host for `STALE_AFTER_S`) is taken over
and said so. The invocation that takes the directory marks every `running` record it finds `killed`.

A completed run stays the directory's record while a later invocation runs in it: run_info.json keeps the
completed record at the top and the later invocation under `later_invocations` until that invocation
completes (then it becomes the top record, everything before it under `previous_invocations`); a failed,
interrupted or killed later invocation therefore leaves the completed record, metrics.json and `.hydra/`
as they were (`file_record`, `write_hydra_files`). Statuses: running, completed, failed, interrupted (Ctrl-C,
exit 130), terminated (SIGTERM, exit 143), killed (found `running` with its process gone), requeued (SLURM).

Split by job: the provenance of an invocation is `runtime.provenance`, the lock `runtime.run_lock`, SIGTERM and
Ctrl-C `runtime.stopping`, the CSV logger `runtime.csv_logger`; their public names are importable from here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from core.files import write_atomic, write_json_atomic
from runtime import slurm
from runtime.csv_logger import ResumableCSVLogger
from runtime.provenance import PACKAGES, command_line, device_info, git_state, now, package_versions
from runtime.run_lock import (
    HEARTBEAT_S,
    LOCK_NAME,
    STALE_AFTER_S,
    RunDirectoryInUse,
    RunLock,
    holder_state,
    in_use_message,
    lock_holder,
    pid_alive,
)
from runtime.stopping import STOP_EXIT_CODES, SigtermStop, install_sigterm_handler, stop_reason

__all__ = [
    "HEARTBEAT_S",
    "HYDRA_FILES",
    "LOCK_NAME",
    "PACKAGES",
    "STALE_AFTER_S",
    "STOP_EXIT_CODES",
    "ResumableCSVLogger",
    "RunDirectoryInUse",
    "RunLock",
    "SigtermStop",
    "command_line",
    "completed_index",
    "completed_run_note",
    "device_info",
    "file_record",
    "format_table",
    "git_state",
    "holder_state",
    "in_use_message",
    "install_sigterm_handler",
    "invocation_history",
    "lock_holder",
    "mark_killed",
    "new_run_info",
    "nothing_left_to_train",
    "now",
    "package_versions",
    "pid_alive",
    "read_run_info",
    "recorded_status",
    "stop_reason",
    "to_float",
    "write_hydra_files",
    "write_metrics",
    "write_run_info",
]

log = logging.getLogger("experiments")


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
    if previous:  # every earlier invocation, of any task, in the order they ran
        info["previous_invocations"] = invocation_history(previous)
    return info


def invocation_history(record: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The invocations a run_info.json records, oldest first: `previous_invocations`, the top record, then
    `later_invocations` (those after a completed run that have not completed themselves)."""
    if not record:
        return []
    top = {k: v for k, v in record.items() if k not in ("previous_invocations", "later_invocations")}
    return [*record.get("previous_invocations", []), top, *record.get("later_invocations", [])]


def completed_index(record: Mapping[str, Any] | None) -> int | None:
    """Where the completed run of a run_info.json sits in `invocation_history`, None if its top record is not
    completed. A new invocation keeps that record at the top of the file until it completes itself."""
    if not record or record.get("status") != "completed":
        return None
    return len(record.get("previous_invocations") or [])


def file_record(info: dict[str, Any], keep: int | None) -> dict[str, Any]:
    """What run_info.json holds while invocation `info` runs: `info` itself (its history under
    `previous_invocations`), or, with `keep` (`completed_index` of the file it found), the completed record at
    the top and the invocations after it, this one last, under `later_invocations`."""
    if keep is None:
        return info
    history = info.get("previous_invocations") or []
    top = dict(history[keep])
    if keep:
        top["previous_invocations"] = history[:keep]
    current = {k: v for k, v in info.items() if k != "previous_invocations"}
    top["later_invocations"] = [*history[keep + 1 :], current]
    return top


def mark_killed(history: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Marks `killed` every `running` record of `history` (called by the invocation that holds the lock: no live
    process is behind them); returns them."""
    found = []
    for rec in history:
        if rec.get("status") == "running":
            rec["status_recorded"] = "running"
            rec["status"] = "killed"
            rec["killed_detected"] = (
                f"{now()}: recorded as running, but its process (pid {rec.get('pid', '?')} on "
                f"{rec.get('host', '?')}) had ended without a record when {by} took the run directory"
            )
            found.append(rec)
    return found


def recorded_status(run_dir: Path, record: Mapping[str, Any]) -> str:
    """The status of an invocation record as it stands now: `killed` for a `running` record whose process holds
    no live lock on the run directory (its pid is gone from this host, or no heartbeat from its host)."""
    status = str(record.get("status", "unknown"))
    if status != "running" or not record.get("pid"):
        return status  # an older record without a pid: cannot tell
    holder = lock_holder(run_dir)
    if holder and holder.get("pid") == record.get("pid") and holder.get("host") == record.get("host"):
        return "running"
    return "killed"


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


# ------------------------------------------------------------------------------------- .hydra/
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def write_hydra_files(run_dir: Path, cfg: Any) -> Path | None:
    """Writes Hydra's record of this invocation (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, as Hydra
    does) when Hydra did not (`hydra.output_subdir: null` in configs/train.yaml and evaluate.yaml), i.e. only
    once the invocation owns the directory and is its record. The files of the invocation before it move to
    `.hydra/previous/<n>/`. None when not under Hydra's CLI or when Hydra wrote them itself."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.get("output_subdir") is not None or OmegaConf.is_missing(hc.runtime, "output_dir"):
        return None  # Hydra wrote its own, or composed outside the CLI (runtime.config.compose)
    out = Path(run_dir) / ".hydra"
    old = [out / n for n in HYDRA_FILES if (out / n).is_file()]
    if old:
        n = 0
        while (out / "previous" / str(n)).exists():
            n += 1
        keep = out / "previous" / str(n)
        keep.mkdir(parents=True)
        for f in old:
            os.replace(f, keep / f.name)
    texts = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
        "overrides.yaml": OmegaConf.to_yaml(hc.overrides.task),
    }
    for name, text in texts.items():
        write_atomic(out / name, text.encode())
    return out


# ------------------------------------------------------------------------------------- a completed run
def nothing_left_to_train(ckpt_path: str | Path, trainer_cfg: Mapping[str, Any]) -> str | None:
    """Why resuming from `ckpt_path` under these trainer limits trains nothing (Lightning's own test:
    `global_step >= max_steps` or epochs processed `>= max_epochs`), e.g. "2 epochs of trainer.max_epochs=2";
    None when fit has work left or the checkpoint does not say."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an older format: load it whole
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    progress = ((ckpt.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress") or {}
    epochs = (progress.get("current") or {}).get("processed")
    step = ckpt.get("global_step")
    max_steps = trainer_cfg.get("max_steps")
    max_steps = -1 if max_steps is None else int(max_steps)
    max_epochs = trainer_cfg.get("max_epochs")
    if max_epochs is None:  # Lightning's default
        max_epochs = 1000 if max_steps == -1 else -1
    if max_steps != -1 and isinstance(step, int) and step >= max_steps:
        return f"{step} steps of trainer.max_steps={max_steps}"
    if int(max_epochs) != -1 and isinstance(epochs, int) and epochs >= int(max_epochs):
        return f"{epochs} epoch(s) of trainer.max_epochs={max_epochs}"
    return None


def completed_run_note(run_dir: Path, ckpt_path: str | None, cfg: Any) -> str | None:
    """For `train` resuming a completed run from one of its own checkpoints with nothing left to train (and
    neither `retest=true` nor `train=false`): the message that says so; None otherwise."""
    run_dir = Path(run_dir)
    if not ckpt_path or not cfg.get("train", True) or cfg.get("retest", False):
        return None
    record = read_run_info(run_dir)
    if not record or record.get("status") != "completed" or record.get("task") != "train":
        return None
    if not (run_dir / "metrics.json").is_file() or lock_holder(run_dir) is not None:
        return None  # no result to keep, or a live invocation (which Run refuses)
    try:
        Path(ckpt_path).resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None  # another run's checkpoint: not a resume of this run
    why = nothing_left_to_train(ckpt_path, cfg.trainer)
    if why is None:
        return None
    return (
        f"{run_dir} is a completed run and {ckpt_path} has nothing left to train ({why}): nothing to do. "
        f"Its test metrics stand (metrics.json, of {record.get('tested_checkpoint')}). Raise trainer.max_epochs "
        "(or trainer.max_steps) to train further, or pass retest=true to run the test again."
    )
