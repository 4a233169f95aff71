"""Run directories that cannot be corrupted and statuses that tell the truth (experiments/run_dir.py):
one live run per directory (`.lock`), a completed run's record kept through failed or idle commands, true
statuses for Ctrl-C, SIGTERM and SIGKILL, CSV rows kept across resumes, temporary files of killed writes swept.

The cases about processes run real `python -m experiments.train` processes and signal them; the rules
themselves (stale locks, SLURM restarts, DDP ranks) are checked directly."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments import run_dir as rd
from experiments.checkpoints import sweep_temporary_files
from experiments.report import find_runs
from tests.conftest import REPO, run_cli

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


# ------------------------------------------------------------------------------------------------ helpers
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


@pytest.fixture
def holder():
    """holder(run_dir) -> a live process of this host holding run_dir's lock (as a run would)."""
    procs = []

    def _hold(run: Path) -> subprocess.Popen:
        code = (
            "import sys, time\nfrom experiments.run_dir import RunLock\n"
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

    from experiments.common import Run

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


# ------------------------------------------------------------------------------------------------ 2 + 4 + 5
@pytest.mark.slow
def test_a_completed_run_survives_refused_failed_and_idle_commands_and_keeps_its_csv_rows(tmp_path):
    """Case 2: a refused and a failed command leave the completed run's status, metrics.json and .hydra/ as
    they were (the failure is recorded under later_invocations); case 4: resuming it with nothing left to train
    says so and touches nothing; case 5: a resume that trains on appends to csv/metrics.csv."""
    run = tmp_path / "run"
    common = [*TINY, "logger=csv", f"hydra.run.dir={run}"]
    res = run_cli("train", *common, "trainer.max_epochs=1")
    assert res.returncode == 0, res.stderr[-3000:]
    kept = files(run, "run_info.json", "metrics.json", ".hydra/*")
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"} <= set(kept)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert rows and not (run / ".lock").exists()

    res = run_cli("train", *common, "seed=abc")  # refused by the checks
    assert res.returncode == 2 and "seed" in res.stderr
    assert files(run, "run_info.json", "metrics.json", ".hydra/*") == kept

    crash = [
        "+callbacks.crash._target_=tests.helpers.CrashAt",
        "+callbacks.crash.epoch=1",
        "+callbacks.crash.batch=1",
    ]
    res = run_cli("train", *common, "trainer.max_epochs=3", "ckpt_path=last", *crash, env=ENV)
    assert res.returncode == 1 and "simulated crash" in res.stderr, res.stderr[-3000:]
    assert files(run, "metrics.json", ".hydra/*") == {k: v for k, v in kept.items() if k != "run_info.json"}
    after = info(run)
    before = json.loads(kept["run_info.json"])
    assert after["status"] == "completed" and after["started"] == before["started"]
    assert [i["status"] for i in after["later_invocations"]] == ["failed"]
    assert "simulated crash" in after["later_invocations"][0]["error"]
    (found,) = find_runs([run])
    assert found.status == "completed" and found.metrics and found.status_text == "completed (later: failed)"

    idle = files(run, "run_info.json", "metrics.json", ".hydra/*")
    res = run_cli("train", *common, "trainer.max_epochs=1", "ckpt_path=last")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "has nothing left to train (1 epoch(s) of trainer.max_epochs=1)" in res.stdout + res.stderr
    assert "retest=true" in res.stdout + res.stderr
    assert files(run, "run_info.json", "metrics.json", ".hydra/*") == idle

    res = run_cli("train", *common, "trainer.max_epochs=2", "ckpt_path=last")
    assert res.returncode == 0, res.stderr[-3000:]
    final = info(run)
    assert final["status"] == "completed" and "later_invocations" not in final
    assert [i["status"] for i in final["previous_invocations"]] == ["completed", "failed"]
    assert (run / "metrics.json").read_bytes() != kept["metrics.json"]
    assert (run / ".hydra" / "previous" / "0" / "config.yaml").read_bytes() == kept[".hydra/config.yaml"]
    assert "trainer.max_epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()
    merged = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert merged[: len(rows)] == [
        {k: r.get(k, "") for k in merged[0]} for r in rows
    ]  # the first invocation's
    assert {r["epoch"] for r in merged} >= {"0", "1"}


def test_retest_runs_the_test_of_a_completed_run_again(tmp_path, compose_cfg):
    from experiments.train import train

    run = tmp_path / "run"
    args = [*TINY, "logger=none", "trainer.max_epochs=1"]
    first = train(compose_cfg("train", args, run_dir=run))
    kept = files(run, "run_info.json", "metrics.json")
    again = train(compose_cfg("train", [*args, "ckpt_path=last"], run_dir=run))
    assert again == pytest.approx(first)  # the completed run's metrics.json, as they were
    assert files(run, "run_info.json", "metrics.json") == kept  # nothing written
    retested = train(compose_cfg("train", [*args, "ckpt_path=last", "retest=true"], run_dir=run))
    assert {k: v for k, v in retested.items() if k.startswith("test/")} == {
        k: v for k, v in first.items() if k.startswith("test/")
    }  # the seeded test repeats exactly
    assert (
        info(run)["status"] == "completed" and info(run)["previous_invocations"][-1]["status"] == "completed"
    )


# ------------------------------------------------------------------------------------------------ 3. signals
@pytest.mark.parametrize(
    "sig, status, code", [(signal.SIGTERM, "terminated", 143), (signal.SIGINT, "interrupted", 130)]
)
def test_sigterm_and_ctrl_c_during_training_are_recorded_with_their_exit_status(tmp_path, sig, status, code):
    run = tmp_path / "run"
    proc = start(run, *LONG)
    try:
        wait_for(lambda: training(run), "training", procs=(proc,))
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == code, output(proc)[-3000:]
    rec = info(run)
    assert rec["status"] == status and rec["signal"] == signal.Signals(sig).name and rec["exit_code"] == code
    assert "error" not in rec and rec["finished"]
    assert f"recorded as {status} (exit {code})" in output(proc)
    assert not (run / ".lock").exists()
    torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigkill_leaves_a_stale_lock_the_next_run_takes_over_records_killed_and_sweeps_temporaries(tmp_path):
    """Cases 1, 3 and 6: a SIGKILLed run's record says running and its lock stays; the report calls it killed;
    the next invocation takes the lock over, records the invocation as killed, and removes the temporary files
    of interrupted writes (only those: the suite's temporary-name pattern)."""
    run = tmp_path / "run"
    proc = start(run, *LONG)
    try:
        wait_for(lambda: training(run), "training", procs=(proc,))
        partial = run / "checkpoints" / ".last.ckpt.k1ll3d_0.tmp"  # what a SIGKILL during a save leaves
        partial.write_bytes(b"half a checkpoint")
        (run / ".run_info.json.a1b2c3d4.tmp").write_text("{")
        (run / "checkpoints" / "notes.tmp").write_text("mine")  # not a name of the suite: kept
        time.sleep(1.0)  # a live run never loses them
        assert partial.exists()
    finally:
        stop(proc, signal.SIGKILL)
    killed = info(run)
    assert killed["status"] == "running" and killed["pid"] == proc.pid
    assert json.loads((run / ".lock").read_text())["pid"] == proc.pid
    (found,) = find_runs([run])
    assert found.status == "killed"

    done = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] + 1
    resume = [*TINY, f"trainer.max_epochs={done + 1}", "test=false", "logger=none", "ckpt_path=last"]
    res = run_cli("train", *resume, f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    text = res.stdout + res.stderr
    assert f"took over the lock of pid {proc.pid}" in text and f"process {proc.pid} is gone" in text
    assert "Removed 2 temporary file(s)" in text and "checkpoints/.last.ckpt.k1ll3d_0.tmp" in text
    assert not partial.exists() and (run / "checkpoints" / "notes.tmp").read_text() == "mine"
    prev = info(run)["previous_invocations"][-1]
    assert prev["status"] == "killed" and prev["status_recorded"] == "running" and prev["pid"] == proc.pid
    assert info(run)["status"] == "completed" and not (run / ".lock").exists()


def test_stop_reasons():
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    assert rd.stop_reason(SIGTERMException()) == ("terminated", "SIGTERM")
    assert rd.stop_reason(rd.SigtermStop()) == ("terminated", "SIGTERM")
    try:  # Lightning's handling of Ctrl-C: sys.exit(1) inside `except KeyboardInterrupt`
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as err:
        assert rd.stop_reason(err) == ("interrupted", "SIGINT")
    assert rd.stop_reason(RuntimeError("bug")) is None and rd.stop_reason(SystemExit(2)) is None


def test_report_reads_killed_and_later_invocations(tmp_path):
    runs = tmp_path / "runs"
    gone = {"status": "running", "pid": dead_pid(), "host": socket.gethostname(), "experiment": "vae_mnist"}
    (runs / "killed").mkdir(parents=True)
    (runs / "killed" / "run_info.json").write_text(json.dumps(gone))
    live = {**gone, "pid": os.getpid()}
    (runs / "live").mkdir()
    (runs / "live" / "run_info.json").write_text(json.dumps(live))
    fake_lock(runs / "live", pid=os.getpid())
    old = {"status": "running", "experiment": "vae_mnist"}  # written before pids were recorded: cannot tell
    (runs / "old").mkdir()
    (runs / "old" / "run_info.json").write_text(json.dumps(old))
    status = {r.path.name: r.status for r in find_runs([runs])}
    assert status == {"killed": "killed", "live": "running", "old": "running"}


def test_file_record_keeps_the_completed_run_on_top_until_a_later_invocation_completes():
    done = {"status": "completed", "started": "t0", "task": "train"}
    history = rd.invocation_history({**done, "later_invocations": [{"status": "failed", "started": "t1"}]})
    assert [h["status"] for h in history] == ["completed", "failed"]
    keep = rd.completed_index(done)
    current = {"status": "running", "started": "t2", "previous_invocations": history}
    on_disk = rd.file_record(current, keep)
    assert on_disk["status"] == "completed" and on_disk["started"] == "t0"
    assert [i["started"] for i in on_disk["later_invocations"]] == ["t1", "t2"]
    assert rd.invocation_history(on_disk)[-1]["started"] == "t2"
    assert rd.file_record(current, None) is current
    assert rd.mark_killed(history, "x") == [] and rd.mark_killed([current], "x")[0]["status"] == "killed"


# ------------------------------------------------------------------------------------------------ 5 + 6 direct
def test_csv_logger_appends_across_invocations(tmp_path):
    first = rd.ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.save()
    second = rd.ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    second.log_metrics({"train/loss": 0.5}, step=1)
    second.log_metrics({"val/elbo": 3.0}, step=1)  # a key the first invocation did not log
    second.save()
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [(r["step"], r["train/loss"], r["val/elbo"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", ""),
        ("1", "", "3.0"),
    ]


def test_sweep_removes_only_the_suites_temporary_files(tmp_path):
    run = tmp_path / "run"
    ours = [
        run / ".run_info.json.ab12cd_3.tmp",
        run / "checkpoints" / ".last.ckpt.x9y8z7w6.tmp",
        run / "checkpoints" / ".last.ckpt.12345.tmp",  # replace_with_link's
        run / "images" / "val" / ".samples.png.qwertyui.tmp",
    ]
    theirs = [
        run / "checkpoints" / "last.ckpt",
        run / "checkpoints" / "notes.tmp",
        run / "checkpoints" / ".x.tmp",
        run / "wandb" / "offline-run-1" / ".state.abcdefgh.tmp",  # W&B's folder: not ours
        run / "nested" / ".a.json.abcdefgh.tmp",  # another run directory inside this one
        run / "nested" / "run_info.json",
    ]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert sweep_temporary_files(run) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)
