"""The paper's grids as configs, and the one runner of runs, pipelines and grids: cells,
resuming, the results table, the committed results' commands, bad input."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from vid_jax import runner
from vid_jax.config_base import base_config, digits_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRIDS = ("cifar10_table1", "cifar10_table1b", "cifar100_table2", "cifar10_cnn_mlp")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_command(argv):
    """(config, workdir flag, overridden fields) of a launch.py command line, parsed as
    launch.py parses it."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    return values.config, values.workdir, config_flags.get_override_values(values["config"])


@pytest.mark.parametrize("scale", ("small", "full"))
@pytest.mark.parametrize("name", GRIDS)
def test_every_cell_of_every_grid_builds(name, scale):
    config = _load(name).get_config(scale)
    runs = runner.expand(config, "w")
    table = config.table
    assert len(runs) == len(table.rows) * len(table.columns) * len(table.seeds)
    assert len({r.workdir for r in runs}) == len(runs)
    for run in runs:
        assert run.config.num_epochs > 0 and run.config.seed == run.seed
        assert run.workdir == os.path.join("w", run.row, run.column, f"seed{run.seed}")
        if run.config.distill:
            assert run.config.teacher.model.name == "wrn" and run.config.teacher.workdir
        else:
            assert not run.config.teacher.get("model")


def test_table1a_is_the_papers_grid():
    config = _load("cifar10_table1").get_config()
    assert list(config.table.rows) == ["student", "kd", "fitnet", "at", "nst", "vid_i", "kd+at",
                                       "kd+vid_i"]
    assert list(config.table.columns) == ["M=5000", "M=1000", "M=500", "M=100"]
    assert config.table.paper["vid_i"]["M=100"] == 81.59
    assert config.table.paper["student"]["M=100"] == 58.84
    cell = lambda column: runner.grid_cell(config, "kd+vid_i", column, 1)
    assert cell("M=100").data.images_per_class == 100 and cell("M=100").data.subset_seed == 1
    assert cell("M=100").num_epochs == 61 and cell("M=5000").num_epochs == 1
    assert cell("M=100").eval_every_epochs == cell("M=100").checkpoint_every_epochs == 6
    assert set(cell("M=100").distill) == {"kd", "vid_i"}
    full = runner.grid_cell(_load("cifar10_table1").get_config("full"), "student", "M=500", 0)
    assert (full.num_epochs, full.optimizer.schedule) == (200, "piecewise")
    assert full.model.depth == 16 and full.model.width == 1


def _contains(new, old, path=""):
    """Every field of `old` (a JSON dict) is in `new` with the same value."""
    for key, value in old.items():
        assert key in new, f"{path}{key}"
        if isinstance(value, dict):
            _contains(new[key], value, f"{path}{key}.")
        else:
            assert new[key] == value, f"{path}{key}: {new[key]} != {value}"


def test_the_cells_are_those_the_old_grids_built():
    # tests/data/old_grid_cells.json: cells of vid_jax/experiments/grids.py before the grids
    # became configs (all 368 cells of both scales were compared when they did).
    fixture = json.load(open(os.path.join(ROOT, "tests", "data", "old_grid_cells.json")))
    for key, old in fixture["cells"].items():
        name, scale, row, column, seed = key.split("/")
        config = _load(name).get_config(scale)
        new = runner.grid_cell(config, row, column, int(seed.removeprefix("seed")))
        _contains(json.loads(new.to_json_best_effort()), old, f"{key}: ")


def test_a_row_is_defined_once_for_the_single_run_and_the_grid():
    single, grid = _load("cifar10_wrn16_1"), _load("cifar10_table1").get_config("full")
    assert list(grid.table.rows) == list(_load("common").TABLE1_ROWS)
    for row in grid.table.rows:
        cell = runner.grid_cell(grid, row, "M=100", 0)
        cell.data.images_per_class, cell.progress_bar = None, True  # the column, the grid's log
        assert cell.to_json_best_effort() == single.get_config(row).to_json_best_effort(), row
    with pytest.raises(ValueError, match="Unknown row 'kd_at'; choose one of student, kd"):
        single.get_config("kd_at")


def test_bad_selections_name_what_exists():
    config = _load("cifar10_table1").get_config()
    with config.unlocked():
        config.rows = "vid"
    with pytest.raises(ValueError, match=r"--config.rows: grid cifar10_table1 has no row "
                                         r"\['vid'\]; its rows are student, kd"):
        runner.expand(config, "w")
    config = _load("cifar10_table1").get_config()
    with config.unlocked():
        config.columns, config.seeds = "M=7", "0"
    with pytest.raises(ValueError, match=r"no column \['M=7'\]"):
        runner.expand(config, "w")
    with config.unlocked():
        config.columns, config.seeds = "M=100", "0,a"
    with pytest.raises(ValueError, match="--config.seeds=0,a: give comma-separated integers"):
        runner.expand(config, "w")
    with pytest.raises(ValueError, match="Unknown scale 'tiny'"):
        _load("cifar10_table1").get_config("tiny")


def test_an_override_that_reaches_no_run_is_an_error():
    config = _load("cifar10_table1").get_config()
    with config.unlocked():
        config.rows = "student,kd"
    runs = runner.expand(config, "w")
    runner.check_overrides(config, ["terms.kd.weight", "cell.num_epochs", "rows"], runs)
    with pytest.raises(ValueError, match=r"--config.terms.vid_i.weight: no row to run has the "
                                         r"term 'vid_i' \(rows: student,kd\)"):
        runner.check_overrides(config, ["terms.vid_i.weight"], runs)
    with config.unlocked():
        config.rows = "student"
    with pytest.raises(ValueError, match="--config.teacher.workdir: no row to run has a teacher"):
        runner.check_overrides(config, ["teacher.workdir"], runner.expand(config, "w"))
    with pytest.raises(ValueError, match="column 'M=500' is not run"):
        runner.check_overrides(config, ["table.changes.M=500.data.images_per_class"],
                               runner.expand(config, "w")[:1])
    zoo = _load("method_zoo").get_config("kd")
    with pytest.raises(ValueError, match=r"--config.jobs.at.num_epochs: job 'at' is not in "
                                         r"config.job_order \(teacher, student, kd\)"):
        runner.check_overrides(zoo, ["jobs.at.num_epochs"], runner.expand(zoo, "w"))


# ---------------------------------------------------------------------------------------------
# The runner, on a toy grid, a pipeline and a single run (a fake trainer writes summaries).

def _toy_grid(teacher_workdir=None, cell=None):
    teacher = ml_collections.ConfigDict(dict(model=dict(name="wrn", depth=10, width=2),
                                             workdir=teacher_workdir))
    return runner.grid_config(
        "toy", "Toy", cell or base_config(), ("student", "kd"), {"a": {}, "b": {}},
        terms={"kd": dict(weight=1.0, temperature=4.0)}, teacher=teacher,
        seeds=(0, 1), scale="small", paper={"kd": {"a": 50.0}}, teacher_hint="Train it with X.",
        runs_per_step=1)


def _fake_train(calls, fail_after=None):
    """Writes a summary.json as train_and_evaluate would; accuracy depends on the cell."""
    def train_fn(config, workdir):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt  # the run is killed here
        calls.append(workdir)
        parts = workdir.split(os.sep)
        row, column, seed = parts[-3:] if parts[-1].startswith("seed") else ("", "", "seed0")
        acc = ({"student": 0.5, "kd": 0.6}.get(row, 0.7) + 0.1 * int(seed[-1])
               + 0.01 * (column == "b"))
        summary = {"final_test_accuracy": acc, "best_test_accuracy": acc + 0.05, "epochs": 1}
        os.makedirs(workdir)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary
    return train_fn


def _teacher_checkpoint(tmp_path):
    os.makedirs(tmp_path / "teacher" / "best")
    return str(tmp_path / "teacher")


def test_cells_that_see_the_same_batches_train_together(tmp_path):
    """Rows of one column and seed share a step; other seeds or data do not; a group holds
    at most runs_per_step cells; the summaries come back to each cell."""
    config = _toy_grid(_teacher_checkpoint(tmp_path))
    config.table.changes["b"] = {"data": {"images_per_class": 5}}
    config.runs_per_step = 8
    config.results = str(tmp_path / "r" / "toy.json")
    runs = runner.expand(config, str(tmp_path / "grid"))
    names = lambda groups: [[r.name for r in g] for g in groups]  # noqa: E731
    assert names(runner.step_groups(runs, 8)) == [
        ["student/a/seed0", "kd/a/seed0"], ["student/a/seed1", "kd/a/seed1"],
        ["student/b/seed0", "kd/b/seed0"], ["student/b/seed1", "kd/b/seed1"]]
    assert names(runner.step_groups(runs, 1)) == [[r.name] for r in runs]

    calls, groups = [], []
    fake = _fake_train(calls)

    def together(configs, workdirs):
        groups.append(len(configs))
        return [fake(c, w) for c, w in zip(configs, workdirs)]

    outcome = runner.run(config, str(tmp_path / "grid"), "cmd", fake, together_fn=together)
    assert groups == [2, 2, 2, 2] and len(calls) == 8
    assert outcome.summaries["kd/b/seed1"]["final_test_accuracy"] == pytest.approx(0.71)


def test_an_interrupted_grid_resumes_and_tabulates_every_cell(tmp_path):
    config, workdir = _toy_grid(_teacher_checkpoint(tmp_path)), str(tmp_path / "grid")
    config.results = str(tmp_path / "r" / "toy.json")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, workdir, "cmd", _fake_train(calls, fail_after=3))
    assert len(calls) == 3
    partial = json.load(open(config.results))
    assert len(partial["cells"]) == 3  # the table of what was done survives the interruption
    # One seed has no spread: none is shown rather than a made-up 0.00.
    assert partial["table"]["student"]["b"]["last_std"] is None
    assert "| student | 55.00 +- 7.07 / 60.00 [2] (-) | 51.00 / 56.00 [1] (-) |" in open(
        str(tmp_path / "r" / "toy.md")).read()

    outcome = runner.run(config, workdir, "cmd", _fake_train(calls))
    assert len(calls) == 8 and len(set(calls)) == 8  # the 5 others, none twice
    report = outcome.report
    kd_a = report["table"]["kd"]["a"]
    assert kd_a["seeds"] == [0, 1] and kd_a["paper"] == 50.0
    np.testing.assert_allclose(kd_a["last_mean"], 65.0)
    np.testing.assert_allclose(kd_a["last_std"], np.std([60.0, 70.0], ddof=1))
    np.testing.assert_allclose(kd_a["best_mean"], 70.0)
    table = open(str(tmp_path / "r" / "toy.md")).read()
    assert "| kd | 65.00 +- 7.07 / 70.00 [2] (50.00) | 66.00 +- 7.07 / 71.00 [2] (-) |" in table
    assert table in outcome.text and "8 cells done" in outcome.text
    assert json.load(open(config.results)) == report
    assert report["cells"][0]["workdir"] == os.path.join(workdir, "student", "a", "seed0")

    again = []
    runner.run(config, workdir, "cmd", _fake_train(again))
    assert again == []  # a finished grid trains nothing


def test_a_subset_run_keeps_the_rest_of_the_grid_in_the_table(tmp_path):
    config, workdir = _toy_grid(_teacher_checkpoint(tmp_path)), str(tmp_path / "grid")
    config.results = str(tmp_path / "toy.json")
    config.rows = "student"
    runner.run(config, workdir, "cmd", _fake_train([]))
    config.rows, config.columns = "kd", "a"
    report = runner.run(config, workdir, "cmd", _fake_train([])).report
    assert set(report["table"]) == {"student", "kd"} and len(report["cells"]) == 6


def test_a_missing_teacher_fails_before_any_run_trains(tmp_path):
    config = _toy_grid(str(tmp_path / "no_teacher"))
    config.results = str(tmp_path / "toy.json")
    calls = []
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*no_teacher/best\. "
                                                r"Train it with X\. Or set --config.teacher"):
        runner.run(config, str(tmp_path / "grid"), "cmd", _fake_train(calls))
    assert calls == [] and not (tmp_path / "grid").exists() and not (tmp_path / "toy.json").exists()
    # The student rows need no teacher.
    config.rows = "student"
    runner.run(config, str(tmp_path / "grid"), "cmd", _fake_train(calls))
    assert len(calls) == 4


def test_a_pipeline_and_a_single_run_follow_the_same_resume_rule(tmp_path):
    config = _load("quickstart").get_config()
    runs = runner.expand(config, str(tmp_path))
    assert [r.name for r in runs] == ["teacher", "student", "student_vid_i"]
    # The teacher a later job distills from is trained first, by the pipeline: no checkpoint yet.
    assert runs[2].config.teacher.workdir == str(tmp_path / "teacher")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        runner.run(config, str(tmp_path), "", _fake_train(calls, fail_after=2))
    outcome = runner.run(config, str(tmp_path), "", _fake_train(calls))
    assert calls == [str(tmp_path / n) for n in ("teacher", "student", "student_vid_i")]
    assert "| student_vid_i | WRN-10-1, 10 digits per class, VID-I from the teacher | 70.00 | " \
           "75.00 |" in outcome.text
    single = config.jobs.student
    calls = []
    first = runner.run(single, str(tmp_path / "one"), "", _fake_train(calls))
    again = runner.run(single, str(tmp_path / "one"), "", _fake_train(calls))
    assert calls == [str(tmp_path / "one")] and first.summaries == again.summaries
    assert json.loads(again.text)["final_test_accuracy"] == 0.7


def test_real_training_through_the_runner(tmp_path):
    config = _toy_grid(cell=digits_recipe(depth=10, width=1, images_per_class=4, num_epochs=1))
    config.rows, config.columns, config.seeds = "student", "a", "0"
    config.results = str(tmp_path / "toy.json")
    report = runner.run(config, str(tmp_path / "grid"), "cmd").report  # the real trainer
    summary = json.load(open(tmp_path / "grid" / "student" / "a" / "seed0" / "summary.json"))
    assert summary["epochs"] == 1
    np.testing.assert_allclose(report["table"]["student"]["a"]["last_mean"],
                               100 * summary["final_test_accuracy"])


# ---------------------------------------------------------------------------------------------
# The committed results: their commands are launch.py's, and reproduce their cells and tables.

RESULTS = sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.json"), recursive=True))


@pytest.mark.parametrize("path", [os.path.relpath(p, ROOT) for p in RESULTS])
def test_committed_results_are_what_their_commands_make(path):
    report = json.load(open(os.path.join(ROOT, path)))
    command = report["command"]
    assert command.startswith("python launch.py --config=configs/")
    config, workdir, overrides = _from_command(command.split()[1:])
    assert config.results == path
    workdir = workdir or runner.default_workdir(config, "")
    runs = runner.expand(config, workdir)
    runner.check_overrides(config, overrides, runs)
    assert [c["workdir"] for c in report["cells"]] == [r.workdir for r in runs]
    assert (report["grid"], report["scale"]) == (config.name, config.scale)
    with open(os.path.splitext(os.path.join(ROOT, path))[0] + ".md") as f:
        assert runner.markdown(config, report["table"], command) == f.read()
    assert runner.aggregate(config, report["cells"]) == report["table"]


# ---------------------------------------------------------------------------------------------
# Through launch.py.

def _launch(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_launch_lists_a_grids_cells_and_refuses_bad_input_in_one_line():
    listed = _launch("--config=configs/cifar10_table1.py", "--list", "--config.columns=M=100",
                     "--config.rows=vid_i,kd", "--config.terms.vid_i.weight=4.0")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].startswith("workdirs/experiments/cifar10_table1_small/vid_i/M=100/seed0  61 "
                               "epochs  distill: vid_i (weight 4.0)")
    assert lines[2].endswith("/kd/M=100/seed0  61 epochs  distill: kd (weight 1.0)")
    assert len(lines) == 4
    bad = {
        "--config.rows=vid": "error: --config.rows: grid cifar10_table1 has no row ['vid']; its "
                             "rows are student, kd,",
        "--config.cell.num_epoch=3": "error: --config.cell.num_epoch=3: the config has no field "
                                     "'num_epoch' (did you mean \"num_epochs\"",
        "--config.cell.num_epochs=x": "error: flag --config.cell.num_epochs=x: invalid literal",
        "--config.terms.vid_i.weight=4": "error: --config.terms.vid_i.weight: no row to run has "
                                         "the term 'vid_i' (rows: kd)",
    }
    for arg, message in bad.items():
        result = _launch("--config=configs/cifar10_table1.py:full", "--config.rows=kd", arg,
                         "--list")
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
