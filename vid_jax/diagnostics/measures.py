"""What the diagnostics measure, as pure functions of arrays (no parameters, no files).

References:
    VID: Ahn, Hu, Damianou, Lawrence, Dai. "Variational Information Distillation for
        Knowledge Transfer". CVPR 2019.
    CKA: Kornblith, Norouzi, Lee, Hinton. "Similarity of Neural Network Representations
        Revisited". ICML 2019.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def vid_log_likelihood(target: Array, mean: Array, variance: Array) -> Array:
    r"""Per-position log-likelihood of the teacher under VID's Gaussian, summed over channels.

    VID (Ahn et al., CVPR 2019, eq. 4) models q(t | s) = N(t; mu(s), diag(sigma^2)) with one
    variance per channel; at a spatial position (h, w) the channels are independent, so

        log q(t_hw | s) = sum_c log q(t_chw | s)
                        = - sum_c [ 0.5 log(2 pi sigma_c^2) + (t_chw - mu_chw)^2 / (2 sigma_c^2) ].

    This is the quantity of the paper's Fig. 2 heat maps. Unlike `losses.vid_nll` (the
    training loss: a mean over elements, without the constant) it keeps the 0.5 log(2 pi)
    of every element, so it is a true log-density in nats, and

        mean(vid_log_likelihood(t, mu, v)) / C = -vid_nll(t, mu, v) - 0.5 log(2 pi).

    Args:
        target: teacher features t, [..., C] (e.g. NHWC maps).
        mean: mu(s), the same shape.
        variance: sigma^2, [C], positive.

    Returns:
        log q(t_hw | s), the shape of `target` without its channel axis.
    """
    log_density = -0.5 * (jnp.square(target - mean) / variance + jnp.log(2.0 * math.pi * variance))
    return jnp.sum(log_density, axis=-1)


def linear_cka(x: Array, y: Array) -> Array:
    r"""Linear centred kernel alignment between two representations of the same examples.

    Kornblith et al. (ICML 2019, eq. 5 with linear kernels): with each example's features
    flattened to a row, X [n, p_x] and Y [n, p_y], and the columns centred,

        CKA(X, Y) = || Y^T X ||_F^2 / ( || X^T X ||_F  || Y^T Y ||_F ).

    It is computed in its kernel form, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the
    Gram matrices K = X X^T, L = Y Y^T centred by H = I - 11^T / n, which is the same number
    and costs n x n memory rather than p_x x p_y (a 32x32x32 map has p = 32,768). It lies in
    [0, 1], is 1 for X against itself, and is invariant to orthogonal transforms and
    isotropic scaling of either side, so layers of different widths compare.

    Args:
        x: [n, ...] features of n examples (flattened per example).
        y: [n, ...] features of the same n examples.

    Returns:
        Scalar CKA.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same examples on both sides, got {x.shape[0]} "
                         f"and {y.shape[0]}.")
    return gram_alignment(centred_gram(x), centred_gram(y))


def centred_gram(features: Array) -> Array:
    """H X X^T H of [n, ...] features flattened per example (H = I - 11^T / n): the linear
    kernel's centred Gram matrix, [n, n]; centring the features centres the Gram."""
    x = features.reshape(features.shape[0], -1).astype(jnp.float32)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    return x @ x.T


def gram_alignment(k: Array, l_: Array) -> Array:
    """<K, L>_F / (||K||_F ||L||_F) of two centred Gram matrices: `linear_cka` from the Grams,
    so that each layer's Gram is computed once for a matrix of layer pairs."""
    return jnp.sum(k * l_) / (jnp.linalg.norm(k) * jnp.linalg.norm(l_))


def mean_magnitude(features: Array) -> Array:
    """Mean absolute activation over channels per position: [..., C] -> [...] (Fig. 2's
    teacher panels)."""
    return jnp.mean(jnp.abs(features), axis=-1)


def upsample(maps: Array, height: int, width: int) -> Array:
    """[B, h, w] maps resized bilinearly to [B, height, width] (to lay over the image)."""
    return jax.image.resize(maps, (maps.shape[0], height, width), method="linear")


def rescale(maps: Array, low: Array | float, high: Array | float) -> Array:
    """(maps - low) / (high - low), clipped to [0, 1]; a flat range gives zeros."""
    span = jnp.asarray(high) - jnp.asarray(low)
    return jnp.clip(jnp.where(span > 0, (maps - low) / jnp.where(span > 0, span, 1.0), 0.0),
                    0.0, 1.0)
