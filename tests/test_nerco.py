"""The NeRCo LightningModule: gradient paths of the two variants, the component switches, one manual
optimisation step, the learning-rate schedule, the text backend's start-up errors, the released checkpoints
and the released inference path."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit_modules.nerco import NeRCo
from lit_modules.nerco_losses import ImagePool, linear_decay_factor
from lit_modules.nerco_release import (
    OfficialCheckpointError,
    released_enhance,
    released_input,
    released_size,
    released_uint8,
)
from lit_modules.nets.clip_backend import TextBackendUnavailable
from tests.test_nerco_nets import naive_constant_nrn, random_state, released_g_a, released_h, released_pre

TINY_TEXT = {"backend": "random", "arch": "tiny", "logit_scale": 1.0}


def small(variant: str = "official", **kw) -> NeRCo:
    """Narrow networks (same code, ngf 16, ndf 8, one block) so module-level tests stay fast."""
    torch.manual_seed(0)
    kw.setdefault("text_discriminator", TINY_TEXT)
    return NeRCo(variant=variant, ngf=16, ndf=8, n_blocks=1, **kw)


def batch(n: int = 1, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(
        n, 3, size, size, generator=g
    ) * 2 - 1


def generator_params(m: NeRCo) -> list[torch.nn.Parameter]:
    return [p for net in m.generators for p in net.parameters()]


# ------------------------------------------------------------------------------ the CLIP gradient path
def test_official_text_loss_sends_no_gradient_and_uses_the_released_pools():
    m = small("official")
    A, B = batch()
    o = m.forward_train(A, B)
    text_a, text_b = m.text_terms(o)
    assert text_a > 0 and text_b > 0
    assert not text_a.requires_grad and not text_b.requires_grad  # pooled .data: detached
    # released pool use: fake_B, rec_B and fake_A all go through the fake_B pool; rec_A through the fake_A pool
    assert len(m.pools["fake_B_text"].images) == 3 and len(m.pools["fake_A_text"].images) == 1
    # the whole generator loss still trains G, but its text part adds nothing to any generator gradient
    loss, terms = m.generator_loss(A, B, o)
    grads = torch.autograd.grad(loss, generator_params(m), allow_unused=True, retain_graph=True)
    no_text = sum(v for k, v in terms.items() if not k.startswith("text"))
    grads_no_text = torch.autograd.grad(no_text, generator_params(m), allow_unused=True)
    for g1, g2 in zip(grads, grads_no_text):
        if g1 is not None:
            torch.testing.assert_close(g1, g2)


def test_paper_text_loss_reaches_every_generator():
    m = small("paper")
    A, B = batch()
    o = m.forward_train(A, B)
    text_a, text_b = m.text_terms(o)
    assert text_a.requires_grad and text_b.requires_grad
    assert not m.pools["fake_B_text"].images  # no pools in front of the text-driven discriminator
    for name, net in (("Pre", m.netPre), ("G_A", m.netG_A), ("G_B", m.netG_B), ("H", m.netH)):
        grads = torch.autograd.grad(
            text_a + text_b, list(net.parameters()), allow_unused=True, retain_graph=True
        )
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in m.text_backend.parameters())  # CLIP stays frozen


def test_edge_discriminators_see_rgb_in_the_official_generator_loss(monkeypatch):
    seen = {}
    for variant in ("official", "paper"):
        m = small(variant)
        A, B = batch()
        o = m.forward_train(A, B)
        calls = []
        monkeypatch.setattr(
            m.edge,
            "forward",
            lambda x, calls=calls: calls.append(x) or x.mean(1, keepdim=True).expand(-1, 3, -1, -1),
        )
        m.generator_loss(A, B, o)
        seen[variant] = len(calls)
    assert seen == {"official": 0, "paper": 2}


# ------------------------------------------------------------------------------ component switches
EXPECTED_TERMS = {
    "G_A", "cycle_A", "G_B", "cycle_B", "G_B_pre", "idt_A", "idt_B", "G_A_edge", "G_B_edge",
    "text_A", "text_B", "pre_consis", "mask",
}  # fmt: skip
ABLATIONS = {
    "nrn": {"G_B_pre", "pre_consis"},
    "mask_extractor": {"mask"},
    "text_discriminator": {"text_A", "text_B"},
    "edge_discriminators": {"G_A_edge", "G_B_edge"},
    "second_loop": {"G_B", "cycle_B", "G_B_edge"},
    "identity": {"idt_A", "idt_B"},
    "consistency": {"pre_consis"},
}


@pytest.mark.parametrize("off", [None, *ABLATIONS])
def test_each_component_switch_removes_its_terms(off):
    m = small("paper", components={off: False} if off else None)
    A, B = batch()
    o = m.forward_train(A, B)
    loss, terms = m.generator_loss(A, B, o)
    assert set(terms) == EXPECTED_TERMS - ABLATIONS.get(off, set())
    assert torch.isfinite(loss)
    d_loss, d_terms = m.discriminator_losses(A, B, o)
    assert torch.isfinite(d_loss)
    if off == "edge_discriminators":
        assert m.netD_A_edge is None and set(d_terms) == {"D_A", "D_B"}
    if off == "second_loop":
        assert o["fake_A"] is None and "D_B_edge" not in d_terms
    if off == "nrn":
        assert m.netPre is None
        torch.testing.assert_close(m(A), m.netG_A(torch.cat([A, A], 1) * m.netH(A)[1]))


def test_unknown_switch_or_variant_is_refused():
    with pytest.raises(ValueError, match=r"unknown model.components keys \['nrm'\]"):
        small(components={"nrm": False})
    with pytest.raises(ValueError, match="variant must be one of"):
        small("papr")


# ------------------------------------------------------------------------------ optimisation
class Unpaired(Dataset):
    def __init__(self, n: int, size: int, paired: bool = False):
        self.n, self.size, self.paired = n, size, paired

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a, b = (t[0] for t in batch(1, self.size, seed=i))
        return {"low": a, "high": b} if self.paired else {"A": a, "B": b}


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_one_manual_optimisation_step_changes_g_and_d(variant, tmp_path):
    m = small(variant)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(m, DataLoader(Unpaired(2, 32), batch_size=1))
    after = m.state_dict()
    for net in ("netPre", "netG_A", "netG_B", "netH", "netD_A", "netD_B", "netD_A_edge", "netD_B_edge"):
        keys = [k for k in after if k.startswith(net + ".") and k.endswith("weight")]
        assert keys and all(not torch.equal(after[k], before[k]) for k in keys), net
    # Adam's first step moves every weight by ~lr
    assert (after["netG_A.model.1.weight"] - before["netG_A.model.1.weight"]).abs().max() == pytest.approx(
        2e-4, rel=1e-3
    )
    metrics = trainer.callback_metrics
    assert {"train/loss_G", "train/loss_D", "train/text_A", "train/D_B_edge"} <= set(metrics)


def test_validation_logs_psnr_ssim_and_the_image_grid(tmp_path, monkeypatch):
    from core.figures import figure_layout, tile_to_uint8

    m = small("official", components={"text_discriminator": False})
    logged = []
    monkeypatch.setattr(
        "lit_modules.nerco.log_figure", lambda module, key, image, caption=None: logged.append((key, image))
    )
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(
        m, DataLoader(Unpaired(1, 32), batch_size=1), DataLoader(Unpaired(2, 36, paired=True), batch_size=2)
    )
    metrics = trainer.callback_metrics
    assert {"val/psnr", "val/ssim", "val/loss"} <= set(metrics)
    assert 0 < float(metrics["val/psnr"]) < 60 and -1 <= float(metrics["val/ssim"]) <= 1
    # one labelled figure: 2 rows of low | NeRCo | high, a PSNR caption under low and NeRCo
    key, image = logged[0]
    layout = figure_layout(
        [(36, 36)] * 6, 3, title=f"NeRCo validation, epoch 0, step {m.global_step}: PSNR against the ground truth",
        row_labels=["image 1", "image 2"],
        col_labels=["low (input)", "NeRCo", "high (ground truth)"],
        captions=["PSNR 10.00 dB", "PSNR 10.00 dB", "reference"] * 2, min_size=128,
    )  # fmt: skip
    assert key == "val/enhanced" and image.dtype == np.uint8
    assert image.shape == (layout.height, layout.width, 3)
    # the first low image, [-1, 1] -> [0, 255], upscaled x4 (36 px -> 144 px), at its computed place
    low = tile_to_uint8(Unpaired(2, 36, paired=True)[0]["low"], value_range=(-1, 1))
    top, left, h, w = layout.tile_box(0)
    assert layout.scale == 4
    assert np.array_equal(image[top : top + h, left : left + w], low.repeat(4, axis=0).repeat(4, axis=1))


@pytest.mark.parametrize(
    ("step_at_start", "expected"),
    [
        (False, {0: 1.0, 99: 1.0, 100: 1 - 1 / 201, 200: 1 - 101 / 201, 299: 1 / 201}),  # CycleGAN / paper
        (
            True,
            {0: 1.0, 98: 1.0, 99: 1 - 1 / 201, 100: 1 - 2 / 201, 200: 1 - 102 / 201, 299: 0.0},
        ),  # released
    ],
)
def test_learning_rate_schedule(step_at_start, expected):
    for epoch, factor in expected.items():
        assert linear_decay_factor(epoch, 100, 200, step_at_start) == pytest.approx(factor, abs=1e-12), epoch
    m = small("official" if step_at_start else "paper")
    opts = m.configure_optimizers()
    assert [type(o).__name__ for o in opts] == ["Adam", "Adam"]
    assert opts[0].param_groups[0]["betas"] == (0.5, 0.999)
    n_g = sum(p.numel() for g in opts[0].param_groups for p in g["params"])
    assert n_g == sum(p.numel() for p in generator_params(m))
    for epoch, factor in expected.items():
        m.apply_lr_schedule(opts, epoch)
        for opt in opts:
            assert opt.param_groups[0]["lr"] == pytest.approx(2e-4 * factor, abs=1e-15)


@pytest.mark.parametrize(("variant", "expected"), [("paper", [2e-4, 1e-4]), ("official", [1e-4, 0.0])])
def test_trainer_runs_each_epoch_at_the_scheduled_rate(variant, expected, tmp_path):
    """n_epochs=1, n_epochs_decay=1: the rate each epoch's steps see, and what LearningRateMonitor logs."""
    seen, logged = [], []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append([g["lr"] for opt in trainer.optimizers for g in opt.param_groups])

    class Logged(pl.loggers.CSVLogger):
        def log_metrics(self, metrics, step=None):
            logged.extend(v for k, v in metrics.items() if k.startswith("lr-"))

    m = small(variant, n_epochs=1, n_epochs_decay=1, components={"text_discriminator": False})
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=1, accelerator="cpu", enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        logger=Logged(tmp_path), callbacks=[Record(), pl.callbacks.LearningRateMonitor("epoch")],
    )  # fmt: skip
    trainer.fit(m, DataLoader(Unpaired(1, 32), batch_size=1))
    assert [lrs[0] for lrs in seen] == pytest.approx(expected) and all(len(set(lrs)) == 1 for lrs in seen)
    assert logged[::2] == pytest.approx(expected)  # two optimizers, one value each per epoch


def test_image_pool_is_detached_and_bounded():
    pool = ImagePool(2)
    x = torch.zeros(3, 1, 2, 2, requires_grad=True)
    out = pool.query(x * 2)
    assert not out.requires_grad and len(pool.images) == 2 and out.shape == x.shape
    assert ImagePool(0).query(x) is x


# ------------------------------------------------------------------------------ text backend start-up
def test_missing_text_backend_fails_at_start_with_instructions(tmp_path):
    m = small("official", text_discriminator={"backend": "open_clip"})  # construction never needs CLIP
    try:
        import open_clip  # noqa: F401

        pytest.skip("open_clip is importable here")
    except Exception:  # noqa: BLE001
        pass
    with pytest.raises(
        TextBackendUnavailable, match=r"pip install -e '\.\[clip\]'.*text_discriminator=false"
    ):
        m.setup("fit")
    m2 = small("official", text_discriminator={"backend": "file", "file": str(tmp_path / "none.pt")})
    with pytest.raises(TextBackendUnavailable, match=r"none\.pt does not exist.*clip_backend export"):
        m2.setup("fit")
    m3 = small(
        "official", components={"text_discriminator": False}, text_discriminator={"backend": "open_clip"}
    )
    m3.setup("fit")  # disabled: nothing to build
    assert m3.text_backend is None


def test_configs_compose_and_instantiate(compose_cfg):
    for model in ("nerco", "nerco_paper"):
        cfg = compose_cfg(
            "train",
            [
                f"model={model}",
                "model.text_discriminator.backend=random",
                "model.ngf=8",
                "model.ndf=8",
                "model.n_blocks=1",
            ],
        )
        m = hydra.utils.instantiate(cfg.model)
        assert isinstance(m, NeRCo) and m.hparams.variant == model.replace("nerco_", "").replace(
            "nerco", "official"
        )
        assert m.optimizer_factory.keywords == {"lr": 2e-4, "betas": [0.5, 0.999]}
    paper = hydra.utils.instantiate(
        compose_cfg("train", ["model=nerco_paper", "model.ngf=8", "model.n_blocks=1"]).model
    )
    assert paper.faithful["text_inputs"] == "direct" and paper.netPre.coordinates == "liif"
    mixed = hydra.utils.instantiate(
        compose_cfg(
            "train", ["model=nerco", "model.faithful.nrn_coordinates=liif", "model.ngf=8", "model.n_blocks=1"]
        ).model
    )
    assert mixed.faithful["text_inputs"] == "pooled" and mixed.netPre.coordinates == "liif"


# ------------------------------------------------------------------------------ released checkpoints
def write_released(directory, layouts=None):
    directory.mkdir(parents=True, exist_ok=True)
    layouts = layouts or {"G_A": released_g_a(), "Pre": released_pre(), "H": released_h()}
    states = {}
    for i, (name, layout) in enumerate(layouts.items()):
        states[name] = random_state(layout, seed=i)
        torch.save(states[name], directory / f"latest_net_{name}.pth")
    return states


def test_official_checkpoint_loads_strictly(tmp_path):
    states = write_released(tmp_path / "lol")
    m = NeRCo(official_ckpt_dir=str(tmp_path / "lol"), components={"text_discriminator": False})
    assert not m.needs_checkpoint and small().needs_checkpoint
    for name, net in (("G_A", m.netG_A), ("Pre", m.netPre), ("H", m.netH)):
        for k, v in net.state_dict().items():
            assert torch.equal(v, states[name][k]), (name, k)
    assert "released checkpoints" in m.metric_protocol()["weights"]


def test_official_checkpoint_errors_name_files_keys_and_shapes(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="is not a directory"):
        NeRCo(official_ckpt_dir=str(tmp_path / "nowhere"))
    d = tmp_path / "partial"
    write_released(d)
    (d / "latest_net_H.pth").unlink()
    with pytest.raises(OfficialCheckpointError, match=r"lacks \['latest_net_H.pth'\]"):
        NeRCo(official_ckpt_dir=str(d))

    bad_pre = released_pre()
    bad_pre["mlp.imnet.layers.0.weight"] = (256, 580)  # e.g. another positional-encoding length
    bad_pre["mlp.extra.weight"] = (3,)
    bad_g = released_g_a()
    del bad_g["model.26.bias"]
    d2 = tmp_path / "wrong"
    write_released(d2, {"G_A": bad_g, "Pre": bad_pre, "H": released_h()})
    with pytest.raises(OfficialCheckpointError) as err:
        NeRCo(official_ckpt_dir=str(d2))
    msg = str(err.value)
    assert "latest_net_G_A.pth: missing keys (1): ['model.26.bias']" in msg
    assert "latest_net_Pre.pth: unexpected keys (1): ['mlp.extra.weight']" in msg
    assert (
        "latest_net_Pre.pth: mlp.imnet.layers.0.weight has shape (256, 580) in the file, (256, 612) in the model"
        in msg
    )
    assert "latest_net_H.pth" not in msg

    (d / "latest_net_H.pth").write_text("not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="latest_net_H.pth: not a readable PyTorch state_dict"):
        NeRCo(official_ckpt_dir=str(d))
    write_released(tmp_path / "ok")
    with pytest.raises(OfficialCheckpointError, match="needs the NRN and the mask extractor"):
        NeRCo(official_ckpt_dir=str(tmp_path / "ok"), components={"nrn": False})


def test_released_size_rounds_halves_to_even():
    assert released_size(400, 600) == (400, 600)
    assert released_size(402, 598) == (400, 600)  # round(100.5) = 100, round(149.5) = 150
    assert released_size(6, 10) == (8, 8)  # round(1.5) = 2, round(2.5) = 2
    assert released_size(721, 959) == (720, 960)


def test_released_inference_path_matches_a_direct_reimplementation(tmp_path):
    write_released(tmp_path / "ckpt")
    m = NeRCo(official_ckpt_dir=str(tmp_path / "ckpt"), components={"text_discriminator": False})
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8))
    x = released_input(img)
    assert x.shape == (1, 3, 32, 40) and x.min() >= -1 and x.max() <= 1
    resized = np.asarray(img.resize((40, 32), Image.BICUBIC), dtype=np.float32)
    torch.testing.assert_close(
        x[0].permute(1, 2, 0), torch.from_numpy(resized / 127.5 - 1), atol=1e-6, rtol=0
    )
    with torch.no_grad():
        out = released_enhance(m.netG_A, m.netPre, m.netH, x, chunk_pixels=80)
        pre = naive_constant_nrn(m.netPre, x)
        want = (m.netG_A(torch.cat([x, pre], 1) * m.netH(x)[1]) + 1) / 2
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.enhance(x), out * 2 - 1, atol=1e-5, rtol=1e-5)  # module path, chunked
        y = m.enhance(torch.rand(1, 3, 30, 41) * 2 - 1)  # any size in, same size out
    assert y.shape == (1, 3, 30, 41)
    u8 = released_uint8(out)
    assert u8.dtype == np.uint8 and u8.shape == (32, 40, 3)
    assert np.array_equal(u8, (out[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))  # truncation
    with pytest.raises(ValueError, match="batch size 1"):
        released_enhance(m.netG_A, m.netPre, m.netH, torch.cat([x, x]))


def test_hydra_hands_plain_containers_and_inference_options_are_checked(compose_cfg, tmp_path):
    """configs/model/nerco.yaml converts nested options (`_convert_: all`), so the hyperparameters a
    checkpoint stores load with weights_only=True; `set_inference_options` replaces and checks the three
    inference settings (what `experiments.enhance` passes)."""
    from core.errors import ConfigError

    small_nets = ["model.ngf=8", "model.ndf=8", "model.n_blocks=1", "model.text_discriminator.backend=random"]
    cfg = compose_cfg("train", ["model=nerco", *small_nets])
    m = hydra.utils.instantiate(cfg.model)
    for key in ("faithful", "components", "weights", "text_discriminator", "protocol"):
        assert type(m.hparams[key]) is dict, key
    torch.save(dict(m.hparams), tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["protocol"]["colour"] == "rgb"
    assert m.inference_options() == {
        "nrn_chunk_pixels": 16384,
        "inference_resize": "round_to_4",
        "inference_bf16": False,
    }
    m.set_inference_options(nrn_chunk_pixels=400)
    m.set_inference_options(inference_resize="pad")
    m.set_inference_options(inference_bf16=True)
    assert m.inference_options() == {
        "nrn_chunk_pixels": 400,
        "inference_resize": "pad",
        "inference_bf16": True,
    }
    with pytest.raises(ConfigError, match="inference_bf16='yes': expected true or false"):
        m.set_inference_options(inference_bf16="yes")
    with pytest.raises(ConfigError, match=r"inference_resize must be one of \['pad', 'round_to_4'\]"):
        m.set_inference_options(inference_resize="crop")
    with pytest.raises(ConfigError, match="nrn_chunk_pixels=0: expected a positive number"):
        m.set_inference_options(nrn_chunk_pixels=0)
    assert m.inference_options()["nrn_chunk_pixels"] == 400  # a refused value changes nothing
