"""`dgnet tune`: repeatable, resumable Optuna studies tracked in MLflow, on a tiny synthetic dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

import dgnet.training.trainer as trainer_module
from dgnet.config import TuneConfig, build_train_config
from dgnet.data.manifest import read_manifest
from dgnet.data.synthetic import generate_dataset
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile
from dgnet.training.hooks import TrainingHooks
from dgnet.training.loop import training_labels
from dgnet.training.trainer import DGNetTrainConfig
from dgnet_pipeline import tune
from dgnet_pipeline.tracking import connect
from stages import train as train_stage
from stages import tune as tune_stage
from tests.fixtures import publish_manifest

REPO = Path(__file__).resolve().parents[1]
RUN = {"log_every": 1, "eval_every": 0, "checkpoint_every": 1, "device": "cpu", "num_workers": 0,
       "eval_batch_size": 64, "deterministic": True}
SPACE = {"primary_max": {"low": 0.5, "high": 4.0, "log": True},
         "fine_alpha": {"low": 0.05, "high": 0.8, "log": True},
         "recon_image": {"low": 1.0, "high": 10.0, "log": True, "also": ["recon_image_positive"]},
         "id_generated": {"low": 0.1, "high": 2.0}}
PARAMS = {
    "validate": {"manifest": "data/manifest.csv"},
    "profile": "tiny",
    "model": {},
    # The teacher the tune stage trains for its trials, on the tuning-train split (2 of the 4 ids).
    "teacher": {"seeds": [0], "iterations": 2, "batch_size": 4, "lr_milestones": [1],
                **{k: v for k, v in RUN.items() if k != "deterministic"}},
    # The warm-up starts at once, so every searched weight acts within the 2 iterations.
    "train": {"iterations": 2, "batch_size": 2, "image_every": 0, "swap_images": 2,
              "schedule": {"warmup_start": 0, "warmup_rate": 0.5}, **RUN},
    "mlflow": {"experiment": "tune-test", "teacher_model": "", "model": "", "alias": "current"},
    # Trials: 2 iterations, evaluated after each (iteration 1 is the pruner's intermediate point).
    "tune": {"study": "weights", "n_trials": 3, "seed": 0, "storage": "sqlite:///optuna.db", "metric": "mAP",
             "validation_fraction": 0.5, "validation_seed": 0,  # 2 of the 4 training ids held out
             "base": "train", "train": {"eval_every": 1}, "sampler": {"n_startup_trials": 2},
             "pruner": {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
             "heartbeat_interval": 1, "grace_period": 2, "max_retry": 2, "space": SPACE},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two threads wait on each other (10x slower), and
    both runs of a comparison must use the same count anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_params(folder: Path, params: dict) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A repository-like folder: params.yaml, a validated manifest and an (untrained) teacher for the
    pipeline's train stage (tune trains its own on the tuning-train split)."""
    root = tmp_path_factory.mktemp("tune-workspace")
    generate_dataset(root / "data" / "synthetic", seed=0, num_ids=8, num_cameras=3)
    frame = publish_manifest(root / "data" / "synthetic", root)
    label_map = training_labels(frame)
    cfg = get_profile("tiny", num_classes=len(label_map))
    torch.manual_seed(0)
    save_model(root / "outputs" / "teacher" / "seed0" / "model.pt", ReidBaseline(cfg), "teacher", cfg,
               extra={"label_map": label_map})
    index = {"kind": "teacher", "teachers": [{"seed": 0, "path": "seed0/model.pt"}]}
    (root / "outputs" / "teacher" / "teachers.json").write_text(json.dumps(index))
    write_params(root, PARAMS)
    return root


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('tune-mlflow')}/mlflow.db"


@pytest.fixture()
def in_workspace(workspace, mlflow_uri, monkeypatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # never the repository's mlflow.db
    return workspace


def suggest(trial: optuna.Trial) -> dict[str, float]:
    """The weights a trial of `SPACE` gets (as the objective asks for them)."""
    space = TuneConfig(space=SPACE).space
    return {k.name: trial.suggest_float(k.name, k.low, k.high, log=k.log) for k in space}


def load(storage: str, name: str = "weights") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(uri: str, study: str) -> dict[int, object]:
    client = connect(uri)
    experiment = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`optuna.study` = '{study}' and tags.`dgnet.kind` = 'dgnet'")
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs}


def parent_runs(uri: str, study: str) -> list:
    client = connect(uri)
    experiment = client.get_experiment_by_name("tune-test")
    return client.search_runs([experiment.experiment_id],
                              f"tags.`optuna.study` = '{study}' and tags.`dgnet.kind` = 'study'")


def summary(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.trials]


@pytest.fixture(scope="module")
def twice(workspace, mlflow_uri, tmp_path_factory):
    """The same 3-trial study run twice with seed 0, each in its own SQLite storage; the frames
    handed to every training (trials and teacher) are recorded."""
    import dgnet.training.teacher_trainer as teacher_module

    patch = pytest.MonkeyPatch()
    patch.chdir(workspace)
    patch.delenv("DVC_ROOT", raising=False)
    patch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    stores = tmp_path_factory.mktemp("tune-stores")
    handed: dict[str, list] = {"dgnet": [], "teacher": []}

    def recording(kind, real):
        def train(frame, *args, **kwargs):
            handed[kind].append(frame.copy())
            return real(frame, *args, **kwargs)
        return train

    patch.setattr(trainer_module, "train_dgnet", recording("dgnet", trainer_module.train_dgnet))
    patch.setattr(teacher_module, "train_teacher", recording("teacher", teacher_module.train_teacher))
    try:
        codes = [tune_stage.main(["--storage", f"sqlite:///{stores}/{run}.db", "--out",
                                  str(stores / f"{run}.yaml"), "--metrics", str(stores / f"{run}.json")])
                 for run in ("a", "b")]
    finally:
        patch.undo()
    return codes, stores, handed


def test_same_seed_gives_the_same_trials_params_and_values(twice, mlflow_uri):
    codes, stores, _ = twice
    assert codes == [0, 0]
    first, second = (load(f"sqlite:///{stores}/{run}.db") for run in ("a", "b"))
    assert summary(first) == summary(second)
    assert len(first.trials) == 3 and all(t.state in tune.FINISHED for t in first.trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in first.trials}) == 3  # the sampler explores
    for trial in first.trials:  # one knob drives both image reconstruction weights
        assert set(trial.params) == set(SPACE)
        assert 0.0 <= trial.intermediate_values[1] <= 1.0
    assert (stores / "a.yaml").read_text().replace("a.yaml", "b.yaml") == (stores / "b.yaml").read_text()
    tuned = yaml.safe_load((stores / "a.yaml").read_text())
    best = first.best_trial
    assert tuned["tuned"]["trial"] == best.number and tuned["tuned"]["value"] == best.value
    schedule = tuned["train"]["schedule"]
    assert schedule["recon_image_positive"] == schedule["recon_image"] == best.params["recon_image"]
    assert json.loads((stores / "a.json").read_text())["best_value"] == round(best.value, 6)
    # MLflow: one parent per study (the same name in the second storage is a new study), 3 children.
    parents = parent_runs(mlflow_uri, "weights")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    parent_ids = {p.info.run_id for p in parents}
    for parent in parents:
        artifacts = {a.path for a in connect(mlflow_uri).list_artifacts(parent.info.run_id, "plots")}
        assert {"plots/optimization_history.png", "plots/param_importances.png"} <= artifacts
        assert parent.data.metrics["best/value"] == best.value
    children = connect(mlflow_uri).search_runs(
        [parents[0].info.experiment_id], "tags.`optuna.study` = 'weights' and tags.`dgnet.kind` = 'dgnet'")
    assert len(children) == 6 and {c.data.tags["mlflow.parentRunId"] for c in children} == parent_ids
    for child in children:
        assert child.data.tags["dgnet.variant"] == "tune"
        assert float(child.data.params["tune.primary_max"]) > 0
        params = child.data.params
        assert params["train.schedule.recon_image_positive"] == params["tune.recon_image"]


def test_trials_and_their_teacher_train_and_score_on_the_validation_split_only(twice, workspace, mlflow_uri):
    _, stores, handed = twice
    manifest = read_manifest(workspace / "data" / "manifest.csv", "test")
    test = manifest[manifest["split"].isin(["query", "gallery"])]
    train_ids = set(manifest.loc[manifest["split"] == "train", "person_id"])
    assert len(handed["dgnet"]) == 6 and len(handed["teacher"]) == 1  # the second study reused the teacher
    for frame in handed["dgnet"] + handed["teacher"]:
        assert set(frame["path"]).isdisjoint(test["path"]) and set(frame["person_id"]) <= train_ids
        held = frame[frame["split"].isin(["query", "gallery"])]
        assert held["person_id"].nunique() == 2 and set(held["person_id"]).isdisjoint(
            frame.loc[frame["split"] == "train", "person_id"])
    # The teacher of the tuning split: trained once, cached, and what the trials learn from.
    (index,) = (workspace / "outputs" / "tuning").glob("teacher-*/teachers.json")
    assert json.loads(index.read_text())["split"]["train_ids"] == 2
    # Every report says which split its numbers come from.
    metrics = json.loads((stores / "a.json").read_text())
    assert metrics["score_split"] == "validation"
    assert metrics["validation"]["validation_ids"] == 2 and metrics["validation"]["fraction"] == 0.5
    assert yaml.safe_load((stores / "a.yaml").read_text())["tuned"]["score_split"] == "validation"
    client = connect(mlflow_uri)
    for parent in parent_runs(mlflow_uri, "weights"):
        assert parent.data.tags["dgnet.score_split"] == "validation"
        assert parent.data.params["tune.score_split"] == "validation"
        assert parent.data.params["tune.validation.fraction"] == "0.5"
        assert parent.data.params["tune.validation.validation_ids"] == "2"
    for run in trial_runs(mlflow_uri, "weights").values():
        assert run.data.tags["dgnet.score_split"] == "validation"
        assert "val/mAP" in run.data.metrics and not any(k.startswith("eval/") for k in run.data.metrics)
        params = run.data.params
        assert params["data.score_split"] == "validation" and params["data.train_ids"] == "2"
    (teacher,) = client.search_runs([parents_experiment(mlflow_uri)],
                                    "tags.`optuna.study` = 'weights' and tags.`dgnet.kind` = 'teacher'")
    parents = {p.info.run_id for p in parent_runs(mlflow_uri, "weights")}
    assert teacher.data.tags["mlflow.parentRunId"] in parents
    assert teacher.data.tags["dgnet.score_split"] == "validation" and "val/mAP" in teacher.data.metrics


def parents_experiment(uri: str) -> str:
    return connect(uri).get_experiment_by_name("tune-test").experiment_id


def test_tune_refuses_a_split_that_holds_test_images(in_workspace, tmp_path, monkeypatch, capsys):
    """`dgnet tune` never reads the test split: handed a benchmark query image, it stops (exit 1)
    before any study, teacher or trial."""
    import pandas as pd

    real = tune.validation_split

    def leaking(manifest, *args, **kwargs):
        split = real(manifest, *args, **kwargs)
        query = manifest[manifest["split"] == "query"].iloc[[0]].assign(split="gallery")
        leaked = pd.concat([split, query], ignore_index=True)
        leaked.attrs = split.attrs
        return leaked

    monkeypatch.setattr(tune, "validation_split", leaking)
    storage = f"sqlite:///{tmp_path}/leak.db"
    assert tune_stage.main(["--study", "leak", "--storage", storage, "--out", str(tmp_path / "t.yaml"),
                      "--metrics", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err
    assert "rule tuning_never_reads_test_split" in err and "1 test image(s)" in err and "/query/" in err
    assert not (tmp_path / "leak.db").exists() and not (tmp_path / "t.json").exists()


class InterruptAt(TrainingHooks):
    """Ctrl-C right after the checkpoint of iteration `at` (as a user or a SIGTERM would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        if iteration == self.at:
            raise KeyboardInterrupt


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage:UserWarning")  # the dead worker's storage, below
def test_interrupted_and_dead_trials_are_rerun_and_the_study_completes(in_workspace, mlflow_uri,
                                                                      tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path}/resume.db"
    args = ["--study", "resume", "--storage", storage, "--out", str(tmp_path / "t.yaml"),
            "--metrics", str(tmp_path / "t.json"), "--set", "pruner={kind: none}"]
    real_train, calls = trainer_module.train_dgnet, []

    def interrupted_second_trial(*a, hooks=(), **kw):
        calls.append(1)
        return real_train(*a, hooks=[*hooks, *([InterruptAt(1)] if len(calls) == 2 else [])], **kw)

    monkeypatch.setattr(trainer_module, "train_dgnet", interrupted_second_trial)
    assert tune_stage.main(args) == 130
    study = load(storage, "resume")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params  # re-queued with the same weights
    (parent,) = parent_runs(mlflow_uri, "resume")
    assert parent.info.status == "KILLED"
    monkeypatch.setattr(trainer_module, "train_dgnet", real_train)

    # Another worker took the re-queued trial and died hard: RUNNING, with a heartbeat that stopped.
    heartbeat = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=2)
    dead = optuna.load_study(study_name="resume", storage=heartbeat).ask()
    assert dead.number == 2
    assert suggest(dead) == study.trials[1].params
    heartbeat.record_heartbeat(dead._trial_id)
    client = connect(mlflow_uri)
    orphan = client.create_run(parent.info.experiment_id, run_name="trial-0002", tags={
        "optuna.study": "resume", "optuna.trial_number": "2", "dgnet.kind": "dgnet",
        "mlflow.parentRunId": parent.info.run_id})
    time.sleep(PARAMS["tune"]["grace_period"] + 1.5)  # SQLite's clock has whole seconds

    assert tune_stage.main(args) == 0
    study = load(storage, "resume")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
                                               TrialState.COMPLETE, TrialState.COMPLETE]
    assert len(tune.trials(study, *tune.FINISHED)) == 3
    assert study.trials[3].params == study.trials[1].params  # the weights of the lost attempts, run
    runs = trial_runs(mlflow_uri, "resume")
    assert sorted(runs) == [0, 1, 2, 3, 4]
    assert runs[3].data.tags["optuna.retry_of"] == "2" and "optuna.retry_of" not in runs[4].data.tags
    assert runs[3].data.tags["dgnet.start_iteration"] == "1"  # resumed from the interrupted attempt
    assert runs[2].info.run_id == orphan.info.run_id
    for old in (1, 2):  # the lost attempts: ended (not left RUNNING) and pointing at their re-run
        assert runs[old].info.status == "KILLED" and runs[old].data.tags["optuna.rerun_as"] == "3"
    assert [runs[n].info.status for n in (0, 3, 4)] == ["FINISHED"] * 3
    (again,) = parent_runs(mlflow_uri, "resume")  # the resumed study kept its parent run
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"

    # The study has its 3 trials, but a worker dies in a 6th: a re-run waits for that trial to go
    # stale, then re-runs it, rather than leave it RUNNING for ever.
    dead = optuna.load_study(study_name="resume", storage=heartbeat).ask()
    suggest(dead)
    heartbeat.record_heartbeat(dead._trial_id)
    assert tune_stage.main(args) == 0
    study = load(storage, "resume")
    assert [t.state for t in study.trials[5:]] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[6].params == study.trials[5].params
    assert not (in_workspace / "checkpoints").exists()


class OutageAt(TrainingHooks):
    """The tracking server goes away right after the checkpoint of iteration `at`: every MLflow call
    from then on is refused (see `mlflow_outage`)."""

    def __init__(self, at: int, outage: dict) -> None:
        self.at, self.outage = at, outage

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        if iteration == self.at:
            self.outage["on"] = True


@pytest.fixture()
def mlflow_outage(monkeypatch) -> dict:
    """`outage["on"] = True` makes MlflowClient calls fail as with a server that is down (connection
    refused, after MLflow's own retries), until it is set back to False."""
    from mlflow import MlflowClient

    outage = {"on": False}

    def refusing(real):
        def call(self, *args, **kwargs):
            if outage["on"]:
                raise ConnectionError("[Errno 111] Connection refused (simulated outage)")
            return real(self, *args, **kwargs)

        return call

    for name in ("log_batch", "log_metric", "set_tag", "set_terminated", "create_run", "update_run",
                 "search_runs", "get_run", "delete_run", "log_text", "log_figure", "log_artifact"):
        monkeypatch.setattr(MlflowClient, name, refusing(getattr(MlflowClient, name)))
    return outage


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_tracking_outage_mid_trial_requeues_the_trial_and_the_rerun_completes_the_study(
        in_workspace, mlflow_uri, mlflow_outage, tmp_path, monkeypatch, capsys):
    storage = f"sqlite:///{tmp_path}/outage.db"
    args = ["--study", "outage", "--storage", storage, "--out", str(tmp_path / "t.yaml"),
            "--metrics", str(tmp_path / "t.json"), "--set", "pruner={kind: none}"]
    real_train, calls = trainer_module.train_dgnet, []

    def outage_in_second_trial(*a, hooks=(), **kw):
        calls.append(1)
        extra = [OutageAt(1, mlflow_outage)] if len(calls) == 2 else []
        return real_train(*a, hooks=[*hooks, *extra], **kw)

    monkeypatch.setattr(trainer_module, "train_dgnet", outage_in_second_trial)
    assert tune_stage.main(args) == 2
    out, err = capsys.readouterr()
    assert "dgnet tune: error: MLflow at" in err and "the store is unavailable" in err
    assert "re-run the same command once the tracking store is back" in err
    assert "Traceback" not in err
    assert "tune: trial 1 stopped (TrackingError" in out and "tune: trial 1 re-queued" in out
    study = load(storage, "outage")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params  # re-queued with the same weights
    assert not (tmp_path / "t.yaml").exists()

    mlflow_outage["on"] = False  # the server is back: the same command resumes the study
    assert tune_stage.main(args) == 0
    assert "tune: trial 2 re-runs trial 1 (same weights), resuming at iteration 1" in capsys.readouterr().out
    study = load(storage, "outage")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                               TrialState.COMPLETE]
    runs = trial_runs(mlflow_uri, "outage")
    assert sorted(runs) == [0, 1, 2, 3]  # one run per attempt: none lost, none doubled
    (parent,) = parent_runs(mlflow_uri, "outage")
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    # The attempt the outage stopped was left RUNNING (the server was away): the re-run ended it.
    assert runs[1].info.status == "KILLED" and runs[1].data.tags["optuna.rerun_as"] == "2"
    assert runs[2].data.tags["optuna.retry_of"] == "1" and runs[2].data.tags["dgnet.start_iteration"] == "1"
    assert [runs[n].info.status for n in (0, 2, 3)] == ["FINISHED"] * 3
    assert runs[2].data.metrics["optuna/value"] == study.trials[2].value
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials/complete"] == 3
    assert (tmp_path / "t.yaml").exists()


def test_pruned_trial_is_pruned_in_optuna_and_killed_in_mlflow(in_workspace, mlflow_uri, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/prune.db"
    # mAP never exceeds 1: a threshold pruner at 1.01 prunes at the first intermediate evaluation.
    code = tune_stage.main(["--study", "prune", "--storage", storage, "--n-trials", "1",
                      "--out", str(tmp_path / "t.yaml"), "--metrics", str(tmp_path / "t.json"),
                      "--set", "pruner={kind: threshold, lower: 1.01}"])
    assert code == 0
    (trial,) = load(storage, "prune").trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    # The outcome line says why: the metric and the iteration the pruner stopped it at.
    assert f"tune: trial 0 PRUNED (mAP {trial.intermediate_values[1]:.4f} at iteration 1) after" in (
        capsys.readouterr().out)
    run = trial_runs(mlflow_uri, "prune")[0]
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert "val/mAP" in run.data.metrics and "optuna/value" not in run.data.metrics
    assert not (tmp_path / "t.yaml").exists()  # no complete trial, no tuned weights
    assert json.loads((tmp_path / "t.json").read_text())["pruned"] == 1


def test_tuned_weights_feed_back_into_a_training_run(twice, workspace, mlflow_uri, tmp_path, monkeypatch):
    _, stores, _ = twice
    tuned = yaml.safe_load((stores / "a.yaml").read_text())["train"]["schedule"]
    for item in ("data", "outputs", "reports"):  # reports: the validation report of the manifest
        shutil.copytree(workspace / item, tmp_path / item)
    (tmp_path / "params.yaml").write_text("# the comment stays\n" + (workspace / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    assert tune_stage.main(["--apply", str(stores / "a.yaml")]) == 0
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert (tmp_path / "params.yaml").read_text().startswith("# the comment stays\n")
    assert {k: params["train"]["schedule"][k] for k in tuned} == tuned
    assert params["train"]["schedule"]["warmup_start"] == 0  # untouched keys stay
    cfg, _ = build_train_config(DGNetTrainConfig, params["train"], "train")
    assert cfg.schedule.primary_max == tuned["primary_max"]
    assert cfg.schedule.recon_image_positive == tuned["recon_image"]
    assert train_stage.main([]) == 0  # the pipeline's train stage on the applied params
    client = connect(mlflow_uri)
    experiment = client.get_experiment_by_name("tune-test")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`dvc.stage` = 'train@0'")
    assert run.info.status == "FINISHED"
    for key, value in tuned.items():
        assert float(run.data.params[f"train.schedule.{key}"]) == value
    assert run.data.metrics["weight/primary"] > 0  # the tuned lambda_prim was in use


def test_unreachable_storage_bad_split_and_changed_settings_exit_2(twice, in_workspace, tmp_path, capsys):
    url = "postgresql+psycopg://tuner:secret@127.0.0.1:1/optuna"
    assert tune_stage.main(["--storage", url]) == 2
    err = capsys.readouterr().err
    assert "Optuna storage postgresql+psycopg://tuner:***@127.0.0.1:1/optuna" in err and "secret" not in err
    assert tune_stage.main(["--storage", f"sqlite:///{tmp_path}/no/such/folder/o.db"]) == 2
    assert "no/such/folder/o.db" in capsys.readouterr().err
    assert tune_stage.main(["--storage", "not a url"]) == 2
    assert "SQLAlchemy URL" in capsys.readouterr().err
    # The study of `twice` resumed with another search space is refused before any trial.
    _, stores, _ = twice
    assert tune_stage.main(["--storage", f"sqlite:///{stores}/a.db", "--set",
                            "space.fine_alpha.high=0.9"]) == 2
    assert "started with other settings (changed: space)" in capsys.readouterr().err
    # Another validation split is another study.
    assert tune_stage.main(["--storage", f"sqlite:///{stores}/a.db", "--set", "validation_seed=1"]) == 2
    assert "started with other settings (changed: teachers, validation)" in capsys.readouterr().err
    assert tune_stage.main(["--set", "space.cycle_max={low: 0}"]) == 2
    assert "tune.space.cycle_max" in capsys.readouterr().err
    storage = f"sqlite:///{tmp_path}/split.db"
    assert tune_stage.main(["--storage", storage, "--set", "validation_fraction=1"]) == 2
    assert "tune.validation_fraction: must be a number with 0 <" in capsys.readouterr().err
    assert tune_stage.main(["--storage", storage, "--set", "validation_fraction=0.25"]) == 2  # 1 of 4 ids
    assert "0.25 of the 4 training identities holds out 1" in capsys.readouterr().err
    assert not (tmp_path / "split.db").exists()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_workers_opening_a_new_study_together_make_one_study_and_one_parent_run(tmp_path, mlflow_uri,
                                                                               monkeypatch, capsys):
    """Workers started at the same moment on a new database: each creates Optuna's tables, the study and
    its settings, or finds them, and all share one MLflow parent run; a worker that cannot get the
    start-up lock in time says so, naming the storage."""
    import threading

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    url, cfg = f"sqlite:///{tmp_path}/race.db", TuneConfig(study="race", space=SPACE, heartbeat_interval=1)
    client = connect(mlflow_uri)
    experiment = client.get_experiment_by_name("tune-test") or client.get_experiment(
        client.create_experiment("tune-test"))
    parents, errors = [], []

    def worker() -> None:
        try:
            with tune.startup_lock(url):
                study, _ = tune.open_study(url, cfg, {"space": "same"})
                parents.append(tune.open_parent(client, experiment.experiment_id, study,
                                                {"optuna.study": "race"}, {"tune": {"seed": 0}}))
        except Exception as exc:  # pragma: no cover - the failure the test is about
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert errors == [] and len(parents) == 4 and len(set(parents)) == 1
    assert len(parent_runs(mlflow_uri, "race")) == 1
    assert optuna.get_all_study_names(url) == ["race"]

    monkeypatch.setattr(tune, "LOCK_TIMEOUT_S", 0.5)
    with tune.startup_lock(url), pytest.raises(tune.StorageError, match=r"race.db: no start-up lock"), \
            tune.startup_lock(url):
        pass
    assert "another worker is opening the study; waiting" in capsys.readouterr().out
    with tune.startup_lock(url):  # released when the first worker is done
        pass


def test_dgnet_cli_has_tune_and_dvc_repro_leaves_it_out(tmp_path, monkeypatch, capfd):
    from dgnet.cli import build_parser

    args = build_parser().parse_args(["tune", "--study", "s", "--n-trials", "4", "--seed", "1"])
    assert args.func is tune.command and (args.study, args.n_trials, args.seed) == ("s", 4, 1)
    # The DVC entry: its own dvc.yaml, which a plain `dvc repro` (the root dvc.yaml) does not run.
    from dvc.repo import Repo

    (tmp_path / "tuning").mkdir()
    shutil.copy(REPO / "tuning" / "dvc.yaml", tmp_path / "tuning" / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages:\n  main:\n    cmd: echo main\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        (stage,) = repo.stage.collect("tuning/dvc.yaml:tune")
        assert stage.cmd == "python stages/tune.py" and Path(stage.wdir) == tmp_path
        out = yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["out"]
        assert out in [str(o) for o in stage.outs]
    # In child processes: DVC's state from earlier in-process calls changes what `dvc` prints here.
    dvc_cli = [sys.executable, "-m", "dvc"]
    plain = subprocess.run([*dvc_cli, "repro", "--dry"], cwd=tmp_path, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert "Running stage 'main'" in plain.stdout and "tune" not in plain.stdout + plain.stderr
    chosen = subprocess.run([*dvc_cli, "repro", "--dry", "tuning/dvc.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)  # fails on the missing manifest, once chosen
    assert "tuning/dvc.yaml:tune" in chosen.stdout + chosen.stderr


def test_sampler_draws_the_same_trials_after_a_restart():
    """Trial k's draw depends on (seed, k) and the history, not on the process: a study continued by a
    new sampler (a resumed run) gets the trials an uninterrupted one gets, never repeated start-up points."""

    def objective(trial: optuna.Trial) -> float:
        return sum(suggest(trial).values())

    def study(sampler_per_step: bool) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=tune.PerTrialSeedTPESampler(7, 2))
        for _ in range(4):
            if sampler_per_step:  # a new process for every trial
                study.sampler = tune.PerTrialSeedTPESampler(7, 2)
            study.optimize(objective, n_trials=1)
        return [t.params for t in study.trials]

    uninterrupted = study(sampler_per_step=False)
    assert study(sampler_per_step=True) == uninterrupted
    assert len({json.dumps(p, sort_keys=True) for p in uninterrupted}) == 4


def test_diverging_trials_fail_and_stop_the_study_after_three(in_workspace, mlflow_uri, tmp_path, monkeypatch,
                                                             capsys):
    from dgnet.losses import NonFiniteLossError

    def diverging(*args, **kwargs):
        raise NonFiniteLossError("loss 'loss/total' is not finite (nan) at iteration 1")

    monkeypatch.setattr(trainer_module, "train_dgnet", diverging)
    storage = f"sqlite:///{tmp_path}/nan.db"
    assert tune_stage.main(["--study", "nan", "--storage", storage, "--out", str(tmp_path / "t.yaml"),
                      "--metrics", str(tmp_path / "t.json")]) == 2
    out, err = capsys.readouterr()
    assert "3 trials in a row failed" in err
    for number in range(3):  # each outcome line gives the exception's message
        assert (f"tune: trial {number} FAIL (loss 'loss/total' is not finite (nan) at iteration 1) after"
                in out)
    study = load(storage, "nan")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3  # failed for their weights: no retry
    assert {r.info.status for r in trial_runs(mlflow_uri, "nan").values()} == {"FAILED"}
    (parent,) = parent_runs(mlflow_uri, "nan")
    assert parent.info.status == "FAILED"


def test_apply_refuses_a_value_where_a_section_belongs_and_changes_nothing(tmp_path):
    from dgnet.errors import ConfigError
    from dgnet_pipeline.tune import apply_tuned

    params = tmp_path / "params.yaml"
    params.write_text("profile: cpu\ntrain:\n  schedule: 3\n")
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("train:\n  schedule:\n    recon_image: 2.0\n")
    with pytest.raises(ConfigError, match=r"value at `train.schedule`.*needs a section"):
        apply_tuned(tuned, params)
    assert params.read_text() == "profile: cpu\ntrain:\n  schedule: 3\n"
