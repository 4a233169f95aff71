"""Images that are not 8-bit RGB: what reading them does (data.images.conversion_note, the pixels), and
`experiments.prepare` naming each such file with its conversion (up to 10 per split, then "and N more")."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.images import conversion_note, read_header, read_rgb_noted
from experiments.prepare import prepare
from tests.lowlight_fixtures import make_layout


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG of (H, W, 3) or (H, W, 4) uint16 (Pillow cannot write one): IHDR, one IDAT, IEND."""
    h, w, c = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {3: 2, 4: 6}[c]
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def odd_images(tmp_path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the array written): RGB, RGBA, grey, 16-bit grey, 16-bit RGB."""
    rng = np.random.default_rng(0)
    out = {}
    for name, arr in (  # Pillow's mode from the array: RGB, RGBA, L, I;16
        ("rgb.png", rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)),
        ("rgba.png", rng.integers(0, 256, (6, 9, 4), dtype=np.uint8)),
        ("grey.png", rng.integers(0, 256, (6, 9), dtype=np.uint8)),
        ("grey16.png", rng.integers(0, 65536, (6, 9), dtype=np.uint16)),
    ):
        Image.fromarray(arr).save(tmp_path / name)
        out[name] = (tmp_path / name, arr)
    rgb16 = rng.integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    out["rgb16.png"] = (write_png16(tmp_path / "rgb16.png", rgb16), rgb16)
    return out


def test_each_conversion_is_described_and_done_as_described(odd_images):
    expected = {
        "rgb.png": None,
        "rgba.png": "RGBA -> RGB (alpha dropped)",
        "grey.png": "grey -> RGB (channel replicated)",
        "grey16.png": "16-bit grey -> 8-bit RGB (scaled by 255/65535, channel replicated)",
        "rgb16.png": "16-bit RGB -> 8-bit RGB (high byte kept: v // 256)",
    }
    for name, (path, arr) in odd_images.items():
        rgb, note = read_rgb_noted(path, name)
        assert note == expected[name] and read_header(path, name).conversion == note, name
        assert rgb.dtype == np.uint8 and rgb.shape == (6, 9, 3)
        want = {
            "rgb.png": lambda a: a,
            "rgba.png": lambda a: a[..., :3],
            "grey.png": lambda a: np.repeat(a[..., None], 3, -1),
            "grey16.png": lambda a: np.repeat(np.round(a / 65535 * 255).astype(np.uint8)[..., None], 3, -1),
            "rgb16.png": lambda a: (a >> 8).astype(np.uint8),
        }[name](arr)
        assert np.array_equal(rgb, want), name
    assert conversion_note("P") == "palette -> RGB (colours looked up)"
    assert conversion_note("I", 32, 255.0) == (
        "32-bit integer grey -> 8-bit RGB (values 0..255 kept, clipped, channel replicated)"
    )
    assert conversion_note("YCbCr") == "YCbCr -> RGB (Pillow's conversion)"


def test_prepare_names_every_converted_file_up_to_ten_then_counts(tmp_path, compose_cfg, capsys):
    root = make_layout(tmp_path / "LOL", "lol", n_train=12, n_test=2, size=(24, 32))
    rng = np.random.default_rng(1)
    for i in range(1, 13):  # all 12 training low images grey
        Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(
            root / "our485" / "low" / f"{i}.png"
        )
    Image.fromarray(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)).save(
        root / "eval15" / "high" / "1.png"
    )
    Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16)).save(root / "eval15" / "low" / "2.png")
    cfg = compose_cfg("prepare", ["data.source=local", f"data.path={root}"], run_dir=tmp_path / "p")
    assert prepare(cfg) == 0  # converted, not refused: a warning, not a problem
    out = capsys.readouterr().out
    assert "warning: train: 12 image(s) are not 8-bit RGB and will be converted (non_rgb=convert):" in out
    named = [f"our485/low/{i}.png: grey -> RGB (channel replicated)" for i in range(1, 13)]
    assert sum(line in out for line in named) == 10 and "    and 2 more" in out
    assert "eval15/high/1.png: RGBA -> RGB (alpha dropped)" in out
    assert "eval15/low/2.png: 16-bit grey -> 8-bit RGB (scaled by 255/65535, channel replicated)" in out
    report = json.loads((tmp_path / "p" / "check.json").read_text())
    assert sorted(report["splits"]["train"]["converted"]) == sorted(named)  # check.json lists all of them
    assert len(report["splits"]["test"]["converted"]) == 2
