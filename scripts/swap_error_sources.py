"""Where a model's swap error sits, on the benchmark's own test pairs (synthetic data only; models of
the `cpu` profile's 64x32).

    python scripts/swap_error_sources.py [MODEL.pt ...]

Prints, inside the person mask, L1 / SSIM (and luma, chroma and mean-colour L1) of:
- references: the exact counterfactual blurred 2x and 4x (what a perfect generator at that
  sharpness scores), copy-structure unchanged and blurred;
- each model's swaps G(s_j, a_i) against the counterfactual and against the structure donor x_j,
  and its own reconstruction G(s_j, a_j) against x_j;
- the swaps and copy-structure against counterfactuals that take the clothing fields visible in
  the grey image (texture; texture, sleeves, bottom style) from x_j, as E_s does.
docs/generator_diagnosis.md, section 8, is its output for the 1,200- and 4,800-iteration models.
"""

from __future__ import annotations

import json
import sys

import torch

from dgnet.data.manifest import read_manifest
from dgnet.data.transforms import denormalize
from dgnet.evaluation.benchmark import DEFAULT_NUM_SWAPS, _reconstructions, _swaps, generation_reference
from dgnet.evaluation.generation import blur, swap_fidelity, swap_ground_truth
from dgnet.models.persist import load_model
from dgnet_pipeline.common import repo_root

SIZE = (64, 32)
FROM_STRUCTURE_DONOR = {"texture": ("top_texture",), "texture_sleeves_bottom": ("top_texture", "sleeves",
                                                                                "bottom_style")}


def masked_scores(fake: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """L1, SSIM (both `swap_fidelity`'s, with `target` as the ground truth), luma L1, chroma L1 and
    mean-colour error inside `mask`, images on [0, 1]."""
    m = mask.double()
    area = m.flatten(1).sum(1)

    def inside(per_pixel: torch.Tensor) -> float:
        return round(float(((per_pixel * m).flatten(1).sum(1) / area).nanmean()), 4)

    def luma_chroma(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        return y, torch.stack([x[:, 2] - y, x[:, 0] - y], 1)

    f, t = fake.double(), target.double()
    (yf, cf), (yt, ct) = luma_chroma(f), luma_chroma(t)
    mean_colour = lambda x: (x * m[:, None]).flatten(2).sum(2) / area[:, None]  # noqa: E731
    fidelity = swap_fidelity(fake, [], [], normalized=False, ground_truth=(target, mask))
    return {"l1": round(fidelity["l1_person"], 4), "ssim": round(fidelity["ssim_person"], 4),
            "luma_l1": inside((yf - yt).abs()), "chroma_l1": inside((cf - ct).abs().mean(1)),
            "mean_colour": round(float((mean_colour(f) - mean_colour(t)).abs().mean(1).nanmean()), 4)}


def counterfactual(appearance: list[dict], structure: list[dict], from_j: tuple[str, ...]) -> tuple:
    """`swap_ground_truth` of each pair with the clothing fields `from_j` taken from the structure
    donor too (as if image i wore them)."""
    worn = [a | {k: s[k] for k in from_j} for a, s in zip(appearance, structure, strict=True)]
    return swap_ground_truth(worn, structure, size=SIZE)


def main(paths: list[str]) -> int:
    torch.set_num_threads(1)
    root = repo_root()
    frame = read_manifest(root / "data/manifest.csv", "run `dvc repro validate`")
    ref = generation_reference(frame, SIZE, root / "data/synthetic", DEFAULT_NUM_SWAPS, 0)
    truth, mask = ref.ground_truth
    donor = denormalize(ref.structure.float()).clamp(0, 1)
    references = {f"counterfactual_blur{k}": masked_scores(blur(truth, k), truth, mask) for k in (2, 4)}
    references |= {f"copy_structure_blur{k}": masked_scores(blur(donor, k), truth, mask) for k in (1, 2, 4)}
    out: dict = {"references": references}
    rows = [f.to_dict("records") for f in ref.factors]
    others = {name: counterfactual(*rows, fields) for name, fields in FROM_STRUCTURE_DONOR.items()}
    swaps = {"copy_structure": donor}
    cpu = torch.device("cpu")
    for path in paths:
        model, _ = load_model(path)
        model.eval()
        with torch.inference_mode():
            swaps[path] = denormalize(_swaps(model, ref.structure, ref.appearance, cpu).float()).clamp(0, 1)
            own = denormalize(_reconstructions(model, ref.structure, cpu)).clamp(0, 1)
        out[path] = {"swap_vs_counterfactual": masked_scores(swaps[path], truth, mask),
                     "swap_vs_structure_donor": masked_scores(swaps[path], donor, mask),
                     "own_reconstruction_vs_structure_donor": masked_scores(own, donor, mask)}
    for name, fake in swaps.items():
        scored = {g: swap_fidelity(fake, *ref.factors, normalized=False, ground_truth=gt)
                  for g, gt in others.items()}
        out.setdefault(name, {})["ssim_person_vs_fields_from_j"] = {g: round(s["ssim_person"], 4)
                                                                    for g, s in scored.items()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
