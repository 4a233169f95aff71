"""Backends of NeRCo's text-driven discriminator: a frozen image encoder plus two cached prompt embeddings.

The released code uses OpenAI CLIP RN50 with the prompts ["low light image", "high light image"]; the loss
only needs `logits(images) = scale * normalise(encode_image(images)) @ normalise(text_features).T`, so every
backend exposes that, and the two text embeddings are computed once, when the backend is built.

Backends (`build_text_backend(kind=...)`):
  - "open_clip": CLIP RN50 through the `open_clip` package (the `clip` extra; open_clip needs torchvision, so
    this is for machines with a matching torch/torchvision, typically GPU ones). Weights must already be in
    open_clip's cache (or `pretrained` names a local file): nothing is downloaded unless
    `allow_download=True`.
  - "file": a file written once by `python -m lit_modules.nets.clip_backend export --out <file>` on a machine
    that has open_clip and the weights. It holds the RN50 image tower's state_dict, the two normalised text
    embeddings and the logit scale, and loads here with torch alone (our own RN50 image tower below).
  - "random": a randomly initialised image tower of the same class (full RN50 or a tiny one) and random text
    embeddings, for tests and timing only; it carries no knowledge and its loss values mean nothing.

When no backend can be had, `TextBackendUnavailable` says how to provide one or how to turn the component off.
"""

from __future__ import annotations

import argparse
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import UserError

log = logging.getLogger(__name__)

PROMPTS = ("low light image", "high light image")  # index 0 = low light, 1 = high light (released order)
FILE_FORMAT = "suite-clip-image-text/1"
DISABLE_HINT = (
    "or disable the component with model.components.text_discriminator=false (to check that the code runs, "
    "e.g. with debug=fdr, model.text_discriminator.backend=random model.text_discriminator.arch=tiny stands in "
    "with random weights)"
)


class TextBackendUnavailable(UserError, RuntimeError):
    """The text-driven discriminator is enabled but no image/text encoder can be built."""


# ------------------------------------------------------------------------- CLIP's ModifiedResNet image tower
# Radford et al. 2021, section 2.4: ResNet-D stem (three 3x3 convs), anti-aliased strided convs (avgpool
# before the stride-1 conv), attention pooling instead of global average pooling. Parameter names follow
# CLIP's so an RN50 `visual` state_dict loads strictly.
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """One query (the mean token + position) attends over the (HW + 1) tokens; multi-head, then c_proj."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        nh, hd = self.num_heads, c // self.num_heads
        q = self.q_proj(tokens[:, :1]).view(b, 1, nh, hd).transpose(1, 2)
        k = self.k_proj(tokens).view(b, -1, nh, hd).transpose(1, 2)
        v = self.v_proj(tokens).view(b, -1, nh, hd).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(hd)) v
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class ModifiedResNet(nn.Module):
    """CLIP's image tower. RN50 = layers (3, 4, 6, 3), width 64, 32 heads, output 1024, input 224x224."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        output_dim: int = 1024,
        heads: int = 32,
        input_resolution: int = 224,
        width: int = 64,
    ):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


RN50 = {"layers": (3, 4, 6, 3), "output_dim": 1024, "heads": 32, "input_resolution": 224, "width": 64}
TINY = {"layers": (1, 1, 1, 1), "output_dim": 32, "heads": 2, "input_resolution": 64, "width": 8}


# ------------------------------------------------------------------------------------------------ backends
class TextImageBackend(nn.Module):
    """Frozen image encoder + two cached, normalised prompt embeddings (buffer `text_features`, (2, D)).

    `logits(images)` takes images already at `image_size` (the caller resizes) and returns (B, 2) logits
    `logit_scale * cos(image, prompt)`; `logit_scale` is CLIP's learned exp(t) = 100 for RN50.
    """

    def __init__(
        self, visual: nn.Module, text_features: Tensor, logit_scale: float, image_size: int, source: str
    ):
        super().__init__()
        self.visual = visual
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1), persistent=False)
        self.logit_scale = float(logit_scale)
        self.image_size = int(image_size)
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TextImageBackend:
        return super().train(False)  # frozen: BatchNorm statistics stay as loaded, always

    def logits(self, images: Tensor) -> Tensor:
        feats = F.normalize(self.visual(images).float(), dim=-1)
        return self.logit_scale * feats @ self.text_features.t()


def random_backend(arch: str = "tiny", seed: int = 0, logit_scale: float = 100.0) -> TextImageBackend:
    """Random weights (fixed seed, global RNG untouched) behind the real interface: tests and timing only."""
    spec = {"tiny": TINY, "rn50": RN50}.get(arch)
    if spec is None:
        raise ValueError(f"random text backend arch must be 'tiny' or 'rn50', got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = ModifiedResNet(**spec)
        text = torch.randn(2, spec["output_dim"])
    return TextImageBackend(
        visual, text, logit_scale, spec["input_resolution"], f"random-{arch}(seed={seed})"
    )


def file_backend(path: str | Path) -> TextImageBackend:
    """Loads a file written by `export` (weights_only: plain tensors and Python scalars)."""
    path = Path(path)
    if not path.is_file():
        raise TextBackendUnavailable(
            f"text discriminator weights file {path} does not exist. Write it once on a machine with open_clip "
            f"and the CLIP RN50 weights: `python -m lit_modules.nets.clip_backend export --out {path}`, "
            f"{DISABLE_HINT}."
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
        raise TextBackendUnavailable(
            f"{path} is not a text-discriminator file (expected a dict with format={FILE_FORMAT!r}, written by "
            "`python -m lit_modules.nets.clip_backend export`)"
        )
    prompts = tuple(blob["prompts"])
    if prompts != PROMPTS:
        raise TextBackendUnavailable(f"{path} holds embeddings of prompts {prompts}, expected {PROMPTS}")
    arch = dict(blob["arch"])
    visual = ModifiedResNet(**arch)
    result = visual.load_state_dict(blob["visual"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TextBackendUnavailable(
            f"{path}: image tower weights do not fit ModifiedResNet{arch}: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return TextImageBackend(
        visual, blob["text_features"], blob["logit_scale"], arch["input_resolution"], f"file:{path}"
    )


def open_clip_backend(
    model_name: str = "RN50-quickgelu",
    pretrained: str = "openai",
    cache_dir: str | None = None,
    allow_download: bool = False,
) -> TextImageBackend:
    """CLIP through open_clip (imported here, lazily). RN50-quickgelu + 'openai' are OpenAI's RN50 weights with
    the activation they were trained with (QuickGELU in the text transformer)."""
    try:
        import open_clip  # noqa: PLC0415 - optional, heavy, needs torchvision
    except Exception as err:  # ImportError, or torchvision failing to import beside this torch
        raise TextBackendUnavailable(
            f"the text-driven discriminator's open_clip backend cannot import open_clip ({type(err).__name__}: "
            f"{err}). Install the extra on a machine with a matching torch/torchvision: "
            "`pip install -e '.[clip]'`; or use a local weights file: "
            "model.text_discriminator.backend=file model.text_discriminator.file=<file> (written by "
            f"`python -m lit_modules.nets.clip_backend export`), {DISABLE_HINT}."
        ) from err
    import os

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE",)}
    if not allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, device="cpu")
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as err:  # missing weights surface as several error types across open_clip versions
        raise TextBackendUnavailable(
            f"open_clip could not load {model_name} with pretrained={pretrained!r} without downloading "
            f"({type(err).__name__}: {err}). Put the weights in open_clip's cache (cache_dir={cache_dir}), pass "
            "model.text_discriminator.pretrained=<local .pt/.bin file>, allow a one-time download with "
            f"model.text_discriminator.allow_download=true, {DISABLE_HINT}."
        ) from err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    model.eval()
    with torch.no_grad():
        text = model.encode_text(tokenizer(list(PROMPTS))).float()
    image_size = getattr(model.visual, "image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    return TextImageBackend(
        model.visual.float(),
        text,
        model.logit_scale.exp().item(),
        image_size,
        f"open_clip:{model_name}/{pretrained}",
    )


def build_text_backend(kind: str = "open_clip", **options: Any) -> TextImageBackend:
    """The backend named by `kind` (open_clip | file | random) with its options (see each function)."""
    if kind == "open_clip":
        keys = ("model_name", "pretrained", "cache_dir", "allow_download")
        return open_clip_backend(**{k: options[k] for k in keys if options.get(k) is not None})
    if kind == "file":
        if not options.get("file"):
            raise TextBackendUnavailable(
                "model.text_discriminator.backend=file needs model.text_discriminator.file=<path> (written by "
                f"`python -m lit_modules.nets.clip_backend export`), {DISABLE_HINT}."
            )
        return file_backend(options["file"])
    if kind == "random":
        scale = options.get("logit_scale")
        return random_backend(
            options.get("arch") or "tiny", int(options.get("seed") or 0), float(scale or 100.0)
        )
    raise ValueError(f"text discriminator backend must be open_clip, file or random, got {kind!r}")


def export(
    out: str | Path,
    model_name: str = "RN50-quickgelu",
    pretrained: str = "openai",
    cache_dir: str | None = None,
    allow_download: bool = False,
) -> Path:
    """Writes the image tower + prompt embeddings of an open_clip RN50 to `out` for the `file` backend."""
    backend = open_clip_backend(model_name, pretrained, cache_dir, allow_download)
    visual = ModifiedResNet(**RN50)
    visual.load_state_dict(
        backend.visual.state_dict(), strict=True
    )  # our tower must hold these exact weights
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FILE_FORMAT,
            "source": backend.source,
            "arch": RN50,
            "prompts": list(PROMPTS),
            "visual": visual.state_dict(),
            "text_features": backend.text_features.clone(),
            "logit_scale": backend.logit_scale,
        },
        out,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the RN50 image tower and the prompt embeddings to a file")
    ex.add_argument("--out", required=True)
    ex.add_argument("--model-name", default="RN50-quickgelu")
    ex.add_argument("--pretrained", default="openai")
    ex.add_argument("--cache-dir", default=None)
    ex.add_argument("--allow-download", action="store_true")
    args = parser.parse_args(argv)
    path = export(args.out, args.model_name, args.pretrained, args.cache_dir, args.allow_download)
    print(f"wrote {path}: pass model.text_discriminator.backend=file model.text_discriminator.file={path}")


if __name__ == "__main__":
    main()
