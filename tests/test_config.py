"""The config tree: every experiment composes and instantiates; Hydra's errors for bad names and keys."""

from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from runtime.config import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_layout():
    for group in ("data", "model", "trainer", "logger", "callbacks", "paths", "experiment", "debug", "hydra"):
        assert (CONFIG_DIR / group).is_dir(), group
    for name in ("default", "cpu", "gpu", "ddp", "ddp_cpu"):
        assert (CONFIG_DIR / "trainer" / f"{name}.yaml").is_file()
    for name in ("wandb", "csv", "none"):
        assert (CONFIG_DIR / "logger" / f"{name}.yaml").is_file()
    for name in ("fdr", "overfit", "limit"):
        assert (CONFIG_DIR / "debug" / f"{name}.yaml").is_file()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, compose_cfg, tmp_path):
    for root in ("train", "evaluate"):
        cfg = compose_cfg(root, [f"experiment={experiment}"], run_dir=tmp_path / root)
        assert cfg.name == experiment, "experiment files set `name` (run directory and W&B group)"
        assert Path(cfg.paths.output_dir) == tmp_path / root
        hydra.utils.instantiate(cfg.model)
        hydra.utils.instantiate(cfg.data)


def test_seed_zero_and_interpolations(compose_cfg):
    cfg = compose_cfg("train", ["experiment=vae_mnist"])
    assert cfg.seed == 0 and cfg.data.shuffle_seed == 0
    assert cfg.logger.wandb.group == "vae_mnist" and "vae" in cfg.logger.wandb.tags
    assert Path(cfg.paths.root_dir) == CONFIG_DIR.parent


def test_unknown_experiment_lists_valid_choices(compose_cfg):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg("train", ["experiment=nope"])
    assert "vae_mnist" in str(err.value)


def test_unknown_key_is_refused(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="no_such_field"):
        compose_cfg("train", ["trainer.no_such_field=1"])
