"""Requeue at a batch boundary: the signal handlers (SIGUSR1 asks for a requeue, SIGTERM for a stop) and the
`SlurmRequeue` callback that acts on them, the same batch on every DDP rank. The protocol is described in
runtime/slurm.py's docstring."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback

from runtime.slurm import REQUEUE_CHECKPOINT, in_slurm_batch_job, job_id, remove_superseded

log = logging.getLogger("experiments")


# ------------------------------------------------------------------------------------- signals
class _Request:
    """Process-wide: which signal asked this job to stop (set by the handlers only)."""

    signal: str | None = None
    fit_running = False

    @classmethod
    def mark(cls, name: str) -> None:
        if cls.signal is None or name == "SIGTERM":
            cls.signal = name

    @classmethod
    def clear(cls) -> None:
        cls.signal = None


class Requeued(SystemExit):
    """This invocation stopped for a SLURM requeue; it exits with status 0 and returns no result (so a
    launcher waiting on the job sees it run again, not fail)."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


class Terminated(Exception):
    """SIGTERM from SLURM (scancel, `scontrol requeue`, preemption) stopped this invocation."""


def _on_usr1(signum: int, frame: Any) -> None:
    _Request.mark("SIGUSR1")


def _on_term(signum: int, frame: Any) -> None:
    _Request.mark("SIGTERM")
    if not _Request.fit_running:  # nothing to checkpoint at a batch boundary: stop now
        raise Terminated("SIGTERM from SLURM (scancel, scontrol requeue, preemption or node shutdown)")


def install_signal_handlers(env: Mapping[str, str] = os.environ) -> bool:
    """In a SLURM batch job: SIGUSR1 marks a requeue request instead of killing the process (Python's
    default), and SIGTERM stops at the next batch boundary during fit. Returns whether installed."""
    if not in_slurm_batch_job(env) or os.name == "nt":
        return False
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    import runtime

    if runtime.EARLY_SIGNALS:  # received during start-up
        _Request.mark(runtime.EARLY_SIGNALS[-1])
        runtime.EARLY_SIGNALS.clear()
    signal.signal(signal.SIGUSR1, _on_usr1)
    signal.signal(signal.SIGTERM, _on_term)
    return True


def requested() -> str | None:
    return _Request.signal


def scontrol_requeue(env: Mapping[str, str] = os.environ) -> str | None:
    """Asks SLURM to requeue this job; returns None on success, else why not."""
    jid = job_id(env)
    if not jid or not re.fullmatch(r"[0-9_]+", jid):
        return f"no usable SLURM job id ({jid!r})"
    try:
        res = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`scontrol requeue {jid}` could not run: {err}"
    if res.returncode != 0:
        return f"`scontrol requeue {jid}` failed: {(res.stderr or res.stdout).strip()}"
    return None


def job_state(env: Mapping[str, str] = os.environ) -> str | None:
    """The job's state as SLURM's controller reports it (e.g. RUNNING, REQUEUED, CANCELLED)."""
    jid = env.get("SLURM_JOB_ID")
    if not jid:
        return None
    try:
        res = subprocess.run(
            ["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


class RequeueRequested(Exception):
    """Raised inside `fit` at the batch boundary where a requeue checkpoint was written."""

    def __init__(self, signal_name: str, checkpoint: Path | None):
        super().__init__(f"{signal_name}: stopped at a batch boundary, checkpoint {checkpoint}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class SlurmRequeue(Callback):
    """Acts on a requeue or termination signal at a training-batch boundary (module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    # Lightning installs its own SIGTERM handler when each stage starts; the suite's replaces it again.
    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        install_signal_handlers()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        install_signal_handlers()
        _Request.fit_running = True
        if self._agreed(trainer):  # signalled during start-up: the state is the one we resumed from
            raise RequeueRequested(_Request.signal or "SIGUSR1", None)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        install_signal_handlers()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        install_signal_handlers()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.validation_follows(trainer, batch_idx):
            return  # the request waits for the next batch (after validation and the epoch-end checkpoint)
        if not self._agreed(trainer):
            return
        path = self.run_dir / "checkpoints" / REQUEUE_CHECKPOINT
        trainer.save_checkpoint(path)
        raise RequeueRequested(_Request.signal or "SIGUSR1", path)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            remove_superseded(self.run_dir)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        _Request.fit_running = False
        if trainer.is_global_zero:
            remove_superseded(self.run_dir)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        _Request.fit_running = False

    @staticmethod
    def validation_follows(trainer: Any, batch_idx: int) -> bool:
        """Whether Lightning runs validation (or ends the epoch) right after this batch. A checkpoint taken
        there is not a clean resume point: restored from it, Lightning 2.6 does not redo that validation and
        epoch end, and the resumed run leaves the uninterrupted one (tests/test_slurm_requeue.py,
        last-batch-of-an-epoch). Same answer on every rank (batch_idx and the loader length are shared)."""
        n = trainer.num_training_batches
        if isinstance(n, int) and batch_idx + 1 >= n:
            return True
        every = getattr(trainer, "val_check_batch", None)
        return isinstance(every, int) and every > 0 and (batch_idx + 1) % every == 0

    @staticmethod
    def _agreed(trainer: Any) -> bool:
        """Whether any rank was signalled; every rank gets the same answer at the same batch (SIGTERM wins)."""
        code = {None: 0, "SIGUSR1": 1, "SIGTERM": 2}.get(_Request.signal, 1)
        if trainer.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                t = torch.tensor([code], device=trainer.strategy.root_device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                agreed = int(t.item())
                if agreed > code:
                    _Request.mark("SIGTERM" if agreed == 2 else "SIGUSR1")  # another rank's signal
                code = agreed
        return code > 0
