"""`python -m experiments.report [RUN_OR_SWEEP_DIR ...] [--out DIR]`: tables and plots from run directories.

Reads `run_info.json` and `metrics.json` of every run under the given directories (nothing from the
network) and writes `report.md` and `plots/*.png`:
- per experiment, one row per setting (its switches: the overrides that change what is computed, seed
  excluded), each metric as mean +- std over distinct seeds with the number of seeds. Runs that repeat a
  seed are averaged into that seed first; a setting with one seed run several times shows the std over
  those repeats and says so ("2 runs, 1 seed: std over repeats, not seeds"), never as a seed spread;
- ablation deltas against the baseline setting (no switches, or `--baseline "a=1 b=2"`), with the standard
  error of the difference over seeds;
- ours against the published numbers in `configs/paper/*.yaml`, with their source, and whether they are
  comparable (never for synthetic data or a subset of a data set);
- plots: a metric against a numeric switch (e.g. FID against sampler steps, one line per sampler), or bars
  per setting (e.g. PSNR/SSIM per ablation), with units on the axes (dB, nats per image, steps, epochs);
- provenance: for every run, what its data were (synthetic, a real subset such as MNIST's embedded 5k, the
  full real data set, or your own folders), the protocol of its numbers, its commit.

Numbers measured under different protocols never share a column: the report refuses and says which runs
and which protocol fields differ. Fields that a setting deliberately varies (e.g. `steps` in a sampler
sweep) are not held against it.

The tables and plots are built by `runtime.reporting`; this module is the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import UserError
from runtime.config import CONFIG_DIR
from runtime.reporting import (
    ReportError,
    RunRecord,
    assign_settings,
    build_figure,
    build_report,
    by_setting,
    find_runs,
    markdown_table,
)

# the report's machinery is runtime/reporting/ (runs, tables, plots, document); these names stay importable here
__all__ = [
    "ReportError",
    "RunRecord",
    "assign_settings",
    "build_figure",
    "build_report",
    "by_setting",
    "find_runs",
    "main",
    "markdown_table",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dirs", nargs="*", type=Path, help="run or sweep directories (default: logs/)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first dir>/report)")
    parser.add_argument(
        "--paper-dir", type=Path, default=CONFIG_DIR / "paper", help="published numbers (configs/paper)"
    )
    parser.add_argument(
        "--baseline", default=None, help='the baseline setting for deltas, e.g. "model.use_nrn=false"'
    )
    args = parser.parse_args(argv)
    dirs = args.dirs or [CONFIG_DIR.parent / "logs"]
    out = args.out or dirs[0] / "report"
    baseline = tuple(sorted(args.baseline.split())) if args.baseline is not None else None
    try:
        path = build_report(dirs, out, args.paper_dir, baseline)
    except UserError as err:
        print(f"report: {err}", file=sys.stderr)
        return err.exit_code
    print(path.read_text())
    print(f"Report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
