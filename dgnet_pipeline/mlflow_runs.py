"""One tracked MLflow run of a stage: its experiment, its tags, its life (FAILED on an error, KILLED
on an interrupt) and its link to the interrupted run it resumes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dgnet_pipeline.tracking import TrackingError, one_attempt, short

# MLflow 3's UI opens an untagged experiment on its GenAI (traces) overview; this tag makes it open
# on the runs table, where variants and metrics are compared.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The trained variants' runs: not the warm-ups, the teachers' parent, the evaluate or tuning runs.
VARIANT_FILTER = " and ".join(["attributes.status = 'FINISHED'", *(
    f"tags.`dgnet.variant` != '{v}'" for v in ("warmup", "teacher-mean", "all", "tune"))])
# A saved view of the runs table (MLflow >= 3.15 keeps them as experiment tags under this prefix;
# Views menu, or #/experiments/<id>/runs?viewStateShareKey=<VIEW_ID>): one row per variant, its
# final rank-1 / mAP / mAP_finite averaged over the seeds, the seeds' runs beneath it.
VIEW_TAG_PREFIX, VIEW_ID = "mlflow.sharedViewState.", "dgnet-variants"
VIEW_STATE = {
    "searchFilter": VARIANT_FILTER, "orderByKey": "attributes.start_time", "orderByAsc": False,
    "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
    "selectedColumns": [f"metrics.`eval/{m}`" for m in ("rank1", "mAP", "mAP_finite", "mINP")],
    "runsHiddenMode": "SHOW_ALL",
    "groupBy": {"aggregateFunction": "average",
                "groupByKeys": [{"mode": "tag", "groupByData": "dgnet.variant"}]},
}


def ensure_experiment(client: Any, name: str, artifact_root: str | None) -> str:
    """The id of experiment `name`, created (artifacts in `<artifact_root>/<name>`) or restored if needed."""
    from mlflow.exceptions import MlflowException

    location = artifact_root and (f"{artifact_root.rstrip('/')}/"
                                  f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'experiment'}")
    now = int(time.time() * 1000)  # the saved view in the envelope MLflow's UI writes
    view = {"name": "Variants: rank-1 and mAP over seeds", "createdAt": now, "updatedAt": now,
            "state": json.dumps(VIEW_STATE)}
    tags = {**EXPERIMENT_KIND, VIEW_TAG_PREFIX + VIEW_ID: json.dumps(view)}
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=location or None, tags=tags)
            except MlflowException as exc:  # created concurrently by another stage
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        for key, value in tags.items():
            if key not in experiment.tags:  # an experiment made before, or by hand: a user's choice stays
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(f"MLflow experiment {name!r} at {client.tracking_uri}: {short(exc)}") from exc


def git_commit(folder: str | os.PathLike) -> tuple[str | None, bool | None]:
    """(HEAD's commit, whether tracked files differ from it) of the git checkout at `folder`."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def run_tags(stage: str, kind: str, variant: str, source: str, folder: str | os.PathLike) -> dict[str, str]:
    commit, dirty = git_commit(folder)
    return {"dvc.stage": os.environ.get("DVC_STAGE") or stage, "dgnet.kind": kind, "dgnet.variant": variant,
            "mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            **({"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(dirty).lower()}
               if commit else {}),
            **{tag: os.environ[env] for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"),
                                                     ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"))
               if os.environ.get(env)}}


@contextlib.contextmanager
def tracked_run(client: Any, experiment_id: str, run_name: str, tags: Mapping[str, str],
                parent_run_id: str | None = None,
                killed_by: tuple[type[BaseException], ...] = ()) -> Iterator[Any]:
    """Create a run; end it FINISHED when the block succeeds, KILLED on Ctrl-C (or one of `killed_by`,
    e.g. a pruned Optuna trial: stopped on purpose, not broken), FAILED otherwise."""
    tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    try:
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    except Exception as exc:
        raise TrackingError(f"could not create an MLflow run at {client.tracking_uri}: {short(exc)}") from exc
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (KeyboardInterrupt, *killed_by):
        status = "KILLED"
        raise
    finally:
        try:  # one quick attempt: when the server has gone, say so rather than retry for minutes
            with one_attempt(client.tracking_uri):
                client.set_terminated(run.info.run_id, status)
        except Exception as exc:
            logging.getLogger(__name__).warning("could not mark MLflow run %s %s: %s",
                                                run.info.run_id, status, short(exc))


RUN_ID_FILE = "mlflow_run_id"


def link_previous_run(client: Any, folder: Path, run_id: str) -> str | None:
    """Remember `run_id` in a training work dir; return the run that worked there before, if any: tagged
    as resumed by the new one, and ended KILLED if a hard kill left it RUNNING."""
    marker = folder / RUN_ID_FILE
    previous = marker.read_text().strip() if marker.is_file() else None
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_id + "\n")
    if not previous or previous == run_id:
        return None
    with contextlib.suppress(Exception):  # the old run may live in another store: nothing to fix there
        if client.get_run(previous).info.status == "RUNNING":
            client.set_terminated(previous, "KILLED")
        client.set_tag(previous, "dgnet.resumed_by_run", run_id)
    client.set_tag(run_id, "dgnet.resumed_from_run", previous)
    return previous
