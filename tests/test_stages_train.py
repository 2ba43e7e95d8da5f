"""The `teacher` and `train` DVC stages end to end on a tiny synthetic dataset, tracked in a temp store."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

import dgnet.training.teacher_trainer as teacher_trainer
from dgnet.config import TeacherStage, build_train_config, stage_config
from dgnet.data.synthetic import generate_dataset
from dgnet.errors import ConfigError
from dgnet.losses import NonFiniteLossError
from dgnet.models.persist import load_model
from dgnet.profiles import get_profile, read_params, resolve_params
from dgnet.training.teacher_trainer import TeacherTrainConfig
from dgnet.training.trainer import DGNetTrainConfig
from dgnet_pipeline.tracking import connect
from stages import teacher as teacher_stage
from stages import train as train_stage
from tests.fixtures import publish_manifest

RUN = {"log_every": 1, "eval_every": 0, "checkpoint_every": 1, "device": "cpu", "num_workers": 0,
       "eval_batch_size": 64, "deterministic": True}
PARAMS = {
    "validate": {"manifest": "data/manifest.csv"},
    "profile": "tiny",
    "model": {},
    # Two seeds: an ensemble of two teachers, one child run each.
    "teacher": {"seeds": [0, 1], "iterations": 2, "batch_size": 8, "lr": 0.01, **RUN},
    # Two seeds, each DG-Net seed with the teacher of its seed; the warm-up (shared by the variants,
    # forked from) is the first iteration, so the teachers' soft labels are used in the other two.
    "train": {"iterations": 3, "batch_size": 2, "image_every": 1, "swap_images": 2, "seeds": [0, 1],
              "schedule": {"warmup_start": 1, "warmup_rate": 0.5}, **RUN},
    "ablations": {"no_fine": {"schedule": {"fine_mining": False}}},
    "mlflow": {"experiment": "stages-test", "teacher_model": "t-teacher", "model": "t-dgnet",
               "alias": "current"},
}


def validated_elsewhere(workspace: Path) -> dict[str, str]:
    """params `validate` pointing at another workspace's manifest and validation report."""
    return {"manifest": str(workspace / "data" / "manifest.csv"),
            "report": str(workspace / "reports" / "validation.json")}


def write_params(workspace: Path, params: dict) -> None:
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A repository-like folder: params.yaml and a validated manifest of a tiny synthetic dataset."""
    root = tmp_path_factory.mktemp("workspace")
    generate_dataset(root / "data" / "synthetic", seed=0, num_ids=8, num_cameras=3)
    publish_manifest(root / "data" / "synthetic", root)
    write_params(root, PARAMS)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    return uri, connect(uri)


@pytest.fixture()
def in_workspace(workspace, store, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])  # never the repository's mlflow.db
    return workspace


@pytest.fixture(scope="module")
def trained(workspace, store):
    """The stages run once as `dvc repro` would: the teachers, seed 0's warm-up, DG-Net and one ablation
    forked from it, and DG-Net seed 1 trained from iteration 0 (no fork)."""
    patch = pytest.MonkeyPatch()
    patch.chdir(workspace)
    patch.delenv("DVC_ROOT", raising=False)
    patch.setenv("MLFLOW_TRACKING_URI", store[0])
    try:
        fork = ["--fork", "outputs/warmup/seed0"]
        codes = (teacher_stage.main([]), train_stage.main(["--warmup", "--seed", "0"]),
                 train_stage.main(["--seed", "0", *fork]), train_stage.main(["--seed", "1"]),
                 train_stage.main(["--ablation", "no_fine", "--seed", "0", *fork]))
    finally:
        patch.undo()
    return codes


def runs(client, name: str):
    experiment = client.get_experiment_by_name("stages-test")
    return client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")


def test_stages_write_metrics_models_and_finished_runs(trained, workspace, store, in_workspace):
    assert trained == (0, 0, 0, 0, 0)
    _, client = store
    for name in ("teacher", "dgnet_seed0", "dgnet_seed1"):
        metrics = json.loads((workspace / "reports" / "metrics" / f"{name}.json").read_text())
        assert {"rank1", "mAP", "mINP"} <= set(metrics)
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("rank1", "mAP", "mINP"))
    teacher_metrics = json.loads((workspace / "reports" / "metrics" / "teacher.json").read_text())
    assert set(teacher_metrics["seeds"]) == {"0", "1"}
    index = json.loads((workspace / "outputs" / "teacher" / "teachers.json").read_text())
    assert [t["seed"] for t in index["teachers"]] == [0, 1]
    assert (workspace / "outputs" / "teacher" / "seed1" / "model.pt").is_file()
    assert (workspace / "outputs" / "dgnet" / "seed0" / "model.pt").is_file()
    assert (workspace / "outputs" / "dgnet" / "seed1" / "model.pt").is_file()
    assert (workspace / "outputs" / "warmup" / "seed0" / "checkpoint.pt").is_file()
    warmup = json.loads((workspace / "outputs" / "warmup" / "seed0" / "warmup.json").read_text())
    # Each run's loss curves beside its model; the fork's begin with its warm-up's rows.
    curves = {name: pd.read_csv(workspace / "outputs" / name / "losses.csv")
              for name in ("warmup/seed0", "dgnet/seed0", "dgnet/seed1", "teacher/seed1")}
    warm, fork = curves["warmup/seed0"]["iteration"].tolist(), curves["dgnet/seed0"]["iteration"].tolist()
    assert warm and fork[:len(warm)] == warm and len(fork) > len(warm)
    assert curves["dgnet/seed1"]["iteration"].tolist() == fork and "loss/id" in curves["teacher/seed1"]
    assert (warmup["seed"], warmup["iterations"]) == (0, 1)
    assert (workspace / "reports" / "figures" / "dgnet_seed0_swap_grid.png").is_file()
    assert not (workspace / "checkpoints").exists()  # deleted once the stages succeeded

    (dgnet_run,) = runs(client, "dgnet-seed0")
    (unforked,) = runs(client, "dgnet-seed1")
    (warm,) = runs(client, "warmup-seed0")
    assert {r.info.status for r in (dgnet_run, unforked, warm)} == {"FINISHED"}
    params = dgnet_run.data.params
    assert params["train.iterations"] == "3" and params["profile"] == "tiny"
    assert params["stage.forked_from"] == "outputs/warmup/seed0" and params["train.seed"] == "0"
    assert unforked.data.params["train.seed"] == "1" and "stage.forked_from" not in unforked.data.params
    tags = dgnet_run.data.tags
    assert (tags["dvc.stage"], tags["dgnet.kind"], tags["dgnet.variant"], tags["dgnet.seed"]) == (
        "train@0", "dgnet", "dgnet", "0")
    assert (warm.data.tags["dvc.stage"], warm.data.tags["dgnet.variant"]) == ("warmup@0", "warmup")
    assert warm.data.params["train.iterations"] == "1"
    # The fork continues the warm-up's iteration count: its own curves start after it.
    assert [m.step for m in client.get_metric_history(dgnet_run.info.run_id, "loss/total")] == [2, 3]
    assert [m.step for m in client.get_metric_history(unforked.info.run_id, "loss/total")] == [1, 2, 3]
    assert "loss/primary_kl" in dgnet_run.data.metrics  # the teacher was used
    assert "eval/rank1" in dgnet_run.data.metrics
    images = [a.path for a in client.list_artifacts(dgnet_run.info.run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 2  # iterations 2 and 3
    # Seed S learns from the teacher of seed S (train.teachers: paired).
    assert dgnet_run.data.params["teacher.fingerprints"] != unforked.data.params["teacher.fingerprints"]
    assert dgnet_run.data.params["train.teachers"] == "paired"
    # Every seed's model is registered: current-seed<S>, and current for the first seed.
    version = client.get_model_version_by_alias("t-dgnet", "current")
    assert version.run_id == dgnet_run.info.run_id == \
        client.get_model_version_by_alias("t-dgnet", "current-seed0").run_id
    assert client.get_model_version_by_alias("t-dgnet", "current-seed1").run_id == unforked.info.run_id
    assert version.tags["dgnet.seed"] == "0" and version.description.startswith("dgnet, seed 0, 3 iterations")
    assert "DG-Net" in client.get_registered_model("t-dgnet").description
    # The registered version loads back through the registry: models:/<name>@<alias> -> model.pt.
    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/t-dgnet@current",
                                                dst_path=str(workspace / "download"), tracking_uri=store[0],
                                                registry_uri=store[0])
    model, info = load_model(Path(local) / "model.pt", kind="dgnet")
    assert info.config.num_classes == 4 and not model.training

    (parent,) = runs(client, "teacher")
    children = [runs(client, f"teacher-seed{s}")[0] for s in (0, 1)]
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    # Tagged with the stage run, not nested in it: MLflow's UI would add the parent to filtered tables.
    assert all(c.data.tags["dgnet.stage_run"] == parent.info.run_id for c in children)
    assert not any("mlflow.parentRunId" in c.data.tags for c in children)
    assert [(c.data.tags["dgnet.variant"], c.data.tags["dgnet.seed"]) for c in children] == [
        ("teacher", "0"), ("teacher", "1")]
    assert parent.data.tags["dgnet.variant"] == "teacher-mean"  # apart from the seeds in a grouped view
    assert client.get_model_version_by_alias("t-teacher", "current").run_id == children[0].info.run_id
    assert client.get_model_version_by_alias("t-teacher", "current-seed1").run_id == children[1].info.run_id

    # The ablation: its own model, metrics and run in the same experiment; not registered.
    (ablation,) = runs(client, "no_fine-seed0")
    assert ablation.data.tags["dgnet.variant"] == "no_fine" and ablation.data.tags["dgnet.seed"] == "0"
    assert ablation.data.tags["dvc.stage"] == "ablation@no_fine-0"
    assert ablation.data.params["train.schedule.fine_mining"] == "false"
    assert "loss/fine_generated" not in ablation.data.metrics and "loss/primary_kl" in ablation.data.metrics
    assert "loss/fine_generated" in dgnet_run.data.metrics
    assert (workspace / "outputs" / "ablations" / "no_fine" / "seed0" / "model.pt").is_file()
    assert (workspace / "reports" / "metrics" / "ablation_no_fine_seed0.json").is_file()
    assert (workspace / "reports" / "figures" / "ablation_no_fine_seed0_swap_grid.png").is_file()
    versions = client.search_model_versions("name = 't-dgnet'")
    assert ablation.info.run_id not in {v.run_id for v in versions}


def test_unknown_ablation_is_named(in_workspace, capsys):
    assert train_stage.main(["--ablation", "no_such"]) == 2
    err = capsys.readouterr().err
    assert "ablations.no_such" in err and "no_fine" in err


def test_seed_and_fork_refusals_are_named(trained, in_workspace, capsys):
    assert train_stage.main(["--warmup", "--ablation", "no_fine"]) == 2
    assert "--warmup" in capsys.readouterr().err
    assert train_stage.main(["--seed", "1", "--fork", "outputs/warmup/seed1"]) == 2
    err = capsys.readouterr().err
    assert "no warm-up checkpoint" in err and "warmup@1" in err
    assert train_stage.main(["--seed", "7"]) == 2  # paired: no teacher of seed 7
    err = capsys.readouterr().err
    assert "teacher of seed 7" in err and "teacher.seeds" in err
    # The warm-up of seed 0 was trained with other settings than these: the fork is refused, naming them.
    assert train_stage.main(["--seed", "0", "--fork", "outputs/warmup/seed0", "--set", "lr_generator=0.5",
                             "--variant", "probe", "--out", "outputs/probe", "--registered-model", ""]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "lr_generator" in err
    with pytest.raises(ConfigError, match="repeats"):
        stage_config("train", {"seeds": [1, 1]})
    with pytest.raises(ConfigError, match=r"train\.teachers"):
        stage_config("train", {"seeds": [0], "teachers": "mine"})


def test_ablation_changes_merge_into_the_train_section(tmp_path):
    params = {"profile": "tiny",
              "train": {"iterations": 5, "schedule": {"fine_alpha": 0.2, "primary_max": 2.0}},
              "ablations": {"no_primary": {"schedule": {"primary_learning": False}}}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    base, ablated = read_params(path), read_params(path, "no_primary")
    for cfg in (ablated.train, ablated.ablations["no_primary"], base.ablations["no_primary"]):
        assert not cfg.schedule.primary_learning
        assert (cfg.iterations, cfg.schedule.fine_alpha, cfg.schedule.primary_max) == (5, 0.2, 2.0)
    assert base.train.schedule.primary_learning  # the section itself is untouched
    with pytest.raises(ConfigError, match=r"no `ablations\.no_such` mapping"):
        read_params(path, "no_such")


def test_missing_manifest_exits_non_zero_without_a_run(in_workspace, store, tmp_path, monkeypatch, capsys):
    params = {**PARAMS, "validate": {"manifest": str(tmp_path / "absent.csv")}}
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    before = len(store[1].search_runs([e.experiment_id for e in store[1].search_experiments()]))
    assert teacher_stage.main([]) == 2
    assert "absent.csv does not exist" in capsys.readouterr().err
    assert len(store[1].search_runs([e.experiment_id for e in store[1].search_experiments()])) == before


def test_missing_teacher_exits_non_zero(in_workspace, tmp_path, monkeypatch, capsys):
    write_params(tmp_path, {**PARAMS, "validate": validated_elsewhere(in_workspace)})
    monkeypatch.chdir(tmp_path)
    assert train_stage.main([]) == 2
    err = capsys.readouterr().err
    assert "missing teacher" in err and "teachers.json" in err, err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "outputs").exists()


def test_nan_loss_fails_the_run_and_leaves_outputs_alone(trained, in_workspace, store, monkeypatch, capsys):
    metrics = in_workspace / "reports" / "metrics" / "teacher.json"
    before = metrics.read_text()

    def diverging(frame, model_cfg, cfg, out_dir, hooks=(), resume=True):
        for hook in hooks:
            hook.on_start("teacher", {"train.seed": cfg.seed}, 0)
        raise NonFiniteLossError("loss 'loss/id' is not finite (nan) at iteration 0")

    monkeypatch.setattr(teacher_trainer, "train_teacher", diverging)
    assert teacher_stage.main([]) == 2
    assert "not finite" in capsys.readouterr().err
    assert metrics.read_text() == before
    assert (in_workspace / "outputs" / "teacher" / "seed0" / "model.pt").is_file()
    failed = [r for r in runs(store[1], "teacher") if r.info.status == "FAILED"]
    failed_children = [r for r in runs(store[1], "teacher-seed0") if r.info.status == "FAILED"]
    assert len(failed) == 1 and len(failed_children) == 1


def test_unknown_params_key_is_named(in_workspace, tmp_path, monkeypatch, capsys):
    write_params(tmp_path, {**PARAMS, "train": {**PARAMS["train"], "schedule": {"warmup_strat": 3}}})
    monkeypatch.chdir(tmp_path)
    assert train_stage.main([]) == 2
    assert "train.schedule" in capsys.readouterr().err


def test_params_map_onto_the_dataclasses():
    values = {"seeds": [0, 1], "iterations": 300, "lr_milestones": [16000], "scale_schedule_from": 24000}
    cfg, stage = build_train_config(TeacherTrainConfig, values, "teacher", fixed={"seed": 1})
    assert stage == TeacherStage(seeds=(0, 1))
    assert cfg.iterations == 300 and cfg.lr_milestones == (200,) and cfg.seed == 1
    cfg, _ = build_train_config(DGNetTrainConfig, {"iterations": 600, "scale_schedule_from": 100000,
                                                   "schedule": {"lr_milestones": [60000, 90000]}}, "train")
    assert cfg.schedule.warmup_start == 180 and cfg.schedule.lr_milestones == (360, 540)
    with pytest.raises(ConfigError, match=r"teacher\.seed"):
        build_train_config(TeacherTrainConfig, {"seed": 3}, "teacher", fixed={"seed": 0})
    with pytest.raises(ConfigError, match="unknown"):
        build_train_config(DGNetTrainConfig, {"iterationz": 3}, "train")
    with pytest.raises(ConfigError, match=r"train\.seed"):  # the stage sets it from train.seeds
        build_train_config(DGNetTrainConfig, {"seed": 3}, "train", fixed={"seed": 0})
    with pytest.raises(ConfigError, match=r"train\.seeds"):  # the stage keys are checked by the schema
        build_train_config(DGNetTrainConfig, {"seeds": []}, "train")


def test_repository_params_build_valid_configs():
    """params.yaml, resolved with its profile, maps onto the config dataclasses without unknown keys."""
    repo = Path(__file__).resolve().parents[1]
    params = resolve_params(yaml.safe_load((repo / "params.yaml").read_text()))
    teacher, _ = build_train_config(TeacherTrainConfig, params["teacher"], "teacher", fixed={"seed": 0})
    train, stage = build_train_config(DGNetTrainConfig, params["train"], "train", fixed={"seed": 0})
    assert len(stage.seeds) >= 2  # a spread for every variant
    assert get_profile(params["profile"], **params["model"]) == get_profile("cpu")
    assert train.needs_teacher() and teacher.iterations > 0


def test_evaluate_stage_writes_report_metrics_plots_and_a_run(trained, workspace, store, in_workspace):
    from stages import evaluate as evaluate_stage

    params = {**PARAMS, "evaluate": {"num_swaps": 6, "ranked_queries": 2, "rerank": False}}
    write_params(workspace, params)
    ablation = workspace / "outputs" / "ablations" / "no_fine"
    assert evaluate_stage.main([]) == 2  # every (variant, seed) of params, and ablation@no_fine-1 is missing
    shutil.copytree(ablation / "seed0", ablation / "seed1")  # stands in for ablation@no_fine-1 (cheaper)
    try:
        assert evaluate_stage.main([]) == 0
    finally:
        write_params(workspace, PARAMS)
        shutil.rmtree(ablation / "seed1")
    summary = json.loads((workspace / "reports" / "metrics" / "eval.json").read_text())
    # One entry per run (<variant>_seed<S>) and one per variant with its seed summary.
    assert set(summary) == {"teacher_seed0", "teacher_seed1", "dgnet_seed0", "dgnet_seed1",
                            "ablation_no_fine_seed0", "ablation_no_fine_seed1", "teacher", "dgnet",
                            "ablation_no_fine", "colour_histogram"}
    assert 0.0 <= summary["colour_histogram"]["baseline"]["mAP"] <= 1.0  # the trivial re-ID baseline
    run0 = summary["dgnet_seed0"]
    assert set(run0) >= {"alpha_0", "alpha_0.5", "alpha_1", "fine_only", "generation"}
    assert "swap_l1_person" in run0["generation"]  # synthetic data: ground truth exists
    full = summary["dgnet"]["summary"]
    per_seed = [summary[f"dgnet_seed{s}"]["alpha_0.5"]["mAP"] for s in (0, 1)]
    assert full["seeds"] == [0, 1] and full["setting"] == "alpha_0.5"
    assert full["mAP_mean"] == pytest.approx(sum(per_seed) / 2, abs=1e-6)
    assert full["mAP_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5, abs=1e-6)
    assert {"rank1_mean", "rank1_std", "mAP_per_seed"} <= set(full)
    teacher = full["vs_teacher"]["mAP"]  # DG-Net S - teacher S, which it learnt from
    assert teacher["seeds"] == [0, 1] and teacher["low"] <= teacher["mean"] <= teacher["high"]
    assert "vs_dgnet" not in summary["teacher"]["summary"] and "mAP_finite_mean" in full
    ablated = summary["ablation_no_fine"]["summary"]
    assert ablated["seeds"] == [0, 1] and ablated["setting"] == "alpha_0"
    verdicts = {"above", "below", "not distinguishable at this seed count"}
    assert ablated["vs_dgnet"]["mAP"]["verdict"] in verdicts
    report = (workspace / "reports" / "benchmark.md").read_text()
    assert "## Variants over seeds" in report and "| dgnet | full DG-Net | 2 | alpha_0.5 |" in report
    assert "| dgnet_seed0 | full DG-Net | alpha_0.5 |" in report and "FID skipped" in report
    assert re.search(r"- Trained on cpu: .*, fp32: teacher_seed0, teacher_seed1, dgnet_seed0", report)
    # Without fine-grained mining the model is read at alpha 0 (primary half).
    assert "| ablation_no_fine_seed0 | `schedule.fine_mining: false` | alpha_0 |" in report
    assert "### dgnet (mean of 2 seeds)" in report and "\n- **mAP: dgnet " in report and "teacher" in report
    for picture in ("eval_cmc.png", "eval_dgnet_seed0_swap_grid.png", "eval_teacher_seed0_ranked_list.png"):
        assert (workspace / "reports" / "figures" / picture).is_file()
    assert (workspace / "reports" / "plots" / "cmc.csv").read_text().startswith("rank,cmc,model")
    assert json.loads((workspace / "reports/metrics/summary/dgnet_seed1.json").read_text())["mAP"] == round(
        summary["dgnet_seed1"]["alpha_0.5"]["mAP"], 4)
    (run,) = runs(store[1], "evaluate")
    assert run.info.status == "FINISHED" and "dgnet_seed0/alpha_0.5/mAP" in run.data.metrics
    assert {"dgnet/summary/mAP_mean", "dgnet/summary/vs_teacher/mAP/low"} <= set(run.data.metrics)
    assert "colour_histogram/baseline/mAP" in run.data.metrics
    headline = run.data.tags["mlflow.note.content"]  # the run's description: the report's first lines
    assert headline.startswith("- **mAP: dgnet ") and headline.splitlines()[0] in report
    assert any(a.path.endswith("benchmark.md") for a in store[1].list_artifacts(run.info.run_id, "report"))


def test_evaluate_without_trained_models_names_the_missing_one(in_workspace, tmp_path, monkeypatch, capsys):
    from stages import evaluate as evaluate_stage

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {**PARAMS, "validate": validated_elsewhere(in_workspace)})
    assert evaluate_stage.main([]) == 2
    assert "missing teacher" in capsys.readouterr().err


def test_a_second_teacher_stage_in_the_workspace_stops_before_any_run(in_workspace, store, capsys):
    """The probe: two `python stages/teacher.py` at once shared one checkpoints folder and
    registered two models. Now the second stops at once (exit 2), naming the first, and opens no
    MLflow run."""
    from dgnet_pipeline.common import parse_seeds
    from dgnet_pipeline.teacher import run_folders
    from dgnet_pipeline.workspace import file_md5, model_config, read_manifest, report_path

    params = yaml.safe_load((in_workspace / "params.yaml").read_text())
    manifest = in_workspace / "data" / "manifest.csv"
    frame = read_manifest(manifest, report_path(params, in_workspace))
    configs = {seed: build_train_config(TeacherTrainConfig, params["teacher"], "teacher",
                                        fixed={"seed": seed})[0] for seed in parse_seeds(params["teacher"])}
    folder = run_folders(in_workspace, model_config(params, frame), configs, file_md5(manifest))[1]
    hold = ("import sys, time\nfrom dgnet.training.runlock import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = len(runs(store[1], "teacher"))
        assert teacher_stage.main([]) == 2
        err = capsys.readouterr().err
        assert f"teacher run folder {folder} is in use by another run: pid {holder.pid}" in err
        assert len(runs(store[1], "teacher")) == before
    finally:
        holder.kill()
        holder.wait()
    shutil.rmtree(folder, ignore_errors=True)
