"""NeRCo cost figures on this machine: training iteration time and peak memory at 256x256 crops per variant,
and full-resolution inference time and peak memory with and without the NRN's chunked MLP.

    python -m experiments.benchmarks.nerco train [--size 256 --steps 3 --variants official paper]
    python -m experiments.benchmarks.nerco infer [--sizes 600x400 960x720 --chunks 0 16384]

Each measurement runs in a fresh subprocess. Memory is the process's peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which covers torch's CPU allocations as well as Python's), reported
as the peak and as the peak minus the resident size just before the measured work (weights, imports and
allocator caches already in place), so the second number is the working memory of the measured work.
Random weights throughout; the text-driven discriminator uses the `random` backend with the full RN50 image
tower (same compute as CLIP RN50, no pretrained weights). Timings are wall clock.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_train(variant: str, size: int, steps: int) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from lit_modules.nerco import NeRCo

    class Crops(Dataset):
        def __len__(self) -> int:
            return steps + 1

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            return {k: torch.rand(3, size, size, generator=g) * 2 - 1 for k in ("A", "B")}

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.rss_before: float | None = None

        def on_train_batch_start(self, *args: Any) -> None:
            if self.rss_before is None:
                self.rss_before = _current_rss_mb()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    torch.manual_seed(0)
    model = NeRCo(variant=variant, text_discriminator={"backend": "random", "arch": "rn50"})
    timer = Timer()
    trainer = pl.Trainer(
        max_steps=steps + 1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(model, DataLoader(Crops(), batch_size=1))
    return {
        "what": f"train iteration, variant={variant}, batch 1, {size}x{size}",
        "first_iteration_s": round(timer.times[0], 2),
        "iteration_s": [round(t, 2) for t in timer.times[1:]],
        "rss_before_first_step_mb": round(timer.rss_before or float("nan")),
        "peak_rss_mb": round(_rss_mb()),
        "threads": torch.get_num_threads(),
    }


def measure_infer(width: int, height: int, chunk: int | None, repeats: int) -> dict[str, Any]:
    import torch

    from lit_modules.nerco import released_enhance
    from lit_modules.nets.cyclegan import ResnetGenerator
    from lit_modules.nets.nerco import NRN, MaskExtractor

    torch.manual_seed(0)
    g_a, pre, h = ResnetGenerator(6).eval(), NRN().eval(), MaskExtractor().eval()
    x = torch.rand(1, 3, height, width) * 2 - 1
    rss0 = _current_rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y = released_enhance(g_a, pre, h, x, chunk_pixels=chunk)
        times.append(time.perf_counter() - t0)
    assert y.shape == (1, 3, height, width)
    peak = _rss_mb()
    return {
        "what": f"inference {width}x{height}, NRN chunk_pixels={chunk}",
        "seconds": [round(t, 2) for t in times],
        "rss_before_mb": round(rss0),
        "peak_rss_mb": round(peak),
        "working_memory_mb": round(peak - rss0),
        "threads": torch.get_num_threads(),
    }


def _spawn(args: list[str]) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.nerco", "_one", *args], capture_output=True, text=True
    )
    if res.returncode != 0:
        return {"args": args, "error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="NeRCo cost figures (fresh subprocess per measurement)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--size", type=int, default=256)
    tr.add_argument("--steps", type=int, default=3)
    tr.add_argument("--variants", nargs="+", default=["official", "paper"])
    inf = sub.add_parser("infer")
    inf.add_argument("--sizes", nargs="+", default=["600x400", "960x720"])
    inf.add_argument("--chunks", nargs="+", type=int, default=[0, 16384])
    inf.add_argument("--repeats", type=int, default=2)
    one = sub.add_parser("_one")
    one.add_argument("kind")
    one.add_argument("params", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "_one":
        p = args.params
        if args.kind == "train":
            out = measure_train(p[0], int(p[1]), int(p[2]))
        else:
            chunk = int(p[2]) or None
            out = measure_infer(int(p[0]), int(p[1]), chunk, int(p[3]))
        print(json.dumps(out))
        return
    results = []
    if args.cmd == "train":
        for v in args.variants:
            results.append(_spawn(["train", v, str(args.size), str(args.steps)]))
            print(json.dumps(results[-1]), flush=True)
    else:
        for s in args.sizes:
            w, h = s.split("x")
            for c in args.chunks:
                results.append(_spawn(["infer", w, h, str(c), str(args.repeats)]))
                print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
