"""The FID protocol's feature network by image domain, the classifier features on inputs of other shapes, and the
one FID loop (`fid_of_generated`) shared by the test stage and `experiments.sample`."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from core.imageops import rgb_to_grey
from lit_modules.fid import (
    DOMAIN_FEATURES,
    ClassifierFeatures,
    FIDProtocol,
    FIDProtocolError,
    fid_of_generated,
)
from lit_modules.nets.classifier import MNISTConvNet


def test_the_feature_network_is_looked_up_by_domain():
    assert (
        FIDProtocol(500, feature=None, domain="mnist").feature
        == DOMAIN_FEATURES["mnist"][0]
        == "mnist_classifier"
    )
    with pytest.raises(
        ConfigError, match=r"data.domain='lowlight_rgb': no FID feature network .*model.fid_feature"
    ):
        FIDProtocol(500, None, keys=("model.fid_feature", "n", "a"), domain="lowlight_rgb").check()
    with pytest.raises(
        FIDProtocolError, match=r"fid.feature='clip' is not a feature network of domain 'mnist'"
    ):
        FIDProtocol(500, "clip", domain="mnist").check()


def test_a_generative_model_on_a_domain_without_features_is_refused_at_construction():
    from lit_modules.ddpm import DDPM
    from lit_modules.nets.unet import UNet

    net = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(), groups=4)
    with pytest.raises(
        ConfigError, match=r"'deblur': no FID feature network exists .*model.fid_num_samples=0"
    ):
        DDPM(net, optimizer=torch.optim.Adam, fid_domain="deblur")
    DDPM(net, optimizer=torch.optim.Adam, fid_domain="deblur", fid_num_samples=0)  # no FID asked: fine


def test_classifier_features_resize_and_grey_other_inputs():
    torch.manual_seed(0)
    features = ClassifierFeatures(MNISTConvNet(feature_dim=16, dropout=0.0))
    assert features.input_shape == (1, 28, 28)
    rgb = torch.rand(2, 3, 28, 28)
    out = features(rgb)
    assert out.shape == (2, 16) and out.dtype == torch.float64
    assert torch.equal(out, features(rgb_to_grey(rgb)))  # RGB goes through BT.601 grey
    assert features(torch.rand(2, 1, 32, 32)).shape == (2, 16)  # resized to 28x28
    with pytest.raises(ValueError, match=r"expect \(B, 1, H, W\)"):
        features(torch.rand(2, 2, 28, 28))


class _StubMetric:
    """Records what the FID loop feeds it; `compute` = mean of the generated images."""

    def __init__(self, num_real: int):
        self.real_features_num_samples = torch.tensor(num_real)
        self.fake: list[torch.Tensor] = []

    def update(self, x, real):
        assert real is False
        self.fake.append(x)

    def compute(self):
        return torch.cat(self.fake).mean()


def test_fid_of_generated_feeds_every_batch_and_records_the_protocol():
    protocol = FIDProtocol(4, allow_below_minimum=True)
    metric = _StubMetric(num_real=3)
    batches = [torch.full((2, 1, 2, 2), 0.25), torch.full((2, 1, 2, 2), 0.75)]
    fid, record = fid_of_generated(protocol, metric, iter(batches), seeds=[10, 11, 12, 13])
    assert fid == pytest.approx(0.5) and len(metric.fake) == 2
    assert (record["num_generated"], record["num_real"], record["seeds"]) == (4, 3, "10..13")
    assert record["comparable"] is False
    with pytest.raises(RuntimeError, match="3 images generated for 4 seeds"):
        fid_of_generated(protocol, _StubMetric(3), iter([torch.zeros(3, 1, 2, 2)]), seeds=[0, 1, 2, 3])
    with pytest.raises(FIDProtocolError, match="test split has 3 real images"):
        fid_of_generated(FIDProtocol(500), _StubMetric(3), iter(batches), seeds=[0, 1, 2, 3])
