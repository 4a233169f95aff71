"""The report's tables: a metric per setting as mean +- std over seeds (`Spread`), the ablation deltas
against a baseline, and ours against the published numbers in `configs/paper/*.yaml`."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runtime.reporting.runs import ReportError, RunRecord, check_one_protocol
from runtime.results import DATA_KINDS


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Spread:
    """A metric over the runs of one setting, seed-aware.

    The units of the statistics are seeds: the runs of one seed are averaged first, so a repeated seed
    counts once; a run without a recorded seed counts as a unit of its own (and the spread says "runs").
    `std` is the std over those units, except for several runs of a single seed, where it is the std over
    the repeats (`over == "repeats"`: run-to-run nondeterminism, not seed variation). `seed_std` is always the
    std over units (0 for one unit), for standard errors."""

    mean: float
    std: float
    seed_std: float
    n_runs: int
    n_seeds: int  # distinct recorded seeds
    n_unknown: int  # runs without a recorded seed
    over: str  # "" (one run), "seeds", "repeats" or "runs"

    @property
    def n_units(self) -> int:
        return self.n_seeds + self.n_unknown

    def text(self) -> str:
        if self.over == "":
            return f"{self.mean:.4g}"
        head = f"{self.mean:.4g} ± {self.std:.2g}"
        if self.over == "repeats":
            return f"{head} ({self.n_runs} runs, 1 seed: std over repeats, not seeds)"
        if self.over == "runs":
            return f"{head} ({self.n_runs} runs, {self.n_unknown} without a recorded seed: std over runs, not seeds)"
        if self.n_runs > self.n_seeds:
            return f"{head} (n={self.n_seeds} seeds; {self.n_runs} runs, the repeats of a seed averaged)"
        return f"{head} (n={self.n_seeds} seeds)"


def spread(pairs: list[tuple[Any, float]]) -> Spread | None:
    """`pairs` = (seed or None, value) of each run; None for no runs."""
    if not pairs:
        return None
    by_seed: dict[str, list[float]] = defaultdict(list)
    unknown: list[float] = []
    for seed, value in pairs:
        if seed is None:
            unknown.append(value)
        else:
            by_seed[str(seed)].append(value)
    units = [statistics.fmean(v) for v in by_seed.values()] + unknown
    seed_std = statistics.stdev(units) if len(units) > 1 else 0.0
    values = [v for _, v in pairs]
    if len(pairs) == 1:
        over, std = "", 0.0
    elif len(units) == 1:  # one seed, run several times
        over, std = "repeats", statistics.stdev(values)
    else:
        over, std = ("runs" if unknown else "seeds"), seed_std
    return Spread(statistics.fmean(units), std, seed_std, len(pairs), len(by_seed), len(unknown), over)


def metric_spread(runs: list[RunRecord], metric: str) -> Spread | None:
    return spread([(r.seed, r.metrics[metric]) for r in runs if metric in r.metrics])


def fmt(runs: list[RunRecord], metric: str) -> str:
    s = metric_spread(runs, metric)
    return s.text() if s else ""


def seed_count(runs: list[RunRecord]) -> str:
    """The "n seeds" cell of a setting: the distinct seeds, and what else its runs are."""
    seeds = defaultdict(int)
    for r in runs:
        if r.seed is not None:
            seeds[str(r.seed)] += 1
    unknown = sum(r.seed is None for r in runs)
    text = str(len(seeds))
    notes = []
    repeated = sorted(s for s, n in seeds.items() if n > 1)
    if repeated:
        notes.append(f"{len(runs) - unknown} runs; seed {', '.join(repeated)} repeated")
    if unknown:
        notes.append(f"+{unknown} run(s) without a recorded seed")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def data_text(runs: list[RunRecord]) -> str:
    """The data kinds of these runs, e.g. `real subset` (runtime.results.DATA_KINDS)."""
    return ", ".join(DATA_KINDS[k][0] for k in sorted({r.data_kind for r in runs}))


def data_notes(runs: list[RunRecord]) -> list[str]:
    notes = []
    kinds = {r.data_kind for r in runs}
    if "synthetic" in kinds:
        notes.append("**Synthetic data: not comparable with published numbers.**")
    if "real-subset" in kinds:
        notes.append(
            "**Real images, but a subset of the data set (e.g. MNIST's embedded 5k): not comparable with "
            "published numbers on the full set.**"
        )
    if "real-custom" in kinds:
        notes.append("Your own real images: there are no published numbers to compare with.")
    if "unknown" in kinds:
        notes.append("Some runs do not record what their data were: not comparable with published numbers.")
    return notes


Setting = tuple[str, ...]


def assign_settings(runs: list[RunRecord], with_seed: bool = False) -> list[str]:
    """Sets each run's `setting` to its switches minus those all the runs share; returns the shared ones.
    `with_seed`: the job's own overrides, the seed (and `experiment=`) included, as the sweep summary lists
    each job; by default the seed is not part of a setting (the runs of one setting differ in it)."""

    def own(r: RunRecord) -> tuple[str, ...]:
        return r.job_overrides if with_seed else r.switches

    common = set.intersection(*(set(own(r)) for r in runs)) if runs else set()
    for r in runs:
        r.setting = tuple(o for o in own(r) if o not in common)
    return sorted(common)


def by_setting(runs: list[RunRecord]) -> dict[Setting, list[RunRecord]]:
    groups: dict[Setting, list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[r.setting].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0])))


def settings_table(groups: dict[Setting, list[RunRecord]], metrics: list[str]) -> str:
    """One row per setting: its switches, seeds, each metric as mean +- std over seeds, data kinds, commits."""
    rows = []
    for setting, rs in groups.items():
        seeds = sorted({r.seed_text for r in rs}, key=lambda s: (len(s), s))
        rows.append(
            [
                " ".join(setting) or "(as configured)",
                ",".join(seeds),
                seed_count(rs),
                *(fmt(rs, m) for m in metrics),
                data_text(rs),
                ", ".join(sorted({r.commit for r in rs})),
            ]
        )
    return markdown_table(["setting", "seeds", "n seeds", *metrics, "data", "commit"], rows)


def delta_cell(a: Spread | None, b: Spread | None) -> str:
    """mean(a) - mean(b) +- the standard error of the difference over seeds (a setting with one seed,
    however often it was run, adds no seed variance); empty where either has no value."""
    if a is None or b is None:
        return ""
    se = math.sqrt(a.seed_std**2 / a.n_units + b.seed_std**2 / b.n_units)
    return f"{a.mean - b.mean:+.4g}" + (f" ± {se:.2g}" if a.n_units > 1 or b.n_units > 1 else "")


def delta_table(
    experiment: str, groups: dict[Setting, list[RunRecord]], metrics: list[str], baseline: Setting | None
) -> list[str]:
    """The ablation deltas of every setting against `baseline` (default: the one with fewest switches)."""
    base = baseline if baseline is not None else min(groups, key=len)
    if base not in groups:
        raise ReportError(
            f"--baseline {' '.join(base)!r} matches no setting of {experiment}; settings: {[' '.join(s) for s in groups]}"
        )
    drows = [
        [
            " ".join(setting),
            *(delta_cell(metric_spread(rs, m), metric_spread(groups[base], m)) for m in metrics),
        ]
        for setting, rs in groups.items()
        if setting != base
    ]
    return [
        f"Deltas against the baseline `{' '.join(base) or '(as configured)'}` (± standard error of the difference over seeds; a setting with one seed adds no seed variance):",
        "",
        markdown_table(["setting", *metrics], drows),
        "",
    ]


def experiment_tables(
    experiment: str, runs: list[RunRecord], baseline: Setting | None
) -> tuple[str, dict[str, Any]]:
    """The section of one experiment (its completed runs with metrics): the settings table, the data, and the
    deltas against the baseline; also {"groups": runs by setting, "metrics": the reported metrics}."""
    done = [r for r in runs if r.status == "completed" and r.metrics]
    if not done:
        return f"## {experiment}\n\nNo completed run with metrics.\n", {}
    metrics = sorted(
        {k for r in done for k in r.metrics if k.startswith("test/")} or {k for r in done for k in r.metrics}
    )
    common = assign_settings(done)
    groups = by_setting(done)
    for m in metrics:
        check_one_protocol(m, [r for r in done if m in r.metrics])
    text = [f"## {experiment}", ""]
    if common:
        text += [f"Overrides shared by all these runs: `{' '.join(common)}`", ""]
    text += [settings_table(groups, metrics), ""]
    labels = sorted({f"{r.data_label} ({DATA_KINDS[r.data_kind][0]})" for r in done})
    text.append("Data: " + "; ".join(labels) + "".join(f"  \n{n}" for n in data_notes(done)))
    text.append("")
    if len(groups) > 1:
        text += delta_table(experiment, groups, metrics, baseline)
    return "\n".join(text), {"groups": groups, "metrics": metrics}


def load_paper(paper_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not paper_dir.is_dir():
        return out
    for f in sorted(paper_dir.glob("*.yaml")):
        entry = yaml.safe_load(f.read_text()) or {}
        for key in ("experiment", "source", "metrics"):
            if key not in entry:
                raise ReportError(
                    f"{f}: missing key {key!r} (expected experiment, source, metrics, and optionally data, protocol, comparable, why)"
                )
        entry["file"] = f.name
        out[entry["experiment"]].append(entry)
    return out


def paper_table(experiment: str, groups: dict[Setting, list[RunRecord]], papers: list[dict[str, Any]]) -> str:
    rows = []
    for paper in papers:
        for metric, value in paper["metrics"].items():
            ours = [r for rs in groups.values() for r in rs if metric in r.metrics and not r.setting] or [
                r for rs in groups.values() for r in rs if metric in r.metrics
            ]
            if not ours:
                comparable = "no run has this metric"
            elif not all(r.comparable for r in ours):
                r = next(r for r in ours if not r.comparable)
                comparable = f"no: ours on {r.data_label} ({DATA_KINDS[r.data_kind][0]})"
            elif paper.get("comparable") is False:
                comparable = f"no: {paper.get('why', 'see the paper file')}"
            else:
                comparable = "yes, if the protocols match: " + str(
                    paper.get("protocol", "see the paper file")
                )
            rows.append(
                [metric, fmt(ours, metric), value, paper["source"], paper.get("data", ""), comparable]
            )
    return "\n".join(
        [
            f"### {experiment}: ours against published numbers",
            "",
            markdown_table(["metric", "ours", "published", "source", "their data", "comparable?"], rows),
            "",
        ]
    )
