"""Tests for the parameterised distillation heads in vid_jax.heads."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from vid_jax import heads, losses
from vid_jax.heads.pointwise import PointwiseConv


def _normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _pool2(x):
    """2x2 average pool of an NHWC NumPy array, written independently of the library."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _linear_teacher(rng, student, c_t):
    """Teacher features that are a fixed linear (1x1) map of the student's."""
    w = _normal(rng, (student.shape[-1], c_t), scale=1.0 / np.sqrt(student.shape[-1]))
    return student @ w


def _matrix(params, conv):
    """A PointwiseConv's [1, 1, C_in, C_out] kernel as a NumPy [C_in, C_out] matrix."""
    return np.asarray(params[conv]["kernel"])[0, 0]


def _sgd_losses(head, variables, student, teacher, steps, lr):
    """Loss before and after `steps` plain SGD steps, and the trained variables."""
    opt = optax.sgd(lr)
    params = variables["params"]
    opt_state = opt.init(params)

    def loss_fn(p):
        return head.apply({"params": p}, student, teacher)

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    first = None
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        first = loss if first is None else first
    return float(first), float(loss_fn(params)), {"params": params}



def _assert_sgd_fits_linear_teacher(test, kwargs, steps, loss_drop):
    """SGD on a VIDHead(**kwargs) lowers its loss by `loss_drop`, and not only through the
    variance: the mean fits a teacher that is linear in the student better."""
    head = heads.VIDHead(teacher_channels=4, **kwargs)
    s = _normal(test.rng, (8, 4, 4, 3))
    t = _linear_teacher(test.rng, s, 4)
    variables = head.init(test.key, s, t)
    first, last, trained = _sgd_losses(head, variables, s, t, steps=steps, lr=0.5)
    test.assertLess(last, first - loss_drop)
    mean_and_var = heads.VIDHead.mean_and_variance
    mse_before = np.mean((head.apply(variables, s, method=mean_and_var)[0] - t) ** 2)
    mse_after = np.mean((head.apply(trained, s, method=mean_and_var)[0] - t) ** 2)
    test.assertLess(mse_after, 0.9 * mse_before)

class PointwiseConvTest(chex.TestCase):

    @parameterized.parameters(True, False)
    def test_same_params_and_outputs_as_a_1x1_conv(self, use_bias):
        x = _normal(np.random.default_rng(30), (2, 5, 3, 4))
        key = jax.random.PRNGKey(3)
        pointwise = PointwiseConv(6, use_bias=use_bias)
        conv = nn.Conv(6, (1, 1), use_bias=use_bias)
        variables = pointwise.init(key, x)
        # Same names, shapes and initial values: either module loads the other's variables.
        chex.assert_trees_all_equal(variables, conv.init(key, x))
        variables = jax.tree.map(lambda v: v + 0.1 * jnp.arange(v.size).reshape(v.shape),
                                 variables)
        chex.assert_trees_all_close(pointwise.apply(variables, x), conv.apply(variables, x),
                                    rtol=1e-5, atol=1e-5)

    def test_vector_input_is_dense_layer(self):
        x = _normal(np.random.default_rng(31), (3, 4))
        variables = PointwiseConv(2).init(jax.random.PRNGKey(0), x)
        kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
        out = PointwiseConv(2).apply(variables, x)
        chex.assert_shape(out, (3, 2))
        np.testing.assert_allclose(out, x @ np.asarray(kernel)[0, 0] + bias, rtol=1e-5)

    def test_gradients_match_a_1x1_conv(self):
        x = _normal(np.random.default_rng(32), (2, 4, 4, 3))
        pointwise, conv = PointwiseConv(5), nn.Conv(5, (1, 1))
        variables = conv.init(jax.random.PRNGKey(1), x)

        def grads(module):
            return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))),
                            argnums=(0, 1))(variables, x)

        chex.assert_trees_all_close(grads(pointwise), grads(conv), rtol=1e-4, atol=1e-5)


class VIDHeadTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(0)
        self.key = jax.random.key(0)

    @parameterized.named_parameters(
        ("default", {}, [(1, 1, 3, 6), (1, 1, 6, 6), (1, 1, 6, 6)]),
        ("hidden", {"hidden_channels": 16}, [(1, 1, 3, 16), (1, 1, 16, 16), (1, 1, 16, 6)]),
        ("one_layer", {"num_layers": 1}, [(1, 1, 3, 6)]),
        ("two_layers", {"num_layers": 2, "hidden_channels": 4}, [(1, 1, 3, 4), (1, 1, 4, 6)]),
    )
    def test_param_shapes(self, kwargs, kernel_shapes):
        head = heads.VIDHead(teacher_channels=6, **kwargs)
        s = np.ones((2, 4, 4, 3), np.float32)
        t = np.ones((2, 4, 4, 6), np.float32)
        params = head.init(self.key, s, t)["params"]
        chex.assert_shape(params["alpha"], (6,))
        conv_names = sorted(k for k in params if k != "alpha")
        self.assertLen(conv_names, len(kernel_shapes))
        for name, shape in zip(conv_names, kernel_shapes):
            chex.assert_shape(params[name]["kernel"], shape)
            chex.assert_shape(params[name]["bias"], shape[-1:])

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(5.0, 0.5)
    def test_initial_variance(self, init_variance):
        head = heads.VIDHead(teacher_channels=4, init_variance=init_variance)
        s = _normal(self.rng, (2, 4, 4, 3))
        variables = head.init(self.key, s, _normal(self.rng, (2, 4, 4, 4)))
        mean, variance = self.variant(
            lambda v, x: head.apply(v, x, method=heads.VIDHead.mean_and_variance)
        )(variables, s)
        chex.assert_shape(mean, (2, 4, 4, 4))
        chex.assert_shape(variance, (4,))
        np.testing.assert_allclose(variance, init_variance, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_is_vid_nll_of_mean_and_variance(self):
        head = heads.VIDHead(teacher_channels=5)
        s = _normal(self.rng, (2, 4, 4, 3))
        t = _normal(self.rng, (2, 4, 4, 5))
        variables = head.init(self.key, s, t)
        loss = self.variant(head.apply)(variables, s, t)
        chex.assert_shape(loss, ())
        mean, variance = head.apply(variables, s, method=heads.VIDHead.mean_and_variance)
        expected = np.mean(0.5 * ((t - mean) ** 2 / variance + np.log(variance)))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mean_is_relu_mlp_without_final_relu(self):
        # Hand-evaluate mu with the initialised kernels: ReLU between layers only, so
        # the output can be negative.
        head = heads.VIDHead(teacher_channels=4, hidden_channels=8)
        s = _normal(self.rng, (2, 3, 3, 3))
        variables = head.init(self.key, s, _normal(self.rng, (2, 3, 3, 4)))
        p = variables["params"]
        x = s
        for i in range(3):
            if i > 0:
                x = np.maximum(x, 0.0)
            layer = p[f"convs_{i}"]
            x = x @ np.asarray(layer["kernel"])[0, 0] + np.asarray(layer["bias"])
        mean, _ = self.variant(
            lambda v, x: head.apply(v, x, method=heads.VIDHead.mean_and_variance)
        )(variables, s)
        np.testing.assert_allclose(mean, x, rtol=1e-5, atol=1e-6)
        self.assertLess(float(np.min(mean)), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_reaches_every_param(self):
        head = heads.VIDHead(teacher_channels=4)
        s = _normal(self.rng, (2, 4, 4, 3))
        t = _linear_teacher(self.rng, s, 4)
        params = head.init(self.key, s, t)["params"]
        grads = self.variant(
            jax.grad(lambda p, a, b: head.apply({"params": p}, a, b))
        )(params, s, t)
        chex.assert_trees_all_equal_shapes(grads, params)
        chex.assert_tree_all_finite(grads)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            self.assertGreater(float(jnp.abs(g).max()), 0.0, msg=str(path))

    @parameterized.named_parameters(
        ("default", {}),
        ("one_layer", {"num_layers": 1}),
        ("hidden", {"hidden_channels": 12}),
    )
    def test_loss_decreases_under_sgd(self, kwargs):
        _assert_sgd_fits_linear_teacher(self, kwargs, steps=30, loss_drop=0.05)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pools_larger_student(self):
        head = heads.VIDHead(teacher_channels=4)
        s = _normal(self.rng, (2, 8, 8, 3))
        t = _normal(self.rng, (2, 4, 4, 4))
        variables = head.init(self.key, s, t)
        got = self.variant(head.apply)(variables, s, t)
        expected = head.apply(variables, _pool2(s), t)
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pools_larger_teacher(self):
        head = heads.VIDHead(teacher_channels=4)
        s = _normal(self.rng, (2, 4, 4, 3))
        t = _normal(self.rng, (2, 8, 8, 4))
        variables = head.init(self.key, s, t)
        got = self.variant(head.apply)(variables, s, t)
        expected = head.apply(variables, s, _pool2(t))
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vector_inputs_match_1x1_maps(self):
        # [B, D] inputs (VID-LP) use the same parameters as 1x1 maps.
        head = heads.VIDHead(teacher_channels=5)
        s = _normal(self.rng, (3, 7))
        t = _normal(self.rng, (3, 5))
        variables = head.init(self.key, s, t)
        got = self.variant(head.apply)(variables, s, t)
        as_maps = head.apply(variables, s[:, None, None, :], t[:, None, None, :])
        np.testing.assert_allclose(got, as_maps, rtol=1e-6)
        mean, _ = head.apply(variables, s, method=heads.VIDHead.mean_and_variance)
        chex.assert_shape(mean, (3, 5))

    @chex.variants(with_jit=True, without_jit=True)
    def test_finite_for_large_activations(self):
        head = heads.VIDHead(teacher_channels=4, init_variance=1e-3, eps=1e-6)
        s = _normal(self.rng, (2, 4, 4, 3), scale=1e4)
        t = _normal(self.rng, (2, 4, 4, 4), scale=1e4)
        params = head.init(self.key, s, t)["params"]
        value, grads = self.variant(
            jax.value_and_grad(lambda p, a, b: head.apply({"params": p}, a, b))
        )(params, s, t)
        chex.assert_tree_all_finite((value, grads))

    def test_rejects_bad_config_and_inputs(self):
        s = np.ones((2, 4, 4, 3), np.float32)
        t = np.ones((2, 4, 4, 4), np.float32)
        with self.assertRaisesRegex(ValueError, "num_layers"):
            heads.VIDHead(teacher_channels=4, num_layers=0).init(self.key, s, t)
        with self.assertRaisesRegex(ValueError, "init_variance"):
            heads.VIDHead(teacher_channels=4, init_variance=0.0).init(self.key, s, t)
        with self.assertRaisesRegex(ValueError, "rank"):
            heads.VIDHead(teacher_channels=4).init(self.key, s, t[:, 0, 0, :])


class VIDHeadVariantsTest(chex.TestCase):
    """The mean networks and variance parameterisations of the implementations of VID."""

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(7)
        self.key = jax.random.key(7)

    @parameterized.named_parameters(
        # (conv name, kernel shape, has bias) for C_s = 3, C_t = 6.
        ("paper", "paper", [((1, 1, 3, 6), True), ((1, 1, 6, 6), True), ((1, 1, 6, 6), True)]),
        ("repdistiller", "repdistiller",
         [((1, 1, 3, 6), False), ((1, 1, 6, 6), False), ((1, 1, 6, 6), False)]),
        ("authors", "authors", [((1, 1, 3, 6), False), ((1, 1, 6, 6), False)]),
        ("workshop", "workshop", [((1, 1, 3, 6), False), ((1, 1, 6, 6), True)]),
    )
    def test_param_shapes(self, mean_network, convs):
        head = heads.VIDHead(teacher_channels=6, mean_network=mean_network)
        s, t = np.ones((2, 4, 4, 3), np.float32), np.ones((2, 4, 4, 6), np.float32)
        variables = head.init(self.key, s, t)
        params = variables["params"]
        chex.assert_shape(params["alpha"], (6,))
        self.assertEqual(sorted(k for k in params if k.startswith("convs")),
                         [f"convs_{i}" for i in range(len(convs))])
        for i, (shape, has_bias) in enumerate(convs):
            chex.assert_shape(params[f"convs_{i}"]["kernel"], shape)
            self.assertEqual("bias" in params[f"convs_{i}"], has_bias)
        if mean_network == "workshop":
            chex.assert_shape((params["bns_0"]["scale"], variables["batch_stats"]["bns_0"]["mean"],
                               variables["batch_stats"]["bns_0"]["var"]), [(6,)] * 3)
        else:
            self.assertEqual(set(variables), {"params"})
            self.assertNotIn("bns_0", params)

    def test_num_and_hidden_channels_apply_to_every_network(self):
        s, t = np.ones((2, 4, 4, 3), np.float32), np.ones((2, 4, 4, 6), np.float32)
        params = heads.VIDHead(6, hidden_channels=8, num_layers=3, mean_network="authors").init(
            self.key, s, t)["params"]
        self.assertEqual([params[f"convs_{i}"]["kernel"].shape for i in range(3)],
                         [(1, 1, 3, 8), (1, 1, 8, 8), (1, 1, 8, 6)])

    @parameterized.parameters("repdistiller", "authors")
    def test_pytorch_default_kernels(self, mean_network):
        # U(-1/sqrt(C_in), 1/sqrt(C_in)), PyTorch's nn.Conv2d default (std 1/sqrt(3 C_in)).
        s, t = np.ones((2, 1, 1, 64), np.float32), np.ones((2, 1, 1, 64), np.float32)
        kernel = np.asarray(heads.VIDHead(64, mean_network=mean_network).init(
            self.key, s, t)["params"]["convs_0"]["kernel"])
        self.assertLessEqual(np.abs(kernel).max(), 1 / 8)
        np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(3 * 64), rtol=0.05)

    @chex.variants(with_jit=True, without_jit=True)
    def test_authors_mean_is_linear_in_the_student_map(self):
        head = heads.VIDHead(teacher_channels=4, mean_network="authors")
        s1, s2 = _normal(self.rng, (2, 3, 3, 5)), _normal(self.rng, (2, 3, 3, 5))
        variables = head.init(self.key, s1, _normal(self.rng, (2, 3, 3, 4)))
        mean = self.variant(
            lambda x: head.apply(variables, x, method=heads.VIDHead.mean_and_variance)[0])
        np.testing.assert_allclose(mean(2.0 * s1 - 3.0 * s2), 2.0 * mean(s1) - 3.0 * mean(s2),
                                   rtol=1e-5, atol=1e-5)
        # The product of its two kernels, no bias, nothing between.
        p = variables["params"]
        product = _matrix(p, "convs_0") @ _matrix(p, "convs_1")
        np.testing.assert_allclose(mean(s1), s1 @ product, rtol=1e-5, atol=1e-6)
        # The default is not linear (ReLU between its convolutions).
        paper = heads.VIDHead(teacher_channels=4)
        pv = paper.init(self.key, s1, _normal(self.rng, (2, 3, 3, 4)))
        paper_mean = lambda x: paper.apply(pv, x, method=heads.VIDHead.mean_and_variance)[0]  # noqa: E731
        self.assertFalse(np.allclose(paper_mean(-s1), -paper_mean(s1), atol=1e-3))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(5.0, 0.5)
    def test_authors_variance_starts_at_softplus_of_softplus(self, init_variance):
        head = heads.VIDHead(teacher_channels=4, variance="authors", init_variance=init_variance)
        s = _normal(self.rng, (2, 4, 4, 3))
        variables = head.init(self.key, s, _normal(self.rng, (2, 4, 4, 4)))
        softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
        np.testing.assert_allclose(variables["params"]["alpha"], softplus(init_variance),
                                   rtol=1e-6)
        variance = self.variant(
            lambda v, x: head.apply(v, x, method=heads.VIDHead.mean_and_variance)[1])(variables, s)
        np.testing.assert_allclose(variance, softplus(softplus(init_variance)), rtol=1e-6)
        if init_variance == 5.0:
            np.testing.assert_allclose(variance, 5.0134, atol=1e-4)
        # softplus(alpha), without eps, wherever alpha is.
        alpha = np.array([-30.0, -1.0, 0.0, 3.0], np.float32)
        variance = head.apply({"params": {**variables["params"], "alpha": alpha}}, s,
                              method=heads.VIDHead.mean_and_variance)[1]
        np.testing.assert_allclose(variance, softplus(alpha.astype(np.float64)), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_workshop_mean_is_conv_bn_relu_conv(self):
        head = heads.VIDHead(teacher_channels=4, hidden_channels=6, mean_network="workshop")
        s = _normal(self.rng, (4, 3, 3, 3))
        variables = head.init(self.key, s, _normal(self.rng, (4, 3, 3, 4)))
        p = variables["params"]
        hidden = s @ _matrix(p, "convs_0")
        # Training: statistics of the batch (biased variance, eps 1e-5).
        mu, var = hidden.mean(axis=(0, 1, 2)), hidden.var(axis=(0, 1, 2))
        normed = ((hidden - mu) / np.sqrt(var + 1e-5) * np.asarray(p["bns_0"]["scale"])
                  + np.asarray(p["bns_0"]["bias"]))
        expected = np.maximum(normed, 0.0) @ _matrix(p, "convs_1") + p["convs_1"]["bias"]
        mean, _ = self.variant(lambda v, x: head.apply(
            v, x, True, method=heads.VIDHead.mean_and_variance, mutable=["batch_stats"])[0])(
                variables, s)
        np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-5)

    def test_workshop_batch_stats_update_in_training_only(self):
        head = heads.VIDHead(teacher_channels=4, mean_network="workshop")
        s = _normal(self.rng, (4, 3, 3, 3), scale=3.0) + 1.0
        t = _normal(self.rng, (4, 3, 3, 4))
        variables = head.init(self.key, s, t)
        start = variables["batch_stats"]
        np.testing.assert_allclose(start["bns_0"]["mean"], 0.0)
        np.testing.assert_allclose(start["bns_0"]["var"], 1.0)
        # Training: batch statistics, and the running ones move (momentum 0.9, PyTorch's 0.1).
        train_loss, updated = jax.jit(lambda v: head.apply(v, s, t, True, mutable=["batch_stats"]))(
            variables)
        p = variables["params"]
        hidden = s @ _matrix(p, "convs_0")
        np.testing.assert_allclose(updated["batch_stats"]["bns_0"]["mean"],
                                   0.1 * hidden.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
        # Evaluation: the running statistics, which stay; a different loss than training's.
        eval_loss, same = jax.jit(lambda v: head.apply(v, s, t, False, mutable=["batch_stats"]))(
            variables)
        chex.assert_trees_all_equal(same["batch_stats"], start)
        self.assertGreater(abs(float(train_loss) - float(eval_loss)), 1e-4)
        # Without mutable batch_stats, evaluation needs no collection to be writable.
        np.testing.assert_allclose(head.apply(variables, s, t), eval_loss, rtol=1e-6)

    @parameterized.named_parameters(
        ("authors", dict(mean_network="authors", variance="authors")),
        ("repdistiller", dict(mean_network="repdistiller")),
    )
    def test_loss_decreases_under_sgd(self, kwargs):
        # PyTorch's smaller initial kernels start slower than the default's: more steps.
        _assert_sgd_fits_linear_teacher(self, kwargs, steps=100, loss_drop=0.1)

    def test_unknown_values_name_the_choices(self):
        s, t = np.ones((2, 4, 4, 3), np.float32), np.ones((2, 4, 4, 4), np.float32)
        with self.assertRaisesRegex(
                ValueError, "mean_network='relu' is not one of 'paper', 'repdistiller', "
                            "'authors', 'workshop'"):
            heads.VIDHead(4, mean_network="relu").init(self.key, s, t)
        with self.assertRaisesRegex(
                ValueError, "variance='exp' is not one of 'softplus_eps', 'authors'"):
            heads.VIDHead(4, variance="exp").init(self.key, s, t)
        # The authors' parameterisation has no eps, so any init_variance is allowed.
        heads.VIDHead(4, variance="authors", init_variance=0.0).init(self.key, s, t)


class FitNetHeadTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(1)
        self.key = jax.random.key(1)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1, 3)
    def test_scalar_output_and_hint_value(self, kernel_size):
        head = heads.FitNetHead(teacher_channels=6, kernel_size=kernel_size)
        s = _normal(self.rng, (2, 4, 4, 3))
        t = _normal(self.rng, (2, 4, 4, 6))
        variables = head.init(self.key, s, t)
        kernel = variables["params"]["regressor"]["kernel"]
        chex.assert_shape(kernel, (kernel_size, kernel_size, 3, 6))
        loss = self.variant(head.apply)(variables, s, t)
        chex.assert_shape(loss, ())
        if kernel_size == 1:
            p = variables["params"]["regressor"]
            regressed = s @ np.asarray(p["kernel"])[0, 0] + np.asarray(p["bias"])
            np.testing.assert_allclose(loss, np.mean((regressed - t) ** 2), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pools_larger_student(self):
        head = heads.FitNetHead(teacher_channels=4)
        s = _normal(self.rng, (2, 8, 8, 3))
        t = _normal(self.rng, (2, 4, 4, 4))
        variables = head.init(self.key, s, t)
        got = self.variant(head.apply)(variables, s, t)
        np.testing.assert_allclose(got, head.apply(variables, _pool2(s), t), rtol=1e-6)

    @parameterized.parameters(1, 3)
    def test_loss_decreases_under_sgd(self, kernel_size):
        head = heads.FitNetHead(teacher_channels=4, kernel_size=kernel_size)
        s = _normal(self.rng, (8, 4, 4, 3))
        t = _linear_teacher(self.rng, s, 4)
        variables = head.init(self.key, s, t)
        first, last, _ = _sgd_losses(head, variables, s, t, steps=20, lr=0.1)
        self.assertLess(last, 0.8 * first)


class AttentionTransferHelperTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_helper_equals_pooled_loss(self):
        rng = np.random.default_rng(2)
        s = _normal(rng, (2, 4, 4, 3))
        t = _normal(rng, (2, 8, 8, 5))
        got = self.variant(losses.attention_transfer)(s, t)
        expected = losses.attention_transfer_loss(s, _pool2(t))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


if __name__ == "__main__":
    absltest.main()
