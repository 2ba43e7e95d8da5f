"""The tracking store going away: quick start-up errors, retries with back-off mid-run, then a stop
that keeps the last checkpoint, from which re-running the stage resumes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from dgnet.errors import ConfigError
from dgnet_pipeline import teacher as teacher_stage
from dgnet_pipeline import tracking
from dgnet_pipeline import train as train_stage
from dgnet_pipeline import workspace as stage_workspace
from dgnet_pipeline.mlflow_hooks import MlflowHooks
from dgnet_pipeline.tracking import RetryPolicy, TrackingError, connect, redact
from tests.fixtures import publish_manifest
from tests.test_stages_train import PARAMS, write_params
from tests.test_tracking import closed_port

FAST = RetryPolicy(retries=3, first_wait_s=0.01, max_wait_s=0.02)


class FlakyClient:
    """Stands in for an MlflowClient: its writes fail `failures` times (as when the server or its
    database is down), then succeed; `error` is what a failure raises."""

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


def test_retry_policy_defaults_and_environment(monkeypatch):
    monkeypatch.delenv(tracking.RETRIES_ENV, raising=False)
    monkeypatch.delenv(tracking.RETRY_WAIT_ENV, raising=False)
    waits = RetryPolicy.from_env().waits()
    assert waits == [2, 4, 8, 16, 30] and 30 < sum(waits) < 120  # about a minute, bounded
    monkeypatch.setenv(tracking.RETRIES_ENV, "2")
    monkeypatch.setenv(tracking.RETRY_WAIT_ENV, "0.5")
    assert RetryPolicy.from_env().waits() == [0.5, 1.0]
    monkeypatch.setenv(tracking.RETRIES_ENV, "many")
    with pytest.raises(ConfigError, match=tracking.RETRIES_ENV):
        RetryPolicy.from_env()


def test_transient_failures_are_retried_with_back_off(capsys):
    client = FlakyClient(failures=2)
    hooks = MlflowHooks(client, "run1", retry=FAST)
    hooks.set_tags({"a": 1})
    assert client.calls == 3 and len(client.written) == 1
    err = capsys.readouterr().err
    assert "retry 1/3" in err and "retry 2/3" in err and "retry 3/3" not in err
    assert "secret" not in err and "***" in err  # the password never reaches a log


def test_a_store_that_stays_away_stops_the_run_naming_the_url_and_the_checkpoint(tmp_path):
    client = FlakyClient(failures=100, error=ConnectionError("Connection refused"))
    hooks = MlflowHooks(client, "run1", retry=FAST)
    checkpoint = tmp_path / "checkpoints" / "iter_00000004.pt"
    with pytest.raises(TrackingError) as caught:
        hooks.on_checkpoint(4, checkpoint)  # the loop calls it after the file is written
    message = str(caught.value)
    assert redact(client.tracking_uri) in message and "secret" not in message
    assert "failed to set tags" in message and "4 times" in message
    assert str(checkpoint) in message and "(iteration 4), is kept" in message and "re-run" in message
    calls = client.calls
    hooks.on_iteration(5, {"loss/total": 1.0})
    hooks.close()  # gone: no second round of retries while the error propagates
    assert client.calls == calls == 4


def test_mlflow_http_retries_are_ours_during_an_attempt(monkeypatch):
    """MLflow's own 7 HTTP retries (minutes of back-off) would multiply ours: off during our attempts,
    and the attempt's timeout bounded, unless the user set those variables."""
    seen = []

    class Recording(FlakyClient):
        def log_batch(self, run_id: str, **batch: Any) -> None:
            seen.append((os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
                         os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")))
            super().log_batch(run_id, **batch)

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    MlflowHooks(Recording(failures=1), "run1", retry=FAST).set_tags({"a": 1})
    assert seen == [("0", str(tracking.ATTEMPT_TIMEOUT_S))] * 2
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored after the call
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    seen.clear()
    MlflowHooks(Recording(failures=0), "run1", retry=FAST).set_tags({"a": 1})
    assert seen == [("2", str(tracking.ATTEMPT_TIMEOUT_S))]


def test_errors_that_would_repeat_are_not_retried():
    client = FlakyClient(failures=100, error=MlflowException("param changed",
                                                             error_code=INVALID_PARAMETER_VALUE))
    with pytest.raises(TrackingError, match="refused to log params"):
        MlflowHooks(client, "run1", retry=FAST).log_params({"a": 1})
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
    monkeypatch.setenv(tracking.RETRIES_ENV, "2")
    monkeypatch.setenv(tracking.RETRY_WAIT_ENV, "0.01")
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
    assert "failed to" in err and "3 times" in err and "the store is unavailable" in err
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
