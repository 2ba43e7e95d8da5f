"""Model files: round trip for both kinds, and clear errors for missing, corrupt and foreign files."""

from __future__ import annotations

import pytest
import torch

from dgnet.models.dgnet import DGNet
from dgnet.models.persist import ModelFileError, load_model, read_model_file, save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile

CFG = get_profile("tiny", num_classes=5)
LABELS = {3: 0, 7: 1, 9: 2, 12: 3, 20: 4}


@pytest.mark.parametrize("kind, cls", [("teacher", ReidBaseline), ("dgnet", DGNet)])
def test_roundtrip_rebuilds_the_model(tmp_path, kind, cls):
    torch.manual_seed(0)
    model = cls(CFG)
    path = save_model(tmp_path / "m" / "model.pt", model, kind, CFG, extra={"label_map": LABELS, "seed": 3})
    loaded, info = load_model(path, kind=kind)
    assert isinstance(loaded, cls) and not loaded.training
    assert info.kind == kind and info.config == CFG and info.label_map == LABELS and info.extra["seed"] == 3
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    path = tmp_path / "outputs" / "teacher" / "model.pt"
    with pytest.raises(ModelFileError, match=r"missing teacher: .*outputs/teacher/model.pt does not exist — "
                                             r"run the teacher stage first"):
        load_model(path, kind="teacher")


def test_corrupt_foreign_and_wrong_kind_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00 not a torch file")
    with pytest.raises(ModelFileError, match=r"corrupt\.pt cannot be read"):
        load_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ModelFileError, match=r"foreign\.pt is not a dgnet model file"):
        load_model(foreign)
    teacher = save_model(tmp_path / "teacher.pt", ReidBaseline(CFG), "teacher", CFG)
    with pytest.raises(ModelFileError, match="holds a teacher model, a dgnet model is needed"):
        read_model_file(teacher, kind="dgnet")
    with pytest.raises(TypeError, match="holds a DGNet"):
        save_model(tmp_path / "x.pt", ReidBaseline(CFG), "dgnet", CFG)


def test_equal_weights_give_byte_identical_files(tmp_path):
    # DVC hashes outputs by bytes: a re-run that reproduces the weights must not change the file.
    cfg = get_profile("tiny", num_classes=4)
    torch.manual_seed(0)
    model = ReidBaseline(cfg)
    first = save_model(tmp_path / "a" / "model.pt", model, "teacher", cfg)
    second = save_model(tmp_path / "other_name.pt", model, "teacher", cfg)
    assert first.read_bytes() == second.read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    third = save_model(tmp_path / "changed.pt", model, "teacher", cfg)
    assert third.read_bytes() != first.read_bytes()
