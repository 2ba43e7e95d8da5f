"""The tracking store going away: quick start-up errors, MLflow's retries with back-off mid-run, then a
stop that keeps the last checkpoint, from which re-running the stage resumes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from dgnet_pipeline import tracking
from dgnet_pipeline import workspace as stage_workspace
from dgnet_pipeline.mlflow_hooks import MlflowHooks
from dgnet_pipeline.tracking import TrackingError, connect, redact
from stages import teacher as teacher_stage
from stages import train as train_stage
from tests.fixtures import publish_manifest
from tests.test_stages_train import PARAMS, write_params
from tests.test_tracking import closed_port


class FlakyClient:
    """Stands in for an MlflowClient: its writes fail `failures` times (as when the server or its
    database is down, after MLflow's own retries), then succeed; `error` is what a failure raises."""

    tracking_uri = "http://user:secret@mlflow.example:5000"

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.calls, self.written = failures, 0, []
        self.error = error or MlflowException("API request failed: Connection refused",
                                              error_code=TEMPORARILY_UNAVAILABLE)

    def log_batch(self, run_id: str, **batch: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        self.written.append(batch)


def test_mlflow_retries_about_a_minute_unless_set(monkeypatch):
    for key in tracking.HTTP_RETRIES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    tracking.quiet_mlflow()
    from mlflow import environment_variables as mlflow_env
    from urllib3.util.retry import Retry

    retries = mlflow_env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    factor = mlflow_env.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    retry, waits = Retry(total=retries, backoff_factor=factor), []
    for _ in range(retries):  # urllib3's back-off, as MLflow's session uses it
        retry = retry.increment(method="POST", url="/", error=ConnectionError())
        waits.append(retry.get_backoff_time())
    assert (retries, waits) == (5, [0, 4, 8, 16, 32]) and 30 < sum(waits) < 120  # about a minute, bounded
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's setting stays


def test_a_dead_server_is_retried_by_mlflow_then_stops_the_run_naming_it(monkeypatch, caplog):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    uri = f"http://127.0.0.1:{closed_port()}"
    hooks = MlflowHooks(MlflowClient(tracking_uri=uri), "run1")
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="urllib3"), pytest.raises(TrackingError) as caught:
        hooks.set_tags({"a": 1})
    assert time.monotonic() - start < 30
    assert sum("Retrying" in r.getMessage() for r in caplog.records) == 2  # MLflow's retries, logged
    assert uri in str(caught.value) and "the store is unavailable" in str(caught.value)


def test_a_store_that_stays_away_stops_the_run_naming_the_url_and_the_checkpoint(tmp_path):
    client = FlakyClient(failures=100, error=ConnectionError("Connection refused"))
    hooks = MlflowHooks(client, "run1")
    checkpoint = tmp_path / "checkpoints" / "iter_00000004.pt"
    with pytest.raises(TrackingError) as caught:
        hooks.on_checkpoint(4, checkpoint)  # the loop calls it after the file is written
    message = str(caught.value)
    assert redact(client.tracking_uri) in message and "secret" not in message
    assert "failed to set tags" in message and "the store is unavailable" in message
    assert str(checkpoint) in message and "(iteration 4), is kept" in message and "re-run" in message
    hooks.on_iteration(5, {"loss/total": 1.0})
    hooks.close()  # gone: nothing more is written while the error propagates
    assert client.calls == 1


def test_one_attempt_turns_mlflows_retries_off_for_a_server_only(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    with tracking.one_attempt("http://127.0.0.1:5000", 3):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored after the block
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    with tracking.one_attempt("sqlite:///mlflow.db"):
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_errors_that_would_repeat_are_not_retried():
    client = FlakyClient(failures=100, error=MlflowException("param changed",
                                                             error_code=INVALID_PARAMETER_VALUE))
    with pytest.raises(TrackingError, match="refused to log params"):
        MlflowHooks(client, "run1").log_params({"a": 1})
    assert client.calls == 1


def test_unreachable_database_fails_fast_naming_the_url():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is the `scale` extra")
    uri = f"postgresql+psycopg://dgnet:hunter2@127.0.0.1:{closed_port()}/mlflow"
    start = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        connect(uri)
    assert time.monotonic() - start < 60  # a hang guard: MLflow's engine set-up would retry ~100 s
    message = str(caught.value)
    assert redact(uri) in message and "hunter2" not in message and "unreachable" in message


def test_a_database_url_without_its_driver_says_which_to_use():
    with pytest.raises(TrackingError, match=r"postgresql\+psycopg://"):
        tracking.check_database("postgresql+nosuchdriver://u@127.0.0.1:1/db", "Optuna storage")


# --- the train stage itself -----------------------------------------------------------------------


class Outage:
    """The stage's MlflowClient, whose writes start failing once the first checkpoint is tagged."""

    WRITES = frozenset({"log_batch", "log_image", "log_artifact", "log_artifacts", "log_dict", "set_tag",
                        "set_terminated", "create_model_version"})

    def __init__(self, client: Any) -> None:
        self.client, self.down = client, False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in self.WRITES:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise MlflowException("API request to http://127.0.0.1:5000 failed with exception "
                                      "Connection refused", error_code=INTERNAL_ERROR)
            result = method(*args, **kwargs)
            tags = kwargs.get("tags") or []
            self.down = any(tag.key == "dgnet.checkpoint" for tag in tags)
            return result

        return call


@pytest.fixture()
def trained_teacher(tmp_path, monkeypatch):
    from dgnet.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data" / "synthetic", seed=0, num_ids=8, num_cameras=3)
    publish_manifest(tmp_path / "data" / "synthetic", tmp_path)
    params = {**PARAMS, "teacher": {**PARAMS["teacher"], "seeds": [0]},
              "train": {**PARAMS["train"], "iterations": 3}}
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert teacher_stage.main([]) == 0
    return tmp_path


def test_train_stage_stops_keeping_its_checkpoint_and_resumes_from_it(trained_teacher, monkeypatch, capsys):
    workspace: Path = trained_teacher
    clients: list[Outage] = []

    def connect_with_outage(uri: str) -> Outage:
        clients.append(Outage(connect(uri)))
        return clients[-1]

    monkeypatch.setattr(stage_workspace, "connect", connect_with_outage)  # the stages open the store there
    capsys.readouterr()
    assert train_stage.main([]) == 2
    err = capsys.readouterr().err
    assert "failed to" in err and "the store is unavailable" in err
    assert "iter_00000001.pt (iteration 1), is kept" in err
    (checkpoint,) = workspace.glob("checkpoints/dgnet-dgnet-*/checkpoints/iter_00000001.pt")
    assert not (workspace / "outputs" / "dgnet").exists()  # nothing half-written

    monkeypatch.setattr(stage_workspace, "connect", connect)  # the server is back
    assert train_stage.main([]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {checkpoint} at iteration 1" in out
    client = connect(tracking.tracking_uri())
    experiment = client.get_experiment_by_name(PARAMS["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'dgnet-seed0'")
    first, second = sorted(runs, key=lambda run: run.info.start_time)
    assert second.info.status == "FINISHED"
    assert second.data.tags["dgnet.resumed_from_run"] == first.info.run_id
    assert second.data.tags["dgnet.start_iteration"] == "1"
    assert first.info.status == "KILLED"  # left RUNNING by the outage, closed by the resumed run
