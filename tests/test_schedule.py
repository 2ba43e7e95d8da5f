"""Loss-weight ramps and LR steps: values at the paper's landmarks, and purity."""

from __future__ import annotations

import dataclasses

import pytest

from dgnet.errors import ConfigError
from dgnet.training.schedule import LossWeights, ScheduleConfig, learning_rate_at, loss_weights_at

# iteration -> (code weight, cycle weight, lambda_prim): 0.0005 per iteration from 30k, capped.
RAMPS = {
    0: (0.0, 0.0, 0.0),
    29_999: (0.0, 0.0, 0.0),
    30_000: (0.0, 0.0, 0.0),
    31_000: (0.5, 0.5, 0.5),
    32_000: (1.0, 1.0, 1.0),
    34_000: (1.0, 2.0, 2.0),
    100_000: (1.0, 2.0, 2.0),
}


@pytest.mark.parametrize("iteration", sorted(RAMPS))
def test_loss_weights_at_landmarks(iteration: int) -> None:
    code, cycle, primary = RAMPS[iteration]
    w = loss_weights_at(iteration)
    assert w.code_appearance == pytest.approx(code) and w.code_structure == pytest.approx(code)
    assert w.cycle == pytest.approx(cycle)
    assert w.primary == pytest.approx(primary)
    assert w.fine == pytest.approx(0.2 * primary)
    # constant weights
    assert (w.recon_image, w.recon_image_positive, w.id, w.id_positive, w.id_generated, w.adversarial) == (
        5.0, 5.0, 1.0, 1.0, 0.5, 1.0,
    )  # fmt: skip


def test_ramps_are_monotone_and_capped() -> None:
    previous = loss_weights_at(0)
    for iteration in range(29_000, 36_000, 250):
        w = loss_weights_at(iteration)
        assert w.cycle >= previous.cycle and w.primary >= previous.primary
        assert w.code_appearance <= 1.0 and w.cycle <= 2.0 and w.primary <= 2.0
        previous = w


def test_scaled_down_schedule() -> None:
    cfg = ScheduleConfig(warmup_start=300, warmup_rate=0.05, primary_max=1.0, fine_alpha=0.5)
    w = loss_weights_at(310, cfg)
    assert w.code_appearance == pytest.approx(0.5)
    assert w.primary == pytest.approx(0.5) and w.fine == pytest.approx(0.25)
    assert loss_weights_at(1_000, cfg).primary == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="warmup_rate"):
        ScheduleConfig(warmup_rate=0.0)
    with pytest.raises(ConfigError, match="recon_image"):
        ScheduleConfig(recon_image=-1.0)
    with pytest.raises(ConfigError, match="lr_milestones"):
        ScheduleConfig(lr_milestones=(90_000, 60_000))


def test_learning_rate_steps() -> None:
    assert learning_rate_at(0, 0.002) == pytest.approx(0.002)
    assert learning_rate_at(59_999, 0.002) == pytest.approx(0.002)
    assert learning_rate_at(60_000, 0.002) == pytest.approx(0.0002)
    assert learning_rate_at(89_999, 0.002) == pytest.approx(0.0002)
    assert learning_rate_at(90_000, 0.002) == pytest.approx(0.00002)
    assert learning_rate_at(100_000, 1e-4) == pytest.approx(1e-6)
    assert learning_rate_at(150, 1.0, milestones=(100, 200), gamma=0.5) == pytest.approx(0.5)


def test_schedule_is_pure() -> None:
    # A resumed run asks for iteration k cold: it must get what a run that went through 0..k-1 gets.
    cold = loss_weights_at(31_234)
    for iteration in range(0, 31_234, 997):
        loss_weights_at(iteration)
    assert loss_weights_at(31_234) == cold
    assert isinstance(cold, LossWeights)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cold.cycle = 0.0  # type: ignore[misc]
    assert learning_rate_at(70_000, 0.1) == pytest.approx(0.01)  # after the 60k step, before 90k


@pytest.mark.parametrize("primary, fine", [(True, True), (False, True), (True, False), (False, False)])
def test_ablation_switches_silence_only_their_losses(primary: bool, fine: bool) -> None:
    from dgnet.training.trainer import DGNetTrainConfig

    cfg = ScheduleConfig(primary_learning=primary, fine_mining=fine)
    full, ablated = loss_weights_at(40_000), loss_weights_at(40_000, cfg)
    assert ablated.primary == (2.0 if primary else 0.0)
    assert ablated.fine == pytest.approx(0.4 if fine else 0.0)  # alpha x lambda_prim, not x 0
    untouched = {f.name for f in dataclasses.fields(LossWeights)} - {"primary", "fine"}
    assert all(getattr(ablated, name) == getattr(full, name) for name in untouched)
    assert DGNetTrainConfig(schedule=cfg).needs_teacher() == primary  # no teacher without primary


def test_ablation_switches_must_be_booleans() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.fine_mining: must be true or false"):
        ScheduleConfig(fine_mining="no")


def test_id_generated_ramp_is_off_by_default_and_linear_when_set() -> None:
    assert loss_weights_at(0).id_generated == 0.5  # the paper: full weight from the start
    cfg = ScheduleConfig(id_generated_ramp=30_000)
    weights = [loss_weights_at(i, cfg).id_generated for i in (0, 15_000, 30_000, 90_000)]
    assert weights == [0.0, 0.25, 0.5, 0.5]
    assert cfg.scaled_to(600).id_generated_ramp == 180  # the same fraction of a shorter run
    with pytest.raises(ConfigError, match="id_generated_ramp"):
        ScheduleConfig(id_generated_ramp=-1)
    with pytest.raises(ConfigError, match="id_generated_ramp"):
        ScheduleConfig(id_generated_ramp=1.5)
