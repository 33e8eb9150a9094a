"""Tests for vid_jax.losses against closed forms and NumPy references."""

import chex
import jax
import numpy as np
from absl.testing import absltest, parameterized

from vid_jax import losses


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------------------------
# NumPy references, written independently of the JAX code (float64).


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_kd(s, t, temp):
    log_ps = _np_log_softmax(s.astype(np.float64) / temp)
    log_pt = _np_log_softmax(t.astype(np.float64) / temp)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
    return temp**2 * kl.mean()


def _np_attention(f, p):
    b = f.shape[0]
    a = (np.abs(f.astype(np.float64)) ** p).mean(-1).reshape(b, -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


class VidNllTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_value(self):
        # Rows are examples, columns channels; variance is per channel.
        target = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
        mean = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
        variance = np.array([1.0, 4.0], np.float32)
        # Elementwise (t - m)^2 / v + log v:
        #   1/1 + 0,  4/4 + log 4,  4/1 + 0,  9/4 + log 4;  times 0.5, mean of 4.
        expected = 0.5 * (1.0 + (1.0 + np.log(4.0)) + 4.0 + (2.25 + np.log(4.0))) / 4
        got = self.variant(losses.vid_nll)(target, mean, variance)
        chex.assert_shape(got, ())
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_on_nhwc(self):
        rng = _rng(1)
        t = _normal(rng, (2, 3, 4, 5))
        m = _normal(rng, (2, 3, 4, 5))
        v = rng.uniform(0.1, 3.0, (5,)).astype(np.float32)
        expected = np.mean(0.5 * ((t - m) ** 2 / v + np.log(v)))
        got = self.variant(losses.vid_nll)(t, m, v)
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_wrt_mean(self):
        rng = _rng(2)
        t = _normal(rng, (2, 3, 3, 4))
        m = _normal(rng, (2, 3, 3, 4))
        v = rng.uniform(0.5, 2.0, (4,)).astype(np.float32)
        grad = self.variant(jax.grad(losses.vid_nll, argnums=1))(t, m, v)
        expected = (m - t) / v / t.size
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8)

    @chex.variants(with_jit=True, without_jit=True)
    def test_optimal_variance_is_per_channel_mse(self):
        rng = _rng(3)
        t = _normal(rng, (4, 3, 3, 3))
        # Channels with very different error scales, so a shared optimum would fail.
        m = t + _normal(rng, (4, 3, 3, 3)) * np.array([0.1, 1.0, 3.0], np.float32)
        v_star = ((t - m) ** 2).mean(axis=(0, 1, 2))
        loss = self.variant(losses.vid_nll)
        grad_v = self.variant(jax.grad(losses.vid_nll, argnums=2))
        # Stationary point: the analytic gradient in v vanishes at the per-channel MSE
        # (scaled by v, since the raw gradient grows like 1/v^2 for small channels)...
        np.testing.assert_allclose(v_star * grad_v(t, m, v_star), 0.0, atol=1e-6)
        # ...but not elsewhere, and it is a minimum, per channel and jointly.
        self.assertGreater(np.abs(v_star * grad_v(t, m, 1.5 * v_star)).min(), 1e-3)
        best = loss(t, m, v_star)
        for factor in (0.9, 1.1):
            self.assertLess(best, loss(t, m, factor * v_star))
            for c in range(3):
                v = v_star.copy()
                v[c] *= factor
                self.assertLess(best, loss(t, m, v))

    @chex.variants(with_jit=True, without_jit=True)
    def test_finite_for_large_activations_and_tiny_variance(self):
        rng = _rng(4)
        t = _normal(rng, (2, 2, 2, 3), scale=1e4)
        m = -t
        v = np.full((3,), 1e-5, np.float32)
        fn = self.variant(jax.value_and_grad(losses.vid_nll, argnums=(1, 2)))
        value, (g_mean, g_var) = fn(t, m, v)
        chex.assert_tree_all_finite((value, g_mean, g_var))


class KdLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_when_logits_equal(self):
        z = _normal(_rng(5), (4, 7), scale=3.0)
        got = self.variant(losses.kd_loss)(z, z, 4.0)
        np.testing.assert_allclose(got, 0.0, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 4.0)
    def test_matches_numpy_kl(self, temp):
        rng = _rng(6)
        s = _normal(rng, (3, 5), scale=2.0)
        t = _normal(rng, (3, 5), scale=2.0)
        got = self.variant(losses.kd_loss)(s, t, temp)
        np.testing.assert_allclose(got, _np_kd(s, t, temp), rtol=1e-5)
        self.assertGreater(got, 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_direction_is_kl_teacher_to_student(self):
        # KL is asymmetric; swapping the arguments must change the value.
        rng = _rng(7)
        s = _normal(rng, (2, 4), scale=3.0)
        t = _normal(rng, (2, 4), scale=3.0)
        fn = self.variant(losses.kd_loss)
        self.assertGreater(abs(fn(s, t, 1.0) - fn(t, s, 1.0)), 1e-3)
        np.testing.assert_allclose(fn(s, t, 1.0), _np_kd(s, t, 1.0), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(50.0, 200.0)
    def test_t_squared_keeps_gradient_scale(self, temp):
        # For large T, d/ds [T^2 KL] -> ((s - mean s) - (t - mean t)) / (K * B)
        # (Hinton et al. 2015, sec. 2.1): independent of T. Without the T^2 the
        # gradient would be ~T^2 times smaller.
        rng = _rng(8)
        b, k = 3, 6
        s = _normal(rng, (b, k))
        t = _normal(rng, (b, k))
        grad = self.variant(jax.grad(losses.kd_loss))(s, t, temp)
        limit = ((s - s.mean(-1, keepdims=True)) - (t - t.mean(-1, keepdims=True))) / (k * b)
        np.testing.assert_allclose(grad, limit, rtol=0.05, atol=2e-3 * np.abs(limit).max())

    @chex.variants(with_jit=True, without_jit=True)
    def test_invariant_to_per_row_shift(self):
        rng = _rng(9)
        s = _normal(rng, (4, 5))
        t = _normal(rng, (4, 5))
        shift_s = _normal(rng, (4, 1), scale=10.0)
        shift_t = _normal(rng, (4, 1), scale=10.0)
        fn = self.variant(losses.kd_loss)
        np.testing.assert_allclose(
            fn(s + shift_s, t + shift_t, 3.0), fn(s, t, 3.0), rtol=1e-4, atol=1e-6
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_large_logits_stable(self):
        s = np.array([[1e4, 0.0, -1e4]], np.float32)
        t = np.array([[-1e4, 0.0, 1e4]], np.float32)
        value, grad = self.variant(jax.value_and_grad(losses.kd_loss))(s, t, 1.0)
        chex.assert_tree_all_finite((value, grad))


class FitNetHintLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        rng = _rng(10)
        s = _normal(rng, (2, 3, 3, 4))
        t = _normal(rng, (2, 3, 3, 4))
        got = self.variant(losses.fitnet_hint_loss)(s, t)
        np.testing.assert_allclose(got, np.mean((s - t) ** 2), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        s = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
        t = np.zeros_like(s)
        got = self.variant(losses.fitnet_hint_loss)(s, t)
        np.testing.assert_allclose(got, (1 + 4 + 9 + 16) / 4, rtol=1e-6)


class AttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_map_numpy_and_unit_norm(self):
        f = _normal(_rng(11), (2, 3, 4, 5))
        got = self.variant(losses.attention_map)(f)
        chex.assert_shape(got, (2, 12))
        np.testing.assert_allclose(got, _np_attention(f, 2.0), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_map_hand_computed(self):
        # One example, 1x2 positions, 2 channels: mean_c f^2 = [(1+9)/2, (4+0)/2] = [5, 2].
        f = np.array([[[[1.0, 3.0], [2.0, 0.0]]]], np.float32)
        got = self.variant(losses.attention_map)(f)
        np.testing.assert_allclose(got, [[5 / np.sqrt(29), 2 / np.sqrt(29)]], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 2.0, 4.0)
    def test_loss_matches_numpy(self, p):
        rng = _rng(12)
        s = _normal(rng, (2, 4, 4, 3))
        t = _normal(rng, (2, 4, 4, 6))  # channel counts may differ
        got = self.variant(lambda a, b: losses.attention_transfer_loss(a, b, p))(s, t)
        expected = np.mean((_np_attention(s, p) - _np_attention(t, p)) ** 2)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        self.assertGreater(got, 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_invariant_to_channel_permutation(self):
        rng = _rng(13)
        s = _normal(rng, (2, 4, 4, 5))
        t = _normal(rng, (2, 4, 4, 5))
        perm = rng.permutation(5)
        fn = self.variant(losses.attention_transfer_loss)
        np.testing.assert_allclose(fn(s[..., perm], t), fn(s, t), rtol=1e-5)
        np.testing.assert_allclose(fn(s, t[..., perm]), fn(s, t), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_for_positively_scaled_teacher(self):
        s = _normal(_rng(14), (2, 4, 4, 3))
        got = self.variant(losses.attention_transfer_loss)(s, 7.5 * s)
        np.testing.assert_allclose(got, 0.0, atol=1e-10)

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_features_finite(self):
        zeros = np.zeros((2, 4, 4, 3), np.float32)
        t = _normal(_rng(15), (2, 4, 4, 3))
        amap = self.variant(losses.attention_map)(zeros)
        np.testing.assert_array_equal(amap, 0.0)
        fn = self.variant(jax.value_and_grad(losses.attention_transfer_loss, argnums=(0, 1)))
        value, grads = fn(zeros, t)
        chex.assert_tree_all_finite((value, grads))
        # A zero map against a unit-norm one: the loss is ||a_t||^2 / (H*W) = 1/16.
        np.testing.assert_allclose(value, 1.0 / 16, rtol=1e-5)
        value, grads = fn(zeros, zeros)
        chex.assert_tree_all_finite((value, grads))
        np.testing.assert_allclose(value, 0.0)

    def test_loss_rejects_mismatched_sizes(self):
        with self.assertRaisesRegex(ValueError, "spatial"):
            losses.attention_transfer_loss(np.ones((1, 4, 4, 2)), np.ones((1, 2, 2, 2)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_transfer_pools_larger_map(self):
        rng = _rng(16)
        s = _normal(rng, (2, 8, 8, 3))
        t = _normal(rng, (2, 4, 4, 5))
        got = self.variant(losses.attention_transfer)(s, t)
        s_pooled = s.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
        expected = np.mean((_np_attention(s_pooled, 2.0) - _np_attention(t, 2.0)) ** 2)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


class PoolingTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_average_pool_values(self):
        x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
        got = self.variant(lambda a: losses.average_pool_to(a, 2, 2))(x)
        expected = np.array([[2.5, 4.5], [10.5, 12.5]], np.float32).reshape(1, 2, 2, 1)
        np.testing.assert_allclose(got, expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_average_pool_non_square_and_channels(self):
        x = _normal(_rng(17), (2, 4, 6, 3))
        got = self.variant(lambda a: losses.average_pool_to(a, 2, 2))(x)
        chex.assert_shape(got, (2, 2, 2, 3))
        # Window (2, 3): check one entry by hand, then the whole array.
        np.testing.assert_allclose(got[1, 0, 1, 2], x[1, 0:2, 3:6, 2].mean(), rtol=1e-6)
        expected = x.reshape(2, 2, 2, 2, 3, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_average_pool_identity(self):
        x = _normal(_rng(18), (1, 3, 3, 2))
        got = self.variant(lambda a: losses.average_pool_to(a, 3, 3))(x)
        np.testing.assert_array_equal(got, x)

    @parameterized.parameters(((4, 4), (3, 3)), ((4, 4), (8, 8)), ((6, 4), (4, 2)))
    def test_average_pool_rejects_non_integer_factor(self, size, target):
        x = np.ones((1, *size, 2), np.float32)
        with self.assertRaisesRegex(ValueError, "integer multiple"):
            losses.average_pool_to(x, *target)

    @chex.variants(with_jit=True, without_jit=True)
    def test_match_spatial_pools_whichever_is_larger(self):
        rng = _rng(19)
        big = _normal(rng, (2, 8, 8, 3))
        small = _normal(rng, (2, 4, 4, 5))
        pooled_big = big.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
        fn = self.variant(losses.match_spatial)

        s, t = fn(big, small)
        np.testing.assert_allclose(s, pooled_big, rtol=1e-6)
        np.testing.assert_array_equal(t, small)

        s, t = fn(small, big)
        np.testing.assert_array_equal(s, small)
        np.testing.assert_allclose(t, pooled_big, rtol=1e-6)

    def test_match_spatial_rejects_non_multiple(self):
        with self.assertRaisesRegex(ValueError, "integer multiple"):
            losses.match_spatial(np.ones((1, 6, 6, 2)), np.ones((1, 4, 4, 2)))


class CrossEntropyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_unmasked_matches_numpy(self):
        rng = _rng(20)
        logits = _normal(rng, (5, 4), scale=2.0)
        labels = rng.integers(0, 4, (5,))
        got = self.variant(losses.cross_entropy)(logits, labels)
        expected = -_np_log_softmax(logits.astype(np.float64))[np.arange(5), labels].mean()
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_examples_do_not_contribute(self):
        rng = _rng(21)
        logits = _normal(rng, (4, 3))
        labels = np.array([0, 2, 1, 1])
        mask = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
        # Garbage in the masked rows: huge logits, and an out-of-range label (whose CE
        # is NaN, so a plain mask * ce would be NaN too).
        bad_logits = logits.copy()
        bad_logits[1] = [1e30, -1e30, 0.0]
        bad_labels = labels.copy()
        bad_labels[3] = 99
        fn = self.variant(losses.cross_entropy)
        kept = self.variant(losses.cross_entropy)(logits[[0, 2]], labels[[0, 2]])
        np.testing.assert_allclose(fn(logits, labels, mask), kept, rtol=1e-6)
        np.testing.assert_allclose(fn(bad_logits, bad_labels, mask), kept, rtol=1e-6)
        np.testing.assert_allclose(fn(logits, labels, mask.astype(bool)), kept, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_all_masked_is_zero(self):
        logits = _normal(_rng(22), (3, 4))
        labels = np.array([0, 1, 2])
        fn = self.variant(jax.value_and_grad(losses.cross_entropy))
        value, grad = fn(logits, labels, np.zeros((3,), np.float32))
        np.testing.assert_array_equal(value, 0.0)
        np.testing.assert_array_equal(grad, 0.0)


if __name__ == "__main__":
    absltest.main()
