"""Labelled figures (core.figures) and the figures the modules log with them: exact tile pixels at the computed
offsets, text only in the strips that were given a label, uint8 RGB out, and a short VAE run's files."""

import numpy as np
import pytest
import torch
from PIL import Image

from core import figures as F
from core.figures import BACKGROUND, SEPARATOR, figure, figure_layout, tile_to_uint8, upscale_factor

DARK = 96  # a text pixel: black glyphs, anti-aliased


def box_pixels(img, box):
    top, left, h, w = box
    return img[top : top + h, left : left + w]


def has_text(img, box):
    return int((box_pixels(img, box) < DARK).sum()) > 3


def is_blank(img, box):
    return bool((box_pixels(img, box) == BACKGROUND).all())


def grey_tiles(n, h=28, w=28, seed=0):
    """Float tiles whose values are exact k / 255, so the uint8 conversion is known."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, h, w), generator=g).float() / 255


def test_tiles_appear_exactly_upscaled_at_the_layout_offsets():
    x = grey_tiles(6)
    kw = dict(
        title="a title", row_labels=["first", "second"], col_labels=["a", "b", "c"], captions=list("uvwxyz")
    )
    img = figure(x, 3, **kw)
    layout = figure_layout([(28, 28)] * 6, 3, **kw)
    assert img.dtype == np.uint8 and img.shape == (layout.height, layout.width, 3)
    assert layout.scale == 3 and layout.cell_h == layout.cell_w == 84  # MNIST: 28 px -> 84 px at min_size 64
    for i in range(6):
        want = (x[i, 0].numpy() * 255).round().astype(np.uint8)
        want = np.kron(want, np.ones((3, 3), np.uint8))
        got = box_pixels(img, layout.tile_box(i))
        assert got.shape == (84, 84, 3)
        for c in range(3):  # grey repeated into R, G and B
            np.testing.assert_array_equal(got[..., c], want)


def test_rgb_layouts_value_range_and_uint8_input_keep_their_pixels():
    g = torch.Generator().manual_seed(1)
    chw = torch.randint(0, 256, (3, 20, 30), generator=g).float() / 255
    hwc = chw.permute(1, 2, 0).numpy()
    u8 = (hwc * 255).round().astype(np.uint8)
    want = u8
    assert np.array_equal(tile_to_uint8(chw), want)
    assert np.array_equal(tile_to_uint8(hwc), want)
    assert np.array_equal(tile_to_uint8(u8), want)
    assert np.array_equal(tile_to_uint8(chw * 2 - 1, value_range=(-1, 1)), want)
    img = figure([chw, hwc, u8], 3, scale=2)
    layout = figure_layout([(20, 30)] * 3, 3, scale=2)
    for i in range(3):
        np.testing.assert_array_equal(
            box_pixels(img, layout.tile_box(i)), np.kron(want, np.ones((2, 2, 1), np.uint8))
        )
    # out-of-range floats are clipped, NaN is black
    assert tile_to_uint8(np.array([[-1.0, 2.0, np.nan]])).tolist() == [[[0] * 3, [255] * 3, [0] * 3]]


def test_upscale_factor_is_an_integer_capped_at_max_scale():
    assert upscale_factor(28, 28) == 3 and upscale_factor(28, 28, min_size=56) == 2
    assert upscale_factor(400, 600) == 1 and upscale_factor(64, 64) == 1
    assert upscale_factor(2, 2) == F.DEFAULT_MAX_SCALE and upscale_factor(2, 2, max_scale=4) == 4


def test_label_strips_have_text_only_where_a_label_was_given():
    img_kw = dict(
        title="title text",
        row_labels=["input", None],
        col_labels=["col 0", "", "col 2"],
        captions=["PSNR 24.31 dB", None, None, None, None, "last"],
    )
    img = figure(grey_tiles(6), 3, **img_kw)
    layout = figure_layout([(28, 28)] * 6, 3, **img_kw)
    assert layout.title_h and layout.col_label_h and layout.row_label_w and layout.caption_h
    assert has_text(img, layout.title_box())
    assert has_text(img, layout.row_label_box(0)) and is_blank(img, layout.row_label_box(1))
    assert has_text(img, layout.col_label_box(0)) and is_blank(img, layout.col_label_box(1))
    assert has_text(img, layout.col_label_box(2))
    assert has_text(img, layout.caption_box(0)) and has_text(img, layout.caption_box(5))
    assert all(is_blank(img, layout.caption_box(i)) for i in (1, 2, 3, 4))
    # the strips are light: white background, at most the glyphs dark
    assert (box_pixels(img, layout.title_box()) == BACKGROUND).mean() > 0.7


def test_without_labels_there_are_no_strips_and_the_size_is_the_bare_grid():
    img = figure(grey_tiles(5), 4)  # 2 rows, the last 3 cells empty
    layout = figure_layout([(28, 28)] * 5, 4)
    assert (layout.title_h, layout.col_label_h, layout.row_label_w, layout.caption_h) == (0, 0, 0, 0)
    gap, cell = layout.gap, 84
    assert img.shape == (F.MARGIN * 2 + gap + 2 * (cell + gap), F.MARGIN * 2 + gap + 4 * (cell + gap), 3)
    assert not (img < DARK).all(axis=-1)[: F.MARGIN].any()  # the top margin is white
    assert (img[: F.MARGIN] == BACKGROUND).all()
    # thin separators between the cells, and an empty cell is blank
    top, left, h, w = layout.cell_box(0, 1)
    assert (img[top : top + h, left - gap : left] == SEPARATOR).all()
    assert is_blank(img, layout.cell_box(1, 3))


def test_long_text_wraps_and_stays_inside_its_box():
    long_title = " ".join(["word"] * 60)
    img = figure(grey_tiles(2), 2, title=long_title, col_labels=["a very long column label indeed", "b"])
    layout = figure_layout(
        [(28, 28)] * 2, 2, title=long_title, col_labels=["a very long column label indeed", "b"]
    )
    assert len(layout.title_lines) > 1 and len(layout.col_label_lines[0]) > 1
    assert has_text(img, layout.col_label_box(1))
    # nothing outside the boxes: the cells still hold exactly their tiles
    for i in range(2):
        want = np.kron(
            (grey_tiles(2)[i, 0].numpy() * 255).round().astype(np.uint8), np.ones((3, 3), np.uint8)
        )
        np.testing.assert_array_equal(box_pixels(img, layout.tile_box(i))[..., 0], want)


def test_mixed_sizes_are_centred_and_none_leaves_a_cell_empty():
    a, b = grey_tiles(1, 28, 28)[0], grey_tiles(1, 20, 10, seed=3)[0]
    img = figure([a, None, b], 3)
    layout = figure_layout([(28, 28), None, (20, 10)], 3)
    top, left, h, w = layout.tile_box(2)
    ctop, cleft, ch, cw = layout.cell_box(0, 2)
    assert (h, w) == (60, 30) and top - ctop == (ch - h) // 2 and left - cleft == (cw - w) // 2
    np.testing.assert_array_equal(
        box_pixels(img, layout.tile_box(2))[..., 0],
        np.kron((b[0].numpy() * 255).round().astype(np.uint8), np.ones((3, 3), np.uint8)),
    )
    assert layout.tile_box(1) is None and is_blank(img, layout.cell_box(0, 1))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="row_labels"):
        figure(grey_tiles(4), 2, row_labels=["only one"])
    with pytest.raises(ValueError, match="col_labels"):
        figure(grey_tiles(4), 2, col_labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="captions"):
        figure(grey_tiles(4), 2, captions=["a"])
    with pytest.raises(ValueError, match="channels"):
        figure([np.zeros((5, 5, 4))])
    with pytest.raises(ValueError, match="at least one tile"):
        figure([None])


def test_old_pillow_default_font_without_a_size_still_labels(monkeypatch):
    from PIL import ImageFont

    original = ImageFont.load_default

    def no_size(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return original()

    monkeypatch.setattr(ImageFont, "load_default", no_size)
    F.load_font.cache_clear()
    try:
        img = figure(grey_tiles(2), 2, row_labels=["row"], font_size=13)
        layout = figure_layout([(28, 28)] * 2, 2, row_labels=["row"], font_size=13)
        assert has_text(img, layout.row_label_box(0))
    finally:
        F.load_font.cache_clear()


# ------------------------------------------------------------------------------------------ module figures
def test_side_by_side_labels_every_panel_and_its_psnr():
    from lit_modules.restoration import side_by_side_figure

    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    panels = [("low (input)", x[0], "PSNR 10.00 dB"), ("wiener", x[1], "PSNR 24.31 dB"), ("high", x[2], None)]
    img = side_by_side_figure(panels, "img_1: PSNR against the ground truth")
    layout = figure_layout(
        [(40, 40)] * 3, 3, title="img_1: PSNR against the ground truth", col_labels=[p[0] for p in panels],
        captions=[p[2] for p in panels], min_size=128,
    )  # fmt: skip
    assert layout.scale == 4 and img.shape == (layout.height, layout.width, 3)  # 40 px panels -> 160 px
    assert all(has_text(img, layout.col_label_box(c)) for c in range(3))
    assert has_text(img, layout.caption_box(1)) and is_blank(img, layout.caption_box(2))


def test_ddpm_sample_grid_titles_the_sampler_and_labels_class_columns():
    from lit_modules.ddpm import samples_figure

    x = grey_tiles(20)
    sampling = {"sampler": "ddim", "steps": 50, "eta": 0.0, "guidance_scale": 3.0, "weights": "EMA weights"}
    img = samples_figure(x, sampling, first_seed=100, num_classes=10)
    layout = figure_layout(
        [(28, 28)] * 20, 10, title="DDPM samples: ddim, 50 steps, eta 0, guidance 3, EMA weights",
        row_labels=["seeds 100-109", "seeds 110-119"], col_labels=[f"class {c}" for c in range(10)],
    )  # fmt: skip
    assert img.shape == (layout.height, layout.width, 3)
    assert all(has_text(img, layout.col_label_box(c)) for c in range(10))
    # a fixed class label: no class columns, the label in the title instead
    img = samples_figure(x, {**sampling, "class_label": 7}, first_seed=0, num_classes=10, ncols=5)
    layout = figure_layout(
        [(28, 28)] * 20, 5, title="DDPM samples: ddim, 50 steps, eta 0, guidance 3, class 7, EMA weights",
        row_labels=[f"seeds {s}-{s + 4}" for s in range(0, 20, 5)],
    )  # fmt: skip
    assert img.shape == (layout.height, layout.width, 3) and layout.col_label_h == 0


def test_log_figure_sends_uint8_to_the_image_loggers_and_refuses_floats():
    from types import SimpleNamespace

    from lit_modules.images import log_figure, psnr_text

    got = []
    logger = SimpleNamespace(log_image=lambda **kw: got.append(kw))
    module = SimpleNamespace(
        _trainer=SimpleNamespace(is_global_zero=True), loggers=[logger, object()], global_step=7
    )
    img = figure(grey_tiles(1), 1)
    log_figure(module, "val/x", img, caption="c")
    assert got == [{"key": "val/x", "images": [img], "step": 7, "caption": ["c"]}]
    with pytest.raises(TypeError, match="uint8"):
        log_figure(module, "val/x", img.astype(np.float32) / 255)
    module._trainer = None
    log_figure(module, "val/x", img)  # no trainer: nothing logged
    assert len(got) == 1
    assert psnr_text(24.314) == "PSNR 24.31 dB" and "inf" in psnr_text(float("inf"))


def test_a_short_vae_run_writes_labelled_reconstructions(tmp_path, compose_cfg):
    from experiments.train import train

    run_dir = tmp_path / "vae"
    # debug=fdr turns Lightning's loggers off (no image files): a one-epoch debug=limit run instead
    overrides = ["experiment=vae_mnist", "debug=limit", "logger=none", "trainer.max_epochs=1"]
    overrides += ["trainer.limit_train_batches=2", "model.nll_samples=2", "model.image_every_n_epochs=1"]
    train(compose_cfg("train", overrides, run_dir=run_dir))
    img = np.asarray(Image.open(run_dir / "images" / "test" / "reconstructions.png"))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
    # 8 inputs over 8 reconstructions, the rows labelled, a one-line title
    layout = figure_layout(
        [(28, 28)] * 16, 8, title="VAE reconstructions", row_labels=["input", "reconstruction"]
    )
    assert img.shape == (layout.height, layout.width, 3)
    assert has_text(img, layout.title_box())
    assert has_text(img, layout.row_label_box(0)) and has_text(img, layout.row_label_box(1))
    assert list((run_dir / "images" / "val" / "reconstructions").glob("step_*.png"))
    for i in (0, 8):  # each source pixel is an exact 3 x 3 block
        tile = box_pixels(img, layout.tile_box(i))[..., 0].astype(int)
        assert (tile.reshape(28, 3, 28, 3) == tile[::3, ::3][:, None, :, None]).all()
    assert box_pixels(img, layout.tile_box(0)).std() > 30  # an MNIST digit in the input row
