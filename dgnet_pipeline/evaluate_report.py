"""reports/benchmark.md: the variants over their seeds (mean, spread, each ablation's paired difference to
the full model with its 95% interval and a verdict), every run at every setting, the generator's
figures beside their trivial baselines, and plain sentences for what the numbers do and do not show."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dgnet.evaluation.benchmark import ModelBenchmark, markdown_table
from dgnet.evaluation.handcrafted import STRIPES
from dgnet.evaluation.spread import mean_std, paired_difference
from dgnet.io import atomic_path

SEEDED_NAME = re.compile(r"(?P<variant>.+)_seed(?P<seed>\d+)")  # a model's name: <variant>_seed<S>
SUMMARY_KEYS = ("mAP", "mAP_finite", "rank1")
FULL = "dgnet"  # the variant every ablation is compared with

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


FLIPPED = {"beats": "loses to", "loses": "beats"}
AGAINST_FULL = {"beats": "beats the full model", "loses": "loses to the full model",
                "indistinguishable at this budget": "is indistinguishable from the full model at this budget",
                "untested (one seed: no interval)": "is untested against the full model (one seed)"}


def cross_domain_section(cross: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The models ranked on the other datasets of `evaluate.targets`, one table."""
    if not cross:
        return []
    lines = ["## Cross-domain", "",
             "Each model, trained on the data above, ranked on the query/gallery of another dataset "
             "(params `evaluate.targets`), at its main setting. Percentages.", "",
             "| target | model | setting | rank-1 | mAP | mAP_finite | mINP |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for target, per_model in cross.items():
        for name, m in per_model.items():
            figures = " | ".join(f"{100 * m[k]:.1f}" for k in ("rank1", "mAP", "mAP_finite", "mINP"))
            lines.append(f"| {target} | {name} | {m['setting']} | {figures} |")
    return [*lines, ""]


def variant_of(name: str) -> tuple[str, int]:
    """`dgnet_seed1` -> ("dgnet", 1): a run's variant and seed (a name without a seed: seed 0)."""
    match = SEEDED_NAME.fullmatch(name)
    return (match["variant"], int(match["seed"])) if match else (name, 0)


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


def seed_summaries(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]] | None = None,
                   ) -> dict[str, dict[str, Any]]:
    """Per variant at its main setting: `seeds`, `<k>_mean`, `<k>_std` (sample std; left out for one
    seed) and `<k>_per_seed` for mAP, mAP_finite and rank-1; and, for every variant but the full model,
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
    lines = ["| variant | trained as | seeds | setting | rank-1 | mAP | mAP_finite | mAP per seed "
             "| paired Δ mAP vs dgnet [95% t] | verdict (vs dgnet) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for variant, entry in summaries.items():
        how = trained_as(next(iter(groups[variant].values())), changes)
        per_seed = ", ".join(f"{100 * v:.1f}" for v in entry["mAP_per_seed"].values())
        diff = entry.get("vs_dgnet", {}).get("mAP")
        verdict = "-" if diff is None else diff["verdict"]
        lines.append(f"| {variant} | {how} | {len(entry['seeds'])} | {entry['setting']} "
                     f"| {_pm(entry, 'rank1')} | {_pm(entry, 'mAP')} | {_pm(entry, 'mAP_finite')} "
                     f"| {per_seed} | {_interval(diff)} "
                     f"| {verdict} |")
    return lines


def ablation_table(results: list[ModelBenchmark], changes: dict[str, dict[str, Any]],
                   trivial: dict[str, float] | None = None) -> list[str]:
    """One row per model at its main setting: what the variant changes, re-ID and generation; last,
    the trivial colour-histogram baseline (no learning) when given."""
    lines = ["| model | trained as | setting | rank-1 | mAP | mAP_finite | swap L1 (person) "
             "| swap SSIM (person) | recon L1 | SSIM diversity |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    for result in results:
        setting = main_setting(result, changes)
        m, gen = result.reid[setting], result.generation
        how = trained_as(result, changes)
        lines.append(f"| {result.name} | {how} | {setting} | {100 * m['rank1']:.1f} | {100 * m['mAP']:.1f} "
                     f"| {100 * m['mAP_finite']:.1f} "
                     f"| {fmt(gen.get('swap_l1_person'))} | {fmt(gen.get('swap_ssim_person'))} "
                     f"| {fmt(gen.get('recon_l1'))} | {fmt(gen.get('ssim_diversity_generated'))} |")
    if trivial is not None:
        how = f"trivial baseline: HSV histograms of {STRIPES} stripes, cosine, no learning"
        lines.append(f"| colour_histogram | {how} | - | {100 * trivial['rank1']:.1f} "
                     f"| {100 * trivial['mAP']:.1f} | {100 * trivial['mAP_finite']:.1f} | - | - | - | - |")
    return lines


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


def write_report(path: Path, results: list[ModelBenchmark], settings: Any,
                 manifest: Path, seconds: float, changes: dict[str, dict[str, Any]] | None = None,
                 trivial: dict[str, float] | None = None,
                 cross: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """reports/benchmark.md: the tables, what beats what (said plainly), and the pictures."""
    changes = changes or {}
    groups = group_by_variant(results)
    summaries = seed_summaries(results, changes)
    notes = seed_notes(summaries)
    fid_notes = {r.generation.get("fid_skipped") for r in results if r.generation.get("fid_skipped")}
    fid_used = {(r.generation["fid_network"], r.generation["fid_weights"]) for r in results
                if r.generation.get("fid_network")}
    lines = [
        "# Benchmark report", "",
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
        *[f"- FID computed with the {network} (`{weights}`)." for network, weights in sorted(fid_used)],
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
