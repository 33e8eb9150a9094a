"""Factor methods (FT, OD, IE-KD and its variants, IE-DML): losses, heads, terms.

The NumPy references are written from the papers' equations, independently of the JAX
code (float64, explicit loops where it keeps them obvious).
"""
import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.sharding import PartitionSpec as P

from vid_jax import methods
from vid_jax.heads import factors as factor_heads
from vid_jax.losses import core as core_losses
from vid_jax.losses import factors as fl
from vid_jax.methods import factors as factor_methods
from vid_jax.methods.base import example_context
from vid_jax.training.prepare import init_term

BY_NAME = {m.name: m for m in factor_methods.METHODS}
WRN_STUDENT = dict(channels=(16, 32, 64))   # WRN-10-1
WRN_TEACHER = dict(channels=(32, 64, 128))  # WRN-10-2
IMAGE = 8
# XLA's RngBitGenerator: the same initialisers, but far quicker to compile than threefry on CPU.
KEY = jax.random.key(0, impl="rbg")


def _normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _wrn_layers(rng, batch, channels, classes=10):
    """Random stand-ins for what a WRN sows on IMAGE x IMAGE inputs."""
    layers = {f"group{i + 1}{end}": _normal(rng, (batch, IMAGE >> i, IMAGE >> i, c))
              for i, c in enumerate(channels) for end in ("", "_preact")}
    layers["logits"] = _normal(rng, (batch, classes))
    return layers


def _context(batch, seed=0, **changes):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(_normal(rng, (batch, IMAGE, IMAGE, 3)))
    labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    return example_context(images, labels, **changes)


def _build(method):
    entry = dict(method.example)
    entry.pop("weight", None)
    return method.build(**entry)


def _jitted(fn, *args, **kwargs):
    """fn(*args, **kwargs) under jit: one compilation instead of one per eager primitive
    (much faster for these conv stacks on CPU). Keyword arguments are static."""
    return jax.jit(lambda *a: fn(*a, **kwargs))(*args)


def _init(term, student, teacher, ctx, method=None):
    """The term's variables; with its registry entry, those of its stages' modules too (as
    the trainer initialises them)."""
    if method is None:
        return _jitted(term.init, {"params": KEY}, student, teacher, ctx)
    return jax.jit(lambda *a: init_term(methods.Term(method.name, 1.0, term, method), KEY, *a))(
        student, teacher, ctx)


def _mesh():
    return jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _state(variables):
    return {k: v for k, v in variables.items() if k != "params"}


# ---------------------------------------------------------------------------------------------
# NumPy references.


def _np_normalize(x):
    f = x.reshape(len(x), -1).astype(np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _np_ft(s, t, p):
    d = _np_normalize(s) - _np_normalize(t)
    return np.mean([np.sum(np.abs(row) ** p) ** (1 / p) for row in d])


def _np_partial_l2(s, t):
    s, t = s.astype(np.float64), t.astype(np.float64)
    total = 0.0
    for si, ti in zip(s.ravel(), t.ravel()):
        if not (si <= ti <= 0):
            total += (ti - si) ** 2
    return total / len(s)


def _np_gaussian_negative_mean(mean, std):
    z = mean / std
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cdf_neg = 0.5 * (1 + math.erf(-z / math.sqrt(2)))
    return mean - std * pdf / cdf_neg


# ---------------------------------------------------------------------------------------------
# Losses.


class FactorTransferLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 2.0, 3.0)
    def test_matches_numpy(self, p):
        rng = np.random.default_rng(0)
        s, t = _normal(rng, (3, 2, 2, 4)), _normal(rng, (3, 2, 2, 4))
        got = self.variant(fl.factor_transfer_loss, static_argnums=2)(s, t, p)
        chex.assert_shape(got, ())
        np.testing.assert_allclose(got, _np_ft(s, t, p), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_value(self):
        # Unit vectors (1, 0) and (0, 1): the L1 distance is 2; (3, 4)/5 against (1, 0): 0.4 + 0.8.
        s = np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)
        t = np.array([[0.0, 7.0], [2.0, 0.0]], np.float32)
        got = self.variant(fl.factor_transfer_loss)(s, t)
        np.testing.assert_allclose(got, (2.0 + 1.2) / 2, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_invariant_to_positive_scale_per_example(self):
        rng = np.random.default_rng(1)
        s, t = _normal(rng, (4, 2, 2, 3)), _normal(rng, (4, 2, 2, 3))
        scales = np.array([0.01, 1.0, 7.0, 1e4], np.float32)[:, None, None, None]
        loss = self.variant(fl.factor_transfer_loss)
        np.testing.assert_allclose(loss(s * scales, t / scales), loss(s, t), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 2.0)
    def test_bounded_and_maximal_for_opposite_factors(self, p):
        rng = np.random.default_rng(2)
        t = _normal(rng, (2, 2, 2, 4))
        got = self.variant(fl.factor_transfer_loss, static_argnums=2)(-t, t, p)
        np.testing.assert_allclose(got, _np_ft(-t, t, p), rtol=1e-5)
        dim = t[0].size
        self.assertLessEqual(float(got), 2 * dim ** max(0.0, 1 / p - 0.5) + 1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1.0, 2.0)
    def test_finite_on_zeros_identical_and_huge_factors(self, p):
        rng = np.random.default_rng(3)
        t = _normal(rng, (2, 2, 2, 3))
        grad = self.variant(jax.value_and_grad(fl.factor_transfer_loss), static_argnums=2)
        for s, teacher in [(np.zeros_like(t), t), (t, t), (t * 1e30, t * 1e-30)]:
            value, g = grad(s, teacher, p)
            self.assertTrue(np.isfinite(value) and np.all(np.isfinite(g)))
        # Huge and tiny factors are still normalised exactly: the same direction gives 0.
        np.testing.assert_allclose(grad(t * 1e30, t * 1e-30, p)[0], 0.0, atol=1e-5)

    def test_gradient_descent_aligns_the_student_factor(self):
        rng = np.random.default_rng(4)
        s, t = _normal(rng, (2, 4)), _normal(rng, (2, 4))
        grad = jax.jit(jax.grad(fl.factor_transfer_loss))
        before = fl.factor_transfer_loss(s, t)
        for _ in range(50):
            s = s - 0.05 * grad(s, t)
        self.assertLess(float(fl.factor_transfer_loss(s, t)), 0.5 * float(before))


class ReconstructionLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_gradient(self):
        rng = np.random.default_rng(5)
        x, r = _normal(rng, (2, 3, 3, 4)), _normal(rng, (2, 3, 3, 4))
        value, grad = self.variant(jax.value_and_grad(fl.reconstruction_loss, argnums=1))(x, r)
        np.testing.assert_allclose(value, np.mean((x - r) ** 2), rtol=1e-5)
        np.testing.assert_allclose(grad, 2 * (r - x) / x.size, rtol=1e-5, atol=1e-8)


class OverhaulLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((0.0, 1.0), (0.3, 1.5), (-2.0, 0.5), (1.0, -2.0))
    def test_gaussian_margin_matches_numpy_and_sampling(self, mean, std):
        got = self.variant(fl.gaussian_negative_mean)(jnp.float32(mean), jnp.float32(std))
        np.testing.assert_allclose(got, _np_gaussian_negative_mean(mean, abs(std)), rtol=1e-4)
        x = np.random.default_rng(6).normal(mean, abs(std), 400_000)
        np.testing.assert_allclose(got, x[x < 0].mean(), rtol=1e-2)
        self.assertLess(float(got), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gaussian_margin_falls_back_to_three_std_without_negative_mass(self):
        got = self.variant(fl.gaussian_negative_mean)(jnp.array([10.0, 0.0]),
                                                      jnp.array([2.0, 1.0]))
        np.testing.assert_allclose(got[0], -6.0)
        np.testing.assert_allclose(got[1], -math.sqrt(2 / math.pi), rtol=1e-5)
        self.assertTrue(np.all(np.isfinite(got)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_negative_moments_and_margin(self):
        # Channel 0: -1, -3 negative among 4; channel 1: never negative.
        x = np.array([[[[-1.0, 1.0], [2.0, 0.0]], [[-3.0, 5.0], [4.0, 2.0]]]], np.float32)
        x = x.transpose(0, 1, 2, 3)  # [1, 2, 2, 2]: channels last
        s, q = self.variant(fl.negative_moments)(x)
        want_s = [np.minimum(x[..., c], 0).mean() for c in range(2)]
        want_q = [(x[..., c] < 0).mean() for c in range(2)]
        np.testing.assert_allclose(s, want_s, rtol=1e-6)
        np.testing.assert_allclose(q, want_q, rtol=1e-6)
        margin = self.variant(fl.margin_from_moments)(s, q)
        for c in range(2):
            neg = x[..., c][x[..., c] < 0]
            np.testing.assert_allclose(margin[c], neg.mean() if neg.size else 0.0, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_partial_l2_hand_cases(self):
        # (s, t): s <= t <= 0 is free; anything else is (s - t)^2.
        pairs = [(-2.0, -1.0, 0.0), (0.0, -1.0, 1.0), (-1.0, 1.0, 4.0), (2.0, 1.0, 1.0),
                 (-1.0, 0.0, 0.0), (-1.0, -1.0, 0.0), (3.0, 0.0, 9.0)]
        s = np.array([[p[0] for p in pairs]], np.float32)
        t = np.array([[p[1] for p in pairs]], np.float32)
        got = self.variant(fl.partial_l2_loss)(s, t)
        np.testing.assert_allclose(got, sum(p[2] for p in pairs), rtol=1e-6)
        # The sum is divided by the batch size, not the element count.
        got2 = self.variant(fl.partial_l2_loss)(np.concatenate([s, s]), np.concatenate([t, t]))
        np.testing.assert_allclose(got2, got, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_overhaul_loss_matches_numpy_and_has_no_gradient_where_free(self):
        rng = np.random.default_rng(7)
        s, t = _normal(rng, (3, 2, 2, 4)), _normal(rng, (3, 2, 2, 4))
        margin = np.array([-0.5, -1.0, -0.2, 0.0], np.float32)
        value, grad = self.variant(jax.value_and_grad(fl.overhaul_distillation_loss))(s, t, margin)
        target = np.maximum(t, margin)
        np.testing.assert_allclose(value, _np_partial_l2(s, target), rtol=1e-5)
        free = (s <= target) & (target <= 0)
        self.assertTrue(free.any() and (~free).any())
        np.testing.assert_array_equal(np.asarray(grad)[free], 0.0)
        np.testing.assert_allclose(np.asarray(grad)[~free], (2 * (s - target) / 3)[~free],
                                   rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_normalized_partial_l2_scale_invariant_bounded_finite(self):
        rng = np.random.default_rng(8)
        s, t = _normal(rng, (3, 2, 2, 4)), _normal(rng, (3, 2, 2, 4))
        loss = self.variant(fl.normalized_partial_l2_loss)
        scales = np.array([1e-3, 1.0, 1e3], np.float32)[:, None, None, None]
        np.testing.assert_allclose(loss(s * scales, t * scales[::-1]), loss(s, t), rtol=1e-4)
        np.testing.assert_allclose(
            loss(s, t), _np_partial_l2(_np_normalize(s), _np_normalize(t)), rtol=1e-5)
        self.assertLessEqual(float(loss(-np.abs(t) - 1, np.abs(t) + 1)), 4.0 + 1e-5)
        value, grad = jax.value_and_grad(fl.normalized_partial_l2_loss)(np.zeros_like(s), t * 1e30)
        self.assertTrue(np.isfinite(value) and np.all(np.isfinite(grad)))


class InheritanceExplorationLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("ft", "at", "od")
    def test_is_weighted_inheritance_minus_exploration(self, name):
        rng = np.random.default_rng(9)
        inh, exp, t = (_normal(rng, (2, 2, 2, 3)) for _ in range(3))
        d = fl.IE_DISTANCES[name]
        got = self.variant(fl.inheritance_exploration_loss, static_argnums=3)(
            inh, exp, t, d, 2.0, 0.5)
        np.testing.assert_allclose(got, 2.0 * d(inh, t) - 0.5 * d(exp, t), rtol=1e-5, atol=1e-7)

    @parameterized.parameters("ft", "at", "od")
    def test_exploration_pushes_away_and_stays_bounded(self, name):
        rng = np.random.default_rng(10)
        inh, exp, t = (_normal(rng, (2, 2, 2, 3)) for _ in range(3))
        d = fl.IE_DISTANCES[name]
        loss = lambda e: fl.inheritance_exploration_loss(inh, e, t, d)  # noqa: E731
        before = float(d(exp, t))
        grad = jax.jit(jax.grad(loss))
        for _ in range(100):
            exp = exp - 0.5 * grad(exp)
        self.assertGreater(float(d(exp, t)), before)
        # Unit-norm comparisons: scaling the exploring factor up gains nothing.
        self.assertTrue(np.isfinite(float(loss(exp * 1e20))))
        np.testing.assert_allclose(loss(exp * 1e6), loss(exp), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Heads.


class HeadsTest(chex.TestCase):

    @parameterized.parameters(True, False)
    def test_factor_coder_widths(self, use_bn):
        coder = factor_heads.FactorCoder(5, use_bn=use_bn)
        variables = _jitted(coder.init, KEY, jnp.ones((2, 4, 4, 3)))
        kernels = [variables["params"][f"Conv_{i}"]["kernel"].shape for i in range(3)]
        self.assertEqual(kernels, [(3, 3, 3, 3), (3, 3, 3, 5), (3, 3, 5, 5)])
        self.assertEqual("bias" in variables["params"]["Conv_0"], not use_bn)
        self.assertEqual("batch_stats" in variables, use_bn)
        out = _jitted(coder.apply, variables, jnp.ones((2, 4, 4, 3)))
        chex.assert_shape(out, (2, 4, 4, 5))

    def test_paraphraser_shapes(self):
        x = _normal(np.random.default_rng(11), (2, 4, 4, 6))
        para = factor_heads.Paraphraser(6, 3)
        variables = _jitted(para.init, KEY, x)
        factor, recon = _jitted(para.apply, variables, x)
        chex.assert_shape(factor, (2, 4, 4, 3))
        chex.assert_shape(recon, (2, 4, 4, 6))
        np.testing.assert_allclose(
            _jitted(para.apply, variables, x, method=factor_heads.Paraphraser.encode), factor,
            rtol=1e-6)

    def test_od_connector_normalises_in_training(self):
        x = _normal(np.random.default_rng(12), (4, 3, 3, 5), scale=4.0) + 2.0
        conn = factor_heads.ODConnector(7)
        variables = _jitted(conn.init, KEY, x)
        self.assertNotIn("bias", variables["params"]["conv"])
        out, _ = _jitted(conn.apply, variables, x, train=True, mutable=["batch_stats"])
        chex.assert_shape(out, (4, 3, 3, 7))
        np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)

    def test_running_margin_is_the_conditional_mean(self):
        rng = np.random.default_rng(13)
        a, b = _normal(rng, (4, 3, 3, 2)), _normal(rng, (4, 3, 3, 2), scale=3.0) - 1.0
        est = factor_heads.NegativeMeanMargin(momentum=0.75)
        variables = _jitted(est.init, KEY, a, update=True)
        for v in jax.tree.leaves(variables["margin"]):  # not updated at initialisation
            np.testing.assert_array_equal(v, 0.0)
        margin, state = _jitted(est.apply, variables, a, update=True, mutable=["margin"])
        # After one update the zero-started averages' bias cancels: the batch's E[x | x < 0].
        want = [a[..., c][a[..., c] < 0].mean() for c in range(2)]
        np.testing.assert_allclose(margin, want, rtol=1e-5)
        margin2, state2 = _jitted(est.apply, state, b, update=True, mutable=["margin"])
        sa, qa = [np.minimum(a, 0).mean((0, 1, 2)), (a < 0).mean((0, 1, 2))]
        sb, qb = [np.minimum(b, 0).mean((0, 1, 2)), (b < 0).mean((0, 1, 2))]
        want2 = (0.75 * 0.25 * sa + 0.25 * sb) / (0.75 * 0.25 * qa + 0.25 * qb)
        np.testing.assert_allclose(margin2, want2, rtol=1e-5)
        # Without update (evaluation) the state is read, not changed.
        margin3, state3 = _jitted(est.apply, state2, a, update=False, mutable=["margin"])
        np.testing.assert_allclose(margin3, margin2)
        chex.assert_trees_all_equal(state3, state2)

    def test_running_margin_is_synchronised_over_devices(self):
        x = _normal(np.random.default_rng(14), (8, 2, 2, 3)) + 0.3
        est = factor_heads.NegativeMeanMargin()
        variables = _jitted(est.init, KEY, x)
        one, _ = _jitted(est.apply, variables, x, update=True, mutable=["margin"])
        four = jax.jit(jax.shard_map(
            lambda v, x: est.apply(v, x, update=True, axis_name="data", mutable=["margin"])[0],
            mesh=_mesh(), in_specs=(P(), P("data")), out_specs=P()))
        np.testing.assert_allclose(four(variables, x), one, rtol=1e-5)

    def test_inherit_explore_head_splits_channels(self):
        rng = np.random.default_rng(15)
        s, t = _normal(rng, (2, 2, 2, 6)), _normal(rng, (2, 2, 2, 4))
        for weights, silent in [((1.0, 0.0), slice(3, 6)), ((0.0, 1.0), slice(0, 3))]:
            head = factor_heads.InheritExploreHead(4, "ft", *weights)
            variables = _jitted(head.init, KEY, s, t)
            self.assertEqual(set(variables["params"]), {"inherit_encoder", "explore_encoder"})
            grad = jax.jit(jax.grad(lambda x, h=head, v=variables: h.apply(v, x, t)))(s)
            np.testing.assert_array_equal(np.asarray(grad)[..., silent], 0.0)
            self.assertTrue(np.any(np.asarray(grad) != 0))
        with pytest.raises(ValueError, match="Unknown IE distance"):
            _jitted(factor_heads.InheritExploreHead(4, "kl").init, KEY, s, t)
        with pytest.raises(ValueError, match="splits the student's channels"):
            _jitted(factor_heads.InheritExploreHead(4).init, KEY, s[..., :1], t)


# ---------------------------------------------------------------------------------------------
# Terms.


def _train_term(name, stage_name, steps=10, lr=3e-3, batch=4):
    """Adam on the term's params that the stage trains (all but `frozen` ones in the main
    stage (None), only the submodules it names in a pre-stage) and on every student layer as
    a free variable, through the module that gives the stage's loss. Returns the losses,
    first to last, the first step's gradients with respect to the student's layers, and the
    term."""
    rng = np.random.default_rng(16)
    student = _wrn_layers(rng, batch, **WRN_STUDENT)
    teacher = _wrn_layers(rng, batch, **WRN_TEACHER)
    method = BY_NAME[name]
    term = _build(method)
    ctx = _context(batch)
    variables = _init(term, student, teacher, ctx, method)
    state = _state(variables)
    if stage_name is None:
        module = term
        params = {k: v for k, v in variables["params"].items() if k not in method.frozen}
    else:
        stage = next(s for s in method.stages if s.name == stage_name)
        module = stage.loss(term)
        params = {k: variables["params"][k] for k in stage.trains_heads}
    fixed = {k: v for k, v in variables["params"].items() if k not in params}

    def loss(free, state):
        params, layers = free
        return module.apply({"params": {**params, **fixed}, **state}, layers, teacher, ctx,
                            mutable=list(state))

    opt = optax.adam(lr)
    free = (params, student)

    @jax.jit
    def step(free, state, opt_state):
        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(free, state)
        layer_grads = grads[1]
        if stage_name is not None:  # a pre-stage does not train the student
            grads = (grads[0], jax.tree.map(jnp.zeros_like, grads[1]))
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(free, updates), state, opt_state, value, layer_grads

    opt_state = opt.init(free)
    values, first_grads = [], None
    for _ in range(steps):
        free, state, opt_state, value, layer_grads = step(free, state, opt_state)
        values.append(float(value))
        first_grads = layer_grads if first_grads is None else first_grads
    return np.array(values), first_grads, term


# Every method's main stage, and the pre-stage of FT and of IE-KD (its variants share it).
CASES = [(m.name, None) for m in factor_methods.METHODS if m.name != "ie_kd"] + [
    ("ft", factor_methods.FT_STAGE), ("ie_ft", factor_methods.IE_STAGE)]


@pytest.mark.parametrize("name,stage", CASES)
def test_every_term_trains_and_reads_only_its_layers(name, stage):
    values, grads, term = _train_term(name, stage)
    assert np.all(np.isfinite(values)), values
    assert values[-3:].mean() < values[0], values
    for layer, g in grads.items():
        # Gradients reach exactly the layers the term says it reads (none in a pre-stage).
        reads = stage is None and layer in term.student_layer_names
        assert bool(jnp.any(g != 0)) == reads, layer


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_stages_and_frozen_parts_name_existing_submodules(name):
    """The trainer finds what a stage trains and what stays fixed by submodule name."""
    rng = np.random.default_rng(17)
    student, teacher = _wrn_layers(rng, 2, **WRN_STUDENT), _wrn_layers(rng, 2, **WRN_TEACHER)
    term = _build(BY_NAME[name])
    shapes = jax.eval_shape(lambda: _init(term, student, teacher, _context(2), BY_NAME[name]))
    for stage in BY_NAME[name].stages:
        for trains in stage.trains_heads or ():
            assert trains in shapes["params"]
    for frozen in BY_NAME[name].frozen:
        assert frozen in shapes["params"]


@pytest.mark.parametrize("name", ["ft", "ie_ft"])
def test_fixed_autoencoder_gets_no_gradient_and_keeps_its_statistics(name):
    rng = np.random.default_rng(18)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    term = _build(BY_NAME[name])
    (frozen,) = BY_NAME[name].frozen
    ctx = _context(4)
    variables = _init(term, student, teacher, ctx, BY_NAME[name])
    grads, state = jax.jit(jax.grad(
        lambda p: term.apply({**variables, "params": p}, student, teacher, ctx,
                             mutable=["batch_stats"]), has_aux=True))(variables["params"])
    for leaf in jax.tree.leaves(grads[frozen]):
        np.testing.assert_array_equal(leaf, 0.0)
    chex.assert_trees_all_equal(state["batch_stats"][frozen], variables["batch_stats"][frozen])
    # In its own stage it is what trains, on the teacher alone.
    stage_loss = BY_NAME[name].stages[0].loss(term)
    grads, state = jax.jit(jax.grad(
        lambda p, s: stage_loss.apply({**variables, "params": p}, s, teacher, ctx,
                                mutable=["batch_stats"]), argnums=(0, 1), has_aux=True))(
            variables["params"], student)
    assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(grads[0][frozen]))
    for key, sub in grads[0].items():
        if key != frozen:
            assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(sub)), key
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[1]))


def test_ft_is_the_factor_transfer_loss_of_paraphraser_and_translator():
    rng = np.random.default_rng(19)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    term = factor_methods.FT()
    variables = _init(term, student, teacher, _context(4, train=False))
    value = _jitted(term.apply, variables, student, teacher, _context(4, train=False))
    para = factor_heads.Paraphraser(128, 64)
    trans = factor_heads.FactorCoder(64)
    sub = lambda name: {k: v[name] for k, v in variables.items()}  # noqa: E731
    t_factor = _jitted(para.apply, sub("paraphraser"), teacher["group3"],
                          method=factor_heads.Paraphraser.encode)
    s_factor = _jitted(trans.apply, sub("translator"), student["group3"])
    chex.assert_shape(t_factor, (4, 2, 2, 64))
    np.testing.assert_allclose(value, fl.factor_transfer_loss(s_factor, t_factor), rtol=1e-5)


def test_od_weights_layers_and_updates_margins_only_in_training():
    rng = np.random.default_rng(20)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    term = factor_methods.OD()
    variables = _init(term, student, teacher, _context(4))
    value, state = _jitted(term.apply, variables, student, teacher, _context(4), mutable=["margin",
                                                                                  "batch_stats"])
    parts = []
    for g in ("group1_preact", "group2_preact", "group3_preact"):
        single = factor_methods.OD(layers=(g,))
        sub = {k: {n: v for n, v in col.items() if n.endswith(g)} for k, col in variables.items()}
        parts.append(_jitted(single.apply, sub, student, teacher, _context(4),
                                  mutable=["margin", "batch_stats"])[0])
    np.testing.assert_allclose(value, 0.25 * parts[0] + 0.5 * parts[1] + parts[2], rtol=1e-5)
    margin = state["margin"]["margin_group3_preact"]
    t = teacher["group3_preact"]
    want = [t[..., c][t[..., c] < 0].mean() for c in range(t.shape[-1])]
    np.testing.assert_allclose(fl.margin_from_moments(margin["negative_sum"],
                                                      margin["negative_fraction"]), want, rtol=1e-4)
    _, eval_state = _jitted(term.apply, variables, student, teacher, _context(4, train=False),
                               mutable=["margin", "batch_stats"])
    chex.assert_trees_all_equal(eval_state, _state(variables))


@pytest.mark.parametrize("name", ["od", "ie_od"])
def test_four_devices_give_the_one_device_loss(name):
    """Per-example losses, BN and margins synchronised: sharding does not change the loss."""
    rng = np.random.default_rng(21)
    student, teacher = _wrn_layers(rng, 8, **WRN_STUDENT), _wrn_layers(rng, 8, **WRN_TEACHER)
    term = _build(BY_NAME[name])
    variables = _init(term, student, teacher, _context(8))

    def loss(variables, s, t, axis_name):
        ctx = _context(s["group3"].shape[0], axis_name=axis_name)
        value, state = _jitted(term.apply, variables, s, t, ctx, mutable=list(_state(variables)))
        if axis_name is not None:
            value = jax.lax.pmean(value, axis_name)
        return value, state["margin"]

    one_value, one_margin = loss(variables, student, teacher, None)
    four = jax.jit(jax.shard_map(lambda v, s, t: loss(v, s, t, "data"),
                                 mesh=_mesh(),
                                 in_specs=(P(), P("data"), P("data")), out_specs=(P(), P())))
    four_value, four_margin = four(variables, student, teacher)
    np.testing.assert_allclose(four_value, one_value, rtol=1e-4)
    chex.assert_trees_all_close(four_margin, one_margin, rtol=1e-5)


def test_ie_variants_and_alias():
    assert BY_NAME["ie_kd"].build is BY_NAME["ie_ft"].build
    assert [BY_NAME[n].build.distance for n in ("ie_ft", "ie_at", "ie_od")] == ["ft", "at", "od"]
    for name in ("ie_ft", "ie_at", "ie_od", "ie_kd"):
        assert BY_NAME[name].frozen == ("ie_autoencoder",)
        assert BY_NAME[name].stages[0].trains_heads == ("ie_autoencoder",)
        assert not BY_NAME[name].stages[0].trains_student


def test_ie_distance_is_inheritance_minus_exploration_of_the_teacher_factor():
    rng = np.random.default_rng(22)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    ctx = _context(4, train=False)
    for cls in (factor_methods.IEFT, factor_methods.IEAT):
        term = cls(exploration_weight=0.0)
        variables = _init(term, student, teacher, ctx)
        sub = lambda name, variables=variables: {k: v[name] for k, v in variables.items()}
        t_factor = _jitted(factor_heads.Paraphraser(128, 64).apply,
            sub("ie_autoencoder"), teacher["group3"], method=factor_heads.Paraphraser.encode)
        inherit = _jitted(factor_heads.FactorCoder(64).apply,
            {k: v["ie_student"]["inherit_encoder"] for k, v in variables.items()},
            student["group3"][..., :32])
        np.testing.assert_allclose(_jitted(term.apply, variables, student, teacher, ctx),
                                   fl.IE_DISTANCES[cls.distance](inherit, t_factor), rtol=1e-5)


def test_ie_dml_needs_no_teacher_and_trains_its_peer():
    rng = np.random.default_rng(23)
    student = _wrn_layers(rng, 4, **WRN_STUDENT)
    term = _build(BY_NAME["ie_dml"])
    assert term.teacher_layer_names == ()
    assert term.student_layer_names == ("group3", "logits")
    assert factor_methods.IEDML(peer_model={"name": "wrn", "depth": 10, "width": 1},
                                kl_weight=0.0).student_layer_names == ("group3",)
    ctx = _context(4)
    variables = _init(term, student, {}, ctx)
    assert variables["params"]["peer"]["Dense_0"]["kernel"].shape == (64, 10)
    grads, state = jax.jit(jax.grad(
        lambda p: term.apply({**variables, "params": p}, student, {}, ctx,
                             mutable=["batch_stats"]), has_aux=True))(variables["params"])
    for part in ("peer", "student_autoencoder", "peer_autoencoder", "student_ie", "peer_ie"):
        assert any(np.any(g != 0) for g in jax.tree.leaves(grads[part])), part
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), state["batch_stats"]["peer"],
                           variables["batch_stats"]["peer"])
    assert all(jax.tree.leaves(changed))
    _, eval_state = _jitted(term.apply, variables, student, {}, ctx.replace(train=False),
                               mutable=["batch_stats"])
    chex.assert_trees_all_equal(eval_state["batch_stats"], variables["batch_stats"])


def test_ie_dml_without_ie_and_kl_is_the_peer_cross_entropy_plus_reconstructions():
    rng = np.random.default_rng(24)
    student = _wrn_layers(rng, 4, **WRN_STUDENT)
    peer_model = dict(name="wrn", depth=10, width=1)
    term = factor_methods.IEDML(peer_model=peer_model, inheritance_weight=0.0,
                                exploration_weight=0.0, kl_weight=0.0)
    ctx = _context(4, train=False)
    variables = _init(term, student, {}, ctx)
    value = _jitted(term.apply, variables, student, {}, ctx)
    from vid_jax.models import build_model, sown_layers
    peer = build_model(peer_model, 10)
    logits, sown = _jitted(peer.apply, {"params": variables["params"]["peer"],
                               "batch_stats": variables["batch_stats"]["peer"]}, ctx.images,
                              mutable=["intermediates"])
    sub = lambda name: {k: v[name] for k, v in variables.items()}  # noqa: E731
    recon = 0.0
    for name, x, c in (("student_autoencoder", student["group3"], 64),
                       ("peer_autoencoder", sown_layers(sown["intermediates"])["group3"], 64)):
        decoded = _jitted(factor_heads.Paraphraser(c, 32).apply, sub(name), x)[1]
        recon += fl.reconstruction_loss(x, decoded)
    want = core_losses.cross_entropy(logits, ctx.labels) + recon
    np.testing.assert_allclose(value, want, rtol=1e-5)


def test_examples_build_for_wrn_layers():
    sown = ["group1", "group2", "group3", "group1_preact", "group2_preact", "group3_preact",
            "features", "logits"]
    for method in factor_methods.METHODS:
        term = _build(method)
        assert set(term.student_layer_names) <= set(sown)
        assert set(term.teacher_layer_names) <= set(sown)
        assert dataclasses.is_dataclass(term)
