"""A workdir to trust: kills at each phase of saving, a cut metrics line, a full disk, two
processes at once, config drift, bad values and damaged teachers (vid_jax/workdir.py,
vid_jax/checkpoints.py, the loop)."""
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from vid_jax import methods, runner, training
from vid_jax.checkpoints import load_variables
from vid_jax.config_base import base_config, check_config
from vid_jax.errors import user_error
from vid_jax.metric_writer import MetricsFileError, read_metrics
from vid_jax.workdir import (
    WorkdirError,
    check_resume,
    check_writable,
    clear_outputs,
    config_changes,
    locked,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_train import tiny_config, tiny_dataset  # noqa: E402

EPOCHS = 4


def run_config(**changes) -> ml_collections.ConfigDict:
    # Checkpoints every 3 epochs: the best epoch is saved whatever the interval.
    return tiny_config(**{"num_epochs": EPOCHS, "checkpoint_every_epochs": 3, "num_devices": 1,
                          **changes})


def run_dataset():
    """The tiny data set with a validation split (which chooses the epoch a run exports)."""
    return dataclasses.replace(tiny_dataset(), validation=tiny_dataset(seed=1).test)


def without_timing(lines):
    return [{k: v for k, v in line.items() if k != "images_per_sec"} for line in lines]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """An uninterrupted run: the result every interrupted one must resume to."""
    workdir = str(tmp_path_factory.mktemp("whole") / "run")
    summary = training.train_and_evaluate(run_config(), workdir, dataset=run_dataset())
    return workdir, summary


def assert_same_run(workdir, whole):
    """`workdir` ended as the uninterrupted run did: metrics, final state, summary, and a
    best/ that holds the epoch its summary names, with that epoch's variables."""
    whole_dir, whole_summary = whole
    assert without_timing(read_metrics(os.path.join(workdir, "metrics.jsonl"))) == \
        without_timing(read_metrics(os.path.join(whole_dir, "metrics.jsonl")))
    jax.tree.map(np.testing.assert_array_equal, load_variables(workdir, "checkpoints"),
                 load_variables(whole_dir, "checkpoints"))
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["selected_epoch"] == whole_summary["selected_epoch"]
    assert os.listdir(os.path.join(workdir, "best")) == [str(summary["selected_epoch"])]
    jax.tree.map(np.testing.assert_array_equal, load_variables(workdir),
                 load_variables(whole_dir))
    leftovers = [d for _, dirs, _ in os.walk(workdir) for d in dirs if "tmp" in d]
    assert not leftovers, leftovers


# ---------------------------------------------------------------------------------------------
# SIGKILL at each phase of saving, and in the middle of a metrics line.

FAULT_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_workdir import run_config, run_dataset
    from orbax.checkpoint._src.path import async_path
    from vid_jax import checkpoints, metric_writer, training

    workdir, phase, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if phase.startswith("inside_"):  # all files written, the save's commit (a rename) not
        target = os.path.join(phase[len("inside_"):], str(epoch))
        rename = async_path.rename

        async def rename_or_die(src, dst):
            if str(dst).endswith(target):
                die()
            return await rename(src, dst)

        async_path.rename = rename_or_die
    elif phase == "between_latest_and_best":
        save_best = checkpoints.Checkpoints.save_best

        def save_best_or_die(self, e, *args):
            if e == epoch:
                die()
            return save_best(self, e, *args)

        checkpoints.Checkpoints.save_best = save_best_or_die
    elif phase == "in_metrics_line":
        write = metric_writer.MetricWriter.write

        def write_half_and_die(self, e, metrics):
            if e == epoch:
                with open(self.path, "a") as f:
                    f.write('{{"epoch": %d, "loss": 1.2' % e)
                die()
            return write(self, e, metrics)

        metric_writer.MetricWriter.write = write_half_and_die
    training.train_and_evaluate(run_config(), workdir, dataset=run_dataset())
""")
PHASES = ("inside_checkpoints", "between_latest_and_best", "inside_best", "in_metrics_line")


def test_a_run_killed_at_any_phase_of_saving_resumes_to_the_uninterrupted_run(
        whole_run, tmp_path):
    """Killed (SIGKILL) while an epoch that is the best so far is being saved: inside the
    train state's save, between it and the best save, inside the best save, or halfway
    through its metrics line. The same command then ends as the uninterrupted run."""
    lines = read_metrics(os.path.join(whole_run[0], "metrics.jsonl"))
    accuracies = [line["validation_accuracy"] for line in lines]
    new_bests = [e for e in range(2, EPOCHS) if accuracies[e - 1] > max(accuracies[:e - 1])]
    # An epoch past the first that improves and is not checkpointed for its interval alone.
    epoch = next((e for e in new_bests if e % 3), 1)
    script = tmp_path / "fault.py"
    script.write_text(FAULT_SCRIPT.format(tests=os.path.join(ROOT, "tests")))
    env = dict(os.environ, PYTHONPATH=ROOT)

    # All phases at once: the two cores share their start-up.
    killed = {phase: subprocess.Popen([sys.executable, str(script), str(tmp_path / phase),
                                       phase, str(epoch)], env=env) for phase in PHASES}
    for phase, process in killed.items():
        assert process.wait() == -9, f"{phase}: the run was not killed"
        assert not (tmp_path / phase / "summary.json").exists()
    assert list((tmp_path / "inside_checkpoints" / "checkpoints").glob("*tmp*"))
    for phase in PHASES:  # the same command again (here, in this process: no start-up)
        training.train_and_evaluate(run_config(), str(tmp_path / phase), dataset=run_dataset())
        assert_same_run(str(tmp_path / phase), whole_run)


def test_a_metrics_file_cut_or_damaged_is_repaired_or_refused_with_its_name(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "lo')
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl, line 2: not JSON .*rerun the "
                                               r"same command to resume"):
        read_metrics(str(path))
    assert read_metrics(str(path), drop_cut_last_line=True) == [{"epoch": 1, "loss": 2.0}]
    path.write_text('{"epoch": 1, "lo\n{"epoch": 2, "loss": 1.0}\n')
    with pytest.raises(MetricsFileError, match=r"line 1: not JSON .*damaged"):
        read_metrics(str(path), drop_cut_last_line=True)


# ---------------------------------------------------------------------------------------------
# A full disk, two processes, a workdir that cannot be written.

@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (room for metrics, not for a checkpoint) that can be enlarged; skipped
    where this process may not mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_when_there_is_room(
        whole_run, small_disk):
    workdir = str(small_disk / "run")
    with pytest.raises(OSError) as raised:
        training.train_and_evaluate(run_config(), workdir, dataset=run_dataset())
    assert raised.value.errno == errno.ENOSPC
    line = user_error(raised.value)
    assert line.startswith("the disk is full (") and "run the same command again" in line
    assert not [p for p in small_disk.rglob("*tmp*")]  # no half-written save left behind
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    training.train_and_evaluate(run_config(), workdir, dataset=run_dataset())
    assert_same_run(workdir, whole_run)


def test_one_process_at_a_time_trains_in_a_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    with locked(workdir):
        with pytest.raises(WorkdirError, match=r"run is in use by process \d+ on .*wait for it"):
            training.train_and_evaluate(run_config(num_epochs=1), workdir,
                                        dataset=run_dataset())
    assert os.listdir(workdir) == [".lock"]  # nothing else written


def test_a_workdir_that_is_a_file_or_read_only_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkdirError, match=r"is a file, not a directory"):
        check_writable(str(tmp_path / "file" / "run"))
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(WorkdirError, match=r"is not writable"):
            check_writable(str(tmp_path / "ro" / "run"))


# ---------------------------------------------------------------------------------------------
# Config drift.

def trained_workdir(tmp_path, config) -> str:
    """A workdir as a finished run leaves it (config.json, summary.json), without training."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "4").mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json_best_effort())
    (workdir / "summary.json").write_text("{}")
    return str(workdir)


@pytest.mark.parametrize("field, value, allowed", [
    ("optimizer.learning_rate", 0.5, True), ("num_epochs", 6, True),
    ("distill.kd.weight", 2.0, True), ("distill.kd.temperature", 2.0, True),
    ("seed", 1, False), ("batch_size", 16, False), ("model.width", 2, False),
    ("data.images_per_class", 5, False), ("distill.kd.method", "lwf", False)])
def test_a_rerun_with_another_config_names_the_fields_that_differ(tmp_path, field, value,
                                                                  allowed):
    config = run_config()
    config.distill.kd = dict(weight=1.0, temperature=4.0)
    workdir = trained_workdir(tmp_path, config)
    changed = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    runner._set_path(changed, field, value)
    assert [c.field for c in config_changes(workdir, changed)] == [field]
    how = "--allow_change=" + field if allowed else "cannot change in a run that has trained"
    with pytest.raises(WorkdirError, match=rf"\({field}: .* -> .*\): .*{how}"):
        check_resume(workdir, changed)
    if allowed:
        assert check_resume(workdir, changed, allow_changes=[field.split(".")[0]])
    else:
        with pytest.raises(WorkdirError, match="--restart"):
            check_resume(workdir, changed, allow_changes=[field])


def test_fields_that_change_nothing_or_that_a_newer_version_added_are_no_drift(tmp_path):
    config = run_config()
    workdir = trained_workdir(tmp_path, config)
    config.progress_bar, config.eval_every_epochs, config.eval_batch_size = True, 2, 4
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["task_loss_weight"]  # a field written before it existed: its default
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    assert config_changes(workdir, config) == []
    config.distill.kd = dict(weight=1.0)  # a new term: new variables in the state
    with pytest.raises(WorkdirError, match=r"distill.kd.weight: \(absent\) -> 1.0.*cannot"):
        check_resume(workdir, config, allow_changes=["distill"])


def test_allowed_changes_resume_under_the_new_values_and_are_recorded(whole_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(whole_run[0], workdir)
    longer = run_config(num_epochs=EPOCHS + 1)
    with pytest.raises(WorkdirError, match="num_epochs: 4 -> 5"):
        training.train_and_evaluate(longer, workdir, dataset=run_dataset())
    summary = training.train_and_evaluate(longer, workdir, dataset=run_dataset(),
                                          allow_changes=["num_epochs"])
    assert summary["epochs"] == EPOCHS + 1
    assert read_metrics(os.path.join(workdir, "config_changes.jsonl")) == [
        {"from_epoch": EPOCHS + 1, "field": "num_epochs", "was": EPOCHS, "now": EPOCHS + 1}]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["num_epochs"] == EPOCHS + 1


def test_a_pipeline_refuses_a_finished_job_whose_config_changed_or_starts_it_over(tmp_path):
    pipeline = ml_collections.ConfigDict(dict(job_order=("a",), jobs=dict(a=run_config())))
    [job] = runner.expand(pipeline, str(tmp_path))
    workdir = tmp_path / "a"
    (workdir / "checkpoints" / "4").mkdir(parents=True)
    (workdir / "config.json").write_text(job.config.to_json_best_effort())
    (workdir / "summary.json").write_text(json.dumps({"epochs": 4}))
    trained = []

    def train(config, w):
        trained.append(w)
        return {"epochs": config.num_epochs, "final_test_accuracy": 0.5,
                "best_test_accuracy": 0.5}

    pipeline.jobs.a.optimizer.learning_rate = 0.2
    with pytest.raises(WorkdirError, match=r"optimizer.learning_rate: 0.05 -> 0.2"):
        runner.run(pipeline, str(tmp_path), train_fn=train)
    assert trained == [] and (workdir / "summary.json").exists()
    runner.run(pipeline, str(tmp_path), train_fn=train, restart=True)
    assert trained == [str(workdir)] and not (workdir / "checkpoints").exists()


def test_clear_outputs_removes_only_what_a_run_writes(tmp_path):
    for name in ("checkpoints", "best", "stages"):
        (tmp_path / name).mkdir()
    for name in ("metrics.jsonl", "summary.json", "config.json", "notes.txt"):
        (tmp_path / name).write_text("")
    clear_outputs(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# Bad values, refused before anything is written.

@pytest.mark.parametrize("field, value, message", [
    ("data.images_per_class", 0, "at least 1 image per class"),
    ("batch_size", 0, "at least 1 image"), ("batch_size", -2, "at least 1 image"),
    ("checkpoint_every_epochs", 0, "save every N >= 1"),
    ("eval_every_epochs", 0, "evaluate every N >= 1"),
    ("num_epochs", 0, "at least 1 epoch"),
    ("data.labels_per_class", 0, "0 only trains with distillation"),
    ("data.validation_fraction", 1.0, r"in \[0, 1\)")])
def test_bad_values_are_refused_with_the_field(field, value, message):
    config = base_config()
    runner._set_path(config, field, value)
    with pytest.raises(ValueError, match=rf"config.{field}={value!r}: .*{message}"):
        check_config(config)


@pytest.mark.parametrize("entry, message", [
    (dict(weight=1.0, temperature=0.0), "temperature=0.0: a softmax temperature is a finite"),
    (dict(weight=1.0, temperature=-4.0), "temperature=-4.0"),
    (dict(weight=-1.0), r"weight=-1.0: a term's weight is a finite number >= 0")])
def test_bad_term_values_are_refused(entry, message):
    with pytest.raises(ValueError, match=rf"config.distill.kd.{message}"):
        methods.build_terms({"kd": entry})


def test_a_batch_larger_than_the_data_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the 48 training"):
        training.train_and_evaluate(run_config(batch_size=64, eval_batch_size=64),
                                    str(tmp_path / "run"), dataset=run_dataset())
    assert not (tmp_path / "run").exists()


def test_only_errors_raised_on_purpose_are_one_line():
    config = base_config()
    config.batch_size = 0
    with pytest.raises(ValueError) as ours:
        check_config(config)
    assert user_error(ours.value).startswith("config.batch_size=0")
    with pytest.raises(ValueError) as numpys:
        np.concatenate([])
    assert user_error(numpys.value) is None  # a library's failure keeps its traceback
    orbax_full = ValueError("RESOURCE_EXHAUSTED: Failed to write 9 bytes: No space left on "
                            "device [os_error_code='28']")
    assert user_error(orbax_full).startswith("the disk is full")


# ---------------------------------------------------------------------------------------------
# The teacher a run exports.

def test_a_teacher_whose_best_is_not_its_summarys_or_whose_checksum_fails_is_refused(
        whole_run, tmp_path):
    workdir = tmp_path / "teacher"
    shutil.copytree(whole_run[0], workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    epoch = summary["selected_epoch"]
    files = sorted(p for p in (workdir / "best").rglob("*") if p.is_file())
    (workdir / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(workdir)}\n"
        for p in files))
    assert load_variables(str(workdir))  # checks pass
    damaged = max(files, key=lambda p: p.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    with pytest.raises(WorkdirError, match=rf"{damaged.name} does not match its checksum"):
        load_variables(str(workdir))
    (workdir / "SHA256SUMS").unlink()
    (workdir / "summary.json").write_text(json.dumps(dict(summary, selected_epoch=epoch + 9)))
    with pytest.raises(WorkdirError, match=rf"names epoch {epoch + 9} best but best/ holds "
                                           rf"epoch {epoch}"):
        load_variables(str(workdir))


def test_a_truncated_image_in_a_folder_is_named(tmp_path):
    from PIL import Image

    from vid_jax.data import sources
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / "0.jpg")
    whole = (tmp_path / "train" / "a" / "0.jpg").read_bytes()
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"Cannot decode .*train/a/1.jpg: .*Replace or remove"):
        sources.load_image_folder(str(tmp_path))
