"""Low-light data loading: pairs/s of the LOL DataModule against the training step time it has to feed.

Three measurements, interleaved over `--rounds` because this machine's timings drift:
1. loader alone: pairs/s of `data=lol` training batches (paired, random 256x256 crops + flips by default;
   also NeRCo's recipe: unpaired, resize to 512x512, flips) with 0 and `--workers` workers;
2. step alone: one training step (forward, L1 loss, backward, Adam) of a stand-in network of NeRCo's
   generator size on an in-memory batch of the same shape;
3. fed step: the same step with its batches coming from the loader (workers running beside it), which is
   what training sees. fed/alone close to 1 means loading is not the bottleneck.

The stand-in is the CycleGAN `resnet_9blocks` generator (Zhu et al. 2017, CycleGAN: ngf 64, InstanceNorm,
reflection padding, 9 residual blocks; 11.38M parameters with 3 input channels, as NeRCo's G_B). One NeRCo
iteration runs several such networks (G_A twice, G_B twice, the NRN, the mask extractor, four
discriminators, CLIP), so its step is several times longer: if the loader keeps up with this stand-in, it
keeps up with NeRCo. Data: the configured `data=lol` source (the synthetic default unless overridden).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from torch import nn

from experiments.benchmarks.common import non_negative_int, positive_int, print_table, write_results
from runtime.config import compose


# ----------------------------------------------------------------------------- the stand-in network
class _ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def standin_generator(in_channels: int = 3, ngf: int = 64, n_blocks: int = 9) -> nn.Sequential:
    """CycleGAN's resnet_9blocks layout (a timing stand-in only; NeRCo's own networks live in lit_modules/nets)."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, 7),
        nn.InstanceNorm2d(ngf),
        nn.ReLU(True),
    ]
    for mult in (1, 2):
        layers += [
            nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1),
            nn.InstanceNorm2d(ngf * mult * 2),
            nn.ReLU(True),
        ]
    layers += [_ResnetBlock(ngf * 4) for _ in range(n_blocks)]
    for mult in (4, 2):
        layers += [
            nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
            nn.InstanceNorm2d(ngf * mult // 2),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------- measurements
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pairs",
        type=positive_int,
        default=96,
        help="pairs loaded per loader measurement (after 1 warm-up batch)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=8,
        help="training steps per step measurement (after 1 warm-up step)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="DataLoader workers of the 'workers' rows (default 2)",
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="pairs per batch (NeRCo: 1)")
    p.add_argument(
        "--crop", type=positive_int, default=256, help="random crop of the paired recipe (default 256)"
    )
    p.add_argument(
        "--rounds", type=positive_int, default=2, help="repetitions, interleaved (median reported)"
    )
    p.add_argument(
        "--ngf",
        type=positive_int,
        default=64,
        help="stand-in width (64 = NeRCo's generator; smaller for smoke tests)",
    )
    p.add_argument("--no-nerco-recipe", action="store_true", help="skip the unpaired 512x512 recipe rows")
    p.add_argument("--output-dir", default=None, help="where the results JSON goes (default: a temp dir)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the data config, e.g. data.source=local")


def _datamodule(overrides: list[str], out: Path, **data: Any):
    opts = [f"data.{k}={'null' if v is None else v}" for k, v in data.items()]
    cfg = compose("prepare", ["data=lol", *overrides, *opts], output_dir=out / "cfg")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    return dm, cfg


def loader_rate(dm, n_pairs: int) -> float:
    """Pairs/s over `n_pairs` pairs after one warm-up batch (worker start-up excluded)."""
    batches = _forever(dm.train_dataloader())
    next(batches)  # workers started, first batch ready
    seen, start = 0, time.perf_counter()
    while seen < n_pairs:
        seen += len(next(batches)["low"])
    return seen / (time.perf_counter() - start)


def _forever(loader):
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def step_time(net: nn.Module, opt: torch.optim.Optimizer, batches, n_steps: int) -> float:
    """Seconds per training step (forward, L1, backward, Adam), median over `n_steps` after 1 warm-up."""
    times = []
    for i in range(n_steps + 1):
        start = time.perf_counter()
        batch = next(batches)
        out = net(batch["low"])
        loss = (out - batch["high"]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def recipes_of(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The data recipes compared: a paired crop recipe and (unless --no-nerco-recipe) NeRCo's unpaired one."""
    recipes = {
        f"paired, crop {args.crop}, flips": {
            "crop": args.crop,
            "hflip": True,
            "resize": None,
            "mode": "paired",
        },
    }
    if not args.no_nerco_recipe:
        recipes["NeRCo: unpaired, resize 512x512, flips"] = {
            "crop": None,
            "hflip": True,
            "resize": 512,
            "mode": "unpaired",
            "value_range": "[-1.0,1.0]",
        }
    return recipes


def measure_recipe(args: argparse.Namespace, out: Path, opts: dict[str, Any], net, opt, res: dict) -> Any:
    """One round of one recipe: loader rates with 0 and N workers, the step alone and fed by the loader
    (appended to `res`); returns the data module's description."""
    common = {**opts, "batch_size": args.batch_size, "pin_memory": False}
    dm0, _ = _datamodule(args.overrides, out, num_workers=0, **common)
    dmw, _ = _datamodule(args.overrides, out, num_workers=args.workers, **common)
    res["loader_0"].append(loader_rate(dm0, args.pairs))
    res["loader_w"].append(loader_rate(dmw, args.pairs))
    fixed = next(iter(dm0.train_dataloader()))
    res["step"].append(step_time(net, opt, itertools.repeat(fixed), args.steps))
    fed = _forever(dmw.train_dataloader())
    next(fed)  # workers started
    res["fed_step"].append(step_time(net, opt, fed, args.steps))
    res["batch_shape"] = tuple(fixed["low"].shape)
    print(
        f"   loader: {res['loader_0'][-1]:.1f} pairs/s (0 workers), {res['loader_w'][-1]:.1f} pairs/s "
        f"({args.workers} workers); step {res['step'][-1]:.3f} s alone, {res['fed_step'][-1]:.3f} s fed",
        flush=True,
    )
    return dm0.describe()


def summary_rows(results: dict[str, Any], batch_size: int) -> list[tuple[str, ...]]:
    """One table row per recipe: medians over the rounds (also stored under each recipe's `median`)."""
    rows = []
    for name, res in results["recipes"].items():
        med = {k: statistics.median(v) for k, v in res.items() if isinstance(v, list)}
        res["median"] = med
        need = batch_size / med["step"]
        rows.append(
            (
                name,
                "x".join(map(str, res["batch_shape"])),
                f"{med['loader_0']:.1f}",
                f"{med['loader_w']:.1f}",
                f"{med['step']:.3f} ({need:.2f} pairs/s)",
                f"{med['fed_step']:.3f}",
                f"{med['fed_step'] / med['step']:.2f}",
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_lowlight_"))
    torch.manual_seed(0)
    net = standin_generator(ngf=args.ngf)
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    results: dict[str, Any] = {"recipes": {}, "params": n_params, "threads": torch.get_num_threads()}
    describe = None
    for r in range(args.rounds):
        for name, opts in recipes_of(args).items():
            empty = {"loader_0": [], "loader_w": [], "step": [], "fed_step": []}
            res = results["recipes"].setdefault(name, empty)
            print(f"== round {r + 1}/{args.rounds}: {name}", flush=True)
            described = measure_recipe(args, out, opts, net, opt, res)
            describe = describe or described  # the first recipe's data
    rows = summary_rows(results, args.batch_size)
    print(
        f"\nLow-light data loading vs a training step: data {describe['label'] if describe else '?'}; stand-in "
        f"network: CycleGAN resnet_9blocks, {n_params / 1e6:.2f}M parameters, torch threads {torch.get_num_threads()}, "
        f"medians over {args.rounds} round(s). Shared 2-core machine: timings are noisy."
    )
    header = (
        "recipe",
        "batch",
        "pairs/s, 0 workers",
        f"pairs/s, {args.workers} workers",
        "step alone, s (pairs/s it consumes)",
        "step fed by loader, s",
        "fed/alone",
    )
    print_table(rows, header)
    results["data"] = describe
    write_results(out / "benchmark_lowlight_data.json", results)
    print(f"results: {out / 'benchmark_lowlight_data.json'}")
    return 0
