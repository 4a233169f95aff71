"""NeRCo cost figures on this machine: training iteration time and peak memory at 256x256 crops per variant,
and full-resolution inference time and peak memory with and without the NRN's chunked MLP.

    python -m experiments.benchmark nerco [--what train infer] [--size 256 --steps 1 --variants official paper]
                                          [--sizes 600x400 960x720 --chunks 0 16384 --repeats 1]

Each measurement runs in a fresh subprocess (`python -m experiments.benchmarks.nerco _one ...`). Memory is
the process's peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which covers torch's CPU
allocations as well as Python's), reported as the peak and as the peak minus the resident size just before
the measured work (weights, imports and allocator caches already in place), so the second number is the
working memory of the measured work; inference rows also print `inference_memory_estimate_mb` (what
`experiments.enhance` compares with its memory limit) beside it. Random weights throughout; the
text-driven discriminator uses the `random` backend with the full RN50 image tower (`--text-arch rn50`: the
compute of CLIP RN50, no pretrained weights). Timings are wall clock: on a shared machine, run it when idle.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.benchmarks.common import print_table, write_results


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_train(variant: str, size: int, steps: int, text_arch: str) -> dict[str, Any]:
    """One warm-up iteration, then `steps` timed iterations of `NeRCo.training_step` through a Trainer."""
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
    model = NeRCo(variant=variant, text_discriminator={"backend": "random", "arch": text_arch})
    timer = Timer()
    trainer = pl.Trainer(
        max_steps=2
        * (steps + 1),  # manual optimisation: global_step counts optimizer steps, two per iteration
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
        "kind": "train",
        "what": f"training iteration, variant={variant}, batch 1, {size}x{size}, text tower {text_arch}",
        "first_iteration_s": round(timer.times[0], 2),
        "iteration_s": [round(t, 2) for t in timer.times[1:]],
        "rss_before_first_step_mb": round(timer.rss_before or float("nan")),
        "peak_rss_mb": round(_rss_mb()),
        "threads": torch.get_num_threads(),
    }


def measure_infer(width: int, height: int, chunk: int | None, repeats: int) -> dict[str, Any]:
    """The released inference path (G_A, NRN with constant coordinates, mask extractor) on one image."""
    import torch

    from lit_modules.nerco_release import inference_memory_estimate_mb, released_enhance
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
        "kind": "infer",
        "what": f"inference {width}x{height}, NRN chunk_pixels={chunk}",
        "seconds": [round(t, 2) for t in times],
        "rss_before_mb": round(rss0),
        "peak_rss_mb": round(peak),
        "working_memory_mb": round(peak - rss0),
        "estimate_mb": round(inference_memory_estimate_mb(height, width, chunk_pixels=chunk)),
        "threads": torch.get_num_threads(),
    }


def _spawn(args: list[str]) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.nerco", "_one", *args], capture_output=True, text=True
    )
    if res.returncode != 0:
        return {"args": args, "error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--what", nargs="+", choices=["train", "infer"], default=["train", "infer"], help="which figures"
    )
    p.add_argument("--size", type=int, default=256, help="training crop side (default 256)")
    p.add_argument("--steps", type=int, default=1, help="timed training iterations after one warm-up")
    p.add_argument("--variants", nargs="+", default=["official", "paper"], help="model variants to train")
    p.add_argument("--text-arch", default="rn50", choices=["rn50", "tiny"], help="random text tower")
    p.add_argument("--sizes", nargs="+", default=["600x400", "960x720"], help="inference sizes WxH")
    p.add_argument("--chunks", nargs="+", type=int, default=[0, 16384], help="NRN chunk_pixels (0: one pass)")
    p.add_argument("--repeats", type=int, default=1, help="timed inference passes per measurement")
    p.add_argument("--output-dir", default=None, help="where benchmark_nerco.json goes (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_nerco_"))
    results: list[dict[str, Any]] = []
    if "train" in args.what:
        for v in args.variants:
            results.append(_spawn(["train", v, str(args.size), str(args.steps), args.text_arch]))
            print(json.dumps(results[-1]), flush=True)
    if "infer" in args.what:
        for s in args.sizes:
            w, h = s.split("x")
            for c in args.chunks:
                results.append(_spawn(["infer", w, h, str(c), str(args.repeats)]))
                print(json.dumps(results[-1]), flush=True)
    rows = []
    for r in results:
        if "error" in r:
            rows.append((" ".join(r["args"]), "failed", "", "", r["error"].strip().splitlines()[-1][:60]))
        elif r["kind"] == "train":
            its = r["iteration_s"] or [r["first_iteration_s"]]
            rows.append(
                (
                    r["what"],
                    f"{sorted(its)[len(its) // 2]:.1f} s (first {r['first_iteration_s']:.1f} s)",
                    f"{r['peak_rss_mb'] / 1024:.2f} GiB",
                    "",
                    "",
                )
            )
        else:
            rows.append(
                (
                    r["what"],
                    f"{min(r['seconds']):.1f} s",
                    f"{r['peak_rss_mb'] / 1024:.2f} GiB",
                    f"{r['working_memory_mb'] / 1024:.2f} GiB",
                    f"{r['estimate_mb'] / 1024:.2f} GiB",
                )
            )
    print(
        "\nNeRCo on this machine (random weights; peak = peak resident set of a fresh process; "
        "working = peak minus resident before the work):"
    )
    print_table(rows, ("what", "time", "peak memory", "working memory", "enhance's estimate"))
    write_results(out / "benchmark_nerco.json", {"results": results})
    print(f"Results: {out / 'benchmark_nerco.json'}")
    return 1 if any("error" in r for r in results) else 0


def _one(argv: list[str]) -> None:
    kind, *p = argv
    if kind == "train":
        out = measure_train(p[0], int(p[1]), int(p[2]), p[3])
    else:
        out = measure_infer(int(p[0]), int(p[1]), int(p[2]) or None, int(p[3]))
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        _one(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks.nerco", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
