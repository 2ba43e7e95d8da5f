"""dgnet_pipeline.tracking and its hooks: where runs land, the training hook (driven by a fake loop),
dead servers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from dgnet.data.validated import validate_dataset
from dgnet.errors import ConfigError, DgnetError
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.profiles import get_profile
from dgnet.training.hooks import HookList, TrainingHooks, TrainingResult
from dgnet_pipeline import mlflow_runs, tracking
from dgnet_pipeline.mlflow_hooks import (
    MAX_PARAM_VALUE,
    MlflowHooks,
    check_alias,
    flatten,
    param_value,
    safe_key,
)
from dgnet_pipeline.mlflow_runs import ensure_experiment, tracked_run
from dgnet_pipeline.tracking import TrackingError, artifact_location, connect, tracking_uri
from tests.fixtures import make_market

REPO = Path(__file__).resolve().parents[1]
TINY = get_profile("tiny", num_classes=4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh SQLite store in a temp folder (creating its tables takes a few seconds: once here)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = connect(uri)
    experiment_id = ensure_experiment(client, "test", artifact_location(uri))
    return folder, uri, client, experiment_id


def test_experiments_open_on_the_runs_table(store):
    _, _, client, experiment_id = store
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-before")  # untagged, as by an earlier version
    assert ensure_experiment(client, "made-before", None) == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    mine = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    ensure_experiment(client, "mine", None)
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"  # kept


def test_the_saved_view_shows_exactly_the_variant_runs_with_their_metrics(store):
    _, _, client, _ = store
    experiment_id = ensure_experiment(client, "views", None)
    tags = client.get_experiment(experiment_id).tags
    state = json.loads(json.loads(tags[mlflow_runs.VIEW_TAG_PREFIX + mlflow_runs.VIEW_ID])["state"])
    assert {"metrics.`eval/mAP`", "metrics.`eval/rank1`"} <= set(state["selectedColumns"])
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "dgnet.variant"}]
    for variant in ("warmup", "teacher-mean", "all", "tune", "teacher", "dgnet", "no_fine"):
        run = client.create_run(experiment_id, run_name=variant, tags={"dgnet.variant": variant})
        client.set_terminated(run.info.run_id)
    client.create_run(experiment_id, run_name="running", tags={"dgnet.variant": "dgnet"})  # not finished
    shown = client.search_runs([experiment_id], state["searchFilter"])
    assert sorted(r.info.run_name for r in shown) == ["dgnet", "no_fine", "teacher"]


@pytest.fixture()
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- tracking URI ---------------------------------------------------------------------------------


def test_default_uri_is_sqlite_at_the_root_from_a_subfolder(tmp_path, monkeypatch, no_tracking_env):
    (tmp_path / "params.yaml").write_text("{}\n")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert artifact_location(tracking_uri()) == (tmp_path.resolve() / "mlruns").as_uri()


def test_dvc_root_wins_over_the_working_directory(tmp_path, monkeypatch, no_tracking_env):
    """A queued `dvc exp run` works in .dvc/tmp/exps/<x> but sets DVC_ROOT to the parent repo."""
    repo = tmp_path / "repo"
    temp_copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp_copy.mkdir(parents=True)
    (temp_copy / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(temp_copy)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert tracking_uri() == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert tracking.workspace_root() == temp_copy.resolve()  # outputs and params stay the copy's


def test_environment_override(tmp_path, monkeypatch, no_tracking_env):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example:5000"
    assert artifact_location("http://mlflow.example:5000") is None  # the server decides
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere/runs.db")  # relative: against the root
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/elsewhere/runs.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/runs.db")
    assert tracking_uri(tmp_path) == "sqlite:////abs/runs.db"
    assert artifact_location("sqlite:////abs/runs.db") == "file:///abs/mlruns"


# --- small helpers --------------------------------------------------------------------------------


def test_flatten_keys_and_param_values():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert param_value([1, 2]) == "[1, 2]" and param_value("x") == "x" and param_value(None) == "null"
    assert len(param_value("y" * 10_000)) == MAX_PARAM_VALUE
    assert safe_key("loss/id") == "loss/id" and safe_key("a|b") == "a_b" and safe_key("/x/../y") == "x/y"


@pytest.mark.parametrize("alias", ["latest", "Latest", "v3", ""])
def test_reserved_or_empty_aliases_are_refused(alias):
    with pytest.raises(ConfigError):
        check_alias(alias)
    assert check_alias("current") == "current"


# --- the hook, driven by a fake loop ----------------------------------------------------------------


def fake_loop(hooks: TrainingHooks, out: Path, iterations: int = 3) -> TrainingResult:
    """What a dgnet training loop does, in the order it does it (see dgnet.training.loop)."""
    hooks = HookList([hooks])
    config = {"train.iterations": iterations, "train.schedule.lr_milestones": [2],
              "model.backbone": "resnet18"}
    hooks.on_start("dgnet", config, 0)
    for done in range(1, iterations + 1):
        hooks.on_iteration(done, {"loss/total": 10.0 / done, "weight/cycle": 0.5 * done, "lr/generator": 1e-4,
                                  "speed/it_per_s": 2.0})
        if done == 2:
            hooks.on_checkpoint(done, out / "checkpoints" / f"iter_{done:08d}.pt")
    hooks.on_image(iterations, "swap_grid", Image.new("RGB", (96, 192), (30, 120, 200)))
    metrics = {"rank1": 0.5, "mAP": 0.25, "mINP": 0.125, "num_queries": 4.0}
    hooks.on_evaluation(iterations, metrics)
    model = save_model(out / "model.pt", DGNet(TINY), "dgnet", TINY)
    result = TrainingResult("dgnet", model, iterations, metrics, config)
    hooks.on_end(result)
    return result


def test_hooks_record_params_metrics_image_model_and_alias(store, tmp_path):
    folder, _, client, experiment_id = store
    with tracked_run(client, experiment_id, "fake", {"dgnet.kind": "dgnet"}) as run:
        hooks = MlflowHooks(client, run.info.run_id, registered_model="fake-model", alias="current",
                            variant="fake", extra_params={"data.manifest": "m.csv"})
        fake_loop(hooks, tmp_path)
    run_id = run.info.run_id
    data = client.get_run(run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params["train.schedule.lr_milestones"] == "[2]"
    assert data.data.params["data.manifest"] == "m.csv"
    assert data.data.tags["dgnet.variant"] == "fake" and data.data.tags["dgnet.checkpoint_iteration"] == "2"
    history = client.get_metric_history(run_id, "loss/total")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 10.0), (2, 5.0),
                                                                                (3, 10.0 / 3)]
    assert [m.step for m in client.get_metric_history(run_id, "weight/cycle")] == [1, 2, 3]
    assert data.data.metrics["eval/rank1"] == 0.5 and data.data.metrics["eval/mINP"] == 0.125
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith("images/swap_grid+step+3+") and p.endswith(".png") for p in images), images
    model_files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/model.pt", "model/config.json", "model/MLmodel"} <= model_files  # an MLflow model
    version = client.get_model_version_by_alias("fake-model", "current")
    assert version.run_id == run_id and version.tags["dgnet.kind"] == "dgnet"
    # Artifacts live beside the store, never under the working directory.
    assert version.source.startswith((folder / "mlruns").as_uri())
    card = json.loads(Path(version.source.removeprefix("file://"), "config.json").read_text())
    assert card["metrics"]["rank1"] == 0.5 and card["config"]["model.backbone"] == "resnet18"

    # A second run moves the alias to its new version.
    with tracked_run(client, experiment_id, "fake-2", {}) as second:
        fake_loop(MlflowHooks(client, second.info.run_id, registered_model="fake-model"), tmp_path)
    moved = client.get_model_version_by_alias("fake-model", "current")
    assert int(moved.version) == int(version.version) + 1 and moved.run_id == second.info.run_id


def test_a_failing_loop_leaves_the_run_failed(store, tmp_path):
    _, _, client, experiment_id = store

    class Boom(DgnetError):
        pass

    with pytest.raises(Boom), tracked_run(client, experiment_id, "boom", {}) as run:
        hooks = MlflowHooks(client, run.info.run_id)
        hooks.on_start("teacher", {"a": 1}, 0)
        hooks.on_iteration(1, {"loss/id": float("nan")})
        hooks.close()
        raise Boom("loss 'id' is not finite")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_missing_model_file_is_an_error(store, tmp_path):
    _, _, client, experiment_id = store
    with tracked_run(client, experiment_id, "nomodel", {}) as run:
        hooks = MlflowHooks(client, run.info.run_id)
        with pytest.raises(DgnetError, match="does not exist"):
            hooks.on_end(TrainingResult("teacher", tmp_path / "absent.pt", 1, {}, {}))


# --- an unreachable store -------------------------------------------------------------------------------


def test_dead_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        connect(uri)
    assert time.monotonic() - start < 60  # a hang guard: MLflow's own retries take minutes


def test_a_read_only_database_fails_at_the_check_naming_the_file(store, monkeypatch):
    """A read-only mount: SQLite opens the file read-only, where BEGIN IMMEDIATE still succeeds."""
    import sqlite3

    _, uri, _, _ = store
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda path, **kw: real_connect(f"file:{path}?mode=ro", uri=True,
                                                                             **kw))
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"mlflow\.db cannot be written.*readonly"):
        connect(uri)
    assert time.monotonic() - start < 5


def test_a_models_uri_against_a_dead_server_fails_within_seconds(tmp_path, monkeypatch, capsys):
    from dgnet.cli import main

    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 64)).save(tmp_path / "imgs" / "a.jpg")
    start = time.monotonic()
    code = main(["extract", "--model", "models:/dgnet@current", "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "f.npy")])
    assert code == 2 and uri in capsys.readouterr().err
    assert time.monotonic() - start < 30  # MLflow's own retries took 252 s


def test_stage_with_dead_server_exits_non_zero_quickly(tmp_path):
    """The stage process itself: exit code and message on stderr. MLflow's own retries would take
    minutes; the subprocess timeout (a hang guard, generous for loaded machines) catches a retry storm."""
    (tmp_path / "params.yaml").write_text(
        "validate:\n  manifest: m.csv\nprofile: tiny\nteacher:\n  iterations: 1\n")
    make_market(tmp_path / "market", gt_bbox=False)  # a validated manifest: the stage gets to the store
    validate_dataset(tmp_path / "market", report=tmp_path / "reports" / "validation.json",
                     manifest=tmp_path / "m.csv")
    uri = f"http://127.0.0.1:{closed_port()}"
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "teacher.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 2, proc.stderr
    assert uri in proc.stderr and "unreachable" in proc.stderr


def test_a_resumed_run_links_and_closes_the_interrupted_one(store, tmp_path):
    """A hard kill leaves a run RUNNING; the run that resumes from its checkpoints ends it KILLED."""
    _, _, client, experiment_id = store
    folder = tmp_path / "work"
    first = client.create_run(experiment_id, run_name="interrupted").info.run_id
    assert mlflow_runs.link_previous_run(client, folder, first) is None
    with tracked_run(client, experiment_id, "resumed", {}) as run:
        assert mlflow_runs.link_previous_run(client, folder, run.info.run_id) == first
    assert client.get_run(first).info.status == "KILLED"
    assert client.get_run(first).data.tags["dgnet.resumed_by_run"] == run.info.run_id
    assert client.get_run(run.info.run_id).data.tags["dgnet.resumed_from_run"] == first


def test_the_warning_of_an_accepted_teacher_of_other_data_reaches_the_mlflow_run(store, tmp_path):
    """The train stage trains inside `MlflowHooks.logging_warnings`: a teacher of other data accepted
    by train.cross_dataset_teacher is warned about (printed as ever) and in the run's tag dgnet.warnings."""
    import torch

    from dgnet.data.manifest import TRAIN_DATA_KEY
    from dgnet.models.teacher import ReidBaseline
    from dgnet.training.trainer import load_teachers

    _, _, client, experiment_id = store
    label_map = {pid: label for label, pid in enumerate((1, 2, 3, 4))}
    teacher = save_model(tmp_path / "teacher.pt", ReidBaseline(TINY), "teacher", TINY,
                         extra={"label_map": label_map, TRAIN_DATA_KEY: "ab" * 32})
    with tracked_run(client, experiment_id, "warned", {}) as run:
        hooks = MlflowHooks(client, run.info.run_id)
        with hooks.logging_warnings():
            load_teachers([teacher], label_map, TINY, torch.device("cpu"), "cd" * 32, other_data=True)
    tag = client.get_run(run.info.run_id).data.tags["dgnet.warnings"]
    assert f"teacher {teacher}: trained on other data (training split abababababab)" in tag
    assert "accepted (train.cross_dataset_teacher)" in tag


def test_the_screenshot_script_opens_the_pipelines_saved_view():
    text = (REPO / "scripts" / "mlflow_screenshot.py").read_text()
    assert f'VIEW_ID = "{mlflow_runs.VIEW_ID}"' in text
