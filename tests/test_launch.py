"""launch.py and configs/: every config builds, overrides reach it, bad input is one message."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/common.py is what configs share, not a config.
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and f not in ("__init__.py", "common.py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds(name):
    from vid_jax import runner
    config = _load(name).get_config()
    for run in runner.expand(config, "workdir"):
        assert run.config.num_epochs > 0 and run.config.batch_size > 0


def test_data_paths_are_config_values_not_library_code():
    for directory, _, files in os.walk(os.path.join(ROOT, "vid_jax")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(directory, name)) as f:
                    code = f.read()
                # (a docstring may say where a file came from; no default may point there)
                assert '"../shared' not in code and "'../shared" not in code, name


def test_cifar10_rows_and_the_recipe_of_the_cifar100_student():
    module, common = _load("cifar10_wrn16_1.py"), _load("common.py")
    assert common.TABLE1_ROWS == ("student", "kd", "fitnet", "at", "nst", "vid_i", "kd+at",
                                  "kd+vid_i")
    for row in common.TABLE1_ROWS:
        config = module.get_config(row)
        assert set(config.distill) == set([] if row == "student" else row.split("+"))
        assert config.teacher.get("workdir") == (None if row == "student" else
                                                 "teachers/cifar10_wrn40_2")
        assert config.data.path == "../shared/data/cifar10-jpeg"
    assert module.get_config("nst").distill.nst.weight == 25.0
    with pytest.raises(ValueError, match="Unknown row 'vid'"):
        module.get_config("vid")
    teacher = _load("cifar10_wrn40_2.py")
    assert teacher.get_config().num_epochs == 200
    cpu = teacher.get_config("cpu")
    assert (cpu.num_epochs, cpu.optimizer.schedule, cpu.data.source) == (15, "cosine",
                                                                         "image_folder")
    assert teacher.get_config("lossless").data.path == "../shared/data/cifar10-lossless.npz"
    assert cpu.model.to_dict() == dict(name="wrn", depth=40, width=2)
    with pytest.raises(ValueError, match="Unknown schedule 'fast'"):
        teacher.get_config("fast")
    config = _load("cifar100_wrn16_2.py").get_config()
    assert (config.num_epochs, config.batch_size, config.optimizer.learning_rate) == (240, 64, 0.05)
    assert tuple(config.optimizer.boundaries_epochs) == (150, 180, 210)
    assert config.distill.vid_i.weight == 1.0 and config.task_loss_weight == 1.0


def test_the_method_zoo_has_every_method_and_the_papers_combinations():
    from vid_jax import methods
    module = _load("method_zoo.py")
    config = module.get_config()
    assert set(config.job_order) == {"teacher", "student", *methods.METHODS,
                                     "kd+at", "kd+vid_i", "lwf+fitnet", "vid_lp+vid_i"}
    assert set(config.jobs["lwf+fitnet"].distill) == {"lwf", "fitnet"}
    assert dict(config.jobs["lwf+fitnet"].stage_epochs) == {"fitnet_hint": module.STAGE_EPOCHS}
    assert config.jobs["kd+at"].teacher.workdir == "{workdir}/teacher"
    assert config.jobs["dml"].teacher.model is None  # online: no fixed teacher
    assert list(module.get_config("at,kd+vid_i").job_order) == [
        "teacher", "student", "at", "kd+vid_i"]
    with pytest.raises(ValueError, match=r"Unknown methods \['vid'\]"):
        module.get_config("kd+vid")


def _launch(tmp_path, *args, workdir="run"):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                           f"--workdir={tmp_path / workdir}", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_a_tfds_set_that_is_not_prepared_fails_with_one_message(tmp_path):
    result = _launch(tmp_path, "--config=configs/cifar100_wrn40_2.py",
                     f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.download=False")
    assert result.returncode == 2
    assert result.stderr.startswith("error: TFDS data set 'cifar100' is not prepared in")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no TFDS log lines
    assert "--config.data.data_dir" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_overrides_of_unset_fields_reach_the_run(tmp_path):
    # data.path and data.images_per_class default to None; they must still be settable.
    result = _launch(tmp_path, "--config=configs/cifar10_wrn16_1.py:student",
                     "--config.data.source=image_folder", f"--config.data.path={tmp_path}/none",
                     "--config.data.images_per_class=100", "--config.num_devices=1")
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path}/none" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_config_argument_or_override_is_one_message(tmp_path):
    for args, message in [
            (["--config=configs/cifar10_wrn16_1.py:kd_at"], "error: Unknown row 'kd_at'; "),
            (["--config=configs/nope.py"], "error: --config=configs/nope.py: [Errno 2] No such "
                                           "file"),
            (["--config=configs/quickstart.py", "--config.jobs.teacher.num_epoch=2"],
             "error: --config.jobs.teacher.num_epoch=2: the config has no field 'num_epoch'"),
            (["--config=configs/quickstart.py", "--config.jobs.teacher.num_epochs=2.5"],
             "error: flag --config.jobs.teacher.num_epochs=2.5: "),
            (["--config=configs/method_zoo.py:kd", "--config.jobs.at.num_epochs=2"],
             "error: --config.jobs.at.num_epochs=2: the config has no field 'at'.")]:
        result = _launch(tmp_path, *args)
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_the_quickstart_pipeline_through_launch_reads_finished_runs(tmp_path):
    # Training is tested in test_train.py and test_experiments.py (and `make quickstart` runs
    # this config); here: launch.py lists the pipeline's runs, and reads the finished ones.
    listed = _launch(tmp_path, "--config=configs/quickstart.py", "--list",
                     "--config.jobs.student_vid_i.distill.vid_i.weight=2")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{tmp_path}/run/teacher  15 epochs  distill: -",
        f"{tmp_path}/run/student  80 epochs  distill: -",
        f"{tmp_path}/run/student_vid_i  80 epochs  distill: vid_i (weight 2.0)"]
    for i, job in enumerate(("teacher", "student", "student_vid_i")):
        os.makedirs(tmp_path / "run" / job)
        with open(tmp_path / "run" / job / "summary.json", "w") as f:
            json.dump({"final_test_accuracy": 0.9 + i / 100, "best_test_accuracy": 0.95,
                       "epochs": 1}, f)
    done = _launch(tmp_path, "--config=configs/quickstart.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("finished earlier") == 3 and "training in" not in done.stdout
    assert "| student_vid_i | WRN-10-1, 10 digits per class, VID-I from the teacher | 92.00 | " \
           "95.00 |" in done.stdout
