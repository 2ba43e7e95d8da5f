"""`dgnet summary`: parameter counts per module and code shapes of a configuration, without real compute."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dgnet.models.config import ModelConfig
from dgnet.models.dgnet import DGNet
from dgnet.models.teacher import ReidBaseline


def count_parameters(module: nn.Module | list[nn.Parameter]) -> int:
    """Number of parameter elements of a module (or a list of parameters)."""
    parameters = module.parameters() if isinstance(module, nn.Module) else module
    return sum(p.numel() for p in parameters)


def summarize(cfg: ModelConfig) -> str:
    """A text table of per-module parameter counts and code shapes for `cfg`, from networks built on
    the meta device (no memory, no weights) and a meta forward of one image at the configured size."""
    cfg = dataclasses.replace(cfg, pretrained=False)  # counts and shapes do not depend on the weights
    with torch.device("meta"):
        model = DGNet(cfg).eval()  # eval: BatchNorm1d accepts a batch of one
        teacher = ReidBaseline(cfg)
        image = torch.zeros(1, 3, cfg.image_height, cfg.image_width)
        with torch.no_grad():
            structure, appearance = model.encode(image)
            generated = model.decode(structure, appearance.code)
            patches = model.discriminator(image)

    encoder, decoder = model.appearance_encoder, model.decoder
    mlps = [*decoder.mapping.scale_mlps, *decoder.mapping.bias_mlps]
    rows = [(name, f"{count_parameters(part):,}") for name, part in (
        (f"E_a trunk ({cfg.backbone}, no fc)", encoder.trunk),
        (f"E_a primary id head ({cfg.num_classes} classes)", encoder.primary_head),
        (f"E_a fine-grained id head ({cfg.num_classes} classes)", encoder.fine_head),
        ("E_s structure encoder", model.structure_encoder),
        ("G decoder (without AdaIN MLPs)", decoder.body_parameters()),
        ("AdaIN MLP, each", mlps[0]),
        (f"AdaIN MLPs, all {len(mlps)}", decoder.mapping),
        ("G in all (E_s + decoder + MLPs)", [*model.structure_encoder.parameters(), *decoder.parameters()]),
        (f"D discriminator ({cfg.discriminator_scales} scales)", model.discriminator),
        (f"teacher ({cfg.backbone} + one id head)", teacher),
    )]
    shapes = [(name, " x ".join(str(size) for size in tensor.shape[1:])) for name, tensor in (
        ("input image", image), ("structure code", structure), ("appearance code", appearance.code),
        ("global feature", appearance.feature), ("id embedding, each head", appearance.primary_embedding),
        ("generated image", generated),
    )]
    shapes.append(("D patch maps", ", ".join(" x ".join(map(str, p.shape[1:])) for p in patches)))
    width = max(len(name) for name, _ in rows + shapes) + 2
    lines = [
        f"DG-Net: {cfg.backbone}, {cfg.image_height}x{cfg.image_width} input, {cfg.num_classes} classes",
        "",
        f"{'module':<{width}}parameters",
        *(f"{name:<{width}}{value:>12}" for name, value in rows),
        "",
        f"{'tensor (per image)':<{width}}shape",
        *(f"{name:<{width}}{value}" for name, value in shapes),
    ]
    return "\n".join(lines)
