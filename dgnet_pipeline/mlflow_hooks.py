"""The MLflow training hook (a `dgnet.training.hooks.TrainingHooks`: dgnet/ never imports mlflow).

It logs params and tags at the start, iteration logs in batches, evaluations, swap grids as images,
and at the end the model as an MLflow pyfunc model (dgnet_pipeline.mlflow_model), registered as a new
version under an alias: `mlflow.pyfunc.load_model("models:/dgnet@current")`. MLflow retries a server
that does not answer (dgnet_pipeline.tracking.HTTP_RETRIES)."""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from dgnet.config import MlflowConfig, check_alias
from dgnet.errors import DgnetError
from dgnet.training.hooks import TrainingHooks, TrainingResult
from dgnet_pipeline.tracking import TrackingError, is_transient, redact, short

DEFAULT_ALIAS = MlflowConfig.alias  # "current"
MODEL_DESCRIPTIONS = {
    "dgnet": "DG-Net (Zheng et al., CVPR 2019): person re-ID by joint discriminative and generative "
             "learning, trained by the dgnet pipeline. Its appearance encoder gives the re-ID feature.",
    "teacher": "The re-ID baseline DG-Net learns soft labels from (primary feature learning): a ResNet-50 "
               "trained with the identity loss, trained by the dgnet pipeline.",
}
MODEL_FORMAT = (" One version per training run and seed; aliases `current-seed<S>` (each seed's latest) "
                "and `current` (the first seed's). Each version is an MLflow pyfunc model: images "
                "(N, 3, H, W) float32, ImageNet-normalised, in; flip-averaged features out "
                "(`mlflow models serve`); it holds model.pt (`dgnet extract --model models:/NAME@current`) "
                "and config.json.")
EVAL_PREFIX, MODEL_ARTIFACT_DIR = "eval/", "model"
# MLflow's limits (mlflow.utils.validation): a longer key is rejected, a longer param value cut without
# a mark (and tags cut by MLflow itself). MlflowClient.log_batch splits a batch; METRICS_PER_FLUSH
# bounds the buffer.
MAX_PARAM_VALUE, MAX_KEY, METRICS_PER_FLUSH = 6000, 250, 1000
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def flatten(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    flat: dict[str, Any] = {}
    for key, value in config.items():
        value = asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) and value
                    else {f"{prefix}{key}": value})
    return flat


def safe_key(key: str) -> str:
    """A metric/param key MLflow accepts: odd characters become `_`, no `..` or leading `/`."""
    key = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    if posixpath.normpath(key) != key:
        key = "/".join(part for part in key.split("/") if part not in ("", ".", "..")) or "_"
    return key[:MAX_KEY]


def param_value(value: Any) -> str:
    """A param's text: strings as they are, everything else as JSON; at most 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class MlflowHooks(TrainingHooks):
    """Log one training loop into MLflow run `run_id`: iteration logs batched every `flush_every_s`
    seconds; `registered_model=None` skips the registry. A write that fails with the store unavailable
    raises TrackingError, which stops the loop (its checkpoints stay on disk)."""

    def __init__(self, client: Any, run_id: str, *, registered_model: str | None = None,
                 alias: str | None = DEFAULT_ALIAS, variant: str | None = None,
                 extra_params: Mapping[str, Any] | None = None, version_tags: Mapping[str, Any] | None = None,
                 eval_prefix: str = EVAL_PREFIX, flush_every_s: float = 10.0) -> None:
        self.client, self.run_id, self.registered_model = client, run_id, registered_model
        self.alias = check_alias(alias) if alias else None
        self.variant, self.extra_params = variant, dict(extra_params or {})
        self.version_tags = {k: str(v) for k, v in (version_tags or {}).items()}
        self.eval_prefix, self.flush_every_s = eval_prefix, flush_every_s
        self.model_version: Any = None  # the registered ModelVersion, after on_end
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._evaluated_at: set[int] = set()
        self.checkpoint: tuple[int, Path] | None = None  # the newest checkpoint this run wrote
        self.gone = False  # the store went away: close() then writes nothing more

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`; TrackingError naming the store (and the kept checkpoint) if it fails."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            uri = redact(str(self.client.tracking_uri))
            if not is_transient(exc):
                raise TrackingError(f"MLflow at {uri} refused to {what} (run {self.run_id}): "
                                    f"{short(exc)}") from exc
            self.gone = True
            kept = "the checkpoints written so far are kept" if self.checkpoint is None else (
                f"the last checkpoint, {self.checkpoint[1]} (iteration {self.checkpoint[0]}), is kept")
            raise TrackingError(f"MLflow at {uri} failed to {what} (run {self.run_id}), the store is "
                                f"unavailable: {short(exc)}. Training stopped; {kept}: re-run the same "
                                f"command once the store is back to resume from the newest") from exc

    def _metrics(self, values: Mapping[str, Any], step: int, prefix: str = "") -> list[Any]:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(safe_key(f"{prefix}{k}"), number, now, int(step))
                for k, v in values.items() if (number := _number(v)) is not None]

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._call("log metrics", self.client.log_batch, self.run_id, metrics=pending, synchronous=True)
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(safe_key(k), param_value(v)) for k, v in flatten(params).items()]
        if items:
            self._call("log params", self.client.log_batch, self.run_id, params=items, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call("set tags", self.client.log_batch, self.run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    @contextlib.contextmanager
    def logging_warnings(self) -> Iterator[None]:
        """Warnings shown in the block are printed as ever and also become the tag `dgnet.warnings`."""
        shown: list[str] = []
        with warnings.catch_warnings():
            show = warnings.showwarning

            def record(message: Any, *args: Any, **kwargs: Any) -> None:
                shown.append(str(message))
                show(message, *args, **kwargs)

            warnings.showwarning = record
            try:
                yield
            finally:
                if shown and not self.gone:
                    self.set_tags({"dgnet.warnings": "\n".join(dict.fromkeys(shown))})

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        self.kind = kind
        self.log_params({**self.extra_params, **config})
        self.set_tags({"dgnet.kind": kind, "dgnet.start_iteration": start_iteration,
                       "dgnet.resumed": str(start_iteration > 0).lower(),
                       **({"dgnet.variant": self.variant} if self.variant else {})})

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        self._pending.extend(self._metrics(logs, iteration))
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due or len(self._pending) >= METRICS_PER_FLUSH:
            self.flush()

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        self._pending.extend(self._metrics(metrics, iteration, self.eval_prefix))
        self._evaluated_at.add(int(iteration))
        self.flush()

    def on_image(self, iteration: int, name: str, image: Any) -> None:
        key = re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", name) or "image"
        # Stored as images/<key>+step+<iteration>+timestamp+...png (+ a small .webp the UI shows).
        self._call(f"log image {key!r}", self.client.log_image, self.run_id, image, key=key,
                   step=int(iteration), synchronous=True)

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        self.checkpoint = (int(iteration), Path(path))  # written before this hook is called
        self.set_tags({"dgnet.checkpoint": str(path), "dgnet.checkpoint_iteration": int(iteration)})

    def on_end(self, result: TrainingResult) -> None:
        final = {k: v for k, v in result.metrics.items() if _number(v) is not None}
        if final and int(result.iterations) not in self._evaluated_at:
            self._pending.extend(self._metrics(final, result.iterations, self.eval_prefix))
        self.flush()
        self.set_tags({"dgnet.iterations": int(result.iterations)})
        self.log_model(result)  # the model file itself goes to the run's artifacts, model/

    def close(self) -> None:
        """Write what is still buffered (in a `finally`); nothing once the store has gone."""
        if self._pending and not self.gone:
            self.flush()

    def log_model(self, result: TrainingResult) -> Any:
        """`model/`: the MLflow pyfunc model (the model file inside) and its card; registered if set."""
        from dgnet_pipeline.mlflow_model import save_pyfunc_model

        path = Path(result.model_path)
        if not path.is_file():
            raise DgnetError(f"the {result.kind} model {path} does not exist after training")
        with tempfile.TemporaryDirectory(prefix="dgnet-mlflow-model-") as tmp:
            save_pyfunc_model(path, Path(tmp) / MODEL_ARTIFACT_DIR)
            self._call("log the model", self.client.log_artifacts, self.run_id, f"{tmp}/{MODEL_ARTIFACT_DIR}",
                       MODEL_ARTIFACT_DIR)
        card = {"kind": result.kind, "iterations": int(result.iterations), "model_file": path.name,
                "metrics": result.metrics, "config": result.config}
        self._call("log the model config", self.client.log_dict, self.run_id, json.loads(
            json.dumps(card, default=str)), f"{MODEL_ARTIFACT_DIR}/config.json")
        return self.register(result) if self.registered_model else None

    def register(self, result: TrainingResult) -> Any:
        from mlflow.exceptions import MlflowException

        name = self.registered_model
        description = MODEL_DESCRIPTIONS.get(result.kind, result.kind) + MODEL_FORMAT
        try:
            self.client.create_registered_model(name, description=description)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise TrackingError(f"MLflow at {self.client.tracking_uri}: cannot create registered "
                                    f"model {name!r}: {short(exc)}") from exc
            if self.client.get_registered_model(name).description != description:  # an older text
                self._call("describe the registered model", self.client.update_registered_model, name,
                           description)
        run = self._call("read the run", self.client.get_run, self.run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}"
        tags = {"dgnet.kind": result.kind, "dgnet.iterations": str(result.iterations),
                **{f"metric.{k}": f"{v:.6g}" for k, v in finite(result.metrics).items()},
                **self.version_tags, **({"dgnet.variant": self.variant} if self.variant else {})}
        seed, mean_ap = self.version_tags.get("dgnet.seed"), _number(result.metrics.get("mAP"))
        what = ", ".join([self.variant or result.kind, *([f"seed {seed}"] if seed is not None else []),
                          f"{result.iterations} iterations",
                          *([f"mAP {100 * mean_ap:.1f}"] if mean_ap is not None else [])])
        self.model_version = self._call(f"register a version of {name!r}", self.client.create_model_version,
                                        name, source, run_id=self.run_id, tags=tags, description=what)
        if self.alias:
            self.set_alias(self.alias)
        self.set_tags({"dgnet.registered_model": name, "dgnet.model_version": self.model_version.version})
        return self.model_version

    def set_alias(self, alias: str) -> None:
        alias = check_alias(alias)
        self._call(f"set alias {alias!r} of {self.registered_model!r}",
                   self.client.set_registered_model_alias, self.registered_model, alias,
                   self.model_version.version)


def finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: n for k, v in values.items() if (n := _number(v)) is not None and math.isfinite(n)}


class LastImage(TrainingHooks):
    """The newest picture of each name (the stage writes the last swap grid next to the model)."""

    def __init__(self) -> None:
        self.images: dict[str, Any] = {}

    def on_image(self, iteration: int, name: str, image: Any) -> None:
        self.images[name] = image.copy()


def metrics_summary(metrics: Mapping[str, Any]) -> dict[str, float]:
    """rank1, mAP, mAP_finite, mINP of a run's last evaluation, for `dvc metrics`."""
    clean = finite(metrics)
    return {name: round(clean[name], 6) for name in ("rank1", "mAP", "mAP_finite", "mINP") if name in clean}
