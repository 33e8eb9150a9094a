"""Losses of the transfer family: VID's comparisons beyond the main table, as pure functions.

LwF's soft old-task targets, NST's MMD between neuron-selectivity patterns, FSP matrices, KD-SVD's
singular-vector graphs and AB's activation-boundary hinge. Every function takes and returns `jnp`
arrays (feature maps NHWC, logits [B, K]) and holds no parameters; the learned parts (LwF's
old-task classifier, AB's connector, adapters) are in `vid_jax.heads.transfer`. (VID-LP needs no
new loss: it is `core.vid_nll` through `heads.VIDHead`.)

References:
    LwF: Li, Hoiem. "Learning without Forgetting". ECCV 2016; TPAMI 2017.
    NST: Huang, Wang. "Like What You Like: Knowledge Distill via Neuron Selectivity
        Transfer". arXiv:1707.01219, 2017.
    FSP: Yim, Joo, Bae, Kim. "A Gift from Knowledge Distillation: Fast Optimization, Network
        Minimization and Transfer Learning". CVPR 2017.
    KD-SVD: Lee, Kim, Song. "Self-supervised Knowledge Distillation Using Singular Value
        Decomposition". ECCV 2018.
    AB: Heo, Lee, Yun, Choi. "Knowledge Transfer via Distillation of Activation Boundaries
        Formed by Hidden Neurons". AAAI 2019.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from vid_jax.losses.core import kd_loss, match_spatial

Array = jax.Array

# Below this squared norm a map counts as all-zero (its direction is undefined).
_TINY_SQUARED_NORM = 1e-30


# ---------------------------------------------------------------------------------------------
# LwF

def lwf_loss(old_task_logits: Array, teacher_logits: Array, temperature: float = 2.0) -> Array:
    r"""Learning without Forgetting's old-task loss (Li & Hoiem, eq. 2), less a constant.

    The paper's loss is the cross-entropy of the softened outputs,

        L_old = - mean_b sum_k y'_k log yhat'_k,
        y'    = softmax(z_t / T)      (the old model's recorded responses, softened),
        yhat' = softmax(z_o / T)      (the new model's old-task head, softened),

    with T = 2 and weight lambda_o = 1, and no T^2 factor (unlike Hinton's KD). This returns
    L_old - mean_b H(y'), i.e. KL(y' || yhat') = `kd_loss(z_o, z_t, T) / T^2`: the teacher's
    entropy is a constant of the student, so the gradients are the paper's, and the value is
    0 when the head matches the teacher (so its progress shows on its own).

    Args:
        old_task_logits: [B, K_old] outputs of the student's extra old-task head z_o.
        teacher_logits: [B, K_old] the teacher's logits on the same images z_t; K_old need
            not equal the new task's number of classes.
        temperature: T > 0.

    Returns:
        Scalar, averaged over the batch.
    """
    if old_task_logits.shape != teacher_logits.shape:
        raise ValueError(f"lwf_loss needs equal shapes, got old-task logits "
                         f"{old_task_logits.shape} and teacher logits {teacher_logits.shape}.")
    return kd_loss(old_task_logits, teacher_logits, temperature) / temperature**2


# ---------------------------------------------------------------------------------------------
# NST

def neuron_selectivity(features: Array, eps: float = 1e-12) -> Array:
    r"""Each channel's flattened spatial map, l2-normalised: NST's samples (Huang & Wang, sec. 3).

        f^k = vec(F[:, :, k]) / ||vec(F[:, :, k])||_2          (shape [B, C, H*W])

    The paper normalises each sample so that all have the same scale. The norm is clamped
    below at `eps`, so an all-zero channel gives a zero vector with finite gradients.

    Args:
        features: [B, H, W, C] map.
        eps: lower bound on each channel's norm.

    Returns:
        [B, C, H*W].
    """
    b, h, w, c = features.shape
    samples = jnp.swapaxes(features.reshape(b, h * w, c), 1, 2)
    sq_norm = jnp.sum(jnp.square(samples), axis=-1, keepdims=True)
    return samples / jnp.sqrt(jnp.maximum(sq_norm, eps**2))


def polynomial_mmd(x: Array, y: Array, degree: int = 2, offset: float = 0.0) -> Array:
    r"""Per-example squared MMD between two sets of samples, polynomial kernel.

        MMD^2 = 1/C_x^2 sum_{i,i'} k(x_i, x_i') + 1/C_y^2 sum_{j,j'} k(y_j, y_j')
                - 2/(C_x C_y) sum_{i,j} k(x_i, y_j),      k(a, b) = (a^T b + c)^d

    (Huang & Wang, eq. 4 and 6), with the biased (V-statistic) estimate of the paper.

    Args:
        x: [B, C_x, D] samples.
        y: [B, C_y, D] samples; C_y may differ from C_x.
        degree: d.
        offset: c.

    Returns:
        [B] MMD^2 of each example's two sample sets.
    """
    def mean_kernel(a, b):
        return jnp.mean((jnp.einsum("bid,bjd->bij", a, b) + offset) ** degree, axis=(1, 2))
    return mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y)


def nst_loss(student_map: Array, teacher_map: Array, degree: int = 2,
             offset: float = 0.0) -> Array:
    r"""Neuron Selectivity Transfer (Huang & Wang 2017): MMD^2 between channel distributions.

        L_NST = mean_b MMD^2( {f_S^j}_{j <= C_S}, {f_T^i}_{i <= C_T} ),
        f^k = neuron_selectivity(F)^k,  k(a, b) = (a^T b + c)^d  (the paper's choice d=2, c=0).

    The paper's objective is H(y, p_S) + lambda/2 * L_MMD^2 per layer pair; the lambda/2 is the
    caller's weight. Student and teacher maps of different spatial sizes are first
    average-pooled to the smaller one (`match_spatial`), since the samples' dimension is H*W;
    the channel counts may differ. With d=2 and c=0 the value equals
    || 1/C_S sum_j f_S^j f_S^j^T - 1/C_T sum_i f_T^i f_T^i^T ||_F^2, so it is >= 0,
    invariant to permutations of either's channels and to each channel's positive scale.

    Args:
        student_map: [B, H_s, W_s, C_s].
        teacher_map: [B, H_t, W_t, C_t].
        degree: d of the polynomial kernel.
        offset: c of the polynomial kernel.

    Returns:
        Scalar, averaged over the batch.
    """
    student_map, teacher_map = match_spatial(student_map, teacher_map)
    return jnp.mean(polynomial_mmd(neuron_selectivity(student_map),
                                   neuron_selectivity(teacher_map), degree, offset))


# ---------------------------------------------------------------------------------------------
# FSP

def fsp_matrix(first: Array, second: Array) -> Array:
    r"""Flow of solution procedure matrix (Yim et al., CVPR 2017, eq. 1).

        G_{i,j} = sum_{h,w} F1_{h,w,i} F2_{h,w,j} / (h * w)        (shape [B, C1, C2])

    The paper's two layers share their spatial size; when they do not, the larger map is
    average-pooled to the smaller one (`match_spatial`), as public implementations do.

    Args:
        first: [B, H1, W1, C1], the earlier layer.
        second: [B, H2, W2, C2], the later layer.

    Returns:
        [B, C1, C2].
    """
    first, second = match_spatial(first, second)
    h, w = first.shape[1:3]
    return jnp.einsum("bhwi,bhwj->bij", first, second) / (h * w)


def fsp_loss(student_maps: Sequence[Array], teacher_maps: Sequence[Array]) -> Array:
    r"""FSP loss over consecutive layer pairs (Yim et al., eq. 2).

        L_FSP = 1/N sum_x sum_{i=1}^{n} lambda_i || G_i^T(x) - G_i^S(x) ||_2^2,
        G_i = fsp_matrix(layer_i, layer_{i+1}),

    with equal lambda_i (the paper's choice; lambda is the caller's weight here): the squared
    Frobenius norm of each pair's difference, averaged over the batch, summed over pairs.
    RepDistiller instead averages over the matrix entries (a factor 1/(C_i C_{i+1}) per pair).

    Args:
        student_maps: the student's layers, in order: [B, H_l, W_l, C_l] each.
        teacher_maps: the teacher's, one per student layer, with the same channel counts
            (the paper's requirement; `heads.transfer.Connector` can adapt the student's).

    Returns:
        Scalar.

    Raises:
        ValueError: fewer than two layers, or a layer whose channels differ between student
            and teacher.
    """
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(f"fsp_loss needs the same number (>= 2) of student and teacher layers, "
                         f"got {len(student_maps)} and {len(teacher_maps)}.")
    for i, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(
                f"FSP needs equal student and teacher channels at each layer (Yim et al.); layer "
                f"{i} has {s.shape[-1]} (student) and {t.shape[-1]} (teacher). Adapt the student "
                "layers with a 1x1 convolution first (the fsp method's adapt=True).")
    total = jnp.zeros((), jnp.float32)
    for i in range(len(student_maps) - 1):
        g_s = fsp_matrix(student_maps[i], student_maps[i + 1])
        g_t = fsp_matrix(teacher_maps[i], teacher_maps[i + 1])
        total = total + jnp.mean(jnp.sum(jnp.square(g_t - g_s), axis=(1, 2)))
    return total


# ---------------------------------------------------------------------------------------------
# KD-SVD

def _eigh(matrix: Array) -> tuple[Array, Array]:
    """`jnp.linalg.eigh`, one matrix at a time on CPU.

    jaxlib's CPU eigh runs a batch of matrices as tasks on XLA's intra-op thread pool and
    blocks until they finish; with more (simulated) CPU devices than pool threads, the other
    devices can hold every thread while waiting in a collective of the same step, and the
    step deadlocks. A batch of one runs inline. Other backends take the batched solver.
    """
    def batched(m):
        w, v = jnp.linalg.eigh(m)
        return w, v

    def one_at_a_time(m):
        w, v = jax.lax.map(batched, m.reshape(-1, *m.shape[-2:]))
        return w.reshape(m.shape[:-1]), v.reshape(m.shape)

    if matrix.ndim == 2:
        return batched(matrix)
    return jax.lax.platform_dependent(matrix, cpu=one_at_a_time, default=batched)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def stable_eigh(matrix: Array, gap_eps: float) -> tuple[Array, Array]:
    r"""`jnp.linalg.eigh` (ascending eigenvalues) whose derivative stays finite when
    eigenvalues (nearly) coincide.

    The exact derivative of the eigenvectors, dV = V (F o (V^T dA V)) with
    F_ij = 1 / (w_j - w_i), is infinite for repeated eigenvalues. Here
    F_ij = (w_j - w_i) / ((w_j - w_i)^2 + gap_eps^2): the exact value wherever the gap is
    much larger than gap_eps, and a smooth fade to 0 (bounded by 1 / (2 gap_eps)) where the
    eigenvectors are not identifiable anyway. (KD-SVD's authors clip the same factor in a
    custom SVD gradient instead.) Eigenvalue derivatives, dw = diag(V^T dA V), are exact.

    Args:
        matrix: [..., n, n] symmetric.
        gap_eps: the eigenvalue gap below which the eigenvector derivative is damped; in the
            units of the eigenvalues.

    Returns:
        (eigenvalues [..., n] ascending, eigenvectors [..., n, n] as columns).
    """
    return _eigh(matrix)


@stable_eigh.defjvp
def _stable_eigh_jvp(gap_eps, primals, tangents):
    (matrix,), (d_matrix,) = primals, tangents
    w, v = _eigh(matrix)
    d_matrix = 0.5 * (d_matrix + jnp.swapaxes(d_matrix, -1, -2))
    rotated = jnp.swapaxes(v, -1, -2) @ d_matrix @ v
    gap = w[..., None, :] - w[..., :, None]  # gap[i, j] = w_j - w_i, 0 on the diagonal
    factor = gap / (jnp.square(gap) + gap_eps**2)
    d_w = jnp.diagonal(rotated, axis1=-2, axis2=-1)
    d_v = v @ (factor * rotated)
    return (w, v), (d_w, d_v)


def _canonical_sign(vectors: Array) -> Array:
    """Flips each column so that its entry of largest magnitude is positive (scikit-learn's
    svd_flip convention); a singular vector's sign is otherwise the solver's arbitrary choice."""
    index = jnp.argmax(jnp.abs(vectors), axis=-2, keepdims=True)
    sign = jnp.sign(jnp.take_along_axis(vectors, index, axis=-2))
    return vectors * jax.lax.stop_gradient(jnp.where(sign == 0, 1.0, sign))


def top_singular_vectors(features: Array, num_vectors: int,
                         gap_eps: float = 1e-4) -> tuple[Array, Array]:
    r"""Truncated SVD of each example's map, differentiable and NaN-free (KD-SVD, sec. 3.1).

    Each map is a matrix X of H*W rows (positions) and C columns (channels),
    X = U S V^T; this returns the first `num_vectors` right singular vectors V (one C-vector
    per singular value) and the singular values, of X / ||X||_F: KD-SVD uses only the
    vectors' directions and the singular values' ratios, both unchanged by the map's scale,
    and the normalisation keeps the eigen-solver well scaled for any input magnitude.

    V comes from the eigen-decomposition of the smaller Gram matrix: X^T X (C x C) if
    H*W >= C, else X X^T (H*W x H*W), whose eigenvectors u give v = X^T u / ||X^T u||.
    Through `stable_eigh`, gradients stay finite for repeated singular values, rank-deficient
    and all-zero maps (an all-zero map's vectors are zero, with zero gradient). Each vector is
    given a fixed sign (largest-magnitude entry positive).

    Args:
        features: [B, H, W, C] maps, or [B, N, C] matrices.
        num_vectors: how many singular vectors to keep; at most min(H*W, C) are returned.
        gap_eps: see `stable_eigh` (the Gram matrices here have trace 1).

    Returns:
        (singular values [B, k] in decreasing order, right singular vectors [B, C, k]),
        k = min(num_vectors, H*W, C).
    """
    if features.ndim == 4:
        features = features.reshape(features.shape[0], -1, features.shape[-1])
    if features.ndim != 3:
        raise ValueError(f"top_singular_vectors expects [B, H, W, C] or [B, N, C], got "
                         f"{features.shape}.")
    _, n, c = features.shape
    k = min(num_vectors, n, c)
    sq_norm = jnp.sum(jnp.square(features), axis=(1, 2), keepdims=True)
    nonzero = sq_norm > _TINY_SQUARED_NORM
    # Double where: an all-zero map is swapped for a dummy so no 0/0 reaches the gradient.
    safe = jnp.where(nonzero, features, 1.0)
    x = safe / jnp.sqrt(jnp.sum(jnp.square(safe), axis=(1, 2), keepdims=True))
    if n >= c:
        w, v = stable_eigh(jnp.swapaxes(x, 1, 2) @ x, gap_eps)
        values, vectors = w[:, ::-1][:, :k], v[:, :, ::-1][:, :, :k]
    else:
        w, u = stable_eigh(x @ jnp.swapaxes(x, 1, 2), gap_eps)
        values = w[:, ::-1][:, :k]
        vectors = jnp.swapaxes(x, 1, 2) @ u[:, :, ::-1][:, :, :k]
        # Clamped norm: a (numerically) zero singular value has no defined vector.
        sq = jnp.sum(jnp.square(vectors), axis=1, keepdims=True)
        vectors = vectors / jnp.sqrt(jnp.maximum(sq, gap_eps))
    singular_values = jnp.sqrt(jnp.maximum(values, 0.0) + _TINY_SQUARED_NORM)
    vectors = jnp.where(nonzero, _canonical_sign(vectors), 0.0)
    singular_values = jnp.where(nonzero[:, :, 0], singular_values, 0.0)
    return singular_values, vectors


def align_singular_vectors(student_vectors: Array, teacher_vectors: Array) -> Array:
    r"""KD-SVD's post-processing: match each teacher vector with a student vector and its sign.

    For each teacher vector v_T^i, the student vector with the largest |cosine| is taken
    (the student decomposes one vector more than the teacher, since the order of nearly
    equal singular values may differ), and flipped so that its cosine with v_T^i is >= 0.
    The choice and the sign are constants for the gradient.

    Args:
        student_vectors: [B, C, K_s], K_s >= 1.
        teacher_vectors: [B, C, K_t], same C.

    Returns:
        [B, C, K_t], the student vector aligned with each teacher vector.
    """
    if student_vectors.shape[1] != teacher_vectors.shape[1]:
        raise ValueError(f"Singular vectors of different lengths: student "
                         f"{student_vectors.shape[1]}, teacher {teacher_vectors.shape[1]}.")
    cosine = jnp.einsum("bcs,bct->bst", student_vectors, teacher_vectors)
    index = jax.lax.stop_gradient(jnp.argmax(jnp.abs(cosine), axis=1))  # [B, K_t]
    chosen = jnp.take_along_axis(student_vectors, index[:, None, :], axis=2)
    sign = jnp.sign(jnp.sum(chosen * teacher_vectors, axis=1, keepdims=True))
    return chosen * jax.lax.stop_gradient(jnp.where(sign == 0, 1.0, sign))


def rbf_graph(front: Array, back: Array, scale: float = 8.0) -> Array:
    r"""KD-SVD's correlation between two layers' vectors, element by element (sec. 3.2).

        G_{m,n,l} = exp( -(v^front_{m,l} - v^back_{n,l})^2 / scale )

    Args:
        front: [B, C1, K] vectors of the earlier layer.
        back: [B, C2, K] vectors of the later layer.
        scale: the RBF width (8 in the authors' code).

    Returns:
        [B, C1, C2, K].
    """
    return jnp.exp(-jnp.square(front[:, :, None, :] - back[:, None, :, :]) / scale)


def kd_svd_loss(student_maps: Sequence[Array], teacher_maps: Sequence[Array],
                num_vectors: int = 1, rbf_scale: float = 8.0, gap_eps: float = 1e-4) -> Array:
    r"""KD-SVD (Lee, Kim & Song, ECCV 2018): match the RBF graphs of truncated singular vectors.

    For each sensing point l (a layer; student and teacher with the same channels):
      1. truncated SVD: the teacher's first k right singular vectors V_T and singular values,
         the student's first k + 1 (`top_singular_vectors`);
      2. post-processing: each teacher vector takes the student vector of largest |cosine|,
         sign-aligned (`align_singular_vectors`); both are weighted by the teacher's
         normalised singular values s_T / ||s_T|| (the authors' code), so the more
         informative vectors count more;
      3. between consecutive sensing points, G = rbf_graph(V_l, V_{l+1}) for each network,
    and the loss is sum_l mean_b || G_S,l - G_T,l ||_F^2.

    The authors' code sums over the batch (and the SSKD version halves and scales by
    sqrt(k)); here the mean over examples keeps the weight independent of the batch size.
    Their training also clips the transfer gradient per variable to the task gradient's norm,
    with a sigmoid warm-up: a trainer feature, not part of the loss.

    Args:
        student_maps: sensing points of the student, in order, [B, H_l, W_l, C_l] each.
        teacher_maps: the teacher's, the same channels C_l (spatial sizes may differ: only
            the C-dimensional right singular vectors are compared).
        num_vectors: k, the distilled feature vectors per sensing point.
        rbf_scale: the RBF width.
        gap_eps: see `top_singular_vectors`.

    Returns:
        Scalar.
    """
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(f"kd_svd_loss needs the same number (>= 2) of student and teacher "
                         f"layers, got {len(student_maps)} and {len(teacher_maps)}.")
    student_vectors, teacher_vectors = [], []
    for i, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(
                f"KD-SVD compares singular vectors of equal length: layer {i} has "
                f"{s.shape[-1]} student and {t.shape[-1]} teacher channels. Adapt the student "
                "layers with a 1x1 convolution first (the kd_svd method's adapt=True).")
        t_values, t_vectors = top_singular_vectors(t, num_vectors, gap_eps)
        _, s_vectors = top_singular_vectors(s, num_vectors + 1, gap_eps)
        s_vectors = align_singular_vectors(s_vectors, t_vectors)
        weights = t_values / jnp.sqrt(jnp.maximum(
            jnp.sum(jnp.square(t_values), axis=-1, keepdims=True), _TINY_SQUARED_NORM))
        weights = jax.lax.stop_gradient(weights)[:, None, :]
        student_vectors.append(s_vectors * weights)
        teacher_vectors.append(t_vectors * weights)
    total = jnp.zeros((), jnp.float32)
    for i in range(len(student_maps) - 1):
        k = min(teacher_vectors[i].shape[-1], teacher_vectors[i + 1].shape[-1])
        g_s = rbf_graph(student_vectors[i][..., :k], student_vectors[i + 1][..., :k], rbf_scale)
        g_t = rbf_graph(teacher_vectors[i][..., :k], teacher_vectors[i + 1][..., :k], rbf_scale)
        total = total + jnp.mean(jnp.sum(jnp.square(g_s - g_t), axis=(1, 2, 3)))
    return total


# ---------------------------------------------------------------------------------------------
# AB

def activation_boundary_loss(student_connected: Array, teacher_preact: Array,
                             margin: float = 1.0) -> Array:
    r"""Activation-boundary alternative loss (Heo et al., AAAI 2019, eq. 6).

        L = mean_b || rho(T) o relu(m - r(S))^2 + (1 - rho(T)) o relu(m + r(S))^2 ||_1,
        rho(T) = 1[T > 0],

    i.e. the squared hinge that pushes the connected student pre-activation r(S) above +m
    where the teacher neuron is active and below -m where it is not: a differentiable
    surrogate of the number of neurons whose activation differs. Summed over the neurons of
    an example (the paper's squared l2 norm), averaged over the batch (as the authors' code
    divides by the batch size).

    Args:
        student_connected: r(S), the student's pre-activation map after the connector,
            [B, ..., C] shaped as `teacher_preact`.
        teacher_preact: T, the teacher's pre-ReLU values.
        margin: m > 0.

    Returns:
        Scalar.
    """
    if student_connected.shape != teacher_preact.shape:
        raise ValueError(f"activation_boundary_loss needs equal shapes, got "
                         f"{student_connected.shape} and {teacher_preact.shape}.")
    active = teacher_preact > 0
    hinge = jnp.where(active, jax.nn.relu(margin - student_connected),
                      jax.nn.relu(margin + student_connected))
    per_example = jnp.sum(jnp.square(hinge).reshape(hinge.shape[0], -1), axis=-1)
    return jnp.mean(per_example)
