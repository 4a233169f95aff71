"""NeRCo's training objectives assembled from the terms of `lit_modules.nerco_losses` (Yang et al.,
"Implicit Neural Representation for Cooperative Low-light Image Enhancement", ICCV 2023, arXiv 2303.11722:
the dual-closed-loop adversarial objective with the text-driven, edge and mask-extractor terms; as written
in the released `Ysz2022/NeRCo` `backward_G` / `backward_D_*`, summarised in docs/references.md, section 1,
"Losses"). Weights from config, released values in brackets:

  loss_A = GAN(D_A(fake_B)) + l_A |rec_A - A| [10] + l_B l_idt |G_H([B, B]) - B| [5]
           + l_text TEXT(fake_B, rec_B -> "high") [0.5] + l_edge GAN(D_A_edge(e(fake_B))) [0.5]
  loss_B = GAN(D_B(fake_A)) + GAN(D_B(pre_A)) + l_B |rec_B - B| + l_A l_idt |G_L(A) - A|
           + l_text TEXT(fake_A, rec_A -> "low") + l_edge GAN(D_B_edge(e(fake_A)))
  loss_PreConsis = l_pre |pre_A - A| [40] + GAN(D_B(pre_A))
  loss_H = |fake_B - (A + H)| + |B - G_H([B - H, B - H])| + GAN(D_A(A + H)) + GAN(D_B(B - H))
           + |H - (fake_B - A)| + |fake_A - (B - H(fake_A))|
  loss_G = loss_A + loss_B + l_mask loss_H [0.5] + loss_PreConsis

where e(x) is the edge map under variant=paper and x itself (RGB) under variant=official (released quirk).
Each function returns its weighted terms by name, in the released order of evaluation: the image pools
(Python's `random`) and the official random edge projection (torch's RNG) draw random numbers in that order,
and the terms are summed in it, so a run is reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_modules.nerco_losses import (
    HIGH,
    LOW,
    ImagePool,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    lsgan,
    mask_bypass_loss,
    mask_self_loss,
    pre_consistency_l1,
    resize_for_text_encoder,
    text_loss,
)
from lit_modules.nets.norms import is_channels_last

Outputs = Mapping[str, Tensor | None]  # what `NeRCo.forward_train` returns (the released `forward`)
Terms = dict[str, Tensor]


@dataclass(frozen=True)
class Nets:
    """The networks the objectives call, under the released names (None where a component is off)."""

    Pre: nn.Module | None  # the NRN
    G_A: nn.Module  # G_H, enhance: [image, NRN(image)] -> normal light
    G_B: nn.Module  # G_L, degrade
    H: nn.Module | None  # mask extractor: (H, mask)
    D_A: nn.Module  # judges normal-light images
    D_B: nn.Module  # judges low-light images
    D_A_edge: nn.Module | None
    D_B_edge: nn.Module | None
    edge: nn.Module | None  # edge operator of the edge discriminators

    @classmethod
    def of(cls, model: nn.Module) -> Nets:
        """The networks of a module that holds them as the released attributes (netPre, netG_A, ..., edge)."""
        return cls(**{f: getattr(model, f if f == "edge" else "net" + f) for f in cls.__dataclass_fields__})


def generator_input(x: Tensor, pre: Tensor | None, mask: Tensor | None) -> Tensor:
    """G_H's input [x, NRN(x)] * mask ([x, x] without the NRN, no product without the mask extractor), in x's
    memory format (a channels-last x keeps G_H on the channels-last path `enhance` runs)."""
    inp = torch.cat([x, pre if pre is not None else x], dim=1)
    inp = inp * mask if mask is not None else inp
    return inp.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else inp


def released_forward(nets: Nets, A: Tensor, B: Tensor, c: Mapping[str, bool]) -> dict[str, Tensor | None]:
    """The released `forward` (components switched off where `c` says): pre_A = NRN(A), (H, mask) = H(A),
    fake_B = G_H([A, pre_A] * mask), rec_A = G_L(fake_B); second loop: fake_A = G_L(B * mask),
    rec_B = G_H([fake_A, NRN(fake_A)])."""
    o: dict[str, Tensor | None] = {"pre_A": None, "H": None, "mask": None, "fake_A": None, "rec_B": None}
    if c["nrn"]:
        o["pre_A"] = nets.Pre(A)
    if c["mask_extractor"]:
        o["H"], o["mask"] = nets.H(A)
    o["fake_B"] = nets.G_A(generator_input(A, o["pre_A"], o["mask"]))
    o["rec_A"] = nets.G_B(o["fake_B"])
    if c["second_loop"]:
        o["fake_A"] = nets.G_B(B * o["mask"] if o["mask"] is not None else B)
        pre_fake_a = nets.Pre(o["fake_A"]) if c["nrn"] else None
        o["rec_B"] = nets.G_A(generator_input(o["fake_A"], pre_fake_a, None))
    return o


def edge_for_generator(x: Tensor, mode: str, edge: nn.Module | None) -> Tensor:
    """What the generator loss feeds the edge discriminators: `rgb` (released quirk: the RGB image itself,
    although D_*_edge are trained on edge maps) or `edge` (the paper: the edge map e(x))."""
    if mode == "rgb":
        return x
    if mode == "edge":
        return edge(x)
    raise ValueError(f"faithful.edge_generator_input must be rgb or edge, got {mode!r}")


def text_inputs(o: Outputs, mode: str, pools: Mapping[str, ImagePool]) -> tuple[Tensor | None, ...]:
    """(fake_B, rec_B, fake_A, rec_A) as the text-driven discriminator sees them. `pooled` (released): three
    queries of the fake_B pool (fake_B, rec_B and fake_A), one of the fake_A pool (rec_A); the pools return
    detached copies, so these terms send no gradient to any generator. `direct` (paper): the outputs."""
    if mode == "pooled":
        pool_b, pool_a = pools["fake_B_text"], pools["fake_A_text"]
        fake_b = pool_b.query(o["fake_B"])
        rec_b = pool_b.query(o["rec_B"]) if o["rec_B"] is not None else None
        fake_a = pool_b.query(o["fake_A"]) if o["fake_A"] is not None else None
        rec_a = pool_a.query(o["rec_A"])
        return fake_b, rec_b, fake_a, rec_a
    if mode == "direct":
        return o["fake_B"], o["rec_B"], o["fake_A"], o["rec_A"]
    raise ValueError(f"faithful.text_inputs must be pooled or direct, got {mode!r}")


def text_scorer(
    logits: Callable[[Tensor], Tensor], image_size: int, antialias: bool
) -> Callable[[Tensor, int], Tensor]:
    """score(images, prompt): `nerco_losses.text_loss` of the text encoder's logits on the images resized to
    its input size (values untouched, as released)."""

    def score(images: Tensor, target: int) -> Tensor:
        return text_loss(logits(resize_for_text_encoder(images, image_size, antialias)), target)

    return score


def text_terms(
    score: Callable[[Tensor, int], Tensor],
    fake_b: Tensor,
    rec_b: Tensor | None,
    fake_a: Tensor | None,
    rec_a: Tensor,
) -> tuple[Tensor, Tensor]:
    """(TEXT_A, TEXT_B), the released `loss_D_A_CLIP`, `loss_D_B_CLIP` before the lambda_text weight:
    fake_B and rec_B scored towards "high light image", fake_A and rec_A towards "low light image";
    `score(images, prompt)` from `text_scorer`."""
    text_a = score(fake_b, HIGH) + (score(rec_b, HIGH) if rec_b is not None else 0.0)
    text_b = (score(fake_a, LOW) if fake_a is not None else 0.0) + score(rec_a, LOW)
    return text_a, text_b


def adversarial_cycle_terms(
    nets: Nets, A: Tensor, B: Tensor, o: Outputs, c: Mapping[str, bool], w: Mapping[str, float]
) -> Terms:
    """The colour-adversarial and cycle parts of loss_A and loss_B: GAN(D_A(fake_B)), l_A |rec_A - A|,
    GAN(D_B(fake_A)), l_B |rec_B - B| (second loop) and GAN(D_B(pre_A)) (NRN)."""
    t: Terms = {
        "G_A": lsgan(nets.D_A(o["fake_B"]), True),
        "cycle_A": cycle_loss(o["rec_A"], A, w["lambda_A"]),
    }
    if c["second_loop"]:
        t["G_B"] = lsgan(nets.D_B(o["fake_A"]), True)
        t["cycle_B"] = cycle_loss(o["rec_B"], B, w["lambda_B"])
    if c["nrn"]:
        t["G_B_pre"] = lsgan(nets.D_B(o["pre_A"]), True)
    return t


def identity_terms(nets: Nets, A: Tensor, B: Tensor, w: Mapping[str, float]) -> Terms:
    """l_B l_idt |G_H([B, B]) - B| and l_A l_idt |G_L(A) - A| (released `loss_idt_A/B`)."""
    return {
        "idt_A": identity_loss(nets.G_A(torch.cat([B, B], 1)), B, w["lambda_B"], w["lambda_identity"]),
        "idt_B": identity_loss(nets.G_B(A), A, w["lambda_A"], w["lambda_identity"]),
    }


def edge_adversarial_terms(
    nets: Nets, o: Outputs, c: Mapping[str, bool], w: Mapping[str, float], mode: str
) -> Terms:
    """l_edge GAN(D_A_edge(e(fake_B))) and, with the second loop, l_edge GAN(D_B_edge(e(fake_A)))."""
    t: Terms = {
        "G_A_edge": w["lambda_edge"]
        * lsgan(nets.D_A_edge(edge_for_generator(o["fake_B"], mode, nets.edge)), True)
    }
    if c["second_loop"]:
        t["G_B_edge"] = w["lambda_edge"] * lsgan(
            nets.D_B_edge(edge_for_generator(o["fake_A"], mode, nets.edge)), True
        )
    return t


def pre_consistency_term(nets: Nets, A: Tensor, pre_a: Tensor, w: Mapping[str, float]) -> Tensor:
    """loss_PreConsis = l_pre |NRN(A) - A| + l_pre_gan GAN(D_B(NRN(A))): the NRN's output stays a low-light
    image of the same content."""
    return pre_consistency_l1(pre_a, A, w["lambda_pre_l1"]) + w["lambda_pre_gan"] * lsgan(
        nets.D_B(pre_a), True
    )


def mask_extractor_term(nets: Nets, A: Tensor, B: Tensor, o: Outputs, w: Mapping[str, float]) -> Tensor:
    """l_mask loss_H: the bypass terms |fake_B - (A + H)| + |B - G_H([B - H, B - H])|, the adversarial terms
    GAN(D_A(A + H)) + GAN(D_B(B - H)) and the pseudo-label terms |H - (fake_B - A)| + |fake_A - (B - H(fake_A))|
    (the last one only with the second loop)."""
    h, fake_b, fake_a = o["H"], o["fake_B"], o["fake_A"]
    bypass = mask_bypass_loss(fake_b, A, h, B, nets.G_A(torch.cat([B - h, B - h], 1)))
    adv = lsgan(nets.D_A(A + h), True) + lsgan(nets.D_B(B - h), True)
    h_fake_a = nets.H(fake_a)[0] if fake_a is not None else None
    self_term = mask_self_loss(h, fake_b, A, fake_a, B, h_fake_a)
    return w["lambda_mask"] * (bypass + adv + self_term)


def generator_terms(
    nets: Nets,
    A: Tensor,
    B: Tensor,
    o: Outputs,
    components: Mapping[str, bool],
    weights: Mapping[str, float],
    edge_mode: str,
    text: Callable[[Outputs], tuple[Tensor, Tensor]],
) -> Terms:
    """The weighted terms of loss_G (they sum to it) for the components switched on; `text(o)` gives
    (TEXT_A, TEXT_B), called only with the text-driven discriminator on."""
    c, w = components, weights
    t = adversarial_cycle_terms(nets, A, B, o, c, w)
    if c["identity"]:
        t.update(identity_terms(nets, A, B, w))
    if c["edge_discriminators"]:
        t.update(edge_adversarial_terms(nets, o, c, w, edge_mode))
    if c["text_discriminator"]:
        text_a, text_b = text(o)
        t["text_A"], t["text_B"] = w["lambda_text"] * text_a, w["lambda_text"] * text_b
    if c["nrn"] and c["consistency"]:
        t["pre_consis"] = pre_consistency_term(nets, A, o["pre_A"], w)
    if c["mask_extractor"]:
        t["mask"] = mask_extractor_term(nets, A, B, o, w)
    return t


def discriminator_terms(
    nets: Nets,
    A: Tensor,
    B: Tensor,
    o: Outputs,
    components: Mapping[str, bool],
    pools: Mapping[str, ImagePool],
) -> Terms:
    """The four discriminators' LSGAN losses 0.5 (GAN(D(real), 1) + GAN(D(pool(fake)), 0)) on detached, pooled
    fakes, in the released order; D_B has a second such term on NRN(A)."""
    c = components
    fake_b = o["fake_B"].detach()
    t: Terms = {"D_A": discriminator_loss(nets.D_A(B), nets.D_A(pools["fake_B"].query(fake_b)))}
    d_b = []
    if c["second_loop"]:
        d_b.append(discriminator_loss(nets.D_B(A), nets.D_B(pools["fake_A"].query(o["fake_A"].detach()))))
    if c["nrn"]:
        d_b.append(discriminator_loss(nets.D_B(A), nets.D_B(pools["pre_A"].query(o["pre_A"].detach()))))
    if d_b:
        t["D_B"] = sum(d_b)
    if c["edge_discriminators"]:
        fake_edge = pools["fake_B_edge"].query(nets.edge(fake_b))
        t["D_A_edge"] = discriminator_loss(nets.D_A_edge(nets.edge(B)), nets.D_A_edge(fake_edge))
        if c["second_loop"]:
            fake_edge = pools["fake_A_edge"].query(nets.edge(o["fake_A"].detach()))
            t["D_B_edge"] = discriminator_loss(nets.D_B_edge(nets.edge(A)), nets.D_B_edge(fake_edge))
    return t
