"""Entry points (`python -m experiments.<name>`) and the run-directory machinery they share."""

import os as _os

EARLY_SIGNALS: list[str] = []  # SIGUSR1 received before `train` installed its handlers (experiments.slurm)

if "SLURM_JOB_ID" in _os.environ and _os.name != "nt":
    # In a SLURM job, SIGUSR1 (a requeue request, `--signal=USR1@<s>`) must not kill the process during
    # start-up, before `train` installs its handlers: Python's default action for it is to terminate.
    import signal as _signal

    _signal.signal(_signal.SIGUSR1, lambda signum, frame: EARLY_SIGNALS.append("SIGUSR1"))
