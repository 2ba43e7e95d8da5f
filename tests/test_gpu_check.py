"""benchmarks/gpu_check.sh: the GPU check's CPU variant end to end (slow tier), and its small pieces."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    # benchmarks/ is not a package; gpu_check puts its folder on sys.path for its siblings.
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT.with_suffix(".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_cpu_defaults_shrink_and_gpu_fit(gpu_check, tmp_path, capsys):
    opts = gpu_check.parse_options(["--device", "cpu", "--profile", "tiny", "--out", str(tmp_path),
                                    "--timeout", "train=7"])
    on_cuda, on_cpu = gpu_check.COUNTS["train_iterations"]
    assert opts.train_iterations == on_cpu < on_cuda
    assert opts.timeouts["train"] == 7
    for bad in ("train", "nope=3"):  # the flag's form and the steps named, not a bare ValueError
        with pytest.raises(SystemExit):
            gpu_check.parse_options(["--out", str(tmp_path), "--device", "cpu", "--timeout", bad])
        assert "expected STEP=SECONDS, STEP one of setup," in capsys.readouterr().err
    assert "bf16+compile" not in opts.speed_modes and opts.batch_size == 4
    # On a GPU, a training that would outrun its timeout at the measured speed is cut to fit.
    gpu = argparse.Namespace(**{**vars(opts), "on_cuda": True, "device": "cuda", "train_iterations": 1500})
    speed = {"figures": {"modes": {"bf16": {"median_s": 0.2}}}}
    fit = gpu_check.fit_train_iterations(gpu, speed, timeout=190)
    assert fit == int((190 - gpu_check.TRAIN_OVERHEAD_S) / (0.2 * gpu_check.TRAIN_SLOWDOWN))
    fast = {"figures": {"modes": {"bf16": {"median_s": 0.05}}}}
    assert gpu_check.fit_train_iterations(gpu, fast, timeout=190) is None
    assert gpu_check.fit_train_iterations(opts, speed, timeout=190) is None  # never on the CPU


def test_loss_curves_picture_skips_missing_values(gpu_check):
    rows = [{"iteration": 1, "loss/total": 3.0}, {"iteration": 2, "loss/total": 2.0, "loss/cycle": 1.0}]
    picture = gpu_check.loss_curves_picture(rows, "t")
    assert picture.size[0] > 0 and picture.getbbox() is not None


@pytest.mark.slow
def test_cpu_variant_passes(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--profile", "tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, env=env)
    summary_file = out / "summary.json"
    assert summary_file.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    steps = summary["steps"]
    assert list(steps) == ["setup", "train_speed", "train", "eval", "fp16", "ddp"]
    for name, result in steps.items():
        assert result["status"] in ("ok", "skipped"), f"{name}: {result.get('error')}"
        if result["status"] == "skipped":
            assert result.get("reason"), f"{name} skipped without a reason"
    assert run.returncode == 0 and summary["passed"]
    for key in ("torch", "cores", "cpu", "cuda_build", "device"):
        assert key in summary["machine"]

    # The loss curves: every logged loss finite; recon_l1 a number in (0, 1); the swap grid a picture.
    with open(out / "train" / "losses.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    losses = [float(v) for row in rows for k, v in row.items() if k.startswith("loss/") and v != ""]
    assert losses and all(math.isfinite(v) for v in losses)
    recon = steps["train"]["figures"]["recon_l1"]
    assert isinstance(recon, float) and 0 < recon < 1
    with Image.open(out / "train" / "swap_grid.png") as grid:
        assert grid.format == "PNG" and min(grid.size) > 100
    # The two processes ended with identical weights; fp16 skipped no step on the CPU stand-in.
    assert steps["ddp"]["figures"]["differing_after"] == 0
    assert steps["fp16"]["figures"]["non_finite_losses"] == 0
    section = (out / "RESULTS.section.md").read_text()
    assert "<!-- BEGIN gpu_check-tiny-cpu -->" in section and "BEGIN train_speed-tiny-cpu" in section
    assert not (out / "work").exists()  # data, teacher and models are removed unless --keep-work
