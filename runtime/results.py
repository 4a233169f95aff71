"""Result tables and per-image files of multi-method runs (restoration models), written into the run dir.

Conventions (docs/DEVELOPING.md, "Multi-method runs"):
- metric keys `split/name` for one method, `split/<method>/name` for several methods in one run, and
  `split/<setting>/<method>/name` for a sweep (e.g. the deblurring degradations);
- a model that exposes `per_image_rows() -> list[dict]` gets `<run dir>/per_image.csv`;
- when metrics with a method level exist, `metrics.json["tables"]` holds them as rows x columns and
  `<run dir>/results.md` shows them as markdown (plus a setting x method pivot for sweeps), headed by the
  data label (synthetic data says so) and the metric protocol.
The model may give the row order with a `table_order` attribute (list of `<method>` or `<setting>/<method>`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from core.files import write_atomic

# What a run's data were, from its `describe()` record (metrics.json["data"]): short label and what it means.
DATA_KINDS = {
    "synthetic": ("synthetic", "generated pairs: low-light from bundled photos, synthetic blur and noise"),
    "real-subset": ("real subset", "real images, but a subset of the data set, e.g. MNIST's embedded 5k"),
    "real-custom": ("real (own data)", "real images of your own, without published numbers to compare with"),
    "real": ("real", "the full real data set"),
    "unknown": ("unknown", "the run's record does not say what its data were"),
}


def data_kind(data: dict[str, Any] | None) -> str:
    """One key of DATA_KINDS. Records written before `describe()` had a `kind` are classified by their
    other fields (MNIST's embedded 5k said only `comparable_with_papers: false`, like synthetic data)."""
    if not data:
        return "unknown"
    if data.get("kind") in DATA_KINDS:
        return str(data["kind"])
    dataset, source = str(data.get("dataset", "")), str(data.get("source", ""))
    label = str(data.get("label", "")).lower()
    if data.get("synthetic") is True or source == "synthetic" or dataset == "deblur":
        return "synthetic"  # the deblurring pairs are always synthetic degradations
    if label.startswith("synthetic") or "synthetic degradations" in label:
        return "synthetic"
    if (dataset == "mnist" and source == "embedded") or label.startswith("embedded"):
        return "real-subset"
    if dataset == "folder":
        return "real-custom"
    if data.get("comparable_with_papers") is True:
        return "real"
    return "unknown"


def metric_tables(metrics: dict[str, float], order: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{split: {"columns": [...], "rows": {row: {column: value}}}} from keys with a method level."""
    tables: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) < 3:
            continue
        split, row, col = parts[0], "/".join(parts[1:-1]), parts[-1]
        t = tables.setdefault(split, {"columns": [], "rows": {}})
        if col not in t["columns"]:
            t["columns"].append(col)
        t["rows"].setdefault(row, {})[col] = value
    if order:
        rank = {r: i for i, r in enumerate(order)}
        for t in tables.values():
            t["rows"] = dict(sorted(t["rows"].items(), key=lambda kv: rank.get(kv[0], len(rank))))
    return tables


def _fmt(v: Any, column: str = "") -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-" if math.isnan(v) else str(v)
        return f"{v:.2f}" if column == "psnr" else f"{v:.4f}"
    return "-" if v is None else str(v)


def markdown(tables: dict[str, dict[str, Any]], data: dict[str, Any] | None, protocol: dict[str, Any]) -> str:
    lines = ["# Results", ""]
    if data:
        lines.append(f"Data: {data.get('label', data.get('dataset'))}")
        if data.get("comparable_with_papers") is False:
            short, meaning = DATA_KINDS[data_kind(data)]
            lines.append("")
            lines.append(f"**Not comparable with published numbers** ({short} data: {meaning}).")
        lines.append("")
    restoration = protocol.get("restoration") if isinstance(protocol, dict) else None
    if restoration:
        lines.append(
            f"Protocol: PSNR/SSIM on {restoration.get('colour')}, GT-mean correction "
            f"{'on' if restoration.get('gt_mean_correction') else 'off'}; {restoration.get('images')}."
        )
        lines.append("")
    for split, t in tables.items():
        cols = t["columns"]
        lines += [f"## {split}", "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [
            f"| {row} | " + " | ".join(_fmt(v.get(c), c) for c in cols) + " |" for row, v in t["rows"].items()
        ]
        lines.append("")
        two_level = [r for r in t["rows"] if r.count("/") == 1]
        if two_level and {"psnr", "ssim"} <= set(cols):
            lines += _pivot(split, t["rows"], two_level)
    return "\n".join(lines)


def _pivot(split: str, rows: dict[str, dict[str, Any]], two_level: list[str]) -> list[str]:
    """setting x method table of "PSNR / SSIM" cells; one-level rows (aggregates) form the last line."""
    settings = list(dict.fromkeys(r.split("/")[0] for r in two_level))
    methods = list(dict.fromkeys(r.split("/")[1] for r in two_level))
    lines = [f"### {split}: PSNR (dB) / SSIM by setting", ""]
    lines += ["| setting | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]

    def cell(v: dict[str, Any] | None) -> str:
        return f"{v['psnr']:.2f} / {v['ssim']:.4f}" if v and "psnr" in v and "ssim" in v else "-"

    for s in settings:
        lines.append(f"| {s} | " + " | ".join(cell(rows.get(f"{s}/{m}")) for m in methods) + " |")
    if any(m in rows for m in methods):
        lines.append("| **all settings** | " + " | ".join(cell(rows.get(m)) for m in methods) + " |")
    lines.append("")
    return lines


def write_per_image_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_atomic(path, buf.getvalue().encode())


def write_result_files(
    run_dir: Path,
    model: Any,
    tables: dict[str, dict[str, Any]],
    data: dict[str, Any] | None,
    protocol: dict[str, Any],
) -> list[Path]:
    """per_image.csv (when the model has per-image rows) and results.md (when there are tables)."""
    written = []
    rows_fn = getattr(model, "per_image_rows", None)
    rows = rows_fn() if callable(rows_fn) else None
    if rows:
        write_per_image_csv(run_dir / "per_image.csv", rows)
        written.append(run_dir / "per_image.csv")
    if tables:
        write_atomic(run_dir / "results.md", markdown(tables, data, protocol).encode())
        written.append(run_dir / "results.md")
    return written
