"""The Wide-ResNet: published parameter counts, and the layers it sows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vid_jax.models import build_model, sown_layers


def _variables(model, shape=(1, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


# Zagoruyko & Komodakis report WRN-40-2 2.2M, WRN-16-2 0.69M, WRN-40-1 0.56M, WRN-16-1 0.17M
# for CIFAR-100; the exact counts are those of the authors' PyTorch code (with BN affine).
@pytest.mark.parametrize("depth,width,expected", [
    (40, 2, 2_255_156), (16, 2, 703_284), (40, 1, 569_780), (16, 1, 180_916)])
def test_parameter_counts_match_the_published_ones(depth, width, expected):
    model = build_model(dict(name="wrn", depth=depth, width=width), num_classes=100)
    count = sum(x.size for x in jax.tree.leaves(_variables(model)["params"]))
    assert count == expected


def test_sows_group_ends_features_and_logits():
    model = build_model(dict(name="wrn", depth=16, width=2), num_classes=10)
    variables = jax.tree.map(jnp.zeros_like, _variables(model))
    x = jnp.ones((3, 32, 32, 3))
    logits, state = model.apply(variables, x, mutable=["intermediates"])
    layers = sown_layers(state["intermediates"])
    groups = {"group1": (3, 32, 32, 32), "group2": (3, 16, 16, 64), "group3": (3, 8, 8, 128)}
    assert {k: v.shape for k, v in layers.items()} == {
        **groups, **{f"{k}_preact": shape for k, shape in groups.items()},
        "features": (3, 128), "logits": (3, 10)}
    assert jnp.array_equal(layers["logits"], logits)


def test_sown_group_end_is_before_the_final_batch_norm_relu():
    model = build_model(dict(name="wrn", depth=10, width=1), num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    _, state = model.apply(variables, x, mutable=["intermediates"])
    # A ReLU output is never negative; the pre-activation group end is.
    assert float(jnp.min(sown_layers(state["intermediates"])["group3"])) < 0


def test_sown_preact_is_the_batch_norm_output_that_the_relu_after_each_group_reads():
    """group{k}_preact = BN(group{k}) with the BN that precedes the next ReLU: the next group's
    first block's first BN, the final BN after group3 (what AB and OD are defined on)."""
    model = build_model(dict(name="wrn", depth=16, width=1), num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    # Running statistics and affine parameters away from the identity, so that a wrong BN
    # (or none) gives other values.
    keys = iter(jax.random.split(jax.random.key(2), 1000))
    variables = jax.tree.map(lambda v: v + 0.3 * jnp.abs(jax.random.normal(next(keys), v.shape)),
                             variables)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    _, state = model.apply(variables, x, mutable=["intermediates"])
    layers = sown_layers(state["intermediates"])

    def batch_norm(where, y):
        p, s = (variables[c] for c in ("params", "batch_stats"))
        for key in where:
            p, s = p[key], s[key]
        return (y - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]

    blocks = 2  # (16 - 4) / 6 per group: group 2 starts at BasicBlock_2, group 3 at _4
    for group, where in ((1, ("BasicBlock_2", "BatchNorm_0")),
                         (2, ("BasicBlock_4", "BatchNorm_0")), (3, ("BatchNorm_0",))):
        np.testing.assert_allclose(layers[f"group{group}_preact"],
                                   batch_norm(where, layers[f"group{group}"]),
                                   rtol=1e-5, atol=1e-5, err_msg=f"group{group}")
    assert blocks * 3 == sum(k.startswith("BasicBlock") for k in variables["params"])


def test_bad_depth_and_unknown_model_fail_clearly():
    with pytest.raises(ValueError, match="6n\\+4"):
        _variables(build_model(dict(name="wrn", depth=15, width=1), num_classes=10))
    with pytest.raises(ValueError, match="Unknown model .resnet99.; known models: .*wrn"):
        build_model(dict(name="resnet99"), num_classes=10)


def test_bfloat16_model_returns_float32_logits():
    model = build_model(dict(name="wrn", depth=10, width=1), num_classes=10, dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    logits = model.apply(variables, jnp.ones((2, 8, 8, 3)))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
