"""One grouped forward equals separate forwards: outputs, gradients, running statistics, counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dgnet.models.appearance import AppearanceEncoder
from dgnet.models.frozen import frozen_call
from dgnet.models.grouped_norm import GroupedBatchNorm2d, grouped_call, statistics_groups
from dgnet.models.teacher import FrozenTeacher, ReidBaseline
from dgnet.profiles import get_profile


def _encoders() -> tuple[AppearanceEncoder, AppearanceEncoder]:
    torch.manual_seed(0)
    encoder = AppearanceEncoder(get_profile("tiny", num_classes=7, pretrained=False)).train()
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the masks are drawn differently for one batch and for several
    return encoder, copy.deepcopy(encoder)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_forward_equals_separate_forwards(groups: int) -> None:
    grouped, separate = _encoders()
    cfg = get_profile("tiny")
    x = torch.randn(3 * groups, 3, cfg.image_height, cfg.image_width)
    out = grouped_call(grouped, x, groups)
    parts = [separate(part) for part in x.chunk(groups)]
    for name, value in zip(out._fields, out, strict=True):
        expected = torch.cat([getattr(p, name) for p in parts])
        assert torch.allclose(value, expected, atol=1e-5, rtol=1e-5), name
    loss = lambda o: o.primary_logits.square().sum() + o.code.sum() + o.fine_embedding.sum()  # noqa: E731
    loss(out).backward()
    sum(loss(p) for p in parts).backward()
    for (name, a), b in zip(grouped.named_parameters(), separate.parameters(), strict=True):
        if b.grad is None or b.grad.abs().max() < 1e-3:  # e.g. biases before a BatchNorm: gradient 0
            continue
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max(), name  # float summation order
    for (name, a), b in zip(grouped.named_buffers(), separate.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name  # running stats in order; counts
    assert int(grouped.trunk.bn1.num_batches_tracked) == groups


def test_grouped_frozen_view_and_eval_mode_touch_no_running_statistics() -> None:
    grouped, separate = _encoders()
    cfg = get_profile("tiny")
    x = torch.randn(8, 3, cfg.image_height, cfg.image_width)
    before = {k: v.clone() for k, v in grouped.state_dict().items()}
    out = grouped_call(lambda images: frozen_call(grouped, images), x, 2, norms_of=grouped)
    expected = torch.cat([frozen_call(separate, part).code for part in x.chunk(2)])
    assert torch.allclose(out.code, expected, atol=1e-5)
    grouped.eval()
    assert torch.allclose(grouped_call(grouped, x, 2).code, separate.eval()(x).code, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in grouped.state_dict().items())
    assert grouped.trunk.bn1.statistics_groups == 1  # restored


def test_teacher_soft_labels_grouped_equal_separate() -> None:
    torch.manual_seed(0)
    cfg = get_profile("tiny", num_classes=5, pretrained=False)
    teacher = FrozenTeacher(ReidBaseline(cfg))
    x = torch.randn(8, 3, cfg.image_height, cfg.image_width)
    grouped = teacher.soft_labels(x, batches=2)
    separate = torch.cat([teacher.soft_labels(part) for part in x.chunk(2)])
    assert torch.allclose(grouped, separate, atol=1e-6)


def test_plain_batchnorm_falls_back_to_separate_forwards() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    x = torch.randn(6, 3, 8, 8)
    reference = copy.deepcopy(plain)
    out = grouped_call(plain, x, 3)
    assert torch.allclose(out, torch.cat([reference(p) for p in x.chunk(3)]), atol=1e-6)
    with pytest.raises(ValueError, match="plain BatchNorm2d"), statistics_groups(plain, 3):
        pass


def test_batch_must_split_into_equal_groups() -> None:
    norm = GroupedBatchNorm2d(4).train()
    with pytest.raises(ValueError, match="not 3 equal groups"), statistics_groups(norm, 3):
        norm(torch.randn(4, 4, 2, 2))
