"""The embedded synthetic re-ID dataset: procedurally drawn pedestrians in Market-1501 layout.

Why: the whole pipeline has to run end to end on a 2-core CPU in minutes, with no download, on a
problem where DG-Net's two codes mean something. Every image is a pure function of one row of
factors: APPEARANCE_FIELDS, the clothing (what the appearance code a carries), and
STRUCTURE_FIELDS, everything else (body, hair, hat, bag, pose, viewpoint, position, scene, camera,
noise: the structure code s). So `render_swap(i, j)` is the exact ground truth of G(s_j, a_i).
About 30% of the identities come in groups of 2-3 in the very same clothes that differ only in
structure cues: telling them apart needs fine-grained features, not just colours (colour
histograms of the true person pixels in four bands reach rank-1 70% on the default test set:
86% for identities with their own clothes, 31% for those that share them).

`generate_dataset` writes OUT/bounding_box_train/ (train identities, 2-4 cameras each), OUT/query/
(one image per test identity and camera), OUT/bounding_box_test/ (the gallery: the other images of
the test identities, distractors 0000 and junk -1) and OUT/factors.csv (every image's factors),
128x64 JPEGs named `{pid:04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg`. Seed 0, 120 identities, 6
cameras: 637 train, 175 query, 405 gallery images (40 distractors, 20 junk), in about 5 s.
"""

from dgnet.data.synthetic.factors import (
    APPEARANCE_FIELDS,
    COLUMNS,
    META_FIELDS,
    SPLIT_DIRS,
    STRUCTURE_FIELDS,
    sample_factors,
    swap_factors,
)
from dgnet.data.synthetic.render import part_labels, render, render_swap
from dgnet.data.synthetic.writer import decode_jpeg, encode_jpeg, generate_dataset, read_factors

__all__ = ["APPEARANCE_FIELDS", "COLUMNS", "META_FIELDS", "SPLIT_DIRS", "STRUCTURE_FIELDS", "decode_jpeg",
           "encode_jpeg", "generate_dataset", "part_labels", "read_factors", "render", "render_swap",
           "sample_factors", "swap_factors"]
