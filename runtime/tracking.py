"""Experiment tracking: the W&B logger with an offline fallback, and a logger that writes images as PNG.

Policy: W&B is the default tracker.
- `WANDB_MODE` set: it is obeyed (online, offline, disabled).
- unset, with an API key configured (`WANDB_API_KEY` or a `wandb login` entry in ~/.netrc): online; wandb
  itself honours `WANDB_INIT_TIMEOUT` when the network is slow or absent.
- unset and no key: offline into `<run dir>/wandb/`, with one message saying how to `wandb sync` later.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from core.network import PROBE_TIMEOUT_S, reachable

log = logging.getLogger(__name__)


def wandb_base_url() -> str:
    """The W&B server wandb itself would use: `WANDB_BASE_URL`, else its own default (wandb 0.31:
    api.forge.coreweave.com, where `wandb login` writes the netrc entry; older wandb: api.wandb.ai)."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    try:
        from wandb.sdk.wandb_settings import Settings

        return str(Settings().base_url)
    except Exception:  # noqa: BLE001 - an older or broken wandb: its historical default
        return "https://api.wandb.ai"


def has_wandb_api_key() -> bool:
    """True when wandb would find an API key: the environment, or the netrc entry `wandb login` writes for
    wandb's own host (read with wandb's reader where it has one)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    url = wandb_base_url()
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
    except ImportError:
        read_netrc_auth = None
    if read_netrc_auth is not None:
        try:
            return bool(read_netrc_auth(host=url))
        except Exception as err:  # noqa: BLE001 - a malformed entry: say so, run offline
            log.warning("W&B: the netrc entry for %s cannot be used (%s): logging offline", url, err)
            return False
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(urlparse(url).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def server_reachable(url: str) -> bool:
    """Whether the W&B server answers within PROBE_TIMEOUT_S (core.network.reachable; tests replace this)."""
    return reachable(url, PROBE_TIMEOUT_S)


def resolve_wandb_mode() -> tuple[str, bool]:
    """Returns (mode, chosen_automatically). With a key but a server that does not answer within
    PROBE_TIMEOUT_S, the run logs offline and says so (wandb itself would wait ~100 s, then fail)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode, False
    os.environ.pop("WANDB_MODE", None)  # an empty value would make wandb itself fail
    if not has_wandb_api_key():
        return "offline", True
    url = wandb_base_url()
    if not server_reachable(url):
        log.warning(
            "W&B: an API key is configured but %s did not answer within %.0f s: logging offline instead "
            "(upload later with wandb sync; WANDB_MODE=online insists on the network)",
            url,
            PROBE_TIMEOUT_S,
        )
        return "offline", True
    return "online", True


def wandb_logger(
    project: str,
    save_dir: str,
    group: str | None = None,
    tags: list[str] | None = None,
    job_type: str | None = None,
    entity: str | None = None,
    id: str | None = None,  # noqa: A002 - wandb's own name for the run id
    **kwargs: Any,
):
    """Builds Lightning's WandbLogger with the suite's online/offline policy (module docstring)."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError as err:  # pragma: no cover - wandb is a hard dependency
        raise ImportError(
            "logger=wandb needs the `wandb` package; or choose logger=csv or logger=none"
        ) from err
    mode, automatic = resolve_wandb_mode()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if automatic and mode == "offline":
        _say_offline_once(save_dir)
    if mode == "offline" and "settings" not in kwargs:
        import wandb

        # offline, wandb's banner and footer repeat what the suite says once (where the run is, how to upload)
        kwargs["settings"] = wandb.Settings(silent=True)
    logger = WandbLogger(
        project=project,
        save_dir=save_dir,
        group=group,
        tags=list(tags or []),
        job_type=job_type,
        entity=entity,
        id=id,
        mode=mode,
        **kwargs,
    )
    if (
        logger._wandb_init.get("anonymous") is None
    ):  # Lightning always passes it; wandb warns that it is obsolete
        logger._wandb_init.pop("anonymous", None)
    return logger


@rank_zero_only
def _say_offline_once(save_dir: str) -> None:
    log.warning(
        "W&B: no API key is configured and WANDB_MODE is unset, so this run is logged offline to %s/wandb/ "
        "(the upload command is printed at the end; WANDB_MODE=disabled or logger=csv|none skip W&B)",
        save_dir,
    )


def wandb_run_info(loggers: list[Logger]) -> dict[str, Any] | None:
    """Id, mode and local folder of the W&B run among `loggers`, if there is one."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run = lg.experiment
            mode = lg._wandb_init.get("mode") or os.environ.get("WANDB_MODE")
            offline = bool(getattr(getattr(run, "settings", None), "_offline", mode in ("offline", "dryrun")))
            return {
                "id": getattr(run, "id", None),
                "project": getattr(run, "project", None),
                "group": getattr(run, "group", None),
                "mode": "offline" if offline else mode,
                "dir": str(Path(run.dir).parent) if getattr(run, "dir", None) else None,
                "url": None if offline else getattr(run, "url", None),
            }
    return None


class ImageFileLogger(Logger):
    """A Lightning logger that only writes images, as PNG, into the run directory.

    The entry points attach it next to the chosen tracker, so every image a module logs with
    `log_image(key, images, step)` also lands on disk: `<save_dir>/<key>.png` for `test/...` keys (one final
    image each) and `<save_dir>/<key>/step_<global step>.png` otherwise (a history during training).
    """

    def __init__(self, save_dir: str | Path):
        super().__init__()
        self._save_dir = Path(save_dir)
        self.written: list[Path] = []

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        from PIL import Image

        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.dtype != np.uint8:
                raise TypeError(f"ImageFileLogger.log_image({key!r}): expected uint8 images, got {arr.dtype}")
            suffix = f"_{i}" if len(images) > 1 else ""
            if key.startswith("test/"):
                path = self._save_dir / f"{key}{suffix}.png"
            else:
                path = self._save_dir / key / f"step_{(step or 0):07d}{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(path)
            self.written.append(path)
