"""DDP on CPU: start-up and per-step overhead of trainer=ddp_cpu (2 processes, gloo) against one process.

Both run `experiment=vae_mnist` through the real CLI with the same global batch (one process with batch B,
two with B/2 each). Start-up is the time from launching the command to the first training batch; step time
is the median epoch time (epochs 2..E) divided by the batches per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.benchmarks.common import positive_int, print_table, write_results


def even_batch(text: str) -> int:
    """argparse type of --batch-size: a global batch that splits evenly over the two DDP processes."""
    if not text.strip().isdigit() or int(text) < 2 or int(text) % 2:
        expected = "expected an even integer >= 2 (half goes to each process)"
        raise argparse.ArgumentTypeError(f"{text!r}: {expected}")
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=positive_int, default=4)
    p.add_argument(
        "--batch-size", type=even_batch, default=64, help="global batch size (DDP: half per process)"
    )
    p.add_argument("--output-dir", default=None)


def _launch(out: Path, name: str, overrides: list[str]) -> dict[str, float]:
    run_dir = out / name
    timers = [
        "+callbacks.epoch_timer._target_=experiments.benchmarks.timers.EpochTimer",
        f"+callbacks.epoch_timer.path={run_dir}/epochs.json",
        "+callbacks.startup_timer._target_=experiments.benchmarks.timers.StartupTimer",
        f"+callbacks.startup_timer.path={run_dir}/startup.json",
    ]
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "experiment=vae_mnist",
        "logger=none",
        "test=false",
        f"hydra.run.dir={run_dir}",
        *timers,
        *overrides,
    ]
    env = {**os.environ, "SUITE_BENCH_T0": repr(time.time())}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
    epochs = json.loads((run_dir / "epochs.json").read_text())
    return {
        "startup_s": json.loads((run_dir / "startup.json").read_text())["startup_s"],
        "epoch_s": statistics.median(epochs[1:] or epochs),
        "total_s": total,
    }


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_ddp_"))
    steps = -(-4000 // args.batch_size)  # embedded MNIST: 4,000 training images
    common = [f"trainer.max_epochs={args.epochs}"]
    single = _launch(out, "single", [*common, f"data.batch_size={args.batch_size}"])
    ddp = _launch(out, "ddp_cpu", [*common, "trainer=ddp_cpu", f"data.batch_size={args.batch_size // 2}"])
    rows = []
    for name, r in (("1 process", single), ("ddp_cpu, 2 processes (gloo)", ddp)):
        rows.append(
            (name, f"{r['startup_s']:.2f}", f"{1000 * r['epoch_s'] / steps:.2f}", f"{r['total_s']:.1f}")
        )
    print(
        f"\nDDP on CPU: vae_mnist, global batch {args.batch_size}, {steps} steps/epoch, {args.epochs} epochs"
    )
    print_table(rows, ("", "start-up to first batch (s)", "ms / step", "whole command (s)"))
    print(
        f"DDP start-up overhead: {ddp['startup_s'] - single['startup_s']:+.2f} s; per-step ratio ddp/single: {ddp['epoch_s'] / single['epoch_s']:.2f}"
    )
    write_results(
        out / "benchmark_ddp.json",
        {"single": single, "ddp_cpu": ddp, "steps_per_epoch": steps, "epochs": args.epochs},
    )
    return 0
