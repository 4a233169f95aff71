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
