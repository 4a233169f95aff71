"""`experiments.sample` and the `GenerativeModule` interface beyond DDPM: a toy generative model (not a diffusion
model) samples through the entry point, sampling requests are checked key by key, the legacy top-level
spellings still reach the model, and DDPM's registry-based generation is bit-identical to the sampler loops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from core.errors import ConfigError
from core.imageops import to_uint8
from experiments.sample import sample, sampling_request
from lit_modules.generative import GenerativeModule
from lit_modules.metrics.speckle import background_speckle_pct
from lit_modules.sampling import PerImageNoise, Sampler, check_options, guided
from runtime.checkpoints import CheckpointMismatchError
from runtime.config import compose

SHAPE = (1, 4, 4)


def _scaled(model_fn, x_init, grid, noise, *, progress=False, callback=None, scale=1.0):
    """One step: x = scale * x_init + model_fn(x_init, t) at the grid's first time."""
    t = torch.full((x_init.shape[0],), float(grid[0]))
    return scale * x_init + model_fn(x_init, t)


class ToyGenerator(GenerativeModule):
    """sigmoid(scale * z + bias), z ~ N(0, I) per seed: a generative model with one parameter and one sampler."""

    family = "Toy"
    SAMPLERS = {"scaled": Sampler("scaled", _scaled, {"scale": 1.0}, stochastic=False, evals_per_step=1)}

    def __init__(self, scale: float = 1.0, fid_num_samples: int = 0):
        super().__init__(fid_num_samples=fid_num_samples, num_image_samples=4)
        self.save_hyperparameters()
        self.bias = torch.nn.Parameter(torch.full(SHAPE, 0.25))
        self.check_sampling()

    def sampling_defaults(self):
        return {"sampler": "scaled", "steps": 1, "guidance_scale": 0.0, "scale": self.hparams.scale}

    def _generate(self, seeds, class_labels, progress, **sampling):
        sampler = self.SAMPLERS[sampling["sampler"]]
        noise = PerImageNoise(seeds, SHAPE, self.device)
        grid = torch.linspace(0, 1, sampling["steps"] + 1)
        x = sampler.run(lambda x, t: self.bias.expand_as(x), noise(), grid, noise, scale=sampling["scale"])
        return torch.sigmoid(x)


def expected_toy(seeds, scale, bias=0.25):
    return torch.sigmoid(scale * PerImageNoise(seeds, SHAPE)() + bias)


@pytest.fixture
def toy_ckpt(tmp_path) -> Path:
    model = ToyGenerator(scale=1.0)
    record = {"_target_": f"{__name__}.ToyGenerator", "scale": 1.0, "fid_num_samples": 0}
    path = tmp_path / "toy.ckpt"
    suite = {
        "model_class": f"{__name__}.ToyGenerator",
        "experiment": "toy",
        "model_config": OmegaConf.to_yaml(record),
    }
    torch.save({"state_dict": model.state_dict(), "suite": suite}, path)
    return path


def test_sample_runs_any_generative_model_checkpoint(toy_ckpt, tmp_path):
    cfg = compose(
        "sample",
        [f"ckpt_path={toy_ckpt}", "num_samples=5", "seed=3", "batch_size=2", "+sampling.scale=2.0"],
        output_dir=tmp_path / "s",
    )
    sample(cfg)
    out = tmp_path / "s" / "samples"
    files = sorted(p.name for p in (out / "images").glob("*.png"))
    assert files == [f"seed_{s:07d}.png" for s in range(3, 8)]
    assert (out / "grid.png").is_file()
    # the sampling block reached the model: the images are sigmoid(2 z + 0.25) of their own seeds
    want = to_uint8(expected_toy([6], scale=2.0)[0]).astype(int)
    got = np.array(Image.open(out / "images" / "seed_0000006.png")).astype(int)
    assert np.abs(got.reshape(want.shape) - want).max() <= 1
    record = json.loads((tmp_path / "s" / "metrics.json").read_text())
    protocol = record["protocol"]
    assert protocol["sampler"] == "scaled" and protocol["scale"] == 2.0 and protocol["seeds"] == "3..7"
    speckle = background_speckle_pct(expected_toy(range(3, 8), scale=2.0))
    assert 0 < speckle and record["sample/background_speckle_pct"] == pytest.approx(speckle, abs=1e-6)


def test_background_speckle_counts_isolated_grey_pixels_only():
    """A digit stroke with anti-aliased grey edges and two isolated grey specks: only the specks count."""
    x = torch.zeros(2, 1, 10, 10)
    x[0, 0, 2:8, 4] = 1.0  # a vertical stroke
    x[0, 0, 2:8, 3] = 0.3  # its grey edge: next to stroke pixels, not a speck
    x[0, 0, 0, 9] = 0.3  # a speck in the corner (border: padding is not a stroke)
    x[1, 0, 5, 5] = 0.45  # a speck on an empty image
    x[1, 0, 1, 1] = 0.05  # darker than grey_min: background
    assert background_speckle_pct(x) == pytest.approx(100 * 2 / 200)
    x[0, 0, 0, 8] = 0.9  # a stroke pixel beside the corner speck
    assert background_speckle_pct(x) == pytest.approx(100 * 1 / 200)
    with pytest.raises(ValueError, match="single-channel"):
        background_speckle_pct(torch.zeros(1, 3, 4, 4))


def test_unknown_sampling_key_is_refused_naming_it(toy_ckpt, tmp_path):
    cfg = compose(
        "sample", [f"ckpt_path={toy_ckpt}", "+sampling.temperature=0.5"], output_dir=tmp_path / "bad"
    )
    with pytest.raises(
        ConfigError, match=r"sampling\.temperature: unknown option of sampler 'scaled'.*valid options: scale"
    ):
        sample(cfg)
    assert not (tmp_path / "bad" / "run_info.json").exists()  # refused before the run directory is written
    with pytest.raises(ConfigError, match="sampler: unknown sampler 'ddim'; valid samplers: scaled"):
        sample(compose("sample", [f"ckpt_path={toy_ckpt}", "sampler=ddim"], output_dir=tmp_path / "bad2"))
    with pytest.raises(ConfigError, match="guidance_scale=2.*unconditional"):
        ToyGenerator().check_sampling(guidance_scale=2)


def test_a_non_generative_checkpoint_is_refused(tmp_path):
    path = tmp_path / "vae.ckpt"
    suite = {
        "model_class": "lit_modules.vae.VAE",
        "model_config": OmegaConf.to_yaml({"_target_": "lit_modules.vae.VAE"}),
    }
    torch.save({"state_dict": {}, "suite": suite}, path)
    with pytest.raises(
        CheckpointMismatchError, match="not a checkpoint of a generative model.*lit_modules.vae.VAE"
    ):
        sample(compose("sample", [f"ckpt_path={path}"], output_dir=tmp_path / "s"))


def test_legacy_top_level_options_join_the_sampling_block(tmp_path):
    overrides = ["sampler=dpmpp_2m", "steps=20", "eta=0.5", "spacing=leading", "clip_x0=false"]
    cfg = compose(
        "sample", ["ckpt_path=x", *overrides, "guidance_scale=2", "class_label=3"], output_dir=tmp_path
    )
    assert sampling_request(cfg) == {
        "sampler": "dpmpp_2m", "steps": 20, "guidance_scale": 2, "class_label": 3,
        "eta": 0.5, "spacing": "leading", "clip_x0": False,
    }  # fmt: skip
    cfg = compose("sample", ["ckpt_path=x", "eta=0.5", "+sampling.eta=0.2"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"eta=0.5 and sampling.eta=0.2 disagree"):
        sampling_request(cfg)
    cfg = compose("sample", ["ckpt_path=x", "+sampling.steps=3"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"sampling.steps: set steps at the top level"):
        sampling_request(cfg)


def test_check_options_lists_the_valid_keys():
    s = Sampler("s", _scaled, {"a": 1, "b": 2})
    check_options(s, {"a": 3, "spacing": "x"}, also_valid=["spacing"])
    with pytest.raises(ConfigError, match=r"model.c: unknown option of sampler 's'.*valid options: a, b"):
        check_options(s, {"c": 0}, where="model")


# ---------------------------------------------------------------------------------------------------- DDPM
def _tiny_ddpm(num_classes=None):
    from lit_modules.ddpm import DDPM
    from lit_modules.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(), groups=4,
               num_classes=num_classes)  # fmt: skip
    return DDPM(
        net, optimizer=torch.optim.Adam, prediction_type="v", num_timesteps=50, fid_num_samples=0
    ).eval()


@pytest.mark.parametrize(
    "request_",
    [
        {"sampler": "ancestral", "steps": 4},
        {"sampler": "ancestral_large", "steps": 4, "spacing": "leading"},
        {"sampler": "ddim", "steps": 5, "eta": 0.7, "clip_x0": False},
        {"sampler": "dpmpp_2m", "steps": 6, "spacing": "linspace"},
    ],
)
def test_ddpm_generate_is_the_sampler_loop_bit_for_bit(request_):
    from lit_modules.diffusion import sample as diffusion_sample

    model = _tiny_ddpm()
    got = model.generate([3, 4], **request_)
    with torch.no_grad():
        x = diffusion_sample(lambda x, t: model.net(x, t), (1, 8, 8), [3, 4], model.alphas_cumprod,
                             prediction_type="v", **request_)  # fmt: skip
    assert torch.equal(got, ((x.float() + 1) / 2).clamp(0, 1))


def test_ddpm_guided_generation_matches_classifier_free_guidance():
    from lit_modules.diffusion import classifier_free_guidance
    from lit_modules.diffusion import sample as diffusion_sample

    model = _tiny_ddpm(num_classes=3)
    labels = torch.tensor([0, 2])
    got = model.generate([1, 2], class_labels=labels, sampler="ddim", steps=3, guidance_scale=1.5)
    with torch.no_grad():
        fn = classifier_free_guidance(model.net, 1.5, labels, null_label=3)
        x = diffusion_sample(fn, (1, 8, 8), [1, 2], model.alphas_cumprod, "ddim", 3, "v")
    assert torch.equal(got, ((x.float() + 1) / 2).clamp(0, 1))
    x_ = torch.randn(2, 1, 8, 8)
    t = torch.tensor([4, 9])
    assert torch.equal(guided(model.net, 1.5, labels, 3)(x_, t), fn(x_, t))


def test_ddpm_sampling_requests():
    model = _tiny_ddpm()
    with pytest.raises(
        ConfigError, match=r"sampling\.bogus: unknown option of sampler 'ddim'.*eta, clip_x0, spacing"
    ):
        model.check_sampling(bogus=1)
    # DDIM's eta with another sampler is ignored (it always was): not recorded, not refused
    resolved = model.check_sampling(sampler="dpmpp_2m", eta=0.5)
    assert "eta" not in resolved and resolved["sampler"] == "dpmpp_2m"
    assert model.sampling_description(sampler="dpmpp_2m", eta=0.5)["eta"] is None
    d = model.sampling_description(sampler="ddim", eta=0.3, spacing="leading")
    assert (d["eta"], d["spacing"], d["steps"], d["num_timesteps"]) == (0.3, "leading", 50, 50)
    with pytest.raises(ConfigError, match="spacing='middle'"):
        model.check_sampling(spacing="middle")
    with pytest.raises(ConfigError, match="eta=-1"):
        model.check_sampling(eta=-1.0)
    with pytest.raises(
        ConfigError, match="steps=51: must be an integer between 1 and the model's training T=50"
    ):
        model.check_sampling(steps=51)
