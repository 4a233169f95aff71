"""Bounded waits for the servers the suite may talk to (the Hugging Face hub): a few seconds, not minutes.

A blackholed network makes `datasets.load_dataset` or `snapshot_download` hang for many minutes. Before
either runs, `hub_access()` sets the hub's own timeouts (unless the user set them) and probes the endpoint;
when it does not answer within `PROBE_TIMEOUT_S`, the process falls back to the local hub cache (offline
mode) and says so, so a cached data set still loads and a missing one fails at once with the offline way.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
HUB_TIMEOUTS = {"HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "30"}


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the server of `url` opens within `timeout` seconds (no request sent)."""
    parts = urlparse(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Hub and datasets offline for the rest of this process (also when they are imported already)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True
        if hasattr(config, "HF_DATASETS_OFFLINE"):
            config.HF_DATASETS_OFFLINE = True


def hub_access(what: str) -> bool:
    """Call before loading `what` from the hub. Returns True when the hub will be used online, False when
    only the local cache will be (offline already, or the endpoint did not answer: then it says so)."""
    for name, value in HUB_TIMEOUTS.items():
        os.environ.setdefault(name, value)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if reachable(endpoint):
        return True
    log.warning(
        "%s: %s did not answer within %.0f s: using the local Hugging Face cache only (offline)",
        what,
        endpoint,
        PROBE_TIMEOUT_S,
    )
    go_offline()
    return False
