"""The DG-Net losses (docs/method.md section 3), each a small pure function of tensors.

Notation: D_k(x) is the k-th scale's patch map of the discriminator, N the batch size.
Which tensors are detached, and so which networks a loss trains, is decided by the caller
(`dgnet.training.objective`), not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from dgnet.errors import DgnetError


class NonFiniteLossError(DgnetError):
    """A loss became NaN or infinite; the message names the loss and the iteration."""


def image_reconstruction_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_recon^img = mean |G(s, a) - x|  (L1, mean over all pixels and the batch)."""
    return F.l1_loss(generated, target)


def code_reconstruction_loss(recovered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_recon^code = mean |E(x_ij) - code|  (L1; for the appearance code E_a, structure code E_s)."""
    return F.l1_loss(recovered, target)


def cycle_reconstruction_loss(cycled: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """L_cycle = mean |G(s_i', a_i') - x_i|  with s_i', a_i' re-encoded from generated images."""
    return F.l1_loss(cycled, original)


def identity_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_id = -1/N sum_n log softmax(logits_n)[label_n]  (cross-entropy)."""
    return F.cross_entropy(logits, labels)


def fine_grained_id_loss(logits: torch.Tensor, structure_labels: torch.Tensor) -> torch.Tensor:
    """L_fine = cross-entropy of the fine-grained head on x_ij = G(s_j, a_i) against j's label.

    The label is the STRUCTURE provider's: what stays of j in x_ij (hair, bag, body size) once the
    clothes are i's is what the fine-grained head must learn.
    """
    return F.cross_entropy(logits, structure_labels)


def primary_kl_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    teacher_probs_flipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_prim = 1/N sum_n KL(q_n || p_n) = 1/N sum_n sum_c q_nc (log q_nc - log p_nc).

    p = softmax(student_logits); q = the teacher's probabilities, averaged with those of the
    horizontally flipped image when `teacher_probs_flipped` is given: q = (q + q_flip) / 2.
    Terms with q = 0 count 0.
    """
    q = teacher_probs if teacher_probs_flipped is None else 0.5 * (teacher_probs + teacher_probs_flipped)
    log_p = F.log_softmax(student_logits.float(), dim=1)
    return F.kl_div(log_p, q.float(), reduction="batchmean")


def lsgan_discriminator_loss(
    real_outputs: Sequence[torch.Tensor], fake_outputs: Sequence[torch.Tensor]
) -> torch.Tensor:
    """L_D = sum_k [ mean (D_k(x_real) - 1)^2 + mean D_k(x_fake)^2 ]  (real -> 1, fake -> 0)."""
    return _sum(
        torch.mean((real - 1.0) ** 2) + torch.mean(fake**2)
        for real, fake in zip(real_outputs, fake_outputs, strict=True)
    )


def lsgan_generator_loss(fake_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_adv^G = sum_k 2 mean (D_k(x_fake) - 1)^2  (the generator pushes D's verdict on fakes to 1).

    The factor 2 is the published one (docs/method.md section 3): the generator's term weighs twice D's.
    """
    return _sum(2.0 * torch.mean((fake - 1.0) ** 2) for fake in fake_outputs)


def r1_penalty(
    real_outputs: Sequence[torch.Tensor], real_images: torch.Tensor, weight: float = 0.01
) -> torch.Tensor:
    """R1 = weight * sum_k 1/N sum_n || d/dx_n sum D_k(x)_n ||^2, every scale k w.r.t. the
    full-resolution real images x (the coarser scales' gradients pass back through the pooling).

    `real_outputs` are D's patch maps computed from `real_images` (which must require grad). The
    gradients are taken with create_graph=True so that the penalty itself trains D.
    """
    gradients = [torch.autograd.grad(output.sum(), real_images, create_graph=True)[0]
                 for output in real_outputs]
    return weight * _sum(g.pow(2).flatten(1).sum(1).mean() for g in gradients)


def _sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of a non-empty sequence of tensors (the builtin sum would start from the int 0)."""
    iterator = iter(terms)
    total = next(iterator)
    for term in iterator:
        total = total + term
    return total
