"""How an invocation stops without failing: SIGTERM (`SigtermStop`, recorded `terminated`, exit 143) and
Ctrl-C (`interrupted`, exit 130), told apart from failures by `stop_reason`."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

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
    at the batch boundary. Not in a SLURM job (runtime/slurm.py has its own). Returns whether installed."""
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
