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
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import InputError, MissingFileError, UserError
from experiments import run_dir as rd
from experiments.common import switch_overrides
from experiments.config import CONFIG_DIR
from experiments.results import DATA_KINDS, data_kind


class ReportError(InputError):
    """The runs cannot be reported as asked (none found, incomparable protocols, ...)."""


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class RunRecord:
    path: Path
    info: dict[str, Any]
    metrics: dict[str, float]
    protocol: dict[str, Any]
    data: dict[str, Any] | None
    setting: tuple[
        str, ...
    ] = ()  # the switches that vary among the runs reported together (set by the report)

    @property
    def experiment(self) -> str:
        return str(self.info.get("experiment") or "unknown")

    @property
    def status(self) -> str:
        """The recorded status; a `running` record whose process is gone reads `killed` (experiments/run_dir.py)."""
        return rd.recorded_status(self.path, self.info)

    @property
    def status_text(self) -> str:
        """The status, and those of the invocations after a completed run that did not complete (run_info.json
        `later_invocations`: they left the completed run's record and metrics.json as they were)."""
        later = [rd.recorded_status(self.path, inv) for inv in self.info.get("later_invocations") or []]
        return f"{self.status} (later: {', '.join(later)})" if later else self.status

    @property
    def seed(self) -> Any:
        """The recorded seed (run_info.json), else a `seed=` override; None when neither says."""
        seed = self.info.get("seed")
        if seed is None:
            for o in self.info.get("overrides") or []:
                key, _, value = o.lstrip("+~").partition("=")
                if key == "seed" and value:
                    seed = value
        return seed

    @property
    def seed_text(self) -> str:
        return "?" if self.seed is None else str(self.seed)

    @property
    def switches(self) -> tuple[str, ...]:
        """What this run changed relative to its experiment's config, seed excluded."""
        return tuple(
            sorted(
                o
                for o in switch_overrides(self.info.get("overrides"))
                if o.split("=", 1)[0].lstrip("+~") != "seed"
            )
        )

    @property
    def job_overrides(self) -> tuple[str, ...]:
        """What this job was given on top of the config, seed and `experiment=` included (the sweep summary)."""
        given = self.info.get("overrides") or []
        keep = set(switch_overrides(given))
        return tuple(sorted(o for o in given if o in keep or o.lstrip("+~").split("=", 1)[0] == "experiment"))

    @property
    def switch_keys(self) -> set[str]:
        """The override's key and each of its parts: `model.components.nrn=false` and the config-group
        choice `model/components=no_nrn` both name the protocol entry `components` as a varied field."""
        keys = set()
        for o in self.switches:
            key = o.split("=", 1)[0].lstrip("+~")
            keys |= {key, *key.replace("/", ".").split(".")}
        return keys

    @property
    def data_kind(self) -> str:
        """`synthetic`, `real-subset`, `real-custom`, `real` or `unknown` (experiments.results.DATA_KINDS)."""
        return data_kind(self.data)

    @property
    def synthetic(self) -> bool:
        return self.data_kind == "synthetic"

    @property
    def comparable(self) -> bool:
        """Numbers on the full real data set that the data module itself calls comparable with papers."""
        return self.data_kind == "real" and bool((self.data or {}).get("comparable_with_papers", False))

    @property
    def data_label(self) -> str:
        return str((self.data or {}).get("label", "unknown data"))

    @property
    def commit(self) -> str:
        git = self.info.get("git") or {}
        commit = (git.get("commit") or "unknown")[:10]
        return commit + ("+dirty" if git.get("dirty") else "")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def find_runs(dirs: list[Path], strict: bool = True) -> list[RunRecord]:
    """Every run directory (one holding run_info.json) under `dirs`, W&B's own folders skipped."""
    runs = []
    for d in dirs:
        if not d.exists():
            raise MissingFileError(f"{d} does not exist; expected a run directory or a sweep directory")
        for info_path in sorted(d.rglob("run_info.json")):
            if "wandb" in info_path.relative_to(d).parts:
                continue
            info = _read_json(info_path)
            if info is None:
                raise ReportError(f"{info_path} is not valid JSON")
            if info.get("overrides") is None:  # not recorded: Hydra's own copy of the job's overrides
                hydra_overrides = info_path.parent / ".hydra" / "overrides.yaml"
                try:
                    info["overrides"] = list(yaml.safe_load(hydra_overrides.read_text()) or [])
                except (OSError, yaml.YAMLError):
                    pass
            body = _read_json(info_path.parent / "metrics.json") or {}
            metrics = {
                k: float(v)
                for k, v in body.items()
                if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            data = body.get("data") or info.get("data")
            runs.append(RunRecord(info_path.parent, info, metrics, body.get("protocol") or {}, data))
    if strict and not runs:
        raise ReportError(f"no run directories (with run_info.json) under {', '.join(map(str, dirs))}")
    return runs


# ------------------------------------------------------------------------------------------------ protocol
def protocol_fingerprint(run: RunRecord, metric: str) -> dict[str, str]:
    """The protocol fields that bear on `metric`: general fields plus the metric's own entry, and the data
    the number was computed on; fields named by the run's own switches are left out (they are the setting)."""
    varied = run.switch_keys
    out = {}
    for key, value in run.protocol.items():
        if "/" in key and key != metric:
            continue  # another metric's entry
        if key in varied:
            continue
        out[key] = json.dumps(value, sort_keys=True)
    if "data" not in varied and not (varied & {"source", "path", "hub_id"}):
        out["data"] = run.data_label
    return out


def check_one_protocol(metric: str, runs: list[RunRecord]) -> None:
    first = runs[0]
    ref = protocol_fingerprint(first, metric)
    for run in runs[1:]:
        fp = protocol_fingerprint(run, metric)
        if fp != ref:
            keys = sorted(k for k in set(ref) | set(fp) if ref.get(k) != fp.get(k))
            detail = "; ".join(f"{k}: {ref.get(k, '(absent)')} vs {fp.get(k, '(absent)')}" for k in keys[:4])
            raise ReportError(
                f"{metric}: {first.path} and {run.path} were measured under different protocols ({detail}). "
                "Refusing to put them in one column: report them separately, or re-evaluate them under one protocol."
            )


# ------------------------------------------------------------------------------------------------ tables
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
    """The data kinds of these runs, e.g. `real subset` (experiments.results.DATA_KINDS)."""
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


def experiment_tables(
    experiment: str, runs: list[RunRecord], baseline: Setting | None
) -> tuple[str, dict[str, Any]]:
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
    text = [f"## {experiment}", ""]
    if common:
        text += [f"Overrides shared by all these runs: `{' '.join(common)}`", ""]
    text += [markdown_table(["setting", "seeds", "n seeds", *metrics, "data", "commit"], rows), ""]
    labels = sorted({f"{r.data_label} ({DATA_KINDS[r.data_kind][0]})" for r in done})
    text.append("Data: " + "; ".join(labels) + "".join(f"  \n{n}" for n in data_notes(done)))
    text.append("")
    if len(groups) > 1:
        base = baseline if baseline is not None else min(groups, key=len)
        if base not in groups:
            raise ReportError(
                f"--baseline {' '.join(base)!r} matches no setting of {experiment}; settings: {[' '.join(s) for s in groups]}"
            )
        drows = []
        for setting, rs in groups.items():
            if setting == base:
                continue
            cells = []
            for m in metrics:
                a, b = metric_spread(rs, m), metric_spread(groups[base], m)
                if a is None or b is None:
                    cells.append("")
                    continue
                # over seeds: a setting with one seed (however often it was run) adds no seed variance
                se = math.sqrt(a.seed_std**2 / a.n_units + b.seed_std**2 / b.n_units)
                cells.append(
                    f"{a.mean - b.mean:+.4g}" + (f" ± {se:.2g}" if a.n_units > 1 or b.n_units > 1 else "")
                )
            drows.append([" ".join(setting), *cells])
        text += [
            f"Deltas against the baseline `{' '.join(base) or '(as configured)'}` (± standard error of the difference over seeds; a setting with one seed adds no seed variance):",
            "",
            markdown_table(["setting", *metrics], drows),
            "",
        ]
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


# ------------------------------------------------------------------------------------------------ plots
# axis label of a metric, by its last key part (`test/psnr`, `test/wiener/psnr`): name, unit, which way is better
METRIC_UNITS = {
    "psnr": "PSNR (dB, higher is better)",
    "ssim": "SSIM (unitless, 0 to 1, higher is better)",
    "lpips": "LPIPS (unitless distance, lower is better)",
    "fid": "FID (unitless, lower is better)",
    "elbo": "negative ELBO (nats per image, lower is better)",
    "nll": "NLL (nats per image, lower is better)",
    "recon": "reconstruction -log p(x|z) (nats per image)",
    "kl": "KL(q(z|x) || p(z)) (nats per image)",
    "bpd": "bits per dimension (lower is better)",
    "accuracy": "accuracy (fraction correct, 0 to 1)",
    "loss": "loss (the training objective's units)",
    "mae": "MAE (on the [0, 1] pixel scale, lower is better)",
    "mse": "MSE (on the [0, 1] pixel scale, lower is better)",
}
# axis label of a numeric switch, by its last key part (`trainer.max_epochs`, `steps`)
SWITCH_UNITS = {
    "max_epochs": "training epochs",
    "max_steps": "training steps (optimizer updates)",
    "steps": "sampler steps (network evaluations per image)",
    "num_samples": "generated images",
    "guidance_scale": "guidance scale w (unitless)",
    "beta": "β, the KL weight (unitless)",
    "lr": "learning rate",
    "batch_size": "batch size (images)",
    "latent_dim": "latent dimensions",
    "crop": "training crop (pixels)",
    "size": "image size (pixels)",
    "nll_samples": "importance samples K",
    "seed": "seed",
}


def metric_label(metric: str) -> str:
    """The y axis of a metric: name and unit (e.g. `test/psnr` -> "test PSNR (dB, higher is better)")."""
    parts = metric.split("/")
    unit = METRIC_UNITS.get(parts[-1])
    if unit is None:
        return metric + " (unit not recorded)"
    return " ".join([*parts[:-1], unit])


def switch_label(key: str) -> str:
    """The x axis of a numeric switch: the override's key and what it counts."""
    what = SWITCH_UNITS.get(key.replace("/", ".").split(".")[-1])
    return f"{key}: {what}" if what else key


def _numeric(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _data_note(runs: list[RunRecord]) -> str:
    kinds = {r.data_kind for r in runs} - {"real"}
    return f" ({', '.join(DATA_KINDS[k][0] for k in sorted(kinds))} data)" if kinds else ""


def build_figure(experiment: str, groups: dict[Setting, list[RunRecord]], metric: str) -> Any:
    """One metric's figure: against a numeric switch (one line per value of the other switches), else bars
    per setting. Error bars: std over seeds (over the repeats where a setting has one seed, said in the
    legend). Returns the matplotlib Figure (`fig.axes[0]` holds the labels); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parsed = {s: dict(o.lstrip("+~").split("=", 1) for o in s) for s in groups}
    keys = set().union(*parsed.values())
    numeric = [
        k
        for k in sorted(keys)
        if all(k in p and _numeric(p[k]) is not None for p in parsed.values())
        and len({p[k] for p in parsed.values()}) > 1
    ]
    spreads = {s: metric_spread(rs, metric) for s, rs in groups.items()}
    not_seeds = any(sp is not None and sp.over in ("repeats", "runs") for sp in spreads.values())
    bar_meaning = "error bars: ± std over seeds" + (
        "\n(over repeated runs where a setting has one seed)" if not_seeds else ""
    )
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if numeric:
        x = numeric[0]
        lines: dict[str, list[tuple[float, Spread]]] = defaultdict(list)
        for s in groups:
            other = " ".join(f"{k}={v}" for k, v in sorted(parsed[s].items()) if k != x) or "as configured"
            if spreads[s] is not None:
                lines[other].append((float(parsed[s][x]), spreads[s]))
        for name, pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda p: p[0])
            ax.errorbar(
                [p[0] for p in pts],
                [p[1].mean for p in pts],
                yerr=[p[1].std for p in pts],
                marker="o",
                capsize=3,
                label=name,
            )
        log = all(float(parsed[s][x]) > 0 for s in groups)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(switch_label(x) + (" (log scale)" if log else ""))
        ax.legend(fontsize=7, title=bar_meaning, title_fontsize=7)
        title = f"{experiment}: {metric} against {x}"
    else:
        names = [" ".join(s) or "(as configured)" for s in groups]
        sps = list(spreads.values())
        bars = ax.bar(
            range(len(names)),
            [sp.mean if sp else 0 for sp in sps],
            yerr=[sp.std if sp else 0 for sp in sps],
            capsize=3,
            label="bars: mean over seeds (n = seeds)\n" + bar_meaning,
        )
        for bar, sp in zip(bars, sps):
            if sp is None:
                continue
            n = (
                f"{sp.n_runs} runs, 1 seed"
                if sp.over == "repeats"
                else f"{sp.n_runs} runs"
                if sp.over == "runs"
                else f"n={sp.n_seeds}"
            )
            top = bar.get_height() + (sp.std if bar.get_height() >= 0 else -sp.std)
            ax.annotate(n, (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("setting (the switches that differ between the runs)")
        ax.margins(y=0.3)  # room above the bars for the legend
        ax.legend(fontsize=7, loc="upper left")
        title = f"{experiment}: {metric} per setting"
    ax.set_ylabel(metric_label(metric), fontsize=8)
    runs = [r for rs in groups.values() for r in rs]
    ax.set_title(title + _data_note(runs), fontsize=9)
    fig.tight_layout()
    return fig


def plot_experiment(
    experiment: str, groups: dict[Setting, list[RunRecord]], metrics: list[str], out: Path
) -> list[Path]:
    """`out/plots/<experiment>__<metric>.png` for each metric (build_figure); nothing for a single setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(groups) < 2:
        return []
    written = []
    for m in metrics:
        fig = build_figure(experiment, groups, m)
        path = out / "plots" / f"{experiment}__{m.replace('/', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------ report
def provenance_table(runs: list[RunRecord]) -> str:
    rows = []
    for r in runs:
        proto = "; ".join(f"{k}: {v}" for k, v in list(r.protocol.items())[:3])[:160].replace("|", "/")
        rows.append(
            [
                str(r.path),
                r.experiment,
                " ".join(r.switches),
                r.seed_text,
                r.status_text,
                DATA_KINDS[r.data_kind][0],
                proto,
                r.commit,
            ]
        )
    return markdown_table(
        ["run", "experiment", "switches", "seed", "status", "data", "protocol", "commit"], rows
    )


def build_report(dirs: list[Path], out: Path, paper_dir: Path, baseline: Setting | None = None) -> Path:
    """Validates everything first, then writes report.md and plots/ into `out` atomically."""
    runs = find_runs(dirs)
    by_exp: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_exp[r.experiment].append(r)
    papers = load_paper(paper_dir)
    sections, plans = [], []
    for exp, rs in sorted(by_exp.items()):
        text, parts = experiment_tables(exp, rs, baseline)
        sections.append(text)
        if parts and papers.get(exp):
            sections.append(paper_table(exp, parts["groups"], papers[exp]))
        if parts:
            plans.append((exp, parts))
    failed = [r for r in runs if r.status != "completed"]
    header = [
        "# Report",
        "",
        f"{len(runs)} run(s) from {', '.join(str(d) for d in dirs)}; {len(failed)} not completed.",
        "",
        "Each cell: mean ± std over distinct seeds, n = the number of seeds; the runs of a repeated seed are "
        "averaged first. A setting with one seed run several times shows the std over those repeats and says "
        "so: it is not a seed spread. Data: synthetic (generated), real subset (real images, part of a data "
        "set, e.g. MNIST's embedded 5k), real (the full data set), real (own data).",
        "",
    ]
    body = "\n".join([*header, *sections, "## Provenance", "", provenance_table(runs), ""])
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent if out.parent.exists() else None))
    try:
        plots = [
            p for exp, parts in plans for p in plot_experiment(exp, parts["groups"], parts["metrics"], tmp)
        ]
        if plots:
            body += "\n## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
        (tmp / "report.md").write_text(body)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp), str(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.md"


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
