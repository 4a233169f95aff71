"""Helpers shared by benchmark suites (no Lightning import: the NeRCo inference rows measure resident memory
in processes that load only torch and the networks; the Lightning callbacks are in `timers`)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def steady_state(times: list[float]) -> float:
    """Median epoch time, leaving out the first epoch (start-up: allocator, threads, tracker)."""
    rest = times[1:] or times
    return statistics.median(rest)


def _descendants_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the live descendants of process `root`, from /proc (0.0 where /proc is
    missing). A W&B run's writer (`wandb-core`) is such a child: its work is part of what tracking costs."""
    try:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # the process ended while listing
                # fields after the name: state, ppid (1), ..., utime (11), stime (12)
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except OSError:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        ticks += stats[pid][1]
        todo.extend(children.get(pid, []))
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its live child processes (clock ticks, 10 ms,
    for the children). Differences of it measure work rather than waiting: time the scheduler gives another
    job shows in wall time, not here. Where CPU and wall time of an epoch agree, a slower epoch is the same
    work running slower (caches, clock, the host), not the process waiting for a core."""
    return time.process_time() + _descendants_cpu_seconds(os.getpid())


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


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return int(text)

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = int_at_least(1)  # a count of rounds, steps, images, pixels
non_negative_int = int_at_least(0)  # 0 meaning none or off, as the option's help says


def image_size(text: str) -> str:
    """argparse type: an image size "WxH" with W, H >= 1, returned as "WxH"."""
    w, sep, h = text.lower().partition("x")
    if not sep or not (w.isdigit() and h.isdigit()) or min(int(w), int(h)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected width x height in pixels, e.g. 600x400")
    return f"{int(w)}x{int(h)}"


def add_bf16_argument(p: Any) -> None:
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="the bf16-autocast rows: auto skips them on a CPU without bf16 kernels (20-60x slower there)",
    )


def bf16_rows_skipped(setting: str) -> str | None:
    """Why the bf16 rows are left out (`--bf16 off`, or `auto` on a CPU without bf16 kernels), else None."""
    if setting == "off":
        return "--bf16 off"
    import torch

    from runtime.cpu_features import bf16_matmul_slowdown, cpu_bf16_native

    if setting == "auto" and not cpu_bf16_native():
        return (
            f"this CPU has no bf16 kernels (torch capability {torch.backends.cpu.get_cpu_capability()}): "
            f"a bf16 matmul is {bf16_matmul_slowdown():.0f}x slower than fp32 here; --bf16 on times them anyway"
        )
    return None
