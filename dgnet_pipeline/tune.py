"""`dgnet tune` (and `python -m dgnet_pipeline.tune`, the DVC entry tuning/dvc.yaml): an Optuna study of
DG-Net's loss weights, every trial a short training run tracked in MLflow.

What is searched (params `tune.space`): lambda_prim (`primary_max`), the fine-grained alpha
(`fine_alpha`), the image reconstruction weight (`recon_image`, which also sets
`recon_image_positive`: the paper weights both reconstructions alike), the code reconstruction
maximum (`code_max`) and the cross-identity id weight (`id_generated`). Each trial trains the
`tune.base` section (default `train`) changed by `tune.train` (fewer iterations, evaluations to
prune on, deterministic) with the sampled weights, and scores the final `tune.metric` (mAP).

What trials train and score on (dgnet_pipeline/tune_data.py): never the benchmark's query/gallery split.
`tune.validation_fraction` of the training identities (seeded by `tune.validation_seed`) are held
out and split into query and gallery by camera as the test protocol does (dgnet.data.splits); the
trials train on the other training ids and score on those. A guard refuses any frame handed to a
trial or to the teacher that holds a test image or identity. The trials' teacher is trained on the
tuning-train split too (params `teacher`, deterministic, cached in outputs/tuning/), since the
pipeline's teacher has seen the held-out ids. The tuned weights are benchmarked once on the test
split, by `dvc repro` after `dgnet tune --apply`.

How it repeats and resumes:
- TPESampler seeded per trial from (seed, trial number), one worker, deterministic CPU training:
  the same seed gives the same trials, params and values. Seeding per trial (instead of once per
  process) also means a resumed study never redraws the random start-up points it already tried.
- Storage: SQLite at the repository root by default (`optuna.db`), or any SQLAlchemy URL (e.g.
  postgresql+psycopg://...) for many workers. Re-running the same command continues the study until
  it has `n_trials` finished (complete or pruned) trials. Workers may all start at the same moment on
  a new database: they open the storage, the study and its MLflow parent run one at a time, under a
  start-up lock (`startup_lock`), and the creation of Optuna's tables is retried when it loses a race.
- A trial stopped by Ctrl-C / SIGTERM, or by the tracking store going away, is failed and re-queued
  with the same weights at once; one left RUNNING by a killed worker is failed once its heartbeat is
  older than `grace_period` and re-queued by RetryHeartbeatStaleTrialCallback (the successor of
  RetryFailedTrialCallback, deprecated since Optuna 4.9). Checkpoints live in
  checkpoints/tune-<study>-<hash of the configuration>/, so the re-queued trial resumes where the
  first attempt stopped; they are deleted when a trial ends. A worker that has nothing left to run
  waits (one grace period at most) for trials running elsewhere and re-runs those whose worker died,
  so no trial is left RUNNING, even in a study that already has its `n_trials`.
- A study remembers a hash of its settings (space, training config, data, validation split, teacher
  recipe, seed): resuming it with other settings is refused (use another study name).
- Each worker prints a line when a trial starts (`tune: trial 2 re-runs trial 0 (same weights),
  resuming at iteration 14` for a re-run) and when it ends (state, value, seconds).

MLflow (dgnet_pipeline/tune_tracking.py): one parent run per study (found again on resume; tag and param
`score_split` = validation, params `tune.validation.*`: fraction, seed, ids and images), one child
run per trial attempt with the sampled weights, losses and evaluations (`val/mAP`, ...: validation
figures), and one per tuning-teacher seed when it is trained; a re-run's run and the runs of
the attempts it replaces point at each other (`optuna.retry_of`, `optuna.rerun_as`). The parent gets
the best weights and value, the optimisation history, intermediate values and parameter importances
as PNG images, and trials.csv.

The best weights go to params/tuned.yaml (params.yaml's layout); `dgnet tune --apply
params/tuned.yaml` copies them into params.yaml's `train.schedule`, after which `dvc repro` retrains.

Exit codes: 0 done; 1 a test image in the data handed to a trial; 2 bad params (a validation
fraction out of (0, 1) or leaving too few ids), missing manifest, unreachable Optuna storage or MLflow
store (at start, or mid-trial after the retries: the trial is re-queued), a study resumed with other
settings, too many failed trials; 130 interrupted (re-run to go on)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dgnet.errors import DgnetError
from dgnet.io import write_json
from dgnet.profiles import STAGE_KEYS, apply_assignments, merge, resolve_params
from dgnet_pipeline.common import load_params, section
from dgnet_pipeline.mlflow_hooks import mlflow_settings
from dgnet_pipeline.mlflow_runs import ensure_experiment, run_tags
from dgnet_pipeline.tracking import (
    TrackingError,
    artifact_location,
    connect,
    quiet_mlflow,
    redact,
    tracking_uri,
    view_hint,
    workspace_root,
)
from dgnet_pipeline.tune_data import (
    SCORE_SPLIT,
    TeacherRun,
    ensure_teacher,
    teacher_recipe,
    tuning_data,
)
from dgnet_pipeline.tune_settings import STAGE, TuneSettings, make_pruner, tune_settings
from dgnet_pipeline.tune_storage import (
    StorageError,
    check_storage,
    open_storage,
    retry_schema_race,
    startup_lock,
    storage_url,
)
from dgnet_pipeline.tune_study import (
    FINISHED,
    Objective,
    PerTrialSeedTPESampler,
    TrialContext,
    check_same_settings,
    finished_trials,
    run_trials,
    settings_key,
)
from dgnet_pipeline.tune_tracking import StudyTracker, best_trial, quiet_optuna, short
from dgnet_pipeline.tune_weights import apply_tuned, write_tuned
from dgnet_pipeline.workspace import (
    file_md5,
    interrupt_on_sigterm,
    manifest_path,
    model_config,
    read_manifest,
    remove_work_dirs,
    report_path,
    train_config,
)

DEFAULT_METRICS = Path("reports/metrics/tune.json")


def prepare(args: argparse.Namespace) -> tuple[TrialContext, dict[str, Any]]:
    """Read and check params and data, carve the validation split, and work out the tuning
    teacher's recipe, before anything is opened or trained. Returns the trials' context and the
    study's settings key (see `settings_key`)."""
    from dgnet.training.trainer import DGNetTrainConfig

    workspace = workspace_root()
    params = resolve_params(load_params(workspace))
    settings = tune_settings(apply_assignments(section(params, STAGE), args.assignments, STAGE), args)
    mlflow_settings(params)  # checked here; read again when tracking starts
    base_values = merge(section(params, settings.base), settings.train)
    base_cfg, _ = train_config(DGNetTrainConfig, base_values, f"tune (from {settings.base})",
                               STAGE_KEYS["train"])
    manifest = manifest_path(params, workspace)
    # The test split's rows are kept for the guard only; its images are never opened.
    data = tuning_data(read_manifest(manifest, report_path(params, workspace)), settings.validation_fraction,
                       settings.validation_seed)
    model_cfg = model_config(params, data.frame)
    manifest_md5 = file_md5(manifest)
    may_need_teacher = base_cfg.needs_teacher() or any("primary_max" in k.targets for k in settings.space)
    recipe = teacher_recipe(section(params, "teacher"), model_cfg, manifest_md5, data.summary) \
        if may_need_teacher else None
    # The teacher enters the study's settings by its recipe (deterministic: the same recipe trains
    # the same weights), so a study is checked before the teacher is trained.
    teacher_key = recipe.folder.name if recipe is not None else None
    data_key = {"manifest": manifest_md5, "validation": data.summary, "teachers": teacher_key,
                "model": model_cfg}
    split = data.summary
    extra = {"profile": params["profile"],
             "stage.section": settings.base,
             "data.manifest": str(manifest), "data.manifest_md5": manifest_md5,
             "data.score_split": SCORE_SPLIT, "data.validation_fraction": split["fraction"],
             "data.validation_seed": split["seed"], "data.validation_ids": split["validation_ids"],
             "data.query_images": split["query_images"], "data.gallery_images": split["gallery_images"],
             "data.train_images": split["train_images"], "data.train_ids": split["train_ids"],
             "optuna.study": settings.study}
    context = TrialContext(workspace, settings, base_values, data, model_cfg, recipe, extra,
                           {"manifest": manifest_md5, "validation": split["query_sha256"],
                            "teachers": teacher_key})
    return context, settings_key(settings, base_values, data_key)


def open_study(url: str, settings: TuneSettings, key: Mapping[str, Any]) -> optuna.Study:
    """The study, created or loaded, whose settings match `key` (see `startup_lock` for workers
    opening it at the same moment)."""
    storage = open_storage(url, settings.heartbeat_interval, settings.grace_period, settings.max_retry)
    try:
        with quiet_optuna():
            study = retry_schema_race(
                optuna.create_study, storage=storage, study_name=settings.study, direction="maximize",
                load_if_exists=True, pruner=make_pruner(settings.pruner),
                sampler=PerTrialSeedTPESampler(settings.seed, n_startup_trials=settings.startup_trials))
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)}: cannot create or load study "
                           f"{settings.study!r}: {short(exc)}") from exc
    check_same_settings(study, key, url)
    return study


def connect_tracker(settings: TuneSettings, workspace: Path) -> StudyTracker:
    """The MLflow side: the store (MLFLOW_TRACKING_URI or mlflow.db) and the experiment; the parent
    run comes once the study is open (`StudyTracker.open_parent`)."""
    uri = tracking_uri()
    client = connect(uri)
    experiment = mlflow_settings(load_params(workspace)).experiment
    experiment_id = ensure_experiment(client, experiment, artifact_location(uri))
    tags = {**run_tags(STAGE, "dgnet", STAGE, "dgnet_pipeline/tune.py", workspace),
            "dgnet.score_split": SCORE_SPLIT}
    return StudyTracker(client, experiment_id, settings.study, tags)


def study_params(settings: TuneSettings, split: Mapping[str, Any]) -> dict[str, Any]:
    """The parent run's params: what fixes a study (MLflow params cannot change; n_trials can),
    the validation split its trials score on included."""
    space = {k.name: {"low": k.low, "high": k.high, "log": k.log, "also": list(k.also)}
             for k in settings.space}
    return {"seed": settings.seed, "metric": settings.metric, "base": settings.base, "train": settings.train,
            "space": space, "sampler.n_startup_trials": settings.startup_trials, "pruner": settings.pruner,
            "score_split": SCORE_SPLIT, "validation": dict(split)}


def run_tune(args: argparse.Namespace) -> int:
    """`dgnet tune`: run (or resume) the study, then write the tuned weights and the metrics."""
    quiet_mlflow()
    interrupt_on_sigterm()
    started = time.monotonic()
    try:
        context, key = prepare(args)
        settings = context.settings
        url = storage_url(settings.storage)
        check_storage(url)  # unreachable storage or tracking store: said at once, before any lock
        tracker = connect_tracker(settings, context.workspace)
        with startup_lock(url, settings.study):
            study = open_study(url, settings, key)
            tracker.open_parent(study, {"tune": study_params(settings, context.data.summary)}, redact(url))
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    done = len(finished_trials(study))
    print(f"tune: study {settings.study!r} in {redact(url)}: {done} of {settings.n_trials} trials finished",
          flush=True)
    status, summarize = "FAILED", True  # summarize: the study in MLflow, at the end
    try:
        if context.teacher is not None:
            context.teachers = ensure_teacher(
                context.teacher, context.data, context.model_cfg, context.workspace,
                TeacherRun(tracker.client, tracker.experiment_id, tracker.parent_id,
                           {**tracker.tags, "optuna.study": settings.study},
                           {**context.extra_params, "teacher.seeds": list(context.teacher.configs)}))
        with quiet_optuna():
            run_trials(study, Objective(context, tracker), settings)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"dgnet tune: interrupted; re-run the same command to continue study {settings.study!r}",
              file=sys.stderr)
        return 130
    except TrackingError as exc:
        summarize = False  # the store is away: the next run summarizes the study (and ends the parent)
        print(f"dgnet tune: error: {exc}\ndgnet tune: study {settings.study!r} stopped; re-run the same "
              f"command once the tracking store is back to continue it", file=sys.stderr)
        return 2
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if summarize:
            best_effort("summarize the study in MLflow", tracker.summarize, study, settings.n_trials)
            best_effort("end the MLflow parent run", tracker.end_parent, study, status)
    return report(study, settings, context.workspace, args, tracker, time.monotonic() - started,
                  context.data.summary)


def best_effort(what: str, step: Any, *args: Any) -> None:
    """A reporting step whose failure is only a warning: it must not hide why the study stopped."""
    try:
        step(*args)
    except Exception as exc:
        print(f"dgnet tune: warning: could not {what}: {short(exc)}", file=sys.stderr)


def report(study: optuna.Study, settings: TuneSettings, workspace: Path, args: argparse.Namespace,
           tracker: StudyTracker, seconds: float, split: Mapping[str, Any]) -> int:
    """The finished study's outputs: params/tuned.yaml, the metrics JSON (which split its values
    come from: `score_split`, `validation`), a summary on stdout."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (*FINISHED, TrialState.FAIL)}
    best = best_trial(study)
    # Every value here is a validation-split figure; the test split's come from `dvc repro` after --apply.
    shown_split = {k: v for k, v in split.items() if k not in ("held_out_ids", "query_sha256")}  # numbers
    summary: dict[str, Any] = {"metric": settings.metric, "score_split": SCORE_SPLIT,
                               "validation": shown_split, **counts}
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        remove_work_dirs(workspace, f"tune-{settings.study}")
    if best is None:
        write_json(workspace / args.metrics, summary)
        print(f"tune: no complete trial in study {settings.study!r} ({counts}); no tuned weights written")
        return 0
    summary.update({"best_value": round(float(best.value), 6), "best_trial": best.number,
                    **{f"best_{k}": v for k, v in best.params.items()}})
    out = settings.out if settings.out.is_absolute() else workspace / settings.out
    exp_line = write_tuned(out, study, settings, best)
    write_json(workspace / args.metrics, summary)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in best.params.items())
    print(f"tune: {counts} after {seconds:.0f} s; best trial {best.number}: {SCORE_SPLIT} {settings.metric} "
          f"{best.value:.4f} with {shown} ({split['validation_ids']} held-out training ids, "
          f"{split['query_images']} queries, {split['gallery_images']} gallery images; the test split's "
          f"figures come from `dvc repro` after --apply)")
    print(f"tuned weights: {out}; use them with `dgnet tune --apply {settings.out}` "
          f"(or: {exp_line}); MLflow parent run {tracker.parent_id} "
          f"(view: {view_hint(tracker.client.tracking_uri)})")
    return 0


def apply_command(args: argparse.Namespace) -> int:
    try:
        params_file = args.params if args.params is not None else workspace_root() / "params.yaml"
        changes = apply_tuned(args.apply, params_file)
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{params_file}: " + ("; ".join(changes) if changes else "no change"))
    print("now `dvc repro` retrains with these weights")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `dgnet tune` and `python -m dgnet_pipeline.tune`; unset ones come from params `tune`."""
    parser.add_argument("--study", default=None, help="study name (params tune.study)")
    parser.add_argument("--n-trials", type=int, default=None,
                        help="run until the study has N finished (complete or pruned) trials")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL of the Optuna storage (default sqlite:///optuna.db at the "
                             "repository root; postgresql+psycopg://user:password@host/db for many workers)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (params tune.seed)")
    parser.add_argument("--heartbeat-interval", type=int, default=None,
                        help="seconds between a running trial's heartbeats (0: none)")
    parser.add_argument("--grace-period", type=int, default=None,
                        help="seconds without a heartbeat after which a trial is dead and re-queued")
    parser.add_argument("--out", type=Path, default=None, help="tuned weights file (params tune.out)")
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS, help="summary JSON (dvc metrics)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of params `tune` (dotted, YAML value), e.g. train.iterations=50")
    parser.add_argument("--apply", type=Path, default=None, metavar="TUNED_YAML",
                        help="instead of tuning: copy the weights of a tuned file into params.yaml")
    parser.add_argument("--params", type=Path, default=None, help="with --apply: the params file to change")
    parser.set_defaults(func=command)
    return parser


def command(args: argparse.Namespace) -> int:
    return apply_command(args) if args.apply is not None else run_tune(args)


def add_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `dgnet tune` on the CLI's sub-parsers (entry point group `dgnet.commands`)."""
    parser = subparsers.add_parser(
        "tune", help="tune DG-Net's loss weights with a resumable Optuna study tracked in MLflow",
        description=__doc__.split("\n\n")[0].replace("\n", " "))
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgnet_pipeline.tune",
                                     description=__doc__.splitlines()[0])
    return command(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
