"""Gradient routing of the DG-Net objective: which networks each loss trains, and a full step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dgnet.models.dgnet import DGNet
from dgnet.models.teacher import FrozenTeacher, ReidBaseline
from dgnet.profiles import get_profile
from dgnet.training.objective import (
    DGNetBatch,
    NonFiniteLossError,
    ObjectiveConfig,
    check_finite,
    discriminator_objective,
    frozen_call,
    generate_cross,
    generator_objective,
)
from dgnet.training.schedule import LossWeights, loss_weights_at

N = 2
CLASSES = 6
ALL_GROUPS = {
    "structure_encoder",
    "decoder",
    "mapping",
    "trunk",
    "primary_head",
    "fine_head",
    "discriminator",
}
GENERATOR = {"structure_encoder", "decoder", "mapping"}


def groups_of(model: DGNet) -> dict[str, list[torch.nn.Parameter]]:
    encoder = model.appearance_encoder
    return {
        "structure_encoder": list(model.structure_encoder.parameters()),
        "decoder": model.decoder.body_parameters(),
        "mapping": list(model.decoder.mapping.parameters()),
        "trunk": list(encoder.trunk.parameters()),
        "primary_head": list(encoder.primary_head.parameters()),
        "fine_head": list(encoder.fine_head.parameters()),
        "discriminator": list(model.discriminator.parameters()),
    }


def touched(model: DGNet) -> set[str]:
    """Parameter groups with a non-zero gradient somewhere."""
    return {
        name
        for name, params in groups_of(model).items()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    }


def only(**weights: float) -> LossWeights:
    """Loss weights with every term 0 except the given ones."""
    zero = {field.name: 0.0 for field in dataclasses.fields(LossWeights)}
    return LossWeights(**{**zero, **weights})


def make_batch(cfg, n: int = N, seed: int = 0) -> DGNetBatch:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, cfg.image_height, cfg.image_width)

    def images() -> torch.Tensor:
        return torch.randn(shape, generator=g)

    label_a = torch.arange(n) % cfg.num_classes
    label_b = (label_a + 1) % cfg.num_classes  # different people in a and b
    return DGNetBatch(images(), label_a, images(), label_b, images(), images())


@pytest.fixture
def setup():
    torch.manual_seed(0)
    cfg = get_profile("tiny", num_classes=CLASSES)
    model = DGNet(cfg).train()
    teacher = FrozenTeacher(ReidBaseline(cfg))
    return cfg, model, teacher, make_batch(cfg)


def backward_touched(model, teacher, batch, weights, cfg=None, reencode_structure=False) -> set[str]:
    model.zero_grad(set_to_none=True)
    total, _ = generator_objective(model, teacher, batch, weights, cfg, reencode_structure)
    total.backward()
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters())
    return touched(model)


# --- per-loss routing -------------------------------------------------------------------------


def test_id_on_generated_trains_generator_not_appearance_encoder(setup) -> None:
    _, model, teacher, batch = setup
    assert backward_touched(model, teacher, batch, only(id_generated=0.5)) == GENERATOR


def test_reconstruction_and_adversarial_train_generator_only(setup) -> None:
    _, model, teacher, batch = setup
    # The decoder's appearance input is detached: generation losses never reach E_a (published behaviour).
    for weights in (only(recon_image=5.0), only(recon_image_positive=5.0), only(adversarial=1.0),
                    only(cycle=2.0), only(code_structure=1.0)):  # fmt: skip
        assert backward_touched(model, teacher, batch, weights) == GENERATOR, weights


def test_id_on_real_trains_appearance_encoder_only(setup) -> None:
    _, model, teacher, batch = setup
    assert backward_touched(model, teacher, batch, only(id=1.0, id_positive=1.0)) == {"trunk", "primary_head"}


def test_frozen_view_keeps_bn_running_stats(setup) -> None:
    model = setup[1]
    encoder = model.appearance_encoder
    before = {name: b.clone() for name, b in encoder.named_buffers()}
    x = torch.randn(4, 3, 64, 32, requires_grad=True)
    output = frozen_call(encoder, x)
    output.primary_logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the gradient reaches the input ...
    assert all(p.grad is None for p in encoder.parameters())  # ... and not the weights
    for name, buffer in encoder.named_buffers():
        assert torch.equal(buffer, before[name]), name
    encoder(x)  # sanity: a live forward in train mode does move them
    assert not torch.equal(encoder.trunk.bn1.running_mean, before["trunk.bn1.running_mean"])


def test_objective_updates_bn_stats_only_on_live_forwards(setup) -> None:
    _, model, teacher, batch = setup
    counter = model.appearance_encoder.trunk.bn1.num_batches_tracked
    start = int(counter)
    generator_objective(model, teacher, batch, loss_weights_at(0))  # a, b, pos_a, pos_b, one by one
    assert int(counter) == start + 4
    generator_objective(model, teacher, batch, loss_weights_at(40_000))  # + x_ab, x_ba (the student)
    assert int(counter) == start + 10


def test_primary_kl_trains_appearance_encoder_not_generator(setup) -> None:
    _, model, teacher, batch = setup
    assert backward_touched(model, teacher, batch, only(primary=2.0)) == {"trunk", "primary_head"}


def test_fine_grained_trains_appearance_encoder_not_generator(setup) -> None:
    _, model, _, batch = setup
    assert backward_touched(model, None, batch, only(fine=0.4)) == {"trunk", "fine_head"}


def test_fine_grained_label_is_the_structure_providers(setup) -> None:
    _, model, teacher, batch = setup
    model.eval()  # deterministic (no dropout, running BN stats) so the loss can be recomputed
    _, logs = generator_objective(model, teacher, batch, only(fine=0.4, primary=2.0))
    with torch.no_grad():
        encoder = model.appearance_encoder
        s_a, s_b = model.structure_encoder(batch.a), model.structure_encoder(batch.b)
        a_a, a_b = encoder(batch.a).code, encoder(batch.b).code
        x_ab, x_ba = model.decode(s_b, a_a), model.decode(s_a, a_b)  # x_ij = G(s_j, a_i)
        fine_ab, fine_ba = encoder(x_ab).fine_logits, encoder(x_ba).fine_logits
        by_structure = F.cross_entropy(fine_ab, batch.label_b) + F.cross_entropy(fine_ba, batch.label_a)
        by_appearance = F.cross_entropy(fine_ab, batch.label_a) + F.cross_entropy(fine_ba, batch.label_b)
    assert logs["fine_generated"] == pytest.approx(by_structure.item(), rel=1e-4)
    assert logs["fine_generated"] != pytest.approx(by_appearance.item(), rel=1e-4)


def test_appearance_code_loss_has_no_gradient_by_default(setup) -> None:
    _, model, teacher, batch = setup
    model.zero_grad(set_to_none=True)
    total, logs = generator_objective(model, teacher, batch, only(code_appearance=1.0))
    assert logs["code_appearance"] > 0  # logged ...
    if total.requires_grad:
        total.backward()
    assert touched(model) == set()  # ... but trains nothing (published behaviour)


def test_appearance_code_loss_option_trains_generator(setup) -> None:
    _, model, teacher, batch = setup
    option = ObjectiveConfig(appearance_code_loss_grad=True)
    assert backward_touched(model, teacher, batch, only(code_appearance=1.0), option) == GENERATOR


def test_discriminator_objective_trains_discriminator_only(setup) -> None:
    _, model, _, batch = setup
    fakes = generate_cross(model, batch.a, batch.b)
    assert not fakes.requires_grad
    model.zero_grad(set_to_none=True)
    loss, logs = discriminator_objective(model, torch.cat([batch.a, batch.b]), fakes)
    loss.backward()
    assert touched(model) == {"discriminator"}
    assert logs["d_r1"] >= 0 and logs["d_total"] == pytest.approx(
        logs["d_adversarial"] + logs["d_r1"], rel=1e-5
    )


def test_generator_objective_gives_discriminator_no_gradient(setup) -> None:
    _, model, teacher, batch = setup
    groups = backward_touched(model, teacher, batch, loss_weights_at(40_000))
    assert groups == ALL_GROUPS - {"discriminator"}
    assert all(p.grad is None for p in model.discriminator.parameters())


def test_erased_images_feed_the_id_losses(setup) -> None:
    _, model, teacher, batch = setup
    model.eval()
    erased = [t.clone() for t in (batch.a, batch.b, batch.pos_a, batch.pos_b)]
    for t in erased:
        t[:, :, 10:30, 5:20] = 0.0
    with_erasing = dataclasses.replace(
        batch, a_erased=erased[0], b_erased=erased[1], pos_a_erased=erased[2], pos_b_erased=erased[3]
    )
    _, logs = generator_objective(model, teacher, with_erasing, only(id=1.0, recon_image=5.0))
    _, clean_logs = generator_objective(model, teacher, batch, only(id=1.0, recon_image=5.0))
    with torch.no_grad():
        logits = (
            model.appearance_encoder(erased[0]).primary_logits,
            model.appearance_encoder(erased[1]).primary_logits,
        )
        expected = F.cross_entropy(logits[0], batch.label_a) + F.cross_entropy(logits[1], batch.label_b)
    assert logs["id"] == pytest.approx(expected.item(), rel=1e-4)
    assert logs["recon_image"] == pytest.approx(
        clean_logs["recon_image"], rel=1e-5
    )  # codes from clean images
    with pytest.raises(ValueError, match="erased"):
        dataclasses.replace(batch, a_erased=erased[0])


def test_check_finite_names_loss_and_iteration() -> None:
    check_finite({"recon_image": 1.0, "total": torch.tensor(2.0)}, 5)
    with pytest.raises(NonFiniteLossError, match=r"'cycle'.*iteration 1234"):
        check_finite({"recon_image": 1.0, "cycle": float("nan")}, 1234)
    with pytest.raises(NonFiniteLossError, match="'total'"):
        check_finite({"total": torch.tensor(float("inf"))}, 1)


def test_primary_loss_needs_a_teacher(setup) -> None:
    from dgnet.errors import ConfigError

    _, model, _, batch = setup
    with pytest.raises(ConfigError, match="teacher"):
        generator_objective(model, None, batch, only(primary=1.0))


# --- full steps -------------------------------------------------------------------------------


def run_step(model: DGNet, teacher: FrozenTeacher, batch: DGNetBatch, iteration: int, optimizers) -> dict:
    """One DG-Net iteration as docs/method.md section 4: D step on detached fakes, then the joint step."""
    opt_g, opt_d, opt_e = optimizers
    fakes = generate_cross(model, batch.a, batch.b)
    d_loss, d_logs = discriminator_objective(model, torch.cat([batch.a, batch.b]), fakes)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    g_loss, g_logs = generator_objective(model, teacher, batch, loss_weights_at(iteration))
    opt_g.zero_grad(set_to_none=True)
    opt_e.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    opt_e.step()
    logs = {**d_logs, **g_logs}
    check_finite(logs, iteration)
    return logs


def make_optimizers(model: DGNet):
    groups = model.parameter_groups()
    adam = {"lr": 1e-4, "betas": (0.0, 0.999), "weight_decay": 5e-4}
    return (
        torch.optim.Adam(groups.generator, **adam),
        torch.optim.Adam(groups.discriminator, **adam),
        torch.optim.SGD(
            [{"params": groups.appearance_trunk}, {"params": groups.id_heads, "lr": 0.02}],
            lr=0.002, momentum=0.9, nesterov=True, weight_decay=5e-4,
        ),
    )  # fmt: skip


def test_full_step_tiny(setup) -> None:
    _, model, teacher, batch = setup
    optimizers = make_optimizers(model)
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    for iteration in (0, 40_000):
        logs = run_step(model, teacher, batch, iteration, optimizers)
    assert {
        "d_total",
        "recon_image",
        "id_generated",
        "cycle",
        "primary_kl",
        "fine_generated",
        "total",
    } <= set(logs)
    assert any(not torch.equal(p, q) for p, q in zip(model.discriminator.parameters(), d_before, strict=True))
    # The joint step leaves D as the D step left it (D has no gradient there).
    optimizers[1].zero_grad(set_to_none=True)
    d_after_d_step = [p.detach().clone() for p in model.discriminator.parameters()]
    total, _ = generator_objective(model, teacher, batch, loss_weights_at(40_000))
    total.backward()
    optimizers[0].step()
    optimizers[1].step()
    optimizers[2].step()
    assert all(
        torch.equal(p, q) for p, q in zip(model.discriminator.parameters(), d_after_d_step, strict=True)
    )
    assert not teacher.training



def test_discriminator_step_inside_the_generator_forward_equals_a_separate_one(setup) -> None:
    """The trainer's order (D step on the G forward's own x_ab, x_ba, via `on_cross`) gives the same
    iteration as the published one (fakes generated on their own, D step, then the G step)."""
    import copy

    _, model, teacher, batch = setup
    separate_model = copy.deepcopy(model)
    separate_opts, inside_opts = make_optimizers(separate_model), make_optimizers(model)
    weights = loss_weights_at(40_000)

    torch.manual_seed(5)
    separate_logs = run_step(separate_model, teacher, batch, 40_000, separate_opts)

    def d_step(fakes: torch.Tensor) -> None:
        assert not fakes.requires_grad
        assert torch.allclose(fakes, generate_cross(model, batch.a, batch.b), atol=1e-5)
        d_loss, d_logs = discriminator_objective(model, torch.cat([batch.a, batch.b]), fakes)
        inside_opts[1].zero_grad(set_to_none=True)
        d_loss.backward()
        inside_opts[1].step()
        seen.update(d_logs)

    seen: dict[str, float] = {}
    torch.manual_seed(5)
    g_loss, g_logs = generator_objective(model, teacher, batch, weights, on_cross=d_step)
    for opt in (inside_opts[0], inside_opts[2]):
        opt.zero_grad(set_to_none=True)
    g_loss.backward()
    inside_opts[0].step()
    inside_opts[2].step()
    for name, value in {**seen, **g_logs}.items():
        assert value == pytest.approx(separate_logs[name], rel=1e-4, abs=1e-6), name
    for p, q in zip(model.parameters(), separate_model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), "the same weights after the iteration"
