"""Classical restoration filters: time to restore one 512x512 image with each filter, the CLS gamma search
included, against scikit-image's `restoration.wiener` (the same Laplacian-regularised filter in numpy)
measured in the same run.

The image is the bundled 512x512 `astronaut` photo (grey: BT.601 luma; RGB: three channels filtered alike),
blurred circularly with a Gaussian (sigma 2) and noise of variance 1e-3. Every timing is the median of `--reps`
runs after one warm-up, in float64 on `--device`; each filter call includes its DFTs, the OTF of the PSF and,
for `cls_auto`, the whole bracketing + bisection search (its iteration count is printed). `symmetric` rows use
the mirror extension (a 1022x1022 DFT). The median and the minimum are printed: on a shared machine the
minimum is the better estimate of the filter's own cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core import degradation as DG
from experiments.benchmarks.common import positive_int, print_table, write_results
from lit_modules import deconv as D


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reps",
        type=positive_int,
        default=10,
        help="timed runs per filter (median reported), after 1 warm-up",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--size", type=positive_int, default=512, help="image side (the bundled astronaut photo is 512)"
    )
    p.add_argument("--output-dir", default=None, help="where the results JSON goes (default: a temp dir)")


def _time(fn: Callable[[], object], reps: int, device: str) -> tuple[float, float]:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def clean_images(size: int, dev: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled astronaut photo's top-left `size` x `size` crop as (1, 1, H, W) grey (BT.601 luma) and
    (1, 3, H, W) RGB, float64 in [0, 1]."""
    from data.photos import load_photo

    rgb = load_photo("astronaut")[:size, :size].astype(np.float64) / 255
    f_rgb = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dev)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64, device=dev).view(3, 1, 1)
    return (f_rgb * luma).sum(1, keepdim=True), f_rgb


def filters_of(
    g: torch.Tensor, f: torch.Tensor, psf: torch.Tensor, var: float, search: D.GammaSearch
) -> dict:
    """name -> a call of each timed filter on the degraded image g (clean image f for the oracle)."""
    filters: dict[str, Callable[[], object]] = {
        "inverse": lambda g=g: D.inverse_filter(g, psf),
        "inverse, cutoff 0.3": lambda g=g: D.inverse_filter(g, psf, cutoff=0.3),
        "wiener, K=1e-3": lambda g=g: D.wiener_filter(g, psf, 1e-3),
        "wiener, oracle NSR": lambda g=g, f=f: D.wiener_filter(g, psf, D.oracle_nsr(f, var)),
        "cls, fixed gamma": lambda g=g, gam=search.gamma: D.cls_filter(g, psf, gam),
        f"cls_auto (search: {search.iterations} iterations)": lambda g=g: D.cls_auto(g, psf, 0.0, var),
        "cls_auto, symmetric boundary": lambda g=g: D.cls_auto(g, psf, 0.0, var, boundary="symmetric"),
    }
    return filters


def skimage_baseline(
    g: torch.Tensor, psf: torch.Tensor, search: D.GammaSearch, reps: int
) -> tuple[float, float]:
    """(median, min) seconds of scikit-image's `restoration.wiener` on the grey image, balance = the gamma found."""
    from skimage.restoration import wiener as sk_wiener

    g_np, psf_np, balance = g[0, 0].cpu().numpy(), psf.cpu().numpy(), float(search.gamma)
    return _time(lambda a=g_np, k=psf_np, b=balance: sk_wiener(a, k, b, clip=False), reps, "cpu")


def run(args: argparse.Namespace) -> int:
    out_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_cls_"))
    dev = args.device
    f_grey, f_rgb = clean_images(args.size, dev)
    psf = DG.gaussian_psf(2.0).to(dev)
    var = 1e-3
    results: dict = {"device": dev, "threads": torch.get_num_threads(), "size": args.size, "rows": {}}
    rows = []
    for colour, f in (("grey", f_grey), ("rgb", f_rgb)):
        g, _ = DG.degrade(f, psf, 0.0, var, torch.Generator().manual_seed(0))
        search = D.cls_auto(g, psf, 0.0, var)[1]
        if colour == "grey":
            base, base_min = skimage_baseline(g, psf, search, args.reps)
            results["skimage_wiener_grey_s"] = {"median": base, "min": base_min}
            name = "skimage.restoration.wiener (numpy, CPU)"
            rows.append((colour, name, f"{base * 1e3:.1f}", f"{base_min * 1e3:.1f}", "1.00"))
        for name, fn in filters_of(g, f, psf, var, search).items():
            t, t_min = _time(fn, args.reps, dev)
            results["rows"][f"{colour}/{name}"] = {"median": t, "min": t_min}
            ratio = t / results["skimage_wiener_grey_s"]["median"]
            rows.append((colour, name, f"{t * 1e3:.1f}", f"{t_min * 1e3:.1f}", f"{ratio:.2f}"))
        results[f"{colour}_gamma"] = float(search.gamma)
        results[f"{colour}_search_iterations"] = search.iterations
        print(
            f"{colour}: gamma found {float(search.gamma):.4g} in {search.iterations} iterations", flush=True
        )
    print(
        f"\nRestoration time per {args.size}x{args.size} image (median of {args.reps}), float64, device {dev}, "
        f"torch threads {torch.get_num_threads()}; Gaussian sigma 2 blur, noise variance {var}. Shared machine: noisy."
    )
    print_table(
        rows, ("image", "filter", "ms / image (median)", "ms (min)", "median vs skimage wiener (grey)")
    )
    write_results(out_dir / "benchmark_cls.json", results)
    print(f"results: {out_dir / 'benchmark_cls.json'}")
    return 0
