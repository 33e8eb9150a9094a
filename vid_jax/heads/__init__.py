"""Heads: the small Flax modules of the methods that have parameters, one module per family."""
from vid_jax.heads.core import MEAN_NETWORKS, VARIANCES, FitNetHead, VIDHead, check_vid_options

__all__ = ["MEAN_NETWORKS", "VARIANCES", "FitNetHead", "VIDHead", "check_vid_options"]
