"""What the entry points run on: the run directory, callbacks, checkpoints, SLURM, trackers, configs and the CLI contract.

Imported first by every entry point (`experiments/__init__.py`), so the SIGUSR1 guard below is in place before
anything slow is imported."""

import os as _os

EARLY_SIGNALS: list[str] = []  # SIGUSR1 received before `train` installed its handlers (runtime.slurm)

if "SLURM_JOB_ID" in _os.environ and _os.name != "nt":
    # In a SLURM job, SIGUSR1 (a requeue request, `--signal=USR1@<s>`) must not kill the process during
    # start-up, before `train` installs its handlers: Python's default action for it is to terminate.
    import signal as _signal

    _signal.signal(_signal.SIGUSR1, lambda signum, frame: EARLY_SIGNALS.append("SIGUSR1"))
