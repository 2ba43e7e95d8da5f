"""The `evaluate` stage (stages/evaluate.py runs it): benchmark every trained model, write the report.

Models: the teachers, DG-Net and every ablation of params, each seed (<variant>_seed<S>), benchmarked
by dgnet.evaluation.benchmark (re-ID at params `evaluate.alphas`, swap fidelity, reconstruction,
diversity, FID, pictures; the model-independent generation references computed once), beside an HSV
colour-histogram baseline with no learning (how far clothing colour alone gets). Cross-domain: every
dataset of params `evaluate.targets` is validated with the same rules (report in reports/cross_domain/)
and every model ranked on it at its main setting.

Writes reports/benchmark.md (headline first), reports/metrics/eval.json (every figure),
reports/metrics/summary/<variant>[_seed<S>].json (`dvc metrics show`), reports/plots/cmc.csv and
losses.csv (`dvc plots show`: each variant, the mean over its seeds), reports/figures/*.png, and one
MLflow run `evaluate`: all metrics, the report with its pictures, the headline as its description."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dgnet.config import EvaluateConfig
from dgnet.data.validated import validate_dataset
from dgnet.errors import DgnetError
from dgnet.evaluation.benchmark import ModelBenchmark, benchmark_model
from dgnet.evaluation.evaluate import evaluate_reid
from dgnet.evaluation.handcrafted import colour_histogram_reid
from dgnet.evaluation.pictures import cmc_plot, save
from dgnet.io import atomic_path, write_json
from dgnet.models.persist import load_model
from dgnet.profiles import Params
from dgnet.training.hooks import mean_loss_curves
from dgnet_pipeline.common import LOSS_CURVE, parse_seeds, resolve, stage_paths, teacher_paths
from dgnet_pipeline.evaluate_report import (
    first_seeds,
    group_by_variant,
    headline,
    main_setting,
    seed_summaries,
    variant_of,
    write_report,
)
from dgnet_pipeline.mlflow_hooks import finite, flatten
from dgnet_pipeline.mlflow_runs import run_tags, tracked_run
from dgnet_pipeline.tracking import view_hint
from dgnet_pipeline.workspace import open_inputs

CROSS_DOMAIN = Path("reports/cross_domain")  # the targets' validation reports


@dataclass(frozen=True)
class Paths:
    """What the stage reads and writes, relative to the workspace (`of_dvc`: dvc.yaml's `vars: paths`)."""

    teachers: Path  # the teacher stage's output (its teachers.json)
    dgnet: Path  # seed<S>/model.pt
    ablations: Path  # <name>/seed<S>/model.pt
    report: Path
    metrics: Path
    summary: Path
    plots: Path
    figures: Path
    losses: Path  # the training runs' loss curves, the mean over each variant's seeds

    @classmethod
    def of_dvc(cls, script: str | Path) -> Paths:
        paths = stage_paths(script)
        return cls(paths["teacher"], paths["dgnet"], paths["ablations"], paths["report"],
                   paths["metrics"] / "eval.json", paths["summary"], paths["plots"], paths["figures"],
                   paths["losses"])


TRIVIAL_SIZE = (128, 64)  # the colour-histogram baseline's input: Market-1501's crop size
REID_KEYS = ("rank1", "rank5", "rank10", "mAP", "mAP_finite", "mINP")
SUMMARY = ("rank1", "mAP", "mAP_finite", "mINP")  # what `dvc metrics show` prints, per variant and seed
# Settings of params `evaluate` that benchmark_model takes as they are.
BENCHMARK_KEYS = ("device", "alphas", "rerank", "batch_size", "ranked_queries", "num_swaps",
                  "inception_weights", "seed")


def _settings(settings: EvaluateConfig) -> EvaluateConfig:
    """params `evaluate:` on its device ("auto" -> cpu / cuda:0)."""
    from dgnet.training.runtime import select_device

    return dataclasses.replace(settings, device=str(select_device(settings.device)))


def cross_domain(models: dict[str, Path], results: list[ModelBenchmark], workspace: Path,
                 settings: EvaluateConfig, changes: dict[str, dict[str, Any]] | None = None,
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """target -> model -> re-ID metrics on the target's query/gallery, each model at its main setting
    (the `setting` key says which). Each target is validated first with the same rules."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for target in settings.targets:
        data = resolve(workspace, target.data)
        report = workspace / CROSS_DOMAIN / f"{target.name}_validation.json"
        frame = validate_dataset(data, target.format, report=report)
        out[target.name] = {}
        for result in results:
            model, info = load_model(models[result.name], map_location=settings.device)
            setting = main_setting(result, changes)
            alpha = float(setting.removeprefix("alpha_")) if setting.startswith("alpha_") else None
            metrics = evaluate_reid(model, frame, (info.config.image_height, info.config.image_width),
                                    device=settings.device, batch_size=settings.batch_size,
                                    query_alpha=alpha)
            out[target.name][result.name] = {"setting": setting, **{k: metrics[k] for k in REID_KEYS}}
    return out


def models_to_evaluate(workspace: Path, params: dict[str, Any], paths: Paths) -> dict[str, Path]:
    """<variant>_seed<S> -> model file: each teacher, DG-Net and each ablation of params for each seed of
    `train.seeds`. A folder no longer in params is left out (and said so); a missing one is an error
    naming its stage."""
    teachers = sorted(teacher_paths(workspace, paths.teachers),  # seed10 after seed2
                      key=lambda p: int(p.parent.name.removeprefix("seed") or 0))
    models = {f"teacher_{path.parent.name}": path for path in teachers}
    seeds = parse_seeds(params.get("train") or {}, "train")
    ablations = [name.removeprefix("ablation_") for name in ablation_changes(params)]
    dgnet, ablation = workspace / paths.dgnet, workspace / paths.ablations
    expected = {f"dgnet_seed{seed}": (dgnet / f"seed{seed}" / "model.pt", f"train@{seed}") for seed in seeds}
    expected |= {f"ablation_{name}_seed{seed}": (ablation / name / f"seed{seed}" / "model.pt",
                                                 f"ablation@{name}-{seed}")
                 for name in ablations for seed in seeds}
    missing = [(path, stage) for path, stage in expected.values() if not path.is_file()]
    if missing:
        listed = ", ".join(f"{path} (stage {stage})" for path, stage in missing)
        raise DgnetError(f"missing model: {listed}; run those stages first (`dvc repro`)")
    stale = sorted({path.parent for path in [*(workspace / paths.dgnet).glob("seed*/model.pt"),
                                             *(workspace / paths.ablations).glob("*/seed*/model.pt")]}
                   - {path.parent for path, _ in expected.values()})
    if stale:
        print(f"evaluate: not benchmarked (not in params train.seeds / ablations): "
              f"{', '.join(str(p) for p in stale)}")
    return models | {name: path for name, (path, _) in expected.items()}


def ablation_changes(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`ablation_<name>` -> the flattened keys params `ablations.<name>` changes in `train`."""
    ablations = params.get("ablations") or {}
    return {f"ablation_{name}": flatten(changes) for name, changes in ablations.items()
            if isinstance(changes, dict)}


def evaluate_models(workspace: Path, params: Params, paths: Paths) -> int:
    """Benchmark every model of params, write the outputs, log one MLflow run."""
    started = time.monotonic()
    settings, changes = _settings(params.evaluate), ablation_changes(params.values)
    models = models_to_evaluate(workspace, params.values, paths)
    data_root = resolve(workspace, params.data.root)
    inputs = open_inputs(workspace, params)
    tags = run_tags("evaluate", "evaluation", "all", "stages/evaluate.py", workspace)
    with tracked_run(inputs.client, inputs.experiment_id, "evaluate", tags) as run:
        references: dict[tuple[Any, ...], Any] = {}  # pairs, ground truth, baselines: once per size
        results = [benchmark_model(path, inputs.frame, name=name, data_root=data_root,
                                   references=references, **{k: getattr(settings, k) for k in BENCHMARK_KEYS})
                   for name, path in models.items()]
        trivial = colour_histogram_reid(inputs.frame, TRIVIAL_SIZE)
        cross = cross_domain(models, results, workspace, settings, changes)
        # The manifest as params names it (not the clone's absolute path): the report reads alike anywhere.
        manifest = Path(params.validate.manifest)
        write_outputs(workspace, results, settings, manifest, time.monotonic() - started, changes, trivial,
                      cross, paths=paths)
        write_loss_curves(workspace / paths.losses, models)
        # Every figure as a metric, the headline as the description, the report and pictures as artifacts.
        from mlflow.entities import Metric

        metrics = {f"{r.name}/{k}": v for r in results for k, v in finite(r.flat_metrics()).items()}
        metrics |= {f"{variant}/summary/{k.replace('.', '/')}": v
                    for variant, entry in seed_summaries(results, changes).items()
                    for k, v in finite(flatten(entry)).items()}
        metrics |= {f"colour_histogram/baseline/{k}": trivial[k] for k in REID_KEYS}
        metrics |= {f"cross_domain/{t}/{name}/{k}": m[k] for t, per_model in cross.items()
                    for name, m in per_model.items() for k in REID_KEYS}
        client, run_id, now = inputs.client, run.info.run_id, int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k.replace("+", "_"), v, now, 0) for k, v in metrics.items()])
        client.set_tag(run_id, "mlflow.note.content", "\n".join(headline(results, changes)))
        client.log_param(run_id, "models", ", ".join(models))
        for path in [workspace / paths.report, *sorted((workspace / paths.figures).glob("eval_*.png"))]:
            client.log_artifact(run_id, str(path), artifact_path="report")
    for result in results:
        setting = main_setting(result, changes)
        m = result.reid[setting]
        print(f"{result.name:>24} ({setting}): rank-1 {100 * m['rank1']:.1f}  mAP {100 * m['mAP']:.1f}"
              f"  mAP_finite {100 * m['mAP_finite']:.1f}")
    print(f"report: {workspace / paths.report}; MLflow run {run.info.run_id} (view: {view_hint(inputs.uri)})")
    return 0


def _finite_tree(values: dict[str, Any]) -> dict[str, Any]:
    """The finite numbers of a nested dict, rounded to 6 digits (ints stay), empty dicts dropped."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            if sub := _finite_tree(value):
                out[key] = sub
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
        elif key in (number := finite({key: value})):
            out[key] = round(number[key], 6)
    return out


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    """A seed summary for JSON: floats to 6 digits, None (no interval for one seed) left out."""
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v
            for k, v in values.items() if v is not None}


def write_summary(folder: Path, results: list[ModelBenchmark], changes: dict[str, dict[str, Any]] | None
                  ) -> None:
    """folder/<variant>.json (the mean over its seeds) and <variant>_seed<S>.json at its main setting."""
    for variant, runs in group_by_variant(results).items():
        per_seed = {seed: run.reid[main_setting(run, changes)] for seed, run in runs.items()}
        for seed, m in per_seed.items():
            write_json(folder / f"{variant}_seed{seed}.json", {k: round(m[k], 4) for k in SUMMARY})
        write_json(folder / f"{variant}.json",
                   {k: round(sum(m[k] for m in per_seed.values()) / len(per_seed), 4) for k in SUMMARY})


def cmc_table(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]] | None) -> pd.DataFrame:
    """rank, cmc, model: each variant's mean CMC at its main setting (long format: one `dvc plots` chart)."""
    tables = []
    for variant, runs in group_by_variant(results).items():
        curves = [run.cmc[main_setting(run, changes)] for run in runs.values()]
        mean = [sum(values) / len(values) for values in zip(*curves, strict=True)]
        tables.append(pd.DataFrame({"rank": range(1, len(mean) + 1), "cmc": mean, "model": variant}))
    return pd.concat(tables, ignore_index=True)


def write_loss_curves(path: Path, models: dict[str, Path]) -> None:
    """iteration, model, loss, value: the training loss curves kept beside the models, the mean over each
    variant's seeds; only the header when no model has one (imported models)."""
    curves: dict[str, list[Path]] = {}
    for name, model in models.items():
        if (model.parent / LOSS_CURVE).is_file():
            curves.setdefault(variant_of(name)[0], []).append(model.parent / LOSS_CURVE)
    with atomic_path(path) as tmp:
        (mean_loss_curves(curves) if curves else pd.DataFrame(columns=["iteration", "model", "loss", "value"])
         ).to_csv(tmp, index=False)


def write_outputs(workspace: Path, results: list[ModelBenchmark], settings: EvaluateConfig,
                  manifest: Path, seconds: float, changes: dict[str, dict[str, Any]] | None = None,
                  trivial: dict[str, float] | None = None,
                  cross: dict[str, dict[str, dict[str, Any]]] | None = None, *, paths: Paths) -> None:
    """Metrics JSON, CMC CSVs, pictures, then the report (which links the pictures)."""
    summary: dict[str, Any] = {}
    if trivial is not None:
        summary["colour_histogram"] = {"baseline": {k: round(trivial[k], 6) for k in REID_KEYS}}
    for result in results:
        summary[result.name] = {setting: {k: round(m[k], 6) for k in REID_KEYS}
                                for setting, m in result.reid.items()}
        if gen := _finite_tree(result.generation):
            summary[result.name]["generation"] = gen
        for picture, image in result.pictures.items():
            save(image, workspace / paths.figures / f"eval_{result.name}_{picture}.png")
    for variant, entry in seed_summaries(results, changes).items():
        summary.setdefault(variant, {})["summary"] = _rounded(entry)
    if cross:
        summary["cross_domain"] = {t: {name: {k: round(m[k], 6) for k in REID_KEYS}
                                       for name, m in per_model.items()} for t, per_model in cross.items()}
    write_json(workspace / paths.metrics, summary)
    write_summary(workspace / paths.summary, results, changes)
    with atomic_path(workspace / paths.plots) as tmp:
        cmc_table(results, changes).to_csv(tmp, index=False)
    curves = {r.name: r.cmc[main_setting(r, changes)] for r in first_seeds(results)}
    save(cmc_plot(curves, max_rank=20, title="CMC (each model at its main setting)"),
         workspace / paths.figures / "eval_cmc.png")
    write_report(workspace / paths.report, results, settings, manifest, seconds, changes, trivial, cross)

