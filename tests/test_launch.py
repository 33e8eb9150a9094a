"""launch.py and configs/: every config builds, overrides reach it, bad input is one message."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds(name):
    config = _load(name).get_config()
    runs = config.jobs.values() if "jobs" in config else [config]
    for run in runs:
        assert run.num_epochs > 0 and run.batch_size > 0


def test_cifar10_rows_and_the_recipe_of_the_cifar100_student():
    module = _load("cifar10_wrn16_1.py")
    for row in module.ROWS:
        config = module.get_config(row)
        assert set(config.distill) == set(module.ROWS[row])
    with pytest.raises(ValueError, match="Unknown row 'vid'"):
        module.get_config("vid")
    teacher = _load("cifar10_wrn40_2.py")
    assert teacher.get_config().num_epochs == 200
    cpu = teacher.get_config("cpu")
    assert (cpu.num_epochs, cpu.optimizer.schedule, cpu.data.source) == (15, "cosine",
                                                                         "image_folder")
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


def _launch(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                           f"--workdir={tmp_path / 'run'}", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_a_tfds_set_that_is_not_prepared_fails_with_one_message(tmp_path):
    result = _launch(tmp_path, "--config=configs/cifar100_wrn16_2.py",
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
