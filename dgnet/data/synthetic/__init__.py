"""The embedded synthetic re-ID dataset: procedurally drawn pedestrians in Market-1501 layout.

Why it exists: the whole pipeline has to run end to end on a 2-core CPU in minutes, with no
download, on a problem where DG-Net's two codes mean something. Every image is a pure function
of one row of factors, split the way DG-Net splits an image: APPEARANCE_FIELDS, the clothing
(what the appearance code a carries), and STRUCTURE_FIELDS, everything else (body, skin, hair,
hat, bag, pose, viewpoint, position, scene and camera, noise: what the structure code s carries).
So `render_swap(i, j)` is the exact ground truth for the generator's G(s_j, a_i).

About 30% of the identities come in groups of 2-3 that wear the very same clothes and differ only
in structure cues (hat, bag, hair, body shape): telling them apart needs DG-Net's fine-grained
features, not just colours. (How hard it is: colour histograms of the true person pixels, in four
horizontal bands, reach rank-1 70% on the default test set; 86% for identities with their own
clothes, 31% for those that share them. Over the whole image, where the scene dominates, HSV
histograms of three stripes reach rank-1 0%, mAP 1.1%.)

Layout written by `generate_dataset` (128x64 JPEGs, `{pid:04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg`):

    OUT/bounding_box_train/  train identities, several images from 2-4 cameras each
    OUT/query/               test identities: one image per (identity, camera)
    OUT/bounding_box_test/   gallery: the other images of the test identities, plus
                             distractors (id 0000, other people) and junk (id -1, bad crops)
    OUT/factors.csv          one row per image: its full factor record (see COLUMNS)

Default counts (seed 0: 120 identities, 60 train / 60 test, 6 cameras): 637 train images, 175
queries, 405 gallery images (345 of test identities, 40 distractors, 20 junk), 1,217 in all
(other seeds: within a few percent); rendered and written in about 5 s on one CPU core.

Modules: factors (vocabularies, field groups, sampling), scenes and person (drawing), render
(the rasteriser), writer (the dataset on disk).
"""

from dgnet.data.synthetic.factors import (
                                          APPEARANCE_FIELDS,
                                          COLUMNS,
                                          META_FIELDS,
                                          SCENES,
                                          SPLIT_DIRS,
                                          STRUCTURE_FIELDS,
                                          H,
                                          W,
                                          market_name,
                                          sample_factors,
                                          swap_factors,
)
from dgnet.data.synthetic.render import MATERIALS, part_labels, render, render_swap
from dgnet.data.synthetic.writer import decode_jpeg, encode_jpeg, generate_dataset, read_factors

__all__ = [
    "APPEARANCE_FIELDS", "COLUMNS", "MATERIALS", "META_FIELDS", "SCENES", "SPLIT_DIRS", "STRUCTURE_FIELDS",
    "H", "W", "decode_jpeg", "encode_jpeg", "generate_dataset", "market_name", "part_labels",
    "read_factors", "render", "render_swap", "sample_factors", "swap_factors",
]
