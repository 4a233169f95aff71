"""Variational autoencoder (Kingma & Welling 2014) with an importance-sampled NLL (Burda et al. 2016).

Glossary: x -> image in [0, 1]; mu, logvar -> mean and log variance of q_phi(z|x); eps -> N(0, I) noise;
logits -> Bernoulli logits of p_theta(x|z). All per-image quantities are in nats, summed over pixels.

The likelihood is Bernoulli on *continuous* [0, 1] pixels, as in pytorch/examples' VAE: the numbers
are comparable with that convention only, not with binarised-MNIST NLLs (docs/references.md section 5).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from core.figures import figure
from lit_modules.base import SuiteModule
from lit_modules.images import log_figure

log = logging.getLogger(__name__)

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------------- the math
def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps (Kingma & Welling 2014, eq. 10), broadcasting over leading sample dims of eps."""
    return mu + torch.exp(0.5 * logvar) * eps


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-1/2 (1 + log sigma_j^2 - mu_j^2 - sigma_j^2) for each latent dim j (K&W 2014, app. B), (..., D)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """D_KL(N(mu, diag sigma^2) || N(0, I)), summed over the latent dims, (...,)."""
    return kl_per_dim(mu, logvar).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_i x_i log p_i + (1 - x_i) log(1 - p_i), p = sigmoid(logits); sums the last 3 dims."""
    return (
        -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(-3).sum(-1)
    )


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dim."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def importance_sampled_log_likelihood(
    log_px_given_z: Callable[[torch.Tensor], torch.Tensor],
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: int,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) ~= log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x) (Burda et al. 2016, eq. 8).

    `log_px_given_z` maps z of shape (k, B, D) to (k, B). The estimate is a lower bound of log p(x) in
    expectation that tightens as K grows; K = 1 is the single-sample ELBO. Returns (log p(x) estimate,
    mean over samples of log p(x|z_k)), each (B,); the second is the ELBO's reconstruction term.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    chunk = chunk or num_samples
    log_w, log_px = [], []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = reparameterize(mu, logvar, eps)
        lpx = log_px_given_z(z)
        log_pz = log_normal_diag(z, torch.zeros_like(z), torch.zeros_like(z))
        log_qz = log_normal_diag(z, mu, logvar)
        log_w.append(lpx + log_pz - log_qz)
        log_px.append(lpx)
    log_w_all = torch.cat(log_w)
    return torch.logsumexp(log_w_all, dim=0) - math.log(num_samples), torch.cat(log_px).mean(0)


# ---------------------------------------------------------------------------------------------- the module
class VAE(SuiteModule):
    """Trains on recon + beta * KL (per image, nats); tests the negative ELBO and an importance-sampled NLL."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        beta: float = 1.0,
        nll_samples: int = 128,
        nll_chunk: int = 32,
        image_every_n_epochs: int = 5,
        num_image_samples: int = 64,
        image_seed: int = 0,
        expensive_metrics: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.test_metrics = nn.ModuleDict({k: MeanMetric() for k in ("elbo", "nll", "recon", "kl")})
        self._first_val_batch: torch.Tensor | None = None
        self._first_test_batch: torch.Tensor | None = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def loss_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-sample reconstruction term -log p(x|z) and analytic KL, each (B,)."""
        mu, logvar = self.net.encode(x)
        z = reparameterize(mu, logvar, torch.randn_like(mu))
        recon = -bernoulli_log_likelihood(self.net.decode(z), x)
        return recon, kl_standard_normal(mu, logvar)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        recon, kl = self.loss_terms(batch[0])
        return self.training_loss(recon + self.hparams.beta * kl, recon=recon, kl=kl)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        if batch_idx == 0:
            self._first_val_batch = x[:8]
        recon, kl = self.loss_terms(x)
        self.accumulate(val__loss=recon + self.hparams.beta * kl, val__elbo=recon + kl, val__kl=kl)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # val/loss, val/elbo, val/kl: means over the validation images
        every = self.hparams.image_every_n_epochs
        if self.trainer.sanity_checking or not every or (self.current_epoch + 1) % every:
            return
        when = f"epoch {self.current_epoch}, step {self.global_step}"
        log_figure(self, "val/samples", self.samples_figure(self.hparams.num_image_samples, when))
        if self._first_val_batch is not None:
            log_figure(self, "val/reconstructions", self.reconstructions_figure(self._first_val_batch, when))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        if batch_idx == 0:
            self._first_test_batch = x[:16]
        mu, logvar = self.net.encode(x)
        log_px, mean_log_px_given_z = importance_sampled_log_likelihood(
            partial(self._log_px_given_z, x=x), mu, logvar, self.num_nll_samples, self.hparams.nll_chunk
        )
        kl = kl_standard_normal(mu, logvar)
        values = {"elbo": kl - mean_log_px_given_z, "nll": -log_px, "recon": -mean_log_px_given_z, "kl": kl}
        if not self.hparams.expensive_metrics:
            del values["nll"]  # K=1: the bound is the ELBO itself
        for name, value in values.items():
            self.test_metrics[name].update(value)
            self.log(f"test/{name}", self.test_metrics[name], on_step=False, on_epoch=True)

    @property
    def num_nll_samples(self) -> int:
        """K importance samples per test image: `nll_samples`, or 1 with expensive_metrics=false."""
        return int(self.hparams.nll_samples) if self.hparams.expensive_metrics else 1

    def on_test_start(self) -> None:
        if self.hparams.expensive_metrics and self.show_progress():
            log.info(
                "test/nll: importance sampling with K=%d decoder passes per test image (expensive_metrics=false "
                "skips it and tests the single-sample ELBO)",
                self.num_nll_samples,
            )

    def _log_px_given_z(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(self.net.decode(z), x)

    def on_test_epoch_end(self) -> None:
        when = f"test, step {self.global_step}"
        log_figure(
            self,
            "test/samples",
            self.samples_figure(self.hparams.num_image_samples, when),
            caption="z ~ N(0, I)",
        )
        if self._first_test_batch is not None:
            x = self._first_test_batch
            log_figure(
                self, "test/reconstructions", self.reconstructions_figure(x[:8], when), "rows: input, output"
            )
            pairs = min(8, len(x) // 2)  # images 0..7 paired with 8..15 (fewer in a smaller first batch)
            if pairs:
                log_figure(
                    self,
                    "test/interpolations",
                    self.interpolations_figure(x[:pairs], x[pairs : 2 * pairs]),
                    caption="latent means, linear",
                )
            log_figure(self, "test/traversals", self.traversals_figure(x[:8]), "top-KL latent dims, -3..3")

    # ------------------------------------------------------------------------------------ pictures
    @torch.no_grad()
    def sample_images(self, n: int) -> torch.Tensor:
        """Decoder means of n prior samples, from a fixed seed (the same grid every epoch; global RNG untouched)."""
        g = torch.Generator(device="cpu").manual_seed(self.hparams.image_seed)
        z = torch.randn(n, self.net.latent_dim, generator=g).to(self.device)
        return torch.sigmoid(self.net.decode(z))

    @torch.no_grad()
    def reconstruction_pairs(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs followed by the decoder means at the posterior means (two rows of len(x))."""
        mu, _ = self.net.encode(x)
        return torch.cat([x, torch.sigmoid(self.net.decode(mu))])

    @torch.no_grad()
    def interpolations(self, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """One row per pair: decoder means along the straight line between the two posterior means."""
        mu_a, _ = self.net.encode(a)
        mu_b, _ = self.net.encode(b)
        t = torch.linspace(0, 1, steps, device=self.device)[None, :, None]
        z = mu_a[:, None] * (1 - t) + mu_b[:, None] * t  # (pairs, steps, D)
        return torch.sigmoid(self.net.decode(z.flatten(0, 1)))

    @torch.no_grad()
    def top_kl_dims(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The len(x) latent dims with the largest mean KL over x (at most all of them), largest first, and
        those mean KLs (nats)."""
        mu, logvar = self.net.encode(x)
        kl = kl_per_dim(mu, logvar).mean(0)
        dims = kl.argsort(descending=True)[: len(x)]
        return dims, kl[dims]

    @torch.no_grad()
    def traversal_values(self, values: int = 11, span: float = 3.0) -> torch.Tensor:
        """The values a traversal sets its latent to, one per column: `values` points evenly over
        [-span, span]."""
        return torch.linspace(-span, span, values, device=self.device)

    @torch.no_grad()
    def traversals(self, x: torch.Tensor, values: int = 11, span: float = 3.0) -> torch.Tensor:
        """One row per latent dim (the len(x) dims with the largest mean KL): the first image's posterior
        mean with that one dim set to each of `traversal_values(values, span)`."""
        mu, _ = self.net.encode(x)
        dims, _ = self.top_kl_dims(x)
        z = mu[0].repeat(len(dims), values, 1)
        z[torch.arange(len(dims)), :, dims] = self.traversal_values(values, span)
        return torch.sigmoid(self.net.decode(z.flatten(0, 1)))

    # --------------------------------------------------------------------- labelled figures
    def samples_figure(self, n: int, when: str) -> np.ndarray:
        """n prior samples (decoder means, fixed seed), 8 per row; the title says what they are and when."""
        return figure(
            self.sample_images(n).cpu(),
            8,
            title=f"VAE samples: decoder means of z ~ N(0, I), seed {self.hparams.image_seed} ({when})",
        )

    def reconstructions_figure(self, x: torch.Tensor, when: str) -> np.ndarray:
        """Row "input": the images x; row "reconstruction": the decoder means at their posterior means."""
        return figure(
            self.reconstruction_pairs(x).cpu(),
            len(x),
            title=f"VAE reconstructions: decoder mean at the posterior mean of each input ({when})",
            row_labels=["input", "reconstruction"],
        )

    def interpolations_figure(self, a: torch.Tensor, b: torch.Tensor, steps: int = 10) -> np.ndarray:
        """One row per pair (a[k], b[k]); column t shows the decoder mean at (1 - t) mu_a + t mu_b."""
        ts = torch.linspace(0, 1, steps).tolist()
        return figure(
            self.interpolations(a, b, steps).cpu(),
            steps,
            title="VAE interpolations: decoder means along (1 - t) mu_a + t mu_b between the posterior means "
            "of two test images a (t = 0) and b (t = 1)",
            row_labels=[f"pair {k + 1}" for k in range(len(a))],
            col_labels=[f"t={t:.2f}" for t in ts],
        )

    def traversals_figure(self, x: torch.Tensor, values: int = 11, span: float = 3.0) -> np.ndarray:
        """Row: the latent dim z[d] that moves (and its mean KL); column: the value z[d] is set to; every
        other dim stays at the first test image's posterior mean."""
        dims, kl = self.top_kl_dims(x)
        return figure(
            self.traversals(x, values, span).cpu(),
            values,
            title="VAE latent traversals: the first test image's posterior mean with one latent z[d] (row; "
            "the dims of largest mean KL) set to the column value, decoder means",
            row_labels=[f"z[{int(d)}]\nKL {float(k):.2f}" for d, k in zip(dims, kl, strict=True)],
            col_labels=[f"{round(float(v), 6) + 0.0:+.1f}" for v in self.traversal_values(values, span)],
        )

    def metric_protocol(self) -> dict[str, Any]:
        return {
            "units": f"nats per image (sum over {math.prod(self.net.image_shape)} pixels), mean over test images",
            "likelihood": "Bernoulli on continuous [0, 1] pixels; not comparable with binarised-MNIST NLLs",
            "test/elbo": "negative ELBO: analytic KL + reconstruction term averaged over the K importance samples"
            + ("" if self.hparams.expensive_metrics else " (K=1: expensive_metrics=false)"),
            **(
                {
                    "test/nll": "importance-sampled estimate (IWAE bound, Burda et al. 2016 eq. 8), "
                    f"K={self.hparams.nll_samples}"
                }
                if self.hparams.expensive_metrics
                else {}
            ),
        }
