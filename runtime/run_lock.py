"""One live invocation per run directory: `RunLock` (`<run dir>/.lock`: pid, host, start, command), taken by
rank zero before the suite writes anything and released at exit (runtime/run_dir.py describes the contract).

A second invocation is refused (`RunDirectoryInUse`, exit 2) naming the holder; a lock whose holder is gone
(its pid on this host, an earlier restart of the same SLURM job, or no heartbeat from another host for
`STALE_AFTER_S`) is taken over and said so."""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from runtime import slurm
from runtime.provenance import now

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

    def __init__(
        self, path: Path, fd: int, record: dict[str, Any], took_over: tuple[dict[str, Any], str] | None
    ):
        self.path, self.fd, self.record, self.took_over = path, fd, record, took_over
        self._stop = threading.Event()

    @classmethod
    def acquire(cls, run_dir: Path, task: str, command: str, env: Mapping[str, str] = os.environ) -> RunLock:
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
