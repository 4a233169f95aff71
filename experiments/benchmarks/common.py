"""Helpers shared by benchmark suites (no Lightning import: the NeRCo inference rows measure resident memory
in processes that load only torch and the networks; the Lightning callbacks are in `timers`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def steady_state(times: list[float]) -> float:
    """Median epoch time, leaving out the first epoch (start-up: allocator, threads, tracker)."""
    rest = times[1:] or times
    return statistics.median(rest)


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    out = [line, fmt.format(*header), line, *(fmt.format(*map(str, r)) for r in rows), line]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
