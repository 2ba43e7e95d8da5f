"""The promises of the README on every entry point: nothing trains on data that has not passed
validation, no crash loses work, one run per run folder, exit codes that say whose fault it is."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import dgnet.data.datasets as datasets_module
from dgnet.cli import build_parser
from dgnet.cli import main as dgnet_main
from dgnet.config import config_from_mapping
from dgnet.data.manifest import build_manifest
from dgnet.data.transforms import ImageReadError, load_image
from dgnet.data.validated import (
    check_invariants,
    manifest_record,
    read_validated_manifest,
    record_differences,
    validate_dataset,
)
from dgnet.errors import EXIT_DATA_RULE, EXIT_USAGE, ConfigError, DataRuleError, DatasetError, OutputError
from dgnet.profiles import get_profile
from dgnet.training.checkpoint import list_checkpoints
from dgnet.training.loop import worker_error_message
from dgnet.training.runlock import HOLDER_NAME, RunLockedError, locked_by_another, run_lock
from dgnet.training.teacher_trainer import TeacherTrainConfig, train_teacher
from dgnet.training.trainer import DGNetTrainConfig
from tests.fixtures import MARKET, make_market, truncate, write_jpeg

TINY = get_profile("tiny")
REPO = Path(__file__).resolve().parents[1]


def teacher_cfg(**overrides: Any) -> TeacherTrainConfig:
    base = {"iterations": 4, "batch_size": 4, "log_every": 1, "eval_every": 0, "checkpoint_every": 0,
            "num_workers": 0, "device": "cpu", "deterministic": True, "lr": 0.01}
    return TeacherTrainConfig(**{**base, **overrides})


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A Market tree published as the validate stage does: data/manifest.csv + reports/validation.json."""
    make_market(tmp_path / "market", gt_bbox=False)
    validate_dataset(tmp_path / "market", report=tmp_path / "reports" / "validation.json",
                     manifest=tmp_path / "data" / "manifest.csv")
    return tmp_path


def run_cli(*argv: str) -> int:
    return dgnet_main([str(a) for a in argv])


# ---- 1. only validated data trains ---------------------------------------------------------------


def test_a_published_manifest_reads_back_with_its_record(workspace: Path) -> None:
    report = json.loads((workspace / "reports" / "validation.json").read_text())
    record = report["manifest_record"]
    assert record == manifest_record(workspace / "data" / "manifest.csv") and record["rows"] == 11
    assert record["splits"]["train"] == {**record["splits"]["train"], "images": 4, "ids": 2}
    frame = read_validated_manifest(workspace / "data" / "manifest.csv")  # the report found above it
    assert frame.attrs["format"] == "market1501" and len(frame) == 11


def test_a_manifest_edited_after_validation_is_refused_naming_the_change(workspace: Path) -> None:
    """The probe: a gallery id moved to train with a consistent label."""
    manifest = workspace / "data" / "manifest.csv"
    table = pd.read_csv(manifest)
    moved = (table["person_id"] == 11) & (table["split"] == "gallery")
    table.loc[moved, "split"] = "train"
    table.loc[moved, "label"] = 2
    table.to_csv(manifest, index=False)
    with pytest.raises(DataRuleError) as err:
        read_validated_manifest(manifest)
    message = str(err.value)
    assert f"manifest {manifest} changed since validation" in message
    assert "split 'train': 5 images (validated 4), 3 ids (validated 2)" in message
    assert "split 'gallery': 4 images (validated 5)" in message
    assert "values changed in column(s) split, label" in message
    assert err.value.exit_code == EXIT_DATA_RULE


def test_record_differences_in_words() -> None:
    same = {"sha256": "a", "rows": 1, "columns": {"path": "x"}, "splits": {}}
    assert record_differences(same, same) == []
    assert record_differences(same, {**same, "sha256": "b"}) == [
        "the file's bytes differ (same rows and values: formatting only)"]


def test_a_manifest_without_a_validation_report_is_refused(tmp_path: Path, workspace: Path,
                                                            tmp_path_factory) -> None:
    lonely = tmp_path_factory.mktemp("elsewhere") / "manifest.csv"
    shutil.copy(workspace / "data" / "manifest.csv", lonely)
    with pytest.raises(DatasetError, match="no validation report found") as err:
        read_validated_manifest(lonely)
    assert err.value.exit_code == EXIT_USAGE
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"ok": False, "manifest": None}))
    with pytest.raises(DatasetError, match="records no validated manifest"):
        read_validated_manifest(workspace / "data" / "manifest.csv", failed)


def test_invariants_are_rechecked_at_load(workspace: Path) -> None:
    frame = build_manifest(workspace / "market")
    check_invariants(frame)
    leaked = frame.copy()
    leaked.loc[leaked["split"] == "query", "person_id"] = 2  # a train id
    with pytest.raises(DataRuleError, match=r"rule train_test_ids_disjoint: 1 person id\(s\) .*: 2"):
        check_invariants(leaked)
    relabelled = frame.copy()
    relabelled.loc[relabelled["split"] == "train", "label"] = 5
    with pytest.raises(DataRuleError, match="rule labels: 4 train label"):
        check_invariants(relabelled)
    gone = Path(frame.loc[frame["split"] == "train", "path"].iloc[0])
    gone.unlink()
    with pytest.raises(DataRuleError, match=f"rule files_exist: 1 listed image .*{gone.name}"):
        check_invariants(frame)


def test_train_with_data_validates_first_and_refuses_leaked_ids(tmp_path: Path, capsys) -> None:
    """The probe: train and test ids overlap; `train-teacher --data` used to train and score on them."""
    spec = {**MARKET, "bounding_box_train": [*MARKET["bounding_box_train"], "0010_c2s1_002999_01.jpg"]}
    root = make_market(tmp_path / "leaky", spec, gt_bbox=False)
    out = tmp_path / "out"
    code = run_cli("train-teacher", "--data", root, "--profile", "tiny", "--out", out, "--iterations", "1",
                   "--device", "cpu", "--num-workers", "0")
    err = capsys.readouterr().err
    assert code == EXIT_DATA_RULE and "rule train_test_ids_disjoint" in err and "person id 10" in err
    assert "Traceback" not in err and not (out / "model.pt").exists()
    report = json.loads((out / "validation.json").read_text())
    assert not report["ok"] and (out / "validation.md").is_file()


def test_train_with_an_edited_manifest_exits_1(workspace: Path, tmp_path: Path, capsys) -> None:
    manifest = workspace / "data" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("bounding_box_test/0011", "bounding_box_test/0012"))
    code = run_cli("train-teacher", "--manifest", manifest, "--profile", "tiny", "--out", tmp_path / "out",
                   "--iterations", "1", "--device", "cpu", "--num-workers", "0")
    err = capsys.readouterr().err
    assert code == EXIT_DATA_RULE and "changed since validation" in err
    assert "values changed in column(s) path" in err
    assert not (tmp_path / "out" / "model.pt").exists()


def test_train_with_data_trains_on_valid_data(tmp_path: Path, capsys) -> None:
    root = make_market(tmp_path / "market", gt_bbox=False)
    out = tmp_path / "out"
    code = run_cli("train-teacher", "--data", root, "--profile", "tiny", "--out", out, "--iterations", "1",
                   "--batch-size", "4", "--device", "cpu", "--num-workers", "0")
    assert code == 0, capsys.readouterr().err
    assert (out / "model.pt").is_file() and json.loads((out / "validation.json").read_text())["ok"]
    assert not (out / HOLDER_NAME).exists()  # the lock's holder record goes with the run


# ---- 2. image errors name the file; a failure mid-run keeps the completed iterations ----------


def test_load_image_names_the_file(tmp_path: Path) -> None:
    broken = write_jpeg(tmp_path / "0002_c1s1_000451_03.jpg")
    truncate(broken)
    with pytest.raises(ImageReadError, match=rf"image {broken} cannot be read \(OSError: .*truncated"):
        load_image(str(broken), (32, 16))
    with pytest.raises(ImageReadError, match=rf"image {tmp_path / 'gone.jpg'} cannot be read"):
        load_image(str(tmp_path / "gone.jpg"), (32, 16))
    assert ImageReadError("x").exit_code == EXIT_DATA_RULE


def test_worker_error_message_keeps_the_original_line() -> None:
    text = ("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
            "last):\n  File \"x.py\", line 1\n"
            "dgnet.data.transforms.ImageReadError: image a.jpg cannot be read")
    assert worker_error_message(text) == "image a.jpg cannot be read"
    assert worker_error_message("plain") == "plain"


def test_a_data_failure_mid_run_checkpoints_the_completed_iterations(tmp_path: Path, workspace: Path,
                                                                    monkeypatch) -> None:
    """checkpoint_every 0 used to lose every iteration; now the 2 completed ones are kept and resumed."""
    frame = read_validated_manifest(workspace / "data" / "manifest.csv")
    real = datasets_module.load_image
    calls = {"n": 0}

    def failing_in_the_third_batch(path: str, size: tuple[int, int]):
        calls["n"] += 1
        if calls["n"] > 8:  # batches of 4: iterations 1 and 2 complete, the third batch fails
            raise ImageReadError(f"image {path} cannot be read (OSError: image file is truncated)")
        return real(path, size)

    monkeypatch.setattr(datasets_module, "load_image", failing_in_the_third_batch)
    out = tmp_path / "run"
    with pytest.raises(ImageReadError) as err:
        train_teacher(frame, TINY, teacher_cfg(), out)
    message = str(err.value)
    assert "teacher: stopped after 2 of 4 iterations: image " in message and "is truncated" in message
    assert f"wrote checkpoint {out / 'checkpoints' / 'iter_00000002.pt'} of the 2 completed" in message
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["iter_00000002.pt"]
    monkeypatch.setattr(datasets_module, "load_image", real)
    assert train_teacher(frame, TINY, teacher_cfg(), out).iterations == 4  # resumes at 2


# ---- 3. one run per run folder --------------------------------------------------------------------


HOLD = ("import sys, time\nfrom dgnet.training.runlock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")


@pytest.fixture()
def holder(tmp_path: Path):
    """Another process holding tmp_path/run's lock."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_on_a_held_folder_names_the_holder(tmp_path: Path, holder, workspace: Path) -> None:
    with pytest.raises(RunLockedError, match=rf"run folder {tmp_path / 'run'} is in use by another run: "
                                             rf"pid {holder.pid} on .*, started 20"):
        train_teacher(read_validated_manifest(workspace / "data" / "manifest.csv"), TINY, teacher_cfg(),
                      tmp_path / "run")
    assert locked_by_another(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path, holder, capsys) -> None:
    holder.kill()
    holder.wait()
    assert not locked_by_another(tmp_path / "run")
    with run_lock(tmp_path / "run"):
        record = json.loads((tmp_path / "run" / HOLDER_NAME).read_text())
        assert record["pid"] == os.getpid()
        with run_lock(tmp_path / "run"):  # re-entrant: the stage locks, then the trainer
            pass
    err = capsys.readouterr().err
    assert f"taking over the lock of pid {holder.pid}" in err and "which is no longer running" in err


def test_an_unwritable_out_is_a_usage_error_without_traceback(tmp_path: Path, workspace: Path,
                                                              capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=f"run folder {blocker / 'out'} cannot be created or written"), \
            run_lock(blocker / "out"):
        pass
    code = run_cli("train-teacher", "--manifest", workspace / "data" / "manifest.csv", "--profile", "tiny",
                   "--out", blocker / "out", "--iterations", "1", "--device", "cpu", "--num-workers", "0")
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "cannot be created or written" in err and "Traceback" not in err


# ---- 4. resume past an unreadable checkpoint -------------------------------------------------


def test_resume_skips_an_unreadable_newest_checkpoint(tmp_path: Path, workspace: Path, capsys) -> None:
    frame = read_validated_manifest(workspace / "data" / "manifest.csv")
    out = tmp_path / "run"
    train_teacher(frame, TINY, teacher_cfg(iterations=2, checkpoint_every=1), out)
    newest = out / "checkpoints" / "iter_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a full disk cut it short
    capsys.readouterr()
    train_teacher(frame, TINY, teacher_cfg(iterations=3, checkpoint_every=1), out)
    captured = capsys.readouterr()
    skipped = f"warning: skipping checkpoint {newest} (moved aside to iter_00000002.pt.unreadable)"
    assert skipped in captured.err
    assert "resumed from" in captured.out and "iter_00000001.pt at iteration 1" in captured.out
    assert (out / "checkpoints" / "iter_00000002.pt.unreadable").is_file()


# ---- 5. exit codes and messages of validation --------------------------------------------------


def test_validate_lists_every_bad_file_name_with_the_count(tmp_path: Path) -> None:
    root = make_market(tmp_path / "market", gt_bbox=False)
    for i in range(12):
        write_jpeg(root / "bounding_box_test" / f"img_{i:02d}.jpg")
    with pytest.raises(DataRuleError) as err:
        build_manifest(root, "market1501")
    message = str(err.value)
    assert "rule file_names_follow_pattern: 12 file name(s) do not follow the market1501 pattern" in message
    assert str(root / "bounding_box_test" / "img_00.jpg") in message and "... and 2 more" in message


def test_validate_on_a_symlink_loop_or_an_unwritable_folder_exits_2(tmp_path: Path, capsys) -> None:
    from dgnet_pipeline.validate import run_validation

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert run_validation(tmp_path / "a", report=tmp_path / "r.json", docs=tmp_path / "docs",
                          manifest=tmp_path / "m.csv") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "cannot be resolved" in err and "Traceback" not in err
    root = make_market(tmp_path / "market", gt_bbox=False)
    (root / "query" / "x1.jpg").symlink_to(root / "query" / "x2.jpg")
    (root / "query" / "x2.jpg").symlink_to(root / "query" / "x1.jpg")
    assert run_validation(root, "market1501", report=tmp_path / "r.json", docs=tmp_path / "docs",
                          manifest=tmp_path / "m.csv") == EXIT_USAGE
    assert ".jpg: cannot be read (Too many levels of symbolic links)" in capsys.readouterr().err
    for name in ("x1.jpg", "x2.jpg"):
        (root / "query" / name).unlink()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_validation(root, report=tmp_path / "r.json", docs=tmp_path / "docs",
                          manifest=blocker / "manifest.csv") == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--manifest: cannot write {blocker / 'manifest.csv'}" in err and "Traceback" not in err


# ---- 6. small items ------------------------------------------------------------------------------


def test_query_alpha_must_lie_in_0_1() -> None:
    with pytest.raises(ConfigError, match=r"train.query_alpha: must be a number in \[0, 1\] .* got 5"):
        DGNetTrainConfig(query_alpha=5)
    assert DGNetTrainConfig(query_alpha=1).query_alpha == 1


def test_every_boolean_setting_must_be_true_or_false() -> None:
    from dgnet.config import DataConfig, EvaluateConfig

    for build, key in ((lambda: DGNetTrainConfig(compile=1), "train.compile"),
                       (lambda: get_profile("tiny", pretrained="no"), "model.pretrained"),
                       (lambda: DataConfig(include_gt_bbox="yes"), "data.include_gt_bbox"),
                       (lambda: EvaluateConfig(rerank=0), "evaluate.rerank")):
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: must be true or false"):
            build()
    assert DGNetTrainConfig(adam_betas=[0.5, 0.9]).adam_betas == (0.5, 0.9)  # YAML's lists as tuples


def test_a_float_written_1e_3_gets_the_yaml_hint() -> None:
    with pytest.raises(ConfigError, match=r"teacher.lr: must be a number, got the string '1e-3'; .*write "
                                          r"1.0e-3"):
        config_from_mapping(TeacherTrainConfig, {"lr": "1e-3"}, "teacher")


def test_a_nested_section_given_a_number_is_named() -> None:
    from dgnet.profiles import read_params

    with pytest.raises(ConfigError, match=r"train.schedule: expected a mapping of fields, got int"):
        read_params(Path(__file__).parents[1] / "params.yaml", assignments=["train.schedule=3"])


def test_params_help_says_it_takes_a_file(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--params FILE a params file (YAML or JSON" in " ".join(capsys.readouterr().out.split())


def test_tune_pruner_kind_none_over_median_settings() -> None:
    from dgnet.config import PrunerConfig

    pruner = {"kind": "none", "n_startup_trials": 3, "n_warmup_steps": 100}
    assert config_from_mapping(PrunerConfig, pruner, "tune.pruner").kind == "none"
    with pytest.raises(ConfigError, match=r"tune.pruner: unknown field\(s\) \['n_startup_trial'\]"):
        config_from_mapping(PrunerConfig, {"kind": "median", "n_startup_trial": 3}, "tune.pruner")


def test_stale_holder_files_do_not_block(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / HOLDER_NAME).write_text(json.dumps({"pid": 999_999_999, "host": "elsewhere",
                                                  "started": time.ctime()}))
    with run_lock(folder):
        assert json.loads((folder / HOLDER_NAME).read_text())["pid"] == os.getpid()


# ---- 7. the tracking store check ------------------------------------------------------------------


def test_an_unwritable_sqlite_store_fails_within_seconds(tmp_path: Path) -> None:
    from dgnet_pipeline.tracking import TrackingError, check_sqlite, connect

    (tmp_path / "a_folder.db").mkdir()  # a folder where the database file should be
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"sqlite:///.*a_folder.db cannot be written \(unable to open"):
        connect(f"sqlite:///{tmp_path / 'a_folder.db'}")
    with pytest.raises(TrackingError, match=r"the folder .*missing does not exist"):
        check_sqlite(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    assert time.monotonic() - started <= 5
    check_sqlite(f"sqlite:///{tmp_path / 'fine.db'}")
    check_sqlite("sqlite:///:memory:")


@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),  # errno.ENOSPC from the file write
    RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 4096 vs 4090\n"
                 "PytorchStreamWriter failed writing file data/3: file write failed"),  # torch's zip writer
])
def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(workspace: Path, tmp_path: Path, capsys,
                                                            monkeypatch, failure: Exception) -> None:
    """The disk fills up while the second checkpoint is written: exit 2 naming the file, the bytes it
    needs and the checkpoint kept, no traceback; the first checkpoint is whole and no temporary file is
    left (was: torch's RuntimeError as a traceback, exit 1)."""
    import torch

    from dgnet.training.checkpoint import load_checkpoint

    real_save, files = torch.save, []

    def filling_save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(target, str | os.PathLike):
            files.append(target)
            if len(files) == 2:
                Path(target).write_bytes(b"PK\x03\x04 half a checkpoint")
                raise failure
        real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_save)
    out = tmp_path / "out"
    code = run_cli("train-teacher", "--manifest", workspace / "data" / "manifest.csv", "--profile", "tiny",
                   "--out", out, "--iterations", "3", "--set", "teacher.checkpoint_every=1",
                   "--batch-size", "4", "--device", "cpu", "--num-workers", "0")
    err = capsys.readouterr().err
    folder = out / "checkpoints"
    assert code == EXIT_USAGE and "Traceback" not in err, err
    assert f"checkpoint {folder / 'iter_00000002.pt'}: cannot be written" in err
    assert ("the disk is full" if isinstance(failure, OSError) else "PytorchStreamWriter failed") in err
    assert re.search(r"needs about [\d,]{6,} bytes, [\d,]+ bytes free", err), err
    assert f"the last good checkpoint, {folder / 'iter_00000001.pt'}, is kept" in err
    assert [p.name for p in folder.iterdir()] == ["iter_00000001.pt"] and not (out / "model.pt").exists()
    assert load_checkpoint(folder / "iter_00000001.pt")["iteration"] == 1
