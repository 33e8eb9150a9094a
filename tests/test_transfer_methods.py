"""The transfer family: VID-LP, LwF, NST, FSP, KD-SVD, AB (losses, heads, terms, stages)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vid_jax import heads, methods
from vid_jax.heads import transfer as transfer_heads
from vid_jax.losses import transfer as tl
from vid_jax.methods import transfer

GROUPS = ("group1", "group2", "group3")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _np_pool(x, h, w):
    b, hh, ww, c = x.shape
    return x.reshape(b, h, hh // h, w, ww // w, c).mean(axis=(2, 4))


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _wrn_layers(channels, classes, batch=4, size=8, seed=0):
    """Random stand-ins for a WRN's sown layers on `size` x `size` images."""
    rng = _rng(seed)
    layers = {f"group{i + 1}{end}": _normal(rng, (batch, size >> i, size >> i, c))
              for i, c in enumerate(channels) for end in ("", "_preact")}
    layers["features"] = np.abs(_normal(rng, (batch, channels[-1])))
    layers["logits"] = _normal(rng, (batch, classes), scale=2.0)
    return layers


# ---------------------------------------------------------------------------------------------
# NumPy references, written independently of the JAX code (float64).

def _np_nst(s, t):
    """Per-example MMD^2 by explicit sums over channel pairs, then the batch mean."""
    h, w = min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2])
    s, t = _np_pool(s.astype(np.float64), h, w), _np_pool(t.astype(np.float64), h, w)
    total = 0.0
    for b in range(s.shape[0]):
        fs = [s[b, :, :, j].ravel() / np.linalg.norm(s[b, :, :, j]) for j in range(s.shape[-1])]
        ft = [t[b, :, :, i].ravel() / np.linalg.norm(t[b, :, :, i]) for i in range(t.shape[-1])]
        k = lambda a, c: float(a @ c) ** 2
        ss = np.mean([k(a, c) for a in fs for c in fs])
        tt = np.mean([k(a, c) for a in ft for c in ft])
        st = np.mean([k(a, c) for a in fs for c in ft])
        total += ss + tt - 2 * st
    return total / s.shape[0]


def _np_fsp(a, b):
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
    a, b = _np_pool(a.astype(np.float64), h, w), _np_pool(b.astype(np.float64), h, w)
    out = np.zeros((a.shape[0], a.shape[-1], b.shape[-1]))
    for i in range(a.shape[-1]):
        for j in range(b.shape[-1]):
            out[:, i, j] = (a[..., i] * b[..., j]).sum(axis=(1, 2)) / (h * w)
    return out


def _np_svd_vectors(x, k):
    """First k right singular vectors (columns) and singular values of X / ||X||_F, largest
    entry positive."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    _, s, vt = np.linalg.svd(x / np.linalg.norm(x), full_matrices=False)
    v = vt[:k].T
    v = v * np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    return s[:k], v


def _np_kd_svd(student_maps, teacher_maps, k=1, scale=8.0):
    total = 0.0
    batch = student_maps[0].shape[0]
    for b in range(batch):
        vs_layers, vt_layers = [], []
        for s, t in zip(student_maps, teacher_maps):
            sv_t, v_t = _np_svd_vectors(t[b], k)
            _, v_s = _np_svd_vectors(s[b], k + 1)
            chosen = np.stack([v_s[:, np.argmax(np.abs(v_s.T @ v_t[:, i]))]
                               for i in range(v_t.shape[1])], axis=1)
            chosen = chosen * np.sign((chosen * v_t).sum(0))
            weight = sv_t / np.linalg.norm(sv_t)
            vs_layers.append(chosen * weight)
            vt_layers.append(v_t * weight)
        for i in range(len(vs_layers) - 1):
            g = lambda f, c: np.exp(-(f[:, None, :] - c[None, :, :]) ** 2 / scale)
            total += np.sum((g(vs_layers[i], vs_layers[i + 1])
                             - g(vt_layers[i], vt_layers[i + 1])) ** 2)
    return total / batch


# ---------------------------------------------------------------------------------------------
# Losses

class LwFLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_is_paper_cross_entropy_less_teacher_entropy(self):
        rng = _rng(0)
        s, t = _normal(rng, (3, 7), 2.0), _normal(rng, (3, 7), 2.0)
        got = self.variant(tl.lwf_loss)(s, t, 2.0)
        log_ps, log_pt = _np_log_softmax(s / 2.0), _np_log_softmax(t / 2.0)
        cross_entropy = -(np.exp(log_pt) * log_ps).sum(-1).mean()
        entropy = -(np.exp(log_pt) * log_pt).sum(-1).mean()
        np.testing.assert_allclose(got, cross_entropy - entropy, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_has_no_temperature_squared(self):
        # d/dz_o = (softmax(z_o/T) - softmax(z_t/T)) / (T * B): LwF's, without KD's T^2.
        rng = _rng(1)
        s, t = _normal(rng, (2, 5)), _normal(rng, (2, 5))
        grad = self.variant(jax.grad(tl.lwf_loss))(s, t, 2.0)
        expected = (np.exp(_np_log_softmax(s / 2)) - np.exp(_np_log_softmax(t / 2))) / (2 * 2)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
        self.assertAlmostEqual(float(tl.lwf_loss(t, t, 2.0)), 0.0, places=6)

    def test_shapes_must_match_and_large_logits_are_finite(self):
        with self.assertRaisesRegex(ValueError, "lwf_loss needs equal shapes"):
            tl.lwf_loss(jnp.zeros((2, 5)), jnp.zeros((2, 6)))
        s = jnp.array([[1e4, 0.0, -1e4]])
        chex.assert_tree_all_finite(jax.value_and_grad(tl.lwf_loss)(s, -s))


class NSTLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_with_different_channels_and_sizes(self):
        rng = _rng(2)
        s, t = _normal(rng, (2, 4, 4, 3)), _normal(rng, (2, 8, 8, 5))
        got = self.variant(tl.nst_loss)(s, t)
        np.testing.assert_allclose(got, _np_nst(s, t), rtol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_channel_permutation_and_scale_invariance(self):
        rng = _rng(3)
        s, t = _normal(rng, (2, 4, 4, 6)), _normal(rng, (2, 4, 4, 4))
        fn = self.variant(tl.nst_loss)
        scale = rng.uniform(0.1, 10.0, (1, 1, 1, 6)).astype(np.float32)
        np.testing.assert_allclose(fn(s[..., ::-1] * scale, t), fn(s, t), rtol=1e-4)
        self.assertAlmostEqual(float(fn(t, t)), 0.0, places=5)
        self.assertGreater(float(fn(s, t)), 0.0)

    def test_finite_on_zero_and_large_maps(self):
        rng = _rng(4)
        t = _normal(rng, (2, 4, 4, 3))
        value_and_grad = jax.jit(jax.value_and_grad(tl.nst_loss))
        for s in (np.zeros((2, 4, 4, 3), np.float32), _normal(rng, (2, 4, 4, 3), 1e4)):
            chex.assert_tree_all_finite(value_and_grad(s, t))


class FSPLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matrix_matches_numpy_with_pooling(self):
        rng = _rng(5)
        a, b = _normal(rng, (2, 8, 8, 3)), _normal(rng, (2, 4, 4, 5))
        got = self.variant(tl.fsp_matrix)(a, b)
        chex.assert_shape(got, (2, 3, 5))
        np.testing.assert_allclose(got, _np_fsp(a, b), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_is_summed_squared_frobenius_over_pairs(self):
        rng = _rng(6)
        shapes = [(2, 8, 8, 2), (2, 4, 4, 3), (2, 2, 2, 4)]
        s = [_normal(rng, shape) for shape in shapes]
        t = [_normal(rng, shape) for shape in shapes]
        got = self.variant(tl.fsp_loss)(s, t)
        expected = sum(((_np_fsp(s[i], s[i + 1]) - _np_fsp(t[i], t[i + 1])) ** 2)
                       .sum(axis=(1, 2)).mean() for i in range(2))
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_unequal_channels_are_refused_with_the_fix(self):
        rng = _rng(7)
        s = [_normal(rng, (1, 4, 4, 2)), _normal(rng, (1, 2, 2, 4))]
        t = [_normal(rng, (1, 4, 4, 2)), _normal(rng, (1, 2, 2, 8))]
        with self.assertRaisesRegex(ValueError, "layer 1 has 4 .* and 8 .*adapt=True"):
            tl.fsp_loss(s, t)
        with self.assertRaisesRegex(ValueError, ">= 2"):
            tl.fsp_loss(s[:1], t[:1])


class StableEighTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_is_exact_for_separated_eigenvalues(self):
        rng = _rng(8)
        x = _normal(rng, (6, 6))
        a = x @ x.T + np.diag(np.arange(6.0)).astype(np.float32)
        weight = _normal(rng, (6, 6))

        def objective(eigh):
            def f(m):
                w, v = eigh(m)
                top = v[:, -2:]  # sign-invariant functions of the top two vectors
                return jnp.sum((top.T @ weight @ top) * jnp.eye(2)) + jnp.sum(w * w)
            return f

        got = self.variant(jax.grad(objective(lambda m: tl.stable_eigh(m, 1e-6))))(a)
        expected = jax.grad(objective(jnp.linalg.eigh))(a)
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())

    def test_gradient_is_finite_for_repeated_eigenvalues(self):
        ours = jax.grad(lambda m: jnp.sum(tl.stable_eigh(m, 1e-4)[1][:, -1] ** 3))
        plain = jax.grad(lambda m: jnp.sum(jnp.linalg.eigh(m)[1][:, -1] ** 3))
        for a in (jnp.eye(4), jnp.zeros((4, 4))):
            self.assertFalse(bool(jnp.all(jnp.isfinite(plain(a)))))  # why stable_eigh exists
            chex.assert_tree_all_finite(ours(a))


class SingularVectorTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("more_positions", (2, 4, 4, 3)),
                                    ("more_channels", (2, 2, 2, 6)))
    def test_matches_numpy_svd(self, shape):
        x = _normal(_rng(9), shape)
        values, vectors = self.variant(lambda a: tl.top_singular_vectors(a, 3))(x)
        k = min(3, shape[1] * shape[2], shape[3])
        chex.assert_shape(vectors, (shape[0], shape[3], k))
        for b in range(shape[0]):
            s, v = _np_svd_vectors(x[b], k)
            np.testing.assert_allclose(values[b], s, rtol=1e-4)
            np.testing.assert_allclose(vectors[b], v, atol=1e-4)

    @parameterized.named_parameters(("more_positions", (2, 4, 4, 3)),
                                    ("more_channels", (2, 2, 2, 6)))
    def test_gradient_matches_jax_svd(self, shape):
        rng = _rng(10)
        x = _normal(rng, shape)
        weight = _normal(rng, (shape[-1], shape[-1]))

        def objective(decompose):
            def f(a):
                values, vectors = decompose(a)
                quad = jnp.einsum("bci,cd,bdi->bi", vectors, weight, vectors)  # sign-invariant
                return jnp.sum(values * quad)
            return f

        def reference(a):
            a = a.reshape(a.shape[0], -1, a.shape[-1])
            a = a / jnp.linalg.norm(a, axis=(1, 2), keepdims=True)
            _, s, vt = jnp.linalg.svd(a, full_matrices=False)
            return s[:, :2], jnp.swapaxes(vt, 1, 2)[:, :, :2]

        got = jax.jit(jax.grad(objective(lambda a: tl.top_singular_vectors(a, 2, 1e-7))))(x)
        expected = jax.jit(jax.grad(objective(reference)))(x)
        np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())

    @chex.variants(with_jit=True, without_jit=True)
    def test_scale_and_position_order_do_not_matter(self):
        rng = _rng(11)
        x = _normal(rng, (2, 4, 4, 3))
        fn = self.variant(lambda a: tl.top_singular_vectors(a, 2))
        values, vectors = fn(x)
        flat = x.reshape(2, 16, 3)[:, rng.permutation(16)]
        for other in (fn(37.0 * x), fn(flat)):
            np.testing.assert_allclose(other[0], values, rtol=1e-4)
            np.testing.assert_allclose(other[1], vectors, atol=1e-4)

    def test_zero_map_gives_zero_vectors(self):
        values, vectors = tl.top_singular_vectors(jnp.zeros((1, 2, 2, 3)), 2)
        np.testing.assert_array_equal(values, 0.0)
        np.testing.assert_array_equal(vectors, 0.0)

    def test_align_picks_the_closest_student_vector_and_its_sign(self):
        e = np.eye(3, dtype=np.float32)
        student = np.stack([e[1], -e[0], e[2]], axis=1)[None]  # [1, C=3, K_s=3]
        teacher = np.stack([e[0], e[2]], axis=1)[None]
        got = tl.align_singular_vectors(student, teacher)
        np.testing.assert_array_equal(got[0], np.stack([e[0], e[2]], axis=1))

    def test_rbf_graph_hand_computed(self):
        front = np.array([[[0.0], [1.0]]], np.float32)   # [1, C1=2, K=1]
        back = np.array([[[2.0], [0.0], [-1.0]]], np.float32)  # [1, C2=3, K=1]
        got = tl.rbf_graph(front, back, scale=8.0)
        expected = np.exp(-np.array([[4.0, 0.0, 1.0], [1.0, 1.0, 4.0]]) / 8.0)
        np.testing.assert_allclose(got[0, :, :, 0], expected, rtol=1e-6)


class KDSVDLossTest(chex.TestCase):

    @chex.variants(with_jit=True)
    @parameterized.parameters(1, 2)
    def test_matches_numpy(self, k):
        rng = _rng(12)
        shapes = [(2, 4, 4, 3), (2, 2, 2, 5), (2, 2, 2, 4)]
        s = [_normal(rng, shape) for shape in shapes]
        t = [_normal(rng, (2, 2 * shape[1], 2 * shape[2], shape[3])) for shape in shapes]
        got = self.variant(lambda a, b: tl.kd_svd_loss(a, b, num_vectors=k))(s, t)
        np.testing.assert_allclose(got, _np_kd_svd(s, t, k), rtol=1e-3, atol=1e-7)
        self.assertGreater(float(got), 0.0)

    @chex.variants(with_jit=True)
    def test_invariances(self):
        rng = _rng(13)
        shapes = [(2, 4, 4, 3), (2, 2, 2, 5)]
        s = [_normal(rng, shape) for shape in shapes]
        t = [_normal(rng, shape) for shape in shapes]
        fn = self.variant(tl.kd_svd_loss)
        self.assertAlmostEqual(float(fn(t, t)), 0.0, places=6)
        base = fn(s, t)
        # The right singular vectors ignore the maps' scale and the order of positions.
        moved = [3.0 * s[0][:, ::-1, ::-1], 0.5 * jnp.swapaxes(s[1], 1, 2)]
        np.testing.assert_allclose(fn(moved, t), base, rtol=1e-3)

    def test_gradients_are_finite_on_degenerate_maps(self):
        rng = _rng(14)
        t = [_normal(rng, (2, 4, 4, 4)), _normal(rng, (2, 2, 2, 6))]
        rank_one = np.einsum("bp,bc->bpc", _normal(rng, (2, 16)), _normal(rng, (2, 4)))
        equal_singular = np.tile(np.eye(4, dtype=np.float32), (2, 4, 1))  # all sigma equal
        firsts = {
            "random": _normal(rng, (2, 4, 4, 4)),
            "zeros": np.zeros((2, 4, 4, 4), np.float32),
            "constant": np.ones((2, 4, 4, 4), np.float32),
            "rank_one": rank_one.reshape(2, 4, 4, 4),
            "equal_singular_values": equal_singular.reshape(2, 4, 4, 4),
            "duplicated_channels": np.repeat(_normal(rng, (2, 4, 4, 1)), 4, axis=-1),
            "large": _normal(rng, (2, 4, 4, 4), 1e6),
        }
        seconds = {"random": _normal(rng, (2, 2, 2, 6)),
                   "zeros": np.zeros((2, 2, 2, 6), np.float32),
                   "constant": np.ones((2, 2, 2, 6), np.float32)}
        value_and_grad = jax.jit(jax.value_and_grad(lambda a, b: tl.kd_svd_loss([a, b], t, 2),
                                                    argnums=(0, 1)))
        pairs = [(f, "random") for f in firsts] + [("random", s) for s in seconds]
        for first, second in pairs:
            value, grads = value_and_grad(firsts[first], seconds[second])
            self.assertTrue(bool(jnp.isfinite(value)), (first, second))
            chex.assert_tree_all_finite(grads)
        # A degenerate teacher only gives a finite target.
        chex.assert_tree_all_finite(jax.jit(tl.kd_svd_loss)(
            t, [firsts["zeros"], seconds["constant"]]))

    def test_unequal_channels_are_refused_with_the_fix(self):
        s = [jnp.ones((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3))]
        t = [jnp.ones((1, 2, 2, 3)), jnp.ones((1, 2, 2, 6))]
        with self.assertRaisesRegex(ValueError, "layer 1 has 3 student and 6 .*adapt=True"):
            tl.kd_svd_loss(s, t)


class ActivationBoundaryLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        # Teacher active, student 0.5: (1 - 0.5)^2; inactive, 0.5: (1 + 0.5)^2; active and
        # past the margin: 0; T = 0 counts as inactive, student -2 past -m: 0.
        teacher = np.array([[1.0, -1.0, 0.5, 0.0]], np.float32)
        student = np.array([[0.5, 0.5, 2.0, -2.0]], np.float32)
        got = self.variant(tl.activation_boundary_loss)(student, teacher, 1.0)
        np.testing.assert_allclose(got, 0.25 + 2.25, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_and_gradient(self):
        rng = _rng(15)
        s, t = _normal(rng, (3, 2, 2, 4)), _normal(rng, (3, 2, 2, 4))
        fn = self.variant(jax.value_and_grad(tl.activation_boundary_loss))
        value, grad = fn(s, t, 0.5)
        active = t > 0
        hinge = np.where(active, np.maximum(0.5 - s, 0), np.maximum(0.5 + s, 0))
        np.testing.assert_allclose(value, (hinge**2).reshape(3, -1).sum(-1).mean(), rtol=1e-5)
        expected = np.where(active, -2 * np.maximum(0.5 - s, 0), 2 * np.maximum(0.5 + s, 0)) / 3
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
        # A student past the margin on the teacher's side of every boundary has zero loss.
        self.assertEqual(float(fn(np.where(active, 2.0, -2.0), t, 0.5)[0]), 0.0)


# ---------------------------------------------------------------------------------------------
# Heads

class HeadsTest(chex.TestCase):

    def test_connector_shapes_and_batch_stats(self):
        connector = transfer_heads.Connector(8, batch_norm=True)
        x = _normal(_rng(16), (4, 2, 2, 3), 3.0)
        variables = connector.init(jax.random.key(0), x)
        chex.assert_shape(variables["params"]["conv"]["kernel"], (1, 1, 3, 8))
        self.assertNotIn("bias", variables["params"]["conv"])
        y, updated = connector.apply(variables, x, True, mutable=["batch_stats"])
        # Training mode normalises with the batch's statistics and moves the running ones.
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
        self.assertFalse(np.allclose(updated["batch_stats"]["bn"]["mean"], 0.0))
        chex.assert_shape(transfer_heads.Connector(5).apply(
            transfer_heads.Connector(5).init(jax.random.key(0), x[:, 0, 0]), x[:, 0, 0]), (4, 5))

    def test_ab_head_is_the_loss_of_its_connector(self):
        rng = _rng(17)
        s, t = _normal(rng, (2, 8, 8, 3)), _normal(rng, (2, 4, 4, 6))
        head = transfer_heads.ABHead(6, margin=0.5)
        variables = head.init(jax.random.key(0), s, t)
        got = head.apply(variables, s, t)
        connected = transfer_heads.Connector(6, batch_norm=True).apply(
            {k: v["connector"] for k, v in variables.items()}, _np_pool(s, 4, 4))
        np.testing.assert_allclose(
            got, tl.activation_boundary_loss(connected, t, 0.5), rtol=1e-5)

    def test_lwf_head_predicts_the_teachers_classes(self):
        rng = _rng(18)
        features, teacher_logits = _normal(rng, (3, 16)), _normal(rng, (3, 100))
        head = transfer_heads.LwFHead(temperature=2.0)
        variables = head.init(jax.random.key(0), features, teacher_logits)
        chex.assert_shape(variables["params"]["old_task_classifier"]["kernel"], (16, 100))
        logits = features @ variables["params"]["old_task_classifier"]["kernel"]
        logits = logits + variables["params"]["old_task_classifier"]["bias"]
        np.testing.assert_allclose(head.apply(variables, features, teacher_logits),
                                   tl.lwf_loss(logits, teacher_logits, 2.0), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Terms

STUDENT = _wrn_layers((16, 32, 64), classes=10, seed=0)    # WRN-10-1
TEACHER = _wrn_layers((32, 64, 128), classes=100, seed=1)  # WRN-10-2, another task
EXAMPLES = {m.name: m for m in transfer.METHODS}


def _term(name, **changes):
    entry = {**EXAMPLES[name].example, **changes}
    entry.pop("weight")
    return EXAMPLES[name].build(**entry)


def _init(term, ctx):
    # Jitted: one compilation is much faster than running the eigen-solvers op by op.
    variables = jax.jit(lambda rngs, s, t: term.init(rngs, s, t, ctx))(
        {"params": jax.random.key(0), "distill": jax.random.key(1)}, STUDENT, TEACHER)
    return variables.get("params", {}), {k: v for k, v in variables.items() if k != "params"}


class TermsTest(parameterized.TestCase):

    def test_registry(self):
        self.assertEqual(sorted(EXAMPLES), ["ab", "fsp", "kd_svd", "lwf", "nst", "vid_lp"])
        for name in EXAMPLES:
            self.assertIs(methods.METHODS[name], EXAMPLES[name])
        terms = methods.build_terms({name: dict(m.example) for name, m in EXAMPLES.items()})
        self.assertEqual(
            [(s.name, s.epochs, s.trains_student, s.trains_heads)
             for s in methods.stages_of(terms)],
            [("fsp_init", 30, True, None), ("ab_init", 30, True, None)])

    @parameterized.parameters(*sorted(EXAMPLES))
    def test_example_trains_its_params_and_the_student_layers_it_reads(self, name):
        # In its own stage, on WRN-10-1 / WRN-10-2 shaped layers: a finite positive scalar,
        # gradients on exactly the student layers it declares, and a few Adam steps on its
        # parameters and on those layers (as free variables) reduce it.
        term = _term(name)
        ctx = methods.example_context(jnp.zeros((4, 8, 8, 3)))
        params, state = _init(term, ctx)
        self.assertTrue(set(term.teacher_layer_names) <= set(TEACHER))
        variables = {"params": params, "student": STUDENT}
        opt = optax.adam(1e-2)

        def loss_fn(v, state):
            return term.apply({"params": v["params"], **state}, v["student"], TEACHER, ctx,
                              mutable=list(state))

        @jax.jit
        def step(v, opt_state, state):
            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(v, state)
            updates, opt_state = opt.update(grads, opt_state)
            return optax.apply_updates(v, updates), opt_state, new_state, loss, grads

        opt_state, losses = opt.init(variables), []
        for i in range(15):
            variables, opt_state, state, loss, grads = step(variables, opt_state, state)
            losses.append(float(loss))
            if i == 0:
                self.assertEqual(loss.shape, ())
                self.assertTrue(np.isfinite(losses[0]) and losses[0] > 0, losses[0])
                chex.assert_tree_all_finite(grads)
                read = set(term.student_layer_names)
                for layer, g in grads["student"].items():
                    self.assertEqual(bool(jnp.any(g != 0)), layer in read, layer)
        self.assertLess(losses[-1], 0.9 * losses[0], losses)

    @parameterized.parameters("fsp", "ab")
    def test_initialisation_methods_take_part_in_the_main_stage_only_if_asked(self, name):
        term = _term(name)
        (stage,) = EXAMPLES[name].stages
        self.assertFalse(methods.in_main_stage(term))
        self.assertIs(stage.loss(term), term)  # its own stage's loss is the term's
        self.assertTrue(methods.in_main_stage(_term(name, main_stage=True)))
        built = methods.build_terms({name: {}})[0]
        self.assertIsNone(built.loss_module(None))
        self.assertIs(built.loss_module(stage), built.module)

    @parameterized.parameters("vid_lp", "lwf", "nst", "kd_svd")
    def test_one_stage_methods_take_part_in_no_other_stage(self, name):
        (term,) = methods.build_terms({name: {}})
        self.assertIs(term.loss_module(None), term.module)
        for stage in methods.stages_of(methods.build_terms({"ab": {}, "fsp": {}})):
            self.assertIsNone(term.loss_module(stage))

    def test_vid_lp_is_a_one_layer_vid_head_from_features_to_logits(self):
        term = _term("vid_lp")
        ctx = methods.example_context(jnp.zeros((4, 8, 8, 3)))
        params, _ = _init(term, ctx)
        self.assertEqual((term.student_layer_names, term.teacher_layer_names),
                         (("features",), ("logits",)))
        self.assertEqual(params["vid_lp"]["convs_0"]["kernel"].shape, (1, 1, 64, 100))
        expected = heads.VIDHead(100, num_layers=1).apply(
            {"params": params["vid_lp"]}, STUDENT["features"], TEACHER["logits"])
        np.testing.assert_allclose(term.apply({"params": params}, STUDENT, TEACHER, ctx),
                                   expected, rtol=1e-6)

    @parameterized.parameters("fsp", "kd_svd")
    def test_unequal_channels_need_adapt(self, name):
        term = _term(name, adapt=False)
        ctx = methods.example_context(jnp.zeros((4, 8, 8, 3)))
        init = jax.jit(lambda s: term.init(jax.random.key(0), s, TEACHER, ctx))
        with self.assertRaisesRegex(ValueError, "adapt=True"):
            init(STUDENT)
        # With the teacher's widths, no adapter is needed (and none is made).
        same = _wrn_layers((32, 64, 128), classes=10, seed=2)
        variables = init(same)
        self.assertFalse(variables.get("params"))
        value = jax.jit(lambda v, s: term.apply(v, s, TEACHER, ctx))(variables, same)
        self.assertTrue(np.isfinite(float(value)))

    def test_ab_batch_statistics_are_those_of_the_global_batch(self):
        # On 4 devices, each with a quarter of the batch, the connectors' BatchNorm averages
        # its statistics over the data axis, so the loss and the running statistics are those
        # of one device seeing the whole batch.
        term = _term("ab")
        ctx = methods.example_context(jnp.zeros((4, 8, 8, 3)))
        params, state = _init(term, ctx)
        student = _wrn_layers((16, 32, 64), classes=10, batch=8, seed=3)
        teacher = _wrn_layers((32, 64, 128), classes=100, batch=8, seed=4)
        whole = methods.example_context(jnp.zeros((8, 8, 8, 3)))
        expected, expected_state = jax.jit(lambda s, t: term.apply(
            {"params": params, **state}, s, t, whole, mutable=["batch_stats"]))(student, teacher)
        mesh = Mesh(np.array(jax.devices()[:4]), ("data",))

        def per_device(s, t, indices):
            local = methods.Context(
                images=jnp.zeros((2, 8, 8, 3)), labels=jnp.zeros((2,), jnp.int32),
                labelled=jnp.ones((2,), bool), indices=indices, num_examples=8,
                num_classes=10, axis_name="data")
            loss, new_state = term.apply({"params": params, **state}, s, t, local,
                                         mutable=["batch_stats"])
            return jax.lax.pmean(loss, "data"), new_state

        sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data"), P("data")),
                                out_specs=(P(), P()), check_vma=False)
        loss, new_state = jax.jit(sharded)(student, teacher, jnp.arange(8, dtype=jnp.int32))
        np.testing.assert_allclose(loss, expected, rtol=1e-4)
        chex.assert_trees_all_close(new_state, expected_state, rtol=1e-4, atol=1e-6)


if __name__ == "__main__":
    absltest.main()
