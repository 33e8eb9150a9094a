"""Distillation losses: pure functions of arrays (no Flax, no config), one module per family.

Each docstring gives the loss's equation and its paper. `core` holds those of the VID paper's
main comparison (VID's Gaussian NLL, KD, FitNet, AT) and the shared helpers.
"""
from vid_jax.losses.core import (
    attention_map,
    attention_transfer,
    attention_transfer_loss,
    average_pool_to,
    cross_entropy,
    fitnet_hint_loss,
    kd_loss,
    match_spatial,
    vid_nll,
)

__all__ = [
    "attention_map", "attention_transfer", "attention_transfer_loss", "average_pool_to",
    "cross_entropy", "fitnet_hint_loss", "kd_loss", "match_spatial", "vid_nll",
]
