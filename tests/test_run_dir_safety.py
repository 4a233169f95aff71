"""Run directories that cannot be corrupted and statuses that tell the truth (runtime/run_dir.py): a
completed run's record kept through failed or idle commands, true statuses for Ctrl-C, SIGTERM and SIGKILL,
CSV rows kept across resumes, temporary files of killed writes swept (the lock: tests/test_run_dir_lock.py).

The cases about processes run real `python -m experiments.train` processes and signal them; the rules
themselves are checked directly."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sys
import time

import pytest
import torch

from runtime import run_dir as rd
from runtime.checkpoints import sweep_temporary_files
from runtime.reporting import find_runs
from tests.conftest import run_cli
from tests.run_dir_fixtures import (
    ENV,
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
