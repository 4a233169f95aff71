"""The benchmark harness runs both sides on the same model, data order and seed: their weights must agree."""

import json

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
    plain_ckpt = torch.load(tmp_path / "plain_last.ckpt", weights_only=False)
    assert set(plain_ckpt) == {"epoch", "state_dict", "optimizer_states", "rng_states"} and plain_ckpt["epoch"] == 1
    out = capsys.readouterr().out
    assert "time ratio suite/plain at equal work" in out and "target <= 1.05" in out
    # start-up: a fresh `experiments.train ... debug=fdr` reached its first batch, after more than `import torch`
    assert res["startup"]["first_batch_s"] > res["startup"]["import_torch_s"] > 0
    assert "to its first training batch" in out
