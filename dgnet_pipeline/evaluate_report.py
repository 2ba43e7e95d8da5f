"""reports/benchmark.md: the variants over their seeds (mean, spread, each ablation's paired difference to
the full model with its 95% interval and a verdict), every run at every setting, the generator's
figures beside their trivial baselines, and plain sentences for what the numbers do and do not show."""

from __future__ import annotations

import re
from functools import reduce
from pathlib import Path
from typing import Any

from dgnet.evaluation.benchmark import ModelBenchmark, markdown_table
from dgnet.evaluation.handcrafted import STRIPES
from dgnet.evaluation.spread import PairedDifference, mean_std, paired_difference, t_quantile_975
from dgnet.io import atomic_path

SEEDED_NAME = re.compile(r"(?P<variant>.+)_seed(?P<seed>\d+)")  # a model's name: <variant>_seed<S>
SUMMARY_KEYS = ("mAP", "mAP_finite", "rank1")
FULL = "dgnet"  # the variant every ablation is compared with
TEACHER = "teacher"  # the variant DG-Net is compared with

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


def cross_domain_section(cross: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    rows = [f"| {target} | {name} | {m['setting']} | "
            + " | ".join(f"{100 * m[k]:.1f}" for k in ("rank1", "mAP", "mAP_finite", "mINP")) + " |"
            for target, per_model in cross.items() for name, m in per_model.items()]
    return ["## Cross-domain", "",
            "Each model, trained on the data above, ranked on the query/gallery of another dataset "
            "(params `evaluate.targets`), at its main setting. Percentages.", "",
            "| target | model | setting | rank-1 | mAP | mAP_finite | mINP |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: |", *rows, ""] if cross else []


def variant_of(name: str) -> tuple[str, int]:
    """`dgnet_seed1` -> ("dgnet", 1): a run's variant and seed (a name without a seed: seed 0)."""
    match = SEEDED_NAME.fullmatch(name)
    return (match["variant"], int(match["seed"])) if match else (name, 0)


def main_setting(result: ModelBenchmark, changes: dict[str, dict[str, Any]] | None = None) -> str:
    """The paper's setting: alpha 0.5 for DG-Net, the teacher's baseline, alpha 0 without fine-grained
    mining (that head is untrained there)."""
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


def seed_summaries(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]] | None = None,
                   ) -> dict[str, dict[str, Any]]:
    """Per variant at its main setting: `seeds`, `<k>_mean`, `<k>_std` (none for one seed), `<k>_per_seed`,
    and `vs_<reference>`: the paired difference over the seeds both have (teacher seed S is paired
    with DG-Net seed S, which learnt from it)."""
    out: dict[str, dict[str, Any]] = {}
    values: dict[str, dict[str, dict[int, float]]] = {}  # variant -> key -> seed -> value
    for variant, runs in group_by_variant(results).items():
        setting = main_setting(next(iter(runs.values())), changes)
        seeds = sorted(runs)
        values[variant] = {key: {s: runs[s].reid[setting][key] for s in seeds} for key in SUMMARY_KEYS}
        entry: dict[str, Any] = {"setting": setting, "seeds": seeds}
        out[variant] = entry
        for key, per_seed in values[variant].items():
            entry[f"{key}_mean"], std = mean_std(list(per_seed.values()))
            if std is not None:
                entry[f"{key}_std"] = std
            entry[f"{key}_per_seed"] = {f"seed{s}": v for s, v in per_seed.items()}
    for variant, entry in out.items():
        if (reference := reference_of(variant)) in out:
            diffs = {key: paired_difference(values[variant][key], values[str(reference)][key])
                     for key in SUMMARY_KEYS}
            entry[f"vs_{reference}"] = {key: _as_dict(d) for key, d in diffs.items() if d is not None}
    return out


def reference_of(variant: str) -> str | None:
    """What a variant is compared with: DG-Net with its teacher, every other variant with DG-Net."""
    return None if variant == TEACHER else TEACHER if variant == FULL else FULL


def _as_dict(diff: PairedDifference) -> dict[str, Any]:
    return {"seeds": list(diff.seeds), "per_seed": list(diff.differences), "mean": diff.mean,
            "low": diff.low, "high": diff.high, "verdict": diff.verdict}


def _pm(entry: dict[str, Any], key: str) -> str:
    mean, std = 100 * entry[f"{key}_mean"], entry.get(f"{key}_std")
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {100 * std:.1f}"


def _interval(diff: dict[str, Any] | None, percent: bool = True) -> str:
    if not diff:
        return "-"
    fmt = (lambda v: f"{100 * v:+.1f}") if percent else (lambda v: f"{v:+.3f}")
    if diff["low"] is None:
        return f"{fmt(diff['mean'])} (one seed)"
    return f"{fmt(diff['mean'])} [{fmt(diff['low'])}, {fmt(diff['high'])}]"


def variants_table(summaries: dict[str, dict[str, Any]], groups: dict[str, dict[int, ModelBenchmark]],
                   changes: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| variant | trained as | seeds | setting | rank-1 | mAP | mAP_finite | mAP per seed "
             "| reference | paired Δ mAP, variant - reference [95% t] | verdict |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- |"]
    for variant, entry in summaries.items():
        how = trained_as(next(iter(groups[variant].values())), changes)
        per_seed = ", ".join(f"{100 * v:.1f}" for v in entry["mAP_per_seed"].values())
        reference = reference_of(variant)
        diff = entry.get(f"vs_{reference}", {}).get("mAP")
        verdict = "-" if diff is None else diff["verdict"]
        lines.append(f"| {variant} | {how} | {len(entry['seeds'])} | {entry['setting']} "
                     f"| {_pm(entry, 'rank1')} | {_pm(entry, 'mAP')} | {_pm(entry, 'mAP_finite')} "
                     f"| {per_seed} | {reference if diff else '-'} | {_interval(diff)} "
                     f"| {verdict} |")
    return lines


def ablation_table(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]],
                   trivial: dict[str, float] | None = None) -> list[str]:
    lines = ["| model | trained as | setting | rank-1 | mAP | mAP_finite | swap L1 (person) "
             "| swap SSIM (person) | recon L1 | SSIM diversity |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results:
        setting = main_setting(result, changes)
        m, gen = result.reid[setting], result.generation
        cells = " | ".join("-" if gen.get(k) is None else f"{gen[k]:.3f}" for k in
                           ("swap_l1_person", "swap_ssim_person", "recon_l1", "ssim_diversity_generated"))
        lines.append(f"| {result.name} | {trained_as(result, changes)} | {setting} | {100 * m['rank1']:.1f} "
                     f"| {100 * m['mAP']:.1f} | {100 * m['mAP_finite']:.1f} | {cells} |")
    if trivial is not None:
        how = f"trivial baseline: HSV histograms of {STRIPES} stripes, cosine, no learning"
        lines.append(f"| colour_histogram | {how} | - | {100 * trivial['rank1']:.1f} "
                     f"| {100 * trivial['mAP']:.1f} | {100 * trivial['mAP_finite']:.1f} | - | - | - | - |")
    return lines


def _figures_and_baselines(result: ModelBenchmark) -> list[tuple[str, float, bool, list[tuple[str, float]]]]:
    """(label, value, lower is better, [(baseline, value)]) for each figure that has both."""
    gen = result.generation
    baselines = gen.get("baselines") or {}
    out = []
    for label, key, lower, candidates in BASELINE_FIGURES:
        value = gen.get(key)
        found = [(name, float(v)) for name, path in candidates
                 if isinstance(v := reduce(lambda d, k: d.get(k) if isinstance(d, dict) else None,
                                           path, baselines), int | float)]
        if isinstance(value, int | float) and found:
            out.append((label, float(value), lower, found))
    return out


def baseline_verdict(result: ModelBenchmark) -> str:
    """"dgnet: swap L1 (person) 0.150 beats copy-structure 0.161 and ...": one sentence per model."""
    return _verdict(result.name, _figures_and_baselines(result))


def _verdict(name: str, figures: list[tuple[str, float, bool, list[tuple[str, float]]]]) -> str:
    clauses = []
    for label, value, lower, found in figures:
        won = " and ".join(f"{n} {v:.3f}" for n, v in found if (value < v if lower else value > v))
        lost = " or ".join(f"{n} {v:.3f}" for n, v in found if not (value < v if lower else value > v))
        said = (f"beats {won}" + (f" but not {lost}" if lost else "")) if won else f"does not beat {lost}"
        clauses.append(f"{label} {value:.3f} {said}")
    if not clauses:
        return f"{name}: no generation figure with a baseline to compare."
    return f"{name}: " + "; ".join(clauses) + "."


def _variant_figures(runs: list[ModelBenchmark]) -> list[tuple[str, float, bool, list[tuple[str, float]]]]:
    """Each figure the mean over the seeds (the baselines are the same images and pairs for every run)."""
    per_run = [{label: value for label, value, _, _ in _figures_and_baselines(r)} for r in runs]
    out = []
    for label, _, lower, found in _figures_and_baselines(runs[0]):
        values = [figures[label] for figures in per_run if label in figures]
        out.append((label, sum(values) / len(values), lower, found))
    return out


def baseline_section(results: list[ModelBenchmark]) -> list[str]:
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
    """Each variant's run of its lowest seed (the pictures and the CMC figure show it)."""
    return [runs[min(runs)] for runs in group_by_variant(results).values()]


def _real_diversity(results: list[ModelBenchmark]) -> str:
    """The real images' SSIM diversity: one figure when the models' samples agree."""
    values = {r.name: f"{r.generation['ssim_diversity_real']:.3f}" for r in results
              if "ssim_diversity_real" in r.generation}
    if len(set(values.values())) <= 1:
        return f"real images: {next(iter(values.values()), '-')}"
    return "real images: " + ", ".join(f"{name} {value}" for name, value in values.items())


def _signs(differences: list[float], up: str = "above", down: str = "below") -> str:
    """"above in 2 of 2 seeds", "above in 1, below in 1 of 2 seeds"."""
    n, above, below = len(differences), sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    parts = [f"{up} in {above}"] * bool(above) + [f"{down} in {below}"] * bool(below)
    parts += [f"equal in {n - above - below}"] * bool(n - above - below)
    return f"{', '.join(parts)} of {n} seed{'s' if n > 1 else ''}"


def _comparison(variant: str, reference: str, figure: str, diff: dict[str, Any], percent: bool,
                note: str = "") -> str:
    verdict, n = diff["verdict"], len(diff["seeds"])
    if verdict in ("above", "below"):
        said = f"{variant} {verdict} {reference}"
    elif diff["low"] is None:
        side = "above" if diff["mean"] > 0 else "below"
        said = f"{variant} {side} {reference} in its one seed (no interval)"
    else:
        said = f"{variant} not distinguishable from {reference} at {n} seeds"
    unit = " points" if percent else ""
    return (f"- **{figure}: {said}**{note}: {variant} - {reference} {_interval(diff, percent)}{unit}, "
            f"{_signs(diff['per_seed'])}.")


def headline(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """The report's first lines (and the MLflow run's description): DG-Net - teacher, ablation - DG-Net
    (mAP), DG-Net's swaps - copying the input, paired over seeds, with the verdict."""
    summaries = seed_summaries(results, changes)
    lines = []
    for variant, entry in summaries.items():
        reference = reference_of(variant)
        diff = entry.get(f"vs_{reference}", {}).get("mAP")
        if diff is not None:
            lines.append(_comparison(variant, str(reference), "mAP", diff, percent=True))
    runs = group_by_variant(results).get(FULL, {})
    per_seed = {seed: _figures_and_baselines(run) for seed, run in runs.items()}
    first = next(iter(per_seed.values()), [])
    for label, _, lower, found in first:
        if not label.startswith("swap"):
            continue
        copy, copied = (min if lower else max)(found, key=lambda item: item[1])  # the harder copy
        model = {seed: value for seed, figures in per_seed.items() for name, value, _, _ in figures
                 if name == label}
        diff = paired_difference(model, dict.fromkeys(model, copied))
        if diff is not None:
            note = (f" (copying the input unchanged, the stronger copy: {copied:.3f}; "
                    f"{'lower' if lower else 'higher'} is better)")
            lines.append(_comparison(FULL, copy, label, _as_dict(diff), percent=False, note=note))
    if not lines:
        return ["- Nothing to compare: no DG-Net with a teacher, ablation or generation baseline."]
    counts = sorted({len(entry["seeds"]) for entry in summaries.values()})
    if counts == [1]:
        lines.append("- One training run per variant (one seed): no interval; set `train.seeds` and "
                     "`teacher.seeds` to two or more seeds to measure the spread.")
    else:
        t = ", ".join(f"{t_quantile_975(n - 1):.2f} for {n}" for n in counts if n > 1)
        lines.append(f"- Seeds per variant: {', '.join(map(str, counts))} (t_0.975 = {t}: with few seeds "
                     "only large gaps are resolved). A seed changes the initialisation, the data order and "
                     "augmentation, and (train.teachers: paired) the teacher; all runs share one test split.")
    return lines


def write_report(path: Path, results: list[ModelBenchmark], settings: Any,
                 manifest: Path, seconds: float, changes: dict[str, dict[str, Any]] | None = None,
                 trivial: dict[str, float] | None = None,
                 cross: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    changes = changes or {}
    groups = group_by_variant(results)
    summaries = seed_summaries(results, changes)
    fid_notes = {r.generation.get("fid_skipped") for r in results if r.generation.get("fid_skipped")}
    fid_used = {(r.generation["fid_network"], r.generation["fid_weights"]) for r in results
                if r.generation.get("fid_network")}
    places: dict[str, list[str]] = {}  # where each model trained (its own record)
    for result in results:
        places.setdefault(result.trained_on or "not recorded in the model file", []).append(result.name)
    lines = [
        "# Benchmark report", "",
        "Each line: variant - reference, paired over seeds (mean and 95% Student-t interval), the sign in "
        "each seed, and the verdict: above / below when the interval excludes 0.", "",
        *headline(results, changes), "",
        f"Data: `{manifest}`. Re-ID protocol: docs/method.md section 5 (junk = same id and camera, "
        "or id -1). mAP: the Market-1501 AP convention of the published evaluator; mAP_finite: the "
        "torchreid / fast-reid one, from the same ranks (docs/method.md section 5 says why they differ). "
        "Percentages. "
        "`alpha_x`: the query's fine-grained half weighted by x "
        "(the paper reports alpha 0.5); `fine_only`: the fine-grained half alone. Swap columns: "
        "G(s_j, a_i) against the exact synthetic render of i's clothes in j's structure, inside the "
        "person mask (L1 on [0, 1], lower is better; SSIM higher is better). SSIM diversity: mean SSIM "
        f"between random pairs of generated images (lower = more diverse; {_real_diversity(results)}).", "",
        "## Variants over seeds", "",
        "Each variant at its main setting (alpha 0.5; alpha 0 where the fine-grained head is not trained; "
        "the teacher's single feature): mean ± sample standard deviation over its seeds, and its paired "
        "difference to its reference over the seeds both have (variant - reference, mAP points: DG-Net - "
        "teacher, ablation - DG-Net; 95% Student-t interval of the per-seed differences, df = seeds - 1). "
        "Verdict: above or below when the interval excludes 0. The teacher of seed S is paired with "
        "DG-Net seed S, which learnt from it.", "",
        *variants_table(summaries, groups, changes), "",
        "## Every run", "",
        "Each run at its variant's main setting.", "",
        *ablation_table(results, changes, trivial), "",
        *baseline_section(results),
        *cross_domain_section(cross or {}),
        "## Every setting", "",
        markdown_table(results),
        "## Notes", "",
        *[f"- FID skipped: {reason}" for reason in sorted(fid_notes)],
        *[f"- FID computed with the {network} (`{weights}`)." for network, weights in sorted(fid_used)],
        *[f"- Trained on {place}: {', '.join(names)}." for place, names in places.items()],
        f"- Evaluated in {seconds:.0f} s on {settings.device}"
        + (" with k-reciprocal re-ranking rows (`+rerank`)." if settings.rerank else "."), "",
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
