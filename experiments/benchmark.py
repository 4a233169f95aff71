"""`python -m experiments.benchmark <suite> [options]`: speed and quality against a baseline measured in the
same run, printed as ratios. Suites: see `python -m experiments.benchmark --help`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUITES = {
    "vae": "experiments.benchmarks.vae",
    "ddp": "experiments.benchmarks.ddp",
    "ddpm": "experiments.benchmarks.ddpm",
    "lowlight_data": "experiments.benchmarks.lowlight",
    "cls": "experiments.benchmarks.cls",
    "nerco": "experiments.benchmarks.nerco",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    modules = {}
    for name, path in SUITES.items():
        module = importlib.import_module(path)
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
    args = parser.parse_args(argv)
    return modules[args.suite].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
