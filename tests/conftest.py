"""Test environment: offline trackers and hubs, quiet W&B, and helpers that compose the real configs."""

from __future__ import annotations

import os

# Set before anything imports wandb, datasets or huggingface_hub. Tests never touch the network.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")

import hashlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# SLURM's client commands. Tests run with a PATH that has none of them (whether or not this machine has
# SLURM installed); tests marked `slurm` get the real ones back with a running local cluster (tests/slurm/).
SLURM_COMMANDS = frozenset(
    "sbatch srun salloc sattach sbcast scancel scontrol scrontab sdiag sinfo sprio squeue sreport sshare "
    "sstat strigger sview sacct sacctmgr sh5util sjobexitmod sjstat smap".split()
)
ORIGINAL_PATH = os.environ.get("PATH", "")


def path_without_slurm(path: str, farm: Path) -> str:
    """PATH with the same programs in the same order, less SLURM's commands (a folder of links per entry)."""
    dirs = []
    for i, d in enumerate(p for p in path.split(os.pathsep) if p):
        src = Path(d)
        if not src.is_dir():
            continue
        names = {e.name for e in src.iterdir()}
        if not names & SLURM_COMMANDS:
            dirs.append(d)
            continue
        dst = farm / str(i)
        dst.mkdir(parents=True, exist_ok=True)
        for name in names - SLURM_COMMANDS:
            link = dst / name
            if not link.exists():
                link.symlink_to(src / name)
        dirs.append(str(dst))
    return os.pathsep.join(dirs)


def _hide_slurm() -> None:
    import atexit
    import shutil
    import tempfile

    farm = Path(tempfile.mkdtemp(prefix="suite-path-"))
    atexit.register(shutil.rmtree, farm, ignore_errors=True)
    os.environ["PATH"] = path_without_slurm(ORIGINAL_PATH, farm)


_hide_slurm()


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(config_name, overrides, run_dir=None) -> the composed config with its run dir under tmp_path."""
    from runtime.config import compose

    def _compose(config_name: str = "train", overrides: list[str] | None = None, run_dir: Path | None = None):
        return compose(config_name, overrides or [], output_dir=run_dir or tmp_path / "run")

    return _compose


def run_cli(
    module: str, *overrides: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Runs `python -m experiments.<module> overrides...` in a subprocess (by default from outside the repo)."""
    full_env = {**os.environ, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None removes a variable
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *overrides],
        cwd=cwd or REPO.parent,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def state_dict_hash(path: Path) -> str:
    """sha256 over a checkpoint's model weights (names and exact bytes)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().contiguous().numpy().tobytes())
    return h.hexdigest()
