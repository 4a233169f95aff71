"""The synthetic low-light generator: deterministic, per-image seeding, the documented model, an atomic cache."""

import json

import numpy as np
import pytest

import data.synthetic as syn
from data.layouts import LAYOUTS
from data.lowlight import LowLightDataModule
from data.synthetic import LowLightModel, SyntheticCacheError, ensure_synthetic_lowlight

SMALL = {"num_train": 3, "num_test": 2, "height": 24, "width": 32}


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_seeded(tmp_path):
    m = LowLightModel(**SMALL)
    a = ensure_synthetic_lowlight(tmp_path / "a", LAYOUTS["lol"], m)
    b = ensure_synthetic_lowlight(tmp_path / "b", LAYOUTS["lol"], m)
    fa, fb = _files(a), _files(b)
    assert fa == fb and "eval15/low/2.png" in fa and "our485/high/3.png" in fa and "manifest.json" in fa
    c = ensure_synthetic_lowlight(tmp_path / "c", LAYOUTS["lol"], LowLightModel(**{**SMALL, "seed": 1}))
    assert _files(c)["eval15/low/1.png"] != fa["eval15/low/1.png"]
    # an image depends on (seed, split, index) only: more images leave the first ones unchanged
    d = ensure_synthetic_lowlight(tmp_path / "d", LAYOUTS["lol"], LowLightModel(**{**SMALL, "num_train": 5}))
    assert _files(d)["our485/low/3.png"] == fa["our485/low/3.png"]


def test_the_low_light_model_darkens_adds_noise_and_records_parameters(tmp_path):
    m = LowLightModel(**SMALL)
    root = ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], m)
    man = json.loads((root / "manifest.json").read_text())
    assert man["complete"] and man["key"] == m.key(LAYOUTS["lol"]) and "not comparable" in man["label"]
    rec = man["images"]["test"][0]
    assert {"photo", "exposure", "gains", "shot_a", "read_std", "gamma", "box_tlhw"} <= set(rec)
    assert rec["photo"] in m.test_photos and m.exposure[0] <= rec["exposure"] <= m.exposure[1]
    # steps 1-6 by hand from the recorded high image and a fresh generator: the same low image
    rng = syn.image_rng(m.seed, "test", 0)
    src = syn.photos.load_photo(rec["photo"])
    high, _ = syn.crop_high(rng, src, m.height, m.width, m.crop_scale)
    low, params = syn.darken(rng, high, m)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(root / "eval15/low/1.png")), low)
    assert np.array_equal(np.asarray(Image.open(root / "eval15/high/1.png")), high)
    assert low.mean() < high.mean() / 2 and params["exposure"] == pytest.approx(rec["exposure"])
    assert not set(m.train_photos) & set(m.test_photos)


def test_noise_is_signal_dependent():
    m = LowLightModel(
        **SMALL,
        exposure=(1.0, 1.0),
        gamma=(1.0, 1.0),
        cast_sigma=1e-9,
        shot_noise=(1e-2, 1e-2),
        read_noise=(1e-4, 1e-4),
    )
    rng = np.random.default_rng(0)
    dark, bright = np.full((64, 64, 3), 40, np.uint8), np.full((64, 64, 3), 200, np.uint8)
    lin = syn.srgb_to_linear
    d, _ = syn.darken(rng, dark, m)
    b, _ = syn.darken(rng, bright, m)
    sd = lin(d / 255.0).std()
    sb = lin(b / 255.0).std()
    # shot noise: variance ~ a * signal
    assert sb / sd == pytest.approx(np.sqrt(lin(200 / 255) / lin(40 / 255)), rel=0.25)


def test_interrupted_generation_leaves_nothing_readable(tmp_path, monkeypatch):
    m = LowLightModel(**SMALL)
    calls = {"n": 0}
    real = syn._encode

    def failing(array, ext):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(array, ext)

    monkeypatch.setattr(syn, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], m)
    final = syn.cache_folder(tmp_path, LAYOUTS["lol"], m)
    assert not final.exists() and not list(final.parent.iterdir())  # the temporary folder is gone too
    monkeypatch.setattr(syn, "_encode", real)
    root = ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], m)
    assert len(list((root / "our485" / "low").iterdir())) == 3


def test_a_half_written_cache_is_never_read_as_complete(tmp_path):
    m = LowLightModel(**SMALL)
    root = ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], m)
    stamp = (root / "eval15/low/1.png").stat().st_mtime_ns
    assert ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], m) == root  # cached: not regenerated
    assert (root / "eval15/low/1.png").stat().st_mtime_ns == stamp
    (root / "manifest.json").unlink()
    with pytest.raises(SyntheticCacheError, match=r"not a complete synthetic cache.*delete the folder"):
        ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], m)
    # a leftover temporary folder of a killed run is ignored
    other = LowLightModel(**{**SMALL, "seed": 7})
    final = syn.cache_folder(tmp_path, LAYOUTS["lol"], other)
    (final.parent / f".{final.name}.tmp-1-deadbeef" / "eval15" / "low").mkdir(parents=True)
    assert ensure_synthetic_lowlight(tmp_path, LAYOUTS["lol"], other) == final


def test_synthetic_default_reads_like_real_data_and_is_labelled(tmp_path):
    for name in ("lol", "lolv2_real", "lsrw"):
        dm = LowLightDataModule(
            dataset=name, source="synthetic", cache_dir=str(tmp_path), synthetic=SMALL, crop=16
        )
        dm.setup()
        d = dm.describe()
        assert d["comparable_with_papers"] is False and "SYNTHETIC" in d["label"] and d["synthetic_key"]
        assert d["n_test"] == 2 and d["n_train"] == 3
        batch = next(iter(dm.train_dataloader()))
        assert batch["low"].shape[1:] == (3, 16, 16)
    real = syn.cache_folder(tmp_path, LAYOUTS["lolv2_real"], LowLightModel(**SMALL))
    assert (real / "Real_captured/Test/Low/low00001.png").is_file()
    assert (real / "Real_captured/Test/Normal/normal00001.png").is_file()


def test_bad_generator_settings_are_refused():
    with pytest.raises(ValueError, match="exposure"):
        LowLightModel.from_config({"exposure": [0.5, 0.1]})
    with pytest.raises(ValueError, match="must not share"):
        LowLightModel.from_config({"train_photos": ["coffee"], "test_photos": ["coffee"]})
    with pytest.raises(KeyError, match="unknown bundled photo"):
        LowLightModel.from_config({"test_photos": ["lena"]})
