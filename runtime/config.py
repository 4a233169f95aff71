"""Where the configs live, the OmegaConf resolvers they use, and config composition outside the CLI.

`configs/` sits at the top level of the clone, beside the Python packages, so the entry points find it
from this file's location and never from the working directory: `python -m experiments.train` works from
any directory as long as the package is installed in editable mode from a clone (`pip install -e .`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from core.errors import MissingFileError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


def _check_config_dir() -> None:
    if not (CONFIG_DIR / "train.yaml").is_file():
        raise MissingFileError(
            f"The suite's configs were not found at {CONFIG_DIR}. The entry points read configs/ from the clone "
            "they were installed from: install with `pip install -e .` inside a clone of the repository."
        )


def register_resolvers() -> None:
    """Registers `${repo_root:}` (idempotent: Hydra may compose several times in one process)."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def config_path() -> str:
    """Absolute path for `hydra.main(config_path=...)`."""
    _check_config_dir()
    register_resolvers()
    return str(CONFIG_DIR)


def compose(
    config_name: str, overrides: list[str] | None = None, output_dir: str | Path | None = None
) -> DictConfig:
    """Composes a root config as the CLI would, for tests, benchmarks and notebooks.

    The result carries the `hydra` node so `${hydra:...}` interpolations resolve; `output_dir` sets both the
    run directory and `paths.output_dir`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    _check_config_dir()
    register_resolvers()
    overrides = list(overrides or [])
    if output_dir is not None:
        overrides += [f"hydra.run.dir={output_dir}", f"paths.output_dir={output_dir}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg
