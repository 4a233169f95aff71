"""SLURM requeue without a cluster: the job's environment is faked (SLURM_* variables, no `scontrol` on
PATH, so the requeue itself fails and the invocation is recorded `interrupted`); the signal comes from a test
callback. The same paths under a real slurmctld: tests/test_slurm_cluster.py (-m slurm)."""

import json
import os
import signal

import pytest
import torch

from runtime import run_dir as rd
from runtime import slurm
from tests.conftest import REPO, run_cli, state_dict_hash

SMALL = [
    "experiment=vae_mnist",
    "trainer.limit_train_batches=10",
    "model.nll_samples=8",
    "model.image_every_n_epochs=0",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "logger=csv",
]
JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "suite-train-cpu",
    "SLURM_CLUSTER_NAME": "fake",
    "SLURM_NTASKS": "1",
    "SLURM_NNODES": "1",
    "SLURM_CPUS_PER_TASK": "1",
    "PYTHONPATH": str(REPO),  # tests.helpers.SignalAt
}


def _signal_at(marker, **how):
    return [
        "+callbacks.signal_at._target_=tests.helpers.SignalAt",
        f"+callbacks.signal_at.marker={marker}",
        *(f"+callbacks.signal_at.{k}={v}" for k, v in how.items()),
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    # at the job's thread count (the suite sets torch's threads to SLURM_CPUS_PER_TASK in a job): float sums
    # may depend on it (on an AVX-512 Xeon this run's weights differed in the last bits at 1 and 2 threads),
    # and bit-for-bit resume is promised at equal hardware and threads
    res = run_cli("train", *SMALL, f"hydra.run.dir={run}", env={"OMP_NUM_THREADS": JOB["SLURM_CPUS_PER_TASK"]})
    assert res.returncode == 0, res.stderr[-3000:]
    return run


@pytest.mark.parametrize(
    "how",
    [{"step": 15}, {"step": 20}, {"hook": "on_fit_start"}, {"hook": "on_train_end"},
     {"step": 15, "signal": "SIGTERM"}],
    ids=["mid-epoch", "last-batch-of-an-epoch", "start-up", "between-fit-and-test", "sigterm-mid-epoch"],
)
def test_requeue_signal_checkpoints_and_the_restart_continues_bit_for_bit(tmp_path, straight, how):
    run = tmp_path / "run"
    args = [*SMALL, f"hydra.run.dir={run}", *_signal_at(tmp_path / "signalled", **how)]
    first = run_cli("train", *args, env=JOB)
    info = json.loads((run / "run_info.json").read_text())
    sigterm = how.get("signal") == "SIGTERM"
    if sigterm:  # scancel, `scontrol requeue`, preemption: SLURM decides; no squeue here to ask
        assert first.returncode == 143, first.stderr[-3000:]
        assert info["status"] == "terminated" and info["requeue"]["signal"] == "SIGTERM"
    else:
        assert first.returncode == 1, first.stderr[-3000:]  # no scontrol here: the requeue itself failed...
        assert info["status"] == "interrupted" and info["requeue"]["signal"] == "SIGUSR1"
        assert "scontrol requeue 4242" in info["requeue"]["error"]
    assert info["submission"] == {"cluster": "fake", "job": "4242", "restart": 0}
    saved = run / "checkpoints" / "requeue.ckpt"
    if "step" in how:  # ...but the state at the batch boundary was saved
        assert info["requeue"]["checkpoint"] == str(saved)
        ckpt = torch.load(saved, map_location="cpu", weights_only=True)
        # 10 batches per epoch: step 15 is mid-epoch 1; step 20 is its last batch, where validation follows,
        # so the requeue waits for the first batch of epoch 2 (a checkpoint there did not resume bit-exactly)
        assert (ckpt["global_step"], ckpt["epoch"]) == {15: (15, 1), 20: (21, 2)}[how["step"]]
        assert len(ckpt["callbacks"]["RNGStateCheckpoint"]["ranks"]) == 1
    else:
        assert info["requeue"]["checkpoint"] is None and not saved.exists()

    again = run_cli("train", *args, env={**JOB, "SLURM_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed" and info["slurm"]["SLURM_RESTART_COUNT"] == "1"
    prev = info["previous_invocations"][-1]
    if sigterm:  # the restart proves SLURM requeued it
        assert prev["status"] == "requeued" and prev["status_recorded"] == "terminated"
    else:
        assert prev["status"] == "interrupted"
    if "step" in how:
        assert info["resumed_from"] == str(saved)
    assert "not resumable" not in again.stderr
    assert state_dict_hash(run / "checkpoints" / "last.ckpt") == state_dict_hash(
        straight / "checkpoints" / "last.ckpt"
    )
    assert json.loads((run / "metrics.json").read_text())["test/elbo"] == pytest.approx(
        json.loads((straight / "metrics.json").read_text())["test/elbo"], abs=0
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch002.ckpt", "last.ckpt"]


def test_a_new_submission_may_not_take_over_another_jobs_run_directory(tmp_path, straight):
    run = tmp_path / "run"
    res = run_cli("train", *SMALL, "trainer.max_epochs=1", f"hydra.run.dir={run}", env=JOB)
    assert res.returncode == 0, res.stderr[-3000:]
    before = (run / "run_info.json").read_text()
    ckpt = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    # the cluster was reset and job ids start again: a new job 4242 (restart 0) with another seed
    res = run_cli("train", *SMALL, "trainer.max_epochs=1", "seed=5", f"hydra.run.dir={run}", env=JOB)
    assert res.returncode != 0
    assert (
        "already holds a run of job 4242 of cluster 'fake'" in res.stderr and "ckpt_path=last" in res.stderr
    )
    assert (run / "run_info.json").read_text() == before  # nothing of the old run was touched
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt
    # a restart of another job is refused too
    res = run_cli(
        "train", *SMALL, f"hydra.run.dir={run}", env={**JOB, "SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}
    )
    assert res.returncode != 0 and "refusing to resume another submission's run" in res.stderr
    assert (run / "run_info.json").read_text() == before


def test_check_submission_rules():
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NAME": "t", "SLURM_CLUSTER_NAME": "c"}
    mine = {"submission": {"cluster": "c", "job": "9", "restart": 0}, "run_dir": "r"}
    slurm.check_submission(None, explicit_resume=False, env=env)  # a new directory
    slurm.check_submission(mine, explicit_resume=False, env={**env, "SLURM_RESTART_COUNT": "1"})  # requeue
    slurm.check_submission(mine, explicit_resume=True, env=env)  # continue a run on purpose
    slurm.check_submission({"status": "completed"}, explicit_resume=False, env=env)  # a local run's directory
    slurm.check_submission(mine, explicit_resume=False, env={})  # not under SLURM: not checked
    with pytest.raises(slurm.SubmissionMismatchError, match="new submission"):
        slurm.check_submission(mine, explicit_resume=False, env=env)
    with pytest.raises(slurm.SubmissionMismatchError, match="restart 1 of job 9 of cluster 'other'"):
        slurm.check_submission(
            mine,
            explicit_resume=False,
            env={**env, "SLURM_CLUSTER_NAME": "other", "SLURM_RESTART_COUNT": "1"},
        )
    # records written before submissions were recorded: the job id in `slurm` counts
    old = {"slurm": {"SLURM_JOB_ID": "9"}, "run_dir": "r"}
    with pytest.raises(slurm.SubmissionMismatchError):
        slurm.check_submission(
            old, explicit_resume=False, env={k: v for k, v in env.items() if "CLUSTER" not in k}
        )


def test_superseded_requeue_and_hpc_checkpoints_are_removed(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    old = [ck / "requeue.ckpt", tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "hpc_ckpt_2.ckpt"]
    for p in old:
        p.write_bytes(b"x")
    os.utime(ck / "requeue.ckpt", ns=(1, 1))
    assert slurm.remove_superseded(tmp_path) == []  # no last.ckpt: nothing supersedes them
    (ck / "last.ckpt").write_bytes(b"y")
    os.utime(tmp_path / "hpc_ckpt_2.ckpt", ns=(2**62, 2**62))  # newer than last.ckpt: kept
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "t", "SLURM_RESTART_COUNT": "1"}
    assert slurm.requeue_resume_path(tmp_path, env) == tmp_path / "hpc_ckpt_2.ckpt"  # the newest
    assert sorted(slurm.remove_superseded(tmp_path)) == sorted(old[:2])
    assert (tmp_path / "hpc_ckpt_2.ckpt").exists() and (ck / "last.ckpt").exists()
    assert slurm.requeue_resume_path(tmp_path, {**env, "SLURM_RESTART_COUNT": "0"}) is None  # a fresh job


def test_threads_and_record_follow_the_allocation(monkeypatch):
    env = {
        "SLURM_JOB_ID": "3",
        "SLURM_JOB_NAME": "t",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_RESTART_COUNT": "2",
        "SLURM_CLUSTER_NAME": "c",
        "SLURM_JOB_NUM_NODES": "1",
    }
    before = torch.get_num_threads()
    try:
        assert slurm.threads_from_allocation(env) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert slurm.threads_from_allocation({}) is None
    info = slurm.slurm_info(env)
    assert (
        info["SLURM_RESTART_COUNT"] == "2"
        and info["SLURM_CLUSTER_NAME"] == "c"
        and info["SLURM_JOB_NUM_NODES"] == "1"
    )
    assert slurm.job_id({**env, "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3"}) == "10_3"
    # under a launcher, argv is the launcher's bootstrap: the record holds a command that reruns the job
    monkeypatch.setattr("sys.argv", ["/x/submitit/core/_submit.py", "/tmp/folder"])
    assert (
        rd.command_line("train", ["experiment=vae_mnist", "seed=1"])
        == "python -m experiments.train experiment=vae_mnist seed=1"
    )


def test_sigusr1_outside_training_does_not_kill_a_slurm_job():
    import subprocess
    import sys

    code = "import os, signal, experiments, runtime; os.kill(os.getpid(), signal.SIGUSR1); print(runtime.EARLY_SIGNALS)"
    res = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **JOB}, capture_output=True, text=True, cwd=REPO
    )
    assert res.returncode == 0 and res.stdout.strip() == "['SIGUSR1']"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
    )
    assert res.returncode == -signal.SIGUSR1  # outside SLURM nothing is changed
