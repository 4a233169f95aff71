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
"""

from __future__ import annotations

import atexit
import csv
import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from core.errors import ConfigError
from data.images import write_atomic
from experiments import slurm

log = logging.getLogger("experiments")

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


# ------------------------------------------------------------------------------------- one live run per directory
LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0  # the holder touches its lock this often (another host can only judge it by that)
STALE_AFTER_S = 600.0  # a lock of another host without a heartbeat for this long is stale


class RunDirectoryInUse(ConfigError):
    """Another live invocation holds the run directory (`hydra.run.dir`): its lock file `.lock`."""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process `pid` from /proc, None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process `pid` of this host is alive, and (given its recorded start) still the same process:
    a zombie is dead, a pid reused by a later process is not the holder."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    return start_ticks is None or ticks == start_ticks


def _same_submission_earlier_restart(holder: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """Why a lock of another restart of this very SLURM job is stale (SLURM restarts a job only after its
    previous run ended), else None."""
    mine, theirs = slurm.submission(env), holder.get("submission") or {}
    if not mine or not theirs:
        return None
    same = theirs.get("cluster") == mine["cluster"] and str(theirs.get("job")) == str(mine["job"])
    if same and int(theirs.get("restart") or 0) < mine["restart"]:
        return (
            f"it belongs to restart {theirs.get('restart') or 0} of SLURM job {mine['job']}, which SLURM ended "
            f"before starting this restart {mine['restart']}"
        )
    return None


def holder_state(
    holder: Mapping[str, Any] | None,
    heartbeat_age: float | None,
    flocked: bool | None = None,
    env: Mapping[str, str] = os.environ,
) -> tuple[bool, str]:
    """(live, why it is not) for the record of a lock file. `flocked`: whether we got the file's flock (None:
    not tried or not supported); on this host the pid decides, on another the heartbeat (the file's mtime)."""
    if not holder or not holder.get("pid"):
        if flocked is False:
            return True, ""  # held, the record is being written right now
        return False, "the lock file holds no record"
    why = _same_submission_earlier_restart(holder, env)
    if why:
        return False, why
    if holder.get("host") == socket.gethostname():
        if pid_alive(holder["pid"], holder.get("pid_start_ticks")):
            return True, ""
        return False, f"process {holder['pid']} is gone from {holder['host']}"
    if flocked is False:
        return True, ""  # a file system that shares locks across hosts says it is held
    if heartbeat_age is not None and heartbeat_age > STALE_AFTER_S:
        return False, f"no heartbeat from {holder.get('host')} for {heartbeat_age / 60:.0f} min"
    return True, ""


def _read_lock(data: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(data.decode() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The record of the live invocation that holds `run_dir`, else None (no lock, or a stale one). Reads only."""
    path = Path(run_dir) / LOCK_NAME
    try:
        data = path.read_bytes()
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    holder = _read_lock(data)
    live, _ = holder_state(holder, age)
    return holder if live else None


def in_use_message(run_dir: Path, holder: Mapping[str, Any] | None, age: float | None = None) -> str:
    if not holder:
        return f"{run_dir} is being taken by another run at this very moment; give this one another hydra.run.dir."
    beat = ""
    if holder.get("host") != socket.gethostname() and age is not None:
        beat = f", last heartbeat {age:.0f} s ago"
    return (
        f"{run_dir} is in use by another run: pid {holder.get('pid')} on {holder.get('host')}, running "
        f"`{holder.get('task')}` since {holder.get('started')}{beat} ({holder.get('command')}). Only one live run "
        "per directory: wait for it to end, or give this one another hydra.run.dir. (If that process is "
        f"certainly gone, delete {Path(run_dir) / LOCK_NAME}.)"
    )


def _linked(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd` (a releasing holder unlinks it)."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _try_flock(fd: int) -> bool | None:
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # not supported by this file system
        return None


_HELD: dict[str, RunLock] = {}


class RunLock:
    """`<run dir>/.lock` held by this process: an exclusive flock on the file (atomic between processes of
    one host, and across hosts where the file system shares locks), its record (pid, host, start, command,
    SLURM submission) for messages and for judging it stale, and a heartbeat (the file's mtime, every
    `HEARTBEAT_S`) for hosts that cannot check the pid. Released by `release()` or at interpreter exit."""

    def __init__(self, path: Path, fd: int, record: dict[str, Any], took_over: tuple[dict[str, Any], str] | None):
        self.path, self.fd, self.record, self.took_over = path, fd, record, took_over
        self._stop = threading.Event()

    @classmethod
    def acquire(
        cls, run_dir: Path, task: str, command: str, env: Mapping[str, str] = os.environ
    ) -> RunLock:
        """Takes the lock of `run_dir` or raises RunDirectoryInUse naming the live holder. A stale lock is
        taken over: `took_over` holds its record and why it was stale."""
        run_dir = Path(run_dir)
        path = run_dir / LOCK_NAME
        earlier = _HELD.get(str(path.absolute()))
        if earlier is not None:  # an invocation of this process (a test, a notebook) that did not release it
            earlier.release()
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            keep = False
            try:
                flocked = _try_flock(fd)
                holder = _read_lock(os.pread(fd, 1 << 16, 0))
                if not _linked(path, fd):
                    continue  # released (unlinked) meanwhile: try again on the new file
                age = time.time() - os.fstat(fd).st_mtime
                live, why = holder_state(holder, age, flocked, env)
                if live:
                    raise RunDirectoryInUse(in_use_message(run_dir, holder, age))
                if flocked is False:  # the dead holder's flock lives on in leftovers (forked workers)
                    if _linked(path, fd):
                        path.unlink(missing_ok=True)
                    continue
                record = {
                    "pid": os.getpid(),
                    "pid_start_ticks": (_proc_stat(os.getpid()) or (None, None))[1],
                    "host": socket.gethostname(),
                    "started": now(),
                    "task": task,
                    "command": command,
                    "submission": slurm.submission(env),
                }
                data = (json.dumps(record) + "\n").encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                lock = cls(path, fd, record, (holder, why) if holder else None)
                keep = True
            finally:
                if not keep:
                    os.close(fd)
            lock._start_heartbeat()
            _HELD[str(path.absolute())] = lock
            atexit.register(lock.release)
            return lock
        raise RunDirectoryInUse(f"{path}: the lock changed hands repeatedly while taking it; try again")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.fd)
                except (OSError, TypeError):
                    return

        threading.Thread(target=beat, name="run-dir-lock-heartbeat", daemon=True).start()

    def release(self) -> None:
        """Removes the lock file (while still holding it) and closes it; idempotent."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        self._stop.set()
        try:
            if _linked(self.path, fd):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)
        if _HELD.get(str(self.path.absolute())) is self:
            del _HELD[str(self.path.absolute())]


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
        return None  # Hydra wrote its own, or composed outside the CLI (experiments.config.compose)
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


# ------------------------------------------------------------------------------------- signals
STOP_EXIT_CODES = {"interrupted": 130, "terminated": 143}  # 128 + SIGINT, 128 + SIGTERM


class SigtermStop(SystemExit):
    """SIGTERM (outside a SLURM job) stopped this invocation where no Lightning stage was running; during one,
    Lightning's own handler stops at the next batch boundary (its SIGTERMException)."""

    def __init__(self) -> None:
        super().__init__(STOP_EXIT_CODES["terminated"])


def _on_sigterm(signum: int, frame: Any) -> None:
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # not called through Lightning's handler: stop here
        raise SigtermStop()


def install_sigterm_handler() -> bool:
    """SIGTERM raises SigtermStop (recorded `terminated`, exit 143) instead of killing the process unrecorded.
    Inside a Lightning stage Lightning's handler runs first and calls this one, which then only lets it stop
    at the batch boundary. Not in a SLURM job (experiments/slurm.py has its own). Returns whether installed."""
    if os.name == "nt" or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def stop_reason(err: BaseException) -> tuple[str, str] | None:
    """(status, signal) when `err` is the end of a stopped invocation rather than a failure: ("terminated",
    "SIGTERM") for SIGTERM (Lightning's SIGTERMException, a SystemExit(None)), ("interrupted", "SIGINT") for
    Ctrl-C (Lightning turns KeyboardInterrupt into sys.exit(1))."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, SIGTERMException | SigtermStop):
            return "terminated", "SIGTERM"
        if isinstance(e, KeyboardInterrupt):
            return "interrupted", "SIGINT"
        e = e.__cause__ or e.__context__
    return None


# ------------------------------------------------------------------------------------- CSV across resumes
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one continues it: the rows of
    every invocation, in the order they were written (the header grows when a later invocation logs new keys)."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            header = next(csv.reader(f), [])
        self.metrics_keys = [k for k in header if k]  # the file's order: rows are appended under it


class ResumableCSVLogger(CSVLogger):
    """`logger=csv`: Lightning's CSVLogger whose `metrics.csv` keeps the rows of earlier invocations of the run
    (a resumed run appends; steps after the checkpoint it resumed from appear once per invocation that ran
    them). `hparams.yaml` holds the config of the latest invocation."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            from pytorch_lightning.utilities.rank_zero import rank_zero_only

            if rank_zero_only.rank != 0:
                return super().experiment
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


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
