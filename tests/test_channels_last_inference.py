"""NeRCo's channels-last inference (`NeRCo.for_inference`, `lit_modules.nets.norms`): the instance norm's
channels-last path against a float64 reference and torch's, in place where built so, torch's path wherever
autograd or channel-first data is involved; the mask without H; banded reflection-padded convolutions and the
in-place residual add; the NRN head's later layers as 1x1 convolutions; `enhance` on
channels-last networks against the released step and the channel-first path; the benchmark's inference
processes free of Lightning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_modules.nerco import NeRCo
from lit_modules.nerco_reference import released_literal_enhance
from lit_modules.nerco_release import released_uint8
from lit_modules.nets.cyclegan import BAND_PIXELS, ResnetBlock, padded_conv_rows
from lit_modules.nets.nerco import LocalImplicitHead, MaskExtractor
from lit_modules.nets.norms import InstanceNorm2d, channel_moments, is_channels_last

CL = torch.channels_last


def _images(shape: tuple[int, ...], mean: float, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * std + mean


@pytest.mark.parametrize("band_pixels", [7, 100, 10**6])  # many bands (the last one shorter), one band
def test_channel_moments_equal_float64_statistics(band_pixels):
    x = _images((2, 5, 23, 17), 3.0, 2.0).contiguous(memory_format=CL)
    mean, var = channel_moments(x, band_pixels)
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(2, 3), correction=0)
    assert mean.shape == var.shape == (2, 5) and mean.dtype == torch.float32
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="B, C, H, W"):
        channel_moments(x[0])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("affine", [False, True])
def test_channels_last_instance_norm_matches_float64_as_closely_as_torch(batch, affine):
    """A large mean against a small spread (the case where a one-pass float32 sum loses digits): the
    channels-last path stays within 4x torch's own channel-first error; torch's channels-last batch-norm
    kernel (sequential float32 sums over all pixels) does not, which is why norms.py does not call it."""
    x = _images((batch, 16, 96, 80), 5.0, 0.05)
    norm = InstanceNorm2d(16, affine=affine).eval()
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    w = norm.weight.double() if affine else None
    b = norm.bias.double() if affine else None
    ref = F.instance_norm(x.double(), weight=w, bias=b)
    with torch.no_grad():
        torch_err = (F.instance_norm(x, weight=norm.weight, bias=norm.bias) - ref).abs().max()
        y = norm(x.contiguous(memory_format=CL))
        assert is_channels_last(y)
        assert (y - ref).abs().max() <= 4 * torch_err
        if batch == 1 and not affine:
            one_pass = F.batch_norm(x.contiguous(memory_format=CL), None, None, training=True)
            assert (one_pass - ref).abs().max() > 10 * torch_err


def test_inplace_norm_writes_into_its_input_and_torch_keeps_the_rest():
    x = _images((1, 8, 20, 24), 1.0, 2.0)
    norm = InstanceNorm2d(8, inplace=True)
    with torch.no_grad():
        want = F.instance_norm(x)
        xc = x.contiguous(memory_format=CL)
        y = norm(xc)
        assert y.data_ptr() == xc.data_ptr() and torch.allclose(y, want, atol=1e-5)
        y2 = norm(x)  # channel-first: torch's, not in place
        assert y2.data_ptr() != x.data_ptr() and torch.equal(y2, want)
    xg = x.contiguous(memory_format=CL).requires_grad_()
    yg = norm(xg)  # autograd: torch's, not in place, differentiable
    yg.square().sum().backward()
    assert xg.grad is not None and torch.equal(yg.detach(), F.instance_norm(xg.detach()))


def test_bf16_channels_last_norm_is_no_less_accurate_than_torchs():
    x = _images((1, 16, 40, 60), 2.0, 3.0).to(torch.bfloat16)
    ref = F.instance_norm(x.double())
    with torch.no_grad():
        y = InstanceNorm2d(16)(x.contiguous(memory_format=CL))
        assert y.dtype == torch.bfloat16
        assert (y.double() - ref).abs().max() <= (F.instance_norm(x).double() - ref).abs().max()


def test_mask_alone_equals_the_mask_of_forward():
    torch.manual_seed(0)
    h = MaskExtractor(ngf=8, n_blocks=1).eval()
    x = torch.rand(1, 3, 24, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(h.mask(x), h(x)[1])


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize(("k", "out_channels"), [(3, 8), (7, 8), (7, 3)])
@pytest.mark.parametrize("inplace", [False, True])
def test_banded_padded_convolution_equals_the_padded_copy(layout, k, out_channels, inplace):
    """Bands of p + 1 rows (the halo as large as allowed), of 5 rows (the last shorter), one band; in place the
    output takes x's buffer when the channels match (3 output channels cannot)."""
    torch.manual_seed(0)
    pad, conv = torch.nn.ReflectionPad2d(k // 2), torch.nn.Conv2d(8, out_channels, k)
    x = torch.randn(2, 8, 37, 29).contiguous(memory_format=layout)
    with torch.no_grad():
        want = conv(pad(x))
        for band_pixels in (1, 29 * 5, 10**6):
            xb = x.clone()
            got = padded_conv_rows(pad, conv, xb, band_pixels, inplace=inplace)
            assert torch.equal(got, want), band_pixels
            assert got.is_contiguous(memory_format=layout)
            assert (got.data_ptr() == xb.data_ptr()) == (inplace and out_channels == 8)
            if not inplace:
                assert torch.equal(xb, x)


def test_residual_block_on_the_channels_last_inference_path():
    """Banded convolutions, in-place norms and the in-place residual add (no autograd, channels-last, an image
    of 2 x BAND_PIXELS pixels or more) against the block's channel-first result; the input is left as it was."""
    torch.manual_seed(0)
    block = ResnetBlock(8).eval()
    x = torch.randn(1, 8, 260, 256)
    assert x.shape[-2] * x.shape[-1] >= 2 * BAND_PIXELS
    with torch.no_grad():
        want = block(x)
        xc = x.contiguous(memory_format=CL)
        got = block(xc)
    assert is_channels_last(got) and torch.equal(xc, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with_grad = block(x.requires_grad_())
    assert with_grad.grad_fn is not None and torch.equal(with_grad.detach(), want)


@pytest.mark.parametrize("chunk", [None, 3 * 19])  # one band; bands of 3 rows, the last one shorter
def test_nrn_head_pointwise_layers_equal_the_matrix_products(chunk):
    """On channels-last features without autograd the head's 256 -> 256 -> 256 -> 3 layers run as 1x1
    convolutions (channels-last output); with autograd or channel-first features as matrix products on
    (256, pixels). Same function up to float rounding, batch 2, bands of rows or one pass."""
    torch.manual_seed(0)
    head = LocalImplicitHead(8, (32, 32, 32)).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.3)  # output O(1), so that a wrong layer would show
    feat = torch.randn(2, 8, 14, 19)
    with torch.no_grad():
        want = head(feat, "constant", chunk)
        got = head(feat.contiguous(memory_format=CL), "constant", chunk)
    assert want.shape == got.shape == (2, 3, 14, 19) and want.abs().max() > 0.5
    assert want.is_contiguous() and is_channels_last(got)
    # float32 rounding of 256-term sums whose summation order depends on the memory layout and on the CPU's
    # GEMM kernel (seen: up to 3.6e-6 on one CI machine); a wrong layer would be off by O(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    trained = head(feat.contiguous(memory_format=CL).requires_grad_(), "constant", chunk)
    assert trained.grad_fn is not None and trained.is_contiguous()  # autograd: the matrix products
    torch.testing.assert_close(trained.detach(), want, rtol=1e-5, atol=1e-5)


def _small_nerco() -> NeRCo:
    torch.manual_seed(0)
    m = NeRCo(ngf=16, ndf=8, n_blocks=2, components={"text_discriminator": False, "edge_discriminators": False})
    for p in m.netPre.mlp.parameters():
        p.data.normal_(0, 0.1)  # the NRN's output O(1), so that a wrong NRN would show
    return m.eval()


def test_for_inference_enhance_agrees_with_the_released_step_and_runs_channels_last():
    from experiments.benchmarks.nerco import infer_input

    m = _small_nerco()
    x = infer_input(64, 48)
    seen: list[bool] = []
    hook = m.netG_A.model[1].register_forward_pre_hook(lambda mod, inp: seen.append(is_channels_last(inp[0])))
    with torch.inference_mode():
        want = released_uint8(released_literal_enhance(m.netG_A, m.netPre, m.netH, x))
        plain = m.enhance(x)
        m.for_inference()  # inside inference mode, as experiments.enhance may call it
        assert not m.netG_A.model[1].weight.is_contiguous(memory_format=CL)  # converted at the first CPU call
        fast = m.enhance(x)
    hook.remove()
    assert seen == [False, False, True]  # the released step, plain enhance, then channels-last
    assert m.netG_A.model[1].weight.is_contiguous(memory_format=CL)
    assert fast.is_contiguous() and fast.shape == plain.shape
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    diff = np.abs(want.astype(int) - released_uint8((fast + 1) / 2).astype(int))
    assert want.std() > 1 and diff.max() <= 1 and (diff > 0).mean() < 0.01
    # the weights are ordinary tensors: the model can still train after for_inference
    m.train()
    m.netG_A(torch.rand(1, 6, 32, 32)).mean().backward()
    assert m.netG_A.model[1].weight.grad is not None


def test_benchmark_inference_processes_do_not_import_lightning():
    """The inference rows' resident size before the work is torch, the networks and the image: the benchmark
    module they run in must not pull in Lightning (~190 MiB here)."""
    code = "import sys, experiments.benchmarks.nerco; print('pytorch_lightning' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
