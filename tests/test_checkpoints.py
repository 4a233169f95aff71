"""`runtime.callbacks.ModelCheckpoint`: last.ckpt always holds the latest state (the stock 2.6.6 callback
does not: these tests fail with it), and an improving epoch writes the state once."""

from __future__ import annotations

import os
import shutil

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint as StockModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel

from runtime.callbacks import ModelCheckpoint, replace_with_link


class ScriptedValLoss(BoringModel):
    """Logs a scripted `val/loss` per epoch; can raise in the training step of a given epoch."""

    def __init__(self, losses: list[float], fail_in_epoch: int | None = None):
        super().__init__()
        self.losses, self.fail_in_epoch = losses, fail_in_epoch

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.fail_in_epoch:
            raise RuntimeError("simulated crash")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.losses[self.current_epoch])


def fit(model: pl.LightningModule, callback: pl.Callback, epochs: int) -> None:
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(model)


def epoch_of(path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


@pytest.mark.parametrize("cls", [ModelCheckpoint, StockModelCheckpoint])
def test_last_follows_training_when_the_monitored_value_stops_improving(cls, tmp_path):
    cb = cls(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min", save_top_k=1, save_last=True)
    fit(ScriptedValLoss([1.0, 2.0, 3.0]), cb, epochs=3)
    assert epoch_of(tmp_path / "best.ckpt") == 0
    if cls is StockModelCheckpoint:  # documents the upstream behaviour this subclass exists for
        assert epoch_of(tmp_path / "last.ckpt") == 0
    else:
        assert epoch_of(tmp_path / "last.ckpt") == 2


@pytest.mark.parametrize("cls", [ModelCheckpoint, StockModelCheckpoint])
def test_last_exists_after_a_crash_without_top_k_files(cls, tmp_path):
    cb = cls(dirpath=tmp_path, monitor=None, save_top_k=0, save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(ScriptedValLoss([1.0, 1.0, 1.0], fail_in_epoch=2), cb, epochs=3)
    if cls is StockModelCheckpoint:
        assert not (tmp_path / "last.ckpt").exists()
    else:
        assert epoch_of(tmp_path / "last.ckpt") == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_improving_epoch_links_last_to_best_and_later_epochs_replace_it(tmp_path):
    seen = []

    class Probe(pl.Callback):  # Lightning runs checkpoint callbacks last: look at the files one hook later
        def look(self):
            best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
            seen.append((epoch_of(last), os.path.samefile(best, last)))

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                self.look()

        def on_train_end(self, trainer, pl_module):
            self.look()

    cb = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min", save_last=True)
    model = ScriptedValLoss([2.0, 1.0, 3.0])
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[cb, Probe()], logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model)
    # epochs 0 and 1 improve (last is the best file under a second name), epoch 2 does not (a file of its own)
    assert seen == [(0, True), (1, True), (2, False)]
    assert epoch_of(tmp_path / "best.ckpt") == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary names left
    # the linked state resumes like a written one
    resumed = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6 and "state_dict" in resumed


def test_link_last_false_writes_two_files(tmp_path):
    cb = ModelCheckpoint(
        dirpath=tmp_path, filename="best", monitor="val/loss", save_last=True, link_last=False
    )
    fit(ScriptedValLoss([1.0]), cb, epochs=1)
    assert not os.path.samefile(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    assert epoch_of(tmp_path / "last.ckpt") == 0


def test_replace_with_link_keeps_the_old_target_until_the_rename(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.ckpt", tmp_path / "last.ckpt"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        replace_with_link(src, dst)
    assert dst.read_bytes() == b"old"
    monkeypatch.undo()
    replace_with_link(src, dst)
    assert dst.read_bytes() == b"new" and os.path.samefile(src, dst)


def test_replace_with_link_copies_where_links_are_refused(tmp_path, monkeypatch):
    src, dst = tmp_path / "a.ckpt", tmp_path / "last.ckpt"
    src.write_bytes(b"state")

    def refuse(*args):
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", refuse)
    replace_with_link(src, dst)
    assert dst.read_bytes() == b"state" and not os.path.samefile(src, dst)


def test_checkpoint_writer_keeps_the_previous_file_when_a_save_fails(tmp_path, monkeypatch):
    from runtime.checkpoints import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    assert io.load_checkpoint(path, weights_only=True)["step"] == 1
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # a half-written file ...
        raise KeyboardInterrupt  # ... and the process interrupted

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_trainer_config_uses_the_streaming_checkpoint_writer(compose_cfg, tmp_path):
    import hydra

    from runtime.checkpoints import AtomicCheckpointIO

    cfg = compose_cfg("train", ["experiment=vae_mnist", "logger=none"], run_dir=tmp_path)
    trainer = hydra.utils.instantiate(cfg.trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("how", ["moved", "copied"])
@pytest.mark.parametrize("cls", [ModelCheckpoint, StockModelCheckpoint])
def test_a_moved_or_copied_run_directory_resumes_into_its_own_last_ckpt(cls, how, tmp_path):
    """Lightning forgets its bookkeeping when the checkpoint's dirpath differs: the stock callback then writes
    last-v1.ckpt beside the stale last.ckpt, which the next `ckpt_path=last` would resume from."""
    old, new = tmp_path / "scratch" / "checkpoints", tmp_path / "project" / "checkpoints"

    def callback(d):
        return cls(dirpath=d, filename="best", monitor="val/loss", mode="min", save_top_k=1, save_last=True)

    fit(ScriptedValLoss([3.0, 2.0, 1.0, 0.5]), callback(old), epochs=2)
    (shutil.move if how == "moved" else shutil.copytree)(str(old.parent), str(new.parent))
    model = ScriptedValLoss([3.0, 2.0, 1.0, 0.5])
    trainer = pl.Trainer(
        max_epochs=4, callbacks=[callback(new)], logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, ckpt_path=str(new / "last.ckpt"))
    names = sorted(p.name for p in new.iterdir())
    if cls is StockModelCheckpoint:  # the upstream behaviour this override exists for
        assert "last-v1.ckpt" in names and epoch_of(new / "last.ckpt") == 1
    else:
        assert names == ["best.ckpt", "last.ckpt"] and epoch_of(new / "last.ckpt") == 3
        assert epoch_of(new / "best.ckpt") == 3 and trainer.checkpoint_callback.best_model_path == str(
            new / "best.ckpt"
        )
