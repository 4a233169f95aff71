"""DDPM: the suite's UNet against diffusers' UNet2DModel (training step), sampler speed, and FID per sampler.

1. Training step (forward, MSE, backward, Adam step) of the suite's UNet (`experiment=ddpm_mnist`'s model)
   and of diffusers' `UNet2DModel` configured to the same depth, channels, attention placement and GroupNorm
   groups (parameter count within 10 %, checked), on the same batch, fp32 and under bf16 autocast (and with
   `--compile`, the suite's under torch.compile), alternating `--rounds` times (this machine's timings drift);
   median step times, their ratios (target <= 0.8), FLOPs per step and GFLOP/s against this CPU's GEMM peak
   measured in the same run (the faster of BLAS matmul and oneDNN). Needs the `bench` extra.
2. Samples per second of ancestral-1000, DDIM-50 and DPM-Solver++(2M)-20 on `--sample-batch` images.
3. With `--ckpt`: FID of each sampler under the suite's protocol (lit_modules/fid.py), `--fid-samples` images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch

from experiments.benchmarks.common import (
    add_bf16_argument,
    bf16_rows_skipped,
    positive_int,
    print_table,
    write_results,
)
from runtime.config import compose


def sampler_list(text: str) -> list[tuple[str, int]]:
    """`--speed-samplers` / `--fid-samplers`: "name:steps,name:steps" -> [(name, steps)], "" -> [] (skip)."""
    from lit_modules.diffusion.samplers import SAMPLERS

    items = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, steps = item.partition(":")
        if not sep or not steps.strip().isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected sampler:steps, steps >= 1, e.g. ddim:50")
        if name not in SAMPLERS:
            known = ", ".join(SAMPLERS)
            raise argparse.ArgumentTypeError(f"{item!r}: unknown sampler {name!r}; known: {known}")
        items.append((name, int(steps)))
    return items


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt", default=None, help="a ddpm_mnist checkpoint: sampler speed on it, and FID per sampler"
    )
    p.add_argument("--batch", type=positive_int, default=32, help="training batch size (ddpm_mnist uses 32)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed training steps per round and model")
    p.add_argument("--rounds", type=positive_int, default=3, help="the two models alternate this many times")
    p.add_argument(
        "--sample-batch", type=positive_int, default=32, help="images per sampler-speed measurement"
    )
    p.add_argument(
        "--fid-samples", type=positive_int, default=500, help="images per FID (the protocol's minimum is 500)"
    )
    p.add_argument(
        "--fid-samplers",
        type=sampler_list,
        default="ancestral:1000,ddim:50,dpmpp_2m:20",
        help="sampler:steps list for the FID part (with --ckpt); empty to skip",
    )
    p.add_argument(
        "--speed-samplers",
        type=sampler_list,
        default="ancestral:1000,ddim:50,dpmpp_2m:20",
        help="sampler:steps list for the samples-per-second part; empty to skip",
    )
    add_bf16_argument(p)
    p.add_argument("--skip-speed", action="store_true", help="skip parts 1 and 2")
    p.add_argument(
        "--compile", action="store_true", help="also time the suite's UNet under torch.compile (minutes to compile)"
    )
    p.add_argument("--output-dir", default=None, help="where benchmark_ddpm.json goes (default: a temp dir)")


def diffusers_twin(net: torch.nn.Module):
    """diffusers' UNet2DModel with the suite UNet's layout: same channels per level, res blocks per level,
    attention levels (and in the middle block), GroupNorm groups, time-embedding width (4 x base)."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise ModuleNotFoundError(
            "the DDPM benchmark compares against diffusers: pip install -c constraints.txt -e '.[bench]'"
        ) from err
    levels = len(net.channel_mults)
    res = [net.image_size // 2**k for k in range(levels)]
    down = tuple("AttnDownBlock2D" if r in net.attention_resolutions else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r in net.attention_resolutions else "UpBlock2D" for r in reversed(res))
    return UNet2DModel(
        sample_size=net.image_size,
        in_channels=net.in_channels,
        out_channels=net.in_channels,
        block_out_channels=tuple(net.base_channels * m for m in net.channel_mults),
        layers_per_block=net.num_res_blocks,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=net.base_channels * net.channel_mults[-1] // net.attention_heads,
        norm_num_groups=net.groups,
        flip_sin_to_cos=False,
        freq_shift=1,  # DDPM's embedding: exp(-log(10000) i / (half - 1)), [sin | cos], as the suite's
        dropout=0.0,
    )


def _bf16_call(m: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return m(x, t).float()


def _diffusers_bf16_call(m: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return m(x, t).sample.float()


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn, after two untimed ones."""
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def as_1x1_convolution(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, w) with conv2d(x, w)[0, :, :, 0].T == a @ b: the rows of `a` (m, k) as m pixels of k channels
    (channels-last, the layout oneDNN takes without a reorder), `b` (k, n) as n 1x1 filters."""
    x = a.t().reshape(1, a.shape[1], a.shape[0], 1).contiguous(memory_format=torch.channels_last)
    w = b.t().reshape(b.shape[1], b.shape[0], 1, 1).contiguous(memory_format=torch.channels_last)
    return x, w


def gemm_peak_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> dict[str, float]:
    """This CPU's achievable rate for an n x n x n product at the current thread count, best of `repeats`,
    through the two libraries a training step uses: the BLAS behind `torch.matmul` (MKL in the x86 wheels)
    and oneDNN, which runs the convolutions (the same product as a 1x1 convolution over n pixels,
    channels-last). They can differ 2x: MKL takes its AVX2 path on AMD CPUs, oneDNN its AVX-512 one, so the
    convolutions of a step can exceed the matmul rate. The peak to compare a step against is the larger."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    x, w = as_1x1_convolution(a, b)
    blas = _best_seconds(lambda: a @ b, repeats)
    onednn = _best_seconds(lambda: torch.nn.functional.conv2d(x, w), repeats)
    return {"matmul (BLAS)": 2 * n**3 / blas / 1e9, "1x1 convolution (oneDNN)": 2 * n**3 / onednn / 1e9}


def training_step_flops(net: torch.nn.Module, call: Any, batch: int, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward + backward at `batch` (torch.utils.flop_counter: convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.randn(batch, *shape), torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        call(net, x, t).square().mean().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_training(models: dict[str, Any], batch: int, steps: int, rounds: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    target = torch.randn(batch, 1, 28, 28, generator=g)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, (m, _) in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        for name, (model, call) in models.items():
            model.train()
            for i in range(steps + 1):  # the first step of a round is a warm-up, not timed
                start = time.perf_counter()
                loss = torch.nn.functional.mse_loss(call(model, x, t), target)
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
                if i:
                    times[name].append(time.perf_counter() - start)
            print(
                f"round {r + 1}/{rounds} {name}: median step {statistics.median(times[name][-steps:]) * 1000:.1f} ms",
                flush=True,
            )
    return times


def _compiled(net: torch.nn.Module) -> torch.nn.Module | None:
    """torch.compile(net) with its first call made here (compile time printed), or None with the reason."""
    x, t = torch.randn(2, net.in_channels, net.image_size, net.image_size), torch.zeros(2, dtype=torch.long)
    start = time.perf_counter()
    try:
        compiled = torch.compile(net)
        compiled(x, t).sum().backward()
    except Exception as err:  # no C++ compiler, unsupported platform, ...: eager only
        print(f"torch.compile unavailable here ({type(err).__name__}: {str(err).splitlines()[0][:120]}); skipped")
        return None
    net.zero_grad(set_to_none=True)
    print(f"torch.compile: first call (compilation) {time.perf_counter() - start:.0f} s")
    return compiled


def _twins(cfg: Any, compile_net: bool, bf16: bool = True) -> dict[str, tuple[torch.nn.Module, Any]]:
    """The suite's UNet and diffusers' twin in fp32 and (with `bf16`) under bf16 autocast (each its own copy
    and optimizer), and optionally the suite's UNet under torch.compile; parameter counts checked within 10 %."""
    import copy

    torch.manual_seed(0)
    ours = hydra.utils.instantiate(cfg.model.net)
    theirs = diffusers_twin(ours)
    p_ours, p_theirs = n_params(ours), n_params(theirs)
    rel = abs(p_theirs - p_ours) / p_ours
    print(f"parameters: suite UNet {p_ours:,}, diffusers UNet2DModel {p_theirs:,} ({rel:+.1%})")
    if rel > 0.10:
        raise RuntimeError(
            f"the diffusers twin has {rel:.1%} more/fewer parameters than the suite UNet (> 10 %)"
        )
    ours_cl = hydra.utils.instantiate(cfg.model.net, channels_last=True)
    ours_cl.load_state_dict(ours.state_dict())
    models = {
        "suite UNet": (ours, lambda m, x, t: m(x, t)),
        "diffusers UNet2DModel": (theirs, lambda m, x, t: m(x, t).sample),
        # fp32 on CPU, both nets laid out channels-last (the suite's `model.net.channels_last=true`; diffusers'
        # the same way, `.to(memory_format=torch.channels_last)` and channels-last inputs), so each is compared
        # against the other's default and like for like
        "suite UNet, channels_last": (ours_cl, lambda m, x, t: m(x, t)),
        "diffusers UNet2DModel, channels_last": (
            copy.deepcopy(theirs).to(memory_format=torch.channels_last),
            lambda m, x, t: m(x.contiguous(memory_format=torch.channels_last), t).sample,
        ),
    }
    if bf16:
        models["suite UNet, bf16 autocast"] = (copy.deepcopy(ours), _bf16_call)
        models["diffusers UNet2DModel, bf16 autocast"] = (copy.deepcopy(theirs), _diffusers_bf16_call)
    if compile_net:
        compiled = _compiled(copy.deepcopy(ours))
        if compiled is not None:
            models["suite UNet, torch.compile"] = (compiled, lambda m, x, t: m(x, t))
    return models


def training_step_part(cfg: Any, args: argparse.Namespace) -> tuple[dict[str, Any], torch.nn.Module]:
    """Part 1: the suite's UNet against its diffusers twin, fp32 and bf16 autocast (and torch.compile with
    `--compile`), alternating `--rounds` times; ratios, and GFLOP/s against this CPU's measured GEMM peak."""
    bf16_skipped = bf16_rows_skipped(args.bf16)
    if bf16_skipped:
        print(f"bf16 autocast rows skipped: {bf16_skipped}")
    models = _twins(cfg, args.compile, bf16=bf16_skipped is None)
    ours, theirs = models["suite UNet"][0], models["diffusers UNet2DModel"][0]
    shape = (ours.in_channels, ours.image_size, ours.image_size)
    flops = {
        side: training_step_flops(*models[name], args.batch, shape)
        for side, name in (("suite", "suite UNet"), ("diffusers", "diffusers UNet2DModel"))
    }
    probes = {"fp32": gemm_peak_gflops(torch.float32)}
    if not bf16_skipped:
        probes["bf16"] = gemm_peak_gflops(torch.bfloat16)
    peak = {precision: max(rates.values()) for precision, rates in probes.items()}
    times = time_training(models, args.batch, args.steps, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["suite UNet"] / med["diffusers UNet2DModel"]
    ratio_bf16 = (
        None if bf16_skipped else med["suite UNet, bf16 autocast"] / med["diffusers UNet2DModel, bf16 autocast"]
    )
    bf16_speedup = None if bf16_skipped else med["suite UNet"] / med["suite UNet, bf16 autocast"]
    ratio_cl = med["suite UNet, channels_last"] / med["diffusers UNet2DModel"]
    ratio_cl_both = med["suite UNet, channels_last"] / med["diffusers UNet2DModel, channels_last"]
    rows = []
    for name, sec in med.items():
        side = "diffusers" if name.startswith("diffusers") else "suite"
        gflops = flops[side] / sec / 1e9
        precision = "bf16" if "bf16" in name else "fp32"
        rows.append(
            (name, f"{sec * 1000:.1f}", f"{n_params(models[name][0]):,}", f"{flops[side] / 1e9:.2f}",
             f"{gflops:.1f}", f"{gflops / peak[precision]:.0%} of {precision} {peak[precision]:.0f}")
        )  # fmt: skip
    print_table(
        rows,
        ("model", f"ms / training step (batch {args.batch})", "parameters", "GFLOP / step", "GFLOP/s",
         "of measured GEMM peak"),
    )  # fmt: skip
    for precision, rates in probes.items():
        print(
            f"measured GEMM peak, {precision}: {peak[precision]:.0f} GFLOP/s, the faster of "
            + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())
        )
    print(
        f"FLOPs per step suite/diffusers: {flops['suite'] / flops['diffusers']:.3f} "
        "(the time ratio if both ran at the same GFLOP/s)"
    )
    bf16_part = (
        "bf16 autocast not timed"
        if bf16_skipped
        else f"bf16 autocast {ratio_bf16:.3f} (target <= 0.8); suite fp32/bf16: {bf16_speedup:.2f}x"
    )
    print(
        f"training-step time ratio suite/diffusers: fp32 {ratio:.3f} (target <= 0.8), {bf16_part}; "
        f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"fp32 channels-last: suite (model.net.channels_last=true) / diffusers default {ratio_cl:.3f} "
        f"(target <= 0.8); both channels-last {ratio_cl_both:.3f}"
    )
    if "suite UNet, torch.compile" in med:
        print(f"torch.compile gain: {med['suite UNet'] / med['suite UNet, torch.compile']:.2f}x over eager fp32")
    results = {
        "params": {"suite": n_params(ours), "diffusers": n_params(theirs)},
        "train_step_s": med,
        "train_ratio": ratio,
        "train_ratio_bf16": ratio_bf16,
        "train_ratio_channels_last": ratio_cl,
        "train_ratio_channels_last_both": ratio_cl_both,
        "bf16_speedup": bf16_speedup,
        "bf16_skipped": bf16_skipped,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "flops_per_step": flops,
        "gemm_peak_gflops": peak,
        "gemm_probes_gflops": probes,
        "flops_ratio": flops["suite"] / flops["diffusers"],
    }
    return results, ours


def sampler_speed_part(model: Any, args: argparse.Namespace) -> dict[str, float]:
    """Part 2: images per second of each `--speed-samplers` entry on `--sample-batch` images."""
    speed: dict[str, float] = {}
    if not args.speed_samplers:
        return speed
    for sampler, steps in args.speed_samplers:
        seeds = list(range(args.sample_batch))
        start = time.perf_counter()
        model.generate(seeds, sampler=sampler, steps=steps, progress=True)
        elapsed = time.perf_counter() - start
        speed[f"{sampler}-{steps}"] = args.sample_batch / elapsed
        print(
            f"{sampler}-{steps}: {args.sample_batch} images in {elapsed:.1f} s = {speed[f'{sampler}-{steps}']:.3f} images/s",
            flush=True,
        )
    print_table(
        [(k, f"{v:.3f}") for k, v in speed.items()],
        ("sampler", f"images / s (batch {args.sample_batch})"),
    )
    return speed


def _real_statistics(protocol: Any, cfg: Any) -> tuple[Any, int]:
    """The FID metric holding the real test images' statistics, and their number (checked)."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("test")
    metric = protocol.metric()
    n_real = 0
    for x, _ in datamodule.test_dataloader():
        metric.update(x, real=True)
        n_real += len(x)
    protocol.check_real(n_real)
    return metric, n_real


def fid_part(model: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Part 3: FID of each `--fid-samplers` entry under the suite's protocol, `--fid-samples` images each."""
    from lit_modules.fid import FIDProtocol

    protocol = FIDProtocol(args.fid_samples)
    protocol.check()
    metric, n_real = _real_statistics(protocol, cfg)
    fids = {}
    for sampler, steps in args.fid_samplers:
        item = f"{sampler}:{steps}"
        metric.reset()  # keeps the real statistics (reset_real_features=False)
        start = time.perf_counter()
        for b in range(0, args.fid_samples, 250):
            seeds = list(range(1_000_000 + b, 1_000_000 + min(b + 250, args.fid_samples)))
            metric.update(model.generate(seeds, sampler=sampler, steps=steps, progress=True), real=False)
        fids[item] = {"fid": float(metric.compute()), "seconds": time.perf_counter() - start}
        print(f"FID {item}: {fids[item]['fid']:.3f} ({fids[item]['seconds']:.0f} s)", flush=True)
    described = protocol.describe(args.fid_samples, n_real)
    print_table(
        [(k, f"{v['fid']:.2f}", f"{v['seconds']:.0f}") for k, v in fids.items()],
        ("sampler:steps", "FID", "s"),
    )
    print(
        f"FID protocol: {args.fid_samples} generated vs {n_real} real test images, MNIST-classifier features "
        f"(sha256 {described['feature_network']['sha256'][:12]}...); embedded data, not comparable with papers"
    )
    return {"fid": fids, "fid_protocol": described}


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_ddpm_"))
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "batch": args.batch}
    cfg = compose("train", ["experiment=ddpm_mnist"], output_dir=out / "cfg")
    model = None
    if args.ckpt:
        from experiments.sample import load_generative_model

        model, _ = load_generative_model(args.ckpt)
    if not args.skip_speed:
        part, ours = training_step_part(cfg, args)
        results.update(part)
        net_model = model
        if net_model is None:
            from lit_modules.ddpm import DDPM

            net_model = DDPM(ours, optimizer=None, fid_num_samples=0)
        results["samples_per_second"] = sampler_speed_part(net_model, args)
    if model is not None and args.fid_samplers:
        results.update(fid_part(model, cfg, args))
    write_results(out / "benchmark_ddpm.json", results)
    print(f"results: {out / 'benchmark_ddpm.json'}")
    return 0
