"""The trained model as an MLflow model: pyfunc + signature, models:/ URIs in dgnet, `mlflow models serve`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from dgnet.cli import main
from dgnet.inference.extract import FeatureExtractor, find_images, prepare_image
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import ModelFileError, save_model
from dgnet.profiles import get_profile
from dgnet.training.hooks import TrainingResult
from dgnet_pipeline.mlflow_hooks import MlflowHooks
from dgnet_pipeline.mlflow_model import save_pyfunc_model
from dgnet_pipeline.mlflow_runs import ensure_experiment, tracked_run
from dgnet_pipeline.tracking import artifact_location, connect

TINY = get_profile("tiny", num_classes=4)
NAME = "dgnet-serve-test"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("model") / "model.pt", DGNet(TINY), "dgnet", TINY)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 5 small JPEG crops of different sizes (the extractor resizes them)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(5):
        pixels = rng.integers(0, 256, size=(60 + 4 * k, 30 + 2 * k, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"crop{k}.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def registered(tmp_path_factory, model_file):
    """A SQLite store in which the training hook logged and registered `model_file` as NAME@current."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = connect(uri)
    experiment_id = ensure_experiment(client, "serve-test", artifact_location(uri))
    with tracked_run(client, experiment_id, "dgnet", {}) as run:
        hooks = MlflowHooks(client, run.info.run_id, registered_model=NAME, alias="current")
        hooks.log_model(TrainingResult("dgnet", model_file, 1, {"mAP": 0.5}, {}))
    return uri, client


def test_pyfunc_gives_the_extractors_features_with_its_signature(model_file, tmp_path):
    save_pyfunc_model(model_file, tmp_path / "m")
    written = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"MLmodel", "model.pt", "requirements.txt", "python_env.yaml"} <= written
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    (spec,) = loaded.metadata.get_input_schema().inputs
    assert spec.shape == (-1, 3, TINY.image_height, TINY.image_width) and spec.type == np.dtype(np.float32)
    assert loaded.metadata.get_output_schema().inputs[0].shape == (-1, 2 * TINY.embedding_dim)
    images = torch.randn(3, 3, TINY.image_height, TINY.image_width)
    expected = FeatureExtractor(model_file).features(images).numpy()
    np.testing.assert_allclose(loaded.predict(images.numpy()), expected, atol=1e-6)
    images[1, 0, 2, 3] = float("nan")
    with pytest.raises(MlflowException, match=r"row\(s\) \[1\] hold NaN") as raised:
        loaded.predict(images.numpy())
    assert raised.value.get_http_status_code() == 400


def test_registered_model_is_an_mlflow_model_and_a_dgnet_uri(registered, model_file, images, tmp_path,
                                                              monkeypatch, capsys):
    uri, client = registered
    version = client.get_model_version_by_alias(NAME, "current")
    files = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert {"model/MLmodel", "model/model.pt", "model/config.json"} <= files
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    x = torch.randn(2, 3, TINY.image_height, TINY.image_width)
    by_uri = FeatureExtractor(f"models:/{NAME}@current").features(x)
    torch.testing.assert_close(by_uri, FeatureExtractor(model_file).features(x), rtol=0, atol=0)
    assert main(["extract", "--model", f"models:/{NAME}@current", "--images", str(images),
                 "--out", str(tmp_path / "f.npy")]) == 0
    assert np.load(tmp_path / "f.npy").shape == (5, 2 * TINY.embedding_dim)
    capsys.readouterr()
    with pytest.raises(ModelFileError, match=r"models:/absent@current: cannot be fetched from the MLflow"):
        FeatureExtractor("models:/absent@current")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_features_of_dgnet_extract(registered, images, tmp_path,
                                                                       monkeypatch):
    uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # never the repository's mlflow.db
    assert main(["extract", "--model", f"models:/{NAME}@current", "--images", str(images),
                 "--out", str(tmp_path / "f.npy")]) == 0
    expected = np.load(tmp_path / "f.npy")
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "OMP_NUM_THREADS": "1"}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log_file = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - the server outlives this statement
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{NAME}@current", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "serve.log").read_text()[-2000:]
                pytest.fail(f"mlflow models serve did not come up: {log}")
            time.sleep(0.5)
        size = (TINY.image_height, TINY.image_width)  # the request carries what the model sees
        batch = np.stack([prepare_image(p, size).numpy() for p in find_images(images)])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": batch.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        np.testing.assert_allclose(np.asarray(answer["predictions"], dtype=np.float32), expected, atol=1e-5)
        batch[2, 1, 0, 0] = np.nan  # JSON's NaN: a 400 naming the row, not a NaN feature with 200
        request = urllib.request.Request(request.full_url, headers={"Content-Type": "application/json"},
                                         data=json.dumps({"inputs": batch.tolist()}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 400 and "row(s) [2]" in refused.value.read().decode()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log_file.close()
