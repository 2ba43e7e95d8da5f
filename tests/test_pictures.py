"""Pictures: layout, colours and inputs of the swap grid, ranked lists and CMC plot; atomic save."""

import numpy as np
import pytest
import torch
from PIL import Image

from dgnet.data.transforms import normalize
from dgnet.evaluation.pictures import MATCH_COLOURS, PALETTE, cmc_plot, ranked_list, save, swap_grid, to_pil


def _solid(rgb, size=(8, 16)):
    return Image.new("RGB", size, rgb)


def _count(image: Image.Image, rgb) -> int:
    return int((np.asarray(image) == np.asarray(rgb, dtype=np.uint8)).all(axis=2).sum())


def test_to_pil_accepts_tensors_arrays_and_normalised_tensors():
    x = torch.rand(3, 16, 8, generator=torch.Generator().manual_seed(0))
    expected = (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(to_pil(x)), expected)
    assert np.array_equal(np.asarray(to_pil(expected)), expected)
    back = np.asarray(to_pil(normalize(x), normalized=True)).astype(int)
    assert np.abs(back - expected).max() <= 1
    with pytest.raises(ValueError, match="3, H, W"):
        to_pil(torch.rand(16, 8))


def test_swap_grid_places_every_image_once():
    appearance = [_solid((250, 0, 0)), _solid((0, 250, 0))]
    structure = [_solid((0, 0, 250)), _solid((250, 250, 0)), _solid((0, 250, 250))]
    colours = [[(10 + 40 * i + 10 * j, 200, 100) for j in range(3)] for i in range(2)]
    generated = [[_solid(c) for c in row] for row in colours]
    grid = swap_grid(appearance, structure, generated, scale=2, title="swaps")
    assert grid.mode == "RGB"
    cell = 16 * 32  # every tile is scaled x2
    for rgb in [c for row in colours for c in row] + [(0, 0, 250), (250, 250, 0), (0, 250, 250)]:
        assert _count(grid, rgb) == cell
    assert _count(grid, (250, 0, 0)) == cell and _count(grid, (0, 250, 0)) == cell
    # Tensors in (A, S, 3, H, W) work as well as nested lists.
    tensor_grid = swap_grid(torch.rand(2, 3, 16, 8), torch.rand(3, 3, 16, 8), torch.rand(2, 3, 3, 16, 8))
    assert tensor_grid.size == swap_grid(appearance, structure, generated).size


def test_swap_grid_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="2 rows of 3 images"):
        swap_grid([_solid((1, 1, 1))] * 2, [_solid((2, 2, 2))] * 3, [[_solid((3, 3, 3))] * 3])


def test_ranked_list_colours_follow_the_matches():
    query, gallery = _solid((90, 90, 200)), [_solid((200, 200, 200 - k)) for k in range(12)]
    misses = ranked_list(query, gallery, ["miss"] * 12)
    legend = {name: _count(misses, rgb) for name, rgb in MATCH_COLOURS.items() if name != "miss"}
    assert _count(misses, MATCH_COLOURS["miss"]) > 10 * legend["hit"]  # ten red frames, one red swatch
    matches = ["hit", "junk"] + ["miss"] * 10
    one = ranked_list(query, gallery, matches, top_k=10)
    # One green frame (plus its green rank number) and one grey frame beyond the legend's swatches.
    assert _count(one, MATCH_COLOURS["hit"]) > legend["hit"] + 2 * (16 + 8 + 8)
    assert _count(one, MATCH_COLOURS["junk"]) > legend["junk"] + 2 * (16 + 8 + 8)
    assert _count(one, (200, 200, 190)) == 0 and _count(one, (200, 200, 191)) > 0  # only the top 10
    stacked = ranked_list([query, query], [gallery, gallery], [matches, matches[::-1]],
                          query_labels=["q1", "q2"], gallery_labels=[["g"] * 12] * 2, title="top 10")
    assert stacked.width == one.width and stacked.height > 2 * one.height - 60


def test_ranked_list_checks_its_inputs():
    with pytest.raises(ValueError, match="'hit', 'miss' or 'junk'"):
        ranked_list(_solid((0, 0, 0)), [_solid((1, 1, 1))], ["good"])
    with pytest.raises(ValueError, match="one of each per query"):
        ranked_list([_solid((0, 0, 0))] * 2, [[_solid((1, 1, 1))]], [["hit"], ["miss"]])


def test_cmc_plot_draws_each_curve():
    curves = {"a": [0.5, 0.7, 0.8, 0.9], "b": [0.2, 0.3, 0.35, 0.4]}
    image = cmc_plot(curves, max_rank=20, size=(500, 300))
    assert image.size == (500, 300)
    assert _count(image, PALETTE[0]) > 50 and _count(image, PALETTE[1]) > 50
    long = cmc_plot({"c": list(np.linspace(0.1, 0.9, 100))}, max_rank=50)
    assert _count(long, PALETTE[0]) > 100
    with pytest.raises(ValueError, match="at least one curve"):
        cmc_plot({})


def test_save_is_atomic_and_lossless(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 10, 3), dtype=np.uint8))
    path = save(image, tmp_path / "sub" / "picture.png")
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    assert sorted(p.name for p in path.parent.iterdir()) == ["picture.png"]  # no temporary left
    assert Image.open(save(image, tmp_path / "picture.jpg")).format == "JPEG"
