"""The published DG-Net details of docs/method.md section 8 that the generator and objective follow.

Each test pins one detail where an earlier version of this code departed from the published
implementation (ASPP norms, structure-code loss, adversarial weight, R1 scales, frozen E_a mode,
E_a's BN updates, G's init, the teacher's BN mode).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from dgnet.losses import r1_penalty
from dgnet.models.dgnet import DGNet
from dgnet.models.frozen import frozen_call
from dgnet.models.layers import SampleLayerNorm
from dgnet.models.teacher import FrozenTeacher, ReidBaseline
from dgnet.profiles import get_profile
from dgnet.training.objective import ObjectiveConfig, discriminator_objective, generator_objective
from dgnet.training.schedule import loss_weights_at
from tests.test_routing import GENERATOR, backward_touched, make_batch, only


@pytest.fixture
def setup():
    torch.manual_seed(0)
    cfg = get_profile("tiny", num_classes=6)
    model = DGNet(cfg).train()
    teacher = FrozenTeacher(ReidBaseline(cfg))
    return cfg, model, teacher, make_batch(cfg)


def erased_batch(batch):
    erased = [t.clone() for t in (batch.a, batch.b, batch.pos_a, batch.pos_b)]
    for t in erased:
        t[:, :, 8:24, 4:16] = 0.0
    return dataclasses.replace(batch, a_erased=erased[0], b_erased=erased[1], pos_a_erased=erased[2],
                               pos_b_erased=erased[3])


# --- 1. ASPP: the structure code is instance-normalised ---------------------------------------------


def test_structure_code_is_instance_normalised(setup) -> None:
    _, model, _, batch = setup
    code = model.structure_encoder(torch.cat([batch.a, batch.b])).detach()
    per_map = code.flatten(2)
    assert torch.allclose(per_map.mean(2), torch.zeros_like(per_map.mean(2)), atol=1e-4)
    assert torch.allclose(per_map.var(2, unbiased=False), torch.ones_like(per_map.mean(2)), atol=1e-2)
    # Its scale carries nothing: scaling the image scales nothing in the code.
    assert torch.allclose(model.structure_encoder(batch.a * 3.0), model.structure_encoder(batch.a), atol=1e-3)


def test_aspp_branches_end_without_activation(setup) -> None:
    aspp = setup[1].structure_encoder.aspp
    assert isinstance(aspp.branches[0][-1], nn.InstanceNorm2d)  # 1x1 branch: conv + IN
    for branch in aspp.branches[1:]:
        assert isinstance(branch[0][-1], nn.LeakyReLU)  # 1x1 conv + IN + LReLU ...
        assert isinstance(branch[1][-1], nn.InstanceNorm2d)  # ... then dilated conv + IN, no activation
    assert isinstance(aspp.fuse[-1], nn.InstanceNorm2d)


# --- 2. Structure-code loss: detached target, coin between trainable and frozen E_s ------------------


def test_structure_code_loss_reencode_trains_structure_encoder_only(setup) -> None:
    _, model, teacher, batch = setup
    touched = backward_touched(model, teacher, batch, only(code_structure=1.0), reencode_structure=True)
    assert touched == {"structure_encoder"}
    # ... and only its second pass: the donor codes (the target) are detached, so shrinking the code
    # cannot lower the loss by moving the target.


def test_structure_code_loss_frozen_encoder_trains_generator(setup) -> None:
    _, model, teacher, batch = setup
    model.zero_grad(set_to_none=True)
    total, _ = generator_objective(model, teacher, batch, only(code_structure=1.0), reencode_structure=False)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    # Through the frozen E_s the gradient reaches G; E_s's weights get it only through x_ij's input s.
    assert backward_touched(model, teacher, batch, only(code_structure=1.0)) == GENERATOR


@pytest.mark.slow  # ~6 s: 68 generator passes
def test_structure_code_coin_is_drawn_with_probability_p(setup) -> None:
    _, model, teacher, batch = setup
    picks = []
    original = model.structure_encoder.forward

    def spy(images):
        if model.structure_encoder.training:  # live calls only (a frozen view runs in eval mode)
            picks.append(images.requires_grad)
        return original(images)

    model.structure_encoder.forward = spy
    torch.manual_seed(1)
    for _ in range(20):
        picks.clear()
        generator_objective(model, teacher, batch, only(code_structure=1.0, recon_image=1.0))
        # call 0: E_s(a, b); call 1 only when the coin says re-encode: the live E_s on detached x_ij
        assert len(picks) in (1, 2)
        assert len(picks) == 1 or not picks[1]
    reencoded = 0
    torch.manual_seed(2)
    for _ in range(48):
        picks.clear()
        with torch.no_grad():
            generator_objective(model, teacher, batch, only(code_structure=1.0))
        reencoded += len(picks) == 2
    assert 11 < reencoded < 37  # p = 0.5: 24 +- 3.5 sigma
    with pytest.raises(Exception, match="structure_reencode_p"):
        ObjectiveConfig(structure_reencode_p=1.5)


# --- 3, 4. Adversarial weight and R1 on every scale, per stream -------------------------------------


def zero_discriminator(model: DGNet) -> None:
    for scale in model.discriminator.scales:
        last = scale.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


def test_generator_adversarial_is_twice_lsgan_per_scale_and_stream(setup) -> None:
    _, model, teacher, batch = setup
    zero_discriminator(model)  # D_k = 0 everywhere: (0 - 1)^2 = 1 per patch
    _, logs = generator_objective(model, teacher, batch, only(adversarial=1.0))
    scales = len(model.discriminator.scales)
    assert logs["adversarial"] == pytest.approx(2 * 2.0 * scales)  # 2 streams x factor 2 x scales


def test_discriminator_r1_covers_every_scale_per_stream(setup) -> None:
    _, model, _, batch = setup
    real = torch.cat([batch.a, batch.b])
    fake = torch.randn_like(real)
    _, logs = discriminator_objective(model, real, fake, r1_weight=0.01)
    expected = 0.0
    for stream in real.chunk(2):
        x = stream.clone().requires_grad_(True)
        outputs = model.discriminator(x)
        for output in outputs:
            (g,) = torch.autograd.grad(output.sum(), x, retain_graph=True)
            expected += 0.01 * g.pow(2).flatten(1).sum(1).mean().item()
    assert logs["d_r1"] == pytest.approx(expected, rel=1e-4)
    # The coarser scales contribute: the full-resolution scale alone gives less.
    first = 0.0
    for stream in real.chunk(2):
        x = stream.clone().requires_grad_(True)
        first += r1_penalty(model.discriminator(x)[:1], x, 0.01).item()
    assert logs["d_r1"] > first * 1.001


# --- 5. The frozen E_a: eval mode, BN on batch statistics, no dropout --------------------------------


def test_frozen_view_has_no_dropout_and_uses_batch_statistics(setup) -> None:
    _, model, _, batch = setup
    encoder = model.appearance_encoder.train()
    x = torch.cat([batch.a, batch.b])
    torch.manual_seed(1)
    first = frozen_call(encoder, x).primary_logits
    torch.manual_seed(2)
    second = frozen_call(encoder, x).primary_logits
    assert torch.equal(first, second)  # no dropout
    reference = copy.deepcopy(encoder).eval()
    for m in reference.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    assert torch.allclose(first, reference(x).primary_logits, atol=1e-5)  # batch statistics
    assert encoder.training and all(m.training for m in encoder.modules())  # modes restored


# --- 6. E_a's BatchNorm running statistics: ten batches of N, ~29% generated -------------------------


def test_appearance_encoder_bn_updates_per_iteration(setup) -> None:
    _, model, teacher, batch = setup
    batch = erased_batch(batch)
    encoder = model.appearance_encoder
    seen: list[torch.Tensor] = []  # the batches BatchNorm normalises on their own (grouped: several)
    handle = encoder.register_forward_pre_hook(
        lambda module, args: seen.extend(args[0].detach().chunk(module.trunk.bn1.statistics_groups))
        if module.training else None)
    before = int(encoder.trunk.bn1.num_batches_tracked)
    generator_objective(model, teacher, batch, loss_weights_at(40_000))
    handle.remove()
    assert int(encoder.trunk.bn1.num_batches_tracked) == before + 10
    n = batch.a.shape[0]
    assert [len(x) for x in seen] == [n] * 10
    expected = [batch.a, batch.b, batch.pos_a, batch.pos_b, *batch.erased]
    for got, want in zip(seen[:8], expected, strict=True):
        assert torch.equal(got, want)
    # The share of the running average that comes from generated images once it has settled:
    # forward k of the 10 (0-based) weighs m (1 - m)^(9 - k) of an iteration's update.
    m = encoder.trunk.bn1.momentum
    weights = [m * (1 - m) ** (9 - k) for k in range(10)]
    share = sum(weights[8:]) / sum(weights)
    assert share == pytest.approx(0.29, abs=0.01)


# --- 7. G's initialisation ---------------------------------------------------------------------------


def test_generator_init_is_kaiming_fan_in_with_zero_bias() -> None:
    torch.manual_seed(0)
    model = DGNet(get_profile("paper", pretrained=False))
    layers = [m for part in (model.structure_encoder, model.decoder) for m in part.modules()
              if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) > 30
    for layer in layers:
        fan_in = layer.weight[0].numel()
        if layer.weight.numel() >= 4096:  # enough samples for the std to be tight
            assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1), layer
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0
    norms = [m for m in model.decoder.modules() if isinstance(m, SampleLayerNorm)]
    for norm in norms:
        assert norm.weight.min() >= 0 and norm.weight.max() <= 1 and norm.weight.std() > 0.1
        assert torch.count_nonzero(norm.bias) == 0


# --- 10. The teacher: batch statistics on the batch it labels, never dropout ------------------------


def test_teacher_soft_labels_use_batch_statistics_without_dropout(setup) -> None:
    cfg = setup[0]
    torch.manual_seed(0)
    member = ReidBaseline(cfg)
    with torch.no_grad():  # give the running statistics values far from any batch's
        for m in member.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
        nn.init.normal_(member.head.classifier.weight, std=1.0)  # confident enough to tell modes apart
    teacher = FrozenTeacher(member)
    x = torch.randn(4, 3, 64, 32)
    buffers = {k: v.clone() for k, v in member.named_buffers()}
    torch.manual_seed(1)
    first = teacher.soft_labels(x)
    torch.manual_seed(2)
    assert torch.equal(first, teacher.soft_labels(x))  # no dropout
    reference = copy.deepcopy(member).eval()
    for m in reference.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        expected = 0.5 * (reference(x)[0].softmax(1) + reference(x.flip(3))[0].softmax(1))
    assert torch.allclose(first, expected, atol=1e-6)
    running = teacher.soft_labels(x, batch_statistics=False)
    assert not torch.allclose(first, running, atol=1e-3)  # the option: running statistics
    for k, v in member.named_buffers():
        assert torch.equal(v, buffers[k]), k  # nothing moved
    assert not teacher.training


# --- 9. The paper profile refuses to start without ImageNet weights ---------------------------------


def test_paper_profile_requires_imagenet_weights(tmp_path, monkeypatch) -> None:
    from dgnet.errors import ConfigError
    from dgnet.models.backbone import PretrainedWeightsMissingWarning, build_trunk

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache: no weights
    paper = get_profile("paper", backbone="resnet18")  # resnet18: the same rule, cheaper to build
    assert paper.require_pretrained
    rule = r"require_pretrained.*tens of rank-1 points.*require_pretrained: false"
    with pytest.raises(ConfigError, match=rule):
        build_trunk(paper)
    with pytest.warns(PretrainedWeightsMissingWarning):  # the user said otherwise: random init, warned
        build_trunk(dataclasses.replace(paper, require_pretrained=False))
    assert not get_profile("cpu").require_pretrained and not get_profile("tiny").require_pretrained
