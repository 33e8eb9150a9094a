"""Distillation and task losses as pure functions of arrays.

Every function here takes and returns `jnp` arrays; none holds parameters or reads a
config, so each can be tested against a NumPy reference and composed freely inside a
jitted train step. Feature maps are NHWC; logits are [B, K].

References:
    VID: Ahn, Hu, Damianou, Lawrence, Dai. "Variational Information Distillation for
        Knowledge Transfer". CVPR 2019.
    KD: Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network". NIPS 2014
        Deep Learning Workshop (arXiv:1503.02531, 2015).
    FitNets: Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin
        Deep Nets". ICLR 2015.
    AT: Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the
        Performance of Convolutional Neural Networks via Attention Transfer". ICLR 2017.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def vid_nll(target: Array, mean: Array, variance: Array) -> Array:
    r"""Gaussian negative log-likelihood of the teacher under the VID variational model.

    VID (Ahn et al., CVPR 2019, eq. 4) lower-bounds the mutual information between
    teacher and student features with a Gaussian q(t | s) whose mean is mu(s) and whose
    variance sigma_c^2 is shared by all positions of channel c. The term to minimise is

        -log q(t | s) = sum_{c,h,w} [ log sigma_c
                                      + (t_{chw} - mu_{chw}(s))^2 / (2 sigma_c^2) ]
                        + const,

    which, written with the variance v_c = sigma_c^2, is

        sum_{n,h,w,c} 0.5 * ( (t - mu)^2 / v_c + log v_c )

    This function returns the **mean** of that summand over all N*H*W*C elements rather
    than the paper's sum: the two differ by the constant factor 1 / (N*H*W*C), which only
    rescales the weight lambda of the VID term (it matches RepDistiller's convention and
    keeps lambda comparable across layers of different sizes). The constant
    0.5 * log(2 * pi) per element is dropped; it changes neither gradients nor the optimum.

    Args:
        target: teacher features t, any shape whose last axis is the C channels
            (e.g. NHWC maps, or [B, C] vectors).
        mean: predicted mean mu(s), same shape as `target`.
        variance: per-channel variance v, shape [C], broadcast over the last axis.
            Must be positive (callers parameterise it with a softplus plus eps).

    Returns:
        Scalar mean negative log-likelihood.
    """
    nll = 0.5 * (jnp.square(target - mean) / variance + jnp.log(variance))
    return jnp.mean(nll)


def kd_loss(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
    r"""Hinton et al. (2015) knowledge-distillation loss.

        L_KD = T^2 * mean_b KL( softmax(z_t / T) || softmax(z_s / T) )
             = T^2 * mean_b sum_k p_t,k (log p_t,k - log p_s,k).

    The T^2 factor keeps the gradient magnitude roughly constant in T: the gradient of
    the KL with respect to the student logits is (p_s - p_t) / T, and for large T
    p_s - p_t ~ (centred z_s - centred z_t) / (K T), so without the factor the gradient
    of the soft targets would fade like 1/T^2 (Hinton et al., section 2.1).
    Log-probabilities come from `log_softmax` so large logits do not overflow.

    Args:
        student_logits: [B, K] student logits z_s.
        teacher_logits: [B, K] teacher logits z_t (treated as constants by the caller,
            e.g. via `jax.lax.stop_gradient`; this function does not stop gradients).
        temperature: softmax temperature T > 0.

    Returns:
        Scalar loss, averaged over the batch.
    """
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return temperature**2 * jnp.mean(kl)


def fitnet_hint_loss(student_regressed: Array, teacher: Array) -> Array:
    r"""FitNets hint loss (Romero et al., ICLR 2015, eq. 3).

        L_HT = mean( (r(s) - t)^2 ),

    where r(s) is the student's guided layer after the regressor (see
    `heads.FitNetHead`) and t the teacher's hint layer. The paper writes
    0.5 * ||t - r(s)||^2; a mean instead of half a sum only rescales the weight.

    The paper trains the hint in a separate first stage (hint layer, then KD on the
    whole student). Here the same term is also usable as a one-stage loss added to the
    task loss with a weight, as RepDistiller does; which schedule applies is the
    training loop's choice, not this function's.

    Args:
        student_regressed: regressed student features, same shape as `teacher`.
        teacher: teacher hint features.

    Returns:
        Scalar mean squared error over all elements.
    """
    return jnp.mean(jnp.square(student_regressed - teacher))


def attention_map(features: Array, p: float = 2.0, eps: float = 1e-12) -> Array:
    r"""Activation-based spatial attention map (Zagoruyko & Komodakis, ICLR 2017).

        F(A) = mean_c |A_c|^p                  (shape [B, H, W])
        Q(A) = vec(F(A)) / ||vec(F(A))||_2     (shape [B, H*W])

    The paper uses the sum over channels; the mean (as in the authors' code) differs
    by a factor 1/C that the L2 normalisation removes anyway, so channel counts of
    student and teacher need not match.

    The norm is clamped below at `eps` (like `torch.nn.functional.normalize`) rather
    than added to, so normal maps are normalised exactly while an all-zero map gives
    zeros, with finite gradients, instead of 0/0.

    Args:
        features: [B, H, W, C] activations.
        p: exponent applied to |A| before averaging over channels.
        eps: lower bound on the L2 norm of each flattened map.

    Returns:
        [B, H*W] per-example unit-norm attention vectors.
    """
    am = jnp.mean(jnp.abs(features) ** p, axis=-1)
    am = am.reshape(am.shape[0], -1)
    # sqrt(max(., eps^2)) rather than jnp.linalg.norm: the gradient of a plain norm at
    # zero is NaN, and the max cuts the gradient path for (near-)zero maps.
    sq_norm = jnp.sum(jnp.square(am), axis=-1, keepdims=True)
    return am / jnp.sqrt(jnp.maximum(sq_norm, eps**2))


def attention_transfer_loss(
    student_map: Array, teacher_map: Array, p: float = 2.0
) -> Array:
    r"""Attention-transfer loss between two feature maps of equal spatial size.

        L_AT = mean_{b, j} ( Q_s(b, j) - Q_t(b, j) )^2,   Q = attention_map(., p).

    The paper (eq. 2) writes (beta / 2) * || Q_s - Q_t ||_p summed over layer pairs; the
    authors' released code instead takes the mean over batch and positions of the
    squared difference, which is what is computed here (beta is left to the caller's
    weight).

    Args:
        student_map: [B, H, W, C_s] student features.
        teacher_map: [B, H, W, C_t] teacher features; H and W must equal the student's
            (use `attention_transfer`, or `match_spatial` first, to pool).
        p: exponent of the attention map.

    Returns:
        Scalar loss.
    """
    if student_map.shape[1:3] != teacher_map.shape[1:3]:
        raise ValueError(
                "attention_transfer_loss needs equal spatial sizes, got student "
                f"{student_map.shape[1:3]} and teacher {teacher_map.shape[1:3]}; "
                "pool first with match_spatial (or call attention_transfer)."
        )
    diff = attention_map(student_map, p) - attention_map(teacher_map, p)
    return jnp.mean(jnp.square(diff))


def attention_transfer(student_map: Array, teacher_map: Array, p: float = 2.0) -> Array:
    """`match_spatial` followed by `attention_transfer_loss` (AT has no parameters)."""
    student_map, teacher_map = match_spatial(student_map, teacher_map)
    return attention_transfer_loss(student_map, teacher_map, p)


def average_pool_to(x: Array, height: int, width: int) -> Array:
    """Average-pools an NHWC map by integer factors down to (height, width).

    Non-overlapping windows of size (H // height, W // width), i.e. PyTorch's
    `adaptive_avg_pool2d` in the case where it reduces to a plain average pool.

    Args:
        x: [B, H, W, C] map.
        height: target height; H must be an integer multiple of it.
        width: target width; W must be an integer multiple of it.

    Returns:
        [B, height, width, C] map.

    Raises:
        ValueError: if the input is not rank 4 or a target size does not divide the
            input size.
    """
    if x.ndim != 4:
        raise ValueError(f"average_pool_to expects an NHWC map, got shape {x.shape}.")
    b, h, w, c = x.shape
    if height <= 0 or width <= 0 or h % height or w % width:
        raise ValueError(
                f"Cannot average-pool a {h}x{w} map to {height}x{width}: the input size "
                "must be an integer multiple of the target size."
        )
    fh, fw = h // height, w // width
    if fh == 1 and fw == 1:
        return x
    return x.reshape(b, height, fh, width, fw, c).mean(axis=(2, 4))


def match_spatial(student_map: Array, teacher_map: Array) -> tuple[Array, Array]:
    """Pools whichever map is larger so student and teacher share (H, W).

    Each spatial axis is reduced to the smaller of the two sizes (as RepDistiller's VID
    loss does with adaptive average pooling); maps that already match pass through.

    Args:
        student_map: [B, H_s, W_s, C_s].
        teacher_map: [B, H_t, W_t, C_t].

    Returns:
        (student, teacher), both with spatial size (min(H_s, H_t), min(W_s, W_t)).

    Raises:
        ValueError: if a larger size is not an integer multiple of the smaller one.
    """
    h = min(student_map.shape[1], teacher_map.shape[1])
    w = min(student_map.shape[2], teacher_map.shape[2])
    return average_pool_to(student_map, h, w), average_pool_to(teacher_map, h, w)


def cross_entropy(logits: Array, labels: Array, mask: Array | None = None,
                  axis_name: str | None = None) -> Array:
    """Mean softmax cross-entropy with integer labels, over the whole (masked) batch.

        L = sum_b m_b * CE(z_b, y_b) / max(sum_b m_b, 1)

    With `mask=None` every example has weight 1 (a plain mean). The mask drops unlabelled
    images (Table 1b) or the padding of a fixed-size last batch; the max(., 1) gives 0 rather
    than NaN when every example is masked.

    Data-parallel: inside `shard_map` over the mesh axis `axis_name`, where each of the D
    devices holds a slice of the batch, the sums over b run over the whole batch: device d
    returns D * sum_{b in d} m_b CE_b / max(sum_b m_b, 1), whose mean over devices (what the
    trainer takes of every loss) is L of the whole batch, however unevenly the kept examples
    fall across devices. A per-device normalisation would weight a device's few labelled
    images as much as another's many.

    Args:
        logits: [B, K] logits.
        labels: [B] integer class indices.
        mask: optional [B] float or bool weights (1 = keep, 0 = drop).
        axis_name: the data-parallel mesh axis, or None outside one.

    Returns:
        Scalar loss.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if mask is None:
        mask = jnp.ones_like(ce)
    mask = mask.astype(ce.dtype)
    # where, not just a product: padded rows may carry invalid labels whose CE is not
    # finite, and 0 * inf would still be NaN.
    total = jnp.sum(mask * jnp.where(mask != 0, ce, 0.0))
    count, devices = jnp.sum(mask), 1
    if axis_name is not None:
        count, devices = jax.lax.psum(count, axis_name), jax.lax.psum(1, axis_name)
    return total * devices / jnp.maximum(count, 1.0)
