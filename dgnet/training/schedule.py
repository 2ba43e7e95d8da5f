"""Loss-weight ramps and learning-rate steps: pure functions of the iteration.

No state is kept anywhere, so a run resumed at iteration k gets exactly the weights and learning
rates an uninterrupted run has at k (the published code restarted its ramps from zero on resume).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from dgnet.checks import check_fields, check_int, check_number
from dgnet.errors import ConfigError


@dataclass(frozen=True)
class ScheduleConfig:
    """The loss weights of docs/method.md sections 3-4; defaults are the paper's (Market-1501, 100k its).

    Ramped weights are 0 until `warmup_start`, then grow by `warmup_rate` per iteration up to their
    maximum: with the defaults the code weights reach 1 at 32k, cycle and lambda_prim reach 2 at 34k.
    """

    recon_image: float = 5.0  # |G(s_i, a_i) - x_i|
    recon_image_positive: float = 5.0  # |G(s_i, a_t) - x_i|, x_t another image of i
    id: float = 1.0  # primary head CE on real images
    id_positive: float = 1.0  # primary head CE on the positives
    id_generated: float = 0.5  # L_id^c: x_ij classified as i through a frozen E_a
    adversarial: float = 1.0
    code_max: float = 1.0  # appearance and structure code reconstruction, ramped
    cycle_max: float = 2.0  # cycle reconstruction, ramped
    primary_max: float = 2.0  # lambda_prim: teacher KL on generated images, ramped
    fine_alpha: float = 0.2  # fine-grained weight = fine_alpha * lambda_prim
    # The paper's ablation switches: re-ID learning from generated images by the teacher's soft
    # labels (primary) and by the structure donor's label (fine-grained mining, with its real-image
    # loss). Off keeps the generator training exactly as it is.
    primary_learning: bool = True
    fine_mining: bool = True
    warmup_start: int = 30_000
    warmup_rate: float = 0.0005
    # Not in the paper (0: L_id^c at full weight from the first iteration). N > 0 ramps it linearly
    # from 0 over the first N iterations, so that the decoder learns to reconstruct before it is
    # asked to carry identity into the swaps (docs/generator_diagnosis.md: L_id^c is what costs
    # reconstruction in a short run).
    id_generated_ramp: int = 0
    lr_milestones: tuple[int, ...] = (60_000, 90_000)
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, "schedule")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "lr_milestones":
                check_milestones(value, "schedule.lr_milestones")
            elif field.name == "id_generated_ramp":
                check_int(value, "schedule.id_generated_ramp")
            elif field.type != "bool":
                check_number(value, f"schedule.{field.name}", low_open=field.name == "warmup_rate")

    def scaled_to(self, iterations: int, reference: int = 100_000) -> ScheduleConfig:
        """This schedule for a run of `iterations` instead of `reference` iterations.

        Iteration counts (warm-up start, LR milestones) are multiplied by iterations / reference
        and the ramp rate divided by it, so every event happens at the same fraction of the run:
        the paper's warm-up from 30k of 100k (code weights full at 32k, cycle and lambda_prim at 34k)
        and LR steps at 60k and 90k become 240 (256, 272), 480 and 720 in an 800-iteration run.
        The L_id^c ramp's length scales the same way. Loss-weight maxima are unchanged.
        """
        for name, value in (("iterations", iterations), ("reference", reference)):
            check_int(value, f"schedule.scaled_to: {name}", 1)
        factor = iterations / reference
        return dataclasses.replace(
            self,
            warmup_start=round(self.warmup_start * factor),
            warmup_rate=self.warmup_rate / factor,
            id_generated_ramp=round(self.id_generated_ramp * factor),
            lr_milestones=tuple(round(m * factor) for m in self.lr_milestones),
        )


@dataclass(frozen=True)
class LossWeights:
    """The weight of every generator/E_a loss term at one iteration."""

    recon_image: float
    recon_image_positive: float
    id: float
    id_positive: float
    id_generated: float
    adversarial: float
    code_appearance: float
    code_structure: float
    cycle: float
    primary: float  # lambda_prim
    fine: float  # fine_alpha * lambda_prim, on generated and on real images


def loss_weights_at(iteration: int, cfg: ScheduleConfig | None = None) -> LossWeights:
    """The loss weights at `iteration` (a pure function: same input, same output)."""
    if iteration < 0:
        raise ConfigError(f"iteration: must be >= 0, got {iteration}")
    cfg = cfg if cfg is not None else ScheduleConfig()

    def ramped(maximum: float) -> float:  # 0 until warmup_start, then warmup_rate per iteration, capped
        return min(maximum, cfg.warmup_rate * max(0, iteration - cfg.warmup_start))

    code = ramped(cfg.code_max)
    lambda_prim = ramped(cfg.primary_max)
    return LossWeights(
        recon_image=cfg.recon_image,
        recon_image_positive=cfg.recon_image_positive,
        id=cfg.id,
        id_positive=cfg.id_positive,
        id_generated=cfg.id_generated * (min(1.0, iteration / cfg.id_generated_ramp)
                                         if cfg.id_generated_ramp else 1.0),
        adversarial=cfg.adversarial,
        code_appearance=code,
        code_structure=code,
        cycle=ramped(cfg.cycle_max),
        primary=lambda_prim if cfg.primary_learning else 0.0,
        fine=cfg.fine_alpha * lambda_prim if cfg.fine_mining else 0.0,
    )


def learning_rate_at(
    iteration: int, base_lr: float, milestones: Sequence[int] = (60_000, 90_000), gamma: float = 0.1
) -> float:
    """base_lr * gamma ** (number of milestones <= iteration): x0.1 from 60k, x0.01 from 90k."""
    check_milestones(tuple(milestones), "milestones")
    return base_lr * gamma ** sum(1 for milestone in milestones if iteration >= milestone)


def check_milestones(milestones: tuple[int, ...], name: str) -> None:
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones):
        raise ConfigError(f"{name}: must be non-negative integers, got {milestones!r}")
    if list(milestones) != sorted(milestones):
        raise ConfigError(f"{name}: must be increasing, got {milestones!r}")
