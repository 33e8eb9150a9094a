"""Relational methods (RKD, SP, CC, PKT, CRD): losses against NumPy references, heads, terms.

The NumPy references loop over pairs and triplets, written from the papers' equations
independently of the vectorised JAX code (float64).
"""
import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from jax.sharding import PartitionSpec as P

from vid_jax import methods
from vid_jax.heads import relational as rel_heads
from vid_jax.losses import relational as rel
from vid_jax.methods import relational as rel_methods
from vid_jax.methods.base import example_context


def _normal(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _rotation(rng, dim):
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q


def _huber(x):
    x = abs(x)
    return 0.5 * x * x if x <= 1.0 else x - 0.5


# ---------------------------------------------------------------------------------------------
# NumPy references.


def _np_rkd_distance(s, t):
    s, t = s.reshape(len(s), -1).astype(np.float64), t.reshape(len(t), -1).astype(np.float64)
    pairs = [(i, j) for i in range(len(s)) for j in range(len(s)) if i != j]

    def potential(x):
        d = {p: np.linalg.norm(x[p[0]] - x[p[1]]) for p in pairs}
        mu = np.mean(list(d.values()))
        return {p: v / mu for p, v in d.items()}

    ps, pt = potential(s), potential(t)
    return np.mean([_huber(ps[p] - pt[p]) for p in pairs])


def _np_rkd_angle(s, t):
    s, t = s.reshape(len(s), -1).astype(np.float64), t.reshape(len(t), -1).astype(np.float64)

    def cos(x, i, j, k):  # angle at vertex j
        a, b = x[i] - x[j], x[k] - x[j]
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    return np.mean([_huber(cos(s, i, j, k) - cos(t, i, j, k))
                    for i, j, k in itertools.permutations(range(len(s)), 3)])


def _np_sp(s, t):
    def g(x):
        q = x.reshape(len(x), -1).astype(np.float64)
        gram = q @ q.T
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)
    return np.sum((g(t) - g(s)) ** 2) / len(s) ** 2


def _np_cc(s, t, gamma, order):
    def c(x):
        f = x.reshape(len(x), -1).astype(np.float64)
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        out = np.zeros((len(f), len(f)))
        for i in range(len(f)):
            for j in range(len(f)):
                out[i, j] = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p)
                                * (f[i] @ f[j]) ** p for p in range(order + 1))
        return out
    return np.mean((c(s) - c(t)) ** 2)


def _np_pkt(s, t, eps=1e-7):
    def cond(x):
        f = x.reshape(len(x), -1).astype(np.float64)
        n = len(f)
        k = np.array([[(f[i] @ f[j] / np.linalg.norm(f[i]) / np.linalg.norm(f[j]) + 1) / 2
                       for j in range(n)] for i in range(n)])
        p = np.zeros((n, n))
        for i in range(n):
            z = sum(k[i, m] for m in range(n) if m != i)
            for j in range(n):
                if j != i:
                    p[i, j] = k[i, j] / z
        return p
    ps, pt = cond(s), cond(t)
    n = len(s)
    return np.mean([sum(pt[i, j] * (np.log(pt[i, j] + eps) - np.log(ps[i, j] + eps))
                        for j in range(n) if j != i) for i in range(n)])


# ---------------------------------------------------------------------------------------------
# Losses.


class RKDLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_pairwise_distances(self):
        x = _normal(np.random.default_rng(0), (5, 2, 3))
        got = self.variant(rel.pairwise_distances)(x)
        flat = x.reshape(5, -1)
        want = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.diag(got), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_distance_loss_hand_computed(self):
        # Teacher at 0, 1, 2 on a line: distances 1, 2, 1, mean 4/3, potentials 3/4, 3/2, 3/4.
        # Student at 0, 1, 3: distances 1, 3, 2, mean 2, potentials 1/2, 3/2, 1.
        # Differences 1/4, 0, 1/4 -> Huber 1/32, 0, 1/32; mean over the 3 pairs: 1/48.
        t = np.array([[0.0], [1.0], [2.0]], np.float32)
        s = np.array([[0.0], [1.0], [3.0]], np.float32)
        got = self.variant(rel.rkd_distance_loss)(s, t)
        np.testing.assert_allclose(got, 1.0 / 48.0, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_angle_loss_hand_computed(self):
        # Teacher: a right isosceles triangle, cosines 0 (right angle), sqrt(2)/2, sqrt(2)/2.
        # Student: three collinear points, cosines 1, -1 (the middle point), 1.
        t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
        s = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], np.float32)
        r = math.sqrt(2) / 2
        want = (_huber(1 - 0) + _huber(-1 - r) + _huber(1 - r)) / 3
        got = self.variant(rel.rkd_angle_loss)(s, t)
        np.testing.assert_allclose(got, want, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        rng = np.random.default_rng(1)
        s, t = _normal(rng, (6, 5)), _normal(rng, (6, 2, 2, 3), scale=3.0)
        np.testing.assert_allclose(self.variant(rel.rkd_distance_loss)(s, t),
                                   _np_rkd_distance(s, t), rtol=1e-5)
        np.testing.assert_allclose(self.variant(rel.rkd_angle_loss)(s, t),
                                   _np_rkd_angle(s, t), rtol=1e-5)
        np.testing.assert_allclose(
            self.variant(rel.rkd_loss)(s, t),
            25 * _np_rkd_distance(s, t) + 50 * _np_rkd_angle(s, t), rtol=1e-5)

    def test_invariant_to_rotation_translation_and_scale(self):
        # Relations do not change under a similarity transform, even into a wider space.
        rng = np.random.default_rng(2)
        t = _normal(rng, (7, 4))
        wide = np.concatenate([t, np.zeros((7, 4), np.float32)], axis=1)
        s = (3.0 * wide @ _rotation(rng, 8) + 5.0).astype(np.float32)
        np.testing.assert_allclose(rel.rkd_loss(s, t), 0.0, atol=1e-6)
        self.assertGreater(float(rel.rkd_loss(_normal(rng, (7, 4)), t)), 0.1)

    def test_gradient_pulls_student_relations_towards_teacher(self):
        rng = np.random.default_rng(3)
        s, t = _normal(rng, (6, 3)), _normal(rng, (6, 5))
        loss = jax.jit(lambda x: rel.rkd_loss(x, t))
        grad = jax.grad(loss)(s)
        self.assertLess(float(loss(s - 1e-3 * grad)), float(loss(s)))

    def test_small_batches_give_zero(self):
        one, two = np.ones((1, 3), np.float32), np.eye(2, 3, dtype=np.float32)
        self.assertEqual(float(rel.rkd_loss(one, one)), 0.0)
        self.assertEqual(float(rel.rkd_angle_loss(two, two[::-1])), 0.0)


class SPLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_on_maps_of_different_sizes(self):
        rng = np.random.default_rng(4)
        s, t = _normal(rng, (5, 4, 4, 3)), _normal(rng, (5, 2, 2, 8))
        np.testing.assert_allclose(self.variant(rel.sp_loss)(s, t), _np_sp(s, t), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        # Orthogonal student rows: G_s = I. Teacher rows all equal: G_t = 1/sqrt(2) everywhere.
        s = np.eye(2, dtype=np.float32)
        t = np.ones((2, 3), np.float32)
        want = (2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5) / 4
        np.testing.assert_allclose(self.variant(rel.sp_loss)(s, t), want, rtol=1e-6)

    def test_similarity_rows_are_unit_and_scale_invariant(self):
        x = _normal(np.random.default_rng(5), (4, 6))
        g = rel.sp_similarity(x)
        np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(rel.sp_loss(x, 7.0 * x), 0.0, atol=1e-7)


class CCLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        rng = np.random.default_rng(6)
        s, t = _normal(rng, (5, 4)), _normal(rng, (5, 7))
        got = self.variant(lambda a, b: rel.cc_loss(a, b, 0.4, 2))(s, t)
        np.testing.assert_allclose(got, _np_cc(s, t, 0.4, 2), rtol=1e-5)

    def test_high_order_expansion_is_the_gaussian_kernel(self):
        x = _normal(np.random.default_rng(7), (5, 3))
        f = x / np.linalg.norm(x, axis=1, keepdims=True)
        exact = np.exp(-0.4 * np.sum((f[:, None] - f[None]) ** 2, axis=-1))
        np.testing.assert_allclose(rel.cc_correlation(x, 0.4, order=12), exact, rtol=1e-5)
        # Order 2 is already close for gamma = 0.4 (the paper's reason to stop there).
        np.testing.assert_allclose(rel.cc_correlation(x, 0.4, order=2), exact, atol=0.05)

    def test_invariant_to_per_example_scale(self):
        rng = np.random.default_rng(8)
        t = _normal(rng, (6, 4))
        scales = rng.uniform(0.1, 10.0, (6, 1)).astype(np.float32)
        np.testing.assert_allclose(rel.cc_loss(scales * t, t), 0.0, atol=1e-7)


class PKTLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        rng = np.random.default_rng(9)
        s, t = _normal(rng, (6, 4)), _normal(rng, (6, 3, 3))
        np.testing.assert_allclose(self.variant(rel.pkt_loss)(s, t), _np_pkt(s, t), rtol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed_conditionals(self):
        # Cosines: x0.x1 = 0 -> K = 1/2; x0.x2 = -1 -> K = 0; x1.x2 = 0 -> K = 1/2.
        x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
        want = np.array([[0, 1, 0], [0.5, 0, 0.5], [0, 1, 0]], np.float32)
        np.testing.assert_allclose(self.variant(rel.pkt_conditional_probabilities)(x), want,
                                   atol=1e-6)

    def test_kl_properties(self):
        rng = np.random.default_rng(10)
        t = _normal(rng, (6, 4))
        p = rel.pkt_conditional_probabilities(t)
        np.testing.assert_allclose(np.sum(p, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(np.diag(p), 0.0)
        scales = rng.uniform(0.1, 10.0, (6, 1)).astype(np.float32)
        np.testing.assert_allclose(rel.pkt_loss(scales * t, t), 0.0, atol=1e-6)
        self.assertGreater(float(rel.pkt_loss(_normal(rng, (6, 4)), t)), 0.0)


class ExtremeInputsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("rkd", rel.rkd_loss), ("sp", rel.sp_loss), ("cc", rel.cc_loss), ("pkt", rel.pkt_loss))
    def test_finite_values_and_gradients(self, loss):
        rng = np.random.default_rng(11)
        normal = _normal(rng, (5, 2, 2, 3))
        repeated = np.repeat(normal[:2], [3, 2], axis=0)  # coincident examples
        value_and_grad = jax.jit(jax.value_and_grad(loss))
        for s, t in [(np.zeros_like(normal), normal), (normal, np.zeros_like(normal)),
                     (1e4 * normal, normal), (1e-4 * normal, 1e4 * normal),
                     (repeated, normal), (np.zeros_like(normal), np.zeros_like(normal))]:
            value, grad = value_and_grad(s, t)
            self.assertTrue(np.isfinite(value), (loss, value))
            self.assertTrue(np.all(np.isfinite(grad)), loss)


class CRDLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_negatives_exclude_the_positive_and_cover_the_rest(self):
        positives = jnp.array([0, 3, 9, 5], jnp.int32)
        sample = self.variant(rel.crd_sample_negatives, static_argnums=(2, 3))
        neg = np.asarray(sample(jax.random.key(0), positives, 2000, 10))
        self.assertEqual(neg.shape, (4, 2000))
        for row, pos in zip(neg, np.asarray(positives)):
            self.assertNotIn(pos, row)
            counts = np.bincount(row, minlength=10)
            others = np.delete(counts, pos)
            # Uniform over the 9 others: each near 2000 / 9 = 222.
            self.assertTrue(np.all(np.abs(others - 2000 / 9) < 60), counts)
        with self.assertRaises(ValueError):
            rel.crd_sample_negatives(jax.random.key(0), positives[:1], 3, 1)

    @chex.variants(with_jit=True, without_jit=True)
    def test_nce_loss_matches_the_critic(self):
        rng = np.random.default_rng(12)
        logits = rng.uniform(-3.0, 3.0, (3, 5)).astype(np.float32)
        log_z, m = 2.0, 50
        p = np.exp(logits.astype(np.float64) - log_z)
        c = 4 / m  # K = 4 noise samples of probability 1/M
        h = p / (p + c)
        want = -np.mean(np.log(h[:, 0]) + np.sum(np.log(1 - h[:, 1:]), axis=1))
        got = self.variant(rel.crd_nce_loss, static_argnums=2)(logits, log_z, m)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        # Large logits stay finite (log space).
        big = self.variant(rel.crd_nce_loss, static_argnums=2)(1e4 * logits, log_z, m)
        self.assertTrue(np.isfinite(big))

    def test_log_normalizer_is_m_times_mean_exp(self):
        logits = np.array([[0.0, 1.0], [2.0, -1.0]], np.float32)
        want = math.log(100 * np.mean(np.exp(logits)))
        np.testing.assert_allclose(rel.crd_log_normalizer(logits, 100), want, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_momentum_update_rows(self):
        rng = np.random.default_rng(13)
        memory = _normal(rng, (6, 3))
        indices = np.array([4, 1, 4], np.int32)  # 4 repeats: the last occurrence wins
        values = _normal(rng, (3, 3))
        got = np.asarray(self.variant(rel.momentum_update_rows, static_argnums=3)(
            memory, indices, values, 0.5))
        want = memory.copy()
        for i, v in zip(indices, values):
            row = 0.5 * memory[i] + 0.5 * v
            want[i] = row / np.linalg.norm(row)
        np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Terms.

WRN_STUDENT = dict(channels=(16, 32, 64), features=64)    # WRN-10-1
WRN_TEACHER = dict(channels=(32, 64, 128), features=128)  # WRN-10-2
NUM_EXAMPLES = 40


def _wrn_layers(rng, batch, channels, features, size=8):
    layers = {f"group{i + 1}": _normal(rng, (batch, size >> i, size >> i, c))
              for i, c in enumerate(channels)}
    layers["features"] = np.maximum(_normal(rng, (batch, features)), 0.0)  # after ReLU-pool
    layers["logits"] = _normal(rng, (batch, 10))
    return layers


def _build(method):
    entry = {k: v for k, v in method.example.items() if k != "weight"}
    return method.build(**entry)


def _context(batch, **changes):
    ctx = example_context(jnp.zeros((batch, 8, 8, 3)), num_examples=NUM_EXAMPLES, **changes)
    # Positions spread over the training split, as a shuffled batch has them.
    return ctx.replace(indices=(jnp.arange(batch, dtype=jnp.int32) * 5) % NUM_EXAMPLES)


def _init(term, student, teacher, ctx, seed=0):
    return jax.jit(term.init)({"params": jax.random.key(seed), "distill": jax.random.key(seed + 1)},
                              student, teacher, ctx)


_JITTED_APPLY = {}


def _apply(term, variables, student, teacher, ctx, seed=0):
    """jit(apply) with a `distill` RNG and the memory mutable: (value, updated state)."""
    if id(term) not in _JITTED_APPLY:  # one jit per term object, so calls share compilations
        _JITTED_APPLY[id(term)] = (term, jax.jit(functools.partial(term.apply,
                                                                   mutable=["memory"])))
    apply = _JITTED_APPLY[id(term)][1]
    return apply(variables, student, teacher, ctx, rngs={"distill": jax.random.key(seed)})


METHOD_NAMES = [m.name for m in rel_methods.METHODS]
BY_NAME = {m.name: m for m in rel_methods.METHODS}


def test_registry_names():
    assert METHOD_NAMES == ["rkd", "sp", "cc", "pkt", "crd"]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_example_term_is_finite_and_training_reduces_it(name):
    rng = np.random.default_rng(20)
    student = _wrn_layers(rng, 8, **WRN_STUDENT)
    teacher = _wrn_layers(rng, 8, **WRN_TEACHER)
    term, ctx = _build(BY_NAME[name]), _context(8)
    variables = _init(term, student, teacher, ctx)
    read = list(term.student_layer_names)
    trained = {"params": variables.get("params", {}), "student": {k: student[k] for k in read}}
    state = {k: v for k, v in variables.items() if k != "params"}
    opt = optax.adam(1e-2)
    opt_state = opt.init(trained)

    def loss_fn(trained, state, key):
        value, new_state = term.apply({"params": trained["params"], **state},
                                      {**student, **trained["student"]}, teacher, ctx,
                                      rngs={"distill": key}, mutable=list(state))
        return value, new_state

    @jax.jit
    def step(trained, opt_state, state, key):
        (value, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained, state,
                                                                             key)
        updates, opt_state = opt.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, dict(new_state), value

    values = []
    for i in range(30):
        trained, opt_state, state, value = step(trained, opt_state, state, jax.random.key(i))
        values.append(float(value))
    assert np.all(np.isfinite(values)) and np.shape(values[0]) == ()
    # The last few steps' mean against the first (CRD draws new negatives every step).
    assert np.mean(values[-5:]) < 0.8 * values[0], values


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_relational_terms_have_no_stage_of_their_own(name):
    assert BY_NAME[name].stages == ()
    (term,) = methods.build_terms({name: {}})
    assert term.loss_module(None) is term.module


def test_layers_can_be_chosen():
    pkt = rel_methods.PKT(layer="group3", teacher_layer="features")
    assert pkt.student_layer_names == ("group3",) and pkt.teacher_layer_names == ("features",)
    rng = np.random.default_rng(22)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    value, _ = _apply(pkt, {}, student, teacher, _context(4))
    # KLs of near-equal distributions: float32 cancellation limits the agreement to ~1e-5.
    np.testing.assert_allclose(value, _np_pkt(student["group3"], teacher["features"]),
                               rtol=1e-4)
    assert rel_methods.SP().student_layer_names == ("group1", "group2", "group3")


def test_cc_embedding_is_on_the_student_side_only():
    rng = np.random.default_rng(23)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    term = rel_methods.CC(embed_dim=16)
    params = _init(term, student, teacher, _context(4))["params"]
    assert jax.tree.map(jnp.shape, params) == {
        "embed_student": {"linear": {"bias": (16,), "kernel": (64, 16)}}}


def _mesh():
    return jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@pytest.mark.parametrize("name", ["rkd", "sp", "cc", "pkt"])
def test_four_devices_see_the_whole_batch(name):
    """Under shard_map the loss and the student's gradient equal those of one device."""
    rng = np.random.default_rng(24)
    student, teacher = _wrn_layers(rng, 8, **WRN_STUDENT), _wrn_layers(rng, 8, **WRN_TEACHER)
    term = _build(BY_NAME[name])
    variables = _init(term, student, teacher, _context(8))

    def loss(variables, s, t, images, labels, indices, axis_name):
        ctx = example_context(images, labels).replace(indices=indices, axis_name=axis_name)
        value = term.apply(variables, s, t, ctx)
        # The trainer's mean over devices (each device has the whole batch's loss).
        return value if axis_name is None else jax.lax.pmean(value, axis_name)

    def value_and_grad(axis_name):
        return jax.value_and_grad(loss, argnums=1)(
            variables, student, teacher, jnp.zeros((8, 8, 8, 3)), jnp.zeros((8,), jnp.int32),
            jnp.arange(8, dtype=jnp.int32), axis_name)

    one_value, one_grad = value_and_grad(None)
    sharded = jax.jit(jax.shard_map(
        lambda v, s, t, x, y, i: jax.value_and_grad(loss, argnums=1)(v, s, t, x, y, i, "data"),
        mesh=_mesh(), in_specs=(P(), P("data"), P("data"), P("data"), P("data"), P("data")),
        out_specs=(P(), P("data"))))
    four_value, four_grad = sharded(variables, student, teacher, jnp.zeros((8, 8, 8, 3)),
                                    jnp.zeros((8,), jnp.int32), jnp.arange(8, dtype=jnp.int32))
    np.testing.assert_allclose(four_value, one_value, rtol=1e-4)
    for layer in term.student_layer_names:
        np.testing.assert_allclose(four_grad[layer], one_grad[layer], rtol=1e-4, atol=1e-7)
    # The per-device loss alone differs from the whole batch's (the gather matters).
    local, _ = _apply(term, variables, {k: v[:2] for k, v in student.items()},
                      {k: v[:2] for k, v in teacher.items()}, _context(2))
    assert abs(float(local) - float(one_value)) > 1e-6


# ---------------------------------------------------------------------------------------------
# CRD memory.


@functools.cache  # one term and init shared by the tests (none mutates them)
def _crd_setup(batch=8, num_negatives=16, seed=25):
    rng = np.random.default_rng(seed)
    student = _wrn_layers(rng, batch, **WRN_STUDENT)
    teacher = _wrn_layers(rng, batch, **WRN_TEACHER)
    term = rel_methods.CRD(num_negatives=num_negatives)
    variables = _init(term, student, teacher, _context(batch))
    return term, variables, student, teacher


def test_crd_memory_is_created_at_init_and_not_updated_then():
    _, variables, _, _ = _crd_setup()
    memory = variables["memory"]["crd"]
    bound = 1.0 / math.sqrt(128 / 3)
    for bank in ("student_bank", "teacher_bank"):
        assert memory[bank].shape == (NUM_EXAMPLES, 128)
        assert float(jnp.max(jnp.abs(memory[bank]))) <= bound
        # Uniform rows have expected squared norm 1.
        assert abs(float(jnp.mean(jnp.sum(memory[bank] ** 2, axis=1))) - 1.0) < 0.1
    assert not bool(memory["normalizer_ready"])


def test_crd_memory_update():
    term, variables, student, teacher = _crd_setup()
    ctx = _context(8)
    old = variables["memory"]["crd"]
    value, new_state = _apply(term, variables, student, teacher, ctx, seed=3)
    new = new_state["memory"]["crd"]
    assert np.isfinite(float(value))
    rows = np.asarray(ctx.indices)
    others = np.setdiff1d(np.arange(NUM_EXAMPLES), rows)
    params = variables["params"]["crd"]
    v_s = rel_heads.LinearEmbedding(128).apply({"params": params["embed_student"]},
                                               student["features"])
    want = rel.l2_normalize(0.5 * old["student_bank"][rows] + 0.5 * v_s)
    np.testing.assert_allclose(new["student_bank"][rows], want, rtol=1e-5, atol=1e-6)
    for bank in ("student_bank", "teacher_bank"):
        assert np.all(np.isfinite(new[bank]))
        np.testing.assert_allclose(np.linalg.norm(new[bank][rows], axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(new[bank][others], old[bank][others])
    assert bool(new["normalizer_ready"])

    # The normaliser is fixed after the first step; evaluation leaves the memory alone.
    variables = {**variables, **new_state}
    _, after = _apply(term, variables, student, teacher, ctx, seed=4)
    np.testing.assert_array_equal(after["memory"]["crd"]["log_normalizer"], new["log_normalizer"])
    _, frozen = _apply(term, variables, student, teacher, ctx.replace(train=False), seed=4)
    chex.assert_trees_all_equal(frozen["memory"], variables["memory"])


def test_crd_memory_receives_no_gradient():
    term, variables, student, teacher = _crd_setup()

    def memory_sum(params, features):
        _, state = term.apply({**variables, "params": params}, {**student, "features": features},
                              teacher, _context(8), rngs={"distill": jax.random.key(5)},
                              mutable=["memory"])
        return sum(jnp.sum(state["memory"]["crd"][b]) for b in ("student_bank", "teacher_bank"))

    grads = jax.jit(jax.grad(memory_sum, argnums=(0, 1)))(variables["params"],
                                                          student["features"])
    for g in jax.tree.leaves(grads):
        assert not np.any(np.asarray(g))


def test_crd_caps_negatives_for_tiny_splits():
    rng = np.random.default_rng(26)
    student, teacher = _wrn_layers(rng, 4, **WRN_STUDENT), _wrn_layers(rng, 4, **WRN_TEACHER)
    term = rel_methods.CRD()  # 4096 negatives asked for, 5 examples: 4 drawn
    ctx = example_context(jnp.zeros((4, 8, 8, 3)), num_examples=5)
    # Initialised with the `params` RNG alone (no `distill` RNG needed at init).
    variables = jax.jit(term.init)({"params": jax.random.key(0)}, student, teacher, ctx)
    value, _ = _apply(term, variables, student, teacher, ctx)
    assert np.isfinite(float(value))


def test_crd_without_num_examples_is_refused():
    rng = np.random.default_rng(27)
    student, teacher = _wrn_layers(rng, 1, **WRN_STUDENT), _wrn_layers(rng, 1, **WRN_TEACHER)
    ctx = example_context(jnp.zeros((1, 8, 8, 3)))  # num_examples defaults to the batch: 1
    with pytest.raises(ValueError, match="needs one per training example"):
        rel_methods.CRD().init({"params": jax.random.key(0)}, student, teacher, ctx)


def test_crd_four_devices_equal_one():
    """Same global batch and key: equal loss (mean over devices) and identical memory after."""
    term, variables, student, teacher = _crd_setup(batch=8)
    indices = (jnp.arange(8, dtype=jnp.int32) * 5) % NUM_EXAMPLES
    key = jax.random.key(7)

    def run(variables, s, t, images, labels, idx, key, axis_name):
        ctx = example_context(images, labels, num_examples=NUM_EXAMPLES).replace(
            indices=idx, axis_name=axis_name)
        value, state = term.apply(variables, s, t, ctx, rngs={"distill": key},
                                  mutable=["memory"])
        if axis_name is not None:
            value = jax.lax.pmean(value, axis_name)
        return value, state

    images, labels = jnp.zeros((8, 8, 8, 3)), jnp.zeros((8,), jnp.int32)
    one_value, one_state = run(variables, student, teacher, images, labels, indices, key, None)
    sharded = jax.jit(jax.shard_map(
        lambda v, s, t, x, y, i, k: run(v, s, t, x, y, i, k, "data"), mesh=_mesh(),
        in_specs=(P(), P("data"), P("data"), P("data"), P("data"), P("data"), P()),
        out_specs=(P(), P())))
    four_value, four_state = sharded(variables, student, teacher, images, labels, indices, key)
    np.testing.assert_allclose(four_value, one_value, rtol=1e-5)
    for name, leaf in four_state["memory"]["crd"].items():
        np.testing.assert_allclose(leaf, one_state["memory"]["crd"][name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


if __name__ == "__main__":
    absltest.main()
