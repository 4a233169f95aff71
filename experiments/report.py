"""`python -m experiments.report [RUN_OR_SWEEP_DIR ...] [--out DIR]`: tables and plots from run directories.

Reads `run_info.json` and `metrics.json` of every run under the given directories (nothing from the
network) and writes `report.md` and `plots/*.png`:
- per experiment, one row per setting (its switches: the overrides that change what is computed, seed
  excluded), each metric as mean +- std over seeds with n;
- ablation deltas against the baseline setting (no switches, or `--baseline "a=1 b=2"`), with the standard
  error of the difference;
- ours against the published numbers in `configs/paper/*.yaml`, with their source, and whether they are
  comparable (never for synthetic or embedded data);
- plots: a metric against a numeric switch (e.g. FID against sampler steps, one line per sampler), or bars
  per setting (e.g. PSNR/SSIM per ablation);
- provenance: for every run, whether its data were synthetic, the protocol of its numbers, its commit.

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

from experiments.common import switch_overrides
from experiments.config import CONFIG_DIR


class ReportError(ValueError):
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
        return str(self.info.get("status", "unknown"))

    @property
    def seed(self) -> Any:
        return self.info.get("seed")

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
    def switch_keys(self) -> set[str]:
        """The override's key and each of its parts: `model.components.nrn=false` and the config-group
        choice `model/components=no_nrn` both name the protocol entry `components` as a varied field."""
        keys = set()
        for o in self.switches:
            key = o.split("=", 1)[0].lstrip("+~")
            keys |= {key, *key.replace("/", ".").split(".")}
        return keys

    @property
    def synthetic(self) -> bool:
        return not (self.data or {}).get("comparable_with_papers", False)

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
            raise ReportError(f"{d} does not exist")
        for info_path in sorted(d.rglob("run_info.json")):
            if "wandb" in info_path.relative_to(d).parts:
                continue
            info = _read_json(info_path)
            if info is None:
                raise ReportError(f"{info_path} is not valid JSON")
            body = _read_json(info_path.parent / "metrics.json") or {}
            metrics = {k: float(v) for k, v in body.items() if "/" in k and isinstance(v, (int, float))}
            runs.append(
                RunRecord(info_path.parent, info, metrics, body.get("protocol") or {}, body.get("data"))
            )
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


def mean_std(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else 0.0), n


def fmt(values: list[float]) -> str:
    if not values:
        return ""
    m, s, n = mean_std(values)
    return f"{m:.4g}" if n == 1 else f"{m:.4g} ± {s:.2g} (n={n})"


Setting = tuple[str, ...]


def assign_settings(runs: list[RunRecord]) -> list[str]:
    """Sets each run's `setting` to its switches minus those all the runs share; returns the shared ones."""
    common = set.intersection(*(set(r.switches) for r in runs)) if runs else set()
    for r in runs:
        r.setting = tuple(o for o in r.switches if o not in common)
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
        seeds = sorted({str(r.seed) for r in rs})
        rows.append(
            [
                " ".join(setting) or "(as configured)",
                ",".join(seeds),
                *(fmt([r.metrics[m] for r in rs if m in r.metrics]) for m in metrics),
                "synthetic/embedded" if any(r.synthetic for r in rs) else "real",
                ", ".join(sorted({r.commit for r in rs})),
            ]
        )
    text = [f"## {experiment}", ""]
    if common:
        text += [f"Overrides shared by all these runs: `{' '.join(common)}`", ""]
    text += [markdown_table(["setting", "seeds", *metrics, "data", "commit"], rows), ""]
    labels = sorted({r.data_label for r in done})
    text.append(
        "Data: "
        + "; ".join(labels)
        + (
            "  \n**Synthetic or embedded data: not comparable with published numbers.**"
            if any(r.synthetic for r in done)
            else ""
        )
    )
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
                a = [r.metrics[m] for r in rs if m in r.metrics]
                b = [r.metrics[m] for r in groups[base] if m in r.metrics]
                if not a or not b:
                    cells.append("")
                    continue
                (ma, sa, na), (mb, sb, nb) = mean_std(a), mean_std(b)
                se = math.sqrt(sa**2 / na + sb**2 / nb)
                cells.append(f"{ma - mb:+.4g}" + (f" ± {se:.2g}" if na > 1 or nb > 1 else ""))
            drows.append([" ".join(setting), *cells])
        text += [
            f"Deltas against the baseline `{' '.join(base) or '(as configured)'}` (± standard error of the difference over seeds):",
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
            vals = [r.metrics[metric] for r in ours]
            if not vals:
                comparable = "no run has this metric"
            elif any(r.synthetic for r in ours):
                comparable = f"no: ours on {ours[0].data_label}"
            elif paper.get("comparable") is False:
                comparable = f"no: {paper.get('why', 'see the paper file')}"
            else:
                comparable = "yes, if the protocols match: " + str(
                    paper.get("protocol", "see the paper file")
                )
            rows.append([metric, fmt(vals), value, paper["source"], paper.get("data", ""), comparable])
    return "\n".join(
        [
            f"### {experiment}: ours against published numbers",
            "",
            markdown_table(["metric", "ours", "published", "source", "their data", "comparable?"], rows),
            "",
        ]
    )


# ------------------------------------------------------------------------------------------------ plots
def _numeric(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def plot_experiment(
    experiment: str, groups: dict[Setting, list[RunRecord]], metrics: list[str], out: Path
) -> list[Path]:
    """A metric against a numeric switch (one line per value of the other switches), else bars per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(groups) < 2:
        return []
    parsed = {s: dict(o.lstrip("+~").split("=", 1) for o in s) for s in groups}
    keys = set().union(*parsed.values())
    numeric = [
        k
        for k in sorted(keys)
        if all(k in p and _numeric(p[k]) is not None for p in parsed.values())
        and len({p[k] for p in parsed.values()}) > 1
    ]
    written = []
    for m in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        if numeric:
            x = numeric[0]
            lines: dict[str, list[tuple[float, list[float]]]] = defaultdict(list)
            for s, rs in groups.items():
                other = " ".join(f"{k}={v}" for k, v in sorted(parsed[s].items()) if k != x) or experiment
                lines[other].append((float(parsed[s][x]), [r.metrics[m] for r in rs if m in r.metrics]))
            for name, pts in sorted(lines.items()):
                pts = sorted(p for p in pts if p[1])
                ax.errorbar(
                    [p[0] for p in pts],
                    [statistics.fmean(p[1]) for p in pts],
                    yerr=[mean_std(p[1])[1] for p in pts],
                    marker="o",
                    capsize=3,
                    label=name,
                )
            ax.set_xlabel(x)
            if all(float(parsed[s][x]) > 0 for s in groups):
                ax.set_xscale("log")
            ax.legend(fontsize=7)
        else:
            names = [" ".join(s) or "(as configured)" for s in groups]
            vals = [[r.metrics[m] for r in rs if m in r.metrics] for rs in groups.values()]
            ax.bar(
                range(len(names)),
                [statistics.fmean(v) if v else 0 for v in vals],
                yerr=[mean_std(v)[1] if v else 0 for v in vals],
                capsize=3,
            )
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        synthetic = any(r.synthetic for rs in groups.values() for r in rs)
        ax.set_ylabel(m)
        ax.set_title(f"{experiment}: {m}" + (" (synthetic/embedded data)" if synthetic else ""), fontsize=9)
        fig.tight_layout()
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
                r.seed,
                r.status,
                "yes" if r.synthetic else "no",
                proto,
                r.commit,
            ]
        )
    return markdown_table(
        ["run", "experiment", "switches", "seed", "status", "synthetic", "protocol", "commit"], rows
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
        f"{len(runs)} run(s) from {', '.join(str(d) for d in dirs)}; {len(failed)} not completed. Mean ± std over seeds.",
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
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"Report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
