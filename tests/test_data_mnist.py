"""MNIST DataModule: the embedded split, the local layouts, the hub's offline failure, and the sampler."""

import gzip
import io
import struct

import numpy as np
import pytest
import torch

from data.common import EpochSeededSampler
from data.mnist import DataFormatError, MNISTDataModule, read_embedded


@pytest.fixture(scope="module")
def embedded():
    return read_embedded()


def test_embedded_split_is_fixed_disjoint_and_shuffled(embedded):
    dm = MNISTDataModule(source="embedded", split_seed=1234)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    x, y = dm.splits["train"][0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    # the file is sorted by label; the split must not be
    assert len(set(dm.splits["train"].labels[:64].tolist())) >= 8
    # fixed: a second module gives the same split; another split_seed a different one
    dm2 = MNISTDataModule(source="embedded", split_seed=1234)
    dm2.setup()
    assert torch.equal(dm.splits["test"].images, dm2.splits["test"].images)
    dm3 = MNISTDataModule(source="embedded", split_seed=99)
    dm3.setup()
    assert not torch.equal(dm.splits["test"].images, dm3.splits["test"].images)
    # disjoint: no test image appears in train
    train_bytes = {bytes(img.numpy()) for img in dm.splits["train"].images}
    assert not any(bytes(img.numpy()) in train_bytes for img in dm.splits["test"].images)
    assert dm.describe()["comparable_with_papers"] is False


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(100, seed=3), EpochSeededSampler(100, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(100))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochSeededSampler(100, seed=4)) != list(EpochSeededSampler(100, seed=3))


def test_train_loader_order_is_independent_of_global_rng():
    dm = MNISTDataModule(source="embedded", shuffle_seed=0, batch_size=32)
    dm.setup()
    torch.manual_seed(1)
    first = next(iter(dm.train_dataloader()))[1]
    torch.manual_seed(2)
    assert torch.equal(first, next(iter(dm.train_dataloader()))[1])


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0803 if arr.ndim == 3 else 0x0801
    return (
        struct.pack(">I", magic)
        + b"".join(struct.pack(">I", d) for d in arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


def _write_idx_dir(folder, x, y, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": x[:300],
        "train-labels-idx1-ubyte": y[:300],
        "t10k-images-idx3-ubyte": x[300:400],
        "t10k-labels-idx1-ubyte": y[300:400],
    }
    for name, arr in files.items():
        data = _idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz,sub", [(False, ""), (True, "raw")])
def test_local_idx_layout(tmp_path, embedded, gz, sub):
    x, y = embedded
    _write_idx_dir(tmp_path / sub if sub else tmp_path, x, y, gz=gz)
    dm = MNISTDataModule(source="local", path=str(tmp_path), val_size=50)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 250, "val": 50, "test": 100}
    assert torch.equal(dm.splits["test"].images[:, 0], torch.from_numpy(x[300:400]))


def test_local_parquet_layout(tmp_path, embedded):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from PIL import Image

    x, y = embedded

    def table(idx):
        cells = []
        for i in idx:
            buf = io.BytesIO()
            Image.fromarray(x[i]).save(buf, format="PNG")
            cells.append({"bytes": buf.getvalue(), "path": None})
        return pa.table({"image": cells, "label": [int(y[i]) for i in idx]})

    (tmp_path / "mnist").mkdir()
    pq.write_table(table(range(0, 120)), tmp_path / "mnist" / "train-00000-of-00001.parquet")
    pq.write_table(table(range(120, 150)), tmp_path / "mnist" / "test-00000-of-00001.parquet")
    dm = MNISTDataModule(source="local", path=str(tmp_path), val_size=20)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 100, "val": 20, "test": 30}
    assert torch.equal(dm.splits["test"].images[:, 0], torch.from_numpy(x[120:150]))


def test_local_imagefolder_layout(tmp_path, embedded):
    from PIL import Image

    x, y = embedded
    for split, idx in (("train", range(0, 5000, 50)), ("test", range(25, 5000, 250))):
        for i in idx:
            d = tmp_path / split / str(y[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i}.png")
    dm = MNISTDataModule(source="local", path=str(tmp_path), val_size=10)
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 90, "val": 10, "test": 20}


def test_missing_local_path_names_path_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:  # refused when built, before any work
        MNISTDataModule(source="local", path=str(tmp_path / "nope"))
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and "train-images-idx3-ubyte" in msg and "parquet" in msg


def test_unrecognised_local_folder_lists_what_it_holds(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="readme.txt"):
        MNISTDataModule(source="local", path=str(tmp_path))


def test_malformed_idx_names_the_file(tmp_path, embedded):
    x, y = embedded
    _write_idx_dir(tmp_path, x, y)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x03" + bad.read_bytes()[4:])
    with pytest.raises(DataFormatError, match="t10k-images-idx3-ubyte.*magic"):
        MNISTDataModule(source="local", path=str(tmp_path)).setup()


def test_truncated_idx_names_the_file_and_sizes(tmp_path, embedded):
    x, y = embedded
    _write_idx_dir(tmp_path, x, y)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: header says \(300, 28, 28\)"):
        MNISTDataModule(source="local", path=str(tmp_path)).setup()


def test_hub_offline_fails_fast_naming_alternatives():
    dm = MNISTDataModule(source="hub", hub_id="ylecun/mnist")
    with pytest.raises(ConnectionError) as err:
        dm.setup()
    msg = str(err.value)
    assert "ylecun/mnist" in msg and "data.source=embedded" in msg and "data.source=local" in msg


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="embedded"):
        MNISTDataModule(source="s3")


def test_hub_on_a_blackholed_network_falls_back_to_the_cache_within_seconds(monkeypatch, caplog):
    """data.source=hub with no answer from the hub: a few seconds, then the local cache only (offline) and a
    clear error naming the offline alternatives, not a hang of minutes."""
    import socket
    import time

    from core.errors import NetworkError
    from data.mnist import read_hub

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    def blackhole(address, timeout=None):
        time.sleep(min(timeout or 0, 0.2))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # an empty cache
    start = time.perf_counter()
    with pytest.raises(NetworkError, match="data.source=embedded"):
        read_hub("nobody/no-such-mnist")
    assert time.perf_counter() - start < 60
    assert "did not answer" in caplog.text
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
