"""NeRCo wired into the suite: the nerco_* experiments through experiments.train (unpaired DataModule batches,
the shared PSNR/SSIM protocol, per-image CSV and side-by-side PNGs, checkpoints that Lightning can test),
experiments.evaluate with released-layout weights, the ablation sweep, its report, and the benchmark suite.

Networks are narrowed (ngf 8, one block) and the data are tiny LOL-layout folders (tests/lowlight_fixtures.py),
except where the released layout needs the full-size networks (random weights)."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from experiments.evaluate import evaluate
from experiments.report import build_report
from experiments.train import train
from lit_modules.nerco import NeRCo
from lit_modules.nerco_release import released_enhance, released_input
from tests.conftest import run_cli
from tests.lowlight_fixtures import make_layout
from tests.test_nerco import write_released
from tests.test_scale import _fake_run

SMALL = ["model.ngf=8", "model.ndf=8", "model.n_blocks=1", "model.text_discriminator.backend=random"]
PRESETS = [
    "all",
    "no_nrn",
    "no_mask_extractor",
    "no_text_discriminator",
    "no_edge_discriminators",
    "no_second_loop",
    "no_identity",
    "no_consistency",
]


def tiny_lol(root: Path, size=(32, 40), n_train: int = 3, n_test: int = 2) -> list[str]:
    make_layout(root, "lol", n_train=n_train, n_test=n_test, size=size)
    return ["data.source=local", f"data.path={root}", "data.num_workers=0", "logger=csv"]


def test_nerco_smoke_trains_on_unpaired_batches_and_scores_with_the_protocol(compose_cfg, tmp_path):
    """Two iterations (max_steps=4: two optimizer steps per iteration) of nerco_smoke through train(), with a
    held-out validation pair; the DataModule's unpaired {low, high} items are NeRCo's A and B."""
    run = tmp_path / "run"
    cfg = compose_cfg(
        "train",
        ["experiment=nerco_smoke", *SMALL, *tiny_lol(tmp_path / "LOL"), "data.crop=32", "data.val_size=1",
         "trainer.max_steps=4"],
        run,
    )  # fmt: skip
    assert cfg.data.mode == "unpaired" and list(cfg.data.value_range) == [-1.0, 1.0]
    metrics = train(cfg)
    assert {"test/psnr", "test/ssim", "val/psnr", "val/ssim", "val/loss"} <= set(metrics)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert len([r for r in rows if r.get("train/loss_G_step")]) == 2  # 2 iterations = 4 optimizer steps
    body = json.loads((run / "metrics.json").read_text())
    assert body["protocol"]["restoration"]["name"] == "suite-restoration-v1"
    assert body["protocol"]["variant"] == "official" and body["protocol"]["components"]["nrn"] is True
    assert body["data"]["mode"] == "unpaired" and body["data"]["unpaired"]["n_A"] == 2
    per_image = list(csv.DictReader((run / "per_image.csv").open()))
    assert [r["image"] for r in per_image] == ["eval15/low/1.png", "eval15/low/2.png"]
    assert np.mean([float(r["psnr"]) for r in per_image]) == pytest.approx(metrics["test/psnr"], abs=1e-4)
    assert len(list((run / "images" / "test" / "side_by_side").glob("*.png"))) == 2
    assert not (run / "checkpoints").exists()  # a smoke run writes no checkpoint


def test_nerco_lol_recipe_tests_its_last_checkpoint(compose_cfg, tmp_path):
    """The paper recipe's config path: unpaired + resize + flips, last.ckpt only, tested through Lightning's
    checkpoint loading (weights_only: the hyperparameters must be plain containers)."""
    run = tmp_path / "run"
    cfg = compose_cfg(
        "train",
        ["experiment=nerco_lol", *SMALL, *tiny_lol(tmp_path / "LOL", n_train=2), "data.resize=32",
         "trainer.max_epochs=1", "trainer.accelerator=cpu"],
        run,
    )  # fmt: skip
    assert cfg.data.resize == 32 and cfg.callbacks.model_checkpoint.monitor is None
    metrics = train(cfg)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed" and info["tested_checkpoint"].endswith("last.ckpt")
    assert "test/psnr" in metrics
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert isinstance(hparams["components"], dict) and isinstance(hparams["protocol"], dict)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("official") / "LOL"
    write_released(d)
    return d


def test_evaluate_with_released_layout_weights(compose_cfg, tmp_path, official_dir):
    """experiments.evaluate experiment=nerco_lol model.official_ckpt_dir=<random weights in the released
    layout>: the numbers equal the released test path scored by scikit-image."""
    run = tmp_path / "run"
    data = tiny_lol(tmp_path / "LOL", size=(24, 32))
    cfg = compose_cfg(
        "evaluate", ["experiment=nerco_lol", f"model.official_ckpt_dir={official_dir}", *data], run
    )
    metrics = evaluate(cfg)
    m = NeRCo(official_ckpt_dir=str(official_dir), components={"text_discriminator": False})
    psnrs, ssims = [], []
    for i in (1, 2):
        low = Image.open(tmp_path / "LOL" / "eval15" / "low" / f"{i}.png")
        gt = np.asarray(Image.open(tmp_path / "LOL" / "eval15" / "high" / f"{i}.png"), dtype=np.float64) / 255
        with torch.no_grad():
            out = released_enhance(m.netG_A, m.netPre, m.netH, released_input(low))
        pred = out[0].permute(1, 2, 0).double().clamp(0, 1).numpy()
        psnrs.append(peak_signal_noise_ratio(gt, pred, data_range=1.0))
        ssims.append(
            structural_similarity(
                gt, pred, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False,
            )
        )  # fmt: skip
    assert metrics["test/psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert metrics["test/ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)
    body = json.loads((run / "metrics.json").read_text())
    assert body["protocol"]["weights"] == f"released checkpoints from {official_dir}"
    assert "round_to_4" in body["protocol"]["inference"]
    assert len(list(csv.DictReader((run / "per_image.csv").open()))) == 2


def sweep_jobs(compose_cfg, base: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of `hydra.sweeper.params` (the cartesian product)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose_cfg("train", [*base, "sweep=nerco_ablation"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    parser = OverridesParser.create()
    params = [parser.parse_override(f"{k}={v}") for k, v in cfg.hydra.sweeper.params.items()]
    values = [[(p.get_key_element(), v) for v in p.sweep_string_iterator()] for p in params]
    return [[f"{k}={v}" for k, v in combo] for combo in itertools.product(*values)]


def test_ablation_sweep_composes_into_the_expected_jobs(compose_cfg):
    jobs = sweep_jobs(compose_cfg, ["experiment=nerco_smoke"])
    assert jobs == [[f"model/components={p}"] for p in PRESETS]
    for job, preset in zip(jobs, PRESETS):
        cfg = compose_cfg("train", ["experiment=nerco_smoke", *job])
        off = sorted(k for k, v in cfg.model.components.items() if not v)
        assert off == ([] if preset == "all" else [preset.removeprefix("no_")]), job
        assert cfg.name == "nerco_smoke" and cfg.trainer.max_steps == 6


def test_report_of_an_ablation_sweep_uses_the_full_model_as_baseline(tmp_path):
    """Each job's protocol records its components; the report must not hold that against it, and the deltas
    go against `model/components=all`."""
    runs = tmp_path / "sweep"
    for i, preset in enumerate(PRESETS):
        components = {p.removeprefix("no_"): p != preset for p in PRESETS[1:]}
        _fake_run(
            runs, str(i), "nerco_smoke", {"test/psnr": 10.0 + i}, {"restoration": {"name": "v1"}, "components": components},
            ["experiment=nerco_smoke", f"model/components={preset}"],
        )  # fmt: skip
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    assert "Deltas against the baseline `model/components=all`" in text
    assert "| model/components=no_consistency | +7 |" in text


def test_benchmark_suite_is_registered():
    from experiments import benchmark
    from experiments.benchmarks import nerco

    assert benchmark.SUITES["nerco"] == "experiments.benchmarks.nerco"
    import argparse

    p = argparse.ArgumentParser()
    nerco.add_arguments(p)
    args = p.parse_args(["--what", "infer", "--sizes", "16x12", "--chunks", "0", "64"])
    assert args.what == ["infer"] and args.chunks == [0, 64] and args.variants == ["official", "paper"]


@pytest.mark.slow
def test_benchmark_runs_with_tiny_sizes(tmp_path, capsys):
    from experiments.benchmark import main

    code = main(["nerco", "--size", "32", "--text-arch", "tiny", "--sizes", "24x16", "--chunks", "0", "64",
                 "--bf16", "on", "--output-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    body = json.loads((tmp_path / "benchmark_nerco.json").read_text())
    train = body["results"]
    assert [r["kind"] for r in train] == ["train", "train"] and not any("error" in r for r in train)
    rows = body["inference"]["24x16"]
    assert [r["kind"] for r in rows][-1] == "profile" and not any("error" in r for r in rows)
    infer = {r["key"]: r for r in rows if r["kind"] == "infer"}
    assert {"released", "released_full", "suite", "suite_bf16", "suite_nchw"} <= set(infer)
    assert infer["released"]["time_ratio"] == 1 and infer["released"]["max_diff"] == 0
    assert all(r["working_memory_mb"] >= 0 and "max_diff" in r for r in infer.values())
    assert all(r["estimate_mb"] > 0 for k, r in infer.items() if k.startswith("suite"))
    assert infer["suite"]["max_diff"] <= 1 and infer["suite_nchw"]["max_diff"] <= 1
    assert set(body["verdicts"]["24x16"]) == {"time_ratio", "peak_ratio", "working_ratio", "max_diff"}
    out = capsys.readouterr().out
    assert "NeRCo inference 24x16" in out and "suite defaults vs targets" in out


@pytest.mark.slow
def test_ablation_sweep_runs_as_a_multirun_and_reports(tmp_path):
    """The real thing: `-m` through Hydra's launcher, 8 tiny jobs, the sweep summary and the report."""
    data = tiny_lol(tmp_path / "LOL", n_train=2, n_test=1)
    sweep = tmp_path / "sweep"
    res = run_cli(
        "train", "experiment=nerco_smoke", "sweep=nerco_ablation", *SMALL, *data, "data.crop=32",
        "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", env={"WANDB_MODE": "disabled"}, timeout=1800,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = (sweep / "sweep_summary.md").read_text()
    assert summary.count("| completed |") == 8
    res = run_cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Deltas against the baseline `model/components=all`" in text
