"""DVC stage `evaluate`: benchmark every trained model and write the report.

Models: the teacher(s) of the teacher stage, DG-Net of the train stage, and every ablation found
under outputs/ablations/<variant>/seed<S>/model.pt, each seed of a variant evaluated and summarised
(mean, spread, the paired difference to DG-Net with its 95% interval). For each
(dgnet.evaluation.benchmark): re-ID at the query alphas of params `evaluate.alphas` and with the
fine-grained half alone, optional k-reciprocal re-ranking, swap fidelity against the synthetic
ground truth, self-reconstruction L1, each beside its trivial baselines (copy a donor unchanged; the
mean training image; a 4x blur), SSIM diversity, FID (skipped and said so without local Inception
weights), a ranked-retrieval picture and a swap grid.
Beside the models, a re-ID baseline with no learning (HSV histograms of three stripes): how far
clothing colour alone gets on this data.
The model-independent generation references are computed once and shared by the DG-Net models.
Cross-domain: every dataset of params `evaluate.targets` (`- {name: duke, data: /datasets/DukeMTMC-reID,
format: dukemtmc}`; format detected when left out) is validated with the same rules (pandas engine;
report in reports/cross_domain/) and every model is ranked on its query/gallery at its main setting.

Writes reports/benchmark.md (one table, honest notes), reports/metrics/eval.json (for `dvc metrics`;
`cross_domain/<target>/<model>` there for the targets),
reports/plots/cmc/<model>.csv (for `dvc plots`), reports/figures/*.png, and one MLflow run
`evaluate` holding all metrics and the report with its pictures.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from dgnet.data.manifest import FORMATS
from dgnet.data.validated import validate_dataset
from dgnet.errors import ConfigError, DgnetError
from dgnet.evaluation.benchmark import (
    DEFAULT_ALPHAS,
    DEFAULT_NUM_SWAPS,
    ModelBenchmark,
    benchmark_model,
    markdown_table,
)
from dgnet.evaluation.evaluate import evaluate_reid
from dgnet.evaluation.handcrafted import STRIPES, colour_histogram_reid
from dgnet.evaluation.pictures import cmc_plot, save
from dgnet.evaluation.spread import mean_std, paired_difference
from dgnet.io import atomic_path, write_json
from dgnet.models.persist import load_model
from stages.common import load_params, parse_seeds, resolve, teacher_paths
from stages.mlflow_hooks import finite, flatten, mlflow_settings
from stages.mlflow_runs import ensure_experiment, run_tags, tracked_run
from stages.tracking import artifact_location, connect, quiet_mlflow, tracking_uri, view_hint, workspace_root
from stages.workspace import manifest_path, read_manifest, report_path

REPORT = Path("reports/benchmark.md")
METRICS = Path("reports/metrics/eval.json")
PLOTS = Path("reports/plots/cmc")
FIGURES = Path("reports/figures")
CROSS_DOMAIN = Path("reports/cross_domain")  # the targets' validation reports
DGNET = Path("outputs/dgnet")
ABLATIONS = Path("outputs/ablations")
TRIVIAL_SIZE = (128, 64)  # the colour-histogram baseline's input: Market-1501's crop size
KNOWN_KEYS = {"alphas", "rerank", "num_swaps", "ranked_queries", "batch_size", "device",
              "inception_weights", "seed", "targets"}
TARGET_KEYS = {"name", "data", "format"}
REID_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    values = params.get("evaluate") or {}
    unknown = sorted(set(values) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"evaluate: unknown key(s) {unknown}; known keys are {sorted(KNOWN_KEYS)}")
    num_swaps = int(values.get("num_swaps", DEFAULT_NUM_SWAPS))
    if num_swaps < 2:  # SSIM diversity needs two images; the report's figures want >= 500
        raise ConfigError(f"evaluate.num_swaps: must be at least 2, got {num_swaps}")
    return {"alphas": tuple(float(a) for a in values.get("alphas", DEFAULT_ALPHAS)),
            "rerank": bool(values.get("rerank", False)), "num_swaps": num_swaps,
            "ranked_queries": int(values.get("ranked_queries", 6)),
            "batch_size": int(values.get("batch_size", 64)), "device": str(values.get("device", "cpu")),
            "inception_weights": values.get("inception_weights"), "seed": int(values.get("seed", 0)),
            "targets": _targets(values.get("targets"))}


def _targets(values: Any) -> tuple[dict[str, Any], ...]:
    """params `evaluate.targets`: a list of {name, data, format (optional)}, names unique."""
    if values is None:
        return ()
    if not isinstance(values, list):
        raise ConfigError("evaluate.targets: must be a list of {name, data, format} entries")
    targets, seen = [], set()
    for k, entry in enumerate(values):
        where = f"evaluate.targets[{k}]"
        if not isinstance(entry, dict) or not {"name", "data"} <= set(entry):
            raise ConfigError(f"{where}: must be a mapping with `name` and `data` (and optionally `format`)")
        unknown = sorted(set(entry) - TARGET_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(TARGET_KEYS)}")
        name = str(entry["name"])
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name) or name in seen:
            raise ConfigError(f"{where}: name {name!r} must be unique and made of letters, digits, `_`, `-`")
        fmt = entry.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise ConfigError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        seen.add(name)
        targets.append({"name": name, "data": str(entry["data"]), "format": fmt})
    return tuple(targets)


def cross_domain(models: dict[str, Path], results: list[ModelBenchmark], workspace: Path,
                 settings: dict[str, Any], changes: dict[str, dict[str, Any]] | None = None,
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """target -> model -> re-ID metrics on the target's query/gallery, each model at its main setting
    (the `setting` key says which). Each target is validated first with the same rules."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for target in settings["targets"]:
        data = resolve(workspace, target["data"])
        report = workspace / CROSS_DOMAIN / f"{target['name']}_validation.json"
        frame = validate_dataset(data, target["format"], report=report)
        out[target["name"]] = {}
        for result in results:
            model, info = load_model(models[result.name], map_location=settings["device"])
            setting = main_setting(result, changes)
            alpha = float(setting.removeprefix("alpha_")) if setting.startswith("alpha_") else None
            metrics = evaluate_reid(model, frame, (info.config.image_height, info.config.image_width),
                                    device=settings["device"], batch_size=settings["batch_size"],
                                    query_alpha=alpha)
            out[target["name"]][result.name] = {"setting": setting, **{k: metrics[k] for k in REID_KEYS}}
    return out


def cross_domain_section(cross: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The models ranked on the other datasets of `evaluate.targets`, one table."""
    if not cross:
        return []
    lines = ["## Cross-domain", "",
             "Each model, trained on the data above, ranked on the query/gallery of another dataset "
             "(params `evaluate.targets`), at its main setting. Percentages.", "",
             "| target | model | setting | rank-1 | mAP | mINP |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for target, per_model in cross.items():
        for name, m in per_model.items():
            figures = " | ".join(f"{100 * m[k]:.1f}" for k in ("rank1", "mAP", "mINP"))
            lines.append(f"| {target} | {name} | {m['setting']} | {figures} |")
    return [*lines, ""]


SEEDED_NAME = re.compile(r"(?P<variant>.+)_seed(?P<seed>\d+)")


def variant_of(name: str) -> tuple[str, int]:
    """`dgnet_seed1` -> ("dgnet", 1): a run's variant and seed (a name without a seed: seed 0)."""
    match = SEEDED_NAME.fullmatch(name)
    return (match["variant"], int(match["seed"])) if match else (name, 0)


def _by_seed(paths: list[Path]) -> list[Path]:
    """Model files in folders seed<S>, in the order of S (seed10 after seed2)."""
    return sorted(paths, key=lambda p: int(p.parent.name.removeprefix("seed") or 0))


def models_to_evaluate(workspace: Path, params: dict[str, Any]) -> dict[str, Path]:
    """<variant>_seed<S> -> model file: each teacher of the teacher stage, and DG-Net and each ablation
    of params `ablations` for each seed of params `train.seeds`, from outputs/dgnet/seed<S> and
    outputs/ablations/<name>/seed<S>. Exactly those: a folder of a variant or seed no longer in
    params is left out, and said so; a missing one is an error that names its stage."""
    models = {f"teacher_{path.parent.name}": path for path in _by_seed(teacher_paths(workspace))}
    seeds = parse_seeds(params.get("train") or {}, "train")
    ablations = [name.removeprefix("ablation_") for name in ablation_changes(params)]
    expected = {f"dgnet_seed{seed}": (workspace / DGNET / f"seed{seed}" / "model.pt", f"train@{seed}")
                for seed in seeds}
    expected |= {f"ablation_{name}_seed{seed}": (workspace / ABLATIONS / name / f"seed{seed}" / "model.pt",
                                                 f"ablation@{name}-{seed}")
                 for name in ablations for seed in seeds}
    missing = [(path, stage) for path, stage in expected.values() if not path.is_file()]
    if missing:
        listed = ", ".join(f"{path} (stage {stage})" for path, stage in missing)
        raise DgnetError(f"missing model: {listed}; run those stages first (`dvc repro`)")
    stale = sorted({path.parent for path in [*(workspace / DGNET).glob("seed*/model.pt"),
                                             *(workspace / ABLATIONS).glob("*/seed*/model.pt")]}
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


def main_setting(result: ModelBenchmark, changes: dict[str, dict[str, Any]] | None = None) -> str:
    """The setting the paper reports: query alpha 0.5 for DG-Net, the baseline for a teacher, and the
    primary half alone (alpha 0) for a model trained without fine-grained mining (that head is
    untrained there)."""
    variant, _ = variant_of(result.name)
    fine_trained = (changes or {}).get(variant, {}).get("schedule.fine_mining") is not False
    if not fine_trained and "alpha_0" in result.reid:
        return "alpha_0"
    return "alpha_0.5" if "alpha_0.5" in result.reid else next(iter(result.reid))


def trained_as(result: ModelBenchmark, changes: dict[str, dict[str, Any]]) -> str:
    """What a run's variant is: the teacher, the full model, or the keys an ablation changes."""
    variant, _ = variant_of(result.name)
    if result.kind == "teacher":
        return "baseline: the teacher alone"
    if variant in changes:
        return ", ".join(f"`{k}: {str(v).lower()}`" for k, v in changes[variant].items())
    return "full DG-Net"


def group_by_variant(results: list[ModelBenchmark]) -> dict[str, dict[int, ModelBenchmark]]:
    """variant -> seed -> its run, variants in the order they come."""
    groups: dict[str, dict[int, ModelBenchmark]] = {}
    for result in results:
        variant, seed = variant_of(result.name)
        groups.setdefault(variant, {})[seed] = result
    return groups


SUMMARY_KEYS = ("mAP", "rank1")
FULL = "dgnet"


def seed_summaries(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]] | None = None,
                   ) -> dict[str, dict[str, Any]]:
    """Per variant at its main setting: `seeds`, `<k>_mean`, `<k>_std` (sample std; left out for one
    seed) and `<k>_per_seed` for mAP and rank-1; and, for every variant but the full model,
    `vs_dgnet`: its paired difference to DG-Net over the seeds both have (dgnet.evaluation.spread:
    mean, 95% Student-t interval, verdict; the teacher of seed S is paired with DG-Net seed S, which
    learnt from it)."""
    groups = group_by_variant(results)
    out: dict[str, dict[str, Any]] = {}
    for variant, runs in groups.items():
        setting = main_setting(next(iter(runs.values())), changes)
        seeds = sorted(runs)
        entry: dict[str, Any] = {"setting": setting, "seeds": seeds}
        for key in SUMMARY_KEYS:
            values = {s: runs[s].reid[setting][key] for s in seeds}
            mean, std = mean_std(list(values.values()))
            entry[f"{key}_mean"] = mean
            if std is not None:
                entry[f"{key}_std"] = std
            entry[f"{key}_per_seed"] = {f"seed{s}": v for s, v in values.items()}
        out[variant] = entry
    if FULL in out:
        for variant, entry in out.items():
            if variant == FULL:
                continue
            entry["vs_dgnet"] = {}
            for key in SUMMARY_KEYS:
                diff = paired_difference(
                    {int(s[4:]): v for s, v in entry[f"{key}_per_seed"].items()},
                    {int(s[4:]): v for s, v in out[FULL][f"{key}_per_seed"].items()})
                if diff is not None:
                    entry["vs_dgnet"][key] = {"seeds": list(diff.seeds), "mean": diff.mean, "low": diff.low,
                                              "high": diff.high, "verdict": diff.verdict}
    return out


def _pm(entry: dict[str, Any], key: str) -> str:
    mean, std = 100 * entry[f"{key}_mean"], entry.get(f"{key}_std")
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {100 * std:.1f}"


def _interval(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "-"
    if diff["low"] is None:
        return f"{100 * diff['mean']:+.1f} (one seed)"
    return f"{100 * diff['mean']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"


def variants_table(summaries: dict[str, dict[str, Any]], groups: dict[str, dict[int, ModelBenchmark]],
                   changes: dict[str, dict[str, Any]]) -> list[str]:
    """One row per variant: mean ± std over seeds, the per-seed mAP, the paired difference to DG-Net."""
    lines = ["| variant | trained as | seeds | setting | rank-1 | mAP | mAP per seed "
             "| paired Δ mAP vs dgnet [95% t] | verdict (vs dgnet) |",
             "| --- | --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
    for variant, entry in summaries.items():
        how = trained_as(next(iter(groups[variant].values())), changes)
        per_seed = ", ".join(f"{100 * v:.1f}" for v in entry["mAP_per_seed"].values())
        diff = entry.get("vs_dgnet", {}).get("mAP")
        verdict = "-" if diff is None else diff["verdict"]
        lines.append(f"| {variant} | {how} | {len(entry['seeds'])} | {entry['setting']} "
                     f"| {_pm(entry, 'rank1')} | {_pm(entry, 'mAP')} | {per_seed} | {_interval(diff)} "
                     f"| {verdict} |")
    return lines


def ablation_table(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]],
                   trivial: dict[str, float] | None = None) -> list[str]:
    """One row per model at its main setting: what the variant changes, re-ID and generation; last,
    the trivial colour-histogram baseline (no learning) when given."""
    lines = ["| model | trained as | setting | rank-1 | mAP | swap L1 (person) | swap SSIM (person) "
             "| recon L1 | SSIM diversity |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    for result in results:
        setting = main_setting(result, changes)
        m, gen = result.reid[setting], result.generation
        how = trained_as(result, changes)
        lines.append(f"| {result.name} | {how} | {setting} | {100 * m['rank1']:.1f} | {100 * m['mAP']:.1f} "
                     f"| {fmt(gen.get('swap_l1_person'))} | {fmt(gen.get('swap_ssim_person'))} "
                     f"| {fmt(gen.get('recon_l1'))} | {fmt(gen.get('ssim_diversity_generated'))} |")
    if trivial is not None:
        how = f"trivial baseline: HSV histograms of {STRIPES} stripes, cosine, no learning"
        lines.append(f"| colour_histogram | {how} | - | {100 * trivial['rank1']:.1f} "
                     f"| {100 * trivial['mAP']:.1f} | - | - | - | - |")
    return lines


# (figure label, key in `generation`, lower is better, baselines: (label, path in `generation.baselines`)).
BASELINE_FIGURES = (
    ("recon L1", "recon_l1", True,
     (("the mean image", ("recon_mean_image",)), ("blur4", ("recon_blur4",)))),
    ("swap L1 (person)", "swap_l1_person", True,
     (("copy-structure", ("copy_structure", "swap_l1_person")),
      ("copy-appearance", ("copy_appearance", "swap_l1_person")))),
    ("swap SSIM (person)", "swap_ssim_person", False,
     (("copy-structure", ("copy_structure", "swap_ssim_person")),
      ("copy-appearance", ("copy_appearance", "swap_ssim_person")))),
)


def _baseline_value(baselines: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = baselines
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _figures_and_baselines(result: ModelBenchmark) -> list[tuple[str, float, bool, list[tuple[str, float]]]]:
    """(label, the model's value, lower is better, [(baseline, value)]) for each figure that has both."""
    gen = result.generation
    baselines = gen.get("baselines") or {}
    out = []
    for label, key, lower, candidates in BASELINE_FIGURES:
        value = gen.get(key)
        found = [(name, v) for name, path in candidates
                 if (v := _baseline_value(baselines, path)) is not None]
        if isinstance(value, int | float) and found:
            out.append((label, float(value), lower, found))
    return out


def baseline_verdict(result: ModelBenchmark) -> str:
    """One plain sentence: does each generation figure beat each of its trivial baselines?

    e.g. "dgnet: swap L1 (person) 0.150 beats copy-structure 0.161 and copy-appearance 0.160; swap SSIM
    (person) 0.400 does not beat copy-structure 0.446 or copy-appearance 0.300." Computed from the numbers.
    """
    return _verdict(result.name, _figures_and_baselines(result))


def _verdict(name: str, figures: list[tuple[str, float, bool, list[tuple[str, float]]]]) -> str:
    clauses = []
    for label, value, lower, found in figures:
        beaten = [(n, v) for n, v in found if (value < v if lower else value > v)]
        missed = [(n, v) for n, v in found if (n, v) not in beaten]
        won = " and ".join(f"{n} {v:.3f}" for n, v in beaten)
        lost = " or ".join(f"{n} {v:.3f}" for n, v in missed)
        if not missed:
            clauses.append(f"{label} {value:.3f} beats {won}")
        elif not beaten:
            clauses.append(f"{label} {value:.3f} does not beat {lost}")
        else:
            clauses.append(f"{label} {value:.3f} beats {won} but not {lost}")
    if not clauses:
        return f"{name}: no generation figure with a baseline to compare."
    return f"{name}: " + "; ".join(clauses) + "."


def _variant_figures(runs: list[ModelBenchmark]) -> list[tuple[str, float, bool, list[tuple[str, float]]]]:
    """`_figures_and_baselines` with each figure the mean over the variant's seeds (the baselines do
    not depend on the model: the same test images and pairs for every run)."""
    per_run = [{label: value for label, value, _, _ in _figures_and_baselines(r)} for r in runs]
    out = []
    for label, _, lower, found in _figures_and_baselines(runs[0]):
        values = [figures[label] for figures in per_run if label in figures]
        out.append((label, sum(values) / len(values), lower, found))
    return out


def baseline_section(results: list[ModelBenchmark]) -> list[str]:
    """Per DG-Net variant, its generation figures (the mean over its seeds) beside the trivial
    baselines, and the verdict."""
    groups = {v: list(runs.values()) for v, runs in group_by_variant(results).items()
              if all(r.kind != "teacher" and r.generation for r in runs.values())}
    if not groups:
        return []
    gen = next(iter(groups.values()))[0].generation
    lines = [
        "## Generator against trivial baselines", "",
        "Each figure beside what a generator that learnt nothing would score, on the same images: "
        f"self-reconstruction G(E_s(x), E_a(x)) on {gen.get('recon_num_images', '?')} test images against "
        "the mean training image and the image blurred (area down-sampling 4x, bilinear back); swaps on "
        f"the same {gen.get('num_swaps', '?')} test pairs against copying the structure donor or the "
        "appearance donor unchanged. L1 on [0, 1], lower is better; SSIM higher is better. A variant of "
        "several seeds: the mean over them.", "",
    ]
    columns = ("the mean image", "blur4", "copy-structure", "copy-appearance")
    for variant, runs in groups.items():
        name = variant if len(runs) == 1 else f"{variant} (mean of {len(runs)} seeds)"
        figures = _variant_figures(runs)
        lines += [f"### {name}", "",
                  "| figure | generator | mean image | blur4 | copy-structure | copy-appearance |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, value, lower, found in figures:
            values = dict(found)
            cells = " | ".join(f"{values[c]:.3f}" if c in values else "-" for c in columns)
            lines.append(f"| {label} ({'lower' if lower else 'higher'} is better) | {value:.3f} | {cells} |")
        lines += [""]
        if "swap_fidelity_skipped" in runs[0].generation:
            lines += [f"Swap baselines skipped: {runs[0].generation['swap_fidelity_skipped']}.", ""]
        lines += [_verdict(name, figures), ""]
    return lines


def first_seeds(results: list[ModelBenchmark]) -> list[ModelBenchmark]:
    """Each variant's run of its lowest seed: the one the pictures and the CMC figure show."""
    return [runs[min(runs)] for runs in group_by_variant(results).values()]


FLIPPED = {"beats": "loses to", "loses": "beats"}
AGAINST_FULL = {"beats": "beats the full model", "loses": "loses to the full model",
                "indistinguishable at this budget": "is indistinguishable from the full model at this budget",
                "untested (one seed: no interval)": "is untested against the full model (one seed)"}


def _real_diversity(results: list[ModelBenchmark]) -> str:
    """The real images' SSIM diversity: one figure when the models' samples agree (the same pairs)."""
    values = {r.name: f"{r.generation['ssim_diversity_real']:.3f}" for r in results
              if "ssim_diversity_real" in r.generation}
    if len(set(values.values())) <= 1:
        return f"real images: {next(iter(values.values()), '-')}"
    return "real images: " + ", ".join(f"{name} {value}" for name, value in values.items())


def seed_notes(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Plain sentences from the seed summaries: each ablation against the full model, DG-Net against
    its teacher, and what the spread rests on."""
    full = summaries.get(FULL)
    if full is None:
        return ["- No full DG-Net model to compare with."]
    notes = []
    for variant, entry in summaries.items():
        diff = entry.get("vs_dgnet", {}).get("mAP")
        if diff is None:
            continue
        seeds = len(diff["seeds"])
        figures = (f"mAP {_pm(entry, 'mAP')} vs dgnet {_pm(full, 'mAP')}; paired difference "
                   f"{_interval(diff)} over {seeds} seed{'s' if seeds > 1 else ''}")
        if variant.startswith("teacher"):
            verdict = FLIPPED.get(diff["verdict"], "is indistinguishable from"
                                  if diff["low"] is not None else "is untested against (one seed)")
            notes.append(f"- **DG-Net {verdict} its teacher**: {figures} (teacher - dgnet).")
        else:
            said = AGAINST_FULL.get(diff["verdict"], f"{diff['verdict']} against the full model")
            notes.append(f"- **{variant} {said}**: {figures}.")
    counts = sorted({len(entry["seeds"]) for entry in summaries.values()})
    if counts == [1]:
        notes.append("- Each variant is one training run (one seed): the gaps above have no interval; "
                     "set `train.seeds` and `teacher.seeds` to two or more seeds to measure the spread.")
    else:
        notes.append(f"- Seeds per variant: {', '.join(map(str, counts))}. A seed changes the "
                     "initialisation, the data order and augmentation, and (train.teachers: paired) the "
                     "teacher; all runs share one test split. With 2 seeds t_0.975 = 12.71: only large "
                     "gaps are resolved.")
    return notes


def write_report(path: Path, results: list[ModelBenchmark], settings: dict[str, Any],
                 manifest: Path, seconds: float, changes: dict[str, dict[str, Any]] | None = None,
                 trivial: dict[str, float] | None = None,
                 cross: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """reports/benchmark.md: the tables, what beats what (said plainly), and the pictures."""
    changes = changes or {}
    groups = group_by_variant(results)
    summaries = seed_summaries(results, changes)
    notes = seed_notes(summaries)
    fid_notes = {r.generation.get("fid_skipped") for r in results if r.generation.get("fid_skipped")}
    lines = [
        "# Benchmark report", "",
        f"Data: `{manifest}`. Re-ID protocol: docs/method.md section 5 (junk = same id and camera, "
        "or id -1; Market-1501 AP convention). Percentages. "
        "`alpha_x`: the query's fine-grained half weighted by x "
        "(the paper reports alpha 0.5); `fine_only`: the fine-grained half alone. Swap columns: "
        "G(s_j, a_i) against the exact synthetic render of i's clothes in j's structure, inside the "
        "person mask (L1 on [0, 1], lower is better; SSIM higher is better). SSIM diversity: mean SSIM "
        f"between random pairs of generated images (lower = more diverse; {_real_diversity(results)}).", "",
        "## Variants over seeds", "",
        "Each variant at its main setting (alpha 0.5; alpha 0 where the fine-grained head is not trained; "
        "the teacher's single feature): mean ± sample standard deviation over its seeds, and its paired "
        "difference to the full model over the seeds both have (variant - dgnet, mAP points; 95% Student-t "
        "interval of the per-seed differences, df = seeds - 1). Verdict: beats or loses when the interval "
        "excludes 0, else indistinguishable at this budget. The teacher of seed S is paired with DG-Net "
        "seed S, which learnt from it.", "",
        *variants_table(summaries, groups, changes), "",
        "## Every run", "",
        "Each run at its variant's main setting.", "",
        *ablation_table(results, changes, trivial), "",
        *baseline_section(results),
        *cross_domain_section(cross or {}),
        "## Every setting", "",
        markdown_table(results),
        "## Notes", "", *notes,
        *[f"- FID skipped: {reason}" for reason in sorted(fid_notes)],
        f"- Evaluated in {seconds:.0f} s on {settings['device']}"
        + (" with k-reciprocal re-ranking rows (`+rerank`)." if settings["rerank"] else "."), "",
        "## Pictures", "", "![CMC](figures/eval_cmc.png)", "",
    ]
    shown = first_seeds(results)
    if len(shown) < len(results):
        lines += ["Pictures of each variant's first seed (the others are in reports/figures/).", ""]
    for result in shown:
        for picture in result.pictures:
            lines += [f"### {result.name}: {picture.replace('_', ' ')}", "",
                      f"![{result.name} {picture}](figures/eval_{result.name}_{picture}.png)", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    quiet_mlflow()
    started = time.monotonic()
    try:
        workspace = workspace_root()
        params = load_params(workspace)
        settings = _settings(params)
        tracking = mlflow_settings(params)
        manifest = manifest_path(params, workspace)
        frame = read_manifest(manifest, report_path(params, workspace))
        models = models_to_evaluate(workspace, params)
        changes = ablation_changes(params)
        data_root = resolve(workspace, (params.get("data") or {}).get("root", "data/synthetic"))
        uri = tracking_uri()
        client = connect(uri)
        experiment_id = ensure_experiment(client, tracking["experiment"], artifact_location(uri))
    except DgnetError as exc:
        print(f"stages.evaluate: error: {exc}", file=sys.stderr)
        return exc.exit_code

    tags = run_tags("evaluate", "evaluation", "all", "stages/evaluate.py", workspace)
    try:
        with tracked_run(client, experiment_id, "evaluate", tags) as run:
            references: dict[tuple[Any, ...], Any] = {}  # pairs, ground truth, baselines: once per size
            results = [
                benchmark_model(path, frame, name=name, device=settings["device"], alphas=settings["alphas"],
                                rerank=settings["rerank"], batch_size=settings["batch_size"],
                                ranked_queries=settings["ranked_queries"], data_root=data_root,
                                num_swaps=settings["num_swaps"],
                                inception_weights=settings["inception_weights"], seed=settings["seed"],
                                references=references)
                for name, path in models.items()
            ]
            trivial = colour_histogram_reid(frame, TRIVIAL_SIZE)
            cross = cross_domain(models, results, workspace, settings, changes)
            write_outputs(workspace, results, settings, manifest, time.monotonic() - started, changes,
                          trivial, cross)
            metrics = {f"{r.name}/{k}": v for r in results for k, v in finite(r.flat_metrics()).items()}
            metrics |= {f"{variant}/summary/{k.replace('.', '/')}": v
                        for variant, entry in seed_summaries(results, changes).items()
                        for k, v in finite(flatten(entry)).items()}
            metrics |= {f"colour_histogram/baseline/{k}": trivial[k] for k in ("rank1", "mAP", "mINP")}
            metrics |= {f"cross_domain/{t}/{name}/{k}": m[k] for t, per_model in cross.items()
                        for name, m in per_model.items() for k in REID_KEYS}
            client.log_batch(run.info.run_id, metrics=_metric_entities(metrics))
            client.log_param(run.info.run_id, "models", ", ".join(models))
            for path in [workspace / REPORT, *sorted((workspace / FIGURES).glob("eval_*.png"))]:
                client.log_artifact(run.info.run_id, str(path), artifact_path="report")
    except DgnetError as exc:
        print(f"stages.evaluate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for result in results:
        setting = main_setting(result, changes)
        m = result.reid[setting]
        print(f"{result.name:>24} ({setting}): rank-1 {100 * m['rank1']:.1f}  mAP {100 * m['mAP']:.1f}")
    print(f"report: {workspace / REPORT}; MLflow run {run.info.run_id} (view: {view_hint(uri)})")
    return 0


def _metric_entities(metrics: dict[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key.replace("+", "_"), value, now, 0) for key, value in metrics.items()]


def _finite_tree(values: dict[str, Any]) -> dict[str, Any]:
    """The finite numbers of a nested dict, rounded to 6 digits (counts stay ints), nested dicts kept
    (empty ones dropped); strings, None, NaN and infinities left out."""
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


def write_outputs(workspace: Path, results: list[ModelBenchmark], settings: dict[str, Any],
                  manifest: Path, seconds: float, changes: dict[str, dict[str, Any]] | None = None,
                  trivial: dict[str, float] | None = None,
                  cross: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """Metrics JSON, CMC CSVs, pictures, then the report (which links the pictures)."""
    keys = ("rank1", "rank5", "rank10", "mAP", "mINP")
    summary: dict[str, Any] = {}
    if trivial is not None:
        summary["colour_histogram"] = {"baseline": {k: round(trivial[k], 6) for k in keys}}
    for result in results:
        summary[result.name] = {setting: {k: round(m[k], 6) for k in keys}
                                for setting, m in result.reid.items()}
        gen = _finite_tree(result.generation)
        if gen:
            summary[result.name]["generation"] = gen
        for setting, curve in result.cmc.items():
            table = pd.DataFrame({"rank": range(1, len(curve) + 1), "cmc": curve})
            main = main_setting(result, changes)
            name = f"{result.name}.csv" if setting == main else f"{result.name}_{setting}.csv"
            with atomic_path(workspace / PLOTS / name) as tmp:
                table.to_csv(tmp, index=False)
        for picture, image in result.pictures.items():
            save(image, workspace / FIGURES / f"eval_{result.name}_{picture}.png")
    for variant, entry in seed_summaries(results, changes).items():
        summary.setdefault(variant, {})["summary"] = _rounded(entry)
    if cross:
        summary["cross_domain"] = {t: {name: {k: round(m[k], 6) for k in REID_KEYS}
                                       for name, m in per_model.items()} for t, per_model in cross.items()}
    write_json(workspace / METRICS, summary)
    curves = {r.name: r.cmc[main_setting(r, changes)] for r in first_seeds(results)}
    save(cmc_plot(curves, max_rank=20, title="CMC (each model at its main setting)"),
         workspace / FIGURES / "eval_cmc.png")
    write_report(workspace / REPORT, results, settings, manifest, seconds, changes, trivial, cross)


if __name__ == "__main__":
    sys.exit(main())
