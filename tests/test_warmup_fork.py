"""The shared warm-up: variants forked from one warm-up checkpoint equal their unforked runs, bit for bit.

Before `schedule.warmup_start` the paper's ablations compute the same steps (their switches act only
on losses whose weight is still 0), so the pipeline trains that prefix once per seed and starts every
variant from its checkpoint. These tests prove the fork exact on CPU in deterministic mode, and that
a warm-up of other settings, or one past the warm-up, is refused with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dgnet.training.checkpoint import CheckpointError, checkpoint_path, list_checkpoints
from dgnet.training.schedule import ScheduleConfig, loss_weights_at
from dgnet.training.trainer import DGNetTrainConfig, train_dgnet, warmup_fingerprint
from tests.test_trainer import TINY, assert_same, final_state, frame, teacher_path  # noqa: F401

# Warm-up from iteration 2 of 5: the primary, fine-grained, code and cycle losses act from 3 on.
SCHEDULE = ScheduleConfig(warmup_start=2, warmup_rate=0.5)
VARIANTS = {"dgnet": {}, "no_primary": {"primary_learning": False},
            "no_generated_reid": {"primary_learning": False, "fine_mining": False}}


def cfg(variant: str = "dgnet", **overrides: Any) -> DGNetTrainConfig:
    base = {"iterations": 5, "batch_size": 2, "log_every": 1, "eval_every": 0, "image_every": 3,
            "checkpoint_every": 0, "num_workers": 0, "device": "cpu", "deterministic": True,
            "init_appearance_from_teacher": True,
            "schedule": dataclasses.replace(SCHEDULE, **VARIANTS[variant])}
    return DGNetTrainConfig(**{**base, **overrides})


def warmup(tmp_path, frame, teacher_path, **overrides: Any):  # noqa: F811
    """The prefix, trained as the pipeline's warm-up stage does: the full model stopped at warmup_start."""
    train_dgnet(frame, TINY, cfg(iterations=SCHEDULE.warmup_start, **overrides), [teacher_path],
                tmp_path / "warmup")
    return checkpoint_path(tmp_path / "warmup" / "checkpoints", SCHEDULE.warmup_start)


def test_the_variants_differ_only_after_the_warmup():
    weights = {name: [loss_weights_at(i, cfg(name).schedule) for i in range(5)] for name in VARIANTS}
    assert all(w[: SCHEDULE.warmup_start + 1] == weights["dgnet"][: SCHEDULE.warmup_start + 1]
               for w in weights.values())
    assert weights["no_primary"][4].primary == 0 < weights["dgnet"][4].primary
    assert len({str(warmup_fingerprint(cfg(name))) for name in VARIANTS}) == 1
    assert warmup_fingerprint(cfg(lr_generator=0.5)) != warmup_fingerprint(cfg())


# The full model in the slow tier (~8 s): the quick tier keeps the variant that differs most from the warm-up.
@pytest.mark.parametrize("variant", [pytest.param("dgnet", marks=pytest.mark.slow), "no_generated_reid"])
def test_a_forked_variant_equals_its_unforked_run_bit_for_bit(tmp_path, frame, teacher_path, variant):  # noqa: F811
    fork = warmup(tmp_path, frame, teacher_path)
    straight = train_dgnet(frame, TINY, cfg(variant), [teacher_path], tmp_path / "straight")
    # Other reporting settings change nothing a step computes: the fork still applies.
    forked = train_dgnet(frame, TINY, cfg(variant, eval_every=1, image_every=1), [teacher_path],
                         tmp_path / "forked", fork_from=fork)
    # Every network, optimiser and scaler after iteration 5, and the evaluation.
    assert_same(final_state(tmp_path / "straight"), final_state(tmp_path / "forked"))
    assert straight.metrics == forked.metrics
    assert fork.is_file()  # the warm-up is read, never moved: the next variant forks from it too


def test_a_forked_run_resumes_its_own_checkpoint_not_the_warmup(tmp_path, frame, teacher_path):  # noqa: F811
    fork = warmup(tmp_path, frame, teacher_path)
    train_dgnet(frame, TINY, cfg("no_primary", checkpoint_every=1), [teacher_path], tmp_path / "run",
                fork_from=fork)
    kept = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert kept == ["iter_00000004.pt", "iter_00000005.pt"]
    result = train_dgnet(frame, TINY, cfg("no_primary", checkpoint_every=1), [teacher_path], tmp_path / "run",
                         fork_from=fork)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == kept  # nothing retrained
    assert result.iterations == 5


def test_a_warmup_of_other_settings_is_refused_naming_them(tmp_path, frame, teacher_path):  # noqa: F811
    fork = warmup(tmp_path, frame, teacher_path)
    with pytest.raises(CheckpointError, match=r"other settings \(warmup: lr_generator differ\)"):
        train_dgnet(frame, TINY, cfg("no_primary", lr_generator=0.01), [teacher_path], tmp_path / "run",
                    fork_from=fork)
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def test_a_checkpoint_past_the_warmup_is_refused(tmp_path, frame, teacher_path):  # noqa: F811
    train_dgnet(frame, TINY, cfg(iterations=3), [teacher_path], tmp_path / "long")
    with pytest.raises(CheckpointError, match="past the warm-up"):
        train_dgnet(frame, TINY, cfg("no_primary"), [teacher_path], tmp_path / "run",
                    fork_from=checkpoint_path(tmp_path / "long" / "checkpoints", 3))


@pytest.mark.slow  # ~8 s: two forked runs
def test_the_equality_is_not_trivial_the_variants_do_differ_after_the_warmup(tmp_path, frame, teacher_path):  # noqa: F811
    fork = warmup(tmp_path, frame, teacher_path)
    for variant in ("dgnet", "no_generated_reid"):
        train_dgnet(frame, TINY, cfg(variant), [teacher_path], tmp_path / variant, fork_from=fork)
    with pytest.raises(AssertionError):
        assert_same(final_state(tmp_path / "dgnet"), final_state(tmp_path / "no_generated_reid"))
