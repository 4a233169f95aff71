"""The CPU NeRCo recipe (experiment=nerco_cpu) and what NeRCo checkpoints hold: the trainable networks and the
two Adam states, nothing frozen (the text-driven discriminator's tower is rebuilt from its source at each fit),
so that a checkpoint of the narrow recipe is ~21 MB and `enhance` can use it; resuming from it is exact when
the image pools are saved too (model.save_pools_in_checkpoint=true)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.enhance import enhance
from experiments.train import train
from tests.conftest import state_dict_hash
from tests.lowlight_fixtures import make_layout

TRAINABLE = {"netPre", "netG_A", "netG_B", "netH", "netD_A", "netD_B", "netD_A_edge", "netD_B_edge"}
RECIPE_CKPT_MB = 25  # the recipe's last.ckpt (1.7M parameters x 3 float32 copies ~ 21 MB)


def tiny_data(root: Path, n_train: int = 3) -> list[str]:
    make_layout(root, "lol", n_train=n_train, n_test=1, size=(32, 40))
    return ["data.source=local", f"data.path={root}", "data.crop=32", "logger=none"]


def checkpoint_accounting(path: Path) -> dict[str, int]:
    """Numbers of float32 values in a NeRCo checkpoint: weights, Adam moments, everything else."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    weights = sum(v.numel() for v in ckpt["state_dict"].values())
    moments = sum(
        t.numel()
        for opt in ckpt["optimizer_states"]
        for state in opt["state"].values()
        for key, t in state.items()
        if key in ("exp_avg", "exp_avg_sq")
    )
    return {"weights": weights, "moments": moments, "bytes": path.stat().st_size}


def test_checkpoint_holds_the_trainable_networks_and_their_adam_state_only(compose_cfg, tmp_path):
    """With the text-driven discriminator on (a random tower built at fit start, frozen), last.ckpt holds the
    eight trainable networks' weights and two Adam moments for each weight, and (almost) nothing else."""
    run = tmp_path / "run"
    cfg = compose_cfg(
        "train",
        ["experiment=nerco_cpu", *tiny_data(tmp_path / "LOL"), "trainer.limit_train_batches=1", "test=false",
         "model.components.text_discriminator=true", "model.text_discriminator.backend=random"],
        run,
    )  # fmt: skip
    train(cfg)
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert {k.split(".")[0] for k in keys} == TRAINABLE
    assert not [k for k in keys if re.search(r"text|clip|visual|_text", k)]
    assert "nerco_pools" not in ckpt  # off by default
    n = checkpoint_accounting(path)
    assert n["moments"] == 2 * n["weights"]  # Adam's exp_avg and exp_avg_sq of every trained weight
    assert n["weights"] == 1_715_906  # ngf 16, ndf 16, 3 blocks
    # weights + moments in float32, plus < 0.3 MB of loops, callbacks, hyperparameters and the suite record
    assert 12 * n["weights"] < n["bytes"] < 12 * n["weights"] + 300_000
    assert n["bytes"] < RECIPE_CKPT_MB * 1e6


def test_resume_with_saved_pools_is_bit_exact(compose_cfg, tmp_path):
    """Two epochs straight or one, then a resume from last.ckpt: the same weights (pools saved, RNG states
    saved by the suite's callback, data order a function of seed and epoch)."""
    common = [
        "experiment=nerco_cpu", *tiny_data(tmp_path / "LOL", n_train=2), "trainer.limit_train_batches=1",
        "test=false", "model.ngf=8", "model.ndf=8", "model.n_blocks=1", "model.pool_size=1",
        "model.save_pools_in_checkpoint=true",
    ]  # fmt: skip
    train(compose_cfg("train", [*common, "trainer.max_epochs=2"], tmp_path / "straight"))
    train(compose_cfg("train", [*common, "trainer.max_epochs=1"], tmp_path / "resumed"))
    pools = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["nerco_pools"]
    assert pools["fake_B"] and pools["fake_B"][0].shape == (1, 3, 32, 32)
    train(compose_cfg("train", [*common, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "resumed"))
    assert state_dict_hash(tmp_path / "straight" / "checkpoints" / "last.ckpt") == state_dict_hash(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    )


@pytest.mark.slow
def test_cpu_recipe_trains_writes_a_small_checkpoint_and_enhance_uses_it(compose_cfg, tmp_path):
    """experiment=nerco_cpu as configured (120 iterations on the synthetic LOL default, ~1.5 min on 2 CPU
    cores), then `enhance ckpt_path=<its last.ckpt>` on two images of another size."""
    run = tmp_path / "run"
    metrics = train(compose_cfg("train", ["experiment=nerco_cpu", "logger=none"], run))
    assert "test/psnr" in metrics
    ckpt = run / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]
    assert ckpt.stat().st_size < RECIPE_CKPT_MB * 1e6
    assert torch.load(ckpt, weights_only=True)["global_step"] == 240  # 120 iterations, 2 optimizer steps each

    inp, out = tmp_path / "photos", tmp_path / "enhanced"
    inp.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in (("dark.png", (90, 60)), ("odd.png", (37, 29))):
        Image.fromarray((rng.integers(0, 256, (h, w, 3)) // 6).astype(np.uint8)).save(inp / name)
    summary = enhance(
        compose_cfg(
            "enhance",
            ["device=cpu", f"ckpt_path={ckpt}", f"input_dir={inp}", f"output_dir={out}"],
            tmp_path / "enhance_run",
        )
    )
    assert "nerco_cpu" in summary["weights"] and len(summary["written"]) == 2
    for name, size in (("dark.png", (90, 60)), ("odd.png", (37, 29))):
        with Image.open(out / name) as img:
            assert img.size == size and img.mode == "RGB"
    info = json.loads((tmp_path / "enhance_run" / "run_info.json").read_text())
    assert info["status"] == "completed" and info["enhance"]["n_written"] == 2
