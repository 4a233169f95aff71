"""The suite's FID protocol: torchmetrics' `FrechetInceptionDistance` on the features of a network chosen by the
images' domain (`data.domain`, `DOMAIN_FEATURES`): for `mnist`, a small MNIST classifier that the suite trains
itself (`experiment=mnist_classifier`, training split only); a domain without a feature network has no FID (a
ConfigError names the domain). Float64 statistics, real statistics from the test split, a minimum sample count.

Why not Inception: on MNIST there is no standard, the Inception weights need a download (this suite runs
offline), and Inception-FID of grey 28x28 digits resized to 299 is a different scale altogether. The Inception
path (`feature="inception"`) stays available for online machines that have torch-fidelity installed by hand:
it requires torchvision, which cannot be installed beside the CPU torch wheel this suite pins (it breaks
`import pytorch_lightning`), so it is deliberately not an extra of this package.
The two scales are not comparable with each other, and neither is comparable with published CIFAR/ImageNet
FIDs. FID is biased by the sample counts, so numbers are comparable only at the same feature network (hash),
the same N generated and N real, and the same real split: `describe()` records all of them.

The committed feature network: `lit_modules/weights/mnist_classifier.pt` (a state_dict of
`lit_modules.nets.classifier.MNISTConvNet`) and `mnist_classifier.json` beside it (sha256 of the .pt file,
test accuracy, the run that trained it). Loading checks the hash, so a changed file cannot pass silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from lit_modules.nets.classifier import MNISTConvNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FEATURE_WEIGHTS = WEIGHTS_DIR / "mnist_classifier.pt"
FEATURE_RECORD = WEIGHTS_DIR / "mnist_classifier.json"
# ~8x the 64 feature dimensions, and what the embedded test split holds (500). Below it the covariance
# estimates are too noisy for the number to mean much; the protocol then refuses unless told otherwise.
MIN_SAMPLES = 500
FEATURES = ("mnist_classifier", "inception")
# the feature networks an image domain (`data.domain`, configs/data/*.yaml) has, its default first; a domain not
# listed has no FID (no feature network of that kind of image is committed)
DOMAIN_FEATURES: dict[str, tuple[str, ...]] = {"mnist": ("mnist_classifier", "inception")}
# what the MNIST classifier (lit_modules/nets/classifier.py) takes: (C, H, W)
MNIST_INPUT_SHAPE = (1, 28, 28)


class FIDProtocolError(ConfigError):
    """An FID request that the protocol refuses (too few samples, unknown feature network)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ClassifierFeatures(nn.Module):
    """(B, C, H, W) float images in [0, 1] -> (B, feature_dim) penultimate classifier features (float64 out).

    `input_shape` is what the classifier takes ((1, 28, 28) for the MNIST classifier); images of another size
    are resized to it bilinearly, RGB images are turned grey (BT.601 luma) for a grey classifier. The network is
    frozen and in eval mode."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, int, int] = MNIST_INPUT_SHAPE):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.num_features = net.feature_dim
        self.input_shape = tuple(input_shape)

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # always eval (dropout off)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.input_shape
        if x.ndim == 4 and x.shape[1] == 3 and channels == 1:
            from core.imageops import rgb_to_grey

            x = rgb_to_grey(x.float())
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"FID classifier features expect (B, {channels}, H, W) images in [0, 1], got {tuple(x.shape)}"
            )
        if x.shape[-2:] != (height, width):
            x = F.interpolate(
                x.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        param = next(self.net.parameters())
        return self.net.features(x.to(param.dtype)).double()


def load_feature_record(record_path: Path = FEATURE_RECORD) -> dict[str, Any]:
    if not record_path.is_file():
        raise FileNotFoundError(
            f"the MNIST FID feature network record {record_path} is missing: train it with "
            "`python -m experiments.train experiment=mnist_classifier` and export it with "
            "`python -m experiments.fid_features export ckpt_path=<that run>/checkpoints/<best>.ckpt`"
        )
    return json.loads(record_path.read_text())


def load_feature_network(
    weights_path: Path = FEATURE_WEIGHTS, record_path: Path = FEATURE_RECORD
) -> tuple[ClassifierFeatures, dict[str, Any]]:
    """The committed classifier as a feature extractor, after checking its file's sha256 against the record."""
    record = load_feature_record(record_path)
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"the MNIST FID feature weights {weights_path} are missing (record: {record_path})"
        )
    digest = sha256_file(weights_path)
    if digest != record["sha256"]:
        raise FIDProtocolError(
            f"{weights_path} has sha256 {digest}, but {record_path} records {record['sha256']}: the feature network "
            "changed, so FIDs would not be comparable with earlier ones. Re-export it with experiments.fid_features."
        )
    net = MNISTConvNet(feature_dim=record["feature_dim"], dropout=record.get("dropout", 0.0))
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return ClassifierFeatures(net, MNIST_INPUT_SHAPE), record


class GreyToInceptionUint8(nn.Module):
    """Grey [0, 1] images -> 3-channel uint8, as the Inception feature path of torchmetrics expects."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.inception(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).reshape(x.shape[0], -1)


def inception_feature_network() -> nn.Module:
    """torchmetrics' Inception-v3 (torch-fidelity's FID weights). Needs torch-fidelity and a download."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as err:  # pragma: no cover - torchmetrics is a hard dependency
        raise ModuleNotFoundError(f"torchmetrics' FID module cannot be imported: {err}") from err
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ModuleNotFoundError(
            "fid.feature=inception needs torch-fidelity (pip install torch-fidelity), which pulls in torchvision: "
            "only on a machine whose torch has a matching torchvision (never beside this suite's CPU torch wheel, where "
            "torchvision breaks pytorch_lightning), and with a network connection for the Inception weights. "
            "Offline, use fid.feature=mnist_classifier."
        )
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except Exception as err:  # download failures come as several types
        raise RuntimeError(
            "fid.feature=inception: the Inception-v3 FID weights could not be loaded "
            f"({type(err).__name__}: {err}). They are downloaded by torch-fidelity on first use and need a network "
            "connection (or a pre-filled torch hub cache). Offline, use fid.feature=mnist_classifier."
        ) from err
    return GreyToInceptionUint8(net)


@dataclass
class FIDProtocol:
    """What an FID number is: feature network, sample counts, and whether it meets the protocol's minimum.

    `num_samples`: generated images (one seed each: `seed`, `seed + 1`, ...). `allow_below_minimum`: compute
    anyway below MIN_SAMPLES (generated or real); the result is then labelled `comparable: false`.
    """

    num_samples: int = 500
    feature: str | None = "mnist_classifier"  # None: the domain's default feature network
    allow_below_minimum: bool = False
    min_samples: int = MIN_SAMPLES
    # how the entry point spells the keys in messages: `model.fid_` (train/evaluate), `fid.` (sample)
    keys: tuple[str, str, str] = ("fid.feature", "fid.num_samples", "fid.allow_below_minimum")
    domain: str | None = "mnist"  # the images' domain (data.domain): which feature networks apply
    domain_key: str = "data.domain"

    def __post_init__(self) -> None:
        if self.feature is None and self.domain in DOMAIN_FEATURES:
            self.feature = DOMAIN_FEATURES[self.domain][0]

    def check(self) -> None:
        """Raises before any work when the request is one the protocol refuses."""
        feature, num, allow = self.keys
        if self.domain not in DOMAIN_FEATURES:
            raise FIDProtocolError(
                f"{self.domain_key}={self.domain!r}: no FID feature network exists for this image domain "
                f"({feature}={self.feature!r}; domains with one: {list(DOMAIN_FEATURES)}). Skip the FID "
                f"({num}=0 or expensive_metrics=false)."
            )
        valid = DOMAIN_FEATURES[self.domain]
        if self.feature not in valid:
            raise FIDProtocolError(
                f"{feature}={self.feature!r} is not a feature network of domain {self.domain!r}; valid: {list(valid)}"
            )
        if self.num_samples < 2:
            raise FIDProtocolError(f"{num}={self.num_samples}: FID needs at least 2 generated images")
        if self.num_samples < self.min_samples and not self.allow_below_minimum:
            raise FIDProtocolError(
                f"{num}={self.num_samples} is below the FID protocol's minimum of {self.min_samples} generated "
                f"images. Use >= {self.min_samples}, set {allow}=true to compute it anyway (the number is then "
                "labelled not comparable in metrics.json), or expensive_metrics=false to skip the FID."
            )

    def check_real(self, num_real: int) -> None:
        _, _, allow = self.keys
        if num_real < self.min_samples and not self.allow_below_minimum:
            raise FIDProtocolError(
                f"the test split has {num_real} real images (as limited by the trainer), below the FID protocol's "
                f"minimum of {self.min_samples}. Use a larger test split, set {allow}=true (the number is then "
                "labelled not comparable), or expensive_metrics=false to skip the FID."
            )

    def metric(self):
        """A fresh `FrechetInceptionDistance` (float64 states, real statistics kept across `reset`)."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.check()
        if self.feature == "mnist_classifier":
            features, self._record = load_feature_network()
            fid = FrechetInceptionDistance(
                feature=features,
                reset_real_features=False,
                input_img_size=features.input_shape,
                normalize=True,
            )
        else:
            self._record = {"name": "inception-v3-compat (torch-fidelity), pool3 2048-d"}
            fid = FrechetInceptionDistance(
                feature=inception_feature_network(), reset_real_features=False, normalize=True
            )
        return fid.set_dtype(torch.float64)

    def describe(self, num_generated: int, num_real: int, **sampling: Any) -> dict[str, Any]:
        """The protocol record for metrics.json."""
        record = getattr(self, "_record", None) or (
            load_feature_record() if self.feature == "mnist_classifier" else {}
        )
        comparable = num_generated >= self.min_samples and num_real >= self.min_samples
        if self.feature == "mnist_classifier":
            network = {
                "name": "lit_modules.nets.classifier.MNISTConvNet penultimate features",
                "feature_dim": record.get("feature_dim"),
                "weights": str(FEATURE_WEIGHTS.relative_to(WEIGHTS_DIR.parents[1])),
                "sha256": record.get("sha256"),
                "classifier_test_accuracy": record.get("test_accuracy"),
                "trained_on": record.get("trained_on"),
            }
        else:
            network = record
        return {
            "metric": "Frechet distance between Gaussians fitted to features (torchmetrics FrechetInceptionDistance, "
            "float64 statistics)",
            "feature_network": network,
            "num_generated": int(num_generated),
            "num_real": int(num_real),
            "real_split": "test",
            "min_samples": self.min_samples,
            "comparable": bool(comparable),
            "note": "comparable only with FIDs of this feature network (same sha256) at the same N generated and N "
            "real; never with published Inception FIDs"
            + ("" if comparable else f"; BELOW THE PROTOCOL MINIMUM ({self.min_samples}): NOT COMPARABLE"),
            **sampling,
        }


def fid_of_generated(
    protocol: Any, metric: Any, generated: Iterable[torch.Tensor], seeds: Sequence[int]
) -> tuple[float, dict[str, Any]]:
    """THE FID loop: `metric` (from `protocol.metric()`) already holds the real images' statistics; the
    generated batches (images in [0, 1], one per seed of `seeds`) are added, the protocol's minimum checked on
    both sides, and (fid, the protocol record for metrics.json) returned."""
    num_real = int(metric.real_features_num_samples)
    protocol.check_real(num_real)
    device = metric.device if hasattr(metric, "device") else None
    num_generated = 0
    for images in generated:
        metric.update(images.to(device) if device is not None else images, real=False)
        num_generated += len(images)
    if num_generated != len(seeds):
        raise RuntimeError(f"FID: {num_generated} images generated for {len(seeds)} seeds")
    fid = float(metric.compute())
    record = protocol.describe(num_generated, num_real, seeds=f"{seeds[0]}..{seeds[-1]}")
    return fid, record
