"""Losses of the factor family: Factor Transfer, the feature-distillation overhaul, IE-KD.

Pure functions of arrays (no Flax, no config). Feature maps and factors are NHWC; the
per-example losses flatten everything but the batch axis. Heads that produce the factors
(paraphraser, translator, connectors) are in `vid_jax.heads.factors`.

References:
    FT: Kim, Park, Kwak. "Paraphrasing Complex Network: Network Compression via Factor
        Transfer". NeurIPS 2018.
    OD: Heo, Kim, Yun, Park, Kwak, Choi. "A Comprehensive Overhaul of Feature
        Distillation". ICCV 2019.
    IE-KD: Huang, Shen, Xing, Liu, Tian, Li, Deng, Huang, Hua. "Revisiting Knowledge
        Distillation: An Inheritance and Exploration Framework". CVPR 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from vid_jax.losses.core import attention_transfer_loss

Array = jax.Array


# ---------------------------------------------------------------------------------
# Factor Transfer


def normalize_per_example(x: Array, eps: float = 1e-12) -> Array:
    r"""Flattens each example and divides it by its L2 norm: x_b / ||x_b||_2.

    Each row is first divided by its largest magnitude (a constant for the gradient: the
    result does not depend on it), so the squares neither overflow for large activations
    nor underflow for tiny ones. The norm of that rescaled row is then clamped below at
    `eps` (like `torch.nn.functional.normalize`, which FT's code uses) rather than added
    to, so an all-zero row gives zeros with finite gradients instead of 0/0.

    Args:
        x: [B, ...] factors.
        eps: lower bound on the norm of each rescaled row.

    Returns:
        [B, D] unit-norm rows (D = the product of the non-batch dimensions).
    """
    flat = x.reshape(x.shape[0], -1)
    scale = jnp.max(jnp.abs(flat), axis=-1, keepdims=True)
    flat = flat / jax.lax.stop_gradient(jnp.where(scale > 0, scale, 1.0))
    # sqrt(max(., eps^2)) rather than jnp.linalg.norm: the gradient of a norm at 0 is NaN.
    sq_norm = jnp.sum(jnp.square(flat), axis=-1, keepdims=True)
    return flat / jnp.sqrt(jnp.maximum(sq_norm, eps**2))


def factor_transfer_loss(student_factor: Array, teacher_factor: Array, p: float = 1.0) -> Array:
    r"""Factor-transfer loss (Kim et al., NeurIPS 2018).

        L_FT = mean_b || F_T,b / ||F_T,b||_2 - F_S,b / ||F_S,b||_2 ||_p,

    with each example's factor flattened to a vector and p = 1 in the paper. The loss is
    invariant to a positive rescaling of either factor, and bounded: the difference of
    two unit vectors in R^D has an L2 norm of at most 2, so an Lp norm of at most
    2 * D^max(0, 1/p - 1/2).

    The paper writes the norm per example; the authors' code takes `nn.L1Loss`, the mean
    over all B*D elements, times beta = 500. Both have the same gradient direction; this
    per-example norm is D times the code's element mean, so the code's setting is a
    weight of 500 / D here.

    Args:
        student_factor: [B, ...] student factor F_S (the translator's output).
        teacher_factor: [B, ...] teacher factor F_T (the paraphraser's; gradients should
            already be stopped), same number of elements per example as the student's.
        p: order of the norm of the difference (p >= 1).

    Returns:
        Scalar loss, averaged over the batch.
    """
    diff = normalize_per_example(student_factor) - normalize_per_example(teacher_factor)
    if p == 1:
        return jnp.mean(jnp.sum(jnp.abs(diff), axis=-1))
    powered = jnp.sum(jnp.abs(diff) ** p, axis=-1)
    # The p-th root has an infinite slope at 0 (identical factors): take it only where
    # the sum is positive, and feed a safe 1 to the other branch so its gradient is 0.
    positive = powered > 0
    root = jnp.where(positive, jnp.where(positive, powered, 1.0) ** (1.0 / p), 0.0)
    return jnp.mean(root)


def reconstruction_loss(features: Array, reconstruction: Array) -> Array:
    r"""Reconstruction loss of the paraphraser / IE-KD auto-encoder.

        L_rec = mean( (x - P(x))^2 ),

    the paper's || x - P(x) ||^2 (FT; IE-KD) averaged over elements instead
    of summed (only a rescaling, so its learning rate stays comparable across layer
    sizes). FT's released code trains the paraphraser with an L1 loss instead; the papers
    write the squared L2 loss, which is used here.

    Args:
        features: [B, ...] teacher features x (gradients stopped by the caller).
        reconstruction: P(x), same shape.

    Returns:
        Scalar mean squared error.
    """
    return jnp.mean(jnp.square(reconstruction - features))


# ---------------------------------------------------------------------------------
# A Comprehensive Overhaul of Feature Distillation


def gaussian_negative_mean(mean: Array, std: Array, min_mass: float = 1e-3) -> Array:
    r"""E[x | x < 0] for x ~ N(mean, std^2): OD's margin in closed form (Heo et al., ICCV 2019).

        m = E[x | x < 0] = mean - std * phi(mean / std) / Phi(-mean / std),

    where phi and Phi are the standard normal density and distribution. The paper takes
    mean and std per channel from the teacher's batch-normalisation layer before the
    ReLU. Where the negative side has almost no mass (Phi(-mean/std) <= `min_mass`), the
    ratio is numerically unstable and, like the authors' code, -3 * std is returned.

    Args:
        mean: per-channel mean of the pre-ReLU response.
        std: per-channel standard deviation (its absolute value is used, since a BN's
            scale may be negative).
        min_mass: smallest Phi(-mean/std) for which the closed form is used.

    Returns:
        The per-channel margin (negative), same shape as `mean`.
    """
    std = jnp.abs(std)
    z = mean / std
    mass = norm.cdf(-z)
    stable = mass > min_mass
    safe_mass = jnp.where(stable, mass, 1.0)
    return jnp.where(stable, mean - std * norm.pdf(z) / safe_mass, -3.0 * std)


def negative_moments(x: Array) -> tuple[Array, Array]:
    r"""Per-channel batch moments of the negative part, from which E[x | x < 0] follows.

        s_c = mean_{b,h,w} min(x_bhwc, 0),   q_c = mean_{b,h,w} 1[x_bhwc < 0],
        E[x_c | x_c < 0] ~= s_c / q_c.

    Keeping s and q (rather than their ratio) lets a running average of each, over
    batches and devices, estimate the conditional mean without bias from batches where a
    channel has few or no negative entries.

    Args:
        x: [..., C] responses; every axis but the last is averaged over.

    Returns:
        (s, q), each of shape [C].
    """
    axes = tuple(range(x.ndim - 1))
    negative = x < 0
    return (jnp.mean(jnp.where(negative, x, 0.0), axis=axes),
            jnp.mean(negative.astype(x.dtype), axis=axes))


def margin_from_moments(negative_sum: Array, negative_fraction: Array,
                        eps: float = 1e-12) -> Array:
    r"""E[x | x < 0] ~= s / q from (running averages of) `negative_moments`; 0 where q = 0.

    A channel that never goes negative gets margin 0, where the margin ReLU is a ReLU.
    Two running averages that start at zero with the same momentum carry the same bias
    factor (1 - momentum^n), which cancels in the ratio, so no bias correction is needed.
    """
    has_negatives = negative_fraction > eps
    return jnp.where(has_negatives,
                     negative_sum / jnp.where(has_negatives, negative_fraction, 1.0), 0.0)


def margin_relu(x: Array, margin: Array) -> Array:
    r"""OD's teacher transform: sigma_m(x) = max(x, m), m per channel (last axis).

    Positive responses pass unchanged, negative ones are raised to at least the margin
    m = E[x | x < 0] < 0, so the teacher keeps the sign of its pre-ReLU response without
    asking the student to reproduce values that the ReLU discards.
    """
    return jnp.maximum(x, margin)


def partial_l2_mask(student: Array, target: Array) -> Array:
    """Where OD's partial L2 counts an element: not (student <= target <= 0)."""
    return jnp.logical_not((student <= target) & (target <= 0))


def partial_l2_loss(student: Array, target: Array) -> Array:
    r"""OD's partial L2 distance (Heo et al., ICCV 2019), summed per example, mean over batch.

        d_p(T, S) = sum_i { 0               if S_i <= T_i <= 0
                          { (T_i - S_i)^2   otherwise,

    where T is the transformed teacher (`margin_relu`) and S the student's connector
    output. Where the teacher is negative (the ReLU would zero it) a student that is
    even more negative is not penalised. The authors' code sums d_p over the batch,
    divides by the batch size and by 1000 (CIFAR; 10^4 on ImageNet); the division by the
    batch size is here, the 1/1000 is the term's weight in the config.

    Args:
        student: [B, ...] student responses after the connector.
        target: teacher target, same shape (gradients stopped by the caller).

    Returns:
        Scalar: sum over elements / batch size.
    """
    sq = jnp.where(partial_l2_mask(student, target), jnp.square(student - target), 0.0)
    return jnp.sum(sq) / student.shape[0]


def overhaul_distillation_loss(student: Array, teacher: Array, margin: Array) -> Array:
    """OD's distillation loss for one position: `partial_l2_loss(s, margin_relu(t, m))`."""
    return partial_l2_loss(student, margin_relu(teacher, margin))


def normalized_partial_l2_loss(student: Array, target: Array) -> Array:
    r"""`partial_l2_loss` between per-example L2-normalised student and target.

        d(S, T) = mean_b d_p( T_b / ||T_b||_2, S_b / ||S_b||_2 ).

    Positive rescaling keeps every sign, so the partial mask means what it did, while the
    distance becomes bounded (at most 4 per example: two unit vectors are at most 2
    apart). IE-OD uses it so that its exploration term, the negative of this distance,
    is bounded below; OD's own unnormalised distance could be driven to -infinity by
    scaling the exploring factor up.
    """
    return partial_l2_loss(normalize_per_example(student), normalize_per_example(target))


# ---------------------------------------------------------------------------------
# Inheritance and exploration


def inheritance_exploration_loss(
    inherit_factor: Array,
    explore_factor: Array,
    teacher_factor: Array,
    distance: Callable[[Array, Array], Array],
    inheritance_weight: float = 1.0,
    exploration_weight: float = 1.0,
) -> Array:
    r"""IE-KD's distillation loss (Huang et al., CVPR 2021).

        L = lambda_inh * d(F_inh, F_T) - lambda_exp * d(F_exp, F_T),

    the inheritance loss pulling the inheriting part's factor toward the teacher's, the
    exploration loss (the negative of the same distance) pushing the exploring part's
    away from it. The paper's d is the FT distance (`factor_transfer_loss`, p = 1); its
    variants IE-AT and IE-OD swap in those methods' distances. The exploration term is
    only stable if d is bounded above, as the FT, AT and normalised partial-L2 distances
    are (all compare unit-norm vectors).

    Args:
        inherit_factor: factor of the student's inheriting channels, F_inh.
        explore_factor: factor of the student's exploring channels, F_exp.
        teacher_factor: the teacher's factor F_T (gradients stopped by the caller).
        distance: d(student, teacher) -> scalar.
        inheritance_weight: lambda_inh.
        exploration_weight: lambda_exp.

    Returns:
        Scalar loss (may be negative).
    """
    return (inheritance_weight * distance(inherit_factor, teacher_factor)
            - exploration_weight * distance(explore_factor, teacher_factor))


def attention_distance(student: Array, teacher: Array) -> Array:
    r"""AT's distance (`losses.core.attention_transfer_loss`, p = 2) between NHWC maps.

    Each example is first divided by its largest magnitude (a constant for the gradient):
    the normalised attention map does not change, but its squares can no longer overflow,
    so the distance stays finite (and bounded by 4 / (H*W)) for any activations.
    """
    def rescale(x: Array) -> Array:
        scale = jnp.max(jnp.abs(x), axis=(1, 2, 3), keepdims=True)
        return x / jax.lax.stop_gradient(jnp.where(scale > 0, scale, 1.0))
    return attention_transfer_loss(rescale(student), rescale(teacher))


# The distances IE-KD's variants measure between factors, by config name: the paper's FT
# distance, AT's attention-map distance, and OD's partial L2 (normalised to be bounded).
IE_DISTANCES: dict[str, Callable[[Array, Array], Array]] = {
    "ft": factor_transfer_loss,
    "at": attention_distance,
    "od": normalized_partial_l2_loss,
}
