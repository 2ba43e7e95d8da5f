"""Atomic writes: whole or nothing, ordinary permissions."""

import os

import pytest

from dgnet.io import atomic_dir, atomic_path, write_json


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "data"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_synth_and_generate_never_delete_what_they_did_not_write(tmp_path, capsys, monkeypatch):
    """--out replaces the whole folder: only an empty one or a previous output of the same command
    (its signature file) is replaced; a folder of the user's, `.` and the folders above are refused."""
    from dgnet.cli import main
    from dgnet.models.dgnet import DGNet
    from dgnet.models.persist import save_model
    from dgnet.profiles import get_profile

    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--ids", "8", "--cameras", "3"]) == 0
    assert main(["synth", "--out", str(data), "--ids", "8", "--cameras", "3", "--seed", "1"]) == 0  # its own
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["synth", "--out", str(mine)]) == 2
    assert "did not write" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
    monkeypatch.chdir(mine / "sub")
    for here in (".", ".."):
        assert main(["synth", "--out", here]) == 2
        assert "current folder" in capsys.readouterr().err
    assert (mine / "notes.txt").is_file() and (mine / "sub").is_dir()

    cfg = get_profile("tiny", num_classes=4)
    model = save_model(tmp_path / "m.pt", DGNet(cfg), "dgnet", cfg)
    args = ["generate", "--model", str(model), "--images", str(data / "bounding_box_train"), "--pairs", "40"]
    assert main([*args, "--out", str(mine)]) == 2 and (mine / "notes.txt").is_file()
    assert main([*args, "--out", str(tmp_path / "generated")]) == 0
    assert main([*args, "--out", str(tmp_path / "generated"), "--seed", "1"]) == 0  # its own output
