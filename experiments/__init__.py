"""The commands (`python -m experiments.<name>`): train, evaluate, sample, enhance, prepare, report, benchmark,
fid_features. What they run on lives in `runtime/`; nothing imports these modules."""

import runtime  # noqa: F401  (installs the start-up SIGUSR1 guard in a SLURM job before anything slow)
