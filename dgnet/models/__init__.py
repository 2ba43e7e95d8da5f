"""The DG-Net networks: E_a, E_s, the decoder with its AdaIN mapping, D, and the teacher.

The names below load on first use, so that `dgnet.models.config` (the ModelConfig schema and its
profiles) imports without torch: `dgnet config show` and the configuration checks stay fast.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "ModelConfig": "dgnet.models.config",
    "DGNet": "dgnet.models.dgnet",
    "ParameterGroups": "dgnet.models.dgnet",
    "summarize": "dgnet.models.summary",
    "FrozenTeacher": "dgnet.models.teacher",
    "ReidBaseline": "dgnet.models.teacher",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'dgnet.models' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
