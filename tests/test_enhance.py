"""`python -m experiments.enhance`: one output per input at the input's size (odd sizes, grey, RGBA, JPEG),
the released inference path with official-layout weights, and every kind of bad input, which must leave the
input folder untouched (same names, bytes and modification times) and write nothing."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from core.tiling import blend_weights, run_tiled, tile_starts
from experiments.enhance import EnhanceError, enhance
from lit_modules.nerco import NeRCo
from lit_modules.nerco_release import (
    OfficialCheckpointError,
    released_enhance,
    released_input,
    released_uint8,
)
from tests.conftest import run_cli
from tests.test_nerco import write_released
from tests.test_nerco_nets import released_h

SMALL = ["model.ngf=8", "model.ndf=8", "model.n_blocks=1", "model.text_discriminator.backend=random"]
# (file name, (width, height), PIL mode): odd sizes, sizes not divisible by 4, grey, alpha, JPEG
INPUTS = [
    ("a.png", (23, 17), "RGB"),
    ("b.png", (41, 30), "RGB"),
    ("c.jpg", (33, 27), "RGB"),
    ("grey.png", (19, 13), "L"),
    ("alpha.png", (21, 11), "RGBA"),
    ("four.png", (32, 24), "RGB"),
]


def write_inputs(folder: Path, inputs=INPUTS, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (w, h), mode in inputs:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(folder / name)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: (sha256 of its bytes, modification time in ns)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """A checkpoint as experiments.train writes it (state_dict + the `suite` record) of a narrow NeRCo."""
    import hydra

    from runtime.config import compose

    d = tmp_path_factory.mktemp("ckpt")
    cfg = compose("train", ["model=nerco", *SMALL], output_dir=d / "run")
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model)
    path = d / "small.ckpt"
    suite = {
        "model_class": "lit_modules.nerco.NeRCo",
        "experiment": "test",
        "model_config": OmegaConf.to_yaml(cfg.model, resolve=True),
    }
    torch.save({"state_dict": model.state_dict(), "suite": suite}, path)
    return path


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("official") / "LOL"
    write_released(d)
    return d


def run_enhance(compose_cfg, tmp_path, *overrides):
    cfg = compose_cfg("enhance", ["device=cpu", *overrides], run_dir=tmp_path / "enhance_run")
    return enhance(cfg)


def test_enhance_writes_one_output_per_input_at_the_same_size(compose_cfg, tmp_path, small_ckpt):
    inp = write_inputs(tmp_path / "photos")
    before = snapshot(inp)
    out = tmp_path / "enhanced"
    summary = run_enhance(
        compose_cfg, tmp_path, f"input_dir={inp}", f"output_dir={out}", f"ckpt_path={small_ckpt}"
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).stem + ".png" for n, _, _ in INPUTS)
    for name, size, _ in INPUTS:
        with Image.open(out / (Path(name).stem + ".png")) as img:
            assert img.size == size and img.mode == "RGB", name
    assert snapshot(inp) == before
    assert len(summary["written"]) == len(INPUTS) and summary["skipped"] == []
    info = json.loads((tmp_path / "enhance_run" / "run_info.json").read_text())
    assert info["status"] == "completed" and info["enhance"]["n_written"] == len(INPUTS)
    assert (tmp_path / "enhance_run" / "enhance.json").is_file()

    # the pixels are the model's: rebuild the checkpoint's model and enhance one image by hand
    ckpt = torch.load(small_ckpt, weights_only=True)
    model = NeRCo(ngf=8, ndf=8, n_blocks=1, components={"text_discriminator": False})
    model.load_state_dict(ckpt["state_dict"])
    x = torch.from_numpy(np.array(Image.open(inp / "b.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    want = ((model.eval().enhance(x) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
    assert np.array_equal(np.asarray(Image.open(out / "b.png")), want.astype(np.uint8))

    # a second run into the same folder refuses to overwrite, unless asked
    with pytest.raises(EnhanceError, match="already holds 6 of the outputs.*overwrite=true"):
        run_enhance(compose_cfg, tmp_path, f"input_dir={inp}", f"output_dir={out}", f"ckpt_path={small_ckpt}")
    run_enhance(
        compose_cfg,
        tmp_path,
        f"input_dir={inp}",
        f"output_dir={out}",
        f"ckpt_path={small_ckpt}",
        "overwrite=true",
    )
    assert snapshot(inp) == before


def test_enhance_with_released_weights_equals_the_released_test_path(compose_cfg, tmp_path, official_dir):
    inp = write_inputs(tmp_path / "photos", [("four.png", (32, 24), "RGB"), ("odd.png", (37, 29), "RGB")])
    before = snapshot(inp)
    out = tmp_path / "out"
    run_enhance(
        compose_cfg,
        tmp_path,
        f"input_dir={inp}",
        f"output_dir={out}",
        f"model.official_ckpt_dir={official_dir}",
    )
    m = NeRCo(official_ckpt_dir=str(official_dir), components={"text_discriminator": False})
    with torch.no_grad():
        want = released_uint8(
            released_enhance(m.netG_A, m.netPre, m.netH, released_input(Image.open(inp / "four.png")))
        )
    assert np.array_equal(np.asarray(Image.open(out / "four.png")), want)
    assert Image.open(out / "odd.png").size == (37, 29)
    assert snapshot(inp) == before


# ------------------------------------------------------------------------------------------ bad input
def _missing(tmp_path):
    return tmp_path / "nowhere", "input_dir=.*nowhere does not exist"


def _not_a_folder(tmp_path):
    f = tmp_path / "photos" / "a.png"
    return f, "is not a folder"


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("not an image")
    (d / "sub").mkdir()
    write_inputs(d / "sub")  # images in subfolders are not searched
    return d, r"holds no images .*subfolders are not searched.*notes.txt"


@pytest.mark.parametrize("case", [_missing, _not_a_folder, _empty])
def test_missing_or_empty_input_folder(case, compose_cfg, tmp_path, small_ckpt):
    write_inputs(tmp_path / "photos")
    inp, message = case(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(EnhanceError, match=message):
        run_enhance(
            compose_cfg,
            tmp_path,
            f"input_dir={inp}",
            f"output_dir={tmp_path / 'out'}",
            f"ckpt_path={small_ckpt}",
        )
    assert not (tmp_path / "out").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("enhance_run")} == before


@pytest.mark.parametrize("where", ["same", "inside", "inside_via_dots"])
def test_output_folder_equal_to_or_inside_the_input_folder(where, compose_cfg, tmp_path, small_ckpt):
    inp = write_inputs(tmp_path / "photos")
    before = snapshot(inp)
    out = {"same": inp, "inside": inp / "enhanced", "inside_via_dots": inp / ".." / "photos" / "x"}[where]
    with pytest.raises(EnhanceError, match="output_dir=.* is (the input folder|inside input_dir)"):
        run_enhance(compose_cfg, tmp_path, f"input_dir={inp}", f"output_dir={out}", f"ckpt_path={small_ckpt}")
    assert snapshot(inp) == before and not (inp / "enhanced").exists() and not (inp / "x").exists()


def test_unreadable_files_are_skipped_with_a_warning_naming_each(compose_cfg, tmp_path, small_ckpt, caplog):
    inp = write_inputs(tmp_path / "photos", [("good.png", (20, 16), "RGB"), ("full.png", (64, 48), "RGB")])
    (inp / "garbage.png").write_bytes(b"this is not a png")
    data = (inp / "full.png").read_bytes()
    (inp / "truncated.png").write_bytes(data[: len(data) // 2])  # a valid header, half the pixel data
    before = snapshot(inp)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="experiments"):
        summary = run_enhance(
            compose_cfg, tmp_path, f"input_dir={inp}", f"output_dir={out}", f"ckpt_path={small_ckpt}"
        )
    assert sorted(p.name for p in out.iterdir()) == ["full.png", "good.png"]
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == ["garbage.png", "truncated.png"]
    text = caplog.text
    assert "Skipping garbage.png: not a readable image" in text
    assert "Skipping truncated.png: the image data cannot be decoded" in text
    assert "Skipped 2 of 4 file(s)" in text  # said again at the end
    assert snapshot(inp) == before

    (inp / "good.png").unlink(), (inp / "full.png").unlink()
    before = snapshot(inp)
    with pytest.raises(EnhanceError, match="none of the 2 image file"):
        run_enhance(
            compose_cfg,
            tmp_path,
            f"input_dir={inp}",
            f"output_dir={tmp_path / 'out2'}",
            f"ckpt_path={small_ckpt}",
        )
    assert snapshot(inp) == before and not (tmp_path / "out2").exists()


def test_conversions_are_said_per_file_in_the_log_and_the_records(compose_cfg, tmp_path, small_ckpt, caplog):
    """An RGBA, a grey, a 16-bit grey and a 16-bit RGB PNG: one log line each saying what was converted, the
    same in enhance.json (per image) and run_info.json; an 8-bit RGB file is not mentioned."""
    from tests.test_image_conversions import write_png16

    inp = tmp_path / "low"
    inp.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(inp / "001.png")
    Image.fromarray(rng.integers(0, 256, (12, 16, 4), dtype=np.uint8)).save(inp / "003.png")
    Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(inp / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16)).save(inp / "deep.png")
    write_png16(inp / "deep_rgb.png", rng.integers(0, 65536, (12, 16, 3), dtype=np.uint16))
    expected = {
        "003.png": "RGBA -> RGB (alpha dropped)",
        "grey.png": "grey -> RGB (channel replicated)",
        "deep.png": "16-bit grey -> 8-bit RGB (scaled by 255/65535, channel replicated)",
        "deep_rgb.png": "16-bit RGB -> 8-bit RGB (high byte kept: v // 256)",
    }
    with caplog.at_level(logging.WARNING, logger="experiments"):
        out = f"output_dir={tmp_path / 'out'}"
        summary = run_enhance(compose_cfg, tmp_path, f"input_dir={inp}", out, f"ckpt_path={small_ckpt}")
    lines = [r.getMessage() for r in caplog.records]
    for name, note in expected.items():
        assert lines.count(f"{name}: {note}") == 1, (name, lines)
    assert not [line for line in lines if line.startswith("001.png")]
    assert {r["name"]: r.get("converted") for r in summary["written"]} == {"001.png": None, **expected}
    record = json.loads((tmp_path / "enhance_run" / "enhance.json").read_text())
    assert record["converted"] == [f"{n}: {note}" for n, note in sorted(expected.items())]
    info = json.loads((tmp_path / "enhance_run" / "run_info.json").read_text())["enhance"]
    assert info["n_converted"] == 4 and info["converted"] == record["converted"]


def test_bad_checkpoint_directories_and_missing_weights(compose_cfg, tmp_path, official_dir):
    inp = write_inputs(tmp_path / "photos")
    before = snapshot(inp)
    out = tmp_path / "out"
    missing = tmp_path / "partial"
    missing.mkdir()
    for name in ("latest_net_G_A.pth", "latest_net_Pre.pth"):
        (missing / name).write_bytes((official_dir / name).read_bytes())
    with pytest.raises(OfficialCheckpointError, match=r"lacks \['latest_net_H.pth'\]"):
        run_enhance(
            compose_cfg,
            tmp_path,
            f"input_dir={inp}",
            f"output_dir={out}",
            f"model.official_ckpt_dir={missing}",
        )
    wrong = released_h()
    wrong["conv1.weight"] = (1, 2, 5, 5)
    write_released(tmp_path / "wrong", {"H": wrong})
    for name in ("latest_net_G_A.pth", "latest_net_Pre.pth"):
        (tmp_path / "wrong" / name).write_bytes((official_dir / name).read_bytes())
    with pytest.raises(
        OfficialCheckpointError, match=r"conv1.weight has shape \(1, 2, 5, 5\) in the file, \(1, 2, 7, 7\)"
    ):
        run_enhance(
            compose_cfg,
            tmp_path,
            f"input_dir={inp}",
            f"output_dir={out}",
            f"model.official_ckpt_dir={tmp_path / 'wrong'}",
        )
    with pytest.raises(EnhanceError, match="enhance needs weights"):
        run_enhance(compose_cfg, tmp_path, f"input_dir={inp}", f"output_dir={out}")
    assert snapshot(inp) == before and not out.exists()


def test_memory_limit_refuses_large_images_unless_tiling(compose_cfg, tmp_path, small_ckpt):
    inp = write_inputs(tmp_path / "photos", [("big.png", (200, 160), "RGB"), ("small.png", (40, 24), "RGB")])
    before = snapshot(inp)
    out = tmp_path / "out"
    args = [
        f"input_dir={inp}",
        f"output_dir={out}",
        f"ckpt_path={small_ckpt}",
        "memory_limit_mb=70",
        "nrn_chunk_pixels=400",
    ]
    with pytest.raises(
        EnhanceError,
        match=r"1 image\(s\) need more memory than memory_limit_mb=70: big.png \(200x160.*tiling.enabled=true",
    ):
        run_enhance(compose_cfg, tmp_path, *args)
    assert not out.exists() and snapshot(inp) == before
    summary = run_enhance(compose_cfg, tmp_path, *args, "tiling.enabled=true")
    rec = {r["name"]: r for r in summary["written"]}
    assert rec["big.png"]["tile"] == 128 and rec["big.png"]["tiles"] == 4 and "tile" not in rec["small.png"]
    assert Image.open(out / "big.png").size == (200, 160)
    assert snapshot(inp) == before


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    res = run_cli(
        "enhance",
        f"input_dir={tmp_path / 'nowhere'}",
        f"output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "does not exist" in res.stdout + res.stderr and "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "run" / "run_info.json").exists()  # refused before the run directory is written


# ------------------------------------------------------------------------------------------ tiling
def test_tiles_cover_the_image_and_blend_exactly_for_pixelwise_maps():
    assert tile_starts(100, 40, 8) == [0, 32, 60] and tile_starts(30, 40, 8) == [0]
    w = blend_weights(10, 3, at_start=False, at_end=True)
    assert w[0] == pytest.approx(0.25) and w[2] == pytest.approx(0.75) and w[3:].eq(1).all()
    x = torch.rand(2, 3, 37, 53)
    seen = []
    y = run_tiled(lambda t: 2 * t + 1, x, tile=16, overlap=4, progress=lambda d, n: seen.append((d, n)))
    torch.testing.assert_close(y, 2 * x + 1)
    assert seen[-1] == (len(tile_starts(37, 16, 4)) * len(tile_starts(53, 16, 4)),) * 2
    with pytest.raises(ValueError, match="larger than overlap"):
        tile_starts(10, 4, 4)


def test_memory_limit_auto_follows_cgroups_and_rlimits(tmp_path, monkeypatch):
    """memory_limit_mb=auto is held to the cgroup's limit (v1 and v2) and RLIMIT_AS, not the machine's free
    memory (a container or SLURM job with --mem has far less than MemAvailable)."""
    import resource

    from data.image_folder import cpu_memory_limits_mb

    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 24000000 kB\nMemAvailable:   20480000 kB\n")
    (proc / "self" / "cgroup").write_text("0::/job_1\n")
    (cg / "job_1").mkdir(parents=True)
    (cg / "job_1" / "memory.max").write_text(str(2 * 2**30))
    (cg / "job_1" / "memory.current").write_text(str(2**29))
    limits = cpu_memory_limits_mb(proc, cg)
    assert limits["MemAvailable"] == 20000 and limits["cgroup v2 memory.max"] == 1536
    (cg / "job_1" / "memory.max").write_text("max\n")  # no v2 limit
    (proc / "self" / "cgroup").write_text("4:memory:/slurm/job_2\n0::/\n")
    (cg / "memory" / "slurm" / "job_2").mkdir(parents=True)
    (cg / "memory" / "slurm" / "job_2" / "memory.limit_in_bytes").write_text(str(2**30))
    (cg / "memory" / "slurm" / "job_2" / "memory.usage_in_bytes").write_text(str(2**28))
    limits = cpu_memory_limits_mb(proc, cg)
    assert limits["cgroup v1 memory.limit_in_bytes"] == 768 and "cgroup v2 memory.max" not in limits
    monkeypatch.setattr(resource, "getrlimit", lambda which: (512 * 2**20, resource.RLIM_INFINITY))
    assert cpu_memory_limits_mb(proc, cg)["RLIMIT_AS"] == 512
