"""dgnet: a reproducible implementation of DG-Net for person re-identification."""

__version__ = "0.1.0"
