"""The MLflow side of `dgnet tune` (dgnet_pipeline/tune.py): one parent run per study, one child run per trial
attempt, and the study's summary on the parent (best weights, plots, trials.csv).

- The parent run `tune-<study>` (tags `dgnet.kind=study`, `optuna.study`, `optuna.storage`) is
  recorded in the study (user attribute `dgnet.mlflow_parent_run_id`), so every worker and every
  resumed run of the study finds the same one. Workers starting together on a new study call
  `open_parent` under the storage's start-up lock (dgnet_pipeline/tune.py `startup_lock`): the first creates
  the parent and records it, the others find it.
- A child run `trial-NNNN` per attempt (tags `optuna.study`, `optuna.trial_number`, `optuna.trial_id`,
  `optuna.state`, `dgnet.variant=tune`; the sampled weights as `tune.*` params). It ends FINISHED
  (complete), KILLED (pruned, interrupted, or stopped by a tracking outage) or FAILED. A re-queued
  trial's run is tagged `optuna.retry_of`; the runs of the attempts it replaces end KILLED, tagged
  `optuna.rerun_as`, so no attempt is lost or counted twice.
- The parent gets the best weights and value as `best/...` metrics (they change as a study grows,
  which MLflow params may not), trial counts, Optuna's plots as PNG images, and trials.csv.

MLflow failures surface as TrackingError (dgnet_pipeline.tracking), whose message names the store.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dgnet.errors import DgnetError
from dgnet_pipeline.mlflow_hooks import MlflowHooks
from dgnet_pipeline.mlflow_runs import tracked_run
from dgnet_pipeline.tracking import TrackingError, redact, short

VARIANT = "tune"
# Study user attribute: the study's MLflow parent run.
PARENT_ATTR = "dgnet.mlflow_parent_run_id"


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Heartbeats, retries and the matplotlib plots are marked experimental; the warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """The stored view of a running trial (its system attributes say whether it is a retry)."""
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next(t for t in running if t.number == trial.number)


def retry_history(trial: optuna.Trial) -> list[int]:
    """The numbers of the earlier attempts this trial re-runs (oldest first; empty for a new trial)."""
    with quiet_optuna():
        return RetryHeartbeatStaleTrialCallback.retry_history(frozen(trial))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None while there is none (all pruned or failed)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


class StudyTracker:
    """The study's MLflow runs: the parent (found again when the study is resumed) and its children."""

    def __init__(self, client: Any, experiment_id: str, study_name: str, tags: Mapping[str, str]) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.tags = dict(tags)  # run_tags(): git commit, DVC stage; computed once per process
        self.parent_id: str | None = None

    @contextlib.contextmanager
    def _store(self, what: str) -> Iterator[None]:
        """MLflow client errors as TrackingError naming the store (the stage exits 2 with it, not
        with a traceback); MLflow's own HTTP retries have run by then."""
        try:
            yield
        except DgnetError:
            raise
        except Exception as exc:
            raise TrackingError(f"MLflow at {redact(str(self.client.tracking_uri))}: could not {what}: "
                                f"{short(exc)}") from exc

    def _search(self, filters: str) -> list[Any]:
        query = f"tags.`optuna.study` = '{self.study_name}' and {filters}"
        return list(self.client.search_runs([self.experiment_id], query, max_results=1000))

    def open_parent(self, study: optuna.Study, params: Mapping[str, Any], storage: str) -> str:
        """The study's parent run, set RUNNING: the one the study remembers; else, for a study that
        already has trials, the newest parent tagged with its name and storage; else a new one,
        recorded in the study.

        Find-or-create is not atomic here (Optuna's user attributes are upserts, and MLflow start
        times are client clocks, so neither can elect one run among workers racing to create one):
        the caller holds the storage's start-up lock. Where there is none (a backend without
        locks), a worker that finds another's parent recorded after creating its own deletes its own.
        """
        with self._store("open the study's parent run"):
            return self._open_parent(study, params, storage)

    def _open_parent(self, study: optuna.Study, params: Mapping[str, Any], storage: str) -> str:
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id and not self._exists(run_id):
            run_id = None
        if run_id is None and study.trials and "'" not in storage:
            found = self._search(f"tags.`dgnet.kind` = 'study' and tags.`optuna.storage` = '{storage}'")
            run_id = max(found, key=lambda r: r.info.start_time).info.run_id if found else None
        if run_id is None:
            tags = {**self.tags, "dgnet.kind": "study", "dgnet.variant": VARIANT,
                    "optuna.study": self.study_name, "optuna.storage": storage}
            own = self.client.create_run(self.experiment_id, run_name=f"tune-{self.study_name}",
                                         tags=tags).info.run_id
            if PARENT_ATTR not in study.user_attrs:
                study.set_user_attr(PARENT_ATTR, own)
            run_id = study.user_attrs.get(PARENT_ATTR, own)
            if run_id == own:
                MlflowHooks(self.client, run_id).log_params(params)
            else:  # another worker recorded its parent first
                self.client.delete_run(own)
        else:
            self.client.update_run(run_id, status="RUNNING")
            if study.user_attrs.get(PARENT_ATTR) != run_id:
                study.set_user_attr(PARENT_ATTR, run_id)
        self.parent_id = run_id
        return run_id

    def _exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # another store, or deleted
            return False

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, sampled: Mapping[str, float], history: Sequence[int] = ()
                  ) -> Iterator[str]:
        """A child run for `trial` (which re-runs the attempts numbered `history`), ended FINISHED
        (complete), KILLED (pruned, interrupted, stopped by the tracking store) or FAILED; tag
        `optuna.state` says which in Optuna's words."""
        tags = {**self.tags, "dgnet.kind": "dgnet", "dgnet.variant": VARIANT, "optuna.study": self.study_name,
                "optuna.trial_number": str(trial.number), "optuna.trial_id": str(trial._trial_id)}
        if history:
            tags["optuna.retry_of"] = str(history[-1])
        with tracked_run(self.client, self.experiment_id, f"trial-{trial.number:04d}", tags,
                         parent_run_id=self.parent_id, killed_by=(optuna.TrialPruned, TrackingError)) as run:
            run_id = run.info.run_id
            trial.set_user_attr("mlflow_run_id", run_id)
            with self._store(f"retire the earlier attempts of trial {trial.number}"):
                self.retire(history, trial.number)
            hooks = MlflowHooks(self.client, run_id)
            hooks.log_params({f"tune.{k}": v for k, v in sampled.items()})
            state = "FAIL"
            try:
                yield run_id
                state = "COMPLETE"
            except optuna.TrialPruned:
                state = "PRUNED"
                raise
            finally:
                if state == "COMPLETE":
                    hooks.set_tags({"optuna.state": state})  # retried; a failure re-queues the trial
                else:  # one attempt: the store may be why the trial stopped; a re-run re-tags the run
                    try:
                        self.client.set_tag(run_id, "optuna.state", state)
                    except Exception as exc:
                        print(f"tune: warning: could not tag MLflow run {run_id} {state}: {short(exc, 160)}",
                              file=sys.stderr)

    def retire(self, numbers: Sequence[int], rerun_as: int) -> None:
        """The runs of earlier attempts of a re-queued trial: KILLED if a dead worker (or a tracking
        outage) left them RUNNING, and tagged with the trial that re-runs them, so no attempt is lost
        or counted twice."""
        for number in numbers:
            for run in self._search(f"tags.`optuna.trial_number` = '{number}' and "
                                    f"tags.`mlflow.parentRunId` = '{self.parent_id}'"):
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.set_tag(run.info.run_id, "optuna.state", "FAIL")
                self.client.set_tag(run.info.run_id, "optuna.rerun_as", str(rerun_as))

    def summarize(self, study: optuna.Study, n_trials: int) -> None:
        """Best weights and value (metrics `best/...`, step = finished trials), trial counts, the
        optimisation history, intermediate values and parameter importances (PNG), trials.csv."""
        trials = study.get_trials(deepcopy=False)
        counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
        step = counts["complete"] + counts["pruned"]
        metrics = {f"trials/{name}": n for name, n in counts.items() if name != "waiting"}
        best = best_trial(study)
        if best is not None:
            metrics.update({"best/value": best.value, "best/trial_number": best.number,
                            **{f"best/{k}": v for k, v in best.params.items()}})
            self.client.set_tag(self.parent_id, "optuna.best_trial", str(best.number))
        hooks = MlflowHooks(self.client, self.parent_id)
        hooks.on_iteration(step, metrics)
        hooks.flush()
        self.client.set_tag(self.parent_id, "optuna.n_trials", str(n_trials))
        frame = study.trials_dataframe()
        if len(frame):
            self.client.log_text(self.parent_id, frame.to_csv(index=False), "trials.csv")
        for name, figure in study_plots(study):
            self.client.log_figure(self.parent_id, figure, f"plots/{name}.png")

    def end_parent(self, study: optuna.Study, status: str) -> None:
        """End the parent run, unless another worker still runs a trial of the study."""
        if status != "FINISHED" and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        self.client.set_terminated(self.parent_id, status)


def study_plots(study: optuna.Study) -> Iterator[tuple[str, Any]]:
    """Optuna's matplotlib plots of the study (Agg backend: no display needed), each figure closed
    after use. Parameter importances need two complete trials; a plot that cannot be drawn is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    wanted = [("optimization_history", plots.plot_optimization_history, 1),
              ("intermediate_values", plots.plot_intermediate_values, 1),
              ("param_importances", plots.plot_param_importances, 2)]
    for name, plot, needed in wanted:
        if complete < needed:
            continue
        try:
            with quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            print(f"tune: plot {name} skipped: {short(exc)}", file=sys.stderr)
            continue
        figure = axes.figure if hasattr(axes, "figure") else np.ravel(axes)[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        try:
            yield name, figure
        finally:
            plt.close(figure)
