"""The PSNR/SSIM protocol against scikit-image's reference implementations, and the padding helpers."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from core.imageops import (
    crop_to,
    pad_to_multiple,
    resize_to_multiple,
    rgb_to_y,
    run_padded,
    to_unit_range,
)
from data.photos import load_photo
from lit_modules.metrics.restoration import (
    RestorationProtocol,
    RestorationScores,
    psnr_per_image,
    score,
    ssim_per_image,
)

SK_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}


def _pairs():
    """Realistic and adversarial pairs: a photo with noise/darkening, random images, odd sizes."""
    rng = np.random.default_rng(0)
    photo = load_photo("coffee")[:97, :131].astype(np.float64) / 255
    yield photo, np.clip(photo * 0.7 + 0.05 * rng.standard_normal(photo.shape), 0, 1)
    yield photo, np.clip(photo + 0.01 * rng.standard_normal(photo.shape), 0, 1)
    a = rng.random((23, 41, 3))
    yield a, rng.random((23, 41, 3))
    yield a, np.round(a * 255) / 255


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


@pytest.mark.parametrize("k", range(4))
def test_psnr_and_ssim_match_skimage_on_rgb(k):
    target, pred = list(_pairs())[k]
    got = score(_t(pred), _t(target))
    ref_psnr = peak_signal_noise_ratio(target, pred, data_range=1.0)
    ref_ssim = structural_similarity(target, pred, channel_axis=-1, **SK_SSIM)
    assert abs(got["psnr"].item() - ref_psnr) <= 1e-4
    assert abs(got["ssim"].item() - ref_ssim) <= 1e-4
    banded = ssim_per_image(_t(pred), _t(target), banded=True)  # the non-CPU code path
    assert abs(banded.item() - ref_ssim) <= 1e-6


def test_float32_inputs_and_y_channel_match_skimage():
    target, pred = next(_pairs())
    got = score(_t(pred).float(), _t(target).float(), RestorationProtocol(colour="y"))
    ty, py = (rgb_to_y(_t(x))[0, 0].numpy() for x in (target, pred))
    assert abs(got["psnr"].item() - peak_signal_noise_ratio(ty, py, data_range=1.0)) <= 1e-4
    assert abs(got["ssim"].item() - structural_similarity(ty, py, **SK_SSIM)) <= 1e-4
    # BasicSR's Y: 16/255 for black, 235/255 for white
    assert rgb_to_y(torch.zeros(1, 3, 1, 1)).item() == pytest.approx(16 / 255)
    assert rgb_to_y(torch.ones(1, 3, 1, 1)).item() == pytest.approx(235 / 255)


def test_mean_of_per_image_psnr_not_pooled_mse():
    rng = np.random.default_rng(1)
    t = torch.from_numpy(rng.random((2, 3, 16, 16)))
    p = t.clone()
    p[0] += 0.01
    p[1] += 0.2
    scores = RestorationScores(RestorationProtocol(clip=False))
    scores.update("m", p, t, ["a", "b"])
    per = psnr_per_image(p, t)
    metric = next(iter(scores.means.values()))
    assert metric.compute().item() == pytest.approx(per.mean().item())
    pooled = 10 * torch.log10(1 / (p - t).pow(2).mean())
    assert abs(metric.compute().item() - pooled.item()) > 1.0
    assert [r["image"] for r in scores.rows] == ["a", "b"] and scores.keys == {
        "test__m__psnr": "test/m/psnr",
        "test__m__ssim": "test/m/ssim",
    }


def test_gt_mean_clip_and_quantisation_options():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.random((1, 3, 20, 20)) * 0.8)
    darker = target * 0.5
    plain = score(darker, target)
    corrected = score(darker, target, RestorationProtocol(gt_mean=True))
    assert plain["psnr"].item() < 15 and corrected["psnr"].item() > 60  # a pure gain is undone exactly
    over = target + 0.5
    assert score(over, target)["psnr"] > score(over, target, RestorationProtocol(clip=False))["psnr"]
    q = score(target + 0.001, target, RestorationProtocol(quantize_8bit=True, clip=False))
    assert q["psnr"].item() != score(target + 0.001, target, RestorationProtocol(clip=False))["psnr"].item()
    shifted = target.clone()
    shifted[..., :2, :] = 0  # differs only inside the cropped border
    assert score(shifted, target, RestorationProtocol(crop_border=2))["psnr"].isinf()
    assert score(shifted, target)["psnr"].isfinite()


def test_bad_protocols_are_refused():
    with pytest.raises(ValueError, match="data_range"):
        RestorationProtocol(data_range=255)
    with pytest.raises(ValueError, match="colour"):
        RestorationProtocol(colour="lab")
    with pytest.raises(ValueError, match="unknown key"):
        RestorationProtocol.from_config({"window": 7})
    with pytest.raises(ValueError, match="one shape"):
        score(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least that size"):
        score(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    assert "gaussian_weights=True" in RestorationProtocol().describe()["ssim"]


@pytest.mark.parametrize("shape", [(1, 3, 37, 50), (2, 3, 4, 4), (3, 5, 6), (1, 3, 2, 3)])
def test_pad_to_multiple_and_crop_back(shape):
    x = torch.rand(shape)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape[-2] % 4 == 0 and padded.shape[-1] % 4 == 0 and size == tuple(shape[-2:])
    assert torch.equal(crop_to(padded, size), x)
    assert torch.equal(padded[..., : shape[-2], : shape[-1]], x)
    seen = []
    out = run_padded(lambda z: (seen.append(z.shape[-2:]), z * 2)[1], x, 8)
    assert torch.equal(out, x * 2) and all(s % 8 == 0 for s in seen[0])
    if shape[-2] > 4:  # reflection (not zeros) fills the border
        assert torch.equal(padded[..., shape[-2], : shape[-1]], x[..., shape[-2] - 2, :])


def test_resize_to_multiple_and_ranges():
    x = torch.rand(1, 3, 401, 602)
    assert resize_to_multiple(x, 4).shape[-2:] == (400, 600)
    assert resize_to_multiple(x[..., :400, :600], 4).shape[-2:] == (400, 600)
    assert torch.equal(
        to_unit_range(torch.tensor([-1.0, 0.0, 1.0]), (-1.0, 1.0)), torch.tensor([0.0, 0.5, 1.0])
    )
