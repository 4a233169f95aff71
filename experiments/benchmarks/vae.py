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
from experiments.benchmarks.common import (
    cpu_seconds,
    int_at_least,
    positive_int,
    print_table,
    steady_state,
    write_results,
)
from lit_modules.vae import bernoulli_log_likelihood, importance_sampled_log_likelihood, kl_standard_normal
from runtime.config import compose


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--experiment", default="vae_mnist", help="experiment config to train (default: vae_mnist)"
    )
    p.add_argument(
        "--epochs",
        type=int_at_least(2),
        default=8,
        help="epochs per round for both sides, >= 2: the first is start-up, not compared (vae_mnist uses 50)",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
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
        "--nll-samples",
        type=positive_int,
        default=128,
        help="K importance samples for the shared test scoring",
    )
    p.add_argument(
        "--skip-startup", action="store_true", help="skip the start-up measurement (command to first batch)"
    )
    p.add_argument(
        "--skip-floor",
        action="store_true",
        help="skip Lightning's floor (a bare pl.Trainer against the plain loop, automatic and manual optimisation)",
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


class PlainLoop:
    """The textbook training loop in plain PyTorch, on the suite's model and data objects, one epoch per call.
    With `checkpoint`, each epoch also does the suite's per-epoch writes: model, optimizer and RNG states,
    streamed into a temporary file and renamed onto plain_last.ckpt (what a resumable plain loop has to do:
    equal work). Seeds the global RNGs on construction, as the suite's `train` does."""

    def __init__(self, overrides: list[str], out: Path, checkpoint: bool = False):
        cfg = compose("train", overrides, output_dir=out / "plain")
        pl.seed_everything(cfg.seed, workers=True)
        self.datamodule = hydra.utils.instantiate(cfg.data)
        self.model = hydra.utils.instantiate(cfg.model)
        self.datamodule.setup("fit")
        self.optimizer = self.model.configure_optimizers()
        self.train_loader = self.datamodule.train_dataloader()
        self.val_loader = self.datamodule.val_dataloader()
        self.checkpoint, self.out = checkpoint, out

    def epoch(self, epoch: int) -> tuple[float, float, float]:
        """Trains, validates (and checkpoints) one epoch; returns (wall s, CPU s, validation -ELBO)."""
        model, optimizer, beta = self.model, self.optimizer, self.model.hparams.beta
        start, start_cpu = time.perf_counter(), cpu_seconds()
        self.train_loader.sampler.set_epoch(epoch)
        model.train()
        for x, _ in self.train_loader:
            recon, kl = model.loss_terms(x)
            loss = (recon + beta * kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val = [(r + k).mean().item() for r, k in (model.loss_terms(x) for x, _ in self.val_loader)]
        if self.checkpoint:  # what the suite's last.ckpt holds, written the way the suite writes it
            state = {
                "epoch": epoch,
                "state_dict": model.state_dict(),
                "optimizer_states": [optimizer.state_dict()],
                "rng_states": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                               "python": random.getstate()},
            }  # fmt: skip
            write_atomic(self.out / "plain_last.ckpt", lambda f, state=state: torch.save(state, f))
        return time.perf_counter() - start, cpu_seconds() - start_cpu, sum(val) / len(val)


def plain_loop(
    overrides: list[str], epochs: int, out: Path, checkpoint: bool = False
) -> tuple[dict[str, list[float]], torch.nn.Module, object]:
    """`PlainLoop` for `epochs` epochs. Returns the epochs' wall and CPU seconds ({"wall": [...], "cpu": [...]}),
    the model and the datamodule."""
    loop = PlainLoop(overrides, out, checkpoint)
    times, cpu = [], []
    for epoch in range(epochs):
        wall, used, val = loop.epoch(epoch)
        times.append(wall)
        cpu.append(used)
        print(f"plain loop: epoch {epoch + 1}/{epochs} {wall:.3f} s, val -ELBO {val:.2f}", flush=True)
    return {"wall": times, "cpu": cpu}, loop.model, loop.datamodule


class PairedPlainEpochs(pl.Callback):
    """Runs one epoch of the plain loop with checkpoints (`PlainLoop`) before each of the suite's epochs, in the
    suite's process, and times both: each suite epoch is paired with a plain epoch run seconds before it, so
    the machine's drift (which moves whole runs by 10-30 % here) cancels in the pair's ratio. The plain side
    keeps its own global RNG states (swapped in and out around its epochs), so each side draws exactly the
    numbers it draws alone and both end with the weights of their separate runs. Suite epoch = from the end of
    its paired plain epoch to the next one's start (training, validation, checkpointing, logging, bars).
    Writes {"wall", "cpu", "plain_wall", "plain_cpu"} to `path` as JSON at the end of training. With
    `checkpoint=False` the plain epochs write no checkpoint (the baseline of `lightning_floor`)."""

    def __init__(self, path: str, overrides: list[str], out: str, checkpoint: bool = True):
        self.path, self.overrides, self.out = Path(path), list(overrides), Path(out)
        self.checkpoint = checkpoint
        self.loop: PlainLoop | None = None
        self.plain_rng: dict[str, torch.Tensor] | None = None
        self.suite: list[tuple[float, float]] = []
        self.plain: list[tuple[float, float]] = []
        self._start: tuple[float, float] | None = None

    def _close_suite_epoch(self) -> None:
        if self._start is not None:
            self.suite.append((time.perf_counter() - self._start[0], cpu_seconds() - self._start[1]))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from runtime.callbacks import capture_rng_state, restore_rng_state

        self._close_suite_epoch()
        suite_rng = capture_rng_state()
        with torch.enable_grad():
            if self.loop is None:
                self.loop = PlainLoop(self.overrides, self.out, self.checkpoint)  # seeds, as alone
            else:
                restore_rng_state(self.plain_rng)
            wall, used, _ = self.loop.epoch(trainer.current_epoch)
        self.plain.append((wall, used))
        self.plain_rng = capture_rng_state()
        restore_rng_state(suite_rng)
        self._start = (time.perf_counter(), cpu_seconds())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_suite_epoch()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            json.dumps(
                {
                    "wall": [w for w, _ in self.suite],
                    "cpu": [c for _, c in self.suite],
                    "plain_wall": [w for w, _ in self.plain],
                    "plain_cpu": [c for _, c in self.plain],
                }
            )
        )


class BareVAE(pl.LightningModule):
    """The suite's VAE behind the smallest LightningModule that trains it: the same loss, no logging, no
    accumulated metrics, no figures. `manual` steps the optimizer in `training_step` (manual optimisation)
    instead of Lightning's closure."""

    def __init__(self, vae: pl.LightningModule, manual: bool = False):
        super().__init__()
        self.vae = vae
        self.automatic_optimization = not manual

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.vae.configure_optimizers()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        recon, kl = self.vae.loss_terms(batch[0])
        loss = (recon + self.vae.hparams.beta * kl).mean()
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        return None

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        recon, kl = self.vae.loss_terms(batch[0])
        return (recon + kl).mean()


def lightning_floor(common: list[str], epochs: int, out: Path, manual: bool = False) -> dict[str, Any]:
    """Lightning's own cost on this model: `BareVAE` in a bare `pl.Trainer` (no logger, checkpointing,
    progress bar, model summary or sanity check), each epoch paired with a plain epoch without checkpoint run
    just before it (`PairedPlainEpochs`). Returns the epoch times of both sides, the median and quartiles of
    the pairs' ratios (epochs 2..) and whether both ended with the same weights."""
    cfg = compose("train", common, output_dir=out / "suite")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = BareVAE(hydra.utils.instantiate(cfg.model), manual=manual)
    paired = PairedPlainEpochs(str(out / "epoch_times.json"), common, str(out / "plain"), checkpoint=False)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[paired],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    times = json.loads(paired.path.read_text())
    pairs = [a / b for a, b in zip(times["wall"], times["plain_wall"])]
    pairs = pairs[1:] or pairs
    median, quartiles = median_quartiles(pairs)
    plain_state = paired.loop.model.state_dict().values()
    same = all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), plain_state))
    return {
        "wall": times["wall"], "plain_wall": times["plain_wall"], "ratio": median,
        "ratio_quartiles": quartiles, "ratios": pairs, "weights_identical": same,
    }  # fmt: skip


def timed_rounds(
    args: argparse.Namespace, common: list[str], out: Path
) -> tuple[list[dict[str, Any]], Any, Any]:
    """`--rounds` rounds of: the suite's `experiments.train` with a plain epoch (with checkpoint) paired before
    each of its epochs (`PairedPlainEpochs`), then the plain PyTorch loop alone, and alone with a checkpoint
    per epoch. Returns (per-round epoch wall times under "suite", "paired_plain_ckpt", "plain", "plain_ckpt"
    and their CPU seconds under the same keys + "_cpu", the plain loop's model, its datamodule)."""
    from omegaconf import open_dict

    from experiments.train import train

    timer_file = out / "suite_epoch_times.json"
    suite_overrides = [*common, f"logger={args.logger}", "test=false"]
    rounds = []
    for r in range(args.rounds):
        print(
            f"== round {r + 1}/{args.rounds}, suite: python -m experiments.train {' '.join(suite_overrides)}, "
            "each epoch paired with a plain epoch (with checkpoint) run just before it",
            flush=True,
        )
        cfg = compose("train", suite_overrides, output_dir=out / f"suite_{r}")
        with open_dict(cfg):
            cfg.callbacks.paired_plain_epochs = {
                "_target_": "experiments.benchmarks.vae.PairedPlainEpochs",
                "path": str(timer_file),
                "overrides": list(common),
                "out": str(out / "paired"),
            }
        train(cfg)
        paired = json.loads(timer_file.read_text())
        print(
            f"== round {r + 1}/{args.rounds}, plain PyTorch loop alone (and again with a checkpoint per epoch)",
            flush=True,
        )
        plain, plain_model, datamodule = plain_loop(common, args.epochs, out)
        plain_ckpt, _, _ = plain_loop(common, args.epochs, out, checkpoint=True)
        sides = {
            "suite": {"wall": paired["wall"], "cpu": paired["cpu"]},
            "paired_plain_ckpt": {"wall": paired["plain_wall"], "cpu": paired["plain_cpu"]},
            "plain": plain,
            "plain_ckpt": plain_ckpt,
        }
        rounds.append(
            {**{k: t["wall"] for k, t in sides.items()}, **{f"{k}_cpu": t["cpu"] for k, t in sides.items()}}
        )
    return rounds, plain_model, datamodule


def score_both(
    args: argparse.Namespace, common: list[str], out: Path, plain_model: Any, datamodule: Any
) -> tuple[dict[str, float], dict[str, float], bool]:
    """(-ELBO and NLL of the suite's first-round weights, of the plain loop's, whether the weights of the suite,
    the plain loop alone and the plain loop paired with the suite's epochs are all equal)."""
    cfg = compose("train", common, output_dir=out / "score")
    suite_model = hydra.utils.instantiate(cfg.model)
    state = torch.load(out / "suite_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    suite_model.load_state_dict(state)
    test_loader = datamodule.test_dataloader()
    suite_score = score(suite_model.net.eval(), test_loader, args.nll_samples)
    plain_score = score(plain_model.net.eval(), test_loader, args.nll_samples)
    paired = torch.load(out / "paired" / "plain_last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    same = all(
        torch.equal(a, b) and torch.equal(a, c)
        for a, b, c in zip(
            suite_model.state_dict().values(), plain_model.state_dict().values(), paired.values()
        )
    )
    return suite_score, plain_score, same


def epoch_statistics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady-state epoch times (median over rounds) and the suite/plain time ratios against the plain loop run
    alone (per round, fastest epochs, without checkpoints), in CPU seconds, and the headline: paired epochs."""
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
        **paired_statistics(rounds),
    }


def paired_statistics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline: each suite epoch over the plain epoch (with checkpoint) run just before it in the same
    process, epochs 2.. of every round; median and quartiles over all pairs, in wall and in CPU seconds."""
    out: dict[str, Any] = {}
    for unit, suffix in (("", ""), ("cpu_", "_cpu")):
        pairs = [
            a / b
            for rd in rounds
            for a, b in zip(rd[f"suite{suffix}"][1:], rd[f"paired_plain_ckpt{suffix}"][1:])
        ]
        out[f"paired_{unit}ratio"], out[f"paired_{unit}ratio_quartiles"] = median_quartiles(pairs)
        out[f"paired_{unit}ratios"] = pairs
    return out


def median_quartiles(pairs: list[float]) -> tuple[float, list[float]]:
    """The median of paired ratios and their first and third quartiles (all the one value for one pair)."""
    q1, _, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (pairs[0],) * 3
    return statistics.median(pairs), [q1, q3]


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
    q1, q3 = stats["paired_ratio_quartiles"]
    c1, c3 = stats["paired_cpu_ratio_quartiles"]
    print(
        f"time ratio suite/plain at equal work, paired epochs (each suite epoch over the plain epoch with "
        f"checkpoint run just before it; median of {len(stats['paired_ratios'])} pairs): "
        f"{stats['paired_ratio']:.3f} (quartiles {q1:.3f}-{q3:.3f}; target <= 1.05); in CPU seconds "
        f"{stats['paired_cpu_ratio']:.3f} ({c1:.3f}-{c3:.3f})"
    )
    ratios = ", ".join(f"{x:.3f}" for x in stats["ratios"])
    print(
        f"time ratio suite/(plain loop alone, checkpoint per epoch), median of rounds: {stats['ratio']:.3f} "
        f"(per round: {ratios})"
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
    floor = None
    if not args.skip_floor:
        floor = {
            mode: lightning_floor(common, args.epochs, out / f"floor_{mode}", manual=mode == "manual")
            for mode in ("automatic", "manual")
        }
        print(
            "Lightning's own floor (a bare pl.Trainer: no logger, checkpoint, progress bar; the same loss in a "
            "minimal LightningModule) over the plain loop without checkpoint, paired epochs: "
            + "; ".join(
                f"{mode} optimisation {f['ratio']:.3f} (quartiles {f['ratio_quartiles'][0]:.3f}-"
                f"{f['ratio_quartiles'][1]:.3f}, {len(f['ratios'])} pairs, weights bit-identical: "
                f"{f['weights_identical']})"
                for mode, f in floor.items()
            )
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
            "lightning_floor": floor,
            "epochs": args.epochs,
            "logger": args.logger,
        },
    )
    print(f"results: {out / 'benchmark_vae.json'}")
    return 0
