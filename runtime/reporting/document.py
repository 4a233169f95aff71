"""report.md and plots/ from run directories (`build_report`, run by `python -m experiments.report`)."""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from runtime.reporting.plots import plot_experiment
from runtime.reporting.runs import RunRecord, find_runs
from runtime.reporting.tables import Setting, experiment_tables, load_paper, markdown_table, paper_table
from runtime.results import DATA_KINDS


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
