"""Image transforms whose every random choice draws from the caller's torch.Generator, seeded from
(seed, iteration, slot): a resumed run, one with other loader workers and an uninterrupted run see
the same pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from dgnet.errors import DataRuleError


class ImageReadError(DataRuleError):
    """An image file that is missing, truncated or not an image; the message names the file."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """`path` as RGB resized to size=(height, width), a float tensor in [0, 1] (`image_to_tensor`)."""
    try:
        with Image.open(path) as image:
            return image_to_tensor(image, size)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageReadError(
            f"image {path} cannot be read ({type(exc).__name__}: {exc}); rule images_decode: "
            "`dgnet validate --data DIR` lists every such file") from exc


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """RGB, resized to size=(height, width) BICUBIC as published (`interpolation=3`), in [0, 1]."""
    image = image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return TF.pil_to_tensor(image).float().div_(255.0)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation: the generator's output lives in this space too (docs/method.md)."""
    return TF.normalize(image, list(IMAGENET_MEAN), list(IMAGENET_STD))


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] RGB, for pictures."""
    mean, std = (image.new_tensor(v).view(-1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (image * std + mean).clamp(0, 1)


def random_flip(image: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip with probability p."""
    return image.flip(-1) if torch.rand((), generator=generator) < p else image


def pad_random_crop(image: torch.Tensor, generator: torch.Generator, padding: int = 10) -> torch.Tensor:
    """Edge-pad by `padding` (the published `Pad(10, padding_mode='edge')`: no black band for the
    networks to latch on to), then crop back to the original size at random."""
    if padding <= 0:
        return image
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding, padding, padding, padding), mode="replicate")
    top = int(torch.randint(0, 2 * padding + 1, (), generator=generator))
    left = int(torch.randint(0, 2 * padding + 1, (), generator=generator))
    return padded[..., top:top + height, left:left + width]


def random_erasing(image: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                   area: tuple[float, float] = (0.02, 0.4), aspect: tuple[float, float] = (0.3, 3.3),
                   attempts: int = 100) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) as the published `RandomErasing`: with probability p, a box of
    uniform `area` fraction and h/w `aspect` (redrawn until it fits) is zeroed, i.e. set to the mean of
    the normalised image; in a new tensor."""
    if torch.rand((), generator=generator) >= p:
        return image
    height, width = image.shape[-2:]
    for _ in range(attempts):
        u_area, u_ratio = torch.rand(2, generator=generator).tolist()
        target_area = (area[0] + (area[1] - area[0]) * u_area) * height * width
        ratio = aspect[0] + (aspect[1] - aspect[0]) * u_ratio
        h, w = round(math.sqrt(target_area * ratio)), round(math.sqrt(target_area / ratio))
        if 0 < h < height and 0 < w < width:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            erased = image.clone()
            erased[..., top:top + h, left:left + w] = 0.0
            return erased
    return image
