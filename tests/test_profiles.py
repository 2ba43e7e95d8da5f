"""The whole-configuration profiles, their resolution with params, and `dgnet config show`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dgnet.errors import ConfigError
from dgnet.profiles import (
    PROFILES,
    _plain,
    apply_assignments,
    model_config,
    resolve_params,
    resolved_config,
    run_config,
)

REPO = Path(__file__).resolve().parents[1]


def show(*args: str, cwd: Path = REPO) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dgnet.cli", "config", "show", "--format", "json", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_paper_profile_is_docs_method_sections_2_to_4_and_8():
    """Every number of docs/method.md sections 2-4 and 8 that is a setting, as `config show` prints it."""
    paper = show("--profile", "paper")
    model, teacher, train = paper["model"], paper["teacher"], paper["train"]
    # Section 2: the networks.
    assert (model["image_height"], model["image_width"], model["backbone"]) == (256, 128, "resnet50")
    assert model["pretrained"] and model["require_pretrained"] and model["backbone_width"] == 64
    assert (model["appearance_rows"], model["embedding_dim"]) == (4, 512)
    assert (model["primary_dropout"], model["fine_dropout"]) == (0.5, 0.75)
    assert model["structure_widths"] == [16, 32, 32, 64] and model["structure_residual_blocks"] == 4
    assert (model["structure_channels"], model["structure_downsamplings"]) == (128, 2)  # a 64x32 code
    assert model["decoder_residual_blocks"] == 4 and model["decoder_widths"] == [64, 32]
    assert model["mlp_hidden"] == [512, 512]
    assert (model["discriminator_scales"], model["discriminator_widths"]) == (3, [32, 64])
    assert (model["discriminator_residual_blocks"], model["discriminator_init_std"]) == (4, 0.02)
    # Section 8: ASPP with 32 channels a branch.
    assert model["aspp_width"] == 32
    # Section 3: the losses' weights.
    schedule = train["schedule"]
    assert (schedule["recon_image"], schedule["recon_image_positive"]) == (5.0, 5.0)
    assert (schedule["id"], schedule["id_positive"], schedule["id_generated"]) == (1.0, 1.0, 0.5)
    assert (schedule["adversarial"], schedule["code_max"], schedule["cycle_max"]) == (1.0, 1.0, 2.0)
    assert (schedule["primary_max"], schedule["fine_alpha"]) == (2.0, 0.2)
    assert schedule["primary_learning"] and schedule["fine_mining"]
    assert schedule["id_generated_ramp"] == 0  # L_id^c at full weight from the start
    assert train["objective"]["r1_weight"] == 0.01
    # Section 4: optimisation and schedule, after scaling (the paper's length: nothing moves).
    assert (train["iterations"], train["batch_size"]) == (100_000, 8)
    assert (train["lr_generator"], train["lr_discriminator"]) == (1e-4, 1e-4)
    assert train["adam_betas"] == [0.0, 0.999]
    assert (train["lr_appearance"], train["head_lr_mult"], train["momentum"]) == (0.002, 10.0, 0.9)
    assert train["weight_decay"] == 5e-4
    assert (schedule["warmup_start"], schedule["warmup_rate"]) == (30_000, 0.0005)
    assert (schedule["lr_milestones"], schedule["lr_gamma"]) == ([60_000, 90_000], 0.1)
    assert train["augmentation"] == {"flip": True, "padding": 10, "erasing_p": 0.5}
    assert not train["init_appearance_from_teacher"]  # E_a from ImageNet
    # Section 8: the published details that are settings.
    assert train["sampling"] == "image"
    assert train["objective"]["structure_reencode_p"] == 0.5
    assert train["objective"]["teacher_batch_statistics"] and train["objective"]["teacher_flip_average"]
    assert not train["objective"]["appearance_code_loss_grad"]  # published: no gradient there
    # The teacher: a 24k-iteration ResNet-50 baseline; on a GPU in bf16.
    assert (teacher["iterations"], teacher["batch_size"], teacher["lr"]) == (24_000, 32, 0.005)
    assert (teacher["lr_milestones"], train["device"], train["amp"]) == ([16_000], "cuda", "bf16")


def test_cpu_profile_departs_from_the_paper_only_where_docs_say():
    paper, cpu = show("--profile", "paper")["train"], show("--profile", "cpu")["train"]
    differ = sorted(k for k in paper if paper[k] != cpu[k])
    assert differ == ["adam_betas", "amp", "checkpoint_every", "device", "eval_every", "image_every",
                      "init_appearance_from_teacher", "iterations", "log_every", "lr_discriminator",
                      "lr_generator", "num_workers", "schedule"]
    # The schedule: the paper's compressed to 600 iterations, plus the L_id^c ramp over the first 30%.
    assert (cpu["schedule"]["warmup_start"], cpu["schedule"]["lr_milestones"]) == (180, [360, 540])
    assert cpu["schedule"]["id_generated_ramp"] == 180 and cpu["schedule"]["warmup_rate"] == pytest.approx(
        0.0005 * 100_000 / 600)


def test_repository_params_hold_only_what_differs_from_the_profile():
    """params.yaml's training sections carry the pipeline's keys (seeds, teachers), nothing the
    profile sets, so that `-S profile=paper` trains the paper."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["profile"] == "cpu" and params["model"] == {}
    assert set(params["teacher"]) == {"seeds"} and set(params["train"]) == {"seeds", "teachers"}
    assert len(params["train"]["seeds"]) >= 2 and len(params["teacher"]["seeds"]) >= 2
    resolved = resolve_params(params)
    assert run_config(resolved, "train").needs_teacher()
    paper = resolved_config(resolve_params(params, profile="paper"))
    assert paper["train"]["iterations"] == 100_000 and paper["model"]["backbone"] == "resnet50"


def test_params_and_set_override_the_profile_and_the_schedule_follows_the_length():
    shown = show("--profile", "cpu", "--set", "train.iterations=300", "--set", "model.backbone=resnet34",
                 "--set", "train.objective.r1_weight=0.1")
    assert shown["train"]["iterations"] == 300 and shown["train"]["schedule"]["warmup_start"] == 90
    assert shown["model"]["backbone"] == "resnet34" and shown["train"]["objective"]["r1_weight"] == 0.1


def test_config_show_reads_the_workspace_params(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: paper\ntrain:\n  seeds: [0, 1, 2]\n  iterations: 1500\n")
    shown = show(cwd=tmp_path)
    assert shown["profile"] == "paper" and shown["train"]["seeds"] == [0, 1, 2]
    assert shown["train"]["schedule"]["warmup_start"] == 450  # 30k of 100k -> 450 of 1,500


@pytest.mark.parametrize(("params", "message"), [
    ({"profile": "gpu"}, r"profile: 'gpu' is not one of \['cpu', 'paper', 'tiny'\]"),
    ({"model": {"profile": "cpu", "overrides": {}}}, r"model\.profile / model\.overrides: .*top-level"),
    ({"train": [1]}, r"params `train:` must be a mapping"),
])
def test_bad_params_name_the_key_and_the_rule(params, message):
    with pytest.raises(ConfigError, match=message):
        resolve_params(params)


def test_bad_settings_are_refused_before_torch_loads(tmp_path):
    """A wrong key or value stops the command line with exit 2 and the key named, without importing
    torch (the error comes in well under the 18-28 s the heavy imports used to take)."""
    code = ("import sys; from dgnet.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    run = ["--manifest", "m.csv", "--out", str(tmp_path), "--set"]
    cases = [(["train", *run, "train.lr_generator=1e-3"], "write 1.0e-3"),
             (["train-teacher", *run, "teacher.iterationz=3"], r"unknown field(s) ['iterationz']"),
             (["config", "show", "--set", "model.backbone=resnet9"], "model.backbone: 'resnet9'")]
    for argv, message in cases:
        proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)


def test_assignments_and_model_config():
    values = apply_assignments({"train": {"objective": {"r1_weight": 0.01}}},
                               ["train.objective.r1_weight=0", "train.schedule.fine_mining=false"])
    assert values == {"train": {"objective": {"r1_weight": 0}, "schedule": {"fine_mining": False}}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_assignments({}, ["train.iterations"])
    with pytest.raises(ConfigError, match=r"params\.train is not a mapping"):
        apply_assignments({"train": 3}, ["train.iterations=4"])
    resolved = resolve_params({"profile": "tiny", "model": {"embedding_dim": 8}})
    assert model_config(resolved, num_classes=5).embedding_dim == 8
    with pytest.raises(ConfigError, match="differs from the 5 training identities"):
        model_config(resolve_params({"profile": "tiny", "model": {"num_classes": 4}}), num_classes=5)
    assert set(PROFILES) == {"paper", "cpu", "tiny"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_iterations_flag_scales_the_whole_schedule_of_every_profile(profile):
    """`dgnet train --iterations 60` moves warm-up, ramps and LR steps inside the 60 iterations at the
    paper's fractions (the tiny profile kept warmup_start 30000: the ramped losses never switched on),
    and `dgnet config show --iterations 60` prints what the trainers get."""
    from dgnet.cli import build_parser
    from dgnet.training.cli import build_configs

    def configs(command: str, section: str) -> object:
        args = build_parser(command).parse_args(
            [command, "--profile", profile, "--iterations", "60", "--data", "d", "--out", "o"])
        return build_configs(args, section)[1]

    train, teacher = configs("train", "train"), configs("train-teacher", "teacher")
    schedule = train.schedule
    points = (schedule.warmup_start, *schedule.lr_milestones)
    assert train.iterations == 60 and all(0 < p < 60 for p in points)
    assert schedule.warmup_start == 18 and schedule.lr_milestones == (36, 54)  # 30k, 60k, 90k of 100k
    assert schedule.id_generated_ramp <= 60 and train.needs_teacher()
    assert teacher.iterations == 60 and teacher.lr_milestones == (40,)  # 16k of 24k
    shown = show("--profile", profile, "--iterations", "60")
    assert shown["train"]["schedule"] == _plain(dataclasses.asdict(schedule))
    assert shown["teacher"]["lr_milestones"] == [40]
