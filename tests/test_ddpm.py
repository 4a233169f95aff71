"""The DDPM experiments end to end (short runs), EMA weights in checkpoints and tests, the sample entry point on
the resulting checkpoints, its bad-input errors, and the UNet's shapes and conditioning."""

import copy
import functools
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from experiments.sample import sample
from experiments.train import train
from lit_modules.fid import FIDProtocolError
from lit_modules.nets.unet import UNet
from runtime.checkpoints import CheckpointMismatchError
from runtime.config import compose

# a real run, shrunk: 2 training batches, one validation and one test batch, 2 sampling steps, a tiny FID
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.steps=2",
    "model.num_image_samples=10",
    "model.image_every_n_epochs=1",
    "model.fid_num_samples=12",
    "model.fid_allow_below_minimum=true",
    "logger=none",
]


class WeightProbe(pl.Callback):
    """Records the sum of the model's weights when testing starts (which weights the test scores)."""

    def __init__(self, path: str):
        self.path = path

    def on_test_start(self, trainer, pl_module):
        total = sum(p.double().sum().item() for p in pl_module.parameters())
        with open(self.path, "w") as f:
            json.dump({"sum": total}, f)


def _weight_sum(state: dict) -> float:
    return sum(v.double().sum().item() for v in state.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short training run of each experiment (checkpoints, images, metrics)."""
    out = {}
    for name in ("ddpm_mnist", "ddpm_mnist_cfg"):
        run_dir = tmp_path_factory.mktemp(name)
        probe = run_dir / "probe.json"
        cfg = compose(
            "train",
            [
                f"experiment={name}",
                *SHORT,
                "+callbacks.probe._target_=tests.test_ddpm.WeightProbe",
                f"+callbacks.probe.path={probe}",
                # the conditional run trains, checkpoints and samples with the channels-last layout
                *(["model.net.channels_last=true"] if name == "ddpm_mnist_cfg" else []),
            ],
            output_dir=run_dir,
        )
        out[name] = {"dir": run_dir, "metrics": train(cfg), "probe": probe}
    return out


@pytest.mark.parametrize("name", ["ddpm_mnist", "ddpm_mnist_cfg"])
def test_short_run_writes_checkpoints_images_and_an_honest_fid(runs, name):
    run = runs[name]
    d = run["dir"]
    assert {"val/loss", "test/loss", "test/fid"} <= set(run["metrics"])
    assert torch.isfinite(torch.tensor(run["metrics"]["test/fid"]))
    body = json.loads((d / "metrics.json").read_text())
    fid = body["protocol"]["test/fid"]
    assert fid["num_generated"] == 12 and fid["num_real"] == 100 and fid["comparable"] is False
    assert "NOT COMPARABLE" in fid["note"] and len(fid["feature_network"]["sha256"]) == 64
    assert body["protocol"]["sampler"] == "ddim" and body["protocol"]["steps"] == 2
    assert body["data"]["comparable_with_papers"] is False
    grid = Image.open(d / "images" / "test" / "samples.png")
    assert grid.size[0] > 28 and len(list((d / "images" / "val" / "samples").glob("step_*.png"))) == 1


@pytest.mark.parametrize("name", ["ddpm_mnist", "ddpm_mnist_cfg"])
def test_checkpoint_holds_ema_weights_and_the_test_scores_them(runs, name):
    """Lightning's EMA callback writes the averaged weights as state_dict and the raw ones beside them; the
    fit-then-test in experiments.train must score the averaged ones (runtime/ema.py, fix 1)."""
    ckpt = torch.load(runs[name]["dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt and ckpt["suite"]["model_class"] == "lit_modules.ddpm.DDPM"
    ema, raw = _weight_sum(ckpt["state_dict"]), _weight_sum(ckpt["current_model_state"])
    assert ema != pytest.approx(raw, abs=1e-6)
    tested = json.loads(runs[name]["probe"].read_text())["sum"]
    assert tested == pytest.approx(ema, abs=1e-6) and tested != pytest.approx(raw, abs=1e-6)


def test_sample_entry_point_on_the_checkpoints(runs, tmp_path):
    ckpt = runs["ddpm_mnist"]["dir"] / "checkpoints" / "last.ckpt"
    cfg = compose(
        "sample",
        [f"ckpt_path={ckpt}", "sampler=dpmpp_2m", "steps=3", "num_samples=6", "seed=5", "batch_size=4"],
        output_dir=tmp_path / "s1",
    )
    sample(cfg)
    files = sorted(p.name for p in (tmp_path / "s1" / "samples" / "images").glob("*.png"))
    assert files == [f"seed_{s:07d}.png" for s in range(5, 11)]
    assert (tmp_path / "s1" / "samples" / "grid.png").is_file()
    body = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    assert body["protocol"]["sampler"] == "dpmpp_2m" and body["protocol"]["seeds"] == "5..10"
    # image seed 7 is the same whether it came in a batch of 4 (above) or alone
    alone = compose(
        "sample",
        [f"ckpt_path={ckpt}", "sampler=dpmpp_2m", "steps=3", "num_samples=1", "seed=7"],
        output_dir=tmp_path / "s2",
    )
    sample(alone)
    a = torch.from_numpy(
        np.array(Image.open(tmp_path / "s1" / "samples" / "images" / "seed_0000007.png"))
    ).int()
    b = torch.from_numpy(
        np.array(Image.open(tmp_path / "s2" / "samples" / "images" / "seed_0000007.png"))
    ).int()
    assert (a - b).abs().max() <= 1  # uint8 rounding of a float difference of ~1e-6 at most

    cond = runs["ddpm_mnist_cfg"]["dir"] / "checkpoints" / "last.ckpt"
    cfg = compose(
        "sample",
        [
            f"ckpt_path={cond}",
            "sampler=ddim",
            "steps=2",
            "num_samples=3",
            "guidance_scale=2.5",
            "class_label=7",
        ],
        output_dir=tmp_path / "s3",
    )
    sample(cfg)
    assert sorted(p.name for p in (tmp_path / "s3" / "samples" / "images").glob("*.png")) == [
        f"seed_{s:07d}_class7.png" for s in range(3)
    ]
    assert json.loads((tmp_path / "s3" / "metrics.json").read_text())["protocol"]["guidance_scale"] == 2.5


BAD = [
    (
        "ddpm_mnist",
        ["sampler=euler"],
        ValueError,
        "unknown sampler 'euler'; valid samplers: ancestral, ancestral_large, ddim, dpmpp_2m",
    ),
    (
        "ddpm_mnist",
        ["steps=1001"],
        ValueError,
        r"steps=1001: must be an integer between 1 and the model's training T=1000",
    ),
    ("ddpm_mnist", ["steps=0"], ValueError, r"steps=0: must be an integer between 1"),
    ("ddpm_mnist", ["guidance_scale=2"], ValueError, "unconditional model .* guidance does not apply"),
    (
        "ddpm_mnist_cfg",
        ["class_label=10"],
        ValueError,
        r"class_label=10 is out of range: valid labels are 0..9",
    ),
    (
        "ddpm_mnist",
        ["fid.enabled=true", "num_samples=100"],
        FIDProtocolError,
        "below the FID protocol's minimum of 500",
    ),
]


@pytest.mark.parametrize("name,overrides,error,message", BAD)
def test_bad_requests_fail_before_any_work(runs, tmp_path, name, overrides, error, message):
    ckpt = runs[name]["dir"] / "checkpoints" / "last.ckpt"
    cfg = compose("sample", [f"ckpt_path={ckpt}", *overrides], output_dir=tmp_path / "bad")
    with pytest.raises(error, match=message):
        sample(cfg)
    assert not (tmp_path / "bad" / "samples").exists()
    assert not (tmp_path / "bad" / "run_info.json").exists()  # refused before the run directory is written


def test_a_checkpoint_that_is_not_a_generative_model_is_refused(tmp_path):
    other = tmp_path / "vae.ckpt"
    record = "_target_: lit_modules.vae.VAE\n"
    suite = {"model_class": "lit_modules.vae.VAE", "experiment": "vae_mnist", "model_config": record}
    torch.save({"state_dict": {}, "suite": suite}, other)
    cfg = compose("sample", [f"ckpt_path={other}"], output_dir=tmp_path / "s")
    with pytest.raises(
        CheckpointMismatchError,
        match="not a checkpoint of a generative model .*: it was written by lit_modules.vae.VAE",
    ):
        sample(cfg)


def test_fid_below_the_minimum_is_refused_at_configuration(tmp_path):
    cfg = compose("train", ["experiment=ddpm_mnist", "model.fid_num_samples=100"], output_dir=tmp_path)
    import hydra

    with pytest.raises(Exception, match="below the FID protocol's minimum of 500") as err:
        hydra.utils.instantiate(cfg.model)
    assert isinstance(err.value.__cause__ or err.value, FIDProtocolError) or "FIDProtocolError" in repr(
        err.value
    )


@pytest.mark.parametrize("size,mults", [(28, (1, 2, 2)), (32, (1, 2, 2, 2))])
def test_unet_shapes(size, mults):
    net = UNet(
        image_size=size,
        base_channels=8,
        channel_mults=mults,
        num_res_blocks=1,
        attention_resolutions=(size // 2,),
        attention_heads=2,
        groups=4,
    )
    x = torch.randn(2, 1, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


def tiny_unet(num_classes: int | None = None) -> UNet:
    """The smallest UNet the unit tests build: 28x28, 8 base channels, two levels, no attention."""
    return UNet(
        image_size=28,
        base_channels=8,
        channel_mults=(1, 2),
        attention_resolutions=(),
        groups=4,
        num_classes=num_classes,
    )


def test_unet_rejects_bad_layouts_and_handles_the_null_class():
    with pytest.raises(ValueError, match="image_size=28 is not divisible by 2\\^3"):
        UNet(image_size=28, channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"attention_resolutions \[16\] are not feature-map sizes"):
        UNet(image_size=28, attention_resolutions=(16,))
    torch.manual_seed(0)
    net = tiny_unet(num_classes=10)
    for p in net.parameters():  # make the zero-initialised output layers non-trivial
        torch.nn.init.normal_(p, std=0.05)
    net.eval()  # no dropout
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    null = net(x, t, torch.tensor([10, 10]))
    assert torch.equal(net(x, t), null) and not torch.allclose(net(x, t, torch.tensor([3, 3])), null)
    with pytest.raises(ValueError, match="class labels given to an unconditional network"):
        tiny_unet()(x, t, torch.tensor([1, 2]))


@pytest.mark.slow
def test_stock_ema_callback_would_test_the_raw_weights(tmp_path):
    """The control for the EMA test above: with Lightning's own EMAWeightAveraging (2.6.6), fit-then-test in one
    Trainer reloads `current_model_state` over the averaged weights, so the test scores the raw weights."""
    probe = tmp_path / "probe.json"
    cfg = compose(
        "train",
        [
            "experiment=ddpm_mnist",
            *SHORT,
            "model.fid_num_samples=0",
            "~callbacks.ema",
            "+callbacks.ema._target_=pytorch_lightning.callbacks.EMAWeightAveraging",
            "+callbacks.ema.decay=0.9",
            "+callbacks.probe._target_=tests.test_ddpm.WeightProbe",
            f"+callbacks.probe.path={probe}",
        ],
        output_dir=tmp_path / "run",
    )
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    tested = json.loads(probe.read_text())["sum"]
    assert tested == pytest.approx(_weight_sum(ckpt["current_model_state"]), abs=1e-6)
    assert tested != pytest.approx(_weight_sum(ckpt["state_dict"]), abs=1e-6)


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_every_training_target_trains_and_samples(prediction_type):
    from lit_modules.ddpm import DDPM

    torch.manual_seed(0)
    net = tiny_unet()
    model = DDPM(net, optimizer=torch.optim.Adam, prediction_type=prediction_type, fid_num_samples=0)
    x = torch.rand(4, 1, 28, 28)
    loss = model.per_image_loss(x, torch.zeros(4, dtype=torch.long))
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    images = model.generate([0, 1], sampler="ancestral", steps=3)
    assert images.shape == (2, 1, 28, 28) and 0 <= images.min() and images.max() <= 1


def test_inception_feature_path_fails_clearly_without_torch_fidelity():
    from lit_modules.fid import FIDProtocol

    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed here")
    except ImportError:
        pass
    with pytest.raises(ModuleNotFoundError, match="fid.feature=inception needs torch-fidelity"):
        FIDProtocol(500, feature="inception").metric()


def test_upsampling_as_one_transposed_convolution_equals_nearest_then_conv3x3():
    """The UNet's upsampling layer computes conv3x3(nearest_x2(x)) as one stride-2 transposed convolution on x's
    grid (fewer multiply-adds); it must be the same function, with the same gradients, odd sizes included."""
    import torch.nn.functional as F

    from lit_modules.nets.unet import Upsample, nearest_up_conv3x3

    g = torch.Generator().manual_seed(0)
    for shape, layout in (
        ((2, 8, 7, 7), torch.contiguous_format),
        ((1, 4, 5, 6), torch.contiguous_format),
        # the channels-last path, with its own kernel gradient (_UpConvTranspose)
        ((2, 8, 7, 7), torch.channels_last),
        ((1, 4, 5, 6), torch.channels_last),
    ):
        x = torch.randn(*shape, generator=g, dtype=torch.float64).contiguous(memory_format=layout)
        x.requires_grad_(True)
        w = torch.randn(shape[1], shape[1], 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True)
        ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
        out = nearest_up_conv3x3(x, w, b)
        assert out.shape == ref.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((out * up).sum(), (x, w, b))
        grads_ref = torch.autograd.grad((ref * up).sum(), (x, w, b))
        for a, r in zip(grads, grads_ref):
            torch.testing.assert_close(a, r, rtol=0, atol=1e-11)
    layer = Upsample(4).double()
    x = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64)
    ref = layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)


def test_channels_last_unet_is_the_same_function_with_the_same_gradients():
    """`channels_last=True` only lays the net out differently: same state_dict keys, the same outputs (returned
    channel-first) and parameter gradients as the default layout, through every layer kind it reroutes (1x1 skip
    convolutions and attention projections as matrix products, the upsampling's kernel gradient)."""
    kwargs = dict(
        image_size=28, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(7, 14), attention_heads=2, groups=4, num_classes=3, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = UNet(**kwargs).double()  # float64: equal to rounding, so a wrong index or stride cannot hide
    for p in ref.parameters():  # zero-initialised output convs would hide their inputs' gradients
        torch.nn.init.normal_(p, std=0.1)
    net = UNet(**kwargs, channels_last=True).double()
    assert list(net.state_dict()) == list(ref.state_dict())
    net.load_state_dict(ref.state_dict())
    conv = net.down[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64), torch.tensor([0, 2, 3])
    t, up = torch.tensor([0, 500, 999]), torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    out_ref, out = ref(x, t, y), net(x, t, y)
    assert out.is_contiguous() and out.shape == x.shape
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    (out_ref * up).sum().backward()
    (out * up).sum().backward()
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        scale = b.grad.abs().max().item()
        assert scale > 0 and (a.grad - b.grad).abs().max().item() <= 1e-10 * scale, name
    ref32, net32 = copy.deepcopy(ref).float(), copy.deepcopy(net).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps torch's transposed-conv gradient
        a, b = ref32(x.float(), t, y), net32(x.float(), t, y)
    assert b.dtype == torch.bfloat16 and (a.float() - b.float()).abs().max() <= 0.02 * a.abs().max()
    net32.zero_grad()
    b.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net32.parameters())
    with pytest.raises(AssertionError):  # the comparison can fail: a perturbed weight changes the output
        with torch.no_grad():
            net.up[-1].skip.weight.add_(0.1)
        torch.testing.assert_close(net(x, t, y), out_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_decay_warm_up_through_torch_averaged_model(warmup):
    """The EMA callback's average as torch's AveragedModel applies it (first update copies, then avg_fn with the
    number averaged so far): d_n = min(decay, (1 + n) / (10 + n)) with warm-up (diffusers' EMAModel), d_n = decay
    without. The initial weights' share after 2,000 updates is the product of the decays: ~7e-24 with warm-up,
    0.999^1999 = 13.5 % without (what a short CPU run would sample from)."""
    from functools import partial

    from torch.optim.swa_utils import AveragedModel

    from runtime.ema import EMA, ema_update

    net = torch.nn.Linear(1, 1, bias=False).double()
    avg = AveragedModel(net, avg_fn=partial(ema_update, decay=0.999, warmup=warmup), use_buffers=True)
    assert EMA(decay=0.999, warmup=warmup)._kwargs["avg_fn"].keywords == {"decay": 0.999, "warmup": warmup}
    n_updates = 2000
    want, share = 0.0, 1.0
    for n in range(n_updates):
        value = (
            1.0 if n == 0 else 0.0
        )  # the initial weight 1, then 0: the average is the initial weight's share
        with torch.no_grad():
            net.weight.fill_(value)
        avg.update_parameters(net)
        if n == 0:
            want = value
        else:
            d = min(0.999, (1 + n) / (10 + n)) if warmup else 0.999
            want, share = d * want + (1 - d) * value, share * d
    got = float(avg.module.weight)
    assert got == pytest.approx(want, rel=1e-9) and got == pytest.approx(share, rel=1e-9)
    if warmup:
        assert got < 1e-5
    else:
        assert got == pytest.approx(0.999**1999, rel=1e-9) and got > 0.13


def test_label_dropout_uses_the_null_class_that_guidance_samples_with():
    """Classifier-free guidance trains the unconditional branch on the null class `num_classes` with
    probability cond_drop_prob (Ho & Salimans 2022, Algorithm 1) and samples it with the same index (eq. 6):
    a dropped label that went to another index, or a rate off by more than 4 standard errors, would fail."""
    from lit_modules.ddpm import DDPM

    net = tiny_unet(num_classes=10)
    model = DDPM(net, optimizer=torch.optim.Adam, cond_drop_prob=0.1, fid_num_samples=0)
    y = torch.arange(200_000) % 10
    dropped = model.drop_labels(y, torch.Generator().manual_seed(0))
    changed = dropped != y
    assert set(dropped[changed].tolist()) == {10} and torch.equal(dropped[~changed], y[~changed])
    assert abs(float(changed.float().mean()) - 0.1) < 4 * (0.1 * 0.9 / len(y)) ** 0.5
    calls = []

    def net_fn(x, t, labels):
        calls.append(None if labels is None else labels.tolist())
        return torch.zeros_like(x)

    model.conditioned(net_fn, torch.tensor([3, 7]), guidance_scale=2.0)(
        torch.zeros(2, 1, 28, 28), torch.tensor([5, 5])
    )
    assert calls == [[3, 7, 10, 10]]  # one batched call: conditional half, then the null class


def test_learning_rate_warm_up_constant_then_cool_down_and_a_resume_that_adds_it():
    """lr_factor: warm-up (step + 1) / W, 1, then linear to 0 over the decay; the LambdaLR a checkpoint restores
    keeps only the step, so a run resumed with `model.lr_decay_start` set decays from the restored step."""
    from core.errors import ConfigError
    from lit_modules.ddpm import DDPM
    from lit_modules.generative import lr_factor

    assert [lr_factor(s, 4) for s in (0, 1, 3, 100)] == [0.25, 0.5, 1.0, 1.0]
    assert [lr_factor(s, 4, 10, 5) for s in (9, 10, 12, 14, 20)] == pytest.approx([1.0, 0.8, 0.4, 0.0, 0.0])

    def build(**kw):
        net = tiny_unet()
        opt = functools.partial(torch.optim.SGD, lr=0.1)
        return DDPM(net, optimizer=opt, warmup_steps=4, fid_num_samples=0, **kw)

    def lrs(model, n, states=None):
        cfg = model.configure_optimizers()
        opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        if states is not None:  # what Lightning restores from a checkpoint: both states, no scheduler step
            opt.load_state_dict(states[0])
            sched.load_state_dict(states[1])
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out, (opt.state_dict(), sched.state_dict())

    constant, states = lrs(build(), 8)
    assert constant == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1])
    # steps 8..12: step 8 runs at the rate the checkpoint's optimizer holds, the new factor from step 9 on
    resumed, _ = lrs(build(lr_decay_start=8, lr_decay_steps=4), 5, states)
    assert resumed == pytest.approx([0.1, 0.05, 0.025, 0.0, 0.0])
    with pytest.raises(ConfigError, match="model.lr_decay_steps=0: expected a positive number"):
        build(lr_decay_start=100)
    with pytest.raises(ConfigError, match="model.lr_decay_start=-1"):
        build(lr_decay_start=-1, lr_decay_steps=10)
