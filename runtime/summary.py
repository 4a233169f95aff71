"""The closing console summary of a run: the metrics table (the summary rows when there are many), the run
directory and the files, images, samples and W&B run it holds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runtime import run_dir as rd

CONSOLE_ROWS = 24


def console_metrics(metrics: dict[str, float], limit: int = CONSOLE_ROWS) -> dict[str, float]:
    """The metrics for the closing console table: all of them when they fit, else the summary rows (the keys
    with the fewest parts, e.g. `test/cls/psnr` before `test/<setting>/cls/psnr`), at most `limit`."""
    if len(metrics) <= limit:
        return metrics
    depth = sorted(metrics, key=lambda k: (k.count("/"), k))
    keep = [k for k in depth if k.count("/") == depth[0].count("/")]
    if len(keep) < limit:
        keep = depth[:limit]
    return {k: metrics[k] for k in sorted(keep[:limit])}


def print_summary(
    run_dir: Path,
    metrics: dict[str, float],
    wandb: dict[str, Any] | None,
    scored: dict[str, Any] | None = None,
) -> None:
    """Prints the metrics table and where the run's files are (`scored`: which checkpoint was tested)."""
    shown = console_metrics(metrics)
    lines = ["", rd.format_table(shown, "metric")]
    if len(shown) < len(metrics):
        where = "metrics.json and results.md" if (run_dir / "results.md").exists() else "metrics.json"
        lines.append(
            f"  ({len(shown)} of {len(metrics)} metrics shown, the summary rows; all of them in {where})"
        )
    lines.append(f"Run directory: {run_dir}")
    if scored:
        ckpt = scored.get("tested_checkpoint")
        lines.append(
            f"  test metrics of: {ckpt}"
            if ckpt
            else "  test metrics of: the weights at the end of fit (no checkpoint)"
        )
    files = [
        p for p in ("metrics.json", "run_info.json", "results.md", "per_image.csv") if (run_dir / p).exists()
    ]
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    files += [str(p.relative_to(run_dir)) for p in ckpts]
    lines.append("  files: " + ", ".join(files))
    images = sorted((run_dir / "images").rglob("*.png")) if (run_dir / "images").is_dir() else []
    final = [p for p in images if p.relative_to(run_dir / "images").parts[0] == "test"] or images[-6:]
    if final:
        lines.append("  images: " + ", ".join(str(p.relative_to(run_dir)) for p in final))
    samples = run_dir / "samples"
    if (samples / "grid.png").is_file():  # experiments.sample
        count = len(list((samples / "images").glob("*.png"))) if (samples / "images").is_dir() else 0
        lines.append(
            "  samples: samples/grid.png"
            + (f", samples/images/ ({count} PNG files, one per seed)" if count else "")
        )
    if wandb and wandb.get("dir"):
        if wandb.get("mode") in ("offline", "dryrun"):
            wandb_cli = Path(sys.executable).parent / "wandb"
            upload = str(wandb_cli) if wandb_cli.is_file() else f"{sys.executable} -m wandb"
            lines.append(f"  W&B (offline): {wandb['dir']}  -> upload with: {upload} sync {wandb['dir']}")
        elif wandb.get("url"):
            lines.append(f"  W&B: {wandb['url']}")
    print("\n".join(lines), flush=True)
