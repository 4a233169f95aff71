"""W&B mode policy, the PNG image logger, and the uint8 conversion every logged image goes through."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.imageops import make_grid, to_uint8
from runtime.tracking import ImageFileLogger, has_wandb_api_key, resolve_wandb_mode


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_no_key_means_offline(clean_env):
    assert resolve_wandb_mode() == ("offline", True)


@pytest.fixture(autouse=True)
def _server_answers(monkeypatch):
    """No test touches the network: the W&B server "answers" unless a test says otherwise."""
    import runtime.tracking as tracking

    monkeypatch.setattr(tracking, "server_reachable", lambda url: True)


def test_a_key_without_a_network_falls_back_to_offline_within_seconds(clean_env, monkeypatch, caplog):
    import socket
    import time

    import runtime.tracking as tracking

    monkeypatch.undo()  # the real probe, against a blackholed connect
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(clean_env))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)

    def blackhole(address, timeout=None):
        time.sleep(min(timeout or 0, 0.2))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    start = time.perf_counter()
    assert tracking.resolve_wandb_mode() == ("offline", True)
    assert time.perf_counter() - start < 5 and "did not answer" in caplog.text


def test_netrc_key_means_online(clean_env):
    clean_env.write_text(
        "machine api.wandb.ai\n  login user\n  password " + "c" * 40 + "\n"
    )  # a well-formed key
    clean_env.chmod(0o600)
    assert has_wandb_api_key() and resolve_wandb_mode() == ("online", True)


def test_env_key_means_online_and_wandb_mode_wins(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode() == ("online", True)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode() == ("disabled", False)


def test_make_grid_places_images_row_major():
    imgs = torch.arange(3).float().view(3, 1, 1, 1).expand(3, 1, 2, 2) / 2
    grid = make_grid(imgs, nrow=2, padding=1, pad_value=1.0)
    assert grid.shape == (1, 2 * 3 + 1, 2 * 3 + 1)
    assert grid[0, 1, 1] == 0.0 and grid[0, 1, 4] == 0.5 and grid[0, 4, 1] == 1.0
    assert grid[0, 0, 0] == 1.0  # padding


def test_to_uint8_rounds_clips_and_drops_grey_channel():
    x = torch.tensor([[[-0.5, 0.0], [0.5, 2.0]]])
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    assert out.tolist() == [[0, 0], [128, 255]]
    rgb = to_uint8(torch.zeros(3, 4, 5), value_range=(-1, 1))
    assert rgb.shape == (4, 5, 3) and rgb.max() == 128


def test_image_file_logger_layout(tmp_path):
    lg = ImageFileLogger(tmp_path)
    img = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    lg.log_image("val/samples", [img], step=42)
    lg.log_image("test/samples", [img], step=99)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "val" / "samples" / "step_0000042.png")), img)
    assert (tmp_path / "test" / "samples.png").is_file()
    with pytest.raises(TypeError, match="uint8"):
        lg.log_image("val/x", [img.astype(np.float32)], step=1)


def test_the_netrc_entry_wandb_login_writes_means_online(clean_env):
    """wandb 0.31's `wandb login` writes the entry of its own default host (api.forge.coreweave.com), not
    api.wandb.ai: the suite must find it where wandb does (it used to look up api.wandb.ai only)."""
    from wandb.sdk.lib.wbauth.wbnetrc import write_netrc_auth

    from runtime.tracking import wandb_base_url

    write_netrc_auth(host=wandb_base_url(), api_key="k" * 40)
    assert "machine api.wandb.ai" not in clean_env.read_text() or wandb_base_url().endswith("api.wandb.ai")
    assert has_wandb_api_key() and resolve_wandb_mode() == ("online", True)


def test_a_custom_server_uses_its_own_netrc_entry(clean_env, monkeypatch):
    clean_env.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    clean_env.chmod(0o600)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not has_wandb_api_key()  # a key for another server is not a key for this one
    clean_env.write_text("machine wandb.example.org\n  login user\n  password " + "b" * 40 + "\n")
    assert has_wandb_api_key()
