"""The low-light data benchmark runs end to end (tiny settings) and reports what it measured."""

import json

from experiments.benchmark import main
from experiments.benchmarks.lowlight import standin_generator


def test_standin_has_nerco_generator_size():
    n = sum(p.numel() for p in standin_generator().parameters())
    assert abs(n - 11.378e6) < 0.01e6  # docs/references.md section 1: G_B 11.378M parameters


def test_lowlight_data_benchmark_smoke(tmp_path, capsys):
    code = main(
        [
            "lowlight_data",
            "--pairs", "4", "--steps", "1", "--rounds", "1", "--crop", "32", "--ngf", "4", "--no-nerco-recipe",
            "--output-dir", str(tmp_path),
            f"paths.cache_dir={tmp_path / 'cache'}",
            "data.synthetic.num_train=3", "data.synthetic.num_test=1",
            "data.synthetic.height=48", "data.synthetic.width=64",
        ]
    )  # fmt: skip
    assert code == 0
    res = json.loads((tmp_path / "benchmark_lowlight_data.json").read_text())
    assert set(res["recipes"]) == {"paired, crop 32, flips"}
    med = res["recipes"]["paired, crop 32, flips"]["median"]
    assert med["loader_w"] > 0 and med["step"] > 0 and res["data"]["comparable_with_papers"] is False
    assert res["recipes"]["paired, crop 32, flips"]["batch_shape"] == [1, 3, 32, 32]
    assert "fed/alone" in capsys.readouterr().out
