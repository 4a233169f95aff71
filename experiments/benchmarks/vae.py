"""VAE: the suite's training against a plain PyTorch loop (same model, data order, hyperparameters and seed).

Both sides build the model and the data from the same composed config (`experiment=vae_mnist` by default),
seed with the same `seed_everything(seed, workers=True)`, draw batches from the same epoch-seeded sampler and
step the same Adam. The suite runs as a user runs it (`experiments.train.train`, with its checkpointing,
logger and progress bar); the plain loop is the textbook loop (train pass, then a validation pass). Both
final models are then scored by one function with one fixed noise seed, so the -ELBO columns compare weights,
not evaluation noise.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch

from core.files import write_atomic
from experiments.benchmarks.common import cpu_seconds, print_table, steady_state, write_results
from lit_modules.vae import bernoulli_log_likelihood, importance_sampled_log_likelihood, kl_standard_normal
from runtime.config import compose


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--experiment", default="vae_mnist", help="experiment config to train (default: vae_mnist)"
    )
    p.add_argument(
        "--epochs", type=int, default=8, help="epochs per round for both sides (vae_mnist's recipe uses 50)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="suite and plain loop alternate this many times (this machine's timings drift)",
    )
    p.add_argument(
        "--logger",
        default="wandb",
        choices=["wandb", "csv", "none"],
        help="the suite's tracker (default: wandb, offline without a key)",
    )
    p.add_argument(
        "--nll-samples", type=int, default=128, help="K importance samples for the shared test scoring"
    )
    p.add_argument(
        "--skip-startup", action="store_true", help="skip the start-up measurement (command to first batch)"
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="where the suite's run dir and the results go (default: a temp dir)",
    )
    p.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for both sides, e.g. data.batch_size=128"
    )


@torch.no_grad()
def score(net: torch.nn.Module, loader, num_samples: int, seed: int = 0) -> dict[str, float]:
    """Test -ELBO and importance-sampled NLL (nats/image) with a fixed noise seed."""
    g = torch.Generator().manual_seed(seed)
    elbo, nll, n = 0.0, 0.0, 0
    for x, _ in loader:
        mu, logvar = net.encode(x)
        log_px, mean_log_px_z = importance_sampled_log_likelihood(
            lambda z, x=x: bernoulli_log_likelihood(net.decode(z), x), mu, logvar, num_samples, 32, g
        )
        elbo += (kl_standard_normal(mu, logvar) - mean_log_px_z).sum().item()
        nll += (-log_px).sum().item()
        n += len(x)
    return {"test_elbo": elbo / n, "test_nll": nll / n}


def plain_loop(
    overrides: list[str], epochs: int, out: Path, checkpoint: bool = False
) -> tuple[dict[str, list[float]], torch.nn.Module, object]:
    """The textbook training loop in plain PyTorch, on the suite's model and data objects. With `checkpoint`,
    it also does the suite's per-epoch writes: model, optimizer and RNG states, streamed into a temporary
    file and renamed onto last.ckpt (what a resumable plain loop has to do: equal work). Returns the epochs'
    wall and CPU seconds ({"wall": [...], "cpu": [...]}, as `EpochTimer` writes them), the model, the data."""
    cfg = compose("train", overrides, output_dir=out / "plain")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    datamodule.setup("fit")
    optimizer = model.configure_optimizers()
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    beta = model.hparams.beta
    times, cpu = [], []
    for epoch in range(epochs):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        train_loader.sampler.set_epoch(epoch)
        model.train()
        for x, _ in train_loader:
            recon, kl = model.loss_terms(x)
            loss = (recon + beta * kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val = [(r + k).mean().item() for r, k in (model.loss_terms(x) for x, _ in val_loader)]
        if checkpoint:  # what the suite's last.ckpt holds, written the way the suite writes it
            state = {
                "epoch": epoch,
                "state_dict": model.state_dict(),
                "optimizer_states": [optimizer.state_dict()],
                "rng_states": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                               "python": random.getstate()},
            }  # fmt: skip
            write_atomic(out / "plain_last.ckpt", lambda f, state=state: torch.save(state, f))
        times.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
        print(
            f"plain loop: epoch {epoch + 1}/{epochs} {times[-1]:.3f} s, val -ELBO {sum(val) / len(val):.2f}",
            flush=True,
        )
    return {"wall": times, "cpu": cpu}, model, datamodule


def timed_rounds(
    args: argparse.Namespace, common: list[str], out: Path
) -> tuple[list[dict[str, Any]], Any, Any]:
    """`--rounds` rounds of: the suite's `experiments.train` (epoch times from `EpochTimer`), the plain PyTorch
    loop, and the plain loop with a checkpoint per epoch. Returns (per-round epoch wall times under "suite",
    "plain", "plain_ckpt" and their CPU seconds under the same keys + "_cpu", the plain loop's model, its
    datamodule)."""
    from experiments.train import train

    timer_file = out / "suite_epoch_times.json"
    suite_overrides = [
        *common,
        f"logger={args.logger}",
        "test=false",
        "+callbacks.epoch_timer._target_=experiments.benchmarks.timers.EpochTimer",
        f"+callbacks.epoch_timer.path={timer_file}",
    ]
    rounds = []
    for r in range(args.rounds):
        print(
            f"== round {r + 1}/{args.rounds}, suite: python -m experiments.train {' '.join(suite_overrides)}",
            flush=True,
        )
        train(compose("train", suite_overrides, output_dir=out / f"suite_{r}"))
        suite = json.loads(timer_file.read_text())
        print(
            f"== round {r + 1}/{args.rounds}, plain PyTorch loop (and again with a checkpoint per epoch)",
            flush=True,
        )
        plain, plain_model, datamodule = plain_loop(common, args.epochs, out)
        plain_ckpt, _, _ = plain_loop(common, args.epochs, out, checkpoint=True)
        sides = {"suite": suite, "plain": plain, "plain_ckpt": plain_ckpt}
        rounds.append(
            {**{k: t["wall"] for k, t in sides.items()}, **{f"{k}_cpu": t["cpu"] for k, t in sides.items()}}
        )
    return rounds, plain_model, datamodule


def score_both(
    args: argparse.Namespace, common: list[str], out: Path, plain_model: Any, datamodule: Any
) -> tuple[dict[str, float], dict[str, float], bool]:
    """(-ELBO and NLL of the suite's first-round weights, of the plain loop's, whether the weights are equal)."""
    cfg = compose("train", common, output_dir=out / "score")
    suite_model = hydra.utils.instantiate(cfg.model)
    state = torch.load(out / "suite_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    suite_model.load_state_dict(state)
    test_loader = datamodule.test_dataloader()
    suite_score = score(suite_model.net.eval(), test_loader, args.nll_samples)
    plain_score = score(plain_model.net.eval(), test_loader, args.nll_samples)
    same = all(
        torch.equal(a, b)
        for a, b in zip(suite_model.state_dict().values(), plain_model.state_dict().values())
    )
    return suite_score, plain_score, same


def epoch_statistics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady-state epoch times (median over rounds) and the suite/plain time ratios. The headline ratio is
    against the plain loop with the suite's checkpoint writes (equal work)."""
    keys = ("suite", "plain", "plain_ckpt")
    t = {k: statistics.median(steady_state(rd[k]) for rd in rounds) for k in keys}
    ratios = [steady_state(rd["suite"]) / steady_state(rd["plain_ckpt"]) for rd in rounds]
    ratio_no_ckpt = statistics.median(steady_state(rd["suite"]) / steady_state(rd["plain"]) for rd in rounds)
    # Other processes only ever add time, so the fastest steady-state epoch of each side over all rounds is the
    # estimate least disturbed by them (timeit's rule); the median above is the conservative figure.
    fastest = {k: min(min(rd[k][1:] or rd[k]) for rd in rounds) for k in keys}
    return {
        "epoch_time": t,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "fastest_epoch": fastest,
        "ratio_fastest": fastest["suite"] / fastest["plain_ckpt"],
        "ratio_vs_plain_without_checkpoint": ratio_no_ckpt,
        **cpu_statistics(rounds),
    }


def cpu_statistics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The same equal-work comparison in CPU seconds per epoch (this process and its children: W&B's writer
    counts for the suite). It leaves out time spent waiting for a core (another job's turn) and charges work
    done in parallel on the other core, which wall time does not see. If it scatters as much as the wall-time
    ratio, the scatter is the work itself running at different speeds, not the machine's other jobs."""
    keys = ("suite", "plain_ckpt")
    cpu = {k: statistics.median(steady_state(rd[f"{k}_cpu"]) for rd in rounds) for k in keys}
    ratios = [steady_state(rd["suite_cpu"]) / steady_state(rd["plain_ckpt_cpu"]) for rd in rounds]
    return {"epoch_cpu": cpu, "cpu_ratio": statistics.median(ratios), "cpu_ratios": ratios}


def startup_times(out: Path, experiment: str) -> dict[str, float]:
    """Seconds from launching a command to its first training batch (`experiments.train experiment=<experiment>
    debug=fdr`, timed by `StartupTimer`) and to the end of `python -c "import torch"`, in fresh processes."""
    import os
    import subprocess
    import sys

    run_dir = out / "startup"
    cmd = [
        sys.executable, "-m", "experiments.train", f"experiment={experiment}", "debug=fdr", "logger=none",
        f"hydra.run.dir={run_dir}",
        "+callbacks.startup_timer._target_=experiments.benchmarks.timers.StartupTimer",
        f"+callbacks.startup_timer.path={run_dir}/startup.json",
    ]  # fmt: skip
    res = subprocess.run(cmd, env={**os.environ, "SUITE_BENCH_T0": repr(time.time())}, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"the start-up run failed:\n{res.stderr[-3000:]}")
    first_batch = json.loads((run_dir / "startup.json").read_text())["startup_s"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return {"first_batch_s": first_batch, "import_torch_s": time.perf_counter() - start}


def print_summary(
    args: argparse.Namespace, stats: dict[str, Any], suite: dict, plain: dict, same: bool
) -> None:
    t, fastest = stats["epoch_time"], stats["fastest_epoch"]
    print(
        f"\nVAE benchmark: {args.experiment}, {args.epochs} epochs x {args.rounds} rounds, suite logger={args.logger}. "
        f"Epoch time = median over epochs 2..{args.epochs} of a round (train + validation + checkpointing/logging), "
        "then median over rounds."
    )
    print_table(
        [
            ("suite (Lightning)", f"{t['suite']:.3f}", f"{suite['test_elbo']:.3f}", f"{suite['test_nll']:.3f}"),
            ("plain loop + the suite's checkpoint per epoch", f"{t['plain_ckpt']:.3f}", "(same weights)", ""),
            ("plain loop, no checkpoint", f"{t['plain']:.3f}", f"{plain['test_elbo']:.3f}", f"{plain['test_nll']:.3f}"),
        ],
        ("", "s / epoch", "test -ELBO (nats)", f"test NLL, K={args.nll_samples}"),
    )  # fmt: skip
    ratios = ", ".join(f"{x:.3f}" for x in stats["ratios"])
    print(
        f"time ratio suite/plain at equal work (checkpoint per epoch): {stats['ratio']:.3f} "
        f"(per round: {ratios}; target <= 1.05)"
    )
    print(
        f"time ratio of the fastest epochs (least disturbed by other processes): {stats['ratio_fastest']:.3f} "
        f"({fastest['suite']:.3f} s / {fastest['plain_ckpt']:.3f} s)"
    )
    print(f"time ratio suite/(plain loop without checkpoints): {stats['ratio_vs_plain_without_checkpoint']:.3f}")
    cpu, cpu_ratios = stats["epoch_cpu"], ", ".join(f"{x:.3f}" for x in stats["cpu_ratios"])
    print(
        f"CPU-time ratio at equal work (CPU s / epoch of the process and its children, e.g. W&B's writer): "
        f"{stats['cpu_ratio']:.3f} ({cpu['suite']:.3f} s / {cpu['plain_ckpt']:.3f} s; per round: {cpu_ratios})"
    )
    d_elbo = suite["test_elbo"] - plain["test_elbo"]
    print(f"-ELBO suite - plain: {d_elbo:+.3f} nats (target <= +0.5); final weights bit-identical: {same}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_vae_"))
    common = [f"experiment={args.experiment}", f"trainer.max_epochs={args.epochs}", *args.overrides]
    rounds, plain_model, datamodule = timed_rounds(args, common, out)
    suite_score, plain_score, same = score_both(args, common, out, plain_model, datamodule)
    stats = epoch_statistics(rounds)
    print_summary(args, stats, suite_score, plain_score, same)
    startup = None if args.skip_startup else startup_times(out, args.experiment)
    if startup:
        print(
            f"start-up: `python -m experiments.train experiment={args.experiment} debug=fdr` to its first training "
            f"batch {startup['first_batch_s']:.2f} s; `python -c \"import torch\"` {startup['import_torch_s']:.2f} s "
            f"({startup['first_batch_s'] / startup['import_torch_s']:.1f}x)"
        )
    write_results(
        out / "benchmark_vae.json",
        {
            "rounds": rounds,
            **stats,
            "suite": suite_score,
            "plain": plain_score,
            "delta_elbo": suite_score["test_elbo"] - plain_score["test_elbo"],
            "weights_identical": same,
            "startup": startup,
            "epochs": args.epochs,
            "logger": args.logger,
        },
    )
    print(f"results: {out / 'benchmark_vae.json'}")
    return 0
