"""The released DG-Net checkpoints: `dgnet import-published`, output for output against the published ones.

tests/data/published/ holds the released files' layout (layout.json: keys, shapes, dtypes) and
what the published networks compute on deterministic weights (reference.pt), both from
../shared/published/ (its README gives the recipe). The test builds the four files by that recipe,
imports them with the command a user runs, and compares every entry: a mismatch is a departure of
our paper-profile networks from the published ones.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dgnet.cli import main
from dgnet.data.synthetic import generate_dataset as synthesize
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import load_model
from dgnet.models.published import sha256

PUBLISHED = Path(__file__).parent / "data" / "published"
TOLERANCE = 1e-4  # of each entry's largest magnitude


def recipe_state_dict(net: str, keys: list) -> dict[str, torch.Tensor]:
    """One released file's state dict filled by the reference's recipe (README of tests/data/published)."""
    state = {}
    for key, shape, dtype in keys:
        g = torch.Generator().manual_seed(zlib.crc32(f"dgnet:{net}:{key}".encode()))
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(0, dtype=getattr(torch, dtype))
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            value = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=g) * math.sqrt(1 / math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.05 * torch.randn(shape, generator=g)
        state[key] = value
    return state


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """The four released files, in their own format, built by the recipe."""
    folder = tmp_path_factory.mktemp("released")
    layout = json.loads((PUBLISHED / "layout.json").read_text())
    files = {}
    for title, entry in layout.items():
        net = title.split()[0]
        state = recipe_state_dict(net, entry["keys"])
        files[net] = folder / f"{net}.pt"
        torch.save(state if net == "teacher" else {"a": state}, files[net])
    return files


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported")
    code = main(["import-published", "--gen", str(released["gen"]), "--id", str(released["id"]),
                 "--dis", str(released["dis"]), "--teacher", str(released["teacher"]),
                 "--teacher-stride", "1", "--out", str(out)])
    assert code == 0
    return out


def test_the_imported_networks_compute_the_published_outputs(imported):
    reference = torch.load(PUBLISHED / "reference.pt", weights_only=True)
    model, info = load_model(imported / "model.pt", kind="dgnet")
    teacher, _ = load_model(imported / "teacher" / "model.pt", kind="teacher")
    assert info.config.num_classes == 751 and info.config.image_height == 256
    x = reference["input"]
    with torch.no_grad():
        structure = model.structure_encoder(x)
        appearance = model.appearance_encoder(x)
        recon = model.decode(structure, appearance.code)
        teacher_logits, teacher_bottleneck = teacher(x)
        ours = {
            "structure_code": structure, "appearance_code": appearance.code,
            "id_logits1": appearance.primary_logits, "id_logits2": appearance.fine_logits,
            "id_bottleneck1": appearance.primary_embedding, "id_bottleneck2": appearance.fine_embedding,
            "recon": recon, "swap": model.decode(structure.flip(0), appearance.code),
            "d_real": model.discriminator(x), "d_recon": model.discriminator(reference["recon"]),
            "teacher_logits": teacher_logits, "teacher_bottleneck": teacher_bottleneck,
        }  # fmt: skip
    assert set(ours) == set(reference) - {"input"}
    errors = {}
    for name, expected in reference.items():
        if name == "input":
            continue
        several = isinstance(expected, list | tuple)
        pairs = zip(expected, ours[name], strict=True) if several else [(expected, ours[name])]
        for index, (want, got) in enumerate(pairs):
            assert got.shape == want.shape, name
            errors[f"{name}[{index}]"] = ((got - want).abs().max() / want.abs().max()).item()
    assert max(errors.values()) <= TOLERANCE, {k: f"{v:.1e}" for k, v in errors.items() if v > TOLERANCE}


def test_the_model_files_record_where_they_came_from(imported, released):
    _, info = load_model(imported / "model.pt", kind="dgnet")
    files = info.extra["provenance"]["files"]
    assert set(files) == {"gen", "id", "dis"}
    assert all(files[net]["sha256"] == sha256(released[net]) for net in files)
    _, teacher_info = load_model(imported / "teacher" / "model.pt", kind="teacher")
    assert teacher_info.extra["provenance"]["files"]["teacher"]["sha256"] == sha256(released["teacher"])
    assert teacher_info.config.teacher_last_stride == 1


def test_without_dis_the_discriminator_is_initialised_and_said_so(released, tmp_path, capsys):
    code, _, _ = run(capsys, "import-published", "--gen", released["gen"], "--id", released["id"],
                     "--out", tmp_path)
    assert code == 0 and not (tmp_path / "teacher").exists()
    model, info = load_model(tmp_path / "model.pt", kind="dgnet")
    assert info.extra["provenance"]["discriminator"].startswith("initialised")
    assert isinstance(model, DGNet)


def test_the_teacher_stride_comes_from_opts_yaml(released, tmp_path, capsys):
    teacher = tmp_path / "best" / "net_last.pth"
    teacher.parent.mkdir()
    teacher.write_bytes(released["teacher"].read_bytes())
    (teacher.parent / "opts.yaml").write_text("stride: 2\nnclasses: 751\n")
    args = ["import-published", "--gen", released["gen"], "--id", released["id"], "--teacher", teacher]
    code, _, _ = run(capsys, *args, "--out", tmp_path / "a")
    _, info = load_model(tmp_path / "a" / "teacher" / "model.pt", kind="teacher")
    assert code == 0 and info.config.teacher_last_stride == 2
    code, _, err = run(capsys, *args, "--teacher-stride", "1", "--out", tmp_path / "b")
    assert code == 2 and "contradicts" in err and "opts.yaml" in err
    (teacher.parent / "opts.yaml").unlink()
    code, _, err = run(capsys, *args, "--out", tmp_path / "c")
    assert code == 2 and "--teacher-stride" in err and not (tmp_path / "c").exists()


def _corrupt(released: dict[str, Path], folder: Path, net: str, edit) -> Path:
    state = torch.load(released[net], weights_only=True)
    edit(state["a"] if net != "teacher" else state)
    path = folder / f"edited_{net}.pt"
    torch.save(state, path)
    return path


def test_a_wrong_file_exits_2_naming_the_file_and_the_key(released, tmp_path, capsys):
    def attempt(**files) -> str:
        paths = {"gen": released["gen"], "id": released["id"], **files}
        flags = [x for net, p in paths.items() for x in (f"--{net}", p)]
        argv = ["import-published", *flags, "--out", tmp_path / "out"]
        code, _, err = run(capsys, *argv)
        assert code == 2, err
        assert not (tmp_path / "out").exists(), "nothing is written when a file is wrong"
        return err

    err = attempt(gen=released["teacher"])  # a teacher passed as the generator
    assert str(released["teacher"]) in err and "looks like the teacher" in err
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(released["gen"].read_bytes()[:100_000])
    err = attempt(gen=truncated)
    assert str(truncated) in err and "cannot be read" in err

    def widen(state):  # a checkpoint of another width: E_s's first conv with 32 channels, not 16
        state["enc_content.model.0.conv.weight"] = torch.zeros(32, 1, 3, 3)
    err = attempt(gen=_corrupt(released, tmp_path, "gen", widen))
    assert "edited_gen.pt: 'enc_content.model.0.conv.weight' has shape (32, 1, 3, 3)" in err

    err = attempt(id=_corrupt(released, tmp_path, "id", lambda s: s.pop("model.layer4.2.bn3.weight")))
    assert "edited_id.pt" in err and "appearance_encoder.trunk.layer4.2.bn3.weight" in err
    extra_key = _corrupt(released, tmp_path, "id",
                         lambda s: s.update({"classifier3.weight": s["model.fc.bias"]}))
    err = attempt(id=extra_key)
    assert "edited_id.pt" in err and "'classifier3.weight'" in err

    code_pickle = tmp_path / "code.pt"
    torch.save({"a": {"enc_content.model.0.conv.weight": np.zeros(3)}}, code_pickle)  # not tensors only
    err = attempt(gen=code_pickle)
    assert str(code_pickle) in err


@pytest.mark.slow
def test_the_imported_model_extracts_generates_and_evaluates(imported, tmp_path, capsys):
    """The imported paper-profile model at work on synthetic data, as any trained model (256x128 on CPU)."""
    data = tmp_path / "synthetic"
    synthesize(data, seed=0, num_ids=8, num_cameras=3)
    model, teacher = imported / "model.pt", imported / "teacher" / "model.pt"
    code, out, err = run(capsys, "extract", "--model", model, "--images", data / "query",
                         "--out", tmp_path / "f.npy")
    assert code == 0, err
    features = np.load(tmp_path / "f.npy")
    assert features.shape[1] == 1024 and np.isfinite(features).all()
    code, out, err = run(capsys, "generate", "--model", model, "--images", data / "bounding_box_train",
                         "--out", tmp_path / "generated", "--pairs", 40, "--batch-size", 8)
    assert code == 0 and "40 images" in out, err
    code, out, err = run(capsys, "evaluate", "--model", model, "--model", teacher, "--data", data,
                         "--rerank", "--swaps", 16, "--recon", 16, "--out", tmp_path / "eval")
    assert code == 0, err
    name = imported.name  # a model is named after its folder
    assert f"| {name} | dgnet | alpha_0.5 |" in out and "| teacher | teacher | baseline |" in out
    assert "alpha_0.5+rerank" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics[name]["alpha_0.5/rank10"] <= 1
    # The swap grid is the one a trained model gets (benchmark_model draws both).
    assert (tmp_path / "eval" / f"{name}_swap_grid.png").is_file()
    assert (tmp_path / "eval" / "cmc" / "teacher.csv").is_file()


@pytest.mark.slow
def test_training_fine_tunes_the_imported_model(imported, tmp_path, capsys):
    """`dgnet train --init` starts from the imported weights (new classifiers for other identities);
    the released teacher (Market's 751 ids) and a model file of another profile are refused."""
    data = tmp_path / "synthetic"
    synthesize(data, seed=0, num_ids=8, num_cameras=3)
    start, _ = load_model(imported / "model.pt", kind="dgnet")
    argv = ["train", "--data", data, "--profile", "paper", "--iterations", 1, "--batch-size", 2,
            "--device", "cpu", "--num-workers", 0, "--init", imported / "model.pt"]
    teacher = imported / "teacher" / "model.pt"
    code, _, err = run(capsys, *argv, "--teacher", teacher, "--out", tmp_path / "no")
    assert code == 2 and "teacher" in err and "751" in err
    with pytest.warns(UserWarning, match="classifiers start new"):
        code, _, err = run(capsys, *argv, "--out", tmp_path / "tuned")
    assert code == 0, err
    tuned, info = load_model(tmp_path / "tuned" / "model.pt", kind="dgnet")
    assert info.config.num_classes == 4
    # One iteration moved the weights a little from the imported ones, not from a random start.
    before, after = start.structure_encoder.stem[0][0].weight, tuned.structure_encoder.stem[0][0].weight
    assert 0 < (after - before).abs().max() < 0.1 * before.abs().max()
    code, _, err = run(capsys, *argv[:-2], "--profile", "tiny", "--init", imported / "model.pt",
                       "--out", tmp_path / "tiny")
    assert code == 2 and "--init" in err and "differs" in err
