"""VID as the authors' code builds it (`mean_network="authors", variance="authors"`) against
values PyTorch computed for a module written from the description of that code.

The fixture, tests/data/vid_authors_golden.npz (a few KB), is made by
tests/golden/make_vid_authors_golden.py (its docstring gives the command; PyTorch in a venv of
its own): one layer pair, a student map [2, 3, 4, 4] and a teacher map [2, 5, 4, 4] (NCHW),
the two 1x1 convolutions' weights [out, in, 1, 1], the variance parameter [C_t, 1, 1] at its
initial value and at the point where the loss is evaluated, and the loss and its gradients
with respect to the student map, both weights and the variance parameter (float64).

Normalisation: `losses.vid_nll` is the authors' per-layer loss exactly: both take the mean of
0.5 * ((mu - t)^2 / var + log var) over batch, channels and positions, and both leave out the
constant 0.5 * log(2 pi). So the factor between the two is 1 and the offset 0 (below); the
paper's eq. 4 sums instead of averaging, which only rescales the weight. This test needs no
PyTorch.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from vid_jax import heads, methods

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "vid_authors_golden.npz")
# The authors' per-layer loss = AUTHORS_FACTOR * vid-jax's + AUTHORS_OFFSET (see above).
AUTHORS_FACTOR, AUTHORS_OFFSET = 1.0, 0.0
RTOL = 1e-5


def _fixture():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _kernel(weight):
    """PyTorch's [out, in, 1, 1] 1x1 convolution weight -> PointwiseConv's [1, 1, in, out]."""
    return np.transpose(weight, (2, 3, 1, 0))


def _params(g, variance_param):
    return {"convs_0": {"kernel": jnp.asarray(_kernel(g["conv1_weight"]))},
            "convs_1": {"kernel": jnp.asarray(_kernel(g["conv2_weight"]))},
            "alpha": jnp.asarray(variance_param.reshape(-1))}


def _head():
    return heads.VIDHead(teacher_channels=5, mean_network="authors", variance="authors")


def _close(got, want, name):
    # atol: a few float32 ulps of the largest entry, for entries that nearly cancel.
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6 * np.abs(want).max(),
                               err_msg=name)


def test_fixture_is_small_and_what_the_docstring_says():
    assert os.path.getsize(FIXTURE) < 8192
    g = _fixture()
    assert g["student"].shape == (2, 3, 4, 4) and g["teacher"].shape == (2, 5, 4, 4)
    assert g["conv1_weight"].shape == (5, 3, 1, 1) and g["conv2_weight"].shape == (5, 5, 1, 1)
    assert g["variance_param"].shape == (5, 1, 1)


def test_initial_parameters_have_the_authors_shapes_and_variance():
    g = _fixture()
    s, t = _nhwc(g["student"]), _nhwc(g["teacher"])
    params = _head().init(jax.random.key(0), s, t)["params"]
    expected = _params(g, g["variance_param"])
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, expected)
    # softplus(5.0) per channel, as PyTorch computed it; the variance starts at ~5.0134.
    np.testing.assert_allclose(params["alpha"], g["variance_param_init"].reshape(-1), rtol=1e-6)
    variance = _head().apply({"params": params}, s, method=heads.VIDHead.mean_and_variance)[1]
    np.testing.assert_allclose(variance, np.log1p(np.exp(np.log1p(np.exp(5.0)))), rtol=1e-6)
    # PyTorch's default kernels, U(+-1/sqrt(C_in)): the fixture's weights lie in the same range.
    for name, c_in in (("convs_0", 3), ("convs_1", 5)):
        assert float(jnp.abs(params[name]["kernel"]).max()) <= 1 / np.sqrt(c_in)


def test_loss_and_gradients_match_pytorch():
    g = _fixture()
    head = _head()
    s, t = jnp.asarray(_nhwc(g["student"])), jnp.asarray(_nhwc(g["teacher"]))
    params = _params(g, g["variance_param"])
    loss, (grad_params, grad_student) = jax.jit(jax.value_and_grad(
        lambda p, x: head.apply({"params": p}, x, t), argnums=(0, 1)))(params, s)
    _close(AUTHORS_FACTOR * loss + AUTHORS_OFFSET, g["loss"], "loss")
    _close(grad_student, _nhwc(g["grad_student"]), "d loss / d student map")
    _close(grad_params["convs_0"]["kernel"], _kernel(g["grad_conv1_weight"]), "d / d conv1")
    _close(grad_params["convs_1"]["kernel"], _kernel(g["grad_conv2_weight"]), "d / d conv2")
    _close(grad_params["alpha"], g["grad_variance_param"].reshape(-1), "d / d variance param")


def test_vid_i_term_with_the_authors_fields_gives_the_same_loss():
    # The config entry of the authors' VID-I, on one layer pair (VID-I sums its layers' losses).
    g = _fixture()
    term = methods.build_terms({"vid_i": dict(weight=0.1, layers=("group1",),
                                              mean_network="authors", variance="authors")})[0]
    student = {"group1": jnp.asarray(_nhwc(g["student"]))}
    teacher = {"group1": jnp.asarray(_nhwc(g["teacher"]))}
    ctx = methods.example_context(jnp.zeros((2, 8, 8, 3)))
    loss = term.module.apply({"params": {"vid_group1": _params(g, g["variance_param"])}},
                             student, teacher, ctx)
    _close(loss, g["loss"], "VID-I term")
