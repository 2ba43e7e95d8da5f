"""benchmark_model on tiny untrained models: every setting, generation figures, baselines, pictures."""

import numpy as np
import pytest
import torch

from dgnet.data.datasets import EvalImages
from dgnet.data.manifest import build_manifest
from dgnet.data.synthetic import generate_dataset, read_factors
from dgnet.errors import DatasetError
from dgnet.evaluation import benchmark
from dgnet.evaluation.benchmark import benchmark_model, generation_reference, markdown_table
from dgnet.evaluation.generation import swap_fidelity
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile


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
        assert 0.0 <= metrics["rank1"] <= 1.0 and 0.0 < metrics["mAP"] <= metrics["mAP_finite"] <= 1.0
        assert metrics["num_valid_queries"] == (frame["split"] == "query").sum()
    gen = result.generation
    assert gen["num_swaps"] == 12 and gen["swap_num_images"] == 12
    assert 0.0 < gen["swap_l1_person"] < 1.0 and -1.0 <= gen["swap_ssim_person"] <= 1.0
    assert gen["fid"] is None and "Inception" in gen["fid_skipped"]  # never faked without weights
    assert set(result.pictures) == {"ranked_list", "swap_grid"}
    assert result.pictures["swap_grid"].size[0] > 100
    flat = result.flat_metrics()
    assert "alpha_0.5/mAP" in flat and "alpha_0.5/mAP_finite" in flat and "generation/swap_l1_person" in flat
    assert "generation/baselines/copy_structure/swap_l1_person" in flat
    assert "generation/baselines/recon_blur4" in flat and "generation/recon_l1" in flat
    assert all(isinstance(v, int | float) for v in flat.values())


def test_generation_has_recon_and_trivial_baselines(dataset, model_files):
    root, frame = dataset
    result = benchmark_model(model_files[1], frame, name="dgnet", data_root=root, num_swaps=12)
    gen = result.generation
    test_images = (frame["split"].isin(["query", "gallery"]) & (frame["person_id"] > 0)).sum()
    assert gen["recon_num_images"] == test_images  # fewer than num_recon: all of them
    assert 0.0 < gen["recon_l1"] < 1.0
    baselines = gen["baselines"]
    assert set(baselines) == {"recon_mean_image", "recon_blur4", "copy_structure", "copy_appearance"}
    assert 0.0 < baselines["recon_blur4"] < baselines["recon_mean_image"] < 1.0  # the blur keeps the layout
    for name in ("copy_structure", "copy_appearance"):
        copy = baselines[name]
        assert set(copy) == {"swap_l1", "swap_l1_person", "swap_ssim", "swap_ssim_person", "swap_num_images"}
        assert copy["swap_num_images"] == 12 and 0.0 < copy["swap_l1_person"] < 1.0


def test_copy_structure_baseline_is_swap_fidelity_of_the_structure_images(dataset, model_files):
    root, frame = dataset
    result = benchmark_model(model_files[1], frame, data_root=root, num_swaps=12, seed=3)
    # The same pairs, drawn and scored here without the benchmark's shared ground truth.
    appearance_rows, structure_rows = benchmark._swap_pairs(frame, 12, seed=3)
    factors = read_factors(root).set_index("file_name", drop=False)
    a_factors, s_factors = factors.loc[appearance_rows["file_name"]], factors.loc[structure_rows["file_name"]]
    for name, rows in (("copy_structure", structure_rows), ("copy_appearance", appearance_rows)):
        images = EvalImages(rows, (64, 32))
        copied = torch.stack([images[i]["image"] for i in range(len(images))])
        direct = swap_fidelity(copied, a_factors, s_factors)
        got = result.generation["baselines"][name]
        for key, value in direct.items():
            assert got[f"swap_{key}"] == pytest.approx(value, abs=1e-9), (name, key)


def test_recon_l1_of_a_perfect_reconstruction_is_zero(dataset, model_files, monkeypatch):
    root, frame = dataset
    monkeypatch.setattr("dgnet.models.dgnet.DGNet.forward", lambda self, images: images)
    result = benchmark_model(model_files[1], frame, data_root=root, num_swaps=4)
    assert result.generation["recon_l1"] == pytest.approx(0.0, abs=1e-6)
    assert result.generation["baselines"]["recon_mean_image"] > 0.01


def test_no_factors_keeps_the_recon_baselines_and_skips_the_copy_ones(dataset, model_files):
    _, frame = dataset
    result = benchmark_model(model_files[1], frame, num_swaps=4)
    assert set(result.generation["baselines"]) == {"recon_mean_image", "recon_blur4"}
    assert "swap_l1_person" not in result.generation and "recon_l1" in result.generation


def test_references_are_shared_across_models_of_one_size(dataset, model_files, monkeypatch):
    root, frame = dataset
    built = []
    real = benchmark.generation_reference

    def counting(*args, **kwargs):
        built.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "generation_reference", counting)
    references = {}
    first = benchmark_model(model_files[1], frame, data_root=root, num_swaps=6, references=references)
    second = benchmark_model(model_files[1], frame, data_root=root, num_swaps=6, references=references)
    assert len(built) == 1 and len(references) == 1
    assert first.generation == second.generation  # same model, same shared pairs: same figures
    benchmark_model(model_files[1], frame.iloc[::-1], data_root=root, num_swaps=6, references=references)
    assert len(built) == 2  # another manifest (row order included): its own reference


def test_swap_pairs_are_exactly_count_pairs_of_different_identities(dataset):
    _, frame = dataset
    for count in (1, 7, 512):
        appearance, structure = benchmark._swap_pairs(frame, count, seed=5)
        assert len(appearance) == len(structure) == count
        assert (appearance["person_id"].to_numpy() != structure["person_id"].to_numpy()).all()
        assert (appearance["person_id"] > 0).all() and (structure["person_id"] > 0).all()
    again = benchmark._swap_pairs(frame, 7, seed=5)
    assert again[0]["path"].tolist() == benchmark._swap_pairs(frame, 7, seed=5)[0]["path"].tolist()
    # Structure donors cover the other identities, not only a few.
    _, structure = benchmark._swap_pairs(frame, 512, seed=0)
    test = frame[frame["split"].isin(["query", "gallery"]) & (frame["person_id"] > 0)]
    test_ids = set(test["person_id"])
    assert set(structure["person_id"]) == test_ids


def test_swap_pairs_need_two_identities(dataset):
    _, frame = dataset
    first_id = frame.loc[frame["split"] == "query", "person_id"].max()
    one = frame[(frame["split"] == "train") | (frame["person_id"] == first_id)]
    with pytest.raises(DatasetError, match="at least two"):
        benchmark._swap_pairs(one, 10, seed=0)


def test_reference_recon_images_are_a_seeded_sample_when_there_are_many(dataset):
    _, frame = dataset
    a = generation_reference(frame, (64, 32), None, 4, seed=1, num_recon=10)
    b = generation_reference(frame, (64, 32), None, 4, seed=1, num_recon=10)
    assert len(a.recon_images) == 10 and torch.equal(a.recon_images, b.recon_images)
    assert np.isfinite(a.baselines["recon_mean_image"]) and a.ground_truth is None


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
    m = result.reid["baseline"]
    assert "| mAP | mAP_finite |" in table
    assert f"| {100 * m['mAP']:.1f} | {100 * m['mAP_finite']:.1f} |" in table


def test_manifest_without_gallery_is_an_error(dataset, model_files):
    _, frame = dataset
    with pytest.raises(DatasetError, match="query and gallery"):
        benchmark_model(model_files[1], frame[frame["split"] != "gallery"])
