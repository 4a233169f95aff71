"""NeRCo's fast inference against the released computation (`lit_modules.nerco_reference`): the NRN's single
ensemble term equals the released four terms, the suite's default `enhance` reproduces the released uint8
outputs within one grey level, the bf16 option runs and differs measurably, and the benchmark that measures
all of it runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from lit_modules.nerco import NeRCo
from lit_modules.nerco_reference import released_literal_enhance, released_nrn, released_query_rgb
from lit_modules.nerco_release import released_uint8
from lit_modules.nets.nerco import NRN


@pytest.fixture
def nrn() -> NRN:
    """A small NRN whose MLP weights are large (N(0, 0.2)) so that every input column, the cell's included,
    moves the output."""
    torch.manual_seed(0)
    pre = NRN(ngf=16, n_blocks=1).eval()
    for p in pre.mlp.parameters():
        p.data.normal_(0, 0.2)
    return pre


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """fp32 agreement up to the rounding of differently ordered sums: 1e-6 of the output's scale."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_single_term_nrn_equals_the_released_four_terms(nrn):
    x = torch.rand(1, 3, 20, 28) * 2 - 1
    with torch.no_grad():
        four = released_nrn(nrn, x)  # the released query: four MLP passes over the whole image
        assert four.shape == (1, 3, 20, 28) and float(four.std()) > 1.0
        for chunk in (None, 28, 100):  # one pass; one row per band; bands of 3 rows, the last shorter
            nrn.chunk_pixels = chunk
            assert close(nrn(x), four), chunk
        # the comparison is sensitive: without the cell's contribution (folded into the bias) it fails
        feat = nrn.model(x)
        lin = nrn.mlp.imnet.layers[0]
        saved = lin.weight.data.clone()
        lin.weight.data[:, -2:] = 0
        no_cell = nrn.mlp(feat, "constant", None)
        lin.weight.data.copy_(saved)
        assert not close(no_cell, four)
        # LIIF's four distinct neighbours (the paper's description) are a different function: four paths kept
        liif = nrn.mlp(feat, "liif", None)
        assert not close(liif, four)


def test_single_term_nrn_any_batch_equals_per_image(nrn):
    x = torch.rand(3, 3, 12, 16) * 2 - 1
    with torch.no_grad():
        together = nrn(x)
        for i in range(3):
            assert close(together[i : i + 1], released_nrn(nrn, x[i : i + 1]))
    with pytest.raises(ValueError, match="batch size 1"):
        released_query_rgb(nrn.mlp.imnet, torch.zeros(2, 16, 4, 4))


def test_released_literal_and_suite_default_agree_within_one_grey_level():
    """Seeded random weights (narrow networks; NRN MLP weights N(0, 0.1) so that its output, an input of G_H,
    is O(1)), the benchmark's image at 64x48: the suite's default `enhance` (single NRN term, chunked, fp32)
    against the released test step (four terms, one pass). Full widths: the benchmark test below."""
    from experiments.benchmarks.nerco import infer_input

    torch.manual_seed(0)
    m = NeRCo(
        ngf=16, ndf=8, n_blocks=2, components={"text_discriminator": False, "edge_discriminators": False}
    )
    m.eval()
    for p in m.netPre.mlp.parameters():
        p.data.normal_(0, 0.1)
    assert m.inference_options() == {
        "nrn_chunk_pixels": 16384,
        "inference_resize": "round_to_4",
        "inference_bf16": False,
    }
    m.set_inference_options(nrn_chunk_pixels=640)  # bands of 10 rows: the chunked path too
    x = infer_input(64, 48)
    with torch.inference_mode():
        pre_x = released_nrn(m.netPre, x)
        want = released_uint8(released_literal_enhance(m.netG_A, m.netPre, m.netH, x))
        got = released_uint8((m.enhance(x) + 1) / 2)
        full = released_literal_enhance(m.netG_A, m.netPre, m.netH, x, full_forward=True, g_b=m.netG_B)
        no_nrn = released_uint8((m.netG_A(torch.cat([x, torch.zeros_like(x)], 1) * m.netH(x)[1]) + 1) / 2)
    assert float(pre_x.abs().mean()) > 0.1  # the NRN matters here ...
    assert np.abs(no_nrn.astype(int) - want.astype(int)).max() > 1  # ... so a wrong NRN would show
    assert want.shape == got.shape == (48, 64, 3) and want.std() > 1  # not a constant image
    diff = np.abs(want.astype(int) - got.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.array_equal(released_uint8(full), want)  # the rest of the released forward changes nothing
    with pytest.raises(ValueError, match="needs g_b"):
        released_literal_enhance(m.netG_A, m.netPre, m.netH, x, full_forward=True)
    with pytest.raises(ValueError, match="float32"):
        released_literal_enhance(m.netG_A, m.netPre, m.netH, x.double())


def test_bf16_option_runs_and_its_difference_is_measured(capsys):
    torch.manual_seed(0)
    m = NeRCo(ngf=16, ndf=8, n_blocks=1, components={"text_discriminator": False}).eval()
    x = torch.rand(1, 3, 32, 44) * 2 - 1
    with torch.inference_mode():
        fp32 = m.enhance(x)
        m.set_inference_options(inference_bf16=True)
        bf16 = m.enhance(x)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    grey = np.abs(released_uint8((bf16 + 1) / 2).astype(int) - released_uint8((fp32 + 1) / 2).astype(int))
    print(f"bf16 vs fp32: max {grey.max()} grey levels, mean {grey.mean():.3f}")
    assert 0 < grey.max() < 128  # bf16 really ran, and still computes the same network
    assert "bf16 vs fp32: max" in capsys.readouterr().out
    assert "bfloat16 autocast" in m.metric_protocol()["inference"]
    with pytest.raises(ConfigError, match="inference_bf16"):
        NeRCo(ngf=8, ndf=8, n_blocks=1, inference_bf16="true")


def test_enhance_command_passes_the_bf16_option():
    from omegaconf import OmegaConf

    from experiments.enhance import MODEL_OPTIONS, apply_inference_options

    assert "inference_bf16" in MODEL_OPTIONS
    m = NeRCo(ngf=8, ndf=8, n_blocks=1, components={"text_discriminator": False})
    apply_inference_options(m, OmegaConf.create({"nrn_chunk_pixels": None, "inference_bf16": True}))
    assert m.inference_options()["inference_bf16"] is True


@pytest.mark.slow
def test_benchmark_inference_runs_end_to_end(tmp_path, capsys):
    from experiments.benchmark import main

    args = ["nerco", "--quick", "--chunks", "0", "--no-released-full", "--threads", "1", "--bf16", "on"]
    args += ["--output-dir", str(tmp_path)]
    assert main(args) == 0
    res = json.loads((tmp_path / "benchmark_nerco.json").read_text())
    rows = {r["key"]: r for r in res["inference"]["96x64"]}
    assert list(rows) == [
        "released",
        "suite",
        "suite_bf16",
        "suite_nchw",
        "suite_chunk0",
        "released_threads1",
        "suite_threads1",
        "profile",
    ]
    assert rows["suite_threads1"]["threads"] == 1 and rows["released_threads1"]["max_diff"] <= 1
    assert rows["released"]["time_ratio"] == 1.0 and rows["released"]["max_diff"] == 0
    assert rows["suite"]["max_diff"] <= 1 and rows["suite_chunk0"]["max_diff"] <= 1
    assert rows["suite_nchw"]["max_diff"] <= 1 and "channels_last=False" in rows["suite_nchw"]["what"]
    assert "channels_last=True" in rows["suite"]["what"]
    assert rows["suite_bf16"]["max_diff"] > 0  # measured, not assumed
    for r in (rows["suite"], rows["suite_bf16"]):
        assert r["time_ratio"] > 0 and r["peak_ratio"] > 0 and r["working_memory_mb"] >= 0
    assert set(rows["profile"]["stages_s"]) == {"NRN trunk", "NRN head (1 term)", "mask extractor", "G_H"}
    assert res["verdicts"]["96x64"]["max_diff"] is True and "random" in res["weights"]
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "max |diff|" in out and "load average" in out
