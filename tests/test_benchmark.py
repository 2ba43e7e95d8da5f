"""benchmark_model on tiny untrained models: every setting, generation figures and pictures."""

import pytest
import torch

from dgnet.data.manifest import build_manifest
from dgnet.data.synthetic import generate_dataset
from dgnet.errors import DatasetError
from dgnet.evaluation.benchmark import benchmark_model, markdown_table
from dgnet.models.config import get_profile
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "data"
    generate_dataset(root, seed=1, num_ids=8, num_cameras=3)
    return root, build_manifest(root)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, dataset):
    _, frame = dataset
    cfg = get_profile("tiny", num_classes=int(frame["label"].max()) + 1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    return (save_model(folder / "teacher.pt", ReidBaseline(cfg), "teacher", cfg),
            save_model(folder / "dgnet.pt", DGNet(cfg), "dgnet", cfg))


def test_dgnet_benchmark_has_alpha_sweep_generation_and_pictures(dataset, model_files):
    root, frame = dataset
    result = benchmark_model(model_files[1], frame, name="dgnet", data_root=root, num_swaps=12, rerank=True)
    assert set(result.reid) == {"alpha_0", "alpha_0.5", "alpha_1", "fine_only", "alpha_0.5+rerank"}
    for metrics in result.reid.values():
        assert 0.0 <= metrics["rank1"] <= 1.0 and 0.0 < metrics["mAP"] <= 1.0
        assert metrics["num_valid_queries"] == (frame["split"] == "query").sum()
    gen = result.generation
    assert gen["num_swaps"] == 12 and gen["swap_num_images"] == 12
    assert 0.0 < gen["swap_l1_person"] < 1.0 and -1.0 <= gen["swap_ssim_person"] <= 1.0
    assert gen["fid"] is None and "Inception" in gen["fid_skipped"]  # never faked without weights
    assert set(result.pictures) == {"ranked_list", "swap_grid"}
    assert result.pictures["swap_grid"].size[0] > 100
    flat = result.flat_metrics()
    assert "alpha_0.5/mAP" in flat and "generation/swap_l1_person" in flat


def test_alpha_sweep_outside_the_picture_alpha_and_no_factors(dataset, model_files):
    _, frame = dataset
    result = benchmark_model(model_files[1], frame, alphas=(0.0, 1.0), num_swaps=4)
    assert set(result.reid) == {"alpha_0", "alpha_1", "fine_only"}
    assert "ranked_list" in result.pictures
    assert "swap_fidelity_skipped" in result.generation  # no factors.csv given: no ground truth


def test_teacher_benchmark_is_one_setting_without_generation(dataset, model_files):
    _, frame = dataset
    result = benchmark_model(model_files[0], frame, name="teacher")
    assert list(result.reid) == ["baseline"] and result.generation == {}
    table = markdown_table([result])
    assert "| teacher | teacher | baseline |" in table


def test_manifest_without_gallery_is_an_error(dataset, model_files):
    _, frame = dataset
    with pytest.raises(DatasetError, match="query and gallery"):
        benchmark_model(model_files[1], frame[frame["split"] != "gallery"])
