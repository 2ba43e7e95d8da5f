"""benchmarks/train_speed.py: one tiny measurement's structure and its RESULTS section (no timed asserts)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dgnet.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_speed.py"


@pytest.fixture(scope="module")
def train_speed() -> ModuleType:
    # benchmarks/ is not a package: load the script as a module.
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_mode_parsing(train_speed):
    mode = train_speed.Mode.parse("bf16+compile+cl")
    assert (mode.amp, mode.compile, mode.channels_last, mode.name) == ("bf16", True, True, "bf16+compile+cl")
    assert train_speed.Mode.parse("compile").name == "fp32+compile"
    assert train_speed.Mode.parse("fp32+cl").name == "fp32+cl"
    for bad in ("fp8", "bf16+fp16", ""):
        with pytest.raises(ConfigError, match="--modes"):
            train_speed.Mode.parse(bad)


@pytest.fixture
def one_thread():
    # One torch thread: on a shared 2-core machine two threads wait on each other and run far slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_measure_tiny_and_write_section(train_speed, tmp_path, one_thread):
    row = train_speed.measure("tiny", "cpu", "fp32", iterations=2, warmup=0, batch_size=2)
    assert row["status"] == "ok" and row["mode"] == "fp32" and row["device"] == "cpu"
    assert len(row["times_s"]) == 2 and row["iterations"] == 2 and row["images_per_iteration"] == 8
    assert row["median_s"] > 0 and row["p90_s"] >= row["min_s"] and row["projected_100k_h"] > 0
    # The timed iteration is past the warm-up: the teacher, cycle and code losses are all on.
    weights = row["loss_weights"]
    assert weights["primary"] > 0 and weights["cycle"] > 0 and weights["code_structure"] > 0
    if sys.platform.startswith("linux"):
        assert row["peak_rss_mb"] > 0

    skipped = train_speed.measure("tiny", "cpu", "fp16", iterations=1, warmup=0)
    assert skipped["status"] == "skipped" and "CUDA" in skipped["reason"]

    # A copy of the real results file (or a fresh one): the real one is never touched.
    results = tmp_path / "RESULTS.md"
    if train_speed.common.RESULTS.exists():
        shutil.copy(train_speed.common.RESULTS, results)
    before = results.read_text() if results.exists() else ""
    info = train_speed.common.machine()
    info["load_average_end"] = info["load_average"]
    name = train_speed.section_name("tiny", "cpu")
    command = "python benchmarks/train_speed.py --profile tiny"
    record = train_speed.record(info, [row, skipped], command, gpu_pending=True)
    train_speed.common.write_results(results, name, record)
    train_speed.common.write_results(results, name, record)  # replaced, not appended twice
    text = results.read_text()
    assert text.count(f"<!-- BEGIN {name} -->") == 1 and text.count(f"<!-- END {name} -->") == 1
    assert "| fp32 |" in text and "| fp16 | skipped:" in text and "pending" in text
    # The figures the section was rendered from, as JSON beside it (what other scripts read).
    stored = json.loads(results.with_suffix(".json").read_text())[name]
    assert stored["rows"][0]["median_s"] == row["median_s"] and stored["rows"][1]["status"] == "skipped"
    if before:  # the other sections are left as they were
        pattern = re.compile(rf"<!-- BEGIN {name} -->.*?<!-- END {name} -->\n?", re.S)
        assert pattern.sub("", text).strip() == pattern.sub("", before).strip()
