"""The method registry: config entries -> weighted terms, and the errors a bad config gets."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vid_jax import methods

GROUPS = ("group1", "group2", "group3")


def _layers(batch=2, channels=(4, 8, 16), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    maps = {f"group{i + 1}": rng.standard_normal((batch, 8 >> i, 8 >> i, c)).astype(np.float32)
            for i, c in enumerate(channels)}
    maps["logits"] = rng.standard_normal((batch, classes)).astype(np.float32)
    return maps


def test_build_terms_reads_weight_method_and_arguments():
    terms = methods.build_terms({
        "vid_i": dict(weight=2.0, layers=GROUPS),
        "soft": dict(method="kd", temperature=2.0),  # a term named apart from its method
    })
    assert [(t.name, t.weight, type(t.module).__name__) for t in terms] == [
        ("vid_i", 2.0, "VIDI"), ("soft", 1.0, "KD")]
    assert terms[1].module.temperature == 2.0
    assert methods.build_terms(None) == [] and methods.build_terms({}) == []


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(ValueError,
                       match=r"Unknown distillation method 'vid' in config.distill.vid; "
                                         r"registered methods: .*at, .*kd, .*vid_i"):
        methods.build_terms({"vid": dict(weight=1.0)})


def test_bad_arguments_name_the_term():
    with pytest.raises(ValueError, match="config.distill.kd: bad arguments for 'kd'"):
        methods.build_terms({"kd": dict(temprature=4.0)})


def test_layer_that_is_not_sown_lists_the_sown_ones():
    terms = methods.build_terms({"vid_i": dict(layers=("group1", "block7"))})
    with pytest.raises(ValueError,
                       match=r"reads student layer\(s\) \['block7'\], which the student "
                                         r"model does not sow; it sows: group1, group2, logits"):
        methods.check_layers(terms, ["group1", "group2", "logits"], ["group1", "group2", "logits"])


def test_distillation_without_teacher_is_refused():
    terms = methods.build_terms({"kd": {}})
    with pytest.raises(ValueError, match="needs a teacher, but config.teacher is not set"):
        methods.check_layers(terms, ["logits"], None)


def test_layer_lists_of_different_length_are_refused():
    term = methods.build_terms({"at": dict(layers=GROUPS, teacher_layers=("group3",))})[0]
    with pytest.raises(ValueError, match="3 student layers but 1 teacher layers"):
        methods.check_layers([term], list(GROUPS), list(GROUPS))


@pytest.mark.parametrize("name,entry", [
    ("vid_i", dict(layers=GROUPS)), ("kd", {}), ("fitnet", dict(layers=("group2",))),
    ("at", dict(layers=GROUPS))])
def test_every_method_gives_a_finite_scalar_with_gradients(name, entry):
    term = methods.build_terms({name: entry})[0]
    student, teacher = _layers(channels=(4, 8, 16), seed=0), _layers(channels=(8, 16, 32), seed=1)
    ctx = methods.example_context(jnp.zeros((2, 8, 8, 3)))
    params = term.module.init(jax.random.key(0), student, teacher, ctx).get("params", {})
    value, grads = jax.value_and_grad(
        lambda s: term.module.apply({"params": params}, s, teacher, ctx))(student)
    assert value.shape == () and bool(jnp.isfinite(value))
    read = set(term.module.student_layer_names)
    for layer, g in grads.items():
        # Gradients reach exactly the layers the term says it reads.
        assert bool(jnp.any(g != 0)) == (layer in read), layer


def test_vid_i_is_the_sum_of_its_per_layer_heads():
    from vid_jax import heads
    term = methods.build_terms({"vid_i": dict(layers=GROUPS)})[0]
    student, teacher = _layers(channels=(4, 8, 16)), _layers(channels=(8, 16, 32), seed=1)
    ctx = methods.example_context(jnp.zeros((2, 8, 8, 3)))
    params = term.module.init(jax.random.key(0), student, teacher, ctx)["params"]
    total = term.module.apply({"params": params}, student, teacher, ctx)
    parts = [heads.VIDHead(teacher[g].shape[-1]).apply({"params": params[f"vid_{g}"]},
                                                        student[g], teacher[g]) for g in GROUPS]
    np.testing.assert_allclose(total, sum(parts), rtol=1e-6)


def test_module_prints_one_line_per_method():
    out = subprocess.run([sys.executable, "-m", "vid_jax.methods"], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()
    assert out[0].split()[:2] == ["method", "matches"]
    assert sorted(line.split()[0] for line in out[1:]) == sorted(methods.METHODS)
    # The list, by config name: none may go missing from the registry.
    assert {"vid_i", "vid_lp", "kd", "fitnet", "at", "nst", "lwf", "ab", "fsp", "kd_svd", "rkd",
            "sp", "cc", "pkt", "crd", "ft", "od", "dml", "ie_kd", "ie_at", "ie_ft", "ie_od",
            "ie_dml"} <= set(methods.METHODS)


def test_the_readme_has_the_registrys_table():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "README.md")
    with open(readme) as f:
        assert methods.markdown() in f.read(), (
            "README.md's methods table is stale: paste `python -m vid_jax.methods --markdown`")


def test_stages_come_from_the_terms_once_each_with_config_lengths():
    terms = methods.build_terms({"fitnet": {}, "hint2": dict(method="fitnet"), "kd": {}})
    stages = methods.stages_of(terms, {"fitnet_hint": 3})
    assert [(s.name, s.epochs, s.trains_student, s.trains_heads) for s in stages] == [
        ("fitnet_hint", 3, True, None)]
    assert methods.stages_of(methods.build_terms({"kd": {}})) == []
    with pytest.raises(ValueError, match=r"config.stage_epochs names \['hints'\], which no term "
                                         r"declares; the terms' stages: \['fitnet_hint'\]"):
        methods.stages_of(terms, {"hints": 3})
