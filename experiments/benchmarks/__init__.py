"""Benchmark suites for `python -m experiments.benchmark <suite>`; each module exposes `add_arguments` and `run`."""
