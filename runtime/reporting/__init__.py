"""Tables and plots from run directories, for `python -m experiments.report` and the sweep summary.

- `runs`: what one run recorded (`RunRecord`), `find_runs`, the protocol check (`check_one_protocol`);
- `tables`: mean +- std over seeds per setting (`Spread`), ablation deltas, ours against published numbers;
- `plots`: a metric against a numeric switch, or bars per setting, with units on the axes;
- `document`: report.md + plots/ written atomically (`build_report`), with every run's provenance.
"""

from runtime.reporting.document import build_report, provenance_table
from runtime.reporting.plots import (
    METRIC_UNITS,
    SWITCH_UNITS,
    build_figure,
    metric_label,
    plot_experiment,
    switch_label,
)
from runtime.reporting.runs import ReportError, RunRecord, check_one_protocol, find_runs, protocol_fingerprint
from runtime.reporting.tables import (
    Setting,
    Spread,
    assign_settings,
    by_setting,
    experiment_tables,
    load_paper,
    markdown_table,
    metric_spread,
    paper_table,
    spread,
)

__all__ = [
    "METRIC_UNITS",
    "SWITCH_UNITS",
    "ReportError",
    "RunRecord",
    "Setting",
    "Spread",
    "assign_settings",
    "build_figure",
    "build_report",
    "by_setting",
    "check_one_protocol",
    "experiment_tables",
    "find_runs",
    "load_paper",
    "markdown_table",
    "metric_label",
    "metric_spread",
    "paper_table",
    "plot_experiment",
    "protocol_fingerprint",
    "provenance_table",
    "spread",
    "switch_label",
]
