"""The VID terms' config fields for the mean network and the variance (vid_i, vid_lp)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vid_jax import methods

GROUPS = ("group1", "group2", "group3")


def _layers(batch=4, channels=(4, 8, 16), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    maps = {f"group{i + 1}": rng.standard_normal((batch, 8 >> i, 8 >> i, c)).astype(np.float32)
            for i, c in enumerate(channels)}
    maps["features"] = rng.standard_normal((batch, channels[-1])).astype(np.float32)
    maps["logits"] = rng.standard_normal((batch, classes)).astype(np.float32)
    return maps


def _ctx(batch, **changes):
    return methods.example_context(jnp.zeros((batch, 8, 8, 3)), **changes)


@pytest.mark.parametrize("entry,message", [
    (dict(mean_network="linear"), "config.distill.vid_i: bad arguments for 'vid_i': "
     "mean_network='linear' is not one of 'paper', 'repdistiller', 'authors', 'workshop'"),
    (dict(variance="softplus"), "config.distill.vid_i: bad arguments for 'vid_i': "
     "variance='softplus' is not one of 'softplus_eps', 'authors'"),
])
def test_unknown_values_fail_at_config_time_naming_the_choices(entry, message):
    with pytest.raises(ValueError, match=message):
        methods.build_terms({"vid_i": entry})


def test_vid_lp_takes_the_variance_but_not_the_mean_network():
    with pytest.raises(ValueError, match="config.distill.vid_lp: bad arguments for 'vid_lp': "
                                         "variance='exp' is not one of"):
        methods.build_terms({"vid_lp": dict(variance="exp")})
    with pytest.raises(ValueError, match="bad arguments for 'vid_lp': .*mean_network"):
        methods.build_terms({"vid_lp": dict(mean_network="authors")})  # not a VID-LP field


def test_authors_entry_builds_the_authors_heads():
    term = methods.build_terms({"vid_i": dict(weight=0.1, mean_network="authors",
                                              variance="authors")})[0]
    student, teacher = _layers(), _layers(channels=(8, 16, 32), seed=1)
    variables = term.module.init(jax.random.key(0), student, teacher, _ctx(4))
    assert set(variables) == {"params"}
    assert jax.tree.map(jnp.shape, variables["params"]["vid_group2"]) == {
        "convs_0": {"kernel": (1, 1, 8, 16)}, "convs_1": {"kernel": (1, 1, 16, 16)},
        "alpha": (16,)}
    np.testing.assert_allclose(variables["params"]["vid_group2"]["alpha"],
                               np.log1p(np.exp(5.0)), rtol=1e-6)


def test_vid_lp_authors_variance():
    term = methods.build_terms({"vid_lp": dict(variance="authors")})[0]
    student, teacher = _layers(), _layers(classes=7, seed=1)
    params = term.module.init(jax.random.key(0), student, teacher, _ctx(4))["params"]
    assert jax.tree.map(jnp.shape, params) == {
        "vid_lp": {"convs_0": {"kernel": (1, 1, 16, 7), "bias": (7,)},
                   "alpha": (7,)}}
    np.testing.assert_allclose(params["vid_lp"]["alpha"], np.log1p(np.exp(5.0)), rtol=1e-6)


def test_workshop_term_keeps_batch_stats_that_only_training_updates():
    term = methods.build_terms({"vid_i": dict(mean_network="workshop")})[0]
    student, teacher = _layers(), _layers(channels=(8, 16, 32), seed=1)
    variables = term.module.init(jax.random.key(0), student, teacher, _ctx(4, train=False))
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["batch_stats"]) == {f"vid_{g}" for g in GROUPS}
    start = variables["batch_stats"]

    def step(train):
        return jax.jit(lambda v: term.module.apply(v, student, teacher, _ctx(4, train=train),
                                                   mutable=["batch_stats"]))(variables)

    train_loss, trained = step(True)
    eval_loss, evaluated = step(False)
    chex.assert_trees_all_equal(evaluated["batch_stats"], start)
    for g in GROUPS:
        assert not np.allclose(trained["batch_stats"][f"vid_{g}"]["bns_0"]["mean"], 0.0), g
    assert np.isfinite(float(train_loss)) and abs(float(train_loss) - float(eval_loss)) > 1e-4


def test_workshop_batch_statistics_are_those_of_the_global_batch():
    # On 4 devices, each with a quarter of the batch, the heads' batch norm averages its
    # statistics over the data axis: the loss and the running statistics are those of one
    # device that sees the whole batch.
    term = methods.build_terms({"vid_i": dict(mean_network="workshop")})[0]
    student, teacher = _layers(batch=8), _layers(batch=8, channels=(8, 16, 32), seed=1)
    variables = term.module.init(jax.random.key(0), student, teacher, _ctx(8, train=False))
    expected, expected_state = jax.jit(lambda s, t: term.module.apply(
        variables, s, t, _ctx(8), mutable=["batch_stats"]))(student, teacher)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))

    def per_device(s, t):
        loss, state = term.module.apply(variables, s, t, _ctx(2, axis_name="data"),
                                        mutable=["batch_stats"])
        return jax.lax.pmean(loss, "data"), state

    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                            out_specs=(P(), P()), check_vma=False)
    loss, state = jax.jit(sharded)(student, teacher)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    chex.assert_trees_all_close(state, expected_state, rtol=1e-4, atol=1e-6)
