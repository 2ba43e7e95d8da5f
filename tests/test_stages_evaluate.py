"""The evaluate stage's outputs without MLflow: eval.json keeps the nested baselines, the report sets
each generator figure beside its trivial baselines and says plainly which it beats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from dgnet.config import EvaluateConfig, EvaluationTarget, section_config
from dgnet.data.manifest import build_manifest
from dgnet.data.synthetic import generate_dataset
from dgnet.errors import ConfigError, DgnetError
from dgnet.evaluation.benchmark import ModelBenchmark, benchmark_model
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile
from dgnet_pipeline import evaluate as evaluate_stage
from dgnet_pipeline import evaluate_report
from tests.test_dvc_deps import ROOT

PATHS = evaluate_stage.Paths.of_dvc(ROOT / "stages" / "evaluate.py")  # dvc.yaml's


def _settings(params: dict) -> EvaluateConfig:
    """params `evaluate:` as read_params builds it, on the stage's device."""
    return evaluate_stage._settings(section_config(EvaluateConfig, params, "evaluate"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate") / "data"
    generate_dataset(root, seed=2, num_ids=8, num_cameras=3)
    frame = build_manifest(root)
    cfg = get_profile("tiny", num_classes=int(frame["label"].max()) + 1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    teacher = save_model(folder / "teacher.pt", ReidBaseline(cfg), "teacher", cfg)
    dgnet = save_model(folder / "dgnet.pt", DGNet(cfg), "dgnet", cfg)
    references: dict = {}
    return [benchmark_model(teacher, frame, name="teacher"),
            *(benchmark_model(dgnet, frame, name=name, data_root=root, num_swaps=8, references=references)
              for name in ("dgnet", "ablation_no_fine"))]


def _reid() -> dict[str, dict[str, float]]:
    return {"alpha_0.5": {"rank1": 0.3, "rank5": 0.5, "rank10": 0.6, "mAP": 0.3, "mAP_finite": 0.32,
                          "mINP": 0.2}}


def _made_up(name: str = "dgnet") -> ModelBenchmark:
    generation = {
        "num_swaps": 512, "recon_num_images": 520, "swap_l1_person": 0.150, "swap_ssim_person": 0.40,
        "recon_l1": 0.100,
        "baselines": {"recon_mean_image": 0.148, "recon_blur4": 0.059,
                      "copy_structure": {"swap_l1_person": 0.161, "swap_ssim_person": 0.446},
                      "copy_appearance": {"swap_l1_person": 0.160, "swap_ssim_person": 0.166}},
    }
    return ModelBenchmark(name, "dgnet", reid=_reid(), generation=generation)


def test_verdict_is_computed_from_the_numbers():
    assert evaluate_report.baseline_verdict(_made_up()) == (
        "dgnet: recon L1 0.100 beats the mean image 0.148 but not blur4 0.059; swap L1 (person) 0.150 beats "
        "copy-structure 0.161 and copy-appearance 0.160; swap SSIM (person) 0.400 beats copy-appearance "
        "0.166 but not copy-structure 0.446.")
    worse = _made_up()
    worse.generation |= {"swap_l1_person": 0.3, "recon_l1": 0.01}
    sentence = evaluate_report.baseline_verdict(worse)
    assert "swap L1 (person) 0.300 does not beat copy-structure 0.161 or copy-appearance 0.160" in sentence
    assert "recon L1 0.010 beats the mean image 0.148 and blur4 0.059" in sentence


def test_baseline_section_tables_and_skips():
    lines = evaluate_report.baseline_section([_made_up()])
    text = "\n".join(lines)
    assert "## Generator against trivial baselines" in text and "### dgnet" in text
    assert "| recon L1 (lower is better) | 0.100 | 0.148 | 0.059 | - | - |" in text
    assert "| swap SSIM (person) (higher is better) | 0.400 | - | - | 0.446 | 0.166 |" in text
    assert "512 test pairs" in text and "520 test images" in text
    real = _made_up()
    real.generation = {"recon_l1": 0.1, "baselines": {"recon_mean_image": 0.2, "recon_blur4": 0.05},
                       "swap_fidelity_skipped": "not a synthetic dataset"}
    text = "\n".join(evaluate_report.baseline_section([real]))
    assert "Swap baselines skipped: not a synthetic dataset." in text and "swap L1" not in text
    assert evaluate_report.baseline_section([ModelBenchmark("teacher", "teacher", reid=_reid())]) == []


def test_finite_tree_keeps_nested_numbers_rounded():
    tree = {"a": 0.1234567891, "b": None, "c": "skipped", "d": math.nan, "n": 7,
            "nested": {"x": {"y": 1 / 3}, "empty": {"z": None}}}
    assert evaluate_stage._finite_tree(tree) == {"a": 0.123457, "n": 7, "nested": {"x": {"y": 0.333333}}}


def test_write_outputs_keeps_the_baselines_and_reports_them(results, tmp_path):
    settings = _settings({"evaluate": {"num_swaps": 8}})
    evaluate_stage.write_outputs(tmp_path, results, settings, Path("data/manifest.csv"), 12.0,
                                 {"ablation_no_fine": {"schedule.fine_mining": False}}, paths=PATHS)
    summary = json.loads((tmp_path / PATHS.metrics).read_text())
    gen = summary["dgnet"]["generation"]
    assert {"recon_l1", "swap_l1_person", "swap_ssim_person"} <= set(gen)
    baselines = gen["baselines"]
    assert set(baselines) == {"recon_mean_image", "recon_blur4", "copy_structure", "copy_appearance"}
    assert set(baselines["copy_structure"]) >= {"swap_l1_person", "swap_ssim_person"}
    assert baselines["copy_structure"]["swap_l1_person"] == round(
        results[1].generation["baselines"]["copy_structure"]["swap_l1_person"], 6)
    assert gen["num_swaps"] == 8 and isinstance(gen["num_swaps"], int)
    assert "generation" not in summary["teacher"]
    report = (tmp_path / PATHS.report).read_text()
    assert "| rank-1 | mAP | mAP_finite | swap L1 (person) | swap SSIM (person) | recon L1 |" in report
    assert "## Generator against trivial baselines" in report
    assert "### dgnet" in report and "### ablation_no_fine" in report and "### teacher\n" not in report
    verdicts = [line for line in report.splitlines() if line.startswith("dgnet: ")]
    assert verdicts == [evaluate_report.baseline_verdict(results[1])]
    assert "swap L1 (person)" in verdicts[0] and "copy-structure" in verdicts[0] and "blur4" in verdicts[0]


def test_flat_metrics_of_nested_baselines_are_what_mlflow_gets(results):
    flat = results[1].flat_metrics()
    assert flat["generation/baselines/copy_appearance/swap_ssim_person"] == pytest.approx(
        results[1].generation["baselines"]["copy_appearance"]["swap_ssim_person"])
    assert "generation/swap_fidelity_skipped" not in flat


def test_num_swaps_default_and_params():
    assert _settings({}).num_swaps == 512
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    assert _settings(params).num_swaps >= 500  # what the report is read on
    with pytest.raises(ConfigError, match="num_swaps"):
        _settings({"evaluate": {"num_swaps": 1}})


def test_the_trivial_colour_baseline_is_reported_beside_the_models(results, tmp_path):
    settings = _settings({"evaluate": {"num_swaps": 8}})
    trivial = {"rank1": 0.05, "rank5": 0.1, "rank10": 0.2, "mAP": 0.0314, "mAP_finite": 0.0401, "mINP": 0.01}
    evaluate_stage.write_outputs(tmp_path, results, settings, Path("data/manifest.csv"), 12.0, {}, trivial,
                                 paths=PATHS)
    summary = json.loads((tmp_path / PATHS.metrics).read_text())
    assert summary["colour_histogram"]["baseline"]["mAP"] == 0.0314
    assert summary["colour_histogram"]["baseline"]["mAP_finite"] == 0.0401
    rows = [line for line in (tmp_path / PATHS.report).read_text().splitlines()
            if line.startswith("| colour_histogram |")]
    assert len(rows) == 1 and "| 5.0 | 3.1 | 4.0 |" in rows[0] and "no learning" in rows[0]


def test_targets_params_are_checked():
    assert _settings({}).targets == ()
    targets = _settings({"evaluate": {"targets": [{"name": "duke", "data": "/d"}]}}).targets
    assert targets == (EvaluationTarget("duke", "/d", None),)
    for bad, message in ((["duke"], "mapping with `name` and `data`"),
                         ([{"name": "a", "data": "x", "fmt": "m"}], r"unknown field\(s\) \['fmt'\]"),
                         ([{"name": "a", "data": "x"}, {"name": "a", "data": "y"}], "must be unique"),
                         ([{"name": "a", "data": "x", "format": "viper"}], "is not one of")):
        with pytest.raises(ConfigError, match=message):
            _settings({"evaluate": {"targets": bad}})


def test_cross_domain_ranks_every_model_on_another_dataset(tmp_path):
    from dgnet.evaluation.evaluate import evaluate_reid
    from dgnet.models.persist import load_model

    other = tmp_path / "other"
    generate_dataset(other, seed=5, num_ids=8, num_cameras=3)
    cfg = get_profile("tiny", num_classes=4)
    torch.manual_seed(0)
    models = {"teacher": save_model(tmp_path / "teacher.pt", ReidBaseline(cfg), "teacher", cfg),
              "dgnet": save_model(tmp_path / "dgnet.pt", DGNet(cfg), "dgnet", cfg)}
    models["ablation_no_fine"] = models["dgnet"]
    results = [ModelBenchmark("teacher", "teacher", reid={"baseline": _reid()["alpha_0.5"]}),
               ModelBenchmark("dgnet", "dgnet", reid={"alpha_0": _reid()["alpha_0.5"], **_reid()}),
               ModelBenchmark("ablation_no_fine", "dgnet", reid={"alpha_0": _reid()["alpha_0.5"], **_reid()})]
    for result in results:
        result.cmc = {setting: [0.3, 0.5] for setting in result.reid}
    changes = {"ablation_no_fine": {"schedule.fine_mining": False}}
    settings = _settings({"evaluate": {"targets": [{"name": "other", "data": "other"}]}})
    cross = evaluate_stage.cross_domain(models, results, tmp_path, settings, changes)
    assert list(cross["other"]) == ["teacher", "dgnet", "ablation_no_fine"]
    assert [m["setting"] for m in cross["other"].values()] == ["baseline", "alpha_0.5", "alpha_0"]
    assert (tmp_path / evaluate_stage.CROSS_DOMAIN / "other_validation.json").is_file()
    model, _ = load_model(models["dgnet"])
    expected = evaluate_reid(model, build_manifest(other), (64, 32), query_alpha=0.5)
    assert cross["other"]["dgnet"]["mAP"] == pytest.approx(expected["mAP"])
    assert cross["other"]["dgnet"]["mAP_finite"] == pytest.approx(expected["mAP_finite"])

    evaluate_stage.write_outputs(tmp_path, results, settings, Path("data/manifest.csv"), 1.0, changes,
                                 cross=cross, paths=PATHS)
    summary = json.loads((tmp_path / PATHS.metrics).read_text())
    assert summary["cross_domain"]["other"]["teacher"]["mAP"] == round(cross["other"]["teacher"]["mAP"], 6)
    report = (tmp_path / PATHS.report).read_text()
    assert "## Cross-domain" in report and "| other | ablation_no_fine | alpha_0 |" in report

    broken = _settings({"evaluate": {"targets": [{"name": "x", "data": "absent"}]}})
    with pytest.raises(DgnetError, match="absent"):
        evaluate_stage.cross_domain(models, results, tmp_path, broken, changes)


def test_evaluate_benchmarks_exactly_the_variants_and_seeds_in_params(tmp_path, capsys):
    def model_file(relative: str) -> None:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")

    for seed in (0, 1):
        model_file(f"outputs/teacher/seed{seed}/model.pt")
    (tmp_path / "outputs/teacher/teachers.json").write_text(
        json.dumps({"teachers": [{"path": f"seed{seed}/model.pt"} for seed in (0, 1)]}))
    for relative in ("outputs/dgnet/seed0", "outputs/dgnet/seed1", "outputs/dgnet/seed2",  # seed 2: stale
                     "outputs/ablations/no_fine/seed0", "outputs/ablations/dropped/seed0"):  # dropped: stale
        model_file(f"{relative}/model.pt")
    params = {"train": {"seeds": [0, 1]}, "ablations": {"no_fine": {"schedule": {"fine_mining": False}}}}
    with pytest.raises(DgnetError, match=r"no_fine/seed1/model.pt \(stage ablation@no_fine-1\)"):
        evaluate_stage.models_to_evaluate(tmp_path, params, PATHS)
    model_file("outputs/ablations/no_fine/seed1/model.pt")
    models = evaluate_stage.models_to_evaluate(tmp_path, params, PATHS)
    assert list(models) == ["teacher_seed0", "teacher_seed1", "dgnet_seed0", "dgnet_seed1",
                            "ablation_no_fine_seed0", "ablation_no_fine_seed1"]
    out = capsys.readouterr().out
    assert "not benchmarked" in out and "ablations/dropped/seed0" in out and "dgnet/seed2" in out


def _seeded(variant: str, maps: list[float], swap_l1: float | None = None) -> list[ModelBenchmark]:
    """One made-up run per seed of `variant` with these mAPs (and swap L1 against copies 0.173 / 0.163)."""
    runs = []
    for seed, value in enumerate(maps):
        kind, setting = ("teacher", "baseline") if variant == "teacher" else ("dgnet", "alpha_0.5")
        generation = {} if swap_l1 is None else {
            "swap_l1_person": swap_l1 + 0.001 * seed, "swap_ssim_person": 0.36,
            "baselines": {"copy_structure": {"swap_l1_person": 0.173, "swap_ssim_person": 0.40},
                          "copy_appearance": {"swap_l1_person": 0.163, "swap_ssim_person": 0.17}}}
        reid = {setting: {"rank1": value, "rank5": value, "mAP": value, "mAP_finite": value + 0.03,
                          "mINP": value}}
        runs.append(ModelBenchmark(f"{variant}_seed{seed}", kind, reid=reid, generation=generation))
    return runs


@pytest.mark.parametrize("teacher_maps, sign, verdict", [
    ([0.40, 0.41], "+", "dgnet above teacher"),  # the reference (teacher) below
    ([0.60, 0.62], "-", "dgnet below teacher"),  # the reference above
])
def test_headline_signs_are_variant_minus_reference(teacher_maps, sign, verdict):
    results = [*_seeded("teacher", teacher_maps), *_seeded("dgnet", [0.50, 0.52], swap_l1=0.150),
               *_seeded("ablation_no_primary", [0.55, 0.57]), *_seeded("ablation_no_fine", [0.53, 0.49])]
    lines = evaluate_report.headline(results)
    teacher_line, primary, fine, swap_l1, swap_ssim = lines[:5]
    side = "above" if sign == "+" else "below"
    diff = 100 * (0.51 - sum(teacher_maps) / 2)
    assert f"**mAP: {verdict}**" in teacher_line and f"dgnet - teacher {diff:+.1f} [" in teacher_line
    assert teacher_line.endswith(f"{side} in 2 of 2 seeds.")
    assert "**mAP: ablation_no_primary above dgnet**" in primary and "- dgnet +5.0 [" in primary
    assert "not distinguishable from dgnet at 2 seeds" in fine
    assert fine.endswith("above in 1, below in 1 of 2 seeds.")  # +3.0 in seed 0, -3.0 in seed 1
    # The generator against the stronger copy: copy-appearance for L1 (lower), copy-structure for SSIM.
    assert "**swap L1 (person): dgnet below copy-appearance**" in swap_l1 and "-0.013 [" in swap_l1
    assert "lower is better" in swap_l1 and swap_l1.endswith("below in 2 of 2 seeds.")
    assert "swap SSIM (person): dgnet below copy-structure" in swap_ssim and "higher is better" in swap_ssim
    # The table says the same thing with the same sign; and the report opens with the headline.
    summaries = evaluate_report.seed_summaries(results)
    table = evaluate_report.variants_table(summaries, evaluate_report.group_by_variant(results), {})
    (row,) = [line for line in table if line.startswith("| dgnet |")]
    assert f"| teacher | {diff:+.1f} [" in row and f"| {side} |" in row
    assert next(line for line in table if line.startswith("| teacher |")).endswith("| - | - | - |")


def test_report_opens_with_the_headline(tmp_path):
    results = [*_seeded("teacher", [0.40, 0.41]), *_seeded("dgnet", [0.50, 0.52], swap_l1=0.150)]
    settings = _settings({"evaluate": {"num_swaps": 8}})
    evaluate_report.write_report(tmp_path / "r.md", results, settings, Path("m.csv"), 1.0)
    lines = (tmp_path / "r.md").read_text().splitlines()
    headline = evaluate_report.headline(results)
    assert lines[0] == "# Benchmark report" and lines[4:4 + len(headline)] == headline
    assert headline[0].startswith("- **mAP: dgnet above teacher**")
