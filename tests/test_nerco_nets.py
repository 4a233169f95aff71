"""NeRCo's networks: shapes, parameter counts and the released checkpoint key layout (Ysz2022/NeRCo),
the NRN's coordinate modes and chunking, the mask extractor, the edge operators, the CLIP image tower."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_modules.nets.clip_backend import RN50, ModifiedResNet, random_backend
from lit_modules.nets.cyclegan import PatchDiscriminator, ResnetGenerator
from lit_modules.nets.nerco import NRN, EdgeOperator, MaskExtractor, make_coord, positional_encoding


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------- released key layout, by hand
def _trunk_keys(in_ch: int) -> dict[str, tuple[int, ...]]:
    """The released CycleGAN trunk: model.1 (64,in,7,7), model.4, model.7, model.{10..18}.conv_block.{1,5} (256,256,3,3),
    model.19 ConvTranspose (256,128,3,3), model.22 (128,64,3,3); each with weight and bias."""
    keys = {"model.1.weight": (64, in_ch, 7, 7), "model.1.bias": (64,)}
    keys |= {"model.4.weight": (128, 64, 3, 3), "model.4.bias": (128,)}
    keys |= {"model.7.weight": (256, 128, 3, 3), "model.7.bias": (256,)}
    for i in range(10, 19):
        for j in (1, 5):
            keys[f"model.{i}.conv_block.{j}.weight"] = (256, 256, 3, 3)
            keys[f"model.{i}.conv_block.{j}.bias"] = (256,)
    keys |= {"model.19.weight": (256, 128, 3, 3), "model.19.bias": (128,)}
    keys |= {"model.22.weight": (128, 64, 3, 3), "model.22.bias": (64,)}
    return keys


def released_g_a() -> dict[str, tuple[int, ...]]:
    return _trunk_keys(6) | {"model.26.weight": (3, 64, 7, 7), "model.26.bias": (3,)}


def released_pre() -> dict[str, tuple[int, ...]]:
    keys = _trunk_keys(3)
    for i, shape in zip((0, 2, 4, 6), ((256, 612), (256, 256), (256, 256), (3, 256))):
        keys[f"mlp.imnet.layers.{i}.weight"] = shape
        keys[f"mlp.imnet.layers.{i}.bias"] = (shape[0],)
    return keys


def released_h() -> dict[str, tuple[int, ...]]:
    keys = {"model.1.weight": (64, 3, 7, 7), "model.1.bias": (64,)}
    for i in (4, 5, 6):
        for j in (1, 5):
            keys[f"model.{i}.conv_block.{j}.weight"] = (64, 64, 3, 3)
            keys[f"model.{i}.conv_block.{j}.bias"] = (64,)
    keys |= {"output.weight": (3, 64, 7, 7), "output.bias": (3,)}
    keys |= {"fc1.weight": (4, 128, 1, 1), "fc2.weight": (128, 4, 1, 1)}
    keys |= {"conv1.weight": (1, 2, 7, 7), "conv_ca.weight": (64, 128, 1, 1)}
    return keys


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.02 for k, shape in layout.items()}


@pytest.mark.parametrize(
    ("build", "layout", "n_keys", "millions"),
    [
        (lambda: ResnetGenerator(6), released_g_a, 48, 11.388),
        (lambda: NRN(), released_pre, 54, 11.658),
        (lambda: MaskExtractor(), released_h, 20, 0.250),
    ],
    ids=["G_A", "Pre", "H"],
)
def test_released_state_dicts_load_strictly(build, layout, n_keys, millions):
    net = build()
    keys = layout()
    assert len(keys) == n_keys
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == keys
    assert round(n_params(net) / 1e6, 3) == millions
    state = random_state(keys)
    net.load_state_dict(state, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_parameter_counts_of_the_other_networks():
    assert round(n_params(ResnetGenerator(3)) / 1e6, 3) == 11.378  # G_B
    assert round(n_params(PatchDiscriminator(3)) / 1e6, 3) == 2.765  # each D
    assert n_params(ResnetGenerator(6)) - n_params(ResnetGenerator(3)) == 3 * 64 * 49


def test_shapes_and_init():
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    g_b, d, h = ResnetGenerator(3), PatchDiscriminator(3), MaskExtractor()
    with torch.no_grad():
        y = g_b(x)
        assert y.shape == x.shape and y.abs().max() < 1  # tanh
        assert ResnetGenerator(6)(torch.cat([x, x], 1)).shape == x.shape
        assert d(x).shape == (2, 1, 2, 4)  # 70x70 PatchGAN: /8 then two 4x4 stride-1 convs (-1 each)
        noise, mask = h(x)
        assert noise.shape == x.shape and mask.shape == (2, 1, 32, 48)
        assert (
            noise.abs().max() <= 1 and 0 <= mask.min() and mask.max() <= 1
        )  # tanh and sigmoid (float32 saturates)
        assert noise.std() > 0.05 and mask.std() > 0  # mask ~ 0.5 at N(0, 0.02) init
    w = g_b.model[1].weight
    assert (
        abs(w.std().item() - 0.02) < 0.002 and w.mean().abs() < 0.002 and g_b.model[1].bias.abs().max() == 0
    )
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) and m.affine for m in g_b.modules())
    with pytest.raises(ValueError, match="divisible by 4"):
        g_b(torch.zeros(1, 3, 30, 32))


def test_mask_extractor_pools_the_padded_features():
    """The released channel attention pools over the reflect-padded (H+6, W+6) features and the spatial
    attention is a *valid* 7x7 conv on them; a re-derivation with explicit ops must agree."""
    torch.manual_seed(0)
    h = MaskExtractor()
    x = torch.rand(1, 3, 20, 24) * 2 - 1
    with torch.no_grad():
        f = h.model(x)
        assert f.shape[-2:] == (26, 30)
        ca = h.conv_ca(
            h.fc2(F.relu(h.fc1(torch.cat([F.adaptive_avg_pool2d(f, 1), F.adaptive_max_pool2d(f, 1)], 1))))
        )
        g = ca * f
        mask = torch.sigmoid(
            F.conv2d(torch.cat([g.mean(1, keepdim=True), g.max(1, keepdim=True)[0]], 1), h.conv1.weight)
        )
        noise, got = h(x)
    torch.testing.assert_close(got, mask)
    torch.testing.assert_close(noise, torch.tanh(h.output(f)))


# ------------------------------------------------------------------------------------------------ the NRN
def test_make_coord_and_positional_encoding():
    torch.testing.assert_close(make_coord(4), torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    pe = positional_encoding(torch.tensor([[0.5, 0.25]]))
    assert pe.shape == (1, 32)
    torch.testing.assert_close(pe[0, 0], torch.tensor(math.sin(math.pi * 0.5)))  # sin(2^0 pi x_0)
    torch.testing.assert_close(
        pe[0, 8], torch.tensor(math.cos(math.pi * 0.5)), atol=1e-6, rtol=0
    )  # cos(... x_0)
    torch.testing.assert_close(pe[0, 17], torch.tensor(math.sin(2 * math.pi * 0.25)))  # sin(2^1 pi x_1)


def naive_constant_nrn(pre: NRN, x: torch.Tensor) -> torch.Tensor:
    """The released NRN head written out: per pixel [unfold(feat), zeros(34), 2, 2] through the MLP."""
    feat = pre.model(x)
    b, c, h, w = feat.shape
    z = F.unfold(feat, 3, padding=1).transpose(1, 2)
    inp = torch.cat([z, torch.zeros(b, h * w, 34), torch.full((b, h * w, 2), 2.0)], -1)
    return pre.mlp.imnet(inp).view(b, h, w, 3).permute(0, 3, 1, 2)


def naive_liif_nrn(pre: NRN, x: torch.Tensor) -> torch.Tensor:
    """LIIF's query (Chen et al. 2021) with the released NRN's inputs and the `grid_sample` lines restored."""
    feat = pre.model(x)
    b, c, h, w = feat.shape
    z = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
    ys, xs = make_coord(h), make_coord(w)
    fy, fx = torch.meshgrid(ys, xs, indexing="ij")
    feat_coord = torch.stack([fy, fx], 0)[None].expand(b, 2, h, w)
    coord = torch.stack([fy, fx], -1).view(1, -1, 2).expand(b, -1, 2)
    pe = positional_encoding(coord)
    rx, ry = 1 / h, 1 / w
    preds, areas = [], []
    for vx in (-1, 1):
        for vy in (-1, 1):
            c_ = coord.clone()
            c_[:, :, 0] += vx * rx + 1e-6
            c_[:, :, 1] += vy * ry + 1e-6
            c_.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c_.flip(-1).unsqueeze(1)
            q_feat = F.grid_sample(z, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0].permute(
                0, 2, 1
            )
            rel = (coord - q_coord) * torch.tensor([h, w])
            rel_pe = pe - positional_encoding(q_coord)
            cell = torch.full((b, h * w, 2), 2.0)
            preds.append(pre.mlp.imnet(torch.cat([q_feat, rel, rel_pe, cell], -1)))
            areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = torch.stack(areas).sum(0)
    areas = areas[::-1]
    out = sum(p * (a / total).unsqueeze(-1) for p, a in zip(preds, areas))
    return out.view(b, h, w, 3).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def small_nrn():
    torch.manual_seed(1)
    pre = NRN(ngf=64, n_blocks=1)
    for p in pre.mlp.parameters():  # larger weights than the N(0, 0.02) init, so differences show
        p.data.normal_(0, 0.2)
    return pre


def test_constant_nrn_equals_the_released_formula(small_nrn):
    x = torch.rand(1, 3, 16, 20) * 2 - 1
    with torch.no_grad():
        want = naive_constant_nrn(small_nrn, x)  # outputs ~100 here: float32 rounding ~1e-5 absolute
        atol = 1e-6 * float(want.abs().max())  # the constant inputs fold into the first layer's bias
        torch.testing.assert_close(small_nrn(x), want, atol=atol, rtol=1e-5)


def test_liif_nrn_equals_liif_with_grid_sample(small_nrn):
    x = torch.rand(2, 3, 12, 16) * 2 - 1
    small_nrn.coordinates = "liif"
    try:
        with torch.no_grad():
            got, want = small_nrn(x), naive_liif_nrn(small_nrn, x)
            const = naive_constant_nrn(small_nrn, x)
    finally:
        small_nrn.coordinates = "constant"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # at the feature resolution LIIF weights the own pixel's (zero-offset) term by ~1 except on the last row
    # and column, where the clamped neighbours tie: the two modes agree in the interior only
    torch.testing.assert_close(got[..., :-1, :-1], const[..., :-1, :-1], atol=1e-5, rtol=1e-5)
    assert (got[..., -1, :] - const[..., -1, :]).abs().max() > 1e-3


@pytest.mark.parametrize("coordinates", ["constant", "liif"])
def test_chunked_nrn_equals_unchunked(small_nrn, coordinates):
    x = torch.rand(1, 3, 20, 12) * 2 - 1
    small_nrn.coordinates = coordinates
    try:
        with torch.no_grad():
            small_nrn.chunk_pixels = None
            whole = small_nrn(x)
            parts = []
            for chunk in (12, 30, 100):  # 1 row, 2 rows (last band shorter), 8 rows
                small_nrn.chunk_pixels = chunk
                parts.append(small_nrn(x))
    finally:
        small_nrn.chunk_pixels, small_nrn.coordinates = None, "constant"
    # float rounding of the MLP's sums (magnitudes up to ~200 with these weights; matrix products of other
    # row counts may take other kernels: 7e-5 at 1-row bands on an AVX-512 Xeon), scaled by the outputs' size
    for part in parts:
        torch.testing.assert_close(part, whole, atol=1e-6 * whole.abs().max().item(), rtol=1e-5)


# --------------------------------------------------------------------------------------------- edges
def test_edge_operators_on_a_ramp_and_a_step():
    ramp = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    slope = 2 / 15
    central = EdgeOperator("central", scale=1.0)(ramp)
    sobel = EdgeOperator("sobel", scale=1.0)(ramp)
    lap = EdgeOperator("laplacian", scale=1.0)(ramp)
    assert central.shape == (1, 3, 16, 16)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(
        central[inner], torch.full_like(central[inner], math.sqrt((2 * slope) ** 2 + 1e-6))
    )
    torch.testing.assert_close(sobel[inner], central[inner])  # Sobel / 4 equals central differences on a ramp
    torch.testing.assert_close(
        lap[inner], torch.full_like(lap[inner], 1e-3), atol=1e-5, rtol=0
    )  # no curvature
    # grey conversion: released coefficients / 256, and 4x scale by default
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[:, 0, :, 4:] = 1.0
    e = EdgeOperator("central")(rgb)
    torch.testing.assert_close(e[0, 0, 3, 3], torch.tensor(4 * math.sqrt((65.738 / 256) ** 2 + 1e-6)))


def test_released_random_projection_changes_on_every_call():
    x = torch.rand(1, 3, 8, 8)
    op = EdgeOperator("central", "random_per_call")
    a, b = op(x), op(x)
    assert not torch.allclose(a, b)  # the released quirk: a new random 1x1 conv each call
    torch.manual_seed(3)
    c = op(x)
    torch.manual_seed(3)
    torch.testing.assert_close(op(x), c)  # ... drawn from the global RNG
    rep = EdgeOperator("central", "repeat")
    torch.testing.assert_close(rep(x), rep(x))


# ------------------------------------------------------------------------------------------ CLIP tower
def test_rn50_image_tower_layout():
    net = ModifiedResNet(**RN50)
    sd = net.state_dict()
    assert round(n_params(net) / 1e6, 1) == 38.3  # CLIP RN50's image tower
    assert sd["attnpool.positional_embedding"].shape == (50, 2048)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert "layer2.0.downsample.1.running_mean" in sd and sd["attnpool.c_proj.weight"].shape == (1024, 2048)


def test_random_backend_is_frozen_and_seeded():
    state = torch.random.get_rng_state()
    a, b = random_backend("tiny", seed=0), random_backend("tiny", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training  # BatchNorm statistics stay frozen
    x = torch.rand(3, 3, 64, 64)
    logits = a.logits(x)
    assert logits.shape == (3, 2) and logits.abs().max() <= 100 + 1e-4
    torch.testing.assert_close(logits, b.logits(x))


# --------------------------------------------------------------------------------- text backends
def test_file_backend_round_trip_and_bad_files(tmp_path):
    from lit_modules.nets.clip_backend import (
        FILE_FORMAT,
        PROMPTS,
        TINY,
        TextBackendUnavailable,
        build_text_backend,
    )

    torch.manual_seed(0)
    visual = ModifiedResNet(**TINY).eval()
    text = torch.randn(2, TINY["output_dim"])
    blob = {
        "format": FILE_FORMAT,
        "source": "test",
        "arch": TINY,
        "prompts": list(PROMPTS),
        "visual": visual.state_dict(),
        "text_features": text,
        "logit_scale": 100.0,
    }
    path = tmp_path / "clip.pt"
    torch.save(blob, path)
    backend = build_text_backend("file", file=str(path))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = 100.0 * F.normalize(visual(x), dim=-1) @ F.normalize(text, dim=-1).t()
    torch.testing.assert_close(backend.logits(x), want)
    assert backend.image_size == 64 and backend.source.startswith("file:")
    torch.save({**blob, "prompts": ["dark", "bright"]}, tmp_path / "other.pt")
    with pytest.raises(TextBackendUnavailable, match="holds embeddings of prompts"):
        build_text_backend("file", file=str(tmp_path / "other.pt"))
    torch.save({"weights": 1}, tmp_path / "junk.pt")
    with pytest.raises(TextBackendUnavailable, match="not a text-discriminator file"):
        build_text_backend("file", file=str(tmp_path / "junk.pt"))
    with pytest.raises(TextBackendUnavailable, match="needs model.text_discriminator.file"):
        build_text_backend("file")


def test_open_clip_backend_with_a_stand_in_package(monkeypatch):
    """The open_clip code path against a stand-in module with open_clip's API (the real one needs
    torchvision): prompts tokenised once, text encoded once, the image tower kept, no download allowed."""
    import sys
    import types

    from lit_modules.nets.clip_backend import PROMPTS, TINY, build_text_backend

    calls = {"tokenize": [], "encode_text": 0, "offline": None}

    class FakeClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = ModifiedResNet(**TINY)
            self.visual.image_size = 64
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))

        def encode_text(self, tokens):
            calls["encode_text"] += 1
            return torch.stack(
                [torch.full((TINY["output_dim"],), float(t.sum())) for t in tokens]
            ) + torch.arange(TINY["output_dim"])

    def create_model(name, pretrained=None, cache_dir=None, device=None):
        import os

        calls["offline"] = os.environ.get("HF_HUB_OFFLINE")
        assert name == "RN50-quickgelu" and pretrained == "openai"
        return FakeClip()

    def get_tokenizer(name):
        def tok(texts):
            calls["tokenize"].append(list(texts))
            return torch.tensor([[len(t)] for t in texts])

        return tok

    fake = types.SimpleNamespace(create_model=create_model, get_tokenizer=get_tokenizer)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    backend = build_text_backend("open_clip", model_name="RN50-quickgelu", pretrained="openai")
    assert calls["tokenize"] == [list(PROMPTS)] and calls["encode_text"] == 1 and calls["offline"] == "1"
    import os

    assert "HF_HUB_OFFLINE" not in os.environ  # restored
    assert backend.logit_scale == pytest.approx(100.0) and backend.image_size == 64
    assert backend.logits(torch.rand(1, 3, 64, 64)).shape == (1, 2) and calls["encode_text"] == 1
