"""Generation metrics: SSIM and SSIM diversity, swap fidelity on the synthetic data, FID.

* SSIM (Wang et al. 2004): Gaussian window 11 x 11, sigma 1.5, C1 = (0.01)^2, C2 = (0.03)^2 on
  [0, 1] RGB, "valid" filtering (no padding, as the reference code); the map averaged over the
  channels, then over the pixels (or a mask's).
* SSIM diversity (DG-Net, Table 2): the mean SSIM between random pairs of distinct images of a set;
  lower is more diverse, read beside the same figure on real images (paper: real 0.350, DG-Net 0.360).
* Swap fidelity: the synthetic dataset renders the exact ground truth of G(s_j, a_i) (`render_swap`),
  so a swap is scored by L1 and SSIM against it, over the whole image and inside the person mask.
* Self-reconstruction L1 beside the mean training image's and a 4x blur's (area down, bilinear back):
  a generator that does not beat these has learnt nothing an average or a blur does not give.
* FID between Inception-v3 pool features (2048-d), only with weights on this machine (never
  downloaded, never faked: else it says it was skipped, and why). First choice pytorch-fid's TF
  Inception (pt_inception-2015-12-05-6726825d.pth), the paper's 18.24 network; else torchvision's
  ImageNet Inception (comparable within dgnet only). `fid_network` says which.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from dgnet.data.synthetic import render_swap
from dgnet.data.transforms import denormalize

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's IMAGENET1K_V1 checkpoint name
FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port of the TF FID Inception
FID_NETWORKS = {"tf": "TF Inception of the FID paper (pytorch-fid), as the published FID",
                "torchvision": "torchvision's ImageNet Inception-v3: not comparable with published FIDs"}


# SSIM

# Images per SSIM pass: 8 at 256x128, 128 at 64x32. At 256x128 a pass over 64 images is 3x slower
# per image than one over 8 (its 11 float64 moment maps no longer fit in the cache).
SSIM_CHUNK_PIXELS = 8 * 256 * 128


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 1-D Gaussian weights (summing to 1) of the separable SSIM window."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of (..., H, W): weighted sums of shifted slices, in a fixed
    order (exact to reproduce; no thread start-up as a float64 conv2d pays on every call)."""
    k = len(window)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = sum(window[i] * x[..., i:i + h, :] for i in range(k))
    return sum(window[i] * rows[..., i:i + w] for i in range(k))


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of two (N, C, H, W) batches in [0, 1], averaged over the channels:
    (N, H - window_size + 1, W - window_size + 1). Computed in float64."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {window_size}-pixel window")
    chunk = max(1, SSIM_CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
    if len(x) > chunk:  # per image, so chunks give the same numbers; large batches leave the cache
        pairs = zip(x.split(chunk), y.split(chunk), strict=True)
        return torch.cat([ssim_map(a, b, window_size, sigma) for a, b in pairs])
    x, y = x.double(), y.double()
    window = gaussian_window(window_size, sigma).to(x.device)
    # The five local moments in one filtering pass (stacked along the channels).
    c = x.shape[1]
    moments = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, xx, yy, xy = moments.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean(dim=1)


def _reduce(value: torch.Tensor, mask: torch.Tensor | None, window_size: int) -> torch.Tensor:
    """Mean of an SSIM map per image, over all its pixels or over a mask's (at the windows' centres)."""
    if mask is None:
        return value.flatten(1).mean(dim=1)
    r = (window_size - 1) // 2
    m = mask.to(value.device).bool()[..., r:mask.shape[-2] - r, r:mask.shape[-1] - r].double()
    return (value * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """SSIM of each image pair: (N,) float64. With a (N, H, W) bool `mask`, the SSIM map is
    averaged over the masked pixels only (NaN for an image whose cropped mask is empty)."""
    return _reduce(ssim_map(x, y, window_size, sigma), mask, window_size)


def ssim_diversity(images: torch.Tensor, num_pairs: int = 1000, seed: int = 0,
                   batch_size: int = 64) -> float:
    """Mean SSIM over seeded uniform pairs i != j of a (N, C, H, W) set in [0, 1] (lower = more diverse);
    every unordered pair once when `num_pairs` reaches their number."""
    n = len(images)
    if n < 2:
        raise ValueError(f"ssim_diversity needs at least 2 images, got {n}")
    total = n * (n - 1) // 2
    if num_pairs >= total:
        first, second = torch.triu_indices(n, n, offset=1)
    else:
        gen = torch.Generator().manual_seed(seed)
        first = torch.randint(0, n, (num_pairs,), generator=gen)
        second = (first + torch.randint(1, n, (num_pairs,), generator=gen)) % n  # never first itself
    values = [ssim(images[first[s:s + batch_size]], images[second[s:s + batch_size]])
              for s in range(0, len(first), batch_size)]
    return float(torch.cat(values).mean())


# Swap fidelity on the synthetic data

def swap_ground_truth(appearance_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
                      structure_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
                      size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`render_swap(appearance_rows[n], structure_rows[n])`: ((N, 3, H, W) in [0, 1], (N, H, W) bool
    masks), resized to size = (H, W) when given (bilinear; masks nearest)."""
    a_rows, s_rows = (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
                      for rows in (appearance_rows, structure_rows))
    if len(a_rows) != len(s_rows):
        raise ValueError(f"{len(a_rows)} appearance rows but {len(s_rows)} structure rows")
    images, masks = [], []
    for a, s in zip(a_rows, s_rows, strict=True):
        image, mask = render_swap(a, s)
        if size is not None and image.shape[:2] != tuple(size):
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))
            mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
        images.append(torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0))
        masks.append(torch.from_numpy(mask.copy()).bool())
    if not images:
        return torch.zeros(0, 3, *(size or (0, 0))), torch.zeros(0, *(size or (0, 0)), dtype=torch.bool)
    return torch.stack(images), torch.stack(masks)


def swap_fidelity(
    generated: torch.Tensor,
    appearance_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    structure_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    normalized: bool = True,
    ground_truth: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float | int]:
    """How close generated swaps G(s_j, a_i) (N, 3, H, W; ImageNet-normalised, or [0, 1] with
    `normalized=False`) are to their exact synthetic ground truth; row n of `appearance_rows` (the
    clothing) and `structure_rows` (the rest) are `read_factors` records. The means over images of
    `l1` (on [0, 1]), `l1_person` (inside the person mask), `ssim`, `ssim_person`, and `num_images`.
    `ground_truth`: their `swap_ground_truth`, when already rendered (shared: rendering dominates)."""
    if generated.dim() != 4 or generated.shape[1] != 3:
        raise ValueError(f"generated must be (N, 3, H, W), got {tuple(generated.shape)}")
    fake = denormalize(generated.float()) if normalized else generated.float().clamp(0, 1)
    if ground_truth is None:
        ground_truth = swap_ground_truth(appearance_rows, structure_rows, size=tuple(fake.shape[-2:]))
    real, mask = ground_truth
    if real.shape[-2:] != fake.shape[-2:]:
        raise ValueError(f"ground truth of {tuple(real.shape[-2:])} for generated images of "
                         f"{tuple(fake.shape[-2:])}")
    if len(real) != len(fake):
        raise ValueError(f"{len(fake)} generated images but {len(real)} (appearance, structure) pairs")
    fake = fake.cpu()
    diff = (fake.double() - real.double()).abs().mean(dim=1)  # (N, H, W)
    m = mask.double()
    person_l1 = (diff * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    value = ssim_map(fake, real)  # chunked inside: per image, the same numbers
    return {
        "l1": float(diff.flatten(1).mean(1).mean()),
        "l1_person": float(person_l1.nanmean()),
        "ssim": float(_reduce(value, None, 11).mean()),
        "ssim_person": float(_reduce(value, mask, 11).nanmean()),
        "num_images": len(fake),
    }


# Self-reconstruction and its trivial baselines

def image_l1(fake: torch.Tensor, real: torch.Tensor) -> float:
    """mean over n, c, h, w of |clamp(fake, 0, 1) - real|: two (N, 3, H, W) batches on [0, 1], in float64
    (the clamp as in `swap_fidelity`: only the visible range counts)."""
    if fake.shape != real.shape or fake.dim() != 4:
        raise ValueError(f"image_l1 needs two (N, C, H, W) batches of one shape, got {tuple(fake.shape)} "
                         f"and {tuple(real.shape)}")
    if len(real) == 0:
        raise ValueError("image_l1 of an empty batch")
    return float((fake.double().clamp(0, 1) - real.double()).abs().mean())


def mean_image(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """The pixel-wise mean (1/N) sum_n x_n of images (N, 3, H, W) given in batches (so that a training
    split too large to hold in memory still has one): (3, H, W), float64."""
    total, count = None, 0
    for batch in batches:
        total = batch.double().sum(dim=0) + (0 if total is None else total)
        count += len(batch)
    if total is None or count == 0:
        raise ValueError("mean_image of no images")
    return total / count


def mean_image_l1(mean: torch.Tensor, images: torch.Tensor) -> float:
    """The mean-image baseline of self-reconstruction: `image_l1` of the (3, H, W) mean training image
    against every image."""
    return image_l1(mean.to(images.device).expand_as(images), images)


def blur(images: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """x down-sampled `factor` times by area averaging (each output pixel the mean of a factor x factor
    block), then up-sampled back to (H, W) bilinearly (half-pixel centres): (N, 3, H, W)."""
    if factor < 1:
        raise ValueError(f"blur factor must be >= 1, got {factor}")
    h, w = images.shape[-2:]
    small = F.interpolate(images.float(), size=(max(1, h // factor), max(1, w // factor)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def blur_l1(images: torch.Tensor, factor: int = 4) -> float:
    """The blur baseline of self-reconstruction: `image_l1` of `blur(x, factor)` against x."""
    return image_l1(blur(images, factor), images)


# FID

def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of an (N, D) feature set."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature statistics need an (N >= 2, D) array, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) of two Gaussians.

    sigma1 sigma2 is similar to the symmetric PSD S = sigma1^(1/2) sigma2 sigma1^(1/2), so the trace
    is the sum of sqrt(eig(S)): symmetric eigen-decompositions only, eigenvalues clipped at 0.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics disagree: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {sigma1.shape} / {sigma2.shape}")
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T  # sigma1^(1/2)
    product = root @ sigma2 @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt, 0.0))


def find_inception_weights(path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """(path, "") of the Inception-v3 weights to use, or (None, why not). Looks only on disk: `path`
    when given, else in the torch hub cache pytorch-fid's TF Inception, then torchvision's."""
    if path is not None:
        p = Path(path).expanduser()
        return (p, "") if p.is_file() else (None, f"Inception weights {p}: no such file")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (FID_INCEPTION_FILE, INCEPTION_FILE):
        if (folder / name).is_file():
            return folder / name, ""
    return None, (f"no Inception-v3 weights on this machine (neither {FID_INCEPTION_FILE}, the TF FID "
                  f"Inception of pytorch-fid, nor torchvision's {INCEPTION_FILE} in {folder}; put one "
                  "there or give a path); FID needs them and they are never downloaded")


def fid_network(weights: Path) -> str:
    """"tf" for pytorch-fid's TF Inception file, else "torchvision"."""
    return "tf" if weights.name.startswith(FID_INCEPTION_FILE.rsplit("-", 1)[0]) else "torchvision"


def _inception(weights: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [0, 1], any size -> N x 2048 pool features, with the network `weights` hold."""
    if fid_network(weights) == "tf":
        try:
            from pytorch_fid.inception import InceptionV3
        except ImportError as exc:
            raise ImportError(f"{weights} is the TF FID Inception, which needs pytorch-fid "
                              "(pip install pytorch-fid)") from exc
        # pytorch-fid loads its weights from a URL: hand it the file instead (never a download). The
        # network resizes to 299 (bilinear) and scales to [-1, 1] itself.
        with mock.patch("pytorch_fid.inception.load_state_dict_from_url",
                        lambda *_, **__: torch.load(weights, map_location="cpu", weights_only=True)):
            tf = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval().to(device)
        return lambda x: tf(x)[0].flatten(1)
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()  # the 2048-d pool features
    model = model.eval().to(device)
    return lambda x: model(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1)


def fid(
    real_images: torch.Tensor | Iterable[torch.Tensor],
    fake_images: torch.Tensor | Iterable[torch.Tensor],
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
) -> dict[str, Any]:
    """FID between two image sets in [0, 1] (tensors or iterables of batches): {"fid": value, ...}, or
    {"fid": None, "fid_skipped": why} when no Inception weights are on this machine."""
    path, reason = find_inception_weights(weights)
    if path is None:
        return {"fid": None, "fid_skipped": reason}
    device = torch.device(device)
    try:
        model = _inception(path, device)
    except ImportError as exc:
        return {"fid": None, "fid_skipped": str(exc)}

    def statistics(images: torch.Tensor | Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
        with torch.inference_mode():
            features = torch.cat([model(batch.float().to(device)).double().cpu() for batch in batches])
        return feature_statistics(features.numpy())

    distance = frechet_distance(*statistics(real_images), *statistics(fake_images))
    return {"fid": distance, "fid_weights": str(path), "fid_network": FID_NETWORKS[fid_network(path)]}
