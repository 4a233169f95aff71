"""The cluster path under a real SLURM scheduler: a one-node cluster (munged, MariaDB, slurmdbd, slurmctld,
slurmd) brought up on localhost by tests/slurm/cluster_up.sh for this module and stopped by cluster_down.sh.
Run with `-m slurm` (as root; .ci/run runs them as their own step). Skipped, with the reason, where the
cluster cannot start (not root, packages not installable).

Every job trains deterministically on CPU, so "continues the straight run" is checked bit for bit: the
weights of the requeued run's last.ckpt against those of the same job run without interruption."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ORIGINAL_PATH, REPO, state_dict_hash

pytestmark = pytest.mark.slurm

# ~6 s of training per epoch on one thread: long enough to signal a job mid-epoch once last.ckpt exists
JOB_ARGS = [
    "experiment=vae_mnist",
    "model.nll_samples=8",
    "model.image_every_n_epochs=0",
    "trainer.max_epochs=4",
    "trainer.deterministic=true",
    "callbacks.progress_bar.refresh_rate=0",
]
CPU_SCRIPT = "configs/slurm/train_cpu.sbatch"


@pytest.fixture(scope="module")
def cluster():
    if os.name != "posix" or os.geteuid() != 0:
        if os.environ.get("SUITE_REQUIRE_SLURM") == "1":
            pytest.fail("SUITE_REQUIRE_SLURM=1 but not root: the local SLURM cluster needs root")
        pytest.skip("the local SLURM cluster needs root (daemons run as root without systemd)")
    where = Path(tempfile.mkdtemp(prefix="sc.", dir="/tmp"))  # short: slurmd's unix sockets live under it
    where.chmod(0o755)  # munged wants its socket's folders searchable by all
    up = subprocess.run(
        ["bash", str(REPO / "tests/slurm/cluster_up.sh"), str(where / "c")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PATH": ORIGINAL_PATH},
    )
    if up.returncode != 0:
        subprocess.run(["bash", str(REPO / "tests/slurm/cluster_down.sh"), str(where / "c")], timeout=120)
        why = f"the local SLURM cluster did not start: {(up.stderr or up.stdout).strip()[-1500:]}"
        if os.environ.get("SUITE_REQUIRE_SLURM") == "1":  # .ci/run: the slurm step must really run
            pytest.fail(why)
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["PATH"] = ORIGINAL_PATH
    for line in (where / "c" / "env").read_text().splitlines():
        m = re.match(r"\s*export\s+(\w+)=(.*)", line)
        if m:
            value = m.group(2).strip().strip("'\"")
            env[m.group(1)] = value.replace("$PATH", env["PATH"]).replace("${PATH}", env["PATH"])
    env.update(WANDB_MODE="offline", SUITE_PYTHON=sys.executable, PYTHONPATH=str(REPO))
    print(up.stdout.strip().splitlines()[-1])
    try:
        yield {"env": env, "dir": where / "c"}
    finally:
        subprocess.run(["bash", str(REPO / "tests/slurm/cluster_down.sh"), str(where / "c")], timeout=120)
        shutil.rmtree(where, ignore_errors=True)


def sh(cluster, *cmd, check=True, timeout=120) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, env=cluster["env"], cwd=REPO, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}{res.stdout}")
    return res.stdout


def submit(cluster, logs: Path, *sbatch_opts: str, args=JOB_ARGS) -> str:
    logs.mkdir(parents=True, exist_ok=True)  # SLURM opens --output before the script runs
    out = sh(
        cluster,
        "sbatch",
        "--parsable",
        f"--export=ALL,SUITE_LOG_DIR={logs}",
        f"--output={logs}/%x-%j.out",
        *sbatch_opts,
        CPU_SCRIPT,
        *args,
    )
    return out.strip().split(";")[0]


def records(cluster, job: str) -> list[str]:
    """The job's accounting records, oldest first (a requeued job has one REQUEUED record per requeue)."""
    out = sh(cluster, "sacct", "-j", job, "-D", "-X", "-n", "-P", "-o", "State", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_done(cluster, job: str, logs: Path, timeout: float = 420) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        recs = records(cluster, job)
        if recs and recs[-1] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return recs
        time.sleep(2)
    raise AssertionError(f"job {job} did not finish in {timeout} s: {records(cluster, job)}\n{job_log(logs)}")


def job_log(logs: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.out")))


def run_dir_of(logs: Path, job: str) -> Path:
    found = [d for d in (logs / "train" / "slurm").iterdir() if f"_{job}_" in d.name]
    assert len(found) == 1, f"one run directory for job {job}: {found}"
    return found[0]


def wait_for(path: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists():
        time.sleep(0.5)
    assert path.exists(), f"{path} did not appear in {timeout} s"


def check_requeued_run(run: Path, straight: Path, n_requeues: int | None = 1) -> dict:
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed"
    prev = info["previous_invocations"]
    n_requeues = n_requeues or len(prev)
    assert [p["status"] for p in prev] == ["requeued"] * n_requeues
    assert info["slurm"]["SLURM_RESTART_COUNT"] == str(n_requeues)
    assert info["submission"]["job"] == prev[0]["submission"]["job"]
    assert info["wandb"]["id"] == prev[0]["wandb"]["id"], "the requeued job continues the same W&B run"
    assert info["resumed_from"] in (
        str(run / "checkpoints" / "requeue.ckpt"),
        str(run / "checkpoints" / "last.ckpt"),
    )
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == sorted(p.name for p in (straight / "checkpoints").iterdir()) and len(ckpts) == 2
    assert not list(run.glob("hpc_ckpt_*.ckpt"))
    assert state_dict_hash(run / "checkpoints" / "last.ckpt") == state_dict_hash(
        straight / "checkpoints" / "last.ckpt"
    ), "the requeued run must end with the weights of the uninterrupted one"
    m, s = json.loads((run / "metrics.json").read_text()), json.loads((straight / "metrics.json").read_text())
    assert m["test/elbo"] == s["test/elbo"]
    return info


def test_cpu_job_requeued_by_usr1_continues_the_straight_run_bit_for_bit(cluster, tmp_path):
    logs = tmp_path / "logs"
    straight = submit(cluster, logs, "--cpus-per-task=1")
    job = submit(cluster, logs, "--cpus-per-task=1")  # both fit on the node at once
    wait_for_running = time.time()
    run_last = None
    while run_last is None and time.time() - wait_for_running < 240:
        dirs = (
            list((logs / "train" / "slurm").glob(f"*_{job}_*")) if (logs / "train" / "slurm").is_dir() else []
        )
        run_last = dirs[0] / "checkpoints" / "last.ckpt" if dirs else None
        time.sleep(0.5)
    assert run_last is not None, job_log(logs)
    wait_for(run_last)
    sh(cluster, "scancel", "--signal=USR1", job)
    t_signal = time.time()
    assert wait_done(cluster, straight, logs) == ["COMPLETED"]
    assert wait_done(cluster, job, logs) == ["REQUEUED", "COMPLETED"], job_log(logs)
    info = check_requeued_run(run_dir_of(logs, job), run_dir_of(logs, straight))
    assert info["requeue"] is None if "requeue" in info else True
    first = info["previous_invocations"][0]
    assert first["requeue"]["signal"] == "SIGUSR1" and first["requeue"]["error"] is None
    assert info["device"]["torch_threads"] == 1  # --cpus-per-task=1, not every core of the node
    print(f"USR1 -> restarted and completed in {time.time() - t_signal:.0f} s")


def test_two_rank_ddp_job_requeued_by_usr1_continues_bit_for_bit(cluster, tmp_path):
    logs = tmp_path / "logs"
    opts = ("--ntasks-per-node=2", "--cpus-per-task=1")
    straight = submit(cluster, logs, *opts)
    assert wait_done(cluster, straight, logs) == ["COMPLETED"], job_log(logs)
    job = submit(cluster, logs, *opts)
    deadline = time.time() + 240
    while time.time() < deadline and not list(
        (logs / "train" / "slurm").glob(f"*_{job}_*/checkpoints/last.ckpt")
    ):
        time.sleep(0.5)
    sh(cluster, "scancel", "--signal=USR1", job)
    assert wait_done(cluster, job, logs) == ["REQUEUED", "COMPLETED"], job_log(logs)
    info = check_requeued_run(run_dir_of(logs, job), run_dir_of(logs, straight))
    assert info["device"]["world_size"] == 2 and info["device"]["strategy"] == "DDPStrategy"


def test_scontrol_requeue_resumes_from_the_latest_state_with_one_last_ckpt(cluster, tmp_path):
    logs = tmp_path / "logs"
    straight = submit(cluster, logs, "--cpus-per-task=1")
    job = submit(cluster, logs, "--cpus-per-task=1")
    deadline = time.time() + 240
    while time.time() < deadline and not list(
        (logs / "train" / "slurm").glob(f"*_{job}_*/checkpoints/last.ckpt")
    ):
        time.sleep(0.5)
    sh(cluster, "scontrol", "requeue", job)  # SIGTERM, then SLURM runs the job again
    assert wait_done(cluster, straight, logs) == ["COMPLETED"]
    assert wait_done(cluster, job, logs) == ["REQUEUED", "COMPLETED"], job_log(logs)
    info = check_requeued_run(run_dir_of(logs, job), run_dir_of(logs, straight))
    assert info["previous_invocations"][0]["requeue"]["signal"] == "SIGTERM"


def test_time_limited_job_is_requeued_before_its_limit_and_continues_bit_for_bit(cluster, tmp_path):
    """`--time=2 --signal=USR1@80`: SLURM sends SIGUSR1 80-140 s before the limit (it checks limits about
    once a minute), i.e. 0-40 s into each run, so a job longer than that is requeued at least once; each
    restart starts a new time limit. 50 epochs: ~55 s on an idle 2-core machine (25 epochs took 28 s and
    finished before the signal), longer under load (more requeues, each resuming mid-epoch)."""
    logs = tmp_path / "logs"
    args = [a if not a.startswith("trainer.max_epochs") else "trainer.max_epochs=50" for a in JOB_ARGS]
    straight = submit(cluster, logs, "--cpus-per-task=1", args=args)
    job = submit(cluster, logs, "--cpus-per-task=1", "--time=2", "--signal=USR1@80", args=args)
    assert wait_done(cluster, straight, logs, timeout=600) == ["COMPLETED"], job_log(logs)
    recs = wait_done(cluster, job, logs, timeout=900)
    assert recs[-1] == "COMPLETED" and set(recs[:-1]) == {"REQUEUED"} and len(recs) >= 2, (
        recs,
        job_log(logs),
    )
    check_requeued_run(run_dir_of(logs, job), run_dir_of(logs, straight), n_requeues=None)
    print(f"time-limited job: {len(recs) - 1} requeue(s)")


def test_gpu_script_asks_for_gpus_and_the_cpu_script_does_not(cluster):
    res = subprocess.run(
        ["sbatch", "--test-only", "configs/slurm/train.sbatch"],
        capture_output=True,
        text=True,
        env=cluster["env"],
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode != 0 and "gres" in res.stderr.lower()  # this node has no GPU
    res = subprocess.run(
        ["sbatch", "--test-only", CPU_SCRIPT],
        capture_output=True,
        text=True,
        env=cluster["env"],
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


def test_submitit_sweep_waits_for_a_requeued_task_and_reports_it_completed(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "-m",
            "hydra/launcher=slurm_cpu",
            *JOB_ARGS,
            "trainer=cpu",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=30",
        ],
        env=cluster["env"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(sweep / "0" / "checkpoints" / "last.ckpt", timeout=300)
        task = json.loads((sweep / "0" / "run_info.json").read_text())["submission"]["job"]
        sh(cluster, "scancel", "--signal=USR1", task)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    summary = (sweep / "sweep_summary.md").read_text()
    assert summary.count("| completed |") == 2 and "failed" not in summary, summary
    info = json.loads((sweep / "0" / "run_info.json").read_text())
    assert info["status"] == "completed" and [p["status"] for p in info["previous_invocations"]] == [
        "requeued"
    ]
    assert info["command"].startswith("python -m experiments.train ") and "seed=0" in info["command"]
    assert wait_done(cluster, task, tmp_path, timeout=60) == [
        "REQUEUED",
        "COMPLETED",
    ]  # accounting lags a little


def test_launcher_refuses_requests_no_node_can_hold(cluster, tmp_path):
    base = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        *JOB_ARGS,
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 's'}",
    ]

    def sweep(*overrides):
        res = subprocess.run(
            [*base, *overrides], capture_output=True, text=True, env=cluster["env"], cwd=tmp_path, timeout=120
        )
        return res.returncode, res.stderr + res.stdout

    rc, out = sweep("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=1")
    assert rc == 2 and "has GPUs" in out and "slurm_cpu" in out
    rc, out = sweep("hydra/launcher=slurm_cpu", "trainer=cpu", "hydra.launcher.cpus_per_task=64")
    assert rc == 2 and "pending forever" in out
    assert not (tmp_path / "s").exists()
