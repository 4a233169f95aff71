"""Helpers of the run-directory tests (tests/test_run_dir_safety.py, tests/test_run_dir_lock.py): a tiny real
training run, background `python -m experiments.train` processes, and fake lock files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from runtime import run_dir as rd
from tests.conftest import REPO

# a real run, as small as it gets: 2 training batches per epoch, 1 validation batch, no images, no test
TINY = [
    "experiment=vae_mnist",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "model.nll_samples=4",
    "model.image_every_n_epochs=0",
]
LONG = [*TINY, "trainer.max_epochs=100000", "test=false", "logger=none"]  # runs until signalled
ENV = {"PYTHONPATH": str(REPO)}  # tests.helpers for the processes


def start(run: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """`python -m experiments.train args hydra.run.dir=run` in the background, its output into `log`."""
    log = log or run.parent / f"{run.name}-{time.monotonic_ns()}.log"
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args, f"hydra.run.dir={run}"],
        cwd=REPO.parent,
        env={**os.environ, **ENV},
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        # a child inherits an ignored SIGINT (a shell's background job ignores it): restore Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.log = log  # type: ignore[attr-defined]
    out.close()
    return proc


def output(proc: subprocess.Popen) -> str:
    return Path(proc.log).read_text()  # type: ignore[attr-defined]


def wait_for(cond, what: str, timeout: float = 180, procs: tuple = ()) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        for p in procs:
            assert p.poll() is None, f"exited {p.returncode} while waiting for {what}:\n{output(p)[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def training(run: Path) -> bool:
    """The run has written its first checkpoint (it is past start-up, inside fit)."""
    return (run / "checkpoints" / "last.ckpt").is_file()


def info(run: Path) -> dict:
    return json.loads((run / "run_info.json").read_text())


def files(run: Path, *names: str) -> dict[str, bytes]:
    out = {}
    for name in names:
        for p in sorted(run.glob(name)):
            out[str(p.relative_to(run))] = p.read_bytes()
    return out


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)


def fake_lock(run: Path, **record) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    base = {"pid": 1, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00", "task": "train"}
    path = run / rd.LOCK_NAME
    path.write_text(json.dumps({**base, "command": "python -m experiments.train x", **record}))
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
