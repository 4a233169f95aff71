"""The CLS timing benchmark runs end to end (small image) and times every filter, the gamma search included."""

import json

from experiments.benchmark import main


def test_cls_benchmark_smoke(tmp_path, capsys):
    assert main(["cls", "--reps", "1", "--size", "64", "--output-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "benchmark_cls.json").read_text())
    names = {k.split("/", 1)[1] for k in res["rows"]}
    assert {"inverse", "wiener, K=1e-3", "cls, fixed gamma", "cls_auto, symmetric boundary"} <= names
    assert any(n.startswith("cls_auto (search:") for n in names) and res["grey_search_iterations"] > 0
    assert all(v["min"] > 0 for v in res["rows"].values()) and res["skimage_wiener_grey_s"]["median"] > 0
    assert "vs skimage wiener" in capsys.readouterr().out
