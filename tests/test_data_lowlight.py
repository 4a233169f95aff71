"""Low-light DataModule: layouts of LOL / LOL-v2 / LSRW / folders, pairing, aligned transforms, unpaired
sampling, the Hugging Face source, the declared data shape, and every kind of bad input."""

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError, InputError
from data.images import ImageReadError, NonRGBImageError
from data.layouts import LAYOUTS
from data.lowlight import (
    DrawSampler,
    EmptySplitError,
    LowLightDataModule,
    PairingError,
    PairSizeError,
    decode_draw,
    pair_key,
)
from data.transforms import PairTransform
from tests.lowlight_fixtures import make_layout, pair_arrays, write


def _dm(root, **kw):
    kw.setdefault("source", "local")
    kw.setdefault("crop", None)
    kw.setdefault("hflip", False)
    return LowLightDataModule(path=str(root), **kw)


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------ pairing
@pytest.mark.parametrize(
    "stem,key",
    [
        ("low00001", "00001"),
        ("normal00001", "00001"),
        ("12", "12"),
        ("Low_3", "3"),
        ("high-7", "7"),
        ("low", "low"),
    ],
)
def test_pair_key_strips_low_normal_high_prefixes(stem, key):
    assert pair_key(stem) == key


@pytest.mark.parametrize("name", ["lol", "lolv2_real", "lolv2_synthetic", "lsrw"])
def test_each_layout_reads_and_pairs_correctly(tmp_path, name):
    make_layout(tmp_path, name, n_train=3, n_test=2)
    dm = _dm(tmp_path, dataset=name)
    dm.setup()
    groups = 2 if name == "lsrw" else 1
    assert len(dm.splits["train"]) == 3 * groups and len(dm.splits["test"]) == 2 * groups
    for k in range(len(dm.splits["test"])):
        item = dm.splits["test"][k]
        assert item["low"].shape == (3, 24, 32)  # full resolution
        if name != "lsrw":  # PNG layouts: the exact pixel relation proves the pairing
            assert np.array_equal(_u8(item["low"]), _u8(item["high"]) // 4), item["low_name"]
    if name == "lolv2_real":
        item = dm.splits["test"][0]
        assert item["low_name"].endswith("Low/low00001.png") and item["high_name"].endswith(
            "Normal/normal00001.png"
        )
    d = dm.describe()
    assert d["comparable_with_papers"] is True and d["dataset"] == name and d["n_test"] == 2 * groups


def test_lsrw_cameras_share_names_and_subset_selects_one(tmp_path):
    make_layout(tmp_path, "lsrw", n_train=2, n_test=3)
    dm = _dm(tmp_path, dataset="lsrw")
    dm.setup()
    keys = [p.key for p in dm.scans["test"].pairs]
    assert keys == ["Huawei/1", "Huawei/2", "Huawei/3", "Nikon/1", "Nikon/2", "Nikon/3"]
    nikon = _dm(tmp_path, dataset="lsrw", subset=["Nikon"])
    nikon.setup()
    assert len(nikon.splits["test"]) == 3 and all(
        "Nikon" in n for n in (p.key for p in nikon.scans["test"].pairs)
    )
    assert nikon.describe()["subset"] == ["Nikon"]
    with pytest.raises(ValueError, match="subset"):
        LowLightDataModule(dataset="lol", subset=["Nikon"])


def test_any_folder_pair_by_paths_test_only(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        low, high = pair_arrays(rng, 20, 20)
        write(tmp_path / "dark" / f"img_{i}.png", low)
        write(tmp_path / "bright" / f"img_{i}.jpeg", high)  # the extension may differ
    dm = LowLightDataModule(
        dataset="folder",
        source="local",
        path=str(tmp_path),
        folders={"test_low": "dark", "test_high": "bright"},
    )
    dm.setup()
    assert len(dm.splits["test"]) == 3 and "train" not in dm.splits
    assert dm.describe()["comparable_with_papers"] is False
    with pytest.raises(EmptySplitError, match="no training split"):
        dm.train_dataloader()


# ------------------------------------------------------------------------------------------ transforms
def test_pair_transform_uses_the_same_crop_and_flip_on_both_sides():
    h, w = 40, 50
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    high = np.stack([yy * 5, xx * 5, (yy + xx) % 256], -1).astype(np.uint8)  # pixel = its coordinates
    low = high // 4
    t = PairTransform(crop=16, hflip=True, vflip=True)
    boxes = set()
    for seed in range(20):
        lo, hi, params = t(low, high, np.random.default_rng(seed))
        assert params["low"] == params["high"]
        assert np.array_equal(_u8(lo), _u8(hi) // 4)  # aligned pixel for pixel
        p = params["low"]
        expect = high[p.top : p.top + 16, p.left : p.left + 16]
        expect = expect[:, ::-1] if p.hflip else expect
        expect = expect[::-1] if p.vflip else expect
        assert np.array_equal(_u8(hi), expect)
        boxes.add((p.top, p.left, p.hflip, p.vflip))
    assert len(boxes) > 10  # the crop really is random


def test_independent_transform_for_unpaired_and_value_range():
    rng = np.random.default_rng(0)
    low, high = pair_arrays(rng, 30, 30)
    t = PairTransform(crop=8, hflip=True, independent=True, value_range=(-1, 1))
    differ = 0
    for seed in range(10):
        lo, hi, params = t(low, high, np.random.default_rng(seed))
        differ += params["low"] != params["high"]
        assert lo.min() >= -1 and lo.max() <= 1 and hi.min() < -0.5
    assert differ >= 8
    resized, _, _ = PairTransform(resize=512)(low, high)
    assert resized.shape == (3, 512, 512)
    with pytest.raises(ValueError, match="larger than the image"):
        PairTransform(crop=64)(low, high, np.random.default_rng(0), where="pair x")


def test_training_crops_depend_on_seed_epoch_position_not_workers(tmp_path):
    make_layout(tmp_path, "lol", n_train=6, n_test=1, size=(32, 40))
    dm = _dm(tmp_path, crop=16, hflip=True, batch_size=3, num_workers=0, shuffle_seed=5)
    dm.setup()
    dm2 = _dm(tmp_path, crop=16, hflip=True, batch_size=2, num_workers=2, shuffle_seed=5)
    dm2.setup()
    torch.manual_seed(0)
    a = torch.cat([b["low"] for b in dm.train_dataloader()])
    torch.manual_seed(123)  # the global RNG plays no part
    b = torch.cat([b["low"] for b in dm2.train_dataloader()])
    assert torch.equal(a, b)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    c = torch.cat([b["low"] for b in loader])
    assert not torch.equal(a, c)


def test_unpaired_sampling_follows_the_stated_formula(tmp_path):
    make_layout(tmp_path, "lol", n_train=6, n_test=1)
    dm = _dm(tmp_path, mode="unpaired", unpaired={"num_high": 4, "seed": 1}, shuffle_seed=3)
    dm.setup()
    ds = dm.splits["train"]
    assert len(ds.lows) == 6 and ds.n_b == 4 and len(ds) == 6  # N = max(|A|, |B|)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(2)
    g = torch.Generator().manual_seed(3 + 2)
    a = (torch.randperm(6, generator=g) % 6).tolist()
    b = torch.randint(0, 4, (6,), generator=g).tolist()
    assert [decode_draw(k, 6, 4, 6) for k in sampler] == [
        (2, pos, ai, bi) for pos, (ai, bi) in enumerate(zip(a, b))
    ]
    d = dm.describe()["unpaired"]
    assert d["n_A"] == 6 and d["n_B"] == 4
    # disjoint: no A image's own partner is among the B images
    dis = _dm(tmp_path, mode="unpaired", unpaired={"high_from": "disjoint"})
    dis.setup()
    t = dis.splits["train"]
    a_keys = {pair_key(r.name.split("/")[-1].split(".")[0]) for r in t.lows}
    b_keys = {pair_key(r.name.split("/")[-1].split(".")[0]) for r in t.highs}
    assert a_keys and b_keys and not a_keys & b_keys and len(a_keys | b_keys) == 6


def test_unpaired_high_from_folder(tmp_path):
    make_layout(tmp_path / "lol", "lol", n_train=3, n_test=1)
    rng = np.random.default_rng(1)
    for i in range(5):
        write(tmp_path / "normal" / f"n{i}.png", pair_arrays(rng, 24, 32)[1])
    dm = _dm(
        tmp_path / "lol",
        mode="unpaired",
        unpaired={"high_from": "folder", "high_dir": str(tmp_path / "normal")},
    )
    dm.setup()
    assert dm.splits["train"].n_b == 5 and len(dm.splits["train"]) == 5
    batch = next(iter(dm.train_dataloader()))
    assert batch["high_name"][0].startswith(str(tmp_path / "normal"))


def test_epoch_sampler_encoding_round_trips():
    s = DrawSampler(5, 3, seed=0, unpaired=True)
    s.set_epoch(4)
    for pos, k in enumerate(s):
        epoch, p, a, b = decode_draw(k, 5, 3, 5)
        assert (epoch, p) == (4, pos) and 0 <= a < 5 and 0 <= b < 3


def test_val_split_is_carved_from_train(tmp_path):
    make_layout(tmp_path, "lol", n_train=8, n_test=2)
    dm = _dm(tmp_path, val_size=3)
    dm.setup()
    train = {r.name for r in dm.splits["train"].lows}
    val = {r.name for r in dm.splits["val"].lows}
    assert len(train) == 5 and len(val) == 3 and not train & val
    assert _dm(tmp_path).val_dataloader() == []


# ------------------------------------------------------------------------------------------ Hugging Face
def _png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_hf_parquet_with_two_image_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        lows, highs, names = [], [], []
        for i in range(n):
            low, high = pair_arrays(rng, 16, 20)
            lows.append({"bytes": _png_bytes(low), "path": None})
            highs.append({"bytes": _png_bytes(high), "path": None})
            names.append(f"{split}{i}")
        table = pa.table({"input": lows, "target": highs, "id": names})
        (tmp_path / "data").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    dm = LowLightDataModule(source="hf", hf={"path": str(tmp_path), "name_column": "id"}, crop=None)
    dm.setup()
    assert len(dm.splits["train"]) == 4 and len(dm.splits["test"]) == 2
    item = dm.splits["test"][1]
    assert item["low_name"] == "test/low/test1" and np.array_equal(_u8(item["low"]), _u8(item["high"]) // 4)


def test_hf_snapshot_folder_with_a_nested_layout(tmp_path):
    make_layout(tmp_path / "snapshot" / "lol_dataset", "lol", n_train=2, n_test=2)
    dm = LowLightDataModule(source="hf", hf={"path": str(tmp_path / "snapshot")}, crop=None)
    dm.setup()
    assert len(dm.splits["test"]) == 2 and dm.root == tmp_path / "snapshot" / "lol_dataset"
    assert dm.describe()["comparable_with_papers"] is True


def test_hf_hub_id_offline_fails_naming_alternatives():
    dm = LowLightDataModule(source="hf", hf={"path": "nobody-xyz/no-such-lowlight-set"})
    with pytest.raises(ConnectionError) as err:
        dm.setup()
    msg = str(err.value)
    assert (
        "nobody-xyz/no-such-lowlight-set" in msg
        and "data.source=synthetic" in msg
        and "HF_HUB_OFFLINE" in msg
    )


# ------------------------------------------------------------------------------------------ bad input
def test_missing_root_and_missing_folder_name_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        _dm(tmp_path / "nope").setup()
    assert str(tmp_path / "nope") in str(err.value) and "our485/low/" in str(err.value)
    make_layout(tmp_path / "lol", "lol")
    import shutil

    shutil.rmtree(tmp_path / "lol" / "eval15" / "high")
    with pytest.raises(FileNotFoundError) as err:
        _dm(tmp_path / "lol").setup()
    msg = str(err.value)
    assert (
        "eval15/high" in msg and "expected layout of LOL" in msg and "eval15/low/  and  eval15/high/" in msg
    )


def test_unmatched_names_are_listed_on_both_sides(tmp_path):
    make_layout(tmp_path, "lol", n_train=3, n_test=2)
    (tmp_path / "our485" / "low" / "2.png").rename(tmp_path / "our485" / "low" / "20.png")
    (tmp_path / "our485" / "high" / "3.png").unlink()
    with pytest.raises(PairingError) as err:
        _dm(tmp_path).setup()
    msg = str(err.value)
    assert "2 low image(s) without a high partner: our485/low/20.png, our485/low/3.png" in msg
    assert "1 high image(s) without a low partner: our485/high/2.png" in msg
    assert "expected layout" in msg


def test_duplicate_pair_names_are_refused(tmp_path):
    make_layout(tmp_path, "lol", n_train=2, n_test=1)
    write(tmp_path / "our485" / "low" / "1.jpg", np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(PairingError, match=r"our485/low/1.jpg.*same pair name"):
        _dm(tmp_path).setup()


def test_unreadable_and_truncated_images_name_the_file(tmp_path):
    make_layout(tmp_path, "lol", n_train=2, n_test=2)
    (tmp_path / "our485" / "low" / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match=r"our485/low/1.png: not a readable image"):
        _dm(tmp_path).setup()
    make_layout(tmp_path / "t", "lol", n_train=2, n_test=2, size=(64, 64))
    f = tmp_path / "t" / "eval15" / "high" / "2.png"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # header intact, pixel data cut
    dm = _dm(tmp_path / "t")
    dm.setup()  # headers are fine: setup cannot see a truncation
    report = dm.check(full=True)
    assert not report.ok and any("eval15/high/2.png" in p and "truncated" in p for p in report.problems)
    with pytest.raises(ImageReadError, match=r"eval15/high/2.png: the image data cannot be decoded"):
        dm.splits["test"][1]


def test_size_mismatch_within_a_pair_names_both_files(tmp_path):
    make_layout(tmp_path, "lol", n_train=2, n_test=1)
    write(tmp_path / "our485" / "high" / "2.png", np.zeros((30, 32, 3), np.uint8))
    with pytest.raises(PairSizeError, match=r"our485/low/2.png is 32x24 but our485/high/2.png is 32x30"):
        _dm(tmp_path).setup()


def test_grey_and_rgba_are_converted_with_a_warning_or_refused(tmp_path):
    make_layout(tmp_path, "lol", n_train=2, n_test=2)
    write(tmp_path / "eval15" / "low" / "1.png", np.full((24, 32), 9, np.uint8))
    write(tmp_path / "eval15" / "high" / "1.png", np.full((24, 32, 4), 200, np.uint8))
    dm = _dm(tmp_path)
    converted = r"2 image\(s\) are not 8-bit RGB.*eval15/low/1.png: grey -> RGB \(channel replicated\)"
    with pytest.warns(UserWarning, match=converted):
        dm.setup()
    item = dm.splits["test"][0]
    assert item["low"].shape == (3, 24, 32) and torch.allclose(
        item["low"], torch.full_like(item["low"], 9 / 255)
    )
    assert torch.allclose(item["high"], torch.full_like(item["high"], 200 / 255))
    with pytest.raises(NonRGBImageError, match=r"eval15/low/1.png: mode L is not RGB"):
        _dm(tmp_path, non_rgb="error").setup()


def test_empty_split_is_an_error(tmp_path):
    make_layout(tmp_path, "lol", n_train=2, n_test=1)
    for f in (tmp_path / "eval15").rglob("*.png"):
        f.unlink()
    (tmp_path / "eval15" / "low" / "notes.txt").write_text("not an image")
    with pytest.raises(EmptySplitError, match=r"test: no image pairs in .*eval15/low"):
        _dm(tmp_path).setup()


def test_check_reports_every_problem_without_raising(tmp_path):
    make_layout(tmp_path, "lol", n_train=3, n_test=2)
    (tmp_path / "our485" / "high" / "3.png").unlink()
    write(tmp_path / "eval15" / "high" / "2.png", np.zeros((10, 10, 3), np.uint8))
    (tmp_path / "eval15" / "low" / "readme.md").write_text("x")
    report = _dm(tmp_path).check(full=True)
    assert not report.ok and len(report.problems) == 2
    text = report.format()
    assert "our485/low/3.png" in text and "32x24 but eval15/high/2.png is 10x10" in text
    assert "ignored (not images): eval15/low/readme.md" in text and "train: 2 pairs" in text
    good = make_layout(tmp_path / "good", "lol")
    assert _dm(good).check(full=True).ok


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="data.source"):
        LowLightDataModule(source="s3")
    with pytest.raises(ValueError, match="data.mode"):
        LowLightDataModule(mode="semi")
    with pytest.raises(ValueError, match="data.dataset"):
        LowLightDataModule(dataset="sid")
    with pytest.raises(ValueError, match=r"value_range must be \[0, 1\] or \[-1, 1\]"):
        LowLightDataModule(value_range=[0, 255])
    with pytest.raises(ValueError, match="data.synthetic: unknown key"):
        LowLightDataModule(synthetic={"brightness": 3})


def test_layout_table_matches_reference():
    assert [fp.low for fp in LAYOUTS["lol"].splits["test"]] == ["eval15/low"]
    assert LAYOUTS["lsrw"].splits["train"][0].low == "Training data/Huawei/low"
    assert LAYOUTS["lolv2_real"].splits["test"][0].high == "Real_captured/Test/Normal"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pair_key("normal00690") == pair_key("low00690")


def test_hf_imagefolder_layouts(tmp_path):
    """A local imagefolder train|test/{low,high}/ and the same pushed to parquet (image + ClassLabel label)."""
    import json as _json

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    cells, labels = {"train": [], "test": []}, {"train": [], "test": []}
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            low, high = pair_arrays(rng, 16, 16)
            write(tmp_path / "folder" / split / "low" / f"{i}.png", low)
            write(tmp_path / "folder" / split / "high" / f"{i}.png", high)
            for label, arr in ((1, low), (0, high)):
                cells[split].append({"bytes": _png_bytes(arr), "path": f"{i}.png"})
                labels[split].append(label)
    dm = LowLightDataModule(source="hf", hf={"path": str(tmp_path / "folder")}, crop=None)
    dm.setup()
    assert len(dm.splits["train"]) == 3 and len(dm.splits["test"]) == 2
    meta = {
        b"huggingface": _json.dumps({"info": {"features": {"label": {"names": ["high", "low"]}}}}).encode()
    }
    (tmp_path / "pq").mkdir()
    for split in ("train", "test"):
        table = pa.table({"image": cells[split], "label": labels[split]})
        pq.write_table(
            table.replace_schema_metadata(meta), tmp_path / "pq" / f"{split}-00000-of-00001.parquet"
        )
    dm = LowLightDataModule(source="hf", hf={"path": str(tmp_path / "pq")}, crop=None)
    dm.setup()
    item = dm.splits["test"][1]
    assert item["low_name"] == "test/low/1.png" and np.array_equal(_u8(item["low"]), _u8(item["high"]) // 4)


# ------------------------------------------------------------------------------------------ declared shape
def test_declared_shape_is_exposed_and_matches_every_item(tmp_path, compose_cfg):
    """The config's image_shape / num_classes / value_range / domain reach the module as attributes, and
    every item it yields has that shape and range (data.common.DataSpec)."""
    import hydra

    make_layout(tmp_path, "lol", n_train=3, n_test=2)
    cfg = compose_cfg("train", ["data=lol", "data.source=local", f"data.path={tmp_path}", "data.crop=16"])
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.image_shape == (3, None, None) and dm.num_classes is None and dm.domain == "lowlight_rgb"
    assert dm.value_range == (0.0, 1.0)
    dm.setup()
    train, test = dm.splits["train"][0], dm.splits["test"][0]
    assert train["low"].shape == (3, 16, 16) and test["low"].shape == (3, 24, 32)
    assert dm.describe()["image_shape"] == [3, None, None] and dm.describe()["domain"] == "lowlight_rgb"
    fixed = _dm(tmp_path, crop=16, eval_resize=16, image_shape=[3, 16, 16])
    fixed.setup()
    assert fixed.splits["test"][1]["high"].shape == (3, 16, 16)
    fixed.spec = dataclasses.replace(fixed.spec, image_shape=(3, 8, 8))  # a spec the items contradict
    fixed.splits["test"].spec = fixed.spec
    with pytest.raises(InputError, match=r"image_shape=\[3, 8, 8\] but eval15/low/1.png holds .* 3x16x16"):
        fixed.splits["test"][0]


@pytest.mark.parametrize(
    "options,message",
    [
        ({"image_shape": [1, None, None]}, r"image_shape=\[1, None, None\]: the low-light images are RGB"),
        ({"image_shape": [3, 16, 16], "crop": 16}, r"declares every item 16x16 .*eval_resize=None"),
        ({"image_shape": [3, 16, 16], "crop": 8, "eval_resize": 16}, r"crop \(or resize\)=\(8, 8\)"),
        ({"num_classes": 2}, "num_classes=2: low-light pairs are unlabelled"),
        ({"domain": "mnist"}, "domain='mnist': the low-light DataModule's domain is lowlight_rgb"),
        ({"colour": "rgb"}, r"unknown key\(s\) \['colour'\]"),
        ({"unpaired": {"high": "train"}}, r"data.unpaired: unknown key\(s\) \['high'\]"),
    ],
)
def test_declared_shape_contradicting_the_options_is_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        LowLightDataModule(**options)


def test_a_crop_larger_than_a_training_image_fails_when_the_loader_is_made(tmp_path):
    make_layout(tmp_path, "lol", n_train=2, n_test=1)  # 32x24 images
    dm = _dm(tmp_path, crop=[24, 40])
    dm.setup()  # evaluation alone does not need the crop
    assert len(dm.test_dataloader()) == 1
    with pytest.raises(
        ConfigError, match=r"data.crop=\[24, 40\] .* larger than 4 training image.*our485/low/1.png \(32x24\)"
    ):
        dm.train_dataloader()
    resized = _dm(tmp_path, crop=48, resize=40)
    resized.setup()
    with pytest.raises(ConfigError, match=r"data.resize=\[40, 40\]"):
        resized.train_dataloader()
