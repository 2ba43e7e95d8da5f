"""Generation metrics against hand-computed answers: SSIM, SSIM diversity, swap fidelity, FID."""

import numpy as np
import pytest
import torch

from dgnet.data.synthetic import render_swap, sample_factors
from dgnet.data.transforms import normalize
from dgnet.evaluation import generation as gen
from dgnet.evaluation.generation import (
    SSIM_C1,
    SSIM_C2,
    blur,
    blur_l1,
    fid,
    frechet_distance,
    gaussian_window,
    image_l1,
    mean_image,
    mean_image_l1,
    ssim,
    ssim_diversity,
    ssim_map,
    swap_fidelity,
    swap_ground_truth,
)


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 3, 24, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_ssim_of_a_flat_image_and_its_negation():
    # sigma = 0 everywhere, so SSIM = (2 c (1 - c) + C1) / (c^2 + (1 - c)^2 + C1).
    c = 0.2
    x = torch.full((1, 3, 16, 16), c)
    expected = (2 * c * (1 - c) + SSIM_C1) / (c**2 + (1 - c) ** 2 + SSIM_C1)
    assert ssim(x, 1 - x).item() == pytest.approx(expected, abs=1e-7)  # 0.4707


def test_ssim_of_a_checkerboard_and_its_negation_is_near_minus_one():
    # cov = -var: SSIM = (2 mu (1 - mu) + C1)(C2 - 2 var) / ((mu^2 + (1 - mu)^2 + C1)(2 var + C2)), var ~ 1/4.
    board = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16)
    assert -1.0 < ssim(board, 1 - board).item() < -0.99


def test_ssim_equals_the_formula_on_one_window():
    rng = np.random.default_rng(1)
    x, y = rng.random((3, 11, 11)), rng.random((3, 11, 11))
    w = gaussian_window().numpy()
    w2 = np.outer(w, w)
    values = []
    for c in range(3):
        mx, my = (w2 * x[c]).sum(), (w2 * y[c]).sum()
        vx, vy = (w2 * x[c] ** 2).sum() - mx**2, (w2 * y[c] ** 2).sum() - my**2
        cov = (w2 * x[c] * y[c]).sum() - mx * my
        num = (2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)
        values.append(num / ((mx**2 + my**2 + SSIM_C1) * (vx + vy + SSIM_C2)))
    got = ssim_map(torch.from_numpy(x)[None], torch.from_numpy(y)[None])
    assert got.shape == (1, 1, 1)
    assert got.item() == pytest.approx(np.mean(values), abs=1e-12)


def test_masked_ssim_averages_the_map_over_the_mask():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 20, 14, generator=g), torch.rand(2, 3, 20, 14, generator=g)
    mask = torch.zeros(2, 20, 14, dtype=torch.bool)
    mask[:, 8:12, 6:9] = True  # window centres: map rows 3..6, columns 1..3
    value = ssim_map(x, y)
    assert torch.allclose(ssim(x, y, mask), value[:, 3:7, 1:4].flatten(1).mean(1))


def test_ssim_diversity():
    g = torch.Generator().manual_seed(3)
    same = torch.rand(1, 3, 16, 16, generator=g).expand(5, 3, 16, 16)
    assert ssim_diversity(same, num_pairs=10) == pytest.approx(1.0)
    two = torch.rand(2, 3, 16, 16, generator=g)
    assert ssim_diversity(two, num_pairs=7) == pytest.approx(ssim(two[:1], two[1:]).item())  # one pair
    many = torch.rand(20, 3, 16, 16, generator=g)
    a, b = ssim_diversity(many, num_pairs=30, seed=4), ssim_diversity(many, num_pairs=30, seed=4)
    assert a == b and a != ssim_diversity(many, num_pairs=30, seed=5)
    with pytest.raises(ValueError, match="at least 2"):
        ssim_diversity(many[:1])


@pytest.fixture(scope="module")
def swap_rows():
    table = sample_factors(seed=0, num_ids=4)
    rows = table.iloc[:3].to_dict("records")
    return rows, rows[::-1]  # pairs (0, 2), (1, 1), (2, 0)


def _truth(appearance, structure):
    images, masks = zip(*(render_swap(a, s) for a, s in zip(appearance, structure, strict=True)), strict=True)
    images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return images, torch.from_numpy(np.stack(masks))


def test_ground_truth_against_itself(swap_rows):
    appearance, structure = swap_rows
    truth, _ = _truth(appearance, structure)
    exact = swap_fidelity(truth, appearance, structure, normalized=False)
    assert exact["l1"] == 0 and exact["l1_person"] == 0
    assert exact["ssim"] == pytest.approx(1.0) and exact["ssim_person"] == pytest.approx(1.0)
    assert exact["num_images"] == 3
    # The same images in the generator's normalised space: equal up to float rounding.
    normed = swap_fidelity(normalize(truth), appearance, structure)
    assert normed["l1"] < 1e-6 and normed["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_masked_l1_on_a_hand_made_error(swap_rows):
    appearance, structure = swap_rows
    truth, mask = _truth(appearance, structure)
    # Every person pixel and channel off by exactly 0.25 (down where bright, up where dark).
    error = torch.where(truth > 0.5, -0.25, 0.25) * mask[:, None]
    result = swap_fidelity(truth + error, appearance, structure, normalized=False)
    assert result["l1_person"] == pytest.approx(0.25, abs=1e-6)
    fractions = mask.double().flatten(1).mean(1)
    assert result["l1"] == pytest.approx(float((0.25 * fractions).mean()), abs=1e-6)
    assert result["ssim"] < 1 and result["ssim_person"] < result["ssim"]  # the error is in the person


def test_swap_fidelity_resizes_the_ground_truth(swap_rows):
    appearance, structure = swap_rows
    result = swap_fidelity(torch.zeros(3, 3, 64, 32), appearance, structure, normalized=False)
    assert 0 < result["l1"] < 1 and result["num_images"] == 3
    with pytest.raises(ValueError, match="generated images"):
        swap_fidelity(torch.zeros(2, 3, 64, 32), appearance, structure, normalized=False)


def test_swap_fidelity_with_a_given_ground_truth_equals_rendering_it(swap_rows):
    appearance, structure = swap_rows
    fake = torch.rand(3, 3, 64, 32, generator=torch.Generator().manual_seed(6))
    truth = swap_ground_truth(appearance, structure, size=(64, 32))
    shared = swap_fidelity(fake, appearance, structure, normalized=False, ground_truth=truth)
    assert shared == swap_fidelity(fake, appearance, structure, normalized=False)
    with pytest.raises(ValueError, match="ground truth of"):
        swap_fidelity(torch.zeros(3, 3, 32, 16), appearance, structure, normalized=False, ground_truth=truth)


def test_image_l1_clamps_the_fake_and_averages_everything():
    real = torch.full((2, 3, 4, 4), 0.5)
    fake = real.clone()
    fake[0] = 2.0  # clamped to 1: off by 0.5 on image 0, exact on image 1
    assert image_l1(fake, real) == pytest.approx(0.25)
    assert image_l1(real, real) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        image_l1(real[:1], real)


def test_mean_image_over_batches_and_its_baseline():
    g = torch.Generator().manual_seed(7)
    images = torch.rand(10, 3, 8, 4, generator=g)
    mean = mean_image(images.split(3))  # batches of 3, 3, 3, 1: still the mean over all 10
    assert torch.allclose(mean, images.double().mean(0))
    # Two flat test images, 0.2 and 0.6, against a flat mean 0.5: (0.3 + 0.1) / 2.
    tests = torch.stack([torch.full((3, 8, 4), 0.2), torch.full((3, 8, 4), 0.6)])
    assert mean_image_l1(torch.full((3, 8, 4), 0.5), tests) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no images"):
        mean_image([])


def test_blur_baseline_known_answers():
    flat = torch.full((2, 3, 16, 8), 0.3)
    assert torch.allclose(blur(flat), flat) and blur_l1(flat) == pytest.approx(0.0, abs=1e-7)
    # A one-pixel checkerboard averages to 0.5 over every 4 x 4 block: off by 0.5 everywhere.
    board = ((torch.arange(16)[:, None] + torch.arange(8)[None, :]) % 2).float().expand(1, 3, 16, 8)
    assert torch.allclose(blur(board), torch.full_like(board, 0.5))
    assert blur_l1(board) == pytest.approx(0.5)
    # Detail finer than the blur is lost, coarser detail survives: a half-black, half-white image.
    halves = torch.zeros(1, 3, 16, 8)
    halves[..., 8:, :] = 1.0
    assert 0.0 < blur_l1(halves) < 0.1


def test_frechet_distance_known_answers():
    # Identical Gaussians; 1-D: (mu1 - mu2)^2 + (s1 - s2)^2; diagonal: sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(5)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    assert frechet_distance(np.zeros(6), cov, np.zeros(6), cov) == pytest.approx(0, abs=1e-9)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    expected = 3 + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()  # means differ by 1 in each coordinate
    assert frechet_distance(np.zeros(3), np.diag(d1), np.ones(3), np.diag(d2)) == pytest.approx(expected)
    # Same covariance (not diagonal), shifted mean: only the mean term is left.
    assert frechet_distance(np.zeros(6), cov, np.full(6, 2.0), cov) == pytest.approx(24, abs=1e-8)


def test_feature_statistics_of_identical_sets_give_zero():
    features = np.random.default_rng(6).normal(size=(50, 8))
    stats = gen.feature_statistics(features)
    assert frechet_distance(*stats, *stats) == pytest.approx(0, abs=1e-9)


def test_fid_is_skipped_without_weights(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("FID must never download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    images = torch.rand(4, 3, 32, 16)
    result = fid(images, images)
    assert result["fid"] is None and str(tmp_path) in result["fid_skipped"]
    missing = fid(images, images, weights=tmp_path / "nope.pth")
    assert missing["fid"] is None and "nope.pth" in missing["fid_skipped"]


def test_fid_pipeline_with_a_stand_in_network(tmp_path, monkeypatch):
    # The real Inception is too slow for a unit test: a fixed random projection stands in.
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"present")
    proj = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(7))

    def stand_in(path, device):
        assert path == weights
        return lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ proj

    monkeypatch.setattr(gen, "_inception", stand_in)
    g = torch.Generator().manual_seed(8)
    real, fake = torch.rand(40, 3, 32, 16, generator=g), torch.rand(40, 3, 32, 16, generator=g) * 0.5
    assert fid(real, real, weights=weights)["fid"] == pytest.approx(0, abs=1e-6)
    assert fid(real, fake, weights=weights)["fid"] > 1


@pytest.mark.slow  # ~9 s: a full Inception-v3 on the CPU
def test_fid_uses_the_tf_inception_file_through_pytorch_fid_without_downloading(tmp_path, monkeypatch):
    """With pytorch-fid's TF Inception file on disk (random weights of its architecture stand in for
    the real file), FID runs pytorch-fid's network on that file and says which network it was."""
    pytest.importorskip("pytorch_fid")
    from torchvision.models import inception_v3

    def no_network(*args, **kwargs):
        raise AssertionError("FID must never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    torch.manual_seed(0)
    # pytorch-fid's network is torchvision's Inception-v3 with 1008 classes and no aux head.
    state = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True).state_dict()
    weights = tmp_path / "elsewhere" / gen.FID_INCEPTION_FILE
    weights.parent.mkdir()
    torch.save(state, weights)
    hub = torch.hub.get_dir()
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(6, 3, 64, 32, generator=g), torch.rand(6, 3, 64, 32, generator=g) * 0.3
    same, different = fid(real, real, weights=weights), fid(real, fake, weights=weights)
    assert same["fid"] == pytest.approx(0, abs=1e-3) and different["fid"] > same["fid"]
    assert "TF Inception" in different["fid_network"] and torch.hub.get_dir() == hub
    monkeypatch.setitem(__import__("sys").modules, "pytorch_fid.inception", None)  # not installed
    skipped = fid(real, fake, weights=weights)
    assert skipped["fid"] is None and "pip install pytorch-fid" in skipped["fid_skipped"]
