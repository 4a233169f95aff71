"""NeRCo's losses as small pure functions, CycleGAN's learning-rate schedule and image pool.

Each function cites the released code (`Ysz2022/NeRCo`, models/NeRCo_model.py, `backward_G` / `backward_D_*`)
and the paper's names (Yang et al., ICCV 2023): G_H = `netG_A` (enhance), G_L = `netG_B` (degrade),
A = low light, B = normal light. Weights are arguments; their defaults live in configs/model/nerco.yaml.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

LOW, HIGH = 0, 1  # prompt indices: "low light image", "high light image"


def lsgan(prediction: Tensor, real: bool) -> Tensor:
    """LSGAN objective (Mao et al. 2017), the released `GANLoss('lsgan')`: MSE to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """0.5 * (LSGAN(D(real), 1) + LSGAN(D(fake), 0)): the released `backward_D_basic` (fake is detached)."""
    return 0.5 * (lsgan(d_real, True) + lsgan(d_fake, False))


def cycle_loss(reconstruction: Tensor, original: Tensor, weight: float) -> Tensor:
    """weight * ||G_L(G_H(A)) - A||_1 (or the B loop): `loss_cycle_A/B`, weights lambda_A = lambda_B = 10."""
    return weight * F.l1_loss(reconstruction, original)


def identity_loss(mapped: Tensor, original: Tensor, cycle_weight: float, lambda_identity: float) -> Tensor:
    """cycle_weight * lambda_identity * ||G(x) - x||_1 (`loss_idt_A/B`: 10 * 0.5 = 5 in the released code)."""
    return cycle_weight * lambda_identity * F.l1_loss(mapped, original)


def text_loss(logits: Tensor, target_index: int) -> Tensor:
    """Text-driven discriminator term: L1(softmax over the two prompts, one-hot target), as released
    (`criterionCycle(logits_per_image.softmax(-1), real_A/real_B)`); target LOW for fake_A and rec_A,
    HIGH for fake_B and rec_B. Mean over the batch and the two prompts."""
    probs = logits.softmax(dim=-1)
    target = F.one_hot(torch.full(probs.shape[:1], target_index, device=probs.device), probs.shape[-1])
    return F.l1_loss(probs, target.to(probs.dtype))


def resize_for_text_encoder(images: Tensor, size: int, antialias: bool = False) -> Tensor:
    """Bilinear resize to size x size, values untouched (the released code feeds [-1, 1] images to CLIP without
    CLIP's normalisation; torchvision's tensor `Resize` of that era did not antialias)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


def pre_consistency_l1(pre_a: Tensor, real_a: Tensor, weight: float) -> Tensor:
    """weight * ||NRN(A) - A||_1: first half of `loss_PreConsis` (weight 4 * lambda_A = 40 released)."""
    return weight * F.l1_loss(pre_a, real_a)


def mask_bypass_loss(
    fake_b: Tensor, real_a: Tensor, h: Tensor, real_b: Tensor, g_a_of_b_minus_h: Tensor
) -> Tensor:
    """`loss_Bypass`: ||fake_B - (A + H)||_1 + ||B - G_H([B - H, B - H])||_1."""
    return F.l1_loss(fake_b, real_a + h) + F.l1_loss(real_b, g_a_of_b_minus_h)


def mask_self_loss(
    h: Tensor,
    fake_b: Tensor,
    real_a: Tensor,
    fake_a: Tensor | None,
    real_b: Tensor,
    h_of_fake_a: Tensor | None,
) -> Tensor:
    """`loss_self` (pseudo noise labels): ||H - (fake_B - A)||_1 + ||fake_A - (B - H(fake_A))||_1; the second
    term needs the B -> A -> B loop and is left out without it."""
    loss = F.l1_loss(h, fake_b - real_a)
    if fake_a is not None and h_of_fake_a is not None:
        loss = loss + F.l1_loss(fake_a, real_b - h_of_fake_a)
    return loss


def linear_decay_factor(epoch: int, n_epochs: int, n_epochs_decay: int, step_at_epoch_start: bool) -> float:
    """CycleGAN's 'linear' policy: lambda(e) = 1 - max(0, e + 1 - n_epochs) / (n_epochs_decay + 1), with the
    released `epoch_count = 1`. `epoch` is Lightning's 0-based epoch k.

    step_at_epoch_start=False (CycleGAN's train.py steps the scheduler after each epoch): epoch k uses
    lambda(k): n_epochs constant epochs, then decay to 1/(n_epochs_decay + 1) in the last epoch.
    step_at_epoch_start=True (NeRCo's released train.py calls `update_learning_rate()` first thing in every
    epoch; faithfulness option): epoch k uses lambda(k + 1): n_epochs - 1 constant epochs and the last epoch
    (k = n_epochs + n_epochs_decay - 1) trains with lr 0.
    """
    e = epoch + 1 if step_at_epoch_start else epoch
    return 1.0 - max(0, e + 1 - n_epochs) / float(n_epochs_decay + 1)


def apply_lr_factor(optimizers: list[torch.optim.Optimizer], factor: float) -> float:
    """Sets every parameter group's lr to initial_lr * factor (stateless: a resumed run gets the same rate)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
    return factor


class ImagePool:
    """CycleGAN's history buffer (Shrivastava et al. 2017): until `size` images are stored, returns the input
    images and stores them; then, per image, with probability 1/2 returns a random stored image and replaces it
    with the new one, else returns the new one. Stores and returns *detached* copies (the released pool keeps
    `.data`), so nothing that goes through a pool carries gradient. Uses Python's global `random`, as released
    (the suite's RNG-state callback saves it in checkpoints)."""

    def __init__(self, size: int = 50):
        self.size = size
        self.images: list[Tensor] = []

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                idx = random.randint(0, self.size - 1)
                out.append(self.images[idx].clone())
                self.images[idx] = image
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state(self) -> list[Tensor]:
        return [img.cpu() for img in self.images]

    def load(self, images: list[Tensor]) -> None:
        self.images = list(images)


def pools_state(pools: dict[str, ImagePool]) -> dict[str, list[Tensor]]:
    """Every pool's stored images on the CPU, by pool name (for a checkpoint)."""
    return {k: p.state() for k, p in pools.items()}


def load_pools(
    pools: dict[str, ImagePool], states: dict[str, list[Tensor]] | None, device: torch.device
) -> None:
    """Refills the pools named in `states` (from `pools_state`) on `device`; other names are ignored."""
    for name, images in (states or {}).items():
        if name in pools:
            pools[name].load([img.to(device) for img in images])
