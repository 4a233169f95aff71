"""Scaling and comparing: DDP on CPU, multiruns (basic and submitit launchers), SLURM checks, resume after a
kill, and the report's tables and refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from experiments.report import ReportError, build_report
from experiments.train import check_distributed
from runtime.slurm import check_allocation
from tests.conftest import REPO, run_cli

SMALL = [
    "experiment=vae_mnist",
    "trainer.limit_train_batches=6",
    "model.nll_samples=8",
    "model.image_every_n_epochs=0",
]


def test_ddp_cpu_one_run_directory_and_single_process_metrics(tmp_path, compose_cfg):
    """Tolerance: 2 % on the test negative ELBO. Both runs see the same global batches (one process with 64,
    two with 32 each, the same epoch-seeded order); they differ only in the per-rank noise streams and the
    order of floating-point reductions (measured: 0.7 % after 2 full epochs)."""
    logs = tmp_path / "logs"
    full = [
        "experiment=vae_mnist",
        "model.nll_samples=16",
        "model.image_every_n_epochs=0",
        "trainer.max_epochs=2",
    ]
    res = run_cli("train", *full, "trainer=ddp_cpu", "data.batch_size=32", env={"SUITE_LOG_DIR": str(logs)})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((logs / "train" / "vae_mnist").iterdir())
    assert len(runs) == 1, f"one run directory per job, got {runs}"
    run_dir = runs[0]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["device"]["world_size"] == 2 and info["device"]["strategy"] == "DDPStrategy"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, "one W&B run per job"
    ddp = json.loads((run_dir / "metrics.json").read_text())

    from experiments.train import train

    single = train(
        compose_cfg("train", [*full, "data.batch_size=64", "logger=none"], run_dir=tmp_path / "single")
    )
    assert abs(ddp["test/elbo"] - single["test/elbo"]) <= 0.02 * single["test/elbo"]
    assert ddp["test/nll"] <= ddp["test/elbo"]


def test_basic_multirun_failed_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(
        "train",
        "-m",
        *SMALL,
        "trainer.max_epochs=1",
        "logger=none",
        "data.val_size=100,99999,200",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 1  # the summary exits non-zero when a job failed...
    status = {
        d.name: json.loads((d / "run_info.json").read_text())["status"] for d in sweep.iterdir() if d.is_dir()
    }
    assert status == {"0": "completed", "1": "failed", "2": "completed"}  # ...but only after every job ran
    summary = (sweep / "sweep_summary.md").read_text()
    assert "failed" in summary and "leaves no training images" in summary


def test_submitit_local_multirun_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        *SMALL,
        "trainer.max_epochs=1",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        info = json.loads((sweep / job / "run_info.json").read_text())
        assert info["status"] == "completed" and info["sweep"]["job_num"] == int(job)
        assert info["wandb"]["group"] == f"vae_mnist/{sweep.name}"  # one W&B group per sweep
    report = build_report([sweep], tmp_path / "report", REPO / "configs" / "paper")
    text = report.read_text()
    assert "(n=2 seeds)" in text and "| (as configured) | 0,1 | 2 |" in text
    # the embedded MNIST subset: real images, but a subset (not synthetic)
    assert "not comparable with published numbers" in text and "| real subset |" in text
    summary = (sweep / "sweep_summary.md").read_text()
    assert "| 0 | seed=0 | 0 | completed |" in summary and "| 1 | seed=1 | 1 | completed |" in summary


def test_slurm_launcher_without_slurm_says_so(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli("train", "-m", "hydra/launcher=slurm", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2
    assert "sbatch" in res.stderr + res.stdout and "hydra/launcher=submitit_local" in res.stderr + res.stdout
    assert not sweep.exists()


def test_slurm_allocation_checks():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4"}
    check_allocation(4, 2, env)  # matches
    with pytest.raises(ValueError, match="trainer.devices=2 but the job has 4 task"):
        check_allocation(2, 2, env)
    with pytest.raises(ValueError, match="trainer.num_nodes=1 but the job has 2 node"):
        check_allocation(4, 1, env)
    check_allocation(
        2, 1, {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "bash"}
    )  # interactive allocation: not checked
    check_allocation(8, 3, {})  # not under SLURM


def test_ddp_in_a_local_multirun_is_refused(compose_cfg):
    cfg = compose_cfg("train", ["experiment=vae_mnist", "trainer=ddp_cpu"])
    with pytest.raises(ValueError, match="hydra/launcher=slurm"):
        check_distributed(cfg, multirun=True)
    check_distributed(cfg, multirun=False)


def test_resume_after_kill_continues_from_last_and_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SMALL, "trainer.max_epochs=400", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not (
            last.exists() and proc.poll() is None and _epochs_done(last) >= 2
        ):
            time.sleep(0.5)
        assert last.exists(), "no checkpoint written before the deadline"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = json.loads((run_dir / "run_info.json").read_text())
    assert killed["status"] == "running" and killed["wandb"]["id"]
    epoch_at_kill = _epochs_done(last)
    res = run_cli(
        "train",
        *[a for a in args if not a.startswith("trainer.max_epochs")],
        f"trainer.max_epochs={epoch_at_kill + 1}",
        "ckpt_path=last",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "completed" and info["resumed_from"] == str(last)
    assert info["wandb"]["id"] == killed["wandb"]["id"]
    killed_record = info["previous_invocations"][-1]  # the killed invocation, kept, and now called so
    assert killed_record["status"] == "killed" and killed_record["status_recorded"] == "running"
    assert _epochs_done(last) == epoch_at_kill + 1


def _epochs_done(ckpt) -> int:
    import torch

    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] + 1
    except Exception:  # noqa: BLE001 - being written right now
        return 0


def _fake_run(root, name, experiment, metrics, protocol, overrides, seed=0, comparable=False):
    d = root / name
    d.mkdir(parents=True)
    (d / "run_info.json").write_text(
        json.dumps(
            {
                "experiment": experiment,
                "status": "completed",
                "seed": seed,
                "overrides": overrides,
                "git": {"commit": "abc", "dirty": False},
            }
        )
    )
    (d / "metrics.json").write_text(
        json.dumps(
            {
                **metrics,
                "protocol": protocol,
                "data": {"label": "LOL eval15", "comparable_with_papers": comparable},
            }
        )
    )


def test_report_tables_deltas_and_paper(tmp_path):
    runs = tmp_path / "runs"
    proto = {"space": "RGB [0,1]", "ssim": "gaussian 11/1.5"}
    for seed, (a, b) in enumerate([(20.0, 19.0), (22.0, 19.5)]):
        _fake_run(
            runs,
            f"base{seed}",
            "nerco_lol",
            {"test/psnr": a},
            proto,
            [f"seed={seed}"],
            seed=seed,
            comparable=True,
        )
        _fake_run(
            runs,
            f"abl{seed}",
            "nerco_lol",
            {"test/psnr": b},
            proto,
            [f"seed={seed}", "model.use_nrn=false"],
            seed=seed,
            comparable=True,
        )
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "nerco.yaml").write_text(
        yaml.safe_dump(
            {
                "experiment": "nerco_lol",
                "source": "a paper, Table 1",
                "metrics": {"test/psnr": 19.738},
                "protocol": "RGB",
            }
        )
    )
    text = build_report([runs], tmp_path / "out", paper).read_text()
    assert "21 ± 1.4 (n=2 seeds)" in text  # mean ± sample std of 20 and 22
    assert "| model.use_nrn=false | -1.75 ± 1 |" in text  # 19.25 - 21; se = sqrt(2/2 + 0.125/2)
    assert "| test/psnr | 21 ± 1.4 (n=2 seeds) | 19.738 | a paper, Table 1 |" in text
    assert (tmp_path / "out" / "plots" / "nerco_lol__test_psnr.png").is_file()


def test_report_refuses_mixed_protocols_and_empty_dirs(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "a", "nerco_lol", {"test/psnr": 20.0}, {"space": "RGB"}, ["seed=0"])
    _fake_run(runs, "b", "nerco_lol", {"test/psnr": 21.0}, {"space": "Y"}, ["seed=1"], seed=1)
    with pytest.raises(ReportError, match="different protocols.*space: .*RGB.* vs .*Y"):
        build_report([runs], tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()  # nothing half-written
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run directories"):
        build_report([tmp_path / "empty"], tmp_path / "out2", tmp_path)


def test_report_allows_fields_the_sweep_varies(tmp_path):
    runs = tmp_path / "runs"
    for steps in (10, 20):
        _fake_run(
            runs,
            f"s{steps}",
            "ddpm_mnist",
            {"test/fid": 100.0 / steps},
            {"features": "clf-abc", "steps": steps},
            [f"steps={steps}"],
        )
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    assert "| steps=20 |" in text
    assert (tmp_path / "out" / "plots" / "ddpm_mnist__test_fid.png").is_file()
