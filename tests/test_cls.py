"""Classical restoration (Gonzalez & Woods, ch. 5): exactness, the residual constraint, the gamma search, scikit-image
agreement, degenerate inputs, the deblurring DataModule and `experiments.evaluate experiment=cls_deblur`."""

import csv
import json
import logging

import numpy as np
import pytest
import torch
from skimage.restoration import wiener as sk_wiener

from core import degradation as DG
from data.deblur import DeblurDataModule
from data.photos import load_photo, load_photo_grey
from experiments.evaluate import evaluate
from lit_modules import deconv as D
from lit_modules.metrics.restoration import score

INVERTIBLE = [[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]]  # H = 0.6 + 0.2 cos u + 0.2 cos v >= 0.2


@pytest.fixture(scope="module")
def grey():
    return torch.from_numpy(load_photo_grey("camera")[100:228, 150:278].astype(np.float64) / 255)[None, None]


@pytest.fixture(scope="module")
def rgb():
    x = load_photo("astronaut")[100:228, 150:278].astype(np.float64) / 255
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def _psnr(x, f):
    return score(x, f)["psnr"].item()


def test_noiseless_invertible_psf_is_recovered_to_numerical_precision(grey, rgb):
    psf = DG.matrix_psf(INVERTIBLE)
    for f in (grey, rgb):
        g, _ = DG.degrade(f, psf)
        assert (g - f).abs().max() > 1e-3  # it really is blurred
        assert (D.inverse_filter(g, psf) - f).abs().max() < 1e-10
        assert (D.cls_filter(g, psf, 0.0) - f).abs().max() < 1e-10
        out, search = D.cls_auto(g, psf, 0.0, 0.0)
        assert search.gamma.item() == 0 and (out - f).abs().max() < 1e-10
    # a batch with one PSF per image
    f2 = torch.cat([grey, grey.flip(-1)])
    psfs = torch.stack([DG.matrix_psf(INVERTIBLE), DG.pad_psf(DG.matrix_psf([[0.2, 0.8]]), (3, 3))])
    g2 = torch.cat([DG.blur(f2[i : i + 1], psfs[i]) for i in range(2)])
    assert (D.inverse_filter(g2, psfs) - f2).abs().max() < 1e-9


def test_a_non_invertible_psf_is_not_recovered_by_the_inverse_filter(grey):
    psf = DG.box_psf(4)  # H has zeros
    g, _ = DG.degrade(grey, psf)
    assert (D.inverse_filter(g, psf) - grey).abs().max() > 1e-3


def test_residual_grows_monotonically_with_gamma_and_auto_gamma_meets_the_constraint(grey, rgb):
    psf = DG.gaussian_psf(1.5)
    for f, mean in ((grey, 0.0), (rgb, 0.05)):
        g, eta = DG.degrade(
            f, psf, noise_mean=mean, noise_var=1e-3, generator=torch.Generator().manual_seed(0)
        )
        _, _, shape, H, G = D._prepare(g, psf, mean, "circular", None)
        P2 = D._abs2(D.laplacian_otf(shape, g.dtype, g.device))
        gammas = torch.logspace(-8, 4, 49, dtype=torch.float64)
        phi = torch.stack([D.cls_residual_energy(G, H, P2, gm, shape[1]) for gm in gammas]).squeeze(-1)
        assert (phi.diff() >= -1e-9 * phi.abs().max()).all() and phi[-1] > 10 * phi[0]
        # ||r||^2 from Parseval equals the spatial residual
        fh = D.cls_filter(g, psf, 0.1, noise_mean=mean)
        r = (g - mean) - DG.blur(fh, psf)
        assert r.pow(2).sum().item() == pytest.approx(
            D.cls_residual_energy(G, H, P2, torch.tensor(0.1, dtype=torch.float64), shape[1]).item(), rel=1e-9
        )
        out, s = D.cls_auto(g, psf, mean, 1e-3, rel_tol=1e-3)
        target = f.shape[1] * f.shape[-2] * f.shape[-1] * 1e-3
        assert s.target.item() == pytest.approx(target) and bool(s.converged.all())
        assert abs(s.residual.item() - target) <= 1e-3 * target
        spatial = ((g - mean) - DG.blur(out, psf)).pow(2).sum().item()  # the search's ||r||^2 is the real one
        assert spatial == pytest.approx(s.residual.item(), rel=1e-9)
        assert (
            abs((eta - mean).pow(2).sum().item() - target) < 0.05 * target
        )  # the noise really has that energy
        assert (
            s.trace
            and s.iterations == len(s.trace)
            and s.trace[-1]["gamma"] == pytest.approx(s.gamma.tolist())
        )
        assert abs(out.mean().item() - f.mean().item()) < 2e-3  # the known noise mean is removed


def test_the_gamma_search_steps_bracket_then_bisect_into_the_band(grey):
    """bracket_gamma ends with phi(lo) <= target + a and phi(hi) >= target - a (G&W eq. 5.9-7); bisect_gamma
    then lands inside ||r||^2 = ||eta||^2 +- a, and phi is the spatial residual energy."""
    psf = DG.gaussian_psf(1.5)
    g, _ = DG.degrade(grey, psf, noise_var=1e-3, generator=torch.Generator().manual_seed(3))
    _, _, shape, H, G = D._prepare(g, psf, 0.0, "circular", None)
    P2 = D._abs2(D.laplacian_otf(shape, g.dtype, g.device))
    target, tol = D.residual_target(1e-3, 1, 1, shape, 1e-3, g)
    assert target.item() == pytest.approx(128 * 128 * 1e-3) and tol.item() == pytest.approx(
        1e-3 * target.item()
    )
    phi = D.residual_energy_fn(G, H, P2, shape)
    gam = torch.tensor([0.05], dtype=torch.float64)
    fh = D.cls_filter(g, psf, 0.05)
    assert phi(gam).item() == pytest.approx((g - DG.blur(fh, psf)).pow(2).sum().item(), rel=1e-9)
    active = torch.tensor([True])
    br = D.bracket_gamma(phi, target, tol, active, 1e3, (1e-12, 1e8), 200)  # starts far above the answer
    assert br.r_lo.item() <= (target + tol).item() and br.r_hi.item() >= (target - tol).item()
    assert br.lo.item() < 1e3 and {e["step"] for e in br.trace} == {"bracket_down"}
    found = D.bisect_gamma(phi, br, target, tol, active, 200)
    assert br.lo.item() <= found.item() <= br.hi.item() == 1e3 and br.trace[-1]["step"] == "bisect"
    assert abs(phi(found).item() - target.item()) <= tol.item()


def test_auto_cls_beats_inverse_filtering_by_a_clear_margin(rgb):
    psf = DG.motion_psf(9, 30)
    g, _ = DG.degrade(rgb, psf, noise_var=1e-4, generator=torch.Generator().manual_seed(1))
    cls_psnr = _psnr(D.cls_auto(g, psf, 0.0, 1e-4)[0], rgb)
    assert cls_psnr > _psnr(D.inverse_filter(g, psf), rgb) + 10
    assert cls_psnr > _psnr(D.inverse_filter(g, psf, cutoff=0.3), rgb) + 3
    assert cls_psnr > _psnr(g, rgb) + 1  # and it does restore


@pytest.mark.parametrize(
    "psf",
    [DG.gaussian_psf(2.0), DG.box_psf(4), DG.motion_psf(11, 60), DG.matrix_psf(DG.EXAMPLE_MATRIX)],
    ids=["gauss", "box4", "motion", "example3x3"],
)
def test_cls_matches_skimage_wiener(grey, psf):
    """skimage.restoration.wiener is Laplacian-regularised deconvolution with circular boundaries: it equals
    CLS with gamma = balance. Stated tolerance: 1e-10 (float64)."""
    g, _ = DG.degrade(grey, psf, noise_var=1e-4, generator=torch.Generator().manual_seed(2))
    for balance in (1e-3, 0.1):
        ref = sk_wiener(g[0, 0].numpy(), psf.numpy(), balance, clip=False)
        ours = D.cls_filter(g, psf, balance)[0, 0].numpy()
        assert np.abs(ours - ref).max() < 1e-10


def test_symmetric_boundary_is_exact_for_a_reflective_blur_with_a_symmetric_psf(grey):
    psf = DG.matrix_psf(INVERTIBLE)
    g = DG.blur(grey, psf, boundary="reflect")
    assert (D.inverse_filter(g, psf, boundary="symmetric") - grey).abs().max() < 1e-10
    assert (D.inverse_filter(g, psf, boundary="circular") - grey).abs().max() > 1e-3  # wrong boundary model
    padded = D.cls_filter(g, psf, 1e-3, boundary="reflect", pad=8)
    assert padded.shape == grey.shape


def test_degenerate_inputs_give_clear_errors(grey):
    with pytest.raises(DG.DegenerateInputError, match="sums to 0"):
        DG.matrix_psf([[1.0, -1.0]])
    with pytest.raises(DG.DegenerateInputError, match="sums to 0"):
        D.cls_filter(grey, torch.tensor([[1.0, -1.0]], dtype=torch.float64), 0.1)
    with pytest.raises(
        DG.DegenerateInputError, match=r"PSF \(129x129\) is larger than the image \(128x128\)"
    ):
        DG.degrade(grey, DG.box_psf(129))
    with pytest.raises(DG.DegenerateInputError, match="variance must be >= 0"):
        DG.degrade(grey, DG.box_psf(3), noise_var=-1e-3)
    with pytest.raises(DG.DegenerateInputError, match="variance must be >= 0"):
        D.cls_auto(grey, DG.box_psf(3), 0.0, -1.0)
    with pytest.raises(DG.DegenerateInputError, match="unknown PSF kind"):
        DG.make_psf({"kind": "airy"})
    with pytest.raises(DG.DegenerateInputError, match="data.blurs.flat.*sums to 0"):
        DeblurDataModule(blurs={"flat": {"kind": "matrix", "kernel": [[1, 0, -1]]}})
    with pytest.raises(DG.DegenerateInputError, match="data.blurs.huge.*larger than the image"):
        DeblurDataModule(size=64, blurs={"huge": {"kind": "gaussian", "sigma": 20}})
    with pytest.raises(DG.DegenerateInputError, match="data.noises.neg.*variance must be >= 0"):
        DeblurDataModule(noises={"neg": {"mean": 0, "var": -0.1}})


def test_psfs():
    m = DG.motion_psf(9, 0)
    rows = (m.abs() > 1e-12).any(1).nonzero().flatten().tolist()
    cols = (m.abs() > 1e-12).any(0).nonzero().flatten().tolist()
    assert rows == [m.shape[0] // 2] and len(cols) == 9 and m.sum().item() == pytest.approx(1)
    v = DG.motion_psf(9, 90)
    assert torch.allclose(v, m.T)
    assert DG.make_psf({"kind": "example3x3"}).sum().item() == pytest.approx(1)
    assert torch.equal(DG.make_psf({"kind": "seed"}), DG.make_psf({"kind": "example3x3"}))  # older spelling
    assert DG.gaussian_psf(2.0).shape == (13, 13)
    p = DG.pad_psf(DG.box_psf(4), (7, 7))
    assert p.shape == (7, 7) and p[1:5, 1:5].sum().item() == pytest.approx(1)  # centre (2, 2) -> (3, 3)


def test_deblur_datamodule_is_seeded_per_item(tmp_path):
    kw = {
        "photos": ["camera", "coffee"],
        "size": 64,
        "blurs": {"g": {"kind": "gaussian", "sigma": 1.0}, "m": {"kind": "motion", "length": 5, "angle": 45}},
        "noises": {"n": {"mean": 0.0, "var": 1e-3}},
    }
    a, b = DeblurDataModule(**kw, eval_batch_size=1), DeblurDataModule(**kw, eval_batch_size=4)
    xa = torch.cat([x["low"] for x in a.test_dataloader()])
    xb = torch.cat([x["low"] for x in b.test_dataloader()])
    assert torch.equal(xa, xb) and len(xa) == 4
    assert not torch.equal(
        xa, torch.cat([x["low"] for x in DeblurDataModule(**kw, seed=1).test_dataloader()])
    )
    item = a.test_set[3]
    assert item["setting"] == "m_n" and item["low_name"] == "m_n/coffee" and item["psf"].shape == (7, 7)
    d = a.describe()
    assert d["comparable_with_papers"] is False and d["n_test"] == 4 and len(d["settings"]) == 2
    # any folder of clean images
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (70, 80, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    (tmp_path / "notes.txt").write_text("x")
    dm = DeblurDataModule(source="folder", path=str(tmp_path), size=64, colour="grey")
    dm.setup()
    assert len(dm.test_set) == 3 and dm.test_set[0]["low"].shape == (1, 64, 64)
    assert dm.check().ok
    with pytest.raises(ValueError, match="smaller than the crop size 128"):
        DeblurDataModule(source="folder", path=str(tmp_path), size=128).setup()


def test_deblur_datamodule_declares_its_spec(compose_cfg):
    """image_shape / num_classes / value_range / domain as the config declares them; C must match `colour`."""
    import hydra

    from core.errors import ConfigError

    dm = DeblurDataModule(photos=["camera"], size=32, colour="grey")
    assert (dm.image_shape, dm.num_classes, dm.value_range, dm.domain) == (
        (1, 32, 32),
        None,
        (0.0, 1.0),
        "deblur",
    )
    cfg = compose_cfg("evaluate", ["experiment=cls_deblur", "data.size=null"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.image_shape == (3, None, None) and isinstance(dm.settings[0].psf_spec, dict)
    with pytest.raises(
        ConfigError, match=r"data.image_shape=\[3, 64, 64\] but data.colour=grey gives 1 channel"
    ):
        DeblurDataModule(size=64, colour="grey", image_shape=[3, 64, 64])
    with pytest.raises(ConfigError, match="data.domain='space' is not one of"):
        DeblurDataModule(size=64, domain="space")


def test_evaluate_cls_deblur_writes_the_table(tmp_path, compose_cfg, caplog):
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        "evaluate",
        [
            "experiment=cls_deblur",
            "logger=none",
            "data.max_images=2",
            "data.size=64",
            "~data.blurs.box7",
            "~data.blurs.example3x3",
            "~data.noises.var1e-5",
        ],
        run_dir=run_dir,
    )
    with caplog.at_level(logging.INFO, logger="lit_modules.cls"):
        metrics = evaluate(cfg)
    settings = ["gauss_s2_var1e-4", "gauss_s2_var1e-3", "motion_l15_a30_var1e-4", "motion_l15_a30_var1e-3"]
    methods = ["degraded", "inverse", "inverse_cutoff", "wiener", "wiener_oracle", "cls_auto"]
    assert {f"test/{s}/{m}/psnr" for s in settings for m in methods} | {
        f"test/{m}/psnr" for m in methods
    } <= set(metrics)
    assert metrics["test/cls_auto/psnr"] > metrics["test/inverse/psnr"] + 10
    saved = json.loads((run_dir / "metrics.json").read_text())
    rows = list(saved["tables"]["test"]["rows"])
    assert (
        rows[: len(methods)] == [f"{settings[0]}/{m}" for m in methods] and rows[-len(methods) :] == methods
    )
    assert "cls_auto" in saved["protocol"]["methods"] and saved["data"]["comparable_with_papers"] is False
    md = (run_dir / "results.md").read_text()
    assert "PSNR (dB) / SSIM by setting" in md and "**all settings**" in md
    with open(run_dir / "per_image.csv") as f:
        per = list(csv.DictReader(f))
    assert len(per) == 2 * len(settings) * len(methods)
    cls_rows = [r for r in per if r["method"].endswith("/cls_auto")]
    assert all(float(r["gamma"]) > 0 and r["converged"] == "1.000000" for r in cls_rows)
    assert len(list((run_dir / "images" / "test" / "side_by_side").glob("*.png"))) == len(settings)
    assert any("iteration" in r.message and "bisect" in r.message for r in caplog.records)


def test_prepare_checks_the_clean_images(tmp_path, compose_cfg, capsys):
    from experiments.prepare import prepare

    cfg = compose_cfg("prepare", ["data=deblur", "data.photos=[camera,moon]"], run_dir=tmp_path / "p")
    assert cfg.name == "clean_images" and prepare(cfg) == 0
    assert "test: 24 pairs; sizes (w x h): 512x512 x2" in capsys.readouterr().out
    bad = compose_cfg(
        "prepare",
        ["data=deblur", "data.source=folder", f"data.path={tmp_path / 'none'}"],
        run_dir=tmp_path / "q",
    )
    assert prepare(bad) == 2
