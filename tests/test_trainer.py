"""The teacher and DG-Net loops: resume equality, NaN stop, teacher checks, hooks, evaluation, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import dgnet.training.runtime as runtime_module
import dgnet.training.trainer as trainer_module
from dgnet.data.manifest import TRAIN_DATA_KEY, build_manifest, train_fingerprint
from dgnet.data.synthetic import generate_dataset
from dgnet.errors import ConfigError
from dgnet.evaluation.evaluate import evaluate_reid
from dgnet.losses import NonFiniteLossError
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import ModelFileError, load_model, save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile
from dgnet.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from dgnet.training.cli import add_train_commands, build_configs
from dgnet.training.hooks import TrainingHooks
from dgnet.training.loop import training_labels
from dgnet.training.runtime import autocast_context, iteration_seed, resolve_amp, select_device
from dgnet.training.schedule import ScheduleConfig, loss_weights_at
from dgnet.training.teacher_trainer import TeacherTrainConfig, train_teacher
from dgnet.training.trainer import DGNetTrainConfig, train_dgnet
from tests.fixtures import publish_manifest

TINY = get_profile("tiny")
# Warm-up inside the run: from iteration 2 on the teacher, cycle and fine-grained losses are active.
WARM = ScheduleConfig(warmup_start=1, warmup_rate=0.5)


@pytest.fixture(scope="session")
def frame(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate_dataset(root, seed=0, num_ids=8, num_cameras=3)
    return build_manifest(root)


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory, frame):
    """An untrained teacher is enough to exercise the primary loss."""
    label_map = training_labels(frame)
    cfg = get_profile("tiny", num_classes=len(label_map))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    return save_model(path, ReidBaseline(cfg), "teacher", cfg, extra={"label_map": label_map})


def dgnet_cfg(**overrides: Any) -> DGNetTrainConfig:
    base = {"iterations": 4, "batch_size": 2, "log_every": 1, "eval_every": 0, "image_every": 0,
            "checkpoint_every": 2, "num_workers": 0, "device": "cpu", "deterministic": True,
            "schedule": WARM}
    return DGNetTrainConfig(**{**base, **overrides})


def teacher_cfg(**overrides: Any) -> TeacherTrainConfig:
    base = {"iterations": 4, "batch_size": 8, "log_every": 2, "eval_every": 0, "checkpoint_every": 2,
            "num_workers": 0, "device": "cpu", "deterministic": True, "lr": 0.01}
    return TeacherTrainConfig(**{**base, **overrides})


class Interrupted(Exception):
    pass


class InterruptAt(TrainingHooks):
    """Stops a run right after its checkpoint at `iteration` (as a crash or Ctrl-C would)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        if iteration == self.iteration:
            raise Interrupted


class Recorder(TrainingHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_start(self, kind, config, start_iteration):
        self.calls.append(("start", (kind, config, start_iteration)))

    def on_iteration(self, iteration, logs):
        self.calls.append(("iteration", (iteration, logs)))

    def on_evaluation(self, iteration, metrics):
        self.calls.append(("evaluation", (iteration, metrics)))

    def on_image(self, iteration, name, image):
        self.calls.append(("image", (iteration, name, image)))

    def on_checkpoint(self, iteration, path):
        self.calls.append(("checkpoint", (iteration, path, hashlib.sha256(path.read_bytes()).hexdigest())))

    def on_end(self, result):
        self.calls.append(("end", result))

    def of(self, kind: str) -> list[Any]:
        return [args for name, args in self.calls if name == kind]


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def final_state(out_dir: Path) -> dict[str, Any]:
    return load_checkpoint(latest_checkpoint(out_dir / "checkpoints"))["state"]


# ---- resume equality ---------------------------------------------------------------------------


def test_teacher_resume_equals_uninterrupted_run(tmp_path, frame):
    straight = train_teacher(frame, TINY, teacher_cfg(), tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_teacher(frame, TINY, teacher_cfg(), tmp_path / "resumed", hooks=[InterruptAt(2)])
    # Loader workers do not change the batches: augmentation is seeded by the sampler.
    resumed = train_teacher(frame, TINY, teacher_cfg(num_workers=1), tmp_path / "resumed")
    assert_same(final_state(tmp_path / "straight"), final_state(tmp_path / "resumed"))
    assert straight.metrics == resumed.metrics
    a, _ = load_model(straight.model_path, kind="teacher")
    b, _ = load_model(resumed.model_path, kind="teacher")
    assert_same(a.state_dict(), b.state_dict())


def test_dgnet_resume_equals_uninterrupted_run(tmp_path, frame, teacher_path):
    assert loss_weights_at(2, WARM).primary > 0  # the teacher is in play after the resume point
    train_dgnet(frame, TINY, dgnet_cfg(), [teacher_path], tmp_path / "straight")
    with pytest.raises(Interrupted):
        train_dgnet(frame, TINY, dgnet_cfg(), [teacher_path], tmp_path / "resumed", hooks=[InterruptAt(2)])
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["iter_00000002.pt"]
    recorder = Recorder()
    train_dgnet(frame, TINY, dgnet_cfg(), [teacher_path], tmp_path / "resumed", hooks=[recorder])
    assert recorder.of("start")[0][2] == 2  # resumed at iteration 2
    straight, resumed = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    # Every network (E_a, E_s, decoder + MLPs, D), every optimiser and scaler.
    assert set(straight) == {"model", "optimizer.generator", "optimizer.discriminator",
                             "optimizer.appearance", "scaler.discriminator", "scaler.joint"}
    assert_same(straight, resumed)


# ---- failures ----------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, frame, teacher_path, monkeypatch):
    real_objective = trainer_module.generator_objective
    calls = {"n": 0}

    def objective_with_nan_at_iteration_2(*args, **kwargs):
        loss, logs = real_objective(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # one call per iteration: iteration 2
            return loss * math.nan, {**logs, "recon_image": math.nan}
        return loss, logs

    monkeypatch.setattr(trainer_module, "generator_objective", objective_with_nan_at_iteration_2)
    recorder = Recorder()
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss 'recon_image' is not finite .* at iteration 3"):
        train_dgnet(frame, TINY, dgnet_cfg(), [teacher_path], out, hooks=[recorder])
    (iteration, path, digest), = recorder.of("checkpoint")
    assert iteration == 2 and list_checkpoints(out / "checkpoints") == [path]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # untouched since it was written
    state = load_checkpoint(path)
    assert state["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in state["state"]["model"].values() if t.is_floating_point())
    assert not (out / "model.pt").exists() and not recorder.of("end")


def test_missing_teacher_is_reported_before_training(tmp_path, frame):
    out = tmp_path / "run"
    expected = r"primary loss switches on after iteration 1 of 4 .*--teacher PATH"
    with pytest.raises(ConfigError, match=expected):
        train_dgnet(frame, TINY, dgnet_cfg(), [], out)
    missing = tmp_path / "outputs" / "teacher" / "model.pt"
    with pytest.raises(ModelFileError, match=r"missing teacher: .*outputs/teacher/model.pt does not exist — "
                                             r"run the teacher stage first"):
        train_dgnet(frame, TINY, dgnet_cfg(), [missing], out)
    assert not out.exists()


def test_teacher_from_another_dataset_is_refused(tmp_path, frame):
    cfg = get_profile("tiny", num_classes=9)
    other = save_model(tmp_path / "other.pt", ReidBaseline(cfg), "teacher", cfg)
    with pytest.raises(ModelFileError, match="trained on 9 identities"):
        train_dgnet(frame, TINY, dgnet_cfg(), [other], tmp_path / "run")


def test_train_fingerprint_is_the_train_split_s_files_and_ids(frame):
    ours = train_fingerprint(frame)
    assert len(ours) == 64 and train_fingerprint(frame.sample(frac=1.0, random_state=0)) == ours  # order-free
    query = frame.index[frame["split"] == "query"][0]
    other_query = frame.assign(person_id=frame["person_id"].where(frame.index != query, 99))
    assert train_fingerprint(other_query) == ours
    first = frame.index[frame["split"] == "train"][0]
    relabelled = frame.assign(person_id=frame["person_id"].where(frame.index != first, 99))
    assert train_fingerprint(relabelled) != ours
    renamed = frame.assign(file_name=frame["file_name"].where(frame.index != first, "9999_c1_f0.jpg"))
    assert train_fingerprint(renamed) != ours


def test_a_teacher_of_other_data_with_the_same_ids_is_refused_unless_accepted(tmp_path, frame):
    """The probe: a teacher trained on another dataset with the same id numbers and class count was
    taken (only those were compared), and DG-Net learnt its soft labels."""
    label_map, ours = training_labels(frame), train_fingerprint(frame)
    cfg = get_profile("tiny", num_classes=len(label_map))
    other = save_model(tmp_path / "other.pt", ReidBaseline(cfg), "teacher", cfg,
                       extra={"label_map": label_map, TRAIN_DATA_KEY: "ab" * 32})
    with pytest.raises(ModelFileError) as refused:
        train_dgnet(frame, TINY, dgnet_cfg(), [other], tmp_path / "refused")
    message = str(refused.value)
    assert f"teacher {other}: trained on other data (training split abababababab)" in message
    assert f"this run's (training split {ours[:12]})" in message and "--cross-dataset-teacher" in message
    assert refused.value.exit_code == 2 and not (tmp_path / "refused" / "model.pt").exists()

    with pytest.warns(UserWarning, match=rf"teacher {other}: trained on other data .*: accepted"):
        result = train_dgnet(frame, TINY, dgnet_cfg(cross_dataset_teacher=True), [other],
                             tmp_path / "accepted")
    assert load_model(result.model_path, kind="dgnet")[1].extra[TRAIN_DATA_KEY] == ours  # DG-Net's too

    unknown = save_model(tmp_path / "imported.pt", ReidBaseline(cfg), "teacher", cfg,
                         extra={"label_map": label_map})
    with pytest.warns(UserWarning, match=rf"teacher {unknown}: trained on unknown data"):
        trainer_module.load_teachers([unknown], label_map, TINY, torch.device("cpu"), ours)

    parser = argparse.ArgumentParser()
    add_train_commands(parser.add_subparsers(dest="command"))
    for flags in (["--cross-dataset-teacher"], ["--set", "train.cross_dataset_teacher=true"]):
        args = parser.parse_args(["train", "--data", "x", "--out", "y", "--profile", "tiny", *flags])
        assert build_configs(args, "train")[1].cross_dataset_teacher
    args = parser.parse_args(["train", "--data", "x", "--out", "y", "--profile", "tiny"])
    assert not build_configs(args, "train")[1].cross_dataset_teacher


def test_a_trained_teacher_records_its_data_and_is_taken_without_a_warning(tmp_path, frame, recwarn):
    result = train_teacher(frame, TINY, teacher_cfg(iterations=1, checkpoint_every=0), tmp_path / "teacher")
    assert load_model(result.model_path, kind="teacher")[1].extra[TRAIN_DATA_KEY] == train_fingerprint(frame)
    trainer_module.load_teachers([result.model_path], training_labels(frame), TINY, torch.device("cpu"),
                                 train_fingerprint(frame))
    assert not [w for w in recwarn if "teacher" in str(w.message)]


# ---- hooks, evaluation, pictures -----------------------------------------------------------------


def test_hooks_see_the_whole_run(tmp_path, frame):
    recorder = Recorder()
    # No teacher: the default schedule's warm-up (30k) is past this run's end, which it warns about.
    cfg = dgnet_cfg(iterations=3, eval_every=2, image_every=2, schedule=ScheduleConfig(), swap_images=3)
    with pytest.warns(UserWarning, match="never switch on"):
        result = train_dgnet(frame, TINY, cfg, [], tmp_path / "run", hooks=[recorder])
    names = [name for name, _ in recorder.calls]
    assert names[0] == "start" and names[-1] == "end" and names.count("start") == 1
    kind, config, start = recorder.of("start")[0]
    assert (kind, start) == ("dgnet", 0)
    assert config["train.iterations"] == 3 and config["model.num_classes"] == 4
    json.dumps(config)  # flat and serialisable (MLflow params)

    iterations = recorder.of("iteration")
    assert [it for it, _ in iterations] == [1, 2, 3]
    logs = iterations[-1][1]
    for key in ("loss/total", "loss/d_total", "loss/recon_image", "weight/primary", "weight/recon_image",
                "lr/generator", "lr/appearance_trunk", "lr/id_heads", "speed/it_per_s", "time/data"):
        assert key in logs and math.isfinite(logs[key]), key
    assert logs["lr/id_heads"] == pytest.approx(10 * logs["lr/appearance_trunk"])

    evaluations = recorder.of("evaluation")
    assert [it for it, _ in evaluations] == [2, 3]
    assert all(0 <= m["rank1"] <= 1 and 0 <= m["mAP"] <= 1 for _, m in evaluations)
    images = recorder.of("image")
    assert [(it, name) for it, name, _ in images] == [(2, "swap_grid"), (3, "swap_grid")]
    width, height = images[0][2].size
    assert width > 4 * TINY.image_width and height > 4 * TINY.image_height  # 3 x 3 decodes + donors
    checkpoints = recorder.of("checkpoint")
    assert [it for it, _, _ in checkpoints] == [2, 3] and all(p.is_file() for _, p, _ in checkpoints)

    end = recorder.of("end")[0]
    assert end is result and result.kind == "dgnet" and result.iterations == 3
    assert result.metrics == evaluations[-1][1]
    model, info = load_model(result.model_path, kind="dgnet")
    assert isinstance(model, DGNet) and info.label_map == training_labels(frame)


def test_evaluate_reid_for_dgnet_and_teacher(frame):
    torch.manual_seed(0)
    cfg = get_profile("tiny", num_classes=4)
    queries = int((frame["split"] == "query").sum())
    for model in (DGNet(cfg), ReidBaseline(cfg)):
        model.train()
        metrics = evaluate_reid(model, frame, (cfg.image_height, cfg.image_width), query_alpha=0.5)
        assert metrics["num_queries"] == queries
        assert all(isinstance(v, float) for v in metrics.values())
        assert 0 <= metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"] <= 1
        assert model.training  # mode restored


# ---- configuration, schedule, runtime, CLI -------------------------------------------------------


def test_schedule_scaled_to_a_short_run():
    short = ScheduleConfig().scaled_to(800)
    assert (short.warmup_start, short.lr_milestones) == (240, (480, 720))
    assert loss_weights_at(240, short).primary == 0
    assert loss_weights_at(272, short).primary == 2.0 and loss_weights_at(256, short).code_structure == 1.0
    assert ScheduleConfig().scaled_to(100_000) == ScheduleConfig()
    cfg = DGNetTrainConfig().scaled_to(1000)
    assert cfg.iterations == 1000 and cfg.schedule.warmup_start == 300 and cfg.needs_teacher()
    assert TeacherTrainConfig().scaled_to(1200).lr_milestones == (800,)


def test_runtime_switches():
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="device"):
        select_device("tpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        autocast_context(torch.device("cpu"), "fp16")
    with autocast_context(torch.device("cpu"), "bf16"):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    assert iteration_seed(0, 5, 1) == iteration_seed(0, 5, 1) != iteration_seed(0, 5, 0)
    with pytest.raises(ConfigError, match=r"train\.amp"):
        DGNetTrainConfig(amp="fp8")


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch, native):
    # AVX2-only CPUs emulate bf16 (a convolution ~30x slower): "auto" must not pick it there.
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert resolve_amp(cpu, "auto") == ("bf16" if native else "off")
    with autocast_context(cpu, "auto"):
        dtype = torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype
    assert dtype == (torch.bfloat16 if native else torch.float32)
    assert resolve_amp(cpu, "off") == "off"
    if native:
        assert resolve_amp(cpu, "bf16") == "bf16"
    else:
        with pytest.warns(UserWarning, match="without hardware bf16"):
            assert resolve_amp(cpu, "bf16") == "bf16"  # asked for explicitly: kept, with the warning


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    flags = {"avx2": False, "avx2 avx512_bf16": True, "avx2 amx_bf16 amx_tile": True}
    for line, expected in flags.items():
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor : 0\nflags : fpu {line}\n")
        monkeypatch.setattr(runtime_module, "Path", lambda _path, _file=cpuinfo: _file)
        assert runtime_module.native_bf16(torch.device("cpu")) is expected


def test_cli_config_precedence_and_teacher_run(tmp_path, frame):
    parser = argparse.ArgumentParser()
    add_train_commands(parser.add_subparsers(dest="command"))
    config = tmp_path / "params.json"  # JSON is YAML: a params file either way
    config.write_text(json.dumps({"teacher": {"iterations": 50, "lr": 0.02, "log_every": 1,
                                              "checkpoint_every": 0, "eval_every": 0},
                                  "model": {"embedding_dim": 8}}))
    manifest = tmp_path / "data" / "manifest.csv"
    publish_manifest(frame.attrs["root"], tmp_path)
    args = parser.parse_args(["train-teacher", "--manifest", str(manifest), "--profile", "tiny",
                              "--out", str(tmp_path / "out"), "--params", str(config), "--iterations", "2",
                              "--set", "teacher.augmentation.erasing_p=0.0",
                              "--device", "cpu", "--deterministic", "--batch-size", "8"])
    model_cfg, cfg = build_configs(args, "teacher")
    assert model_cfg.embedding_dim == 8 and cfg.lr == 0.02 and cfg.iterations == 2 and cfg.deterministic
    assert cfg.augmentation.erasing_p == 0.0 and cfg.batch_size == 8 and not cfg.channels_last
    assert args.func(args) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "iteration", "iteration", "evaluation", "end"]
    _, info = load_model(tmp_path / "out" / "model.pt", kind="teacher")
    assert info.config.embedding_dim == 8

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"iterationz": 3}}))
    args = parser.parse_args(["train", "--data", "x", "--out", "y", "--params", str(bad)])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['iterationz'\]"):
        build_configs(args, "train")
    args = parser.parse_args(["train", "--data", "x", "--out", "y", "--iterations", "800"])
    _, cfg = build_configs(args, "train")  # the profile's schedule, compressed
    assert cfg.schedule.warmup_start == 240 and cfg.schedule.lr_milestones == (480, 720)
    args = parser.parse_args(["train", "--data", "x", "--out", "y", "--iterations", "800", "--profile", "cpu",
                              "--set", "train.scale_schedule_from=null"])
    _, cfg = build_configs(args, "train")  # the numbers as written
    assert cfg.schedule.warmup_start == 30_000 and cfg.lr_generator == 0.001 and cfg.device == "auto"


def test_appearance_encoder_can_start_from_the_teacher(frame, teacher_path):
    from dgnet.models.teacher import FrozenTeacher
    from dgnet.training.trainer import init_from_teacher

    teacher, info = load_model(teacher_path, kind="teacher")
    torch.manual_seed(1)
    model = DGNet(info.config)
    init_from_teacher(model, FrozenTeacher(teacher))
    copied, source = model.appearance_encoder.trunk.state_dict(), teacher.trunk.state_dict()
    assert copied.keys() == source.keys() and all(torch.equal(copied[k], source[k]) for k in copied)
    assert DGNetTrainConfig(init_appearance_from_teacher=True,
                            schedule=ScheduleConfig(primary_learning=False)).needs_teacher()
    with pytest.raises(ConfigError, match="no teacher model was given"):
        init_from_teacher(model, None)
    wider = DGNet(get_profile("tiny", num_classes=info.config.num_classes, backbone="resnet50"))
    with pytest.raises(ConfigError, match="use the same backbone"):
        init_from_teacher(wider, FrozenTeacher(teacher))
