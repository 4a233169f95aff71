"""The benchmark harness runs both sides on the same model, data order and seed: their weights must agree."""

import json

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
    assert res["ratio_fastest"] == res["fastest_epoch"]["suite"] / res["fastest_epoch"]["plain"]
    out = capsys.readouterr().out
    assert "time ratio suite/plain" in out and "target <= 1.10" in out
