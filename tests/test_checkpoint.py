"""Checkpoint files: atomic, rotated, clear errors."""

from pathlib import Path

import pytest
import torch

from dgnet.errors import OutputError
from dgnet.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_readable_checkpoint,
    save_checkpoint,
)


def test_roundtrip_restores_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path, 10, {"model": model.state_dict()})
    state = load_checkpoint(path)
    assert state["iteration"] == 10
    assert torch.equal(state["model"]["weight"], model.weight)


def test_rotation_keeps_newest(tmp_path):
    for it in (5, 10, 15):
        save_checkpoint(tmp_path, it, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_00000010.pt", "iter_00000015.pt"]
    assert latest_checkpoint(tmp_path).name == "iter_00000015.pt"
    assert latest_checkpoint(tmp_path / "none") is None


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"x": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match=r"iter_00000002\.pt: cannot be written \(disk full\).*iter_0+1"):
        save_checkpoint(tmp_path, 2, {"x": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["iter_00000001.pt"]


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "iter_00000003.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"iter_00000003\.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    """A pickle that runs code when unpickled: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_code_pickle_is_not_executed_and_the_run_falls_back(tmp_path):
    """A crafted iter_*.pt in a shared run folder: never unpickled beyond tensors and plain values;
    resuming skips it (moved aside, named in the warning) and takes the previous checkpoint."""
    save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})
    marker = tmp_path / "payload_ran"
    torch.save({"iteration": 2, "x": _Payload(marker)}, tmp_path / "iter_00000002.pt")
    with pytest.raises(CheckpointError, match=r"iter_00000002\.pt.*other than tensors"):
        load_checkpoint(tmp_path / "iter_00000002.pt")
    warnings: list[str] = []
    path, state = newest_readable_checkpoint(tmp_path, warn=warnings.append)
    assert not marker.exists()
    assert path.name == "iter_00000001.pt" and state["iteration"] == 1
    assert "iter_00000002.pt" in warnings[0] and (tmp_path / "iter_00000002.pt.unreadable").exists()
