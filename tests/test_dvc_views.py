"""DVC's own views of the real dvc.yaml, in a tiny workspace: every stage's deps and outs stand in as
small files, committed as if `dvc repro` had made them (`dvc commit`, nothing runs). Then
`dvc metrics show` prints one short row per variant and seed, without an error; `dvc status` of
the pipeline is up to date; `dvc plots show` draws one CMC chart and one chart of the training
losses (a panel per loss term), a curve per variant each, from local Vega files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from dgnet.evaluation.benchmark import ModelBenchmark
from dgnet_pipeline import evaluate as evaluate_stage

from .test_dvc_deps import ROOT

PATHS = evaluate_stage.Paths.of_dvc(ROOT / "stages" / "evaluate.py")  # dvc.yaml's

pytest.importorskip("dvc")


def _results() -> list[ModelBenchmark]:
    runs = []
    for variant, kind, setting in (("teacher", "teacher", "baseline"), ("dgnet", "dgnet", "alpha_0.5")):
        for seed in (0, 1):
            value = 0.4 + 0.1 * (kind == "dgnet") + 0.01 * seed
            metrics = {"rank1": value, "mAP": value, "mAP_finite": value + 0.03, "mINP": value - 0.1}
            runs.append(ModelBenchmark(f"{variant}_seed{seed}", kind, reid={setting: metrics},
                                       cmc={setting: [value, value + 0.1, value + 0.2]}))
    return runs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from dvc.repo import Repo

    ws = tmp_path_factory.mktemp("dvc_views")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    assert _dvc(ws, "init", "-q").returncode == 0
    for name in ("dvc.yaml", "params.yaml", "tuning/dvc.yaml", ".dvc/config", ".dvc/plots.html",
                 ".dvc/plots/cmc_by_model.json", ".dvc/plots/losses_by_model.json"):
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, ws / name)
    cwd = os.getcwd()
    os.chdir(ws)  # DVC resolves a stage's paths against the working directory
    try:
        _stand_ins(ws, Repo)
    finally:
        os.chdir(cwd)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], cwd=ws,
                   check=True)
    return ws


def _stand_ins(ws, Repo) -> None:
    """A small file for every dep and out of dvc.yaml, the evaluate stage's views for real; committed."""
    with Repo(str(ws)) as repo:
        stages = [s for s in repo.index.stages if s.path_in_repo == "dvc.yaml"]
        for stage in stages:
            for item in [*stage.deps, *stage.outs]:
                path = ws / item.def_path
                if hasattr(item, "params") or path.exists():
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{item.def_path}\n")
    results = _results()
    summary, plots, losses = ws / PATHS.summary, ws / PATHS.plots, ws / PATHS.losses
    for stand_in in (summary, plots, losses):
        stand_in.unlink(missing_ok=True)
    evaluate_stage.write_summary(summary, results, {})
    evaluate_stage.cmc_table(results, {}).to_csv(plots, index=False)
    models = {}
    for result in results:  # a loss curve beside each model, as the training stages leave them
        model = ws / "curves" / result.name / "model.pt"
        model.parent.mkdir(parents=True)
        term = "loss/id" if result.kind == "teacher" else "loss/recon_image"
        model.parent.joinpath("losses.csv").write_text(f"iteration,{term}\n10,1.5\n20,1.0\n")
        models[result.name] = model
    evaluate_stage.write_loss_curves(losses, models)
    with Repo(str(ws)) as repo:
        repo.commit("dvc.yaml", force=True)


def _dvc(workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workspace, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def test_metrics_show_is_one_short_row_per_variant_and_seed(workspace):
    shown = _dvc(workspace, "metrics", "show")
    assert shown.returncode == 0 and "failed" not in shown.stderr + shown.stdout, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert lines[0].split() == ["Path", "mAP", "mAP_finite", "mINP", "rank1"]
    assert [line.split()[0] for line in lines[1:]] == [
        f"reports/metrics/summary/{name}.json"
        for name in ("dgnet", "dgnet_seed0", "dgnet_seed1", "teacher", "teacher_seed0", "teacher_seed1")]
    assert max(map(len, lines)) < 100
    assert json.loads((workspace / "reports/metrics/summary/dgnet.json").read_text()) == {
        "rank1": 0.505, "mAP": 0.505, "mAP_finite": 0.535, "mINP": 0.405}


def test_status_of_the_pipeline_is_up_to_date(workspace):
    status = _dvc(workspace, "status", "dvc.yaml")
    assert status.returncode == 0 and status.stdout.strip() == "Data and pipelines are up to date."
    # The never-run tuning entry is the only thing a bare `dvc status` lists (DVC 3 has no way to
    # leave a never-run stage of a collected dvc.yaml out; see tuning/dvc.yaml's note).
    everything = _dvc(workspace, "status")
    assert everything.returncode == 0
    listed = [line for line in everything.stdout.splitlines() if line and not line.startswith(("\t", " "))]
    assert listed == ["tuning/dvc.yaml:tune:"]


def test_plots_show_the_cmc_and_the_loss_charts_a_curve_per_variant_offline(workspace):
    shown = _dvc(workspace, "plots", "show")
    assert shown.returncode == 0, shown.stderr
    page = (workspace / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "../reports/gx_docs/static/vendor/vega/vega5.js" in page
    assert page.count("vegaEmbed(") == 2 and '"field": "model"' in page
    assert '"model": "teacher"' in page and '"model": "dgnet"' in page
    assert '"facet"' in page and '"loss": "loss/recon_image"' in page and '"loss": "loss/id"' in page
