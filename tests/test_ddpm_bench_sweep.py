"""The DDPM benchmark (needs the bench extra) and the sampler sweep (Hydra multirun) on a short run's checkpoint."""

import json

import pytest

from experiments.train import train
from runtime.config import compose
from tests.conftest import run_cli
from tests.test_ddpm import SHORT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddpm")
    train(
        compose(
            "train", ["experiment=ddpm_mnist", *SHORT, "model.fid_num_samples=0", "test=false"], output_dir=d
        )
    )
    return d / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_sampler_sweep_writes_table_and_plot(ckpt, tmp_path):
    sweep_dir = tmp_path / "sweep"
    res = run_cli(
        "sample",
        f"ckpt_path={ckpt}",
        "sweep=ddpm_samplers",
        "sampler=ddim,dpmpp_2m",
        "steps=1,2",
        "num_samples=8",
        "fid.allow_below_minimum=true",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    table = (sweep_dir / "fid_vs_steps.md").read_text()
    assert "| ddim |" in table and "| dpmpp_2m |" in table and "1 steps | 2 steps" in table
    assert "comparable: False" in table and (sweep_dir / "fid_vs_steps.png").stat().st_size > 1000
    jobs = json.loads((sweep_dir / "fid_vs_steps.json").read_text())
    assert len(jobs) == 4 and {(j["sampler"], j["steps"]) for j in jobs} == {
        ("ddim", 1),
        ("ddim", 2),
        ("dpmpp_2m", 1),
        ("dpmpp_2m", 2),
    }
    assert (sweep_dir / "sweep_summary.md").is_file()  # the suite's own multirun summary ran too


@pytest.mark.slow
def test_ddpm_benchmark_runs(ckpt, tmp_path, capsys):
    pytest.importorskip("diffusers", reason="the DDPM benchmark needs the bench extra (diffusers)")
    from experiments.benchmark import main

    argv = [
        "ddpm",
        "--ckpt",
        str(ckpt),
        "--steps",
        "1",
        "--rounds",
        "1",
        "--batch",
        "4",
        "--sample-batch",
        "2",
        "--speed-samplers",
        "ddim:2",
        "--fid-samplers",
        "",
        "--bf16",
        "on",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    res = json.loads((tmp_path / "benchmark_ddpm.json").read_text())
    assert abs(res["params"]["diffusers"] - res["params"]["suite"]) / res["params"]["suite"] <= 0.10
    assert res["train_ratio"] > 0 and res["train_ratio_bf16"] > 0 and res["samples_per_second"]["ddim-2"] > 0
    assert res["bf16_skipped"] is None and res["cpu_capability"]
    assert res["train_ratio_channels_last"] > 0 and res["train_ratio_channels_last_both"] > 0
    assert {"suite UNet, channels_last", "diffusers UNet2DModel, channels_last"} <= set(res["train_step_s"])
    out = capsys.readouterr().out
    assert "training-step time ratio suite/diffusers" in out and "fp32 channels-last: suite" in out
    # the peak a step is compared against is the faster of the two GEMM libraries, both printed
    for precision in ("fp32", "bf16"):
        assert res["gemm_peak_gflops"][precision] == max(res["gemm_probes_gflops"][precision].values())
        assert f"measured GEMM peak, {precision}:" in out
    assert res["flops_ratio"] == res["flops_per_step"]["suite"] / res["flops_per_step"]["diffusers"]
    assert f"FLOPs per step suite/diffusers: {res['flops_ratio']:.3f}" in out
