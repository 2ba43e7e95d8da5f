"""Beyond one machine, for real on loopback: PostgreSQL, an MLflow tracking server on it, an Optuna
study shared by two worker processes started together on a new database, of which one is killed
mid-trial, and a tracking server that goes away in the middle of a training run.

Run it with `scripts/integration.sh` (or `DGNET_INTEGRATION=1 pytest -s tests/integration`): it
starts a private PostgreSQL cluster (installing the Debian package when root and missing), creates
its databases, starts `mlflow server` on them, runs the stages as the README's recipes do, and stops
everything it started whatever happens. Skipped in the default `pytest` run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import publish_manifest
from tests.integration.services import (
    MlflowServer,
    Postgres,
    Unavailable,
    free_port,
    log,
    running,
    spawn,
    start_postgres,
    stop,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*is experimental"),  # Optuna's retry helpers
    pytest.mark.skipif(os.environ.get("DGNET_INTEGRATION") != "1",
                       reason="integration suite: run scripts/integration.sh (or set DGNET_INTEGRATION=1)"),
]

REPO = Path(__file__).resolve().parents[2]
STAGES = str(REPO / "stages")  # the stage scripts dvc.yaml runs
STUDY = "scaling"
N_TRIALS = 4
EXPERIMENT = "scaling"
RUN = {"log_every": 1, "eval_every": 0, "checkpoint_every": 1, "keep_checkpoints": 2, "device": "cpu",
       "num_workers": 0, "eval_batch_size": 64, "deterministic": True}
PARAMS: dict[str, Any] = {
    "validate": {"manifest": "data/manifest.csv"},
    "profile": "tiny",
    "model": {},
    "teacher": {"seeds": [0], "iterations": 2, "batch_size": 8, "lr": 0.01, **RUN},
    # Long enough (in iterations) for the tracking server to be stopped while it trains.
    "train": {"iterations": 30, "batch_size": 2, "image_every": 10, "swap_images": 2,
              "schedule": {"warmup_start": 0, "warmup_rate": 0.5}, **RUN},
    "mlflow": {"experiment": EXPERIMENT, "teacher_model": "scaling-teacher", "model": "scaling-dgnet",
               "alias": "current"},
    "tune": {
        "study": STUDY, "n_trials": N_TRIALS, "seed": 0, "metric": "mAP", "base": "train",
        "validation_fraction": 0.5,  # 2 of the 4 training ids: the fewest on both sides
        # Evaluations (intermediate values) every 4 iterations, checkpoints every 2: a killed trial
        # has progress to resume from.
        "train": {"iterations": 16, "eval_every": 4, "checkpoint_every": 2, "image_every": 0, "log_every": 2},
        "sampler": {"n_startup_trials": 2}, "pruner": {"kind": "none"},
        "heartbeat_interval": 1, "grace_period": 3, "max_retry": 2, "log_models": False,
        "space": {"primary_max": {"low": 0.5, "high": 3.0, "log": True},
                  "fine_alpha": {"low": 0.05, "high": 0.5}},
    },
}


# --- fixtures: the services and a workspace ----------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    try:
        server = start_postgres()
    except Unavailable as exc:
        pytest.skip(f"no PostgreSQL for the integration suite: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def databases(postgres: Postgres) -> dict[str, str]:
    """The two databases a team would create: MLflow's backend store and the Optuna storage."""
    return {name: postgres.create_database(name) for name in ("mlflow", "optuna")}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def mlflow_server(databases: dict[str, str], tmp_path_factory, logs: Path) -> Iterator[MlflowServer]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    with running(MlflowServer(databases["mlflow"], artifacts, logs / "mlflow-server.log")) as server:
        yield server


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A repository-like folder: params.yaml and the validated manifest of a tiny synthetic dataset."""
    from dgnet.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("workspace")
    generate_dataset(root / "data" / "synthetic", seed=0, num_ids=8, num_cameras=3)
    publish_manifest(root / "data" / "synthetic", root)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    return root


def stage_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", **extra)  # two workers on two cores
    return env


def run_stage(args: list[str], cwd: Path, env: dict[str, str], log_file: Path, timeout: float = 600
              ) -> tuple[int, str, float]:
    """Run `python <stage script> <args>` (or `python -m <args>`) in `cwd` to the end: (exit code, its
    output, seconds)."""
    started = time.monotonic()
    process = spawn([sys.executable, *([] if args[0].endswith(".py") else ["-m"]), *args], log_file, env=env,
                    cwd=cwd)
    try:
        code = process.wait(timeout=timeout)
    finally:
        stop(process)
    return code, log_file.read_text(), time.monotonic() - started


def wait_for(condition: Callable[[], Any], timeout: float, what: str, alive: list | None = None) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` s or
    as soon as one of the `alive` processes has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for process in alive or ():
            if process.poll() is not None:
                pytest.fail(f"waiting for {what}: {' '.join(process.args[1:3])} (pid {process.pid}) "
                            f"exited with {process.returncode}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def teacher(workspace: Path, mlflow_server: MlflowServer, logs: Path) -> dict[str, Any]:
    """The teacher stage, run once against the tracking server (every later stage needs its model)."""
    code, output, seconds = run_stage([STAGES + "/teacher.py"], workspace, stage_env(mlflow_server.url),
                                      logs / "teacher.log")
    assert code == 0, output
    log(f"teacher stage against {mlflow_server.url}: exit 0 after {seconds:.0f} s")
    return {"output": output}


def mlflow_client(url: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


# --- 1. start-up errors -----------------------------------------------------------------------------


def test_unreachable_storage_or_server_is_named_at_start(workspace, teacher, mlflow_server, logs):
    dead_db = f"postgresql+psycopg://dgnet:s3cret@127.0.0.1:{free_port()}/optuna"
    code, output, seconds = run_stage([STAGES + "/tune.py", "--storage", dead_db, "--n-trials", "1"],
                                      workspace, stage_env(mlflow_server.url), logs / "dead-storage.log",
                                      timeout=120)
    log(f"tune with a dead Optuna storage: exit {code} after {seconds:.0f} s: {output.strip()[-300:]}")
    assert code == 2 and "Optuna storage" in output and "unreachable" in output
    assert dead_db.replace("s3cret", "***") in output and "s3cret" not in output

    dead_server = f"http://127.0.0.1:{free_port()}"
    code, output, seconds = run_stage([STAGES + "/train.py"], workspace, stage_env(dead_server),
                                      logs / "dead-server.log", timeout=120)
    log(f"train with a dead tracking server: exit {code} after {seconds:.0f} s: {output.strip()[-300:]}")
    assert code == 2 and dead_server in output and "unreachable" in output


# --- 2. every stage logs to the server ----------------------------------------------------------------


def test_stages_log_to_the_tracking_server_and_its_artifact_root(teacher, mlflow_server, postgres):
    client = mlflow_client(mlflow_server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'teacher'")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.iterations"] == "2" and "eval/rank1" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/id")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.pt"}
    # Proxied artifacts: the bytes are in the server's artifact root, under experiment/run.
    stored = list(mlflow_server.artifacts.glob(f"**/{run.info.run_id}/artifacts/model/model.pt"))
    assert len(stored) == 1 and stored[0].stat().st_size > 0
    assert client.get_model_version_by_alias("scaling-teacher", "current").run_id == run.info.run_id
    # And the run itself is a row of the PostgreSQL backend store.
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="mlflow") as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)).fetchone()
    assert status == ("FINISHED",)
    # The stages may also use the database itself as the store (no server; artifacts need the server).
    from dgnet_pipeline.tracking import connect

    assert connect(postgres.url("mlflow")).get_run(run.info.run_id).info.status == "FINISHED"
    log(f"teacher run {run.info.run_id}: params, metrics, model in {stored[0].parent.parent}, "
        f"row in PostgreSQL database 'mlflow'")


# --- 3. an Optuna study shared by two workers, one killed mid-trial -------------------------------------


def trial_rows(postgres: Postgres) -> list[tuple[int, str, int]]:
    """(number, state, intermediate values) of the study's trials, read from the storage directly
    (the test must not open an Optuna storage of its own while workers create the schema)."""
    import psycopg

    query = """SELECT t.number, t.state::text, count(v.trial_intermediate_value_id)
               FROM trials t JOIN studies s ON s.study_id = t.study_id
               LEFT JOIN trial_intermediate_values v ON v.trial_id = t.trial_id
               WHERE s.study_name = %s GROUP BY t.number, t.state ORDER BY t.number"""
    try:
        with psycopg.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="optuna",
                             autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(query, (STUDY,)).fetchall()]
    except psycopg.errors.UndefinedTable:
        return []  # the first worker has not created the schema yet


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_rerun(
        workspace, teacher, databases, postgres, mlflow_server, logs):
    """The README's recipe: the same command started twice at the same moment on a new, empty
    database (both race to create Optuna's tables, the study and its MLflow parent run); then one
    worker is killed in the middle of a trial."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    storage = databases["optuna"]
    assert trial_rows(postgres) == []  # a new database: no tables yet
    command = [sys.executable, STAGES + "/tune.py", "--study", STUDY, "--n-trials", str(N_TRIALS),
               "--storage", storage, "--seed", "0", "--heartbeat-interval", "1", "--grace-period", "3"]
    env = stage_env(mlflow_server.url)
    started = time.monotonic()
    workers: dict[str, Any] = {}
    try:
        for name in ("A", "B"):  # together, as `for i in 1 2; do dgnet tune ... & done` would
            workers[name] = spawn(command, logs / f"worker-{name}.log", env=env, cwd=workspace)
        log(f"workers A (pid {workers['A'].pid}) and B (pid {workers['B'].pid}) started together: "
            f"{' '.join(command[1:])}")

        def both_mid_trial() -> list[tuple[int, str, int]]:
            running = [row for row in trial_rows(postgres) if row[1] == "RUNNING"]
            return running if len(running) == 2 and all(n > 0 for _, _, n in running) else []

        # Two trials running, each past an evaluation: each worker is in the middle of one.
        running = wait_for(both_mid_trial, 300, "both workers in the middle of a trial",
                           alive=list(workers.values()))
        log(f"both workers mid-trial after {time.monotonic() - started:.0f} s")
        os.killpg(workers["A"].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        workers["A"].wait(timeout=30)
        log(f"SIGKILL worker A while trials {[n for n, _, _ in running]} were running "
            f"(intermediate values: {[v for _, _, v in running]})")
        code = workers["B"].wait(timeout=900)
        log(f"worker B exited {code} {time.monotonic() - killed_at:.0f} s after the kill; "
            f"study took {time.monotonic() - started:.0f} s")
        assert code == 0, (logs / "worker-B.log").read_text()[-3000:]
    finally:
        for process in workers.values():
            stop(process, signal.SIGKILL)
    outputs = {name: (logs / f"worker-{name}.log").read_text() for name in workers}
    for name, output in outputs.items():  # both opened the study: no lost race on the new database
        assert "Traceback" not in output.split("tune: trial")[0], f"worker {name}:\n{output[-3000:]}"
        assert f"tune: study {STUDY!r} in " in output, f"worker {name}:\n{output[-3000:]}"

    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    log(f"trials: {dict(states)}")
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number
    for trial in trials:
        retry_of = retried(trial)
        log(f"  trial {trial.number}: {trial.state.name}"
            + (f", value {trial.value:.4f}" if trial.value is not None else "")
            + (f", re-run of trial {retry_of}" if retry_of is not None else ""))

    # Every trial ended complete, or failed (killed) and re-run by a trial that completed.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials), states
    assert len(failed) == 1, f"exactly one trial was killed: {states}"
    killed = failed[0]
    assert killed.number in {n for n, _, _ in running}
    (rerun,) = [t for t in trials if retried(t) == killed.number]
    assert rerun.state == TrialState.COMPLETE and rerun.params == killed.params
    assert states["COMPLETE"] >= N_TRIALS
    log(f"KILLED WORKER'S TRIAL RE-RUN: trial {killed.number} (worker A, SIGKILL) -> failed by the "
        f"heartbeat check, re-run as trial {rerun.number} with the same weights: {rerun.state.name}, "
        f"mAP {rerun.value:.4f}")

    # Every trial has exactly one MLflow run, with metrics; none lost, none duplicated.
    client = mlflow_client(mlflow_server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.`optuna.study` = '{STUDY}'",
                              max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("dgnet.kind") == "study"]
    from mlflow.entities import ViewType

    ever = client.search_runs([experiment.experiment_id], f"tags.`optuna.study` = '{STUDY}' and "
                              f"tags.`dgnet.kind` = 'study'", run_view_type=ViewType.ALL)
    assert len(ever) == 1, "the workers started together created more than one parent run"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "a trial run outside the study's parent run"
    # The tuning split's teacher is trained once (under its file lock), by one worker, as a child run.
    teachers = [r for r in children if r.data.tags.get("dgnet.kind") == "teacher"]
    assert len(teachers) == len(PARAMS["teacher"]["seeds"]), \
        f"tuning teacher runs: {[r.info.run_name for r in teachers]}"
    children = [r for r in children if r.data.tags.get("dgnet.kind") == "dgnet"]
    assert len(children) == len(runs) - 1 - len(teachers), "a child run that is neither trial nor teacher"
    per_trial = Counter(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert per_trial == Counter(t.number for t in trials), f"runs per trial: {dict(per_trial)}"
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for trial in trials:
        run = by_number[trial.number]
        assert run.data.tags["optuna.trial_id"] == str(trial._trial_id)
        assert "loss/total" in run.data.metrics, f"trial {trial.number}: no metrics in its run"
        if trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
            assert run.data.metrics["optuna/value"] == pytest.approx(trial.value)
            assert run.data.metrics["val/mAP"] == pytest.approx(trial.value)
            assert not any(k.startswith("eval/") for k in run.data.metrics), "a trial scored on test"
    killed_run, rerun_run = by_number[killed.number], by_number[rerun.number]
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["optuna.rerun_as"] == str(rerun.number)
    assert rerun_run.data.tags["optuna.retry_of"] == str(killed.number)
    resumed_at = int(rerun_run.data.tags["dgnet.start_iteration"])
    assert resumed_at >= PARAMS["tune"]["train"]["eval_every"]  # killed after an evaluation: resumed
    rerun_line = (f"tune: trial {rerun.number} re-runs trial {killed.number} (same weights), resuming at "
                  f"iteration {resumed_at}")
    assert rerun_line in outputs["B"], outputs["B"][-3000:]
    assert f"tune: trial {rerun.number} COMPLETE, mAP {rerun.value:.4f} after" in outputs["B"]
    log(f"MLflow: parent run {parent.info.run_id} with {len(children)} trial runs, one per trial; the "
        f"killed attempt's run is KILLED (rerun_as {rerun.number}), the re-run resumed at iteration "
        f"{resumed_at} from the killed attempt's checkpoint")
    assert parent.info.status == "FINISHED"


# --- 4. the tracking server goes away mid-run ------------------------------------------------------------


def test_training_stops_keeping_its_checkpoint_when_the_server_goes_and_resumes(
        workspace, teacher, databases, tmp_path, logs):
    """A second server on the same backend store (the first one serves the other tests), stopped
    while the train stage runs, then started again on the same port."""
    server = MlflowServer(databases["mlflow"], tmp_path / "artifacts", logs / "mlflow-outage.log")
    env = stage_env(server.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="3", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    checkpoints = workspace / "checkpoints"
    process = None
    try:
        server.start()
        process = spawn([sys.executable, STAGES + "/train.py"], logs / "train-outage-1.log", env=env,
                        cwd=workspace)
        wait_for(lambda: list(checkpoints.glob("dgnet-dgnet-*/checkpoints/iter_*.pt")), 300,
                 "the train stage's first checkpoint", alive=[process])
        server.stop(signal.SIGKILL)  # a crash: connections refused from now on
        gone_at = time.monotonic()
        code = process.wait(timeout=300)
        output = (logs / "train-outage-1.log").read_text()
        log(f"train stage after the server went away: exit {code} {time.monotonic() - gone_at:.0f} s later")
        assert code == 2, output[-3000:]
        assert output.count("Retrying (Retry(total=") >= 3 and "the store is unavailable" in output
        assert server.url in output and "is kept" in output
        message = next(line for line in output.splitlines() if "stages/train.py: error" in line)
        log(f"  {message[:400]}")
        kept = sorted(checkpoints.glob("dgnet-dgnet-*/checkpoints/iter_*.pt"))
        assert kept and not (workspace / "outputs" / "dgnet").exists()
        newest = kept[-1]
        iteration = int(newest.stem.split("_")[1])

        server.start()  # back, same port
        code, output, seconds = run_stage([STAGES + "/train.py"], workspace, env,
                                          logs / "train-outage-2.log")
        assert code == 0, output[-3000:]
        assert f"resumed from {newest} at iteration {iteration}" in output
        log(f"re-run with the server back: resumed from {newest.name}, exit 0 after {seconds:.0f} s")
        client = mlflow_client(server.url)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = sorted(client.search_runs([experiment.experiment_id], "attributes.run_name = 'dgnet-seed0'"),
                      key=lambda r: r.info.start_time)
        first, second = runs[-2:]
        assert second.info.status == "FINISHED"
        assert second.data.tags["dgnet.start_iteration"] == str(iteration)
        assert second.data.tags["dgnet.resumed_from_run"] == first.info.run_id
        assert first.info.status == "KILLED"
        # Swap grids and the model went through the server into its artifact root.
        images = [a.path for a in client.list_artifacts(second.info.run_id, "images")]
        assert any(path.endswith(".png") for path in images), images
        stored = server.artifacts.glob(f"**/{second.info.run_id}/artifacts/**/*")
        assert {"model.pt", "config.json"} <= {path.name for path in stored}
    finally:
        stop(process, signal.SIGKILL)
        server.stop()


# --- 5. the torchrun recipes, on CPU (gloo) ----------------------------------------------------------------


def test_torchrun_recipes_single_node_and_two_node_rendezvous(workspace, teacher, tmp_path, logs):
    """The README's two torchrun commands with 2 CPU ranks: `--standalone`, then two "nodes" of one
    rank each meeting through the c10d rendezvous on 127.0.0.1 (as two machines would)."""
    import json

    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    train = ["-m", "dgnet.cli", "train", "--profile", "tiny", "--data", str(workspace / "data" / "synthetic"),
             "--teacher", str(workspace / "outputs" / "teacher" / "seed0" / "model.pt"), "--device", "cpu",
             "--iterations", "4", "--batch-size", "2", "--num-workers", "0", "--deterministic"]
    env = stage_env("", MASTER_ADDR="127.0.0.1")
    port = free_port()
    launches = {
        "single": [[*torchrun, "--standalone", "--nproc_per_node=2", *train,
                    "--out", str(tmp_path / "single")]],
        "two-node": [[*torchrun, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                      f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=dgnet-integration", *train,
                      "--out", str(tmp_path / "two-node")]] * 2,
    }
    results = {}
    for name, commands in launches.items():
        started = time.monotonic()
        processes = [spawn(command, logs / f"torchrun-{name}-{i}.log", env=env, cwd=workspace)
                     for i, command in enumerate(commands)]
        try:
            codes = [process.wait(timeout=600) for process in processes]
        finally:
            for process in processes:
                stop(process, signal.SIGKILL)
        output = "".join((logs / f"torchrun-{name}-{i}.log").read_text() for i in range(len(commands)))
        assert codes == [0] * len(commands), output[-3000:]
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert records[0]["config"]["world_size"] == 2
        assert output.count("4 iterations; model") == 1  # only rank 0 reports
        results[name] = records[-1]
        log(f"torchrun {name}: 2 ranks, exit 0 after {time.monotonic() - started:.0f} s; "
            f"mAP {records[-1].get('mAP', float('nan')):.4f}")
    # The same 2-rank run, whatever the node layout: same global batches, same averaged updates.
    assert results["single"]["mAP"] == pytest.approx(results["two-node"]["mAP"], abs=1e-6)
