"""Each DG-Net loss on hand-made tensors, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dgnet.losses import (
    code_reconstruction_loss,
    cycle_reconstruction_loss,
    fine_grained_id_loss,
    identity_loss,
    image_reconstruction_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    primary_kl_loss,
    r1_penalty,
)


@pytest.mark.parametrize(
    "loss", [image_reconstruction_loss, code_reconstruction_loss, cycle_reconstruction_loss]
)
def test_l1_losses(loss) -> None:
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    target = torch.tensor([[0.0, 0.0], [0.5, 1.0]])
    # |1| + |-2| + |0| + |2| = 5 over 4 elements
    assert loss(x, target).item() == pytest.approx(1.25)


def test_identity_and_fine_grained_cross_entropy() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([1, 0])
    # sample 1: p = 1/2; sample 2: p = 3/4
    expected = -(math.log(0.5) + math.log(0.75)) / 2
    assert identity_loss(logits, labels).item() == pytest.approx(expected)
    assert fine_grained_id_loss(logits, labels).item() == pytest.approx(expected)


def test_lsgan_losses_over_scales() -> None:
    real = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    fake = [torch.tensor([0.0, 1.0]), torch.tensor([-1.0])]
    # D: scale 0: mean((0, 1)) + mean((0, 1)) = 1; scale 1: 1 + 1 = 2  -> 3
    assert lsgan_discriminator_loss(real, fake).item() == pytest.approx(3.0)
    # G (published factor 2): scale 0: 2 mean((1, 0)) = 1; scale 1: 2 (-2)^2 = 8 -> 9
    assert lsgan_generator_loss(fake).item() == pytest.approx(9.0)


def test_primary_kl_with_flip_averaging() -> None:
    student_logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    q = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    q_flip = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    # averaged q: [0.5, 0.5, 0] and the student's own distribution
    kl_first = 0.5 * math.log(0.5 / 0.5) + 0.5 * math.log(0.5 / 0.25)  # the 0 entry counts 0
    expected = (kl_first + 0.0) / 2  # batch mean
    assert primary_kl_loss(student_logits, q, q_flip).item() == pytest.approx(expected, abs=1e-6)
    # without the flip: KL([1, 0, 0] || [.5, .25, .25]) = log 2
    assert primary_kl_loss(student_logits, q).item() == pytest.approx(math.log(2.0) / 2, abs=1e-6)


def test_primary_kl_trains_the_student_only() -> None:
    logits = torch.zeros(2, 3, requires_grad=True)
    q = torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.1, 0.8]], requires_grad=True)
    primary_kl_loss(logits, q.detach()).backward()
    # d KL / d logits = (p - q) / N
    assert torch.allclose(logits.grad, (torch.full((2, 3), 1 / 3) - q.detach()) / 2, atol=1e-6)


def test_r1_penalty_on_a_linear_discriminator() -> None:
    # D(x)_n = <w, x_n> as a 1x1 "patch map": grad_x_n = w, ||w||^2 = 1 + 4 + 9 + 16 = 30 for every n.
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    output = (x.flatten(1) * w).sum(1).view(3, 1, 1, 1)
    penalty = r1_penalty([output], x, weight=0.01)
    assert penalty.item() == pytest.approx(0.01 * 30)
    # create_graph=True: the penalty is differentiable w.r.t. D's weights: d/dw 0.01 * ||w||^2 = 0.02 w
    penalty.backward()
    assert torch.allclose(w.grad, 0.02 * w.detach())


def test_r1_penalty_sums_every_scale_wrt_the_full_resolution_input() -> None:
    # Scale 0: <w, x_n>; scale 1 sees x average-pooled to one pixel: 4 * mean(x_n) = sum(x_n),
    # whose gradient w.r.t. the full-resolution x_n is all ones (norm^2 4).
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    scale0 = (x.flatten(1) * w).sum(1).view(3, 1, 1, 1)
    scale1 = 4 * torch.nn.functional.avg_pool2d(x, 2)
    assert r1_penalty([scale0, scale1], x, weight=0.01).item() == pytest.approx(0.01 * (30 + 4))
