"""The samplers against diffusers' schedulers, step for step, on the same model function and the same noise.

Needs the `bench` extra (diffusers); skipped without it. The model function is the exact eps-predictor of a
Gaussian data distribution (tests/test_samplers.py), so trajectories are bounded and non-trivial. diffusers
keeps its schedule in float32 and ours is float64, hence a tolerance instead of equality; the largest
difference seen is printed (run with -s). Note: diffusers' DDIM steps to `t - T // steps` whatever the
spacing, so the comparison uses step counts that divide T, where that equals the next visited timestep.
"""

import pytest
import torch

from lit_modules.diffusion import PerImageNoise, ddim_loop, dpmpp_2m_loop, timestep_schedule
from tests.test_samplers import ABAR, SHAPE, exact_eps

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (pip install -e '.[bench]' for the cross-check)"
)

TOL = 1e-5  # largest seen: 1.9e-6 (float32 schedule in diffusers vs float64 here)
BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def _trace(loop, **kwargs):
    trace = []
    loop(callback=lambda i, t, x: trace.append((t, x.clone())), **kwargs)
    return trace


@pytest.mark.parametrize(
    "steps,spacing,eta", [(50, "trailing", 0.0), (10, "leading", 0.0), (20, "trailing", 1.0)]
)
def test_ddim_matches_diffusers_step_for_step(steps, spacing, eta):
    sched = diffusers.DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing, prediction_type="epsilon"
    )
    sched.set_timesteps(steps)
    ours_ts = timestep_schedule(1000, steps, spacing)
    assert sched.timesteps.tolist() == ours_ts
    model = exact_eps()
    seeds = list(range(6))
    noise_ours, noise_theirs = PerImageNoise(seeds, SHAPE), PerImageNoise(seeds, SHAPE)
    x_ours, x = noise_ours(), noise_theirs()
    ours = _trace(
        ddim_loop,
        denoiser=model,
        x=x_ours,
        timesteps=ours_ts,
        alphas_cumprod=ABAR,
        noise=noise_ours,
        eta=eta,
        clip_x0=False,
    )
    worst = 0.0
    for (t, x_ref), t_d in zip(ours, sched.timesteps):
        eps = model(x, torch.full((len(seeds),), int(t_d)))
        step_noise = noise_theirs() if eta > 0 and t_d != sched.timesteps[-1] else None
        x = sched.step(eps, int(t_d), x, eta=eta, variance_noise=step_noise).prev_sample
        worst = max(worst, (x - x_ref).abs().max().item())
        assert t == int(t_d)
    print(f"DDIM {steps} steps ({spacing}, eta={eta}): largest |ours - diffusers| = {worst:.2e}")
    assert worst < TOL


@pytest.mark.parametrize("steps", [20, 10])
def test_dpm_solver_pp_2m_matches_diffusers_step_for_step(steps):
    sched = diffusers.DPMSolverMultistepScheduler(
        **BETAS,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    sched.set_timesteps(steps)
    ours_ts = timestep_schedule(1000, steps, "trailing")
    assert sched.timesteps.tolist() == ours_ts
    model = exact_eps()
    x = PerImageNoise(range(6), SHAPE)()
    ours = _trace(
        dpmpp_2m_loop, denoiser=model, x=x.clone(), timesteps=ours_ts, alphas_cumprod=ABAR, clip_x0=False
    )
    worst = 0.0
    for (t, x_ref), t_d in zip(ours, sched.timesteps):
        assert t == int(t_d)
        x = sched.step(model(x, torch.full((6,), int(t_d))), t_d, x).prev_sample
        worst = max(worst, (x - x_ref).abs().max().item())
    print(f"DPM-Solver++(2M) {steps} steps: largest |ours - diffusers| = {worst:.2e}")
    assert worst < TOL
