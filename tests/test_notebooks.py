"""The notebooks run top to bottom (nbclient), and the diagnostics CLI, on tiny settings.

One module-scoped pipeline, trained by executing notebooks/quickstart.ipynb for one epoch per run
(a WRN-10-1 teacher), serves the diagnostics notebook, the CLI and, as its teacher, the Colab
notebook (digits instead of CIFAR-100, one epoch). The Colab notebook runs in a process of its
own beside the diagnostics tests, so that the two use both cores of a 2-core machine.
"""
import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest
from run_notebook import execute, outputs

from vid_jax import diagnostics, methods
from vid_jax.diagnostics.__main__ import main as diagnostics_main

TINY_QUICKSTART = {
    "jobs.teacher.num_epochs": 1, "jobs.student.num_epochs": 1,
    "jobs.student_vid_i.num_epochs": 1,
    # The student_vid_i job's teacher.model is the same ConfigDict: it follows.
    "jobs.teacher.model.depth": 10, "jobs.teacher.model.width": 1,
}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("quickstart"))
    book = execute("quickstart", {"WORKDIR": workdir, "OVERRIDES": TINY_QUICKSTART})
    return workdir, book


@pytest.fixture(scope="module")
def colab(quickstart, tmp_path_factory):
    """The Colab notebook on digits, one epoch, from the quickstart's teacher, started in the
    background; yields (its workdir, the process, the executed notebook's path)."""
    workdir, _ = quickstart
    root = tmp_path_factory.mktemp("colab")
    parameters = {
        "WORKDIR": str(root / "runs"), "NUM_EPOCHS": 1, "FIT_STEPS": 10, "NUM_EXAMPLES": 32,
        "TEACHER_WORKDIR": os.path.join(workdir, "teacher"), "TRAIN_STUDENT_ALONE": False,
        "DATA": {"source": "digits", "mean": None, "std": None, "images_per_class": 7}}
    out = root / "executed.ipynb"
    process = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "run_notebook.py"),
         "colab_cifar100", json.dumps(parameters), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield str(root / "runs"), process, out
    if process.poll() is None:  # a test before the Colab one failed: do not leave it running
        process.kill()
    process.wait()


def test_the_quickstart_notebook_trains_the_pipeline_and_draws_its_curves(quickstart):
    workdir, book = quickstart
    for name in ("teacher", "student", "student_vid_i"):
        summary = json.load(open(os.path.join(workdir, name, "summary.json")))
        assert summary["epochs"] == 1
    text, images = outputs(book)
    assert "| student_vid_i | WRN-10-1, 10 digits per class, VID-I from the teacher |" in text
    assert images == 1  # the learning curves


def test_the_diagnostics_notebook_on_the_quickstart_runs(quickstart, colab):
    # `colab` starts the Colab notebook beside this test (and the CLI's).
    workdir, _ = quickstart
    book = execute("diagnostics", {"WORKDIR": workdir, "FIT_STEPS": 20, "NUM_EXAMPLES": 64,
                                   "NUM_IMAGES": 2})
    _, images = outputs(book)
    assert images == 5  # Fig. 2, data term, CKA, attention, learning curves
    out = os.path.join(workdir, "student_vid_i", "diagnostics")
    for name in ("fig2_heatmaps", "vid_data_term", "cka", "attention", "learning_curves"):
        assert os.path.getsize(os.path.join(out, f"{name}.png")) > 1000
    numbers = json.load(open(os.path.join(out, "diagnostics.json")))
    assert sorted(numbers["runs"]) == ["student", "student_vid_i"]
    # The student alone has only fitted heads; the VID student its trained ones too, whose data
    # term is what the VID-I term itself gives with the checkpoint's heads on the same 64 test
    # images: E[log q] per element = -vid_nll - 0.5 log(2 pi), pair by pair.
    assert set(numbers["runs"]["student"]["vid_data_term"]["group1"]) == {"fitted_heads"}
    run = diagnostics.load_run(os.path.join(workdir, "student_vid_i"))
    x, x_teacher = run.inputs(run.dataset.test.images[:64])
    student = diagnostics.model_layers(run.student, run.student_variables, x)
    taught = diagnostics.model_layers(run.teacher, run.teacher_variables, x_teacher)
    term = run.term("vid_i")
    for pair in ("group1", "group2", "group3"):
        loss = term.module.clone(layers=(pair,)).apply(
            {"params": {f"vid_{pair}": run.head_params["vid_i"][f"vid_{pair}"]}}, student, taught,
            methods.example_context(x))
        bound = numbers["runs"]["student_vid_i"]["vid_data_term"][pair]
        np.testing.assert_allclose(bound["trained_heads"]["per_element"],
                                   -float(loss) - 0.5 * np.log(2 * np.pi), rtol=1e-5)


def test_the_diagnostics_cli_writes_json_and_figures(quickstart, tmp_path, capsys):
    workdir, _ = quickstart
    out = tmp_path / "out"
    code = diagnostics_main([os.path.join(workdir, "student"), "--teacher",
                             os.path.join(workdir, "teacher"), "--out", str(out),
                             "--fit_steps=50", "--num_examples=32", "--num_images=1"])
    assert code == 0
    numbers = json.load(open(out / "diagnostics.json"))
    run = numbers["runs"]["student"]
    assert numbers["layer_pairs"] == [["group1", "group1"], ["group2", "group2"],
                                      ["group3", "group3"]]
    for pair in ("group1", "group2", "group3"):
        fit = run["vid_head_fit"]["held_out_loss"][pair]
        assert fit["best"] < fit["first"]  # the fit learned something on held-out images
        assert 0.0 < run["linear_cka"][pair] <= 1.0 + 1e-6
    assert len(run["linear_cka_matrix"]) == 5  # group1-3, features, logits
    assert "| student |" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted(
        ["diagnostics.json", "fig2_heatmaps.png", "vid_data_term.png", "cka.png",
         "attention.png", "learning_curves.png"])


def test_the_diagnostics_cli_refuses_bad_input_before_writing(quickstart, tmp_path, capsys):
    workdir, _ = quickstart
    out = tmp_path / "out"
    assert diagnostics_main([workdir, "--out", str(out)]) == 2  # the pipeline, not a run
    assert "is not a run's workdir (no config.json)" in capsys.readouterr().err
    # A student trained alone needs a teacher to be diagnosed against.
    assert diagnostics_main([os.path.join(workdir, "student"), "--out", str(out)]) == 2
    assert "trained without a teacher" in capsys.readouterr().err
    assert not out.exists()


def test_the_colab_notebook_on_digits(colab):
    runs, process, out = colab
    log, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log[-5000:]
    _, images = outputs(nbformat.read(out, as_version=4))
    assert images == 5  # Fig. 2, data term, CKA, attention, learning curves
    assert sorted(os.listdir(runs)) == ["student_vid_i"]
    numbers = json.load(open(os.path.join(runs, "student_vid_i", "diagnostics",
                                          "diagnostics.json")))
    assert list(numbers["runs"]) == ["student_vid_i"]
    config = json.load(open(os.path.join(runs, "student_vid_i", "config.json")))
    assert config["model"] == {"name": "wrn", "depth": 16, "width": 2}  # the CIFAR-100 student
