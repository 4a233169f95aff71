"""`python -m experiments.prepare data=<name> [overrides]`: verify a data set folder before training on it.

Builds the configured DataModule (the synthetic default is generated and cached here if it is the source),
then runs its `check(full=...)`: every folder of the layout, the low/high pairing, every image decoded (or only
its header with `full=false`), sizes within pairs, colour modes. Prints the counts, sizes and every problem
found (not only the first), writes the same as `check.json` in the run directory, and exits with status 2
when there is a problem, so scripts can gate on it.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from core.errors import ConfigError, UserError
from core.files import write_json_atomic
from runtime.cli import entry_point

log = logging.getLogger("experiments")


def prepare(cfg: DictConfig) -> int:
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data)
    check = getattr(datamodule, "check", None)
    if not callable(check):
        raise ConfigError(f"{cfg.data._target_} has no check() method: nothing to verify")
    report = check(full=bool(cfg.get("full", True)))
    print(report.format(), flush=True)
    described = datamodule.describe() if report.ok and hasattr(datamodule, "describe") else {}
    if described.get("synthetic"):
        print(
            f"data: SYNTHETIC ({described.get('label', cfg.data.get('source'))}): generated here, not the real data "
            "set; numbers on it are never comparable with papers (data.source=local data.path=<dir> for the real one)",
            flush=True,
        )
    elif described.get("kind"):
        print(f"data: {described['kind']} ({described.get('label', '')})", flush=True)
    out = f"{cfg.paths.output_dir}/check.json"
    write_json_atomic(Path(out), dataclasses.asdict(report))
    print(f"report: {out}", flush=True)
    return 0 if report.ok else UserError.exit_code  # bad data: the report is the message


@entry_point("prepare")
def main(cfg: DictConfig) -> None:
    code = prepare(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
