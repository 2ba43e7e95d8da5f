"""Transforms of the published DG-Net pipeline: bicubic resize, edge pad + crop, random erasing."""

import numpy as np
import pytest
import torch
from PIL import Image

from dgnet.data.transforms import load_image, pad_random_crop, random_erasing


@pytest.fixture
def noise_png(tmp_path):
    """A 40x24 (height x width) RGB noise image: interpolation kernels disagree on noise."""
    array = np.random.default_rng(0).integers(0, 256, size=(40, 24, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(array).save(path)
    return path


def _pil_resize(path, size, resample) -> torch.Tensor:
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB").resize((size[1], size[0]), resample))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def test_load_image_resizes_bicubic(noise_png):
    size = (64, 32)
    loaded = load_image(str(noise_png), size)
    assert loaded.shape == (3, 64, 32)
    assert torch.equal(loaded, _pil_resize(noise_png, size, Image.Resampling.BICUBIC))
    assert not torch.equal(loaded, _pil_resize(noise_png, size, Image.Resampling.BILINEAR))


def test_load_image_keeps_an_image_of_the_right_size(noise_png):
    with Image.open(noise_png) as image:
        original = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0
    assert torch.equal(load_image(str(noise_png), (40, 24)), original)


def _crops(image: torch.Tensor, padding: int, seeds: int) -> list[torch.Tensor]:
    return [pad_random_crop(image, torch.Generator().manual_seed(s), padding) for s in range(seeds)]


def test_pad_random_crop_replicates_the_border_at_the_corner_offsets():
    pad, image = 2, torch.rand(3, 12, 8) + 0.5
    height, width = image.shape[-2:]
    crops = _crops(image, pad, 150)  # 25 offsets: each corner ~6 times
    top_left = [c for c in crops if torch.equal(c[:, pad:, pad:], image[:, :-pad, :-pad])]
    assert top_left, "some seed crops at offset (0, 0)"
    crop = top_left[0]
    assert torch.equal(crop[:, :pad, :pad], image[:, :1, :1].expand(3, pad, pad))
    assert torch.equal(crop[:, :pad, pad:], image[:, :1, :width - pad].expand(3, pad, width - pad))
    assert torch.equal(crop[:, pad:, :pad], image[:, :height - pad, :1].expand(3, height - pad, pad))
    bottom_right = [c for c in crops if torch.equal(c[:, :-pad, :-pad], image[:, pad:, pad:])]
    assert bottom_right, "some seed crops at offset (2 * pad, 2 * pad)"
    assert torch.equal(bottom_right[0][:, -pad:, -pad:], image[:, -1:, -1:].expand(3, pad, pad))


def test_pad_random_crop_never_shows_zero_padding():
    image = torch.rand(3, 12, 8) + 0.5  # no zero pixel of its own
    crops = _crops(image, 3, 30)
    assert all(c.shape == image.shape and c.min() >= 0.5 for c in crops)
    assert len({tuple(c.flatten().tolist()) for c in crops}) > 1, "the crop offset varies with the seed"


def _erased_box_ratios(draws: int) -> np.ndarray:
    """h / w of the erased rectangle on a square image, with areas small enough that every first
    attempt fits: the measured ratio is then the drawn one, up to rounding."""
    image, ratios = torch.ones(3, 100, 100), []
    for seed in range(draws):
        erased = random_erasing(image, torch.Generator().manual_seed(seed), p=1.0, area=(0.04, 0.09))
        mask = (erased == 0).all(dim=0)
        ratios.append(mask.any(dim=1).sum().item() / mask.any(dim=0).sum().item())
    return np.asarray(ratios)


def test_random_erasing_aspect_ratio_is_uniform():
    ratios = _erased_box_ratios(600)
    assert ratios.min() > 0.25 and ratios.max() < 3.5
    # Uniform on [0.3, 3.3] has mean 1.8 (s.e. ~0.035 here); log-uniform would give 3 / ln 11 = 1.25.
    assert abs(ratios.mean() - 1.8) < 0.15
    # And a flat histogram: as many ratios above 1.8 as below (log-uniform: only 29% above).
    assert abs((ratios > 1.8).mean() - 0.5) < 0.07


def test_random_erasing_area_and_probability():
    image = torch.ones(3, 128, 64)
    outs = [random_erasing(image, torch.Generator().manual_seed(s), p=0.5) for s in range(400)]
    fractions = np.asarray([(o == 0).all(dim=0).float().mean().item() for o in outs])
    assert abs((fractions > 0).mean() - 0.5) < 0.08
    erased = fractions[fractions > 0]
    assert erased.min() >= 0.015 and erased.max() <= 0.42
    assert abs(erased.mean() - 0.21) < 0.03, "area fraction uniform on [0.02, 0.4]"
    assert all(o is image for o, f in zip(outs, fractions, strict=True) if f == 0), "untouched when skipped"
