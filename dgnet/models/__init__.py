"""The DG-Net networks: E_a, E_s, the decoder with its AdaIN mapping, D, and the teacher."""

from dgnet.models.config import PROFILES, ModelConfig, get_profile
from dgnet.models.dgnet import DGNet, ParameterGroups
from dgnet.models.summary import summarize
from dgnet.models.teacher import FrozenTeacher, ReidBaseline

__all__ = [
    "PROFILES",
    "DGNet",
    "FrozenTeacher",
    "ModelConfig",
    "ParameterGroups",
    "ReidBaseline",
    "get_profile",
    "summarize",
]
