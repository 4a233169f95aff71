"""Classical low-light baselines: the methods, and `experiments.evaluate experiment=lowlight_classical` end to end
(metrics.json tables, results.md, per_image.csv, side-by-side PNGs), plus `experiments.prepare`."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from core.imageops import rgb_to_grey
from experiments.evaluate import evaluate
from experiments.prepare import prepare
from lit_modules.lowlight_classical import METHODS, ClassicalLowLight
from tests.lowlight_fixtures import make_layout

SMALL = [
    "data.synthetic.num_train=2",
    "data.synthetic.num_test=3",
    "data.synthetic.height=48",
    "data.synthetic.width=64",
]


def test_methods_map_to_unit_range_and_brighten():
    x = torch.rand(2, 3, 24, 32) * 0.1
    for name, fn in METHODS.items():
        y = fn(x)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name
        if name != "identity":
            assert y.mean() > 2 * x.mean(), name
    assert torch.equal(METHODS["identity"](x), x)
    assert torch.allclose(METHODS["gamma"](x, gamma=2.0), x.sqrt())
    flat = torch.full((1, 3, 8, 8), 0.04)
    assert rgb_to_grey(METHODS["auto_gamma"](flat, target=0.5)).mean().item() == pytest.approx(0.5, abs=1e-5)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method.*retinexnet"):
        ClassicalLowLight(methods=["retinexnet"])
    assert ClassicalLowLight(methods=["he"]).needs_checkpoint is False


def test_evaluate_lowlight_classical_writes_the_table(tmp_path, compose_cfg):
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        "evaluate",
        ["experiment=lowlight_classical", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}", *SMALL],
        run_dir=run_dir,
    )
    metrics = evaluate(cfg)
    methods = list(METHODS)
    assert {f"test/{m}/{k}" for m in methods for k in ("psnr", "ssim")} == set(metrics)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert list(saved["tables"]["test"]["rows"]) == methods  # the configured order
    assert saved["data"]["comparable_with_papers"] is False and "SYNTHETIC" in saved["data"]["label"]
    assert (
        saved["protocol"]["restoration"]["gt_mean_correction"] is False
        and "he" in saved["protocol"]["methods"]
    )
    md = (run_dir / "results.md").read_text()
    assert "Not comparable with published numbers" in md and "| identity |" in md
    with open(run_dir / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * len(methods) and {r["method"] for r in rows} == set(methods)
    # the identity row is the PSNR of the files on disk, computed independently
    root = tmp_path / "cache" / "synthetic_lowlight"
    (folder,) = root.iterdir()
    psnrs = []
    for r in rows:
        if r["method"] == "identity":
            low = np.asarray(Image.open(folder / r["image"])) / 255.0
            high = np.asarray(Image.open(folder / r["image"].replace("/low/", "/high/"))) / 255.0
            psnrs.append(peak_signal_noise_ratio(high, low, data_range=1.0))
            assert float(r["psnr"]) == pytest.approx(psnrs[-1], abs=1e-4)
    assert metrics["test/identity/psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)
    assert metrics["test/he/psnr"] > metrics["test/identity/psnr"]
    sbs = sorted((run_dir / "images" / "test" / "side_by_side").glob("*.png"))
    assert len(sbs) == 3
    grid = np.asarray(Image.open(sbs[0]))
    assert grid.shape[1] > (len(methods) + 2) * 64 and grid.std() > 5  # low | 6 methods | high
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "completed" and math.isfinite(metrics["test/clahe/ssim"])
    # NeRCo's [-1, 1] range: the module maps to [0, 1] before scoring, so the numbers do not change
    cfg = compose_cfg(
        "evaluate",
        [
            "experiment=lowlight_classical",
            "logger=none",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data.value_range=[-1.0,1.0]",
            *SMALL,
        ],
        run_dir=tmp_path / "run_pm1",
    )
    pm1 = evaluate(cfg)
    assert all(abs(pm1[k] - metrics[k]) < 1e-4 for k in metrics)


def test_prepare_reports_problems_and_exit_status(tmp_path, compose_cfg, capsys):
    make_layout(tmp_path / "LOL", "lol", n_train=2, n_test=2)
    ok = compose_cfg(
        "prepare", ["data.source=local", f"data.path={tmp_path / 'LOL'}"], run_dir=tmp_path / "p1"
    )
    assert prepare(ok) == 0
    out = capsys.readouterr().out
    assert "train: 2 pairs; sizes (w x h): 32x24 x2" in out and "no problems found" in out
    (tmp_path / "LOL" / "eval15" / "high" / "2.png").unlink()
    bad = compose_cfg(
        "prepare", ["data.source=local", f"data.path={tmp_path / 'LOL'}"], run_dir=tmp_path / "p2"
    )
    assert prepare(bad) == 2
    out = capsys.readouterr().out
    assert "1 low image(s) without a high partner: eval15/low/2.png" in out
    report = json.loads((tmp_path / "p2" / "check.json").read_text())
    assert report["problems"] and report["splits"]["train"]["pairs"] == 2
