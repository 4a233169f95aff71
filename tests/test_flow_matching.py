"""Flow matching (lit_modules/flow/, lit_modules/flow_matching.py) on Gaussian data, whose marginal velocity and
ODE map are known in closed form; the samplers' orders, per-image seeds, guidance, refusals; the Lightning
module and its configs.

For x_1 ~ N(mu, s^2) per pixel and x_0 ~ N(0, 1), x_t = (1 - t) x_0 + t x_1 is Gaussian with mean t mu and
variance sigma_t^2 = (1 - t)^2 + t^2 s^2, and u = x_1 - x_0 has Cov(u, x_t) = t s^2 - (1 - t), so
  v(x, t) = E[u | x_t = x] = mu + (t s^2 - (1 - t)) / sigma_t^2 (x - t mu)            (linear in x)
and the ODE dx/dt = v maps x_0 to x_t = t mu + sigma_t x_0 (d/dt of it is v), so to mu + s x_0 at t = 1.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.errors import ConfigError
from lit_modules.flow import (
    SAMPLERS,
    cfm_loss,
    euler,
    heun,
    interpolate,
    sample,
    sample_time,
    target_velocity,
    time_grid,
)
from lit_modules.sampling import PerImageNoise, check_options, check_sampler_name, guided

SHAPE = (1, 8, 8)
# per-pixel data distribution N(MU, S^2), deliberately not standard (S down to 0.3: a curved, stiff-ish flow)
MU = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64).reshape(SHAPE)
S = torch.linspace(0.3, 1.0, 64, dtype=torch.float64).reshape(SHAPE)


def slope(t, s):
    """d v / d x of the exact field: Cov(u, x_t) / Var(x_t)."""
    return (t * s**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s**2)


def exact_velocity(mu=MU, s=S):
    def v(x, t):
        t = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return mu + slope(t, s) * (x - t * mu)

    return v


def exact_map(x0, mu=MU, s=S):
    return mu + s * x0


def noise(n, seed=0):
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------- the path
def test_path_end_points_and_target_is_its_derivative():
    x0, x1 = noise(4, 1), noise(4, 2)
    assert torch.equal(interpolate(x0, x1, torch.zeros(4)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(4)), x1)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    h = 1e-6
    finite_difference = (interpolate(x0, x1, t + h) - interpolate(x0, x1, t - h)) / (2 * h)
    assert torch.allclose(finite_difference, target_velocity(x0, x1), atol=1e-8)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_training_target_minimiser_is_the_closed_form_velocity(t):
    """Least squares of u = x_1 - x_0 on (1, x_t) over Monte-Carlo pairs (the minimiser of the CFM loss over
    affine fields) recovers the exact E[u | x_t]: slope Cov/Var and intercept mu - slope t mu."""
    n, mu, s = 200_000, 0.7, 0.4
    g = torch.Generator().manual_seed(int(t * 100))
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x1 = mu + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt = interpolate(x0, x1, torch.full((n,), t))
    u = target_velocity(x0, x1)
    design = torch.cat([torch.ones_like(xt), xt], dim=1)
    intercept, b = torch.linalg.lstsq(design, u).solution.flatten().tolist()
    b_exact = slope(t, s)
    assert b == pytest.approx(b_exact, abs=0.01)
    assert intercept == pytest.approx(mu - b_exact * t * mu, abs=0.01)

    # the CFM loss at the exact field: its gradient in (intercept, slope) vanishes and its value is the
    # irreducible E Var(u | x_t) = Var(u) - Cov(u, x_t)^2 / Var(x_t)
    params = torch.tensor([mu - b_exact * t * mu, b_exact], dtype=torch.float64, requires_grad=True)
    loss = cfm_loss(params[0] + params[1] * xt, x0, x1).mean()
    loss.backward()
    assert params.grad.abs().max().item() < 0.02
    var_xt = (1 - t) ** 2 + t**2 * s**2
    floor = (1 + s**2) - (t * s**2 - (1 - t)) ** 2 / var_xt
    assert loss.item() == pytest.approx(floor, rel=0.02)
    # and a worse field has a larger loss
    assert cfm_loss(params[0] + (params[1] + 0.2) * xt, x0, x1).mean().item() > loss.item() + 0.01


def test_cfm_loss_is_the_per_image_mean_squared_error():
    x0, x1, v = noise(3, 1), noise(3, 2), noise(3, 3)
    expected = ((v - (x1 - x0)) ** 2).flatten(1).mean(1)
    assert torch.allclose(cfm_loss(v, x0, x1).double(), expected, atol=1e-6)
    assert cfm_loss(x1 - x0, x0, x1).abs().max().item() < 1e-6


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_time(100_000, "uniform", g)
    assert t.shape == (100_000,) and 0 <= t.min() and t.max() < 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.01) and t.var().item() == pytest.approx(
        1 / 12, abs=0.005
    )
    t = sample_time(100_000, "logit_normal", g, loc=0.5, scale=0.8)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.02)
    assert logit.std().item() == pytest.approx(0.8, abs=0.02)
    with pytest.raises(ConfigError, match="logit_normal"):
        sample_time(4, "lognormal")
    with pytest.raises(ConfigError, match="scale"):
        sample_time(4, "logit_normal", scale=0.0)


def test_time_grid_uniform_and_shifted():
    assert time_grid(4) == [0.0, 0.25, 0.5, 0.75, 1.0]
    grid = time_grid(10, shift=3.0)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and all(b > a for a, b in zip(grid, grid[1:]))
    # SD3's shift on the noise level sigma = 1 - t: sigma' = a sigma / (1 + (a - 1) sigma)
    for k, t in enumerate(grid):
        sigma = 1 - k / 10
        assert 1 - t == pytest.approx(3 * sigma / (1 + 2 * sigma), abs=1e-12)
    assert time_grid(2, shift=3.0)[1] == pytest.approx(0.25)  # more of the grid near the noise end
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="steps"):
            time_grid(bad)
    with pytest.raises(ConfigError, match="time_shift"):
        time_grid(10, shift=0.0)


# ------------------------------------------------------------------------------------------- samplers
def test_heun_recovers_the_exact_ode_map():
    x0 = noise(16)
    x1 = heun(exact_velocity(), x0, time_grid(50))
    # measured: max error 1.4e-3 at 50 steps (S = 0.3 pixels are the stiffest)
    assert (x1 - exact_map(x0)).abs().max().item() < 3e-3


def _order(solver, n):
    x0 = noise(16)
    err = [
        (solver(exact_velocity(), x0, time_grid(k)) - exact_map(x0)).abs().max().item() for k in (n, 2 * n)
    ]
    return math.log2(err[0] / err[1])


def test_euler_is_first_order_and_heun_second_order():
    # measured orders from 20 -> 40 steps: Euler 0.98, Heun 2.06
    assert 0.85 < _order(euler, 20) < 1.15
    assert 1.8 < _order(heun, 20) < 2.3


def test_sampler_network_evaluations_and_callback():
    calls, seen = [], []

    def counting(x, t):
        calls.append(t[0].item())
        return exact_velocity()(x, t)

    heun(counting, noise(2), time_grid(5), callback=lambda i, t, x: seen.append((i, t)))
    assert len(calls) == 2 * 5 - 1  # last step Euler (EDM Alg. 1)
    assert seen == [(i, (i + 1) / 5) for i in range(5)]
    calls.clear()
    euler(counting, noise(2), time_grid(5))
    assert calls == [k / 5 for k in range(5)]  # never evaluated at t = 1
    assert SAMPLERS["heun"].evals_per_step == 2 and SAMPLERS["euler"].evals_per_step == 1
    assert not any(s.stochastic for s in SAMPLERS.values())


def test_sample_uses_per_image_seeds():
    v = exact_velocity()
    batch = sample(v, SHAPE, [3, 4, 5], sampler="heun", steps=8, dtype=torch.float64)
    alone = sample(v, SHAPE, [4], sampler="heun", steps=8, dtype=torch.float64)
    assert torch.equal(batch[1], alone[0])  # an image depends only on its seed
    reordered = sample(v, SHAPE, [5, 4], sampler="heun", steps=8, dtype=torch.float64)
    assert torch.equal(reordered[1], alone[0])
    assert not torch.allclose(batch[0], batch[1])
    # x_0 is the first draw of the seed's own generator, then the sampler over the grid
    x0 = PerImageNoise([4], SHAPE, dtype=torch.float64).noise()
    assert torch.equal(alone, heun(v, x0, time_grid(8)))
    shifted = sample(v, SHAPE, [4], sampler="euler", steps=8, time_shift=2.0, dtype=torch.float64)
    assert torch.equal(shifted, euler(v, x0, time_grid(8, 2.0)))


def test_guidance_on_the_velocity():
    mus = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    calls = []

    def conditional(x, t, y):  # class c: data N(mus[c], 0.5^2); the null class (3): N(0, 1)
        calls.append(len(x))
        mu = torch.where(y == 3, torch.zeros_like(mus[0]), mus[y.clamp(max=2)]).view(-1, 1, 1, 1)
        s = torch.where(y == 3, 1.0, 0.5).to(x.dtype).view(-1, 1, 1, 1)
        return exact_velocity(mu, s)(x, t)

    labels = torch.tensor([0, 2])
    x, t = noise(2), torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.equal(guided(conditional, 0.0, labels, 3)(x, t), conditional(x, t, labels))
    calls.clear()
    w = 2.0
    out = guided(conditional, w, labels, 3)(x, t)
    assert calls == [4]  # one batched call of 2B
    expected = (1 + w) * conditional(x, t, labels) - w * conditional(x, t, torch.full((2,), 3))
    assert torch.allclose(out, expected)


def test_unknown_sampler_or_option_is_refused():
    v = exact_velocity()
    with pytest.raises(ConfigError, match="ddim.*valid samplers: euler, heun"):
        check_sampler_name(SAMPLERS, "ddim")
    with pytest.raises(ConfigError, match="eta.*heun"):
        check_options(SAMPLERS["heun"], {"eta": 0.0})
    with pytest.raises(ConfigError, match="unknown sampler"):
        sample(v, SHAPE, [0], sampler="dpmpp_2m")
    with pytest.raises(ConfigError, match="eta"):
        sample(v, SHAPE, [0], sampler="euler", eta=1.0)
    with pytest.raises(ConfigError, match="increase"):
        euler(v, noise(1), [0.0, 0.5, 0.5, 1.0])


# ------------------------------------------------------------------------------------------- the module
class GaussianVelocityNet(torch.nn.Module):
    """A stand-in network: the exact velocity of N(mu, s^2) data (in the module's [-1, 1] space), reading the
    time as the module feeds it (1000 t); class c shifts the mean by c / 10, the null class has mean 0."""

    def __init__(self, num_classes=None, mu=0.2, s=0.3):
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = 1, 4, num_classes
        self.mu, self.s = mu, s
        self.times = []
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # an optimiser needs a parameter

    def forward(self, x, t, y=None):
        self.times.append(t.detach().clone())
        mu = torch.full((len(x), 1, 1, 1), self.mu, dtype=x.dtype)
        if y is not None:
            mu = mu + torch.where(y == self.num_classes, -self.mu, y / 10).to(x.dtype).view(-1, 1, 1, 1)
        return exact_velocity(mu, torch.tensor(self.s, dtype=x.dtype))(x, t / 1000.0)


def flow_module(net, **kwargs):
    from lit_modules.flow_matching import FlowMatching

    kwargs.setdefault("fid_num_samples", 0)
    return FlowMatching(net, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3), **kwargs)


def test_module_generates_the_exact_ode_map_in_the_data_range():
    net = GaussianVelocityNet()
    model = flow_module(net, sampler="heun", steps=50)
    images = model.generate([7, 8])
    x0 = PerImageNoise([7, 8], (1, 4, 4)).noise().double()
    expected = ((net.mu + net.s * x0 + 1) / 2).clamp(0, 1).float()
    assert images.shape == (2, 1, 4, 4) and images.min() >= 0 and images.max() <= 1
    assert (images - expected).abs().max().item() < 2e-3
    # the network saw 1000 t, from 0 to 1000 * 49/50 (the last Heun step is Euler: no evaluation at t = 1)
    seen = torch.cat(net.times)
    assert seen.min().item() == 0.0 and seen.max().item() == pytest.approx(980.0)
    # an image depends only on its seed; generate restores train mode
    model.train()
    assert torch.equal(model.generate([8], steps=10)[0], model.generate([5, 8], steps=10)[1])
    assert model.training


def test_module_guidance_and_labels():
    net = GaussianVelocityNet(num_classes=10)
    model = flow_module(net, steps=20)
    assert model.num_classes == 10 and model.sampling_defaults()["guidance_scale"] == 0.0
    labels = torch.tensor([3, 9])
    plain = model.generate([1, 2], class_labels=labels, guidance_scale=0.0)
    x0 = PerImageNoise([1, 2], (1, 4, 4)).noise().double()
    cond_mean = net.mu + labels.double().view(-1, 1, 1, 1) / 10
    assert (plain - ((cond_mean + net.s * x0 + 1) / 2).clamp(0, 1)).abs().max().item() < 5e-3
    # guidance w on the velocity of two Gaussians with one s: v~ is the velocity of mean (1 + w) mu_c - w mu_null
    w = 1.5
    guided_images = model.generate([1, 2], class_labels=labels, guidance_scale=w)
    guided_mean = (1 + w) * cond_mean - w * 0.0
    assert (guided_images - ((guided_mean + net.s * x0 + 1) / 2).clamp(0, 1)).abs().max().item() < 5e-3
    one_label = model.generate([1], class_label=3, guidance_scale=0.0)
    assert torch.equal(one_label[0], plain[0])


def test_module_refuses_bad_requests():
    model = flow_module(GaussianVelocityNet())
    with pytest.raises(ConfigError, match="ddim.*valid samplers: euler, heun"):
        model.generate([0], sampler="ddim")
    with pytest.raises(ConfigError, match="eta"):
        model.generate([0], eta=0.5)
    with pytest.raises(ConfigError, match="guidance_scale"):
        model.generate([0], guidance_scale=2.0)
    with pytest.raises(ConfigError, match="time_shift"):
        model.generate([0], time_shift=-1.0)
    with pytest.raises(ConfigError, match="steps"):
        model.generate([0], steps=0)
    conditional = flow_module(GaussianVelocityNet(num_classes=10))
    with pytest.raises(ConfigError, match="class_label=10"):
        conditional.generate([0], class_label=10)
    with pytest.raises(ConfigError, match="time_sampling"):
        flow_module(GaussianVelocityNet(), time_sampling="beta")
    with pytest.raises(ConfigError, match="sampler"):
        flow_module(GaussianVelocityNet(), sampler="ddim")
    with pytest.raises(ConfigError, match="guidance_scale"):
        flow_module(GaussianVelocityNet(), guidance_scale=1.0)  # unconditional: no guidance
    with pytest.raises(ConfigError, match="time_shift"):
        flow_module(GaussianVelocityNet(), time_shift=0)


def test_module_loss_is_the_cfm_loss_and_training_lowers_it():
    from lit_modules.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(
        8, 1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), groups=4
    )
    model = flow_module(net)
    x = torch.rand(1, 1, 8, 8).expand(8, 1, 8, 8).contiguous()  # one image: the exact velocity is learnable
    loss = model.per_image_loss(x, None, torch.Generator().manual_seed(3))
    # a fresh UNet outputs 0 (zero-initialised output conv): the loss is E ||x_1 - x_0||^2 per pixel
    g = torch.Generator().manual_seed(3)
    t = sample_time(8, "uniform", g)
    x0 = torch.randn(x.shape, generator=g)
    assert torch.allclose(loss, ((2 * x - 1 - x0) ** 2).flatten(1).mean(1), atol=1e-6)
    assert interpolate(x0, 2 * x - 1, t).shape == x.shape
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(25):
        opt.zero_grad()
        model.per_image_loss(x, None, torch.Generator().manual_seed(100 + step)).mean().backward()
        opt.step()
    after = model.per_image_loss(x, None, torch.Generator().manual_seed(3))
    assert after.mean().item() < 0.6 * loss.mean().item(), (loss.mean().item(), after.mean().item())


def test_configs_compose(compose_cfg):
    cfg = compose_cfg("train", ["experiment=flow_mnist_cfg"])
    assert cfg.model._target_ == "lit_modules.flow_matching.FlowMatching"
    assert (cfg.model.net.num_classes, cfg.model.net.in_channels, cfg.model.net.image_size) == (10, 1, 28)
    assert cfg.model.fid_domain == "mnist" and cfg.callbacks.ema._target_ == "runtime.ema.EMA"
    cfg = compose_cfg("train", ["experiment=flow_mnist"])
    assert cfg.model.net.num_classes is None and cfg.model.sampler == "heun"


# ------------------------------------------------------------------------------------------- end to end
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.steps=2",
    "model.num_image_samples=10",
    "model.image_every_n_epochs=1",
    "model.net.base_channels=8",
    "expensive_metrics=false",
    "logger=none",
]


@pytest.mark.slow
def test_train_then_sample_a_conditional_checkpoint(tmp_path):
    from experiments.sample import sample as sample_command
    from experiments.train import train
    from runtime.config import compose

    run_dir = tmp_path / "train"
    metrics = train(compose("train", ["experiment=flow_mnist_cfg", *SHORT], output_dir=run_dir))
    assert math.isfinite(metrics["test/loss"]) and metrics["test/loss"] > 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run_dir / "images" / "test" / "samples.png").is_file()

    request = ["sampler=euler", "steps=3", "num_samples=3", "guidance_scale=2", "class_label=7"]
    out = tmp_path / "sample"
    sample_command(
        compose("sample", [f"ckpt_path={ckpt}", *request, "+sampling.time_shift=2"], output_dir=out)
    )
    assert sorted(p.name for p in (out / "samples" / "images").glob("*.png")) == [
        f"seed_{s:07d}_class7.png" for s in range(3)
    ]
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert (protocol["sampler"], protocol["steps"], protocol["time_shift"]) == ("euler", 3, 2)
    assert protocol["guidance_scale"] == 2 and protocol["weights"] == "EMA (checkpoint state_dict)"
    # the checkpoint's defaults (heun) serve a request without sampler / steps
    sample_command(
        compose("sample", [f"ckpt_path={ckpt}", "num_samples=2"], output_dir=tmp_path / "defaults")
    )
    protocol = json.loads((tmp_path / "defaults" / "metrics.json").read_text())["protocol"]
    assert (protocol["sampler"], protocol["steps"]) == ("heun", 2)
    for bad, match in (("sampler=ddim", "ddim"), ("+sampling.eta=0.5", "eta"), ("steps=0", "steps")):
        with pytest.raises(ConfigError, match=match):
            sample_command(compose("sample", [f"ckpt_path={ckpt}", bad], output_dir=tmp_path / "bad"))
