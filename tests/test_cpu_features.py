"""bf16 on a CPU without bf16 kernels: the probe, the one warning each entry point gives (naming the setting
that asked for bf16 and the override that runs fp32), and the benchmarks' bf16 rows skipped by default there.
Both kinds of CPU are simulated by replacing the probe, so the tests do not depend on this machine's CPU."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch

from experiments.benchmarks.common import bf16_rows_skipped
from runtime import cpu_features
from tests.test_enhance import run_enhance, small_ckpt, write_inputs  # noqa: F401 (fixture)
from tests.test_sample_generic import toy_ckpt  # noqa: F401 (fixture)


@pytest.fixture
def no_bf16_kernels(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_bf16_native", lambda: False)


@pytest.fixture
def bf16_kernels(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_bf16_native", lambda: True)


def test_probe_is_torchs_own_check():
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is None:
        pytest.skip("this torch has no oneDNN bf16 probe")
    assert cpu_features.cpu_bf16_native() is bool(probe())


def test_warning_names_the_setting_the_fix_and_a_measured_slowdown(no_bf16_kernels):
    msg = cpu_features.slow_bf16_warning("trainer.precision=bf16-mixed", "trainer.precision=32-true")
    assert msg.startswith("trainer.precision=bf16-mixed: this CPU has no bfloat16 kernels")
    assert torch.backends.cpu.get_cpu_capability() in msg
    assert msg.endswith("trainer.precision=32-true runs fp32")
    slowdown = float(re.search(r"measured ([0-9.]+)x slower", msg).group(1))
    assert math.isfinite(slowdown) and slowdown >= 0


def test_no_warning_where_bf16_is_native_or_the_device_is_not_a_cpu(bf16_kernels, monkeypatch):
    assert cpu_features.slow_bf16_warning("bf16=true", "bf16=false") is None
    monkeypatch.setattr(cpu_features, "cpu_bf16_native", lambda: False)
    assert cpu_features.slow_bf16_warning("bf16=true", "bf16=false", torch.device("cuda", 0)) is None
    assert cpu_features.slow_bf16_warning("bf16=true", "bf16=false", "cpu") is not None


def test_bf16_slowdown_is_a_ratio_of_two_best_timings():
    ticks = iter([0.0, 6.0, 6.0, 13.0, 13.0, 20.0, 100.0, 102.0, 102.0, 105.0, 105.0, 109.0])
    # bf16 first (6, 7, 7 s: best 6), then fp32 (2, 3, 4 s: best 2)
    assert cpu_features.bf16_matmul_slowdown(n=8, clock=lambda: next(ticks)) == pytest.approx(3.0)


def test_benchmarks_skip_bf16_rows_only_where_asked_or_without_kernels(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_bf16_native", lambda: False)
    reason = bf16_rows_skipped("auto")
    assert "no bf16 kernels" in reason and "--bf16 on times them anyway" in reason
    assert bf16_rows_skipped("on") is None and bf16_rows_skipped("off") == "--bf16 off"
    monkeypatch.setattr(cpu_features, "cpu_bf16_native", lambda: True)
    assert bf16_rows_skipped("auto") is None and bf16_rows_skipped("off") == "--bf16 off"


def _bf16_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "no bfloat16 kernels" in r.getMessage()]


def test_training_in_bf16_on_such_a_cpu_says_so_once(no_bf16_kernels, compose_cfg, tmp_path, caplog):
    from experiments.train import train

    overrides = ["experiment=vae_mnist", "debug=fdr", "logger=none", "trainer.precision=bf16-mixed"]
    cfg = compose_cfg("train", overrides, run_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="experiments"):
        metrics = train(cfg)
    assert metrics and all(math.isfinite(v) for k, v in metrics.items() if k.startswith("test/"))
    lines = _bf16_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("trainer.precision=bf16-mixed:")
    assert "trainer.precision=32-true runs fp32" in lines[0]


def test_training_in_fp32_on_such_a_cpu_says_nothing(no_bf16_kernels, compose_cfg, tmp_path, caplog):
    from experiments.train import train

    overrides = ["experiment=vae_mnist", "debug=fdr", "logger=none"]  # trainer.precision: 32-true
    with caplog.at_level(logging.WARNING, logger="experiments"):
        train(compose_cfg("train", overrides, run_dir=tmp_path / "run"))
    assert _bf16_lines(caplog) == []


def test_sampling_in_bf16_on_such_a_cpu_says_so(no_bf16_kernels, toy_ckpt, tmp_path, caplog):  # noqa: F811
    from experiments.sample import sample
    from runtime.config import compose

    cfg = compose("sample", [f"ckpt_path={toy_ckpt}", "num_samples=2", "bf16=true"], output_dir=tmp_path / "s")
    with caplog.at_level(logging.WARNING, logger="experiments"):
        sample(cfg)
    lines = _bf16_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("bf16=true:") and "bf16=false runs fp32" in lines[0]
    assert (tmp_path / "s" / "samples" / "grid.png").is_file()  # warned, and still ran


def test_enhance_in_bf16_on_such_a_cpu_says_so(no_bf16_kernels, compose_cfg, tmp_path, small_ckpt, caplog):  # noqa: F811
    inp = write_inputs(tmp_path / "photos", [("a.png", (20, 16), "RGB")])
    out = tmp_path / "enhanced"
    with caplog.at_level(logging.WARNING, logger="experiments"):
        run_enhance(
            compose_cfg, tmp_path, f"input_dir={inp}", f"output_dir={out}", f"ckpt_path={small_ckpt}",
            "inference_bf16=true",
        )  # fmt: skip
    lines = _bf16_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("inference_bf16=true:")
    assert (out / "a.png").is_file()
