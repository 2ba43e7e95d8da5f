"""Using a trained model: `dgnet extract` / FeatureExtractor, `rank`, `generate`, `export`, bad input."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import EntryPoint

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dgnet
from dgnet.cli import main
from dgnet.data.datasets import EvalImages
from dgnet.data.manifest import build_manifest
from dgnet.data.synthetic import generate_dataset as synthesize
from dgnet.data.validated import validate_dataset
from dgnet.evaluation.features import extract_features
from dgnet.inference import extract as extract_module
from dgnet.inference import onnx_export
from dgnet.inference.extract import FeatureExtractor
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import ModelFileError, load_model, save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile
from tests.fixtures import truncate

TINY = get_profile("tiny", num_classes=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small synthetic dataset (Market-1501 layout, 64x128 JPEGs)."""
    root = tmp_path_factory.mktemp("inference") / "synthetic"
    synthesize(root, seed=0, num_ids=8, num_cameras=3)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Randomly initialised tiny model files: a DG-Net and a teacher."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {"dgnet": save_model(folder / "dgnet.pt", DGNet(TINY), "dgnet", TINY),
            "teacher": save_model(folder / "teacher.pt", ReidBaseline(TINY), "teacher", TINY)}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- FeatureExtractor and `dgnet extract` ---------------------------------------------------------


@pytest.mark.parametrize("kind, dim", [("dgnet", 2 * TINY.embedding_dim), ("teacher", TINY.embedding_dim)])
def test_features_are_the_evaluators(models, data, kind, dim):
    extractor = dgnet.FeatureExtractor(models[kind])
    model, _ = load_model(models[kind])
    frame = build_manifest(data)
    frame = frame[frame["split"] == "query"].head(5)
    images = torch.stack([EvalImages(frame, extractor.image_size)[i]["image"] for i in range(len(frame))])
    expected = extract_features(model, images)  # what the evaluator ranks with (flip-averaged)
    assert extractor.dim == dim and extractor.features(images).shape == (5, dim)
    torch.testing.assert_close(extractor.features(images), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(extractor(frame["path"].tolist()), expected, rtol=0, atol=1e-6)
    with Image.open(frame["path"].iloc[0]) as pil:  # PIL images load the same way as files
        torch.testing.assert_close(extractor([pil.copy()]), expected[:1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(N, 3, 64, 32\)"):
        extractor.features(torch.zeros(2, 3, 32, 32))


def test_extract_writes_features_and_names(models, data, tmp_path, capsys):
    code, out, _ = run(capsys, "extract", "--model", models["dgnet"], "--images", data / "query",
                       "--out", tmp_path / "q.npy", "--batch-size", 4)
    assert code == 0 and "images/s" in out
    features = np.load(tmp_path / "q.npy")
    names = pd.read_csv(tmp_path / "q.csv")
    expected = sorted(p.name for p in (data / "query").glob("*.jpg"))
    assert names["name"].tolist() == expected and features.shape == (len(expected), 32)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features[:, :16], axis=1), 1.0, atol=1e-5)  # per-head unit
    again = FeatureExtractor(models["dgnet"])(names["path"].tolist()).numpy()
    np.testing.assert_allclose(features, again, atol=1e-6)

    # A manifest: its rows in its order, its columns kept beside the features.
    manifest = tmp_path / "m.csv"
    frame = build_manifest(data)
    frame[frame["split"] == "gallery"].head(6).to_csv(manifest, index=False)
    code, _, _ = run(capsys, "extract", "--model", models["teacher"], "--manifest", manifest,
                     "--out", tmp_path / "g.npy")
    names = pd.read_csv(tmp_path / "g.csv")
    assert code == 0 and np.load(tmp_path / "g.npy").shape == (6, 16)
    assert {"name", "path", "person_id", "camera_id", "split"} <= set(names.columns)


def test_extract_bad_input_names_the_thing_and_the_rule(models, data, tmp_path, capsys):
    images = tmp_path / "imgs"
    shutil.copytree(data / "query", images)
    code, _, err = run(capsys, "extract", "--model", tmp_path / "absent.pt", "--images", images,
                       "--out", tmp_path / "f.npy")
    assert code == 2 and "absent.pt does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--images", tmp_path / "empty",
                       "--out", tmp_path / "f.npy")
    assert code == 2 and "no images in it" in err
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--images", tmp_path / "nowhere",
                       "--out", tmp_path / "f.npy")
    assert code == 2 and "nowhere: folder does not exist" in err
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--images", images,
                       "--out", tmp_path / "f.txt")
    assert code == 2 and "must end in .npy" in err
    broken = sorted(images.glob("*.jpg"))[1]
    truncate(broken)
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--images", images,
                       "--out", tmp_path / "f.npy")
    assert code == 1 and broken.name in err and "cannot be read" in err
    assert not (tmp_path / "f.npy").exists()  # nothing half-written
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.jpg"]}).to_csv(manifest, index=False)
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--manifest", manifest,
                       "--out", tmp_path / "f.npy")
    assert code == 1 and "rule files_exist" in err and "a.jpg" in err
    pd.DataFrame({"file": ["a.jpg"]}).to_csv(manifest, index=False)
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--manifest", manifest,
                       "--out", tmp_path / "f.npy")
    assert code == 2 and "needs a `path` column" in err


def test_a_model_uri_without_mlflow_is_a_clear_error(models, monkeypatch):
    monkeypatch.setattr(extract_module, "entry_points", lambda group: [])
    with pytest.raises(ModelFileError, match=r"models:/dgnet@current: .*no resolver is installed.*model\.pt"):
        FeatureExtractor("models:/dgnet@current")

    class Absent(EntryPoint):
        def load(self):
            raise ImportError("No module named 'mlflow'")

    absent = Absent("models", "dgnet_pipeline.mlflow_model:download_model", "dgnet.model_uris")
    monkeypatch.setattr(extract_module, "entry_points", lambda group: [absent])
    with pytest.raises(ModelFileError, match=r"needs MLflow, which cannot be imported here"):
        FeatureExtractor("models:/dgnet@current")

    def lazy_resolver(uri, dst):  # dgnet_pipeline.mlflow_model imports MLflow only when called
        raise ImportError("import of mlflow halted")

    class Lazy(EntryPoint):
        def load(self):
            return lazy_resolver

    lazy = Lazy("models", "dgnet_pipeline.mlflow_model:download_model", "dgnet.model_uris")
    monkeypatch.setattr(extract_module, "entry_points", lambda group: [lazy])
    with pytest.raises(ModelFileError, match=r"needs MLflow, which cannot be imported here"):
        FeatureExtractor("models:/dgnet@current")


# --- `dgnet rank` ------------------------------------------------------------------------------------


def test_rank_writes_lists_picture_page_and_metrics(models, data, tmp_path, capsys):
    code, out, _ = run(capsys, "rank", "--model", models["dgnet"], "--query", data / "query",
                       "--gallery", data / "bounding_box_test", "--out", tmp_path / "r", "--top-k", 5)
    assert code == 0 and "rank-1" in out
    ranking = pd.read_csv(tmp_path / "r" / "ranking.csv")
    num_queries = len(list((data / "query").glob("*.jpg")))
    assert len(ranking) == 5 * num_queries and ranking.groupby("query")["rank"].max().eq(5).all()
    assert ranking.groupby("query")["distance"].apply(lambda d: d.is_monotonic_increasing).all()
    assert set(ranking["match"]) <= {"hit", "miss", "junk"}
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["id_format"] == "market1501" and 0 <= metrics["mAP"] <= 1
    page = (tmp_path / "r" / "index.html").read_text()
    assert page.count("<img") == num_queries * 6 and "../" in page  # links to the image files
    assert Image.open(tmp_path / "r" / "ranking.png").size[0] > 100

    # Images without ids in their names: "unknown" marks, no metrics; re-ranking changes distances.
    query, gallery = tmp_path / "mine" / "q", tmp_path / "mine" / "g"
    for folder, source in ((query, data / "query"), (gallery, data / "bounding_box_test")):
        folder.mkdir(parents=True)
        for k, path in enumerate(sorted(source.glob("*.jpg"))[:6]):
            Image.open(path).save(folder / f"person {k}.png")
    code, _, _ = run(capsys, "rank", "--model", models["teacher"], "--query", query, "--gallery", gallery,
                     "--out", tmp_path / "u", "--rerank", "--k1", 3, "--k2", 2)
    ranking = pd.read_csv(tmp_path / "u" / "ranking.csv")
    assert code == 0 and set(ranking["match"]) == {"unknown"} and len(ranking) == 36
    assert not (tmp_path / "u" / "metrics.json").exists()
    code, _, err = run(capsys, "rank", "--model", models["teacher"], "--query", query, "--gallery",
                       tmp_path / "none", "--out", tmp_path / "u")
    assert code == 2 and "--gallery" in err and "does not exist" in err


# --- `dgnet generate` --------------------------------------------------------------------------------


def test_generate_writes_a_dataset_the_teacher_trains_on(models, data, tmp_path, capsys):
    out = tmp_path / "generated"
    code, stdout, _ = run(capsys, "generate", "--model", models["dgnet"], "--images",
                          data / "bounding_box_train", "--out", out, "--pairs", 80, "--batch-size", 32)
    assert code == 0 and "80 images" in stdout
    provenance = pd.read_csv(out / "provenance.csv")
    assert len(provenance) == 80 and all((out / f).is_file() for f in provenance["file"])
    # The id is the appearance donor's, the camera (the place) the structure donor's; two people.
    assert (provenance["person_id"] == provenance["appearance_person_id"]).all()
    assert (provenance["camera_id"] == provenance["structure_camera_id"]).all()
    assert (provenance["structure_person_id"] != provenance["appearance_person_id"]).all()
    train = provenance["split"] == "train"
    assert set(provenance.loc[train, "structure_person_id"]).isdisjoint(provenance.loc[~train, "person_id"])
    with Image.open(out / provenance["file"].iloc[0]) as image:
        assert image.size == (TINY.image_width, TINY.image_height)
    # dgnet validate's rules pass, and the teacher trains on it.
    frame = validate_dataset(out, "market1501", report=tmp_path / "validation.json")
    assert set(frame["split"]) == {"train", "query", "gallery"}
    code, _, _ = run(capsys, "train-teacher", "--data", out, "--profile", "tiny", "--out", tmp_path / "t",
                     "--iterations", 1, "--batch-size", 4, "--device", "cpu", "--num-workers", 0)
    assert code == 0 and (tmp_path / "t" / "model.pt").is_file()


def test_generate_refuses_what_it_cannot_do(models, data, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--model", models["teacher"], "--images",
                       data / "bounding_box_train", "--out", tmp_path / "g")
    assert code == 2 and "holds a teacher model, a dgnet model is needed" in err
    donors = tmp_path / "donors"
    donors.mkdir()
    for path in sorted((data / "bounding_box_train").glob("*.jpg"))[:4]:
        shutil.copy(path, donors / path.name)
    shutil.copy(path, donors / "holiday.jpg")
    generate = ("generate", "--model", models["dgnet"], "--images", donors)
    code, _, err = run(capsys, *generate, "--out", tmp_path / "g")
    assert code == 1 and "rule file_names_follow_pattern" in err and "holiday.jpg" in err
    (donors / "holiday.jpg").unlink()
    code, _, err = run(capsys, *generate, "--out", tmp_path / "g")
    assert code == 2 and "identities among the donor images" in err
    code, _, err = run(capsys, *generate, "--out", tmp_path)
    assert code == 2 and "would replace the donor images' folder" in err
    assert not (tmp_path / "g").exists()


# --- `dgnet export --format onnx` --------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["tiny", "cpu"])
def test_onnx_export_matches_pytorch(profile, tmp_path, capsys):
    cfg = get_profile(profile, num_classes=10, pretrained=False)
    torch.manual_seed(1)
    path = save_model(tmp_path / "model.pt", DGNet(cfg), "dgnet", cfg)
    code, out, _ = run(capsys, "export", "--model", path, "--format", "onnx", "--out", tmp_path / "m.onnx")
    report = json.loads(out)
    print(f"{profile}: ONNX max abs difference {report['max_abs_diff']:.3g}")
    assert code == 0 and report["max_abs_diff"] <= 1e-4
    assert report["output"] == f"features (N, {2 * cfg.embedding_dim}) float32"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, cfg.image_height, cfg.image_width)  # a batch size never traced
    (got,) = session.run(["features"], {"images": images.numpy()})
    np.testing.assert_allclose(got, FeatureExtractor(path).features(images).numpy(), atol=1e-4)


def test_export_without_onnxruntime_names_the_package(models, tmp_path, capsys, monkeypatch):
    real = onnx_export.importlib.import_module

    def without_onnxruntime(name: str, *args):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args)

    monkeypatch.setattr(onnx_export.importlib, "import_module", without_onnxruntime)
    code, _, err = run(capsys, "export", "--model", models["dgnet"], "--format", "onnx",
                       "--out", tmp_path / "m.onnx")
    assert code == 2 and "`onnxruntime`" in err and "pip install" in err
    assert not (tmp_path / "m.onnx").exists()


# --- Outputs that cannot be written ---------------------------------------------------------------


def test_an_unwritable_out_stops_every_command_before_the_work(models, data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # a path under a file: unwritable even for root
    def no_work(*args, **kwargs):
        raise AssertionError("the model ran although its output cannot be written")
    monkeypatch.setattr(FeatureExtractor, "extract", no_work)
    monkeypatch.setattr("dgnet.inference.generate.generate_dataset", no_work)
    monkeypatch.setattr(onnx_export, "export_onnx", no_work)
    commands = {
        "extract": ["--model", models["dgnet"], "--images", data / "query", "--out", blocker / "f.npy"],
        "rank": ["--model", models["dgnet"], "--query", data / "query",
                 "--gallery", data / "bounding_box_test", "--out", blocker / "ranking"],
        "generate": ["--model", models["dgnet"], "--images", data / "bounding_box_train",
                     "--out", blocker / "g"],
        "export": ["--model", models["dgnet"], "--format", "onnx", "--out", blocker / "m.onnx"],
        "evaluate": ["--model", models["dgnet"], "--data", data, "--out", blocker / "e"],
    }
    for command, argv in commands.items():
        code, _, err = run(capsys, command, *argv)
        assert code == 2, (command, err)
        assert f"{command}: cannot write" in err and str(blocker) in err and "Traceback" not in err, err


def test_a_full_disk_while_writing_is_exit_2_naming_the_file(models, data, tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f.npy"))
    monkeypatch.setattr(np, "save", full)
    code, _, err = run(capsys, "extract", "--model", models["dgnet"], "--images", data / "query",
                       "--out", tmp_path / "f.npy")
    assert code == 2 and "the disk is full" in err and "f.npy" in err
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temporary left
