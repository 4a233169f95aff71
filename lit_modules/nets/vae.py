"""VAE encoders/decoders. Both return Bernoulli *logits* from `decode` (the decoder's final sigmoid is applied by
whoever wants pixel means), because BCE on logits is numerically stable where BCE on sigmoid outputs is not."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLPVAE(nn.Module):
    """The MLP VAE (docs/vae.md): encoder 784-512-256 (ReLU) -> fc_mu, fc_logvar (latent_dim); decoder latent-256-512-784."""

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        hidden_dims: Sequence[int] = (512, 256),
        latent_dim: int = 20,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        d = math.prod(self.image_shape)
        enc: list[nn.Module] = []
        for h in hidden_dims:
            enc += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.encoder = nn.Sequential(*enc)
        self.fc_mu = nn.Linear(d, latent_dim)
        self.fc_logvar = nn.Linear(d, latent_dim)
        dec: list[nn.Module] = []
        d = latent_dim
        for h in reversed(hidden_dims):
            dec += [nn.Linear(d, h), nn.ReLU()]
            d = h
        dec.append(nn.Linear(d, math.prod(self.image_shape)))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> mu, log sigma^2, each (B, latent_dim)."""
        h = self.encoder(x.flatten(1))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> Bernoulli logits (..., C, H, W)."""
        return self.decoder(z).unflatten(-1, self.image_shape)


class ConvVAE(nn.Module):
    """Conv encoder (stride-2 convs) -> fc -> mu, log sigma^2; decoder mirrors it with transposed convs."""

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        latent_dim: int = 20,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        c, h, w = self.image_shape
        if h % 2 ** len(channels) or w % 2 ** len(channels):
            raise ValueError(
                f"ConvVAE: image size {h}x{w} must be divisible by 2^{len(channels)} (one halving per channel stage)"
            )
        enc: list[nn.Module] = []
        cin = c
        for cout in channels:
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU()]
            cin = cout
        self.feature_shape = (cin, h // 2 ** len(channels), w // 2 ** len(channels))
        enc += [nn.Flatten(), nn.Linear(math.prod(self.feature_shape), hidden_dim), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        dec: list[nn.Module] = [
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, math.prod(self.feature_shape)),
            nn.ReLU(),
            nn.Unflatten(1, self.feature_shape),
        ]
        outs = list(reversed(channels[:-1])) + [c]
        for i, cout in enumerate(outs):
            dec.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            cin = cout
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))
        return out.reshape(*lead, *self.image_shape)
