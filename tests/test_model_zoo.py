"""The model zoo (ImageNet and CIFAR ResNets, VGG, MLP): parameter counts against published ones,
the layers each registry entry sows, pre-/post-ReLU pairs, training mode and data-parallel BN."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vid_jax.models import MODELS, build_model, sown_layers


def _count(config, num_classes, shape):
    model = build_model(config, num_classes)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return sum(x.size for x in jax.tree.leaves(variables["params"]))


# torchvision's ResNets, 1000 classes: its published exact counts (BN scale and bias included).
@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)])
def test_imagenet_resnets_have_torchvision_parameter_counts(name, expected):
    assert _count(dict(name=name), 1000, (1, 224, 224, 3)) == expected


def _cifar_resnet_count(depth, filters, num_classes):
    """RepDistiller's CIFAR ResNet (basic blocks), counted by hand: a 3x3 stem conv and BN; per
    block two 3x3 convs and two BNs (scale, bias), plus a 1x1 conv and BN on the shortcut where
    the stride or width changes; the classifier's weights and biases."""
    stem, *widths = filters
    n = (depth - 2) // 6
    total, c_in = 9 * 3 * stem + 2 * stem, stem
    for stage, width in enumerate(widths):
        for block in range(n):
            total += 9 * c_in * width + 9 * width * width + 4 * width
            if c_in != width or (stage > 0 and block == 0):
                total += c_in * width + 2 * width
            c_in = width
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize("name,depth,filters,exact,published", [
    ("resnet20", 20, (16, 16, 32, 64), 278_324, 0.28e6),
    ("resnet32", 32, (16, 16, 32, 64), 472_756, 0.47e6),
    ("resnet56", 56, (16, 16, 32, 64), 861_620, 0.86e6),
    ("resnet110", 110, (16, 16, 32, 64), 1_736_564, 1.74e6),
    ("resnet8x4", 8, (32, 64, 128, 256), 1_233_540, 1.23e6),
    ("resnet32x4", 32, (32, 64, 128, 256), 7_433_860, 7.43e6),
])
def test_cifar_resnets_have_repdistillers_parameter_counts(name, depth, filters, exact, published):
    """CIFAR-100. The exact counts are those of RepDistiller's `models/resnet.py` layers, counted
    by hand (`_cifar_resnet_count`); the CRD paper's table rounds them to 0.28M, 0.47M, 0.86M,
    1.74M, 1.23M and 7.43M, which they all match to 0.6% or better."""
    assert _cifar_resnet_count(depth, filters, 100) == exact
    assert _count(dict(name=name), 100, (1, 32, 32, 3)) == exact
    assert abs(exact / published - 1) < 0.01


def test_vgg9_and_mlp_parameter_counts():
    # VGG-9: 8 bias-free 3x3 convs (9 * c_in * c_out) with BN (2 * c_out), a 513 x C classifier.
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
             (512, 512)]
    vgg9 = sum(9 * a * b + 2 * b for a, b in convs)
    assert vgg9 == 9_223_232
    assert _count(dict(name="vgg9"), 200, (1, 64, 64, 3)) == vgg9 + 513 * 200  # CUB-200
    # 3072 -> 2048 -> 2048 -> 2048 -> 10, with biases.
    assert _count(dict(name="mlp"), 10, (1, 32, 32, 3)) == (
        3073 * 2048 + 2 * 2049 * 2048 + 2049 * 10) == 14_706_698


def _stages(batch, sizes_and_channels):
    layers = {}
    for k, (size, channels) in enumerate(sizes_and_channels, start=1):
        layers[f"stage{k}"] = layers[f"stage{k}_preact"] = (batch, size, size, channels)
    return layers


B = 2
# Every registry entry: (config, input shape, the shapes of the layers it sows but logits).
SHAPES = {
    **{name: (dict(name=name), (B, 64, 64, 3), {
        "stem": (B, 16, 16, 64), **_stages(B, [(16, 64), (8, 128), (4, 256), (2, 512)]),
        "features": (B, 512)}) for name in ("resnet18", "resnet34")},
    "resnet50": (dict(name="resnet50"), (B, 64, 64, 3), {
        "stem": (B, 16, 16, 64), **_stages(B, [(16, 256), (8, 512), (4, 1024), (2, 2048)]),
        "features": (B, 2048)}),
    "cifar_resnet": (dict(name="cifar_resnet", depth=11, block="bottleneck",
                          num_filters=(4, 4, 8, 8)), (B, 32, 32, 3), {
        "stem": (B, 32, 32, 4), **_stages(B, [(32, 16), (16, 32), (8, 32)]),
        "features": (B, 32)}),
    **{name: (dict(name=name), (B, 32, 32, 3), {
        "stem": (B, 32, 32, 16), **_stages(B, [(32, 16), (16, 32), (8, 64)]),
        "features": (B, 64)})
       for name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                    "resnet110")},
    **{name: (dict(name=name), (B, 32, 32, 3), {
        "stem": (B, 32, 32, 32), **_stages(B, [(32, 64), (16, 128), (8, 256)]),
        "features": (B, 256)})
       for name in ("resnet8x4", "resnet32x4")},
    "vgg9": (dict(name="vgg9"), (B, 64, 64, 3), {
        **_stages(B, [(32, 64), (16, 128), (8, 256), (4, 512), (2, 512)]),
        "features": (B, 512)}),
    "vgg": (dict(name="vgg", config=((8,), (16, 16))), (B, 12, 12, 3), {
        **_stages(B, [(6, 8), (3, 16)]), "features": (B, 16)}),
    "mlp": (dict(name="mlp"), (B, 32, 32, 3), {
        **{f"hidden{k}{s}": (B, 2048) for k in (1, 2, 3) for s in ("", "_preact")},
        "features": (B, 2048)}),
}


def test_every_registry_entry_is_covered():
    assert set(SHAPES) == set(MODELS) - {"wrn"}


# Names and shapes by tracing (jax.eval_shape): no compilation, so every entry at its size.
@pytest.mark.parametrize("case", sorted(SHAPES))
def test_sown_layer_names_and_shapes(case):
    config, shape, expected = SHAPES[case]
    model = build_model(config, num_classes=10)

    def forward(x):
        variables = model.init(jax.random.key(0), x)
        return model.apply(variables, x, mutable=["intermediates"])

    logits, state = jax.eval_shape(forward, jnp.zeros(shape))
    layers = sown_layers(state["intermediates"])
    assert {k: v.shape for k, v in layers.items()} == {**expected, "logits": (B, 10)}
    assert logits.shape == (B, 10) and logits.dtype == layers["logits"].dtype == jnp.float32


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_trains_data_parallel_in_bfloat16_as_the_trainer_builds_it(case):
    """build_model(config, num_classes, bn_axis_name="data"), as the trainer builds students, in
    training mode over a "data" axis of two devices, in bfloat16: float32 logits, and batch
    statistics of the initial ones' structure (traced only)."""
    config, shape, _ = SHAPES[case]
    model = build_model(config, num_classes=10, bn_axis_name="data", dtype=jnp.bfloat16)
    assert model.bn_axis_name == "data" and model.num_classes == 10

    def train_step(x):
        variables = model.init(jax.random.key(0), x[0])
        logits, state = jax.vmap(
            lambda images: model.apply(variables, images, train=True, mutable=["batch_stats"]),
            axis_name="data")(x)
        return variables.get("batch_stats", {}), logits, state.get("batch_stats", {})

    old, logits, new = jax.eval_shape(train_step, jnp.zeros((2, *shape)))
    assert logits.shape == (2, B, 10) and logits.dtype == jnp.float32
    assert jax.tree.map(lambda a: a.shape, old) == jax.tree.map(lambda a: a.shape[1:], new)
    assert bool(old) == (config["name"] != "mlp")


def _filled(abstract, seed=0):
    """Variables of the given shapes, drawn with NumPy: He-normal kernels, BN scales and
    variances near 1, small biases and means (no JAX random numbers, nothing to compile)."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(x.shape[:-1])), x.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return rng.normal(0, 0.1, x.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


# Real forward passes: small members of each family, one compilation each.
NUMERIC = {
    "resnet": (dict(name="resnet18", stage_sizes=(1, 1)), (4, 16, 16, 3)),
    "resnet8": (dict(name="resnet8"), (4, 8, 8, 3)),
    "cifar_bottleneck": (SHAPES["cifar_resnet"][0], (4, 8, 8, 3)),
    "vgg": (SHAPES["vgg"][0], (4, 8, 8, 3)),
    "mlp": (dict(name="mlp", hidden_sizes=(32, 16)), (4, 4, 4, 3)),
    "mlp_bn": (dict(name="mlp", hidden_sizes=(32, 16), batch_norm=True), (4, 4, 4, 3)),
}


@functools.cache
def _run(case):
    """Evaluation and training passes over 4 images, and the training pass's batch statistics
    with the same 4 images over two simulated devices (a vmapped "data" axis)."""
    config, shape = NUMERIC[case]
    model = build_model(config, num_classes=10)
    sharded = build_model(config, num_classes=10, bn_axis_name="data")
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    variables = _filled(jax.eval_shape(lambda: model.init(jax.random.key(0), x)))

    @jax.jit
    def run(variables, x):
        evaluation = model.apply(variables, x, mutable=["intermediates"])
        training = model.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"])
        per_device = jax.vmap(
            lambda images: sharded.apply(variables, images, train=True, mutable=["batch_stats"]),
            axis_name="data")(x.reshape(2, shape[0] // 2, *shape[1:]))
        return evaluation, training, per_device[1]

    return variables, *run(variables, x)


@pytest.mark.parametrize("case", sorted(NUMERIC))
def test_preact_layers_are_the_same_layers_before_their_relu(case):
    _, (logits, state), _, _ = _run(case)
    layers = sown_layers(state["intermediates"])
    assert bool(jnp.all(jnp.isfinite(logits))) and jnp.array_equal(layers["logits"], logits)
    pairs = [(k, k.removesuffix("_preact")) for k in layers if k.endswith("_preact")]
    assert len(pairs) == len([k for k in layers if k[-1].isdigit()]) >= 2
    for preact, post in pairs:
        assert float(layers[preact].min()) < 0, preact
        assert float(layers[post].min()) >= 0, post
        assert jnp.array_equal(layers[post], nn.relu(layers[preact])), post
    last = max(post for _, post in pairs)
    if last.startswith("stage"):  # CNNs: the features are the last stage, average-pooled
        np.testing.assert_allclose(layers["features"], layers[last].mean(axis=(1, 2)),
                                   rtol=1e-5, atol=1e-5)
    else:  # MLP: the last hidden layer
        assert jnp.array_equal(layers["features"], layers[last])


@pytest.mark.parametrize("case", sorted(NUMERIC))
def test_training_mode_updates_batch_statistics(case):
    variables, (_, evaluation), (logits, training), _ = _run(case)
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    if case == "mlp":  # no BN
        assert "batch_stats" not in variables and not training.get("batch_stats")
        return
    old, new = variables["batch_stats"], training["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    assert not any(np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
    # Training-mode layers are normalised by the batch, not by the running statistics.
    assert not np.allclose(sown_layers(training["intermediates"])["features"],
                           sown_layers(evaluation["intermediates"])["features"])


@pytest.mark.parametrize("case", sorted(set(NUMERIC) - {"mlp"}))
def test_batch_statistics_are_averaged_over_the_bn_axis(case):
    """Two simulated devices of 2 images each give the batch statistics of all 4 together."""
    _, _, (_, training), per_device = _run(case)
    whole = training["batch_stats"]
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(per_device), strict=True):
        np.testing.assert_allclose(b[0], a, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b[1], a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config,message", [
    (dict(name="resnet20", depth=21), "6n\\+2"),
    (dict(name="cifar_resnet", depth=21, block="bottleneck"), "9n\\+2"),
    (dict(name="cifar_resnet", depth=20, num_filters=(16, 32, 64)), "num_filters"),
    (dict(name="resnet18", block="basicblock"), "block must be one of"),
    (dict(name="vgg", config=()), "VGG config"),
])
def test_bad_architectures_fail_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        _count(config, 10, (1, 32, 32, 3))
