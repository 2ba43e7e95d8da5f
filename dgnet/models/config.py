"""The model configuration: one frozen object, and named profiles that differ only in numbers.

`PROFILES["paper"]` is docs/method.md section 2 exactly (256x128, ResNet-50); "cpu" is what `dvc repro`
trains on the synthetic data on a 2-core CPU; "tiny" is for tests. Fields are flat so that a
params.yaml section maps onto them one to one: `get_profile("cpu", num_classes=10)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dgnet.checks import check_int
from dgnet.errors import ConfigError

# Channels of the last ResNet stage, i.e. of the appearance map and of the global feature, at
# torchvision's width (64 channels in the first stage); they scale with `backbone_width`.
BACKBONE_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
RESNET_WIDTH = 64
POOLINGS = ("avg", "max")
# Total stride of the ResNet trunk once its last stage has stride 1.
TRUNK_STRIDE = 16


@dataclass(frozen=True)
class ModelConfig:
    """Every number of the DG-Net networks. Validated on construction (ConfigError names the field)."""

    # Appearance encoder E_a (and the teacher) backbone.
    backbone: str = "resnet50"
    # Channels of the trunk's first stage (each later stage doubles them). torchvision's 64 is the
    # only width ImageNet weights exist for; a narrower trunk trains from random init.
    backbone_width: int = RESNET_WIDTH
    pretrained: bool = True
    pretrained_path: str | None = None  # a torchvision ResNet state dict; else the torch hub cache
    # True (the paper's default): missing ImageNet weights is an error, not a warning, because the
    # paper configuration loses tens of rank-1 points without them.
    require_pretrained: bool = True
    image_height: int = 256
    image_width: int = 128
    num_classes: int = 751
    # Appearance code: the trunk map max-pooled to (appearance_rows, 1).
    appearance_rows: int = 4
    # Id heads: Linear -> BatchNorm1d -> Dropout -> Linear.
    embedding_dim: int = 512
    primary_dropout: float = 0.5
    fine_dropout: float = 0.75
    # Structure encoder E_s.
    structure_widths: tuple[int, int, int, int] = (16, 32, 32, 64)
    structure_residual_blocks: int = 4
    aspp_width: int = 32
    aspp_dilations: tuple[int, ...] = (3, 6, 9)
    structure_channels: int = 128
    # Stride-2 convolutions of E_s: the paper's 2 keep a 64x32 code of a 256x128 image. The decoder
    # has one x2 upsampling per downsampling, with decoder_widths[k] channels after the k-th.
    structure_downsamplings: int = 2
    # Decoder G and its AdaIN mapping (one scale-MLP and one bias-MLP per residual block).
    decoder_residual_blocks: int = 4
    decoder_widths: tuple[int, ...] = (64, 32)
    mlp_hidden: tuple[int, ...] = (512, 512)
    # Multi-scale discriminator D.
    discriminator_scales: int = 3
    discriminator_widths: tuple[int, int] = (32, 64)
    discriminator_residual_blocks: int = 4
    discriminator_init_std: float = 0.02
    # Teacher baseline: pooling of its global feature ("avg" is the usual re-ID baseline).
    teacher_pooling: str = "avg"
    # Stride of the teacher trunk's last stage: 1 as E_a (a 16x8 map), or torchvision's 2 (the
    # re-ID baseline's default; the published teacher's opts.yaml says which it was trained with).
    teacher_last_stride: int = 1

    def __post_init__(self) -> None:
        # YAML gives lists; the frozen config holds tuples so that it stays hashable and immutable.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        if self.backbone not in BACKBONE_CHANNELS:
            raise ConfigError(f"model.backbone: {self.backbone!r} is not one of {sorted(BACKBONE_CHANNELS)}")
        if self.teacher_last_stride not in (1, 2):
            raise ConfigError(f"model.teacher_last_stride: must be 1 or 2, got {self.teacher_last_stride!r}")
        if self.teacher_pooling not in POOLINGS:
            raise ConfigError(f"model.teacher_pooling: {self.teacher_pooling!r} is not one of {POOLINGS}")
        positive = [
            "image_height", "image_width", "num_classes", "appearance_rows", "embedding_dim",
            "aspp_width", "structure_channels", "decoder_residual_blocks", "discriminator_scales",
        ]  # fmt: skip
        for name in positive:
            check_int(getattr(self, name), f"model.{name}", 1)
        for name in ("structure_residual_blocks", "discriminator_residual_blocks"):
            check_int(getattr(self, name), f"model.{name}")
        width = self.backbone_width
        if not isinstance(width, int) or isinstance(width, bool) or width < 8 or width % 8:
            raise ConfigError(f"model.backbone_width: must be a multiple of 8, at least 8, got {width!r}")
        if width != RESNET_WIDTH and (self.pretrained or self.pretrained_path):
            raise ConfigError(
                f"model.backbone_width: ImageNet weights exist only at width {RESNET_WIDTH}, so width "
                f"{width} needs pretrained: false (and no pretrained_path)"
            )
        if self.structure_downsamplings not in (1, 2):
            raise ConfigError(
                f"model.structure_downsamplings: must be 1 or 2, got {self.structure_downsamplings!r}"
            )
        for name, length in (
            ("structure_widths", 4),
            ("decoder_widths", self.structure_downsamplings),
            ("discriminator_widths", 2),
        ):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != length or not all(_is_pos_int(v) for v in value):
                raise ConfigError(f"model.{name}: must be {length} positive integers, got {value!r}")
        for name in ("aspp_dilations", "mlp_hidden"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value or not all(_is_pos_int(v) for v in value):
                raise ConfigError(
                    f"model.{name}: must be a non-empty list of positive integers, got {value!r}"
                )
        for name in ("primary_dropout", "fine_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name}: must be in [0, 1), got {value!r}")
        if self.discriminator_init_std <= 0:
            raise ConfigError(
                f"model.discriminator_init_std: must be > 0, got {self.discriminator_init_std!r}"
            )
        if self.image_height % TRUNK_STRIDE or self.image_width % TRUNK_STRIDE:
            raise ConfigError(
                f"model.image_height/image_width: must be multiples of {TRUNK_STRIDE} (the trunk's stride), "
                f"got {self.image_height}x{self.image_width}"
            )
        if self.appearance_rows > self.image_height // TRUNK_STRIDE:
            raise ConfigError(
                f"model.appearance_rows: {self.appearance_rows} exceeds the {self.appearance_map_size[0]} "
                f"rows of the appearance map at image_height {self.image_height}"
            )
        # Reflect padding needs a pad smaller than the map it pads.
        if max(self.aspp_dilations) >= min(self.structure_size):
            raise ConfigError(
                f"model.aspp_dilations: the largest dilation {max(self.aspp_dilations)} must be smaller "
                f"than the structure map {self.structure_size[0]}x{self.structure_size[1]} (reflect padding)"
            )
        smallest = min(self.image_height, self.image_width) // 2 ** (self.discriminator_scales - 1) // 4
        if smallest < 2:
            raise ConfigError(
                f"model.discriminator_scales: {self.discriminator_scales} scales of a "
                f"{self.image_height}x{self.image_width} image leave a patch map under 2 pixels wide"
            )
        if self.appearance_code_dim % self.decoder_residual_blocks:
            raise ConfigError(
                f"model.decoder_residual_blocks: the {self.appearance_code_dim}-d appearance code must split "
                f"evenly into one slice per residual block, {self.decoder_residual_blocks} does not divide it"
            )

    @property
    def backbone_channels(self) -> int:
        """Channels of the appearance map and size of the global feature (2048 for ResNet-50 at width 64)."""
        return BACKBONE_CHANNELS[self.backbone] * self.backbone_width // RESNET_WIDTH

    @property
    def appearance_code_dim(self) -> int:
        """Length of the flattened appearance code: channels x rows (8192 in the paper)."""
        return self.backbone_channels * self.appearance_rows

    @property
    def adain_slice_dim(self) -> int:
        """Length of the code slice that drives one decoder residual block (2048 in the paper)."""
        return self.appearance_code_dim // self.decoder_residual_blocks

    @property
    def structure_size(self) -> tuple[int, int]:
        """Spatial size of the structure code (64x32 in the paper)."""
        return self.image_height // self.structure_stride, self.image_width // self.structure_stride

    @property
    def structure_stride(self) -> int:
        """How many image pixels one structure-code cell spans per side (4 in the paper)."""
        return 2**self.structure_downsamplings

    @property
    def appearance_map_size(self) -> tuple[int, int]:
        """Spatial size of the trunk's last map (16x8 in the paper)."""
        return self.image_height // TRUNK_STRIDE, self.image_width // TRUNK_STRIDE


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


PROFILES: dict[str, ModelConfig] = {
    # docs/method.md section 2, exactly.
    # ImageNet initialisation is part of it: without it the paper configuration loses tens of rank-1
    # points, so it refuses to start without the weights (override require_pretrained: false).
    "paper": ModelConfig(),
    # `dvc repro` on the synthetic data on a 2-core CPU: ResNet-18, half-size input, narrow generator.
    "cpu": ModelConfig(
        backbone="resnet18",
        # torchvision's width. backbone_width 32 makes the trunk (about half of an iteration) ~4x
        # cheaper, but its teacher reaches only mAP 29.9 against 41.4 in 600 iterations.
        pretrained=True,
        require_pretrained=False,  # no ImageNet weights on CPU machines: E_a starts from the teacher
        image_height=64,
        image_width=32,
        num_classes=751,
        appearance_rows=4,
        embedding_dim=128,
        structure_widths=(8, 16, 16, 32),
        structure_residual_blocks=2,
        aspp_width=16,
        aspp_dilations=(2, 4, 6),
        # A 32x16 code (one downsampling, as many numbers as 64 channels at 16x8): at 64x32 a 16x8
        # code is too coarse for the pose and trousers to transfer; the 32x16 one sharpens the
        # swaps at the same cost (docs/generator_diagnosis.md, section 4).
        structure_channels=32,
        structure_downsamplings=1,
        decoder_residual_blocks=4,
        decoder_widths=(16,),
        mlp_hidden=(128,),
        discriminator_scales=3,
        discriminator_widths=(16, 32),
        discriminator_residual_blocks=1,
    ),
    # Unit tests: the smallest shapes that still exercise every layer.
    "tiny": ModelConfig(
        backbone="resnet18",
        pretrained=False,
        require_pretrained=False,
        image_height=64,
        image_width=32,
        num_classes=8,
        appearance_rows=4,
        embedding_dim=16,
        structure_widths=(4, 8, 8, 8),
        structure_residual_blocks=1,
        aspp_width=4,
        aspp_dilations=(1, 2, 3),
        structure_channels=16,
        decoder_residual_blocks=2,
        decoder_widths=(8, 8),
        mlp_hidden=(16,),
        discriminator_scales=3,
        discriminator_widths=(4, 8),
        discriminator_residual_blocks=1,
    ),
}


def get_profile(name: str, **overrides: Any) -> ModelConfig:
    """The named profile with `overrides` applied (e.g. `num_classes=751`); ConfigError when unknown."""
    if name not in PROFILES:
        raise ConfigError(f"model profile: {name!r} is not one of {sorted(PROFILES)}")
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"model profile {name!r}: unknown field(s) {unknown}; known fields are {sorted(known)}"
        )
    return dataclasses.replace(PROFILES[name], **overrides)
