"""One live run per run directory (runtime/run_lock.py, through runtime/run_dir.py): a second invocation is
refused naming the holder, a stale lock (a dead pid, a reused pid, another host without heartbeat, an earlier
restart of the same SLURM job) is taken over, and only rank zero locks under DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import run_dir as rd
from tests.conftest import REPO, run_cli
from tests.run_dir_fixtures import (
    LONG,
    TINY,
    dead_pid,
    fake_lock,
    files,
    info,
    output,
    start,
    stop,
    training,
    wait_for,
)


@pytest.fixture
def holder():
    """holder(run_dir) -> a live process of this host holding run_dir's lock (as a run would)."""
    procs = []

    def _hold(run: Path) -> subprocess.Popen:
        code = (
            "import sys, time\nfrom runtime.run_dir import RunLock\n"
            "RunLock.acquire(sys.argv[1], 'train', 'python -m experiments.train (test holder)')\n"
            "print('held', flush=True)\ntime.sleep(120)\n"
        )
        p = subprocess.Popen(
            [sys.executable, "-c", code, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield _hold
    for p in procs:
        stop(p)


# ------------------------------------------------------------------------------------------------ 1. the lock
@pytest.mark.slow
def test_two_runs_in_one_directory_the_second_is_refused_naming_the_holder(tmp_path):
    """Case 1: two invocations started together, and a third once the first is training: one runs, the others
    exit 2 with a message naming the holder, and the live run's record and config stay byte for byte."""
    run = tmp_path / "run"
    a, b = start(run, *LONG), start(run, *LONG)
    try:
        wait_for(lambda: a.poll() is not None or b.poll() is not None, "one of the two to be refused")
        refused, live = (a, b) if a.poll() is not None else (b, a)
        assert refused.returncode == 2, output(refused)[-3000:]
        text = output(refused)
        assert f"is in use by another run: pid {live.pid} on {socket.gethostname()}" in text, text[-2000:]
        assert "since 20" in text and "another hydra.run.dir" in text and "Traceback" not in text
        wait_for(lambda: training(run), "the live run to train", procs=(live,))
        kept = files(run, "run_info.json", ".hydra/*")
        assert info(run)["status"] == "running" and info(run)["pid"] == live.pid
        # a third, 12 s apart in the user's report: refused before it writes anything
        res = run_cli("train", *TINY, "trainer.max_epochs=1", "seed=7", f"hydra.run.dir={run}")
        assert res.returncode == 2 and f"pid {live.pid}" in res.stderr, res.stderr[-3000:]
        assert files(run, "run_info.json", ".hydra/*") == kept
        assert live.poll() is None  # undisturbed
        lock = json.loads((run / ".lock").read_text())
        assert (
            lock["pid"] == live.pid
            and lock["host"] == socket.gethostname()
            and "experiments.train" in (lock["command"])
        )
    finally:
        stop(a)
        stop(b)


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path, holder):
    run = tmp_path / "run"
    h = holder(run)
    with pytest.raises(rd.RunDirectoryInUse, match=f"pid {h.pid} on {socket.gethostname()}, running `train`"):
        rd.RunLock.acquire(run, "train", "second")
    stop(h)  # SIGKILL: the lock file stays, its holder is gone
    assert json.loads((run / ".lock").read_text())["pid"] == h.pid
    lock = rd.RunLock.acquire(run, "evaluate", "third")
    try:
        holder_record, why = lock.took_over
        assert holder_record["pid"] == h.pid and f"process {h.pid} is gone" in why
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (run / ".lock").exists()


def test_stale_lock_rules_pid_reuse_other_hosts_and_slurm_restarts(tmp_path):
    run = tmp_path / "run"
    # a pid of this host that is gone, or alive but another process now (its recorded start differs)
    fake_lock(run, pid=dead_pid())
    rd.RunLock.acquire(run, "train", "x").release()
    fake_lock(run, pid=os.getppid(), pid_start_ticks=-5)
    lock = rd.RunLock.acquire(run, "train", "x")
    assert "is gone" in lock.took_over[1]
    lock.release()
    # another host: judged by its heartbeat (the file's mtime)
    path = fake_lock(run, pid=123, host="node-b")
    with pytest.raises(rd.RunDirectoryInUse, match="pid 123 on node-b.*last heartbeat"):
        rd.RunLock.acquire(run, "train", "x")
    os.utime(path, (time.time() - 2 * rd.STALE_AFTER_S,) * 2)
    lock = rd.RunLock.acquire(run, "train", "x")
    assert "no heartbeat from node-b" in lock.took_over[1]
    lock.release()
    # SLURM: restart 1 of job 4242 may enter what restart 0 left on another node, however fresh; job 7 may not
    job = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "t",
        "SLURM_CLUSTER_NAME": "c",
        "SLURM_RESTART_COUNT": "1",
    }
    sub = {"cluster": "c", "job": "4242", "restart": 0}
    fake_lock(run, pid=123, host="node-b", submission=sub)
    lock = rd.RunLock.acquire(run, "train", "x", env=job)
    assert "restart 0 of SLURM job 4242" in lock.took_over[1]
    assert json.loads((run / ".lock").read_text())["submission"] == {**sub, "restart": 1}
    lock.release()
    fake_lock(run, pid=123, host="node-b", submission=sub)
    with pytest.raises(rd.RunDirectoryInUse):
        rd.RunLock.acquire(run, "train", "x", env={**job, "SLURM_JOB_ID": "7"})
    (run / ".lock").unlink()
    # the same process may take it again (a test or a notebook that never released it)
    first = rd.RunLock.acquire(run, "train", "x")
    second = rd.RunLock.acquire(run, "train", "y")
    assert first.fd is None and second.took_over is None
    second.release()


def test_only_rank_zero_takes_the_lock(tmp_path, holder, compose_cfg, monkeypatch):
    """Under DDP every rank runs the entry point in the same directory; ranks > 0 neither lock nor write."""
    from pytorch_lightning.utilities import rank_zero_only

    from runtime.run import Run

    run = tmp_path / "run"
    h = holder(run)  # rank zero of this invocation, say
    cfg = compose_cfg("train", ["experiment=vae_mnist", "logger=none"], run_dir=run)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    r = Run(cfg, "train")
    assert r.lock is None and not (run / "run_info.json").exists()
    assert json.loads((run / ".lock").read_text())["pid"] == h.pid
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with pytest.raises(rd.RunDirectoryInUse):
        Run(cfg, "train")
