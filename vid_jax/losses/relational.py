"""Relational distillation losses: pure functions of a batch of student and teacher features.

These losses compare *relations between the examples of a batch* (distances, angles, kernel
similarities, contrasts against other examples) rather than each example's features on their
own, so student and teacher features need not share a dimension. Every function takes
[B, ...] arrays whose leading axis is the batch; anything after it is flattened (an NHWC map
becomes a [B, H*W*C] vector, as the public implementations do with `view(B, -1)`). None of
them stops gradients: the caller passes teacher features that are already constants.

A relational loss of a batch is not the mean of per-example losses, so under data parallelism
the caller gathers the whole batch before calling these (see `vid_jax.methods.relational`).

References:
    RKD: Park, Kim, Lu, Cho. "Relational Knowledge Distillation". CVPR 2019.
    SP: Tung, Mori. "Similarity-Preserving Knowledge Distillation". ICCV 2019.
    CC: Peng, Jin, Liu, Zhou, Wu, Liu, Li, Zhang. "Correlation Congruence for Knowledge
        Distillation". ICCV 2019.
    PKT: Passalis, Tefas. "Learning Deep Representations with Probabilistic Knowledge
        Transfer". ECCV 2018.
    CRD: Tian, Krishnan, Isola. "Contrastive Representation Distillation". ICLR 2020.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def flatten_batch(x: Array) -> Array:
    """[B, ...] -> [B, prod(...)] in float32 (relations are computed in full precision)."""
    return jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """x / max(||x||_2, eps) along `axis`, like `torch.nn.functional.normalize`.

    The norm is clamped below (not added to), so a zero vector maps to zero with a finite
    (zero) gradient instead of 0/0.
    """
    sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps**2))


def _off_diagonal(batch: int) -> Array:
    return ~jnp.eye(batch, dtype=bool)


# ---------------------------------------------------------------------------------------------
# RKD


def pairwise_distances(x: Array, eps: float = 1e-12) -> Array:
    r"""Euclidean distances between the rows of x, with an exactly-zero diagonal.

        D_ij = ||x_i - x_j||_2

    computed from the differences (not from |x_i|^2 + |x_j|^2 - 2 x_i.x_j, which loses
    precision for nearby points). Squared distances are clamped at `eps` before the square root
    (as RKD's code does) so coincident points give finite gradients.

    Args:
        x: [B, ...] features (flattened to [B, D]).
        eps: floor on the squared distance of two different rows.

    Returns:
        [B, B] distances.
    """
    x = flatten_batch(x)
    sq = jnp.sum(jnp.square(x[:, None, :] - x[None, :, :]), axis=-1)
    dist = jnp.sqrt(jnp.maximum(sq, eps))
    return jnp.where(_off_diagonal(x.shape[0]), dist, 0.0)


def rkd_distance_potential(x: Array, eps: float = 1e-12) -> Array:
    r"""RKD's distance-wise potential (Park et al. 2019, eq. 3-4).

        psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu,   mu = mean_{i != j} ||x_i - x_j||_2,

    the distances normalised by their mean over the B(B-1) pairs of distinct examples (the
    diagonal is excluded), so the potential does not depend on the scale of the features.

    Returns:
        [B, B] normalised distances (zero diagonal).
    """
    batch = x.shape[0]
    dist = pairwise_distances(x, eps)
    mean = jnp.sum(dist) / max(batch * (batch - 1), 1)
    return dist / jnp.maximum(mean, math.sqrt(eps))


def rkd_distance_loss(student: Array, teacher: Array, eps: float = 1e-12) -> Array:
    r"""RKD distance-wise loss (Park et al., CVPR 2019, eq. 5).

        L_RKD-D = mean_{i != j} l_1( psi_D(t_i, t_j), psi_D(s_i, s_j) ),

    with l_1 the Huber (smooth-L1) loss of threshold 1. The paper sums over the pairs of
    distinct examples; the authors' code takes the mean over all B^2 entries (the zero
    diagonal included). Here: the mean over the B(B-1) distinct pairs, i.e. the paper's set of
    pairs with the code's averaging, so the paper's weight w_D = 25 (tuned with the mean)
    carries over up to a factor B / (B - 1).

    Args:
        student: [B, ...] student features.
        teacher: [B, ...] teacher features (any dimension).
        eps: see `pairwise_distances`.

    Returns:
        Scalar loss; 0 for a batch of fewer than 2 examples.
    """
    batch = student.shape[0]
    if batch < 2:
        return jnp.zeros((), jnp.float32)
    huber = optax.huber_loss(rkd_distance_potential(student, eps),
                             rkd_distance_potential(teacher, eps), delta=1.0)
    # The diagonal is 0 on both sides and adds nothing; only the count excludes it.
    return jnp.sum(huber) / (batch * (batch - 1))


def rkd_angle_potential(x: Array, eps: float = 1e-12) -> Array:
    r"""RKD's angle-wise potential (Park et al. 2019, eq. 6).

        psi_A(x_i, x_j, x_k) = cos angle(x_i, x_j, x_k) = <e_ij, e_kj>,
        e_ij = (x_i - x_j) / ||x_i - x_j||_2,

    returned with the vertex first: A[j, i, k] = <e_ij, e_kj>. Entries with a repeated index are
    degenerate (a zero or repeated edge) and are masked out by the loss.

    Returns:
        [B, B, B] cosines.
    """
    x = flatten_batch(x)
    edges = l2_normalize(x[None, :, :] - x[:, None, :], eps=math.sqrt(eps))  # [j, i] = x_i - x_j
    return jnp.einsum("jid,jkd->jik", edges, edges)


def rkd_angle_loss(student: Array, teacher: Array, eps: float = 1e-12) -> Array:
    r"""RKD angle-wise loss (Park et al., CVPR 2019, eq. 7).

        L_RKD-A = mean_{i, j, k distinct} l_1( psi_A(t_i, t_j, t_k), psi_A(s_i, s_j, s_k) ).

    As for the distance loss, the paper sums over triplets of distinct examples and the authors'
    code averages over all B^3 entries (degenerate ones included); here the mean over the
    B(B-1)(B-2) distinct triplets.

    Returns:
        Scalar loss; 0 for a batch of fewer than 3 examples.
    """
    batch = student.shape[0]
    if batch < 3:
        return jnp.zeros((), jnp.float32)
    huber = optax.huber_loss(rkd_angle_potential(student, eps),
                             rkd_angle_potential(teacher, eps), delta=1.0)
    distinct = _off_diagonal(batch)
    distinct = distinct[:, :, None] & distinct[:, None, :] & distinct[None, :, :]
    return jnp.sum(jnp.where(distinct, huber, 0.0)) / (batch * (batch - 1) * (batch - 2))


def rkd_loss(student: Array, teacher: Array, distance_weight: float = 25.0,
             angle_weight: float = 50.0, eps: float = 1e-12) -> Array:
    """RKD-DA (Park et al. 2019, eq. 8): w_D * L_RKD-D + w_A * L_RKD-A; w_D = 25, w_A = 50."""
    loss = jnp.zeros((), jnp.float32)
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student, teacher, eps)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student, teacher, eps)
    return loss


# ---------------------------------------------------------------------------------------------
# SP


def sp_similarity(x: Array, eps: float = 1e-12) -> Array:
    r"""Similarity-preserving KD's batch similarity (Tung & Mori 2019, eq. 2-3).

        Q = reshape(A, [B, C*H*W]),   G~ = Q Q^T,   G_[i,:] = G~_[i,:] / ||G~_[i,:]||_2.

    Returns:
        [B, B] row-normalised Gram matrix.
    """
    q = flatten_batch(x)
    return l2_normalize(q @ q.T, axis=-1, eps=eps)


def sp_loss(student: Array, teacher: Array) -> Array:
    r"""Similarity-preserving loss of one layer pair (Tung & Mori, ICCV 2019, eq. 4).

        L_SP = (1 / B^2) || G_t - G_s ||_F^2.

    The paper sums this over the chosen layer pairs (and weights it by gamma); so does the
    caller. Student and teacher maps may differ in every dimension but the batch.

    Args:
        student: [B, ...] student activations (an NHWC map or a vector).
        teacher: [B, ...] teacher activations.

    Returns:
        Scalar loss.
    """
    batch = student.shape[0]
    diff = sp_similarity(teacher) - sp_similarity(student)
    return jnp.sum(jnp.square(diff)) / batch**2


# ---------------------------------------------------------------------------------------------
# CC


def cc_correlation(x: Array, gamma: float = 0.4, order: int = 2, eps: float = 1e-12) -> Array:
    r"""Correlation between instances: a Taylor-expanded Gaussian RBF kernel (Peng et al. 2019).

    For l2-normalised features f, ||f_i - f_j||^2 = 2 - 2 f_i.f_j, so the Gaussian kernel is

        k(f_i, f_j) = exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma f_i.f_j)
                   ~= sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! (f_i.f_j)^p     (eq. 11),

    truncated at order P (the paper's choice: P = 2, gamma = 0.4). The features are
    l2-normalised here, as the expansion assumes.

    Returns:
        [B, B] correlation matrix C.
    """
    f = l2_normalize(flatten_batch(x), eps=eps)
    sim = f @ f.T
    corr = jnp.zeros_like(sim)
    for p in range(order + 1):
        corr = corr + math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * sim**p
    return corr


def cc_loss(student: Array, teacher: Array, gamma: float = 0.4, order: int = 2) -> Array:
    r"""Correlation-congruence loss (Peng et al., ICCV 2019, eq. 6-7).

        L_CC = (1 / B^2) || C_t - C_s ||_F^2,   C = cc_correlation(F).

    The paper squares the norm (as do the public reimplementations, via an MSE);
    torchdistill's `CCLoss` returns the unsquared norm over B^2 instead.

    Returns:
        Scalar loss.
    """
    diff = cc_correlation(teacher, gamma, order) - cc_correlation(student, gamma, order)
    return jnp.mean(jnp.square(diff))


# ---------------------------------------------------------------------------------------------
# PKT


def pkt_conditional_probabilities(x: Array, eps: float = 1e-7) -> Array:
    r"""PKT's conditional distributions under the cosine-similarity kernel (Passalis & Tefas).

        K(a, b) = (a.b / (||a|| ||b||) + 1) / 2               (eq. 11, values in [0, 1])
        p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k),    j != i,   p_{i|i} = 0   (eq. 3-4)

    The paper excludes an example from its own neighbourhood (k != i); the authors' code keeps
    the diagonal (K(x_i, x_i) = 1) in both the normaliser and the KL. Here: the paper.

    Returns:
        [B, B] row-stochastic matrix with a zero diagonal (zero rows when B < 2).
    """
    f = l2_normalize(flatten_batch(x), eps=eps)
    # The clamp removes rounding below -1 in the cosine, which would make K slightly negative.
    kernel = jnp.maximum((f @ f.T + 1.0) / 2.0, 0.0)
    kernel = jnp.where(_off_diagonal(f.shape[0]), kernel, 0.0)
    return kernel / jnp.maximum(jnp.sum(kernel, axis=-1, keepdims=True), eps)


def pkt_loss(student: Array, teacher: Array, eps: float = 1e-7) -> Array:
    r"""Probabilistic knowledge transfer loss (Passalis & Tefas, ECCV 2018, eq. 10).

        L_PKT = mean_i KL(P^t_{.|i} || P^s_{.|i})
              = mean_i sum_{j != i} p^t_{j|i} log( (p^t_{j|i} + eps) / (p^s_{j|i} + eps) ).

    The paper sums the KL over all i; the mean over i (the batch's average KL of one
    neighbourhood distribution) does not grow with the batch. The authors' code averages over
    all B^2 entries instead, i.e. 1/B of this: their weight 30000 at batch 64 is about 470 here.
    `eps` (1e-7, as in the code) keeps the logarithms finite where a probability is 0.

    Args:
        student: [B, ...] student features.
        teacher: [B, ...] teacher features (any dimension).
        eps: stabiliser of the normalisations and logarithms.

    Returns:
        Scalar loss; 0 for a batch of fewer than 2 examples.
    """
    batch = student.shape[0]
    if batch < 2:
        return jnp.zeros((), jnp.float32)
    p_t = pkt_conditional_probabilities(teacher, eps)
    p_s = pkt_conditional_probabilities(student, eps)
    kl = p_t * (jnp.log(p_t + eps) - jnp.log(p_s + eps))
    return jnp.sum(jnp.where(_off_diagonal(batch), kl, 0.0)) / batch


# ---------------------------------------------------------------------------------------------
# CRD


def crd_sample_negatives(key: Array, positives: Array, num_negatives: int,
                         num_examples: int) -> Array:
    """Negatives for each example, uniform over the other examples of the training split.

    Each row holds `num_negatives` indices drawn with replacement, uniformly from
    {0, ..., num_examples - 1} minus the example's own index (drawn from num_examples - 1
    values, then shifted past the positive), as CRD's product-of-marginals negatives.

    Args:
        key: PRNG key.
        positives: [B] int indices of the batch's examples.
        num_negatives: K per example (drawn with replacement; CRD's head asks for at most
            num_examples - 1).
        num_examples: M, the size of the memory.

    Returns:
        [B, K] int32 indices, none equal to its row's positive.
    """
    if num_negatives > 0 and num_examples < 2:
        raise ValueError(f"Cannot draw negatives other than the positive from {num_examples} "
                         "example(s).")
    draws = jax.random.randint(key, (positives.shape[0], num_negatives), 0, num_examples - 1,
                               dtype=jnp.int32)
    return draws + (draws >= positives[:, None].astype(jnp.int32))


def crd_nce_loss(logits: Array, log_normalizer: Array, num_examples: int) -> Array:
    r"""CRD's NCE loss for one anchor embedding against K + 1 memory entries.

    With P = exp(v.m / tau) / Z the unnormalised-then-normalised score of a memory entry m and
    c = K / M (K noise samples from the uniform distribution 1/M), the critic is
    (Tian et al. 2020, eq. 19, with Z as in the authors' code)

        h = P / (P + K / M),

    and the loss (eq. 18, negated, averaged over the batch) is

        L = -mean_b [ log h(positive_b) + sum_{k=1}^{K} log(1 - h(negative_{b,k})) ].

    The logarithms are taken in log space, log h = -softplus(log c - log P) and
    log(1 - h) = -softplus(log P - log c); the authors' code adds eps = 1e-7 to P + c instead.

    Args:
        logits: [B, 1 + K] v.m / tau; column 0 is the positive (the example's own entry).
        log_normalizer: scalar log Z (constant: no gradient flows into it).
        num_examples: M, the size of the training split.

    Returns:
        Scalar loss.
    """
    num_negatives = logits.shape[1] - 1
    log_p = logits - log_normalizer
    if num_negatives == 0:  # h = 1 for the positive: nothing to contrast against
        return jnp.zeros((), jnp.float32)
    log_noise = math.log(num_negatives / num_examples)
    log_h_pos = -jax.nn.softplus(log_noise - log_p[:, 0])
    log_not_h_neg = -jax.nn.softplus(log_p[:, 1:] - log_noise)
    return -jnp.mean(log_h_pos + jnp.sum(log_not_h_neg, axis=-1))


def crd_log_normalizer(logits: Array, num_examples: int) -> Array:
    r"""log Z, the NCE normaliser estimated as in CRD's code: Z = M * mean(exp(logits)).

    The code sets Z once, from the first training batch, and keeps it. Computed in log space
    (log-mean-exp) so large logits do not overflow.
    """
    return (jax.nn.logsumexp(logits) - math.log(logits.size)) + math.log(num_examples)


def momentum_update_rows(memory: Array, indices: Array, values: Array, momentum: float,
                         eps: float = 1e-12) -> Array:
    r"""CRD's memory update: m_i <- normalise(momentum * m_i + (1 - momentum) * v_i).

    Rows not indexed are unchanged. Where an index repeats in the batch, the last occurrence
    wins (explicitly, so the result does not depend on the order a device scatters in).

    Args:
        memory: [M, D] memory bank.
        indices: [N] int rows to update.
        values: [N, D] new embeddings of those rows.
        momentum: weight of the old row.
        eps: norm floor of the l2 normalisation.

    Returns:
        [M, D] updated memory.
    """
    memory = jnp.asarray(memory)
    values = jnp.asarray(values, memory.dtype)
    rows = l2_normalize(momentum * memory[indices] + (1.0 - momentum) * values, eps=eps)
    later = jnp.arange(indices.shape[0])
    repeated_later = jnp.any((indices[:, None] == indices[None, :])
                             & (later[None, :] > later[:, None]), axis=1)
    # Out-of-range targets are dropped by the scatter.
    targets = jnp.where(repeated_later, memory.shape[0], indices)
    return memory.at[targets].set(rows, mode="drop")
