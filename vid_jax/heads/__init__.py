"""Heads: the small Flax modules of the methods that have parameters, one module per family."""
from vid_jax.heads.core import FitNetHead, VIDHead

__all__ = ["FitNetHead", "VIDHead"]
