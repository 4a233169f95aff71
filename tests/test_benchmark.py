"""The benchmark harness runs both sides on the same model, data order and seed: their weights must agree."""

import json
import os

import torch

from experiments.benchmark import main


def test_vae_benchmark_sides_are_the_same_computation(tmp_path, capsys):
    assert (
        main(
            [
                "vae",
                "--epochs",
                "2",
                "--rounds",
                "1",
                "--logger",
                "none",
                "--nll-samples",
                "4",
                "--output-dir",
                str(tmp_path),
                "data.batch_size=500",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "benchmark_vae.json").read_text())
    assert res["weights_identical"] is True and res["delta_elbo"] == 0.0
    assert res["ratio"] > 0 and len(res["rounds"][0]["suite"]) == 2 and len(res["rounds"][0]["plain"]) == 2
    # the headline compares equal work: the plain loop writing what the suite's last.ckpt holds
    assert res["ratio_fastest"] == res["fastest_epoch"]["suite"] / res["fastest_epoch"]["plain_ckpt"]
    # the same comparison in CPU seconds: per epoch, positive, at most wall time x cores (plus clock-tick slack)
    assert len(res["rounds"][0]["suite_cpu"]) == 2 and len(res["rounds"][0]["plain_ckpt_cpu"]) == 2
    for side in ("suite", "plain", "plain_ckpt"):
        for wall, cpu in zip(res["rounds"][0][side], res["rounds"][0][f"{side}_cpu"]):
            assert 0 < cpu <= wall * os.cpu_count() + 0.05
    assert res["cpu_ratio"] == res["epoch_cpu"]["suite"] / res["epoch_cpu"]["plain_ckpt"]
    # the headline pairs each suite epoch with the plain epoch (with checkpoint) run just before it
    rd = res["rounds"][0]
    assert len(rd["paired_plain_ckpt"]) == 2 and res["paired_ratios"] == [rd["suite"][1] / rd["paired_plain_ckpt"][1]]
    assert res["paired_cpu_ratio"] == rd["suite_cpu"][1] / rd["paired_plain_ckpt_cpu"][1]
    for path in (tmp_path / "plain_last.ckpt", tmp_path / "paired" / "plain_last.ckpt"):  # alone, paired
        plain_ckpt = torch.load(path, weights_only=False)
        assert set(plain_ckpt) == {"epoch", "state_dict", "optimizer_states", "rng_states"}
        assert plain_ckpt["epoch"] == 1
    out = capsys.readouterr().out
    assert "time ratio suite/plain at equal work, paired epochs" in out and "target <= 1.05" in out and "CPU-time ratio at equal work" in out
    # start-up: a fresh `experiments.train ... debug=fdr` reached its first batch, after more than `import torch`
    assert res["startup"]["first_batch_s"] > res["startup"]["import_torch_s"] > 0
    assert "to its first training batch" in out
    # Lightning's floor: a bare Trainer on the same loss, automatic and manual optimisation, same weights as the
    # plain loop it is paired with (so the ratio compares equal work)
    for mode in ("automatic", "manual"):
        floor = res["lightning_floor"][mode]
        assert floor["weights_identical"] is True and len(floor["wall"]) == len(floor["plain_wall"]) == 2
        assert floor["ratios"] == [floor["wall"][1] / floor["plain_wall"][1]]
        assert not (tmp_path / f"floor_{mode}" / "plain" / "plain_last.ckpt").exists()  # plain side: no ckpt
    assert "Lightning's own floor" in out


def test_cpu_seconds_counts_this_process_and_its_live_children():
    import subprocess
    import sys
    import time

    from experiments.benchmarks.common import cpu_seconds

    start = cpu_seconds()
    t = time.process_time()
    while time.process_time() - t < 0.3:  # this process's own work: 0.3 CPU s, however busy the machine
        pass
    assert cpu_seconds() - start >= 0.25
    before = cpu_seconds()
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\nprint('done', flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"  # the child has used >= 0.5 CPU s and is still alive
        used = cpu_seconds() - before
    finally:
        child.kill()
        child.wait()
    assert used >= 0.5  # the child's CPU (clock ticks) counted while this process only waited for it


def test_ddpm_benchmark_sampler_lists_are_checked_before_any_work(capsys):
    import pytest

    from experiments.benchmarks.ddpm import sampler_list

    parsed = sampler_list("ancestral:1000, ddim:50,dpmpp_2m:20")
    assert parsed == [("ancestral", 1000), ("ddim", 50), ("dpmpp_2m", 20)]
    assert sampler_list("") == []  # empty: that part is skipped
    for bad, expected in (
        ("ddim", "expected sampler:steps"),
        ("ddim:0", "steps >= 1"),
        ("ddim:fifty", "expected sampler:steps"),
        ("euler:20", "unknown sampler 'euler'; known: ancestral"),
    ):
        with pytest.raises(SystemExit) as err:
            main(["ddpm", "--speed-samplers", bad])
        assert err.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith("python -m experiments.benchmark ddpm: error: argument --speed-samplers:")
        assert expected in message and "Traceback" not in message


def test_gemm_probe_computes_the_same_product_through_onednn():
    from experiments.benchmarks.ddpm import as_1x1_convolution, gemm_peak_gflops

    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, 19, generator=g, dtype=torch.float64)
    b = torch.randn(19, 23, generator=g, dtype=torch.float64)
    x, w = as_1x1_convolution(a, b)
    assert x.is_contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.conv2d(x, w)
    assert out.shape == (1, 23, 37, 1)
    torch.testing.assert_close(out[0, :, :, 0].T, a @ b, rtol=0, atol=1e-12)
    rates = gemm_peak_gflops(torch.float32, n=64, repeats=2)
    assert set(rates) == {"matmul (BLAS)", "1x1 convolution (oneDNN)"} and min(rates.values()) > 0


BAD_OPTIONS = [
    ("ddpm", "--rounds", "0", "expected an integer >= 1"),
    ("ddpm", "--steps", "ten", "expected an integer >= 1"),
    ("vae", "--epochs", "1", "expected an integer >= 2"),
    ("cls", "--reps", "0", "expected an integer >= 1"),
    ("ddp", "--batch-size", "65", "expected an even integer >= 2 (half goes to each process)"),
    ("lowlight_data", "--workers", "-1", "expected an integer >= 0"),
    ("nerco", "--sizes", "600", "expected width x height in pixels, e.g. 600x400"),
    ("nerco", "--chunks", "-5", "expected an integer >= 0"),
    ("nerco", "--threads", "0", "expected an integer >= 1"),
    ("nerco", "--variants", "fast", "invalid choice: 'fast' (choose from "),
]


def test_benchmark_options_are_checked_before_any_work(capsys):
    """A count that would leave a median of nothing, or a size that does not parse, is one usage line naming
    the option (argparse's exit 2), not a traceback at the end of a run."""
    import pytest

    for suite, option, value, expected in BAD_OPTIONS:
        with pytest.raises(SystemExit) as err:
            main([suite, option, value])
        assert err.value.code == 2, (suite, option)
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith(f"python -m experiments.benchmark {suite}: error: argument {option}: ")
        assert expected in message and "Traceback" not in message, message


def test_image_size_option_normalises_its_value():
    from experiments.benchmarks.common import image_size

    assert image_size("600x400") == "600x400" and image_size("960X720") == "960x720"
