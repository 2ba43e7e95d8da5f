"""ResNet trunk (torchvision ResNet without pooling and fc), last stage with stride 1.

ImageNet weights come from a path in the config or the torchvision checkpoint already in the torch
hub cache. A run that requires them (`require_pretrained`, the paper profile) downloads them there
through torchvision's weights API when online, as torchreid and fast-reid do (one bounded attempt;
DGNET_OFFLINE=1 turns it off); no other run downloads: without weights the trunk is randomly
initialised with a warning, or ConfigError naming the file and the folder when they are required.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from dgnet.errors import ConfigError
from dgnet.models.config import RESNET_WIDTH, ModelConfig
from dgnet.models.grouped_norm import GroupedBatchNorm2d

BACKBONES = ("resnet18", "resnet34", "resnet50")
DOWNLOAD_TIMEOUT_S = 30  # per network operation: an offline machine gives up within it
OFFLINE_ENV = "DGNET_OFFLINE"


class PretrainedWeightsMissingWarning(UserWarning):
    """ImageNet weights were asked for but are not on this machine; the trunk starts from random init."""


class ResNetTrunk(nn.Module):
    """conv1 .. layer4 of a torchvision ResNet; output C x H/16 x W/16 (C = 2048 for ResNet-50).

    The attribute names are torchvision's, so a torchvision state dict (minus `fc.*`) loads as is.
    `width` other than 64 rebuilds the stages with torchvision's own blocks at width, 2 width,
    4 width and 8 width channels (and initialises them as torchvision does).
    """

    def __init__(self, name: str, width: int = RESNET_WIDTH, last_stride: int = 1) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"model.backbone: {name!r} is not one of {sorted(BACKBONES)}")
        # Grouped BatchNorm: torch's own unless a caller groups a batch (dgnet.models.grouped_norm).
        resnet = torchvision.models.get_model(name, weights=None, norm_layer=GroupedBatchNorm2d)
        if width != RESNET_WIDTH:
            _narrow(resnet, width)
        # Re-ID keeps the last stage at stride 1 (a 16x8 map at 256x128) for finer spatial detail.
        first = resnet.layer4[0]
        strided_conv = first.conv2 if isinstance(first, torchvision.models.resnet.Bottleneck) else first.conv1
        strided_conv.stride = (last_stride, last_stride)
        first.downsample[0].stride = (last_stride, last_stride)
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(resnet, part))
        self.out_channels = resnet.inplanes  # torchvision's builder leaves the last stage's width here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _narrow(resnet: torchvision.models.ResNet, width: int) -> None:
    """Rebuild `resnet`'s stem and stages in place at `width` channels, with torchvision's init."""
    block = type(resnet.layer1[0])
    resnet.inplanes = width
    resnet.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.bn1 = GroupedBatchNorm2d(width)
    for i, stage in enumerate(("layer1", "layer2", "layer3", "layer4")):
        depth = len(getattr(resnet, stage))
        setattr(resnet, stage, resnet._make_layer(block, width * 2**i, depth, stride=2 if i else 1))
    for module in resnet.modules():  # as torchvision's ResNet.__init__
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def cached_imagenet_checkpoint(name: str) -> Path | None:
    """The torchvision ImageNet checkpoint for `name` if it is already in the torch hub cache (any of
    the weights enum's files, V1 first: the classic weights re-ID papers used), else None."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    found = (checkpoints / os.path.basename(w.url) for w in torchvision.models.get_model_weights(name))
    return next((path for path in found if path.is_file()), None)


def download_imagenet_checkpoint(name: str, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path | None:
    """Fetch `name`'s ImageNet V1 weights into the torch hub cache (torchvision's `get_state_dict`,
    hash checked); the file, or None when offline, refused by DGNET_OFFLINE=1, or failed."""
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as error:  # URLError and timeouts are OSErrors
        warnings.warn(f"model.pretrained: downloading the {name} ImageNet weights failed ({error})",
                      PretrainedWeightsMissingWarning, stacklevel=3)
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return cached_imagenet_checkpoint(name)


def load_trunk_weights(trunk: ResNetTrunk, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet state dict (`fc.*` entries ignored) into `trunk`; ConfigError if unfit."""
    path, key = Path(path), "model.pretrained_path"
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix
        raise ConfigError(f"{key}: {path} is not a readable torch state dict ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {path} does not hold a state dict")
    try:
        trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    except RuntimeError as error:
        raise ConfigError(f"{key}: {path} does not fit the configured backbone ({error})") from error


def build_trunk(cfg: ModelConfig, last_stride: int = 1) -> ResNetTrunk:
    """The configured ResNet trunk, with ImageNet weights when asked for and available."""
    trunk = ResNetTrunk(cfg.backbone, cfg.backbone_width, last_stride)
    if not cfg.pretrained:
        return trunk
    path = Path(cfg.pretrained_path) if cfg.pretrained_path else cached_imagenet_checkpoint(cfg.backbone)
    if path is None and cfg.require_pretrained:
        path = download_imagenet_checkpoint(cfg.backbone)
    if path is not None:
        load_trunk_weights(trunk, path)
        return trunk
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    message = (f"model.pretrained: no ImageNet weights for {cfg.backbone} (no model.pretrained_path and "
               f"none in {folder})")
    if cfg.require_pretrained:
        url = torchvision.models.get_model_weights(cfg.backbone).IMAGENET1K_V1.url
        raise ConfigError(
            message + " and none could be downloaded; model.require_pretrained is set (the paper profile "
            f"sets it: without ImageNet weights it loses tens of rank-1 points). Put {url} as "
            f"{folder / os.path.basename(url)}, or set model.pretrained_path; to train from random init "
            "anyway, set require_pretrained: false (params.yaml `model: {require_pretrained: false}`, or "
            "--set model.require_pretrained=false)"
        )
    warnings.warn(message + "; nothing is downloaded unless model.require_pretrained is set; starting from "
                  "random init", PretrainedWeightsMissingWarning, stacklevel=2)
    return trunk
