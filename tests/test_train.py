"""The train/evaluate entry points: the run-directory contract, exact resume, crash safety, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.evaluate import evaluate
from experiments.train import train
from runtime.checkpoints import CheckpointMismatchError
from tests.conftest import REPO, run_cli, state_dict_hash
from tests.helpers import SimulatedCrash

# small but real: a few batches per epoch, a short NLL estimate
FAST = [
    "experiment=vae_mnist",
    "trainer.limit_train_batches=8",
    "model.nll_samples=16",
    "model.image_every_n_epochs=1",
]


def _not_blank(path):
    arr = np.asarray(Image.open(path))
    return arr.dtype == np.uint8 and arr.std() > 5


def test_cli_writes_the_run_directory_contract(tmp_path):
    run_dir = tmp_path / "run"
    res = run_cli(
        "train",
        *FAST,
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        env={"WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "no-netrc")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the table and the run directory are the last things printed
    assert "test/elbo" in res.stdout and f"Run directory: {run_dir}" in res.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (
        run_dir / ".hydra" / "overrides.yaml"
    ).is_file()

    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "completed" and info["seed"] == 0 and info["task"] == "train"
    assert set(info["git"]) >= {"commit", "dirty"} and "experiments.train" in info["command"]
    assert {"torch", "pytorch-lightning", "torchmetrics", "hydra-core"} <= set(info["packages"])
    assert info["python"] and info["host"] and info["device"]["root_device"] == "cpu"
    assert "slurm" in info and info["experiment"] == "vae_mnist"
    assert info["wandb"]["mode"] == "offline" and info["wandb"]["id"]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["test/elbo"]) and math.isfinite(metrics["test/nll"])
    assert metrics["test/nll"] <= metrics["test/elbo"]
    assert "K=16" in metrics["protocol"]["test/nll"] and metrics["data"]["source"] == "embedded"

    ckpts = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    for name in ("samples", "reconstructions", "interpolations", "traversals"):
        assert _not_blank(run_dir / "images" / "test" / f"{name}.png"), name
    assert list((run_dir / "images" / "val" / "samples").glob("step_*.png"))

    # W&B ran offline by itself (no key, WANDB_MODE empty) and holds the logged images, not blank
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    media = list((offline[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(media) >= 4 and all(_not_blank(p) for p in media)
    assert "wandb sync" in res.stdout + res.stderr


def test_evaluate_is_seeded_and_refuses_a_missing_checkpoint(tmp_path, compose_cfg):
    trained = train(
        compose_cfg("train", [*FAST, "trainer.max_epochs=1", "logger=none"], run_dir=tmp_path / "train")
    )
    recorded = json.loads((tmp_path / "train" / "metrics.json").read_text())["tested_checkpoint"]
    assert recorded == json.loads((tmp_path / "train" / "run_info.json").read_text())["tested_checkpoint"]
    ckpt = Path(recorded)
    assert ckpt.parent == tmp_path / "train" / "checkpoints" and ckpt.is_file()
    evals = [
        evaluate(
            compose_cfg(
                "evaluate",
                [
                    "experiment=vae_mnist",
                    "model.nll_samples=16",
                    "logger=none",
                    f"ckpt_path={ckpt}",
                    f"seed={s}",
                ],
                run_dir=tmp_path / f"eval{i}",
            )
        )
        for i, s in enumerate((0, 0, 1))
    ]
    assert evals[0] == evals[1]  # seed 0 is a seed: the NLL estimate repeats exactly
    # the checkpoint train tested gives train's own test numbers in evaluate (both seed the test stage)
    assert {k: v for k, v in trained.items() if k.startswith("test/")} == evals[0]
    assert json.loads((tmp_path / "eval0" / "metrics.json").read_text())["tested_checkpoint"] == str(ckpt)
    assert evals[0]["test/nll"] != evals[2]["test/nll"]
    assert json.loads((tmp_path / "eval0" / "metrics.json").read_text())["test/nll"] == pytest.approx(
        evals[0]["test/nll"]
    )
    with pytest.raises(ValueError, match="ckpt_path is required"):
        evaluate(
            compose_cfg("evaluate", ["experiment=vae_mnist", "logger=none"], run_dir=tmp_path / "eval_none")
        )


def _resume_pair(tmp_path, compose_cfg, extra=()):
    common = [*FAST, "trainer.deterministic=true", "logger=none", "test=false", *extra]
    train(compose_cfg("train", [*common, "trainer.max_epochs=2"], run_dir=tmp_path / "straight"))
    train(compose_cfg("train", [*common, "trainer.max_epochs=1"], run_dir=tmp_path / "resumed"))
    train(
        compose_cfg(
            "train", [*common, "trainer.max_epochs=2", "ckpt_path=last"], run_dir=tmp_path / "resumed"
        )
    )
    return state_dict_hash(tmp_path / "straight" / "checkpoints" / "last.ckpt"), state_dict_hash(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    )


def test_resume_is_bit_exact(tmp_path, compose_cfg):
    straight, resumed = _resume_pair(tmp_path, compose_cfg)
    assert straight == resumed
    # the first run's last.ckpt was a link to its best file; the resumed run still recognises it as its own
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("last*")) == ["last.ckpt"]
    info = json.loads((tmp_path / "resumed" / "run_info.json").read_text())
    assert info["resumed_from"].endswith("last.ckpt") and len(info["previous_invocations"]) == 1


def test_resume_without_saved_rng_state_diverges(tmp_path, compose_cfg):
    """The control for the test above: the VAE's noise comes from the global RNG, so dropping the RNG
    callback must change the resumed weights."""
    straight, resumed = _resume_pair(tmp_path, compose_cfg, extra=["~callbacks.rng_state"])
    assert straight != resumed


def test_crash_keeps_last_checkpoint_and_records_the_failure(tmp_path, compose_cfg):
    run_dir = tmp_path / "run"
    common = [*FAST, "logger=none", "test=false"]
    train(compose_cfg("train", [*common, "trainer.max_epochs=1"], run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(SimulatedCrash):
        train(
            compose_cfg(
                "train",
                [
                    *common,
                    "trainer.max_epochs=3",
                    "ckpt_path=last",
                    "+callbacks.crash._target_=tests.helpers.CrashAt",
                ],
                run_dir=run_dir,
            )
        )
    assert last.read_bytes() == before
    torch.load(last, map_location="cpu", weights_only=True)  # still a valid checkpoint
    info = json.loads((run_dir / "run_info.json").read_text())
    # the completed run stays the directory's record; the failed resume is recorded after it
    assert info["status"] == "completed" and [i["status"] for i in info["later_invocations"]] == ["failed"]
    assert "simulated crash" in info["later_invocations"][0]["error"]


def test_resume_last_without_a_checkpoint_is_a_clear_error(tmp_path, compose_cfg):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: .*checkpoints/last.ckpt does not exist"):
        train(compose_cfg("train", [*FAST, "ckpt_path=last", "logger=none"], run_dir=tmp_path / "fresh"))


def test_checkpoint_of_another_model_is_refused(tmp_path, compose_cfg):
    train(
        compose_cfg(
            "train",
            [
                "experiment=vae_mnist_conv",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=2",
                "logger=none",
                "test=false",
            ],
            run_dir=tmp_path / "conv",
        )
    )
    conv_ckpt = tmp_path / "conv" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="does not fit lit_modules.vae.VAE.*missing keys"):
        evaluate(
            compose_cfg(
                "evaluate",
                ["experiment=vae_mnist", "logger=none", f"ckpt_path={conv_ckpt}"],
                run_dir=tmp_path / "e1",
            )
        )
    other = tmp_path / "other.ckpt"
    torch.save(
        {"state_dict": {}, "suite": {"model_class": "lit_modules.ddpm.DDPM", "experiment": "ddpm_mnist"}},
        other,
    )
    with pytest.raises(
        CheckpointMismatchError, match="written by lit_modules.ddpm.DDPM .*experiment 'ddpm_mnist'"
    ):
        evaluate(
            compose_cfg(
                "evaluate",
                ["experiment=vae_mnist", "logger=none", f"ckpt_path={other}"],
                run_dir=tmp_path / "e2",
            )
        )
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch checkpoint"):
        evaluate(
            compose_cfg(
                "evaluate",
                ["experiment=vae_mnist", "logger=none", f"ckpt_path={junk}"],
                run_dir=tmp_path / "e3",
            )
        )


def test_csv_and_no_logger(tmp_path, compose_cfg):
    train(compose_cfg("train", [*FAST, "trainer.max_epochs=1", "logger=csv"], run_dir=tmp_path / "csv"))
    header = (tmp_path / "csv" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "val/elbo" in header and "test/nll" in header
    metrics = train(
        compose_cfg("train", [*FAST, "trainer.max_epochs=1", "logger=none"], run_dir=tmp_path / "none")
    )
    assert (
        not (tmp_path / "none" / "wandb").exists()
        and (tmp_path / "none" / "images" / "test" / "samples.png").is_file()
    )
    assert metrics["test/nll"] <= metrics["test/elbo"]


def test_fast_dev_run_debug_config(tmp_path, compose_cfg):
    metrics = train(
        compose_cfg(
            "train", ["experiment=vae_mnist", "debug=fdr", "model.nll_samples=4"], run_dir=tmp_path / "fdr"
        )
    )
    assert math.isfinite(metrics["test/elbo"])
    assert not list((tmp_path / "fdr").rglob("*.ckpt"))


def test_entry_point_from_another_directory_reports_unknown_experiment(tmp_path):
    res = run_cli("train", "experiment=no_such_thing", cwd=tmp_path)
    assert res.returncode != 0
    assert "no_such_thing" in res.stderr and "vae_mnist" in res.stderr  # Hydra lists the valid choices
    assert REPO.exists()
