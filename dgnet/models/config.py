"""The model configuration, defaults docs/method.md section 2 exactly; flat, so that params.yaml's
`model:` maps onto it one to one. The profiles are dgnet.profiles': `get_profile("cpu", num_classes=10)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dgnet.checks import check_choice, check_fields, check_int, check_number
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
        check_fields(self, "model")
        check_choice(self.backbone, "model.backbone", sorted(BACKBONE_CHANNELS))
        check_choice(self.teacher_pooling, "model.teacher_pooling", POOLINGS)
        for name, choices in (("teacher_last_stride", (1, 2)), ("structure_downsamplings", (1, 2))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"model.{name}: must be 1 or 2, got {getattr(self, name)!r}")
        for name in ("image_height", "image_width", "num_classes", "appearance_rows", "embedding_dim",
                     "aspp_width", "structure_channels", "decoder_residual_blocks", "discriminator_scales"):
            check_int(getattr(self, name), f"model.{name}", 1)
        for name in ("structure_residual_blocks", "discriminator_residual_blocks"):
            check_int(getattr(self, name), f"model.{name}")
        width = self.backbone_width
        if not isinstance(width, int) or isinstance(width, bool) or width < 8 or width % 8:
            raise ConfigError(f"model.backbone_width: must be a multiple of 8, at least 8, got {width!r}")
        if width != RESNET_WIDTH and (self.pretrained or self.pretrained_path):
            raise ConfigError(f"model.backbone_width: ImageNet weights exist only at width {RESNET_WIDTH}, "
                              f"so width {width} needs pretrained: false (and no pretrained_path)")
        lengths = {"structure_widths": 4, "decoder_widths": self.structure_downsamplings,
                   "discriminator_widths": 2, "aspp_dilations": None, "mlp_hidden": None}
        for name, length in lengths.items():
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value or (length and len(value) != length) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                rule = f"{length} positive integers" if length else "a non-empty list of positive integers"
                raise ConfigError(f"model.{name}: must be {rule}, got {value!r}")
        for name in ("primary_dropout", "fine_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name}: must be in [0, 1), got {getattr(self, name)!r}")
        check_number(self.discriminator_init_std, "model.discriminator_init_std", low_open=True)
        self._check_shapes()

    def _check_shapes(self) -> None:
        """The sizes must fit each other: strides, pooling rows, paddings, D's scales, AdaIN slices."""
        if self.image_height % TRUNK_STRIDE or self.image_width % TRUNK_STRIDE:
            raise ConfigError(f"model.image_height/image_width: must be multiples of {TRUNK_STRIDE} (the "
                              f"trunk's stride), got {self.image_height}x{self.image_width}")
        if self.appearance_rows > self.image_height // TRUNK_STRIDE:
            raise ConfigError(f"model.appearance_rows: {self.appearance_rows} exceeds the "
                              f"{self.appearance_map_size[0]} rows of the appearance map at image_height "
                              f"{self.image_height}")
        if max(self.aspp_dilations) >= min(self.structure_size):  # reflect padding: pad < map
            rows, cols = self.structure_size
            raise ConfigError(f"model.aspp_dilations: the largest dilation {max(self.aspp_dilations)} must "
                              f"be smaller than the structure map {rows}x{cols} (reflect padding)")
        if min(self.image_height, self.image_width) // 2 ** (self.discriminator_scales - 1) // 4 < 2:
            raise ConfigError(f"model.discriminator_scales: {self.discriminator_scales} scales of a "
                              f"{self.image_height}x{self.image_width} image leave a patch map under 2 "
                              f"pixels wide")
        if self.appearance_code_dim % self.decoder_residual_blocks:
            raise ConfigError(f"model.decoder_residual_blocks: the {self.appearance_code_dim}-d appearance "
                              f"code must split evenly into one slice per residual block, "
                              f"{self.decoder_residual_blocks} does not divide it")

    # The derived sizes; the paper's in the comments.
    @property
    def backbone_channels(self) -> int:  # the appearance map's channels, the global feature's size: 2048
        return BACKBONE_CHANNELS[self.backbone] * self.backbone_width // RESNET_WIDTH

    @property
    def appearance_code_dim(self) -> int:  # the flattened appearance code, channels x rows: 8192
        return self.backbone_channels * self.appearance_rows

    @property
    def adain_slice_dim(self) -> int:  # the code slice that drives one decoder residual block: 2048
        return self.appearance_code_dim // self.decoder_residual_blocks

    @property
    def structure_size(self) -> tuple[int, int]:  # the structure code's: 64x32
        return self.image_height // self.structure_stride, self.image_width // self.structure_stride

    @property
    def structure_stride(self) -> int:  # image pixels one structure-code cell spans per side: 4
        return 2**self.structure_downsamplings

    @property
    def appearance_map_size(self) -> tuple[int, int]:  # the trunk's last map: 16x8
        return self.image_height // TRUNK_STRIDE, self.image_width // TRUNK_STRIDE

