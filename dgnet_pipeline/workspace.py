"""What the tracked stages share: opening a stage (params, the validated manifest, the store, in that
order, so that the cheapest error comes first), one way to end it on an error, run folders under
checkpoints/ keyed by configuration and data (locked while a run uses them, removed once the stage
has succeeded), fingerprints, and SIGTERM as an interrupt."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgnet.config import MlflowConfig, Params, ValidateConfig, section_config
from dgnet.errors import DgnetError
from dgnet_pipeline.common import resolve
from dgnet_pipeline.mlflow_runs import ensure_experiment
from dgnet_pipeline.tracking import artifact_location, connect, quiet_mlflow, tracking_uri

CHECKPOINT_ROOT = "checkpoints"


def manifest_path(params: Mapping[str, Any], workspace: Path) -> Path:
    """The validated manifest: params `validate.manifest`."""
    return resolve(workspace, section_config(ValidateConfig, params, "validate").manifest)


def report_path(params: Mapping[str, Any], workspace: Path) -> Path:
    """The validation report that holds the manifest's record: params `validate.report`."""
    return resolve(workspace, section_config(ValidateConfig, params, "validate").report)


def read_manifest(path: Path, report: Path) -> Any:
    """The manifest the validate stage wrote, checked against the record in its validation `report`
    (dgnet.data.validated), with training images."""
    from dgnet.data.validated import read_validated_manifest
    from dgnet.errors import DatasetError

    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist; the validate stage writes it only when the "
                           "dataset passes validation; run `dvc repro validate` and fix what it reports")
    frame = read_validated_manifest(path, report)
    if not (frame["split"] == "train").any():
        raise DatasetError(f"manifest {path} has no training images (split 'train')")
    return frame


def model_config(params: Mapping[str, Any], frame: Any) -> Any:
    """The ModelConfig of (resolved) params, with the manifest's training identities as classes."""
    from dgnet.profiles import model_config as profile_model

    return profile_model(params, int(frame.loc[frame["split"] == "train", "person_id"].nunique()))


def file_md5(path: Path) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def model_fingerprint(path: Path) -> str:
    """A hash of a model file's kind, config and weights, not of its bytes (other savers differ in bytes)."""
    import hashlib

    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256(json.dumps({k: payload.get(k) for k in ("kind", "model_config")},
                                       sort_keys=True, default=str).encode())
    for name, tensor in sorted(payload.get("state_dict", {}).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def work_dir(workspace: Path, kind: str, key: Mapping[str, Any]) -> Path:
    """`checkpoints/<kind>-<hash of key>`: a run's checkpoints. Not a DVC output (DVC deletes those before
    a stage runs) and keyed by all the run depends on, so that `dvc repro` resumes only the same run."""
    import hashlib

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return workspace / CHECKPOINT_ROOT / f"{_slug(kind)}-{digest}"


def hold_run_locks(folders: Any, what: str) -> contextlib.ExitStack:
    """The run locks of `folders` (dgnet.training.runlock) in an ExitStack; RunLockedError naming the
    holder (and none held) when another live run has one."""
    from dgnet.training.runlock import run_lock

    stack = contextlib.ExitStack()
    try:
        for folder in folders:
            stack.enter_context(run_lock(folder, what))
    except BaseException:
        stack.close()
        raise
    return stack


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "run"


def remove_work_dirs(workspace: Path, prefix: str) -> None:
    """Delete `checkpoints/<prefix>-*`: the finished run's and those of abandoned configurations of the
    same run, but not one that a live run holds (dgnet.training.runlock)."""
    from dgnet.training.runlock import locked_by_another

    root, prefix = workspace / CHECKPOINT_ROOT, _slug(prefix)
    for folder in root.glob(f"{prefix}-*") if root.is_dir() else ():
        if folder.is_dir() and re.fullmatch(rf"{re.escape(prefix)}-[0-9a-f]{{12}}", folder.name):
            if locked_by_another(folder):  # another configuration's run, live in this workspace
                continue
            shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty


def interrupt_on_sigterm() -> None:
    """SIGTERM (a killed `dvc repro`) as KeyboardInterrupt: `tracked_run` then ends the run KILLED."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, handler)


def stage_main(name: str, interrupted: str = "re-run to resume from the last checkpoint"
               ) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """A stage's `main`: MLflow quiet, SIGTERM an interrupt, a DgnetError printed as
    `stages/<name>.py: error: ...` with its exit code, never a traceback."""
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            quiet_mlflow()
            interrupt_on_sigterm()
            try:
                return main(argv)
            except DgnetError as exc:
                print(f"stages/{name}.py: error: {exc}", file=sys.stderr)
                return exc.exit_code
            except KeyboardInterrupt:
                print(f"stages/{name}.py: interrupted; {interrupted}", file=sys.stderr)
                return 130
        return run
    return decorate


@dataclass(frozen=True)
class StageInputs:
    """The validated data and the open store a tracked stage runs with."""

    workspace: Path
    params: dict[str, Any]
    mlflow: MlflowConfig  # params `mlflow` with its defaults
    manifest: Path
    manifest_md5: str
    frame: Any  # the validated manifest
    uri: str
    client: Any
    experiment_id: str

    def data_params(self) -> dict[str, Any]:
        train = self.frame[self.frame["split"] == "train"]
        return {"profile": self.params.get("profile"), "data.manifest": str(self.manifest),
                "data.manifest_md5": self.manifest_md5, "data.train_images": len(train),
                "data.train_ids": int(train["person_id"].nunique())}


def open_inputs(workspace: Path, params: Params) -> StageInputs:
    """Read the validated manifest, then reach the tracking store (a quick check) and its experiment."""
    manifest = manifest_path(params.values, workspace)
    frame = read_manifest(manifest, report_path(params.values, workspace))
    uri = tracking_uri()
    client = connect(uri)
    experiment_id = ensure_experiment(client, params.mlflow.experiment, artifact_location(uri))
    return StageInputs(workspace, params.values, params.mlflow, manifest, file_md5(manifest), frame, uri,
                       client, experiment_id)

