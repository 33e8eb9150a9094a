"""vid_jax.diagnostics: the measures against NumPy references, and the Fig. 2 panels' scaling.

Whole runs (trained heads, fitted heads, the CLI, the figures) are tested in test_notebooks.py.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vid_jax import losses
from vid_jax.diagnostics import analysis, measures


def test_vid_log_likelihood_is_the_gaussian_log_density_summed_over_channels():
    rng = np.random.default_rng(0)
    t, mu = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    variance = rng.uniform(0.2, 3.0, size=5)
    got = measures.vid_log_likelihood(jnp.asarray(t), jnp.asarray(mu), jnp.asarray(variance))
    want = stats.norm.logpdf(t, mu, np.sqrt(variance)).sum(-1)
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The training loss is its negative mean per element, without the Gaussian constant.
    nll = losses.vid_nll(jnp.asarray(t), jnp.asarray(mu), jnp.asarray(variance))
    np.testing.assert_allclose(np.mean(got) / 5, -float(nll) - 0.5 * math.log(2 * math.pi),
                               rtol=1e-5)


def _cka_reference(x, y):
    """Kornblith et al.'s feature-space form, in float64."""
    x = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(0)
    y = y.reshape(len(y), -1) - y.reshape(len(y), -1).mean(0)
    return (np.linalg.norm(y.T @ x) ** 2
            / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_linear_cka_matches_the_feature_form_and_its_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3, 3, 4))                      # maps, flattened per example
    y = np.tanh(x.reshape(40, -1) @ rng.normal(size=(36, 7))) + 0.3 * rng.normal(size=(40, 7))
    np.testing.assert_allclose(measures.linear_cka(jnp.asarray(x), jnp.asarray(y)),
                               _cka_reference(x, y), rtol=1e-4)
    np.testing.assert_allclose(measures.linear_cka(jnp.asarray(y), jnp.asarray(y)), 1.0,
                               rtol=1e-5)
    # Invariant to an orthogonal transform and an isotropic scaling of either side.
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    np.testing.assert_allclose(measures.linear_cka(jnp.asarray(x), jnp.asarray(3.0 * y @ q)),
                               _cka_reference(x, y), rtol=1e-4)
    # Unrelated features align less than related ones.
    unrelated = rng.normal(size=(40, 7))
    assert float(measures.linear_cka(jnp.asarray(x), jnp.asarray(unrelated))) < \
        _cka_reference(x, y)
    with pytest.raises(ValueError, match="same examples"):
        measures.linear_cka(jnp.zeros((4, 2)), jnp.zeros((5, 2)))


def test_example_images_are_one_per_class_first():
    labels = np.array([3, 3, 1, 0, 1, 2, 0])
    assert analysis.example_indices(labels, 3).tolist() == [3, 2, 5]  # classes 0, 1, 2
    assert analysis.example_indices(labels, 5).tolist() == [3, 2, 5, 0, 1]


def _diagnostics(log_q_a, log_q_b, magnitude):
    def run(name, log_q):
        return analysis.RunDiagnostics(name, name, {}, [], {"fitted_heads": {"g": log_q}},
                                       {}, np.zeros((1, 1)))

    return analysis.Diagnostics(
        teacher={}, pairs=[analysis.LayerPair("g", "g")],
        images=np.zeros((len(magnitude), 4, 4, 1), np.uint8), labels=np.arange(len(magnitude)),
        teacher_magnitude={"g": magnitude}, teacher_attention={}, cka_student_layers=[],
        cka_teacher_layers=[], runs=[run("a", log_q_a), run("b", log_q_b)], settings={})


def test_fig2_panels_share_one_scale_across_runs_and_images():
    # Run a is likelier everywhere than run b: on the shared scale its panels are brighter.
    log_q_b = np.array([[[-10.0, -8.0], [-9.0, -7.0]], [[-6.0, -6.0], [-6.0, -6.0]]])
    log_q_a = log_q_b + 3.0
    magnitude = np.array([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 7.0]]])
    panels = analysis.heatmap_panels(_diagnostics(log_q_a, log_q_b, magnitude))
    assert panels["range"]["g", "fitted_heads"] == (-10.0, -3.0)
    (name_a, _, a), (name_b, _, b) = panels["runs"]
    assert (name_a, name_b) == ("a", "b")
    assert a["g"].shape == (2, 4, 4)  # upsampled to the image
    assert a["g"].max() == pytest.approx(1.0) and b["g"].min() == pytest.approx(0.0)
    assert np.all(a["g"] > b["g"])
    # The teacher's magnitude spans [0, 1] in each image on its own.
    teacher = panels["teacher"]["g"]
    assert teacher.min(axis=(1, 2)) == pytest.approx([0.0, 0.0])
    assert teacher.max(axis=(1, 2)) == pytest.approx([1.0, 1.0])


def test_rescale_of_a_flat_range_is_zero_not_nan():
    assert np.all(np.asarray(measures.rescale(jnp.ones((2, 2)), 1.0, 1.0)) == 0.0)
    np.testing.assert_allclose(measures.rescale(jnp.array([0.0, 5.0, 20.0]), 0.0, 10.0),
                               [0.0, 0.5, 1.0])
