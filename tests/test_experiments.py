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

from vid_jax import runner, search
from vid_jax.config_base import base_config, digits_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRIDS = ("cifar10_table1", "cifar10_table1b", "cifar100_table2", "cifar10_cnn_mlp",
         "cifar10_table1_protocol")


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
    rows = config.rows.split(",")
    cells = [r for r in runs if r.phase != "search"]
    assert len(cells) == len(rows) * len(table.columns) * len(table.seeds)
    assert len({r.workdir for r in runs}) == len(runs)
    for run in runs:
        assert run.config.num_epochs > 0 and run.config.seed == run.seed
        if run.phase == "search":
            assert run.workdir == os.path.join("w", "search", run.row, run.column,
                                               search.candidate_name(run.values),
                                               f"seed{run.seed}")
        else:
            assert run.workdir == os.path.join("w", run.row, run.column, f"seed{run.seed}")
        # Every cell trains at least 10 epochs at small scale (issue 17: none is one epoch).
        assert run.config.num_epochs >= (10 if scale == "small" else 200)
        if run.config.distill:
            assert run.config.teacher.model.name == "wrn" and run.config.teacher.workdir
        else:
            assert not run.config.teacher.get("model")


def test_table1a_is_the_papers_grid():
    config = _load("cifar10_table1").get_config()
    rows = ["student", "kd", "fitnet", "at", "nst", "vid_i", "kd+at", "kd+vid_i"]
    assert list(config.table.rows) == rows + ["authors"]
    assert config.rows.split(",") == rows  # the authors' recipe is an optional row
    assert list(config.table.columns) == ["M=5000", "M=1000", "M=500", "M=100"]
    # Every column of the paper's Table 1a, as ../shared/paper/README.md transcribes it.
    assert config.table.paper["vid_i"].to_dict() == {"M=5000": 91.85, "M=1000": 89.73,
                                                     "M=500": 88.09, "M=100": 81.59}
    assert config.table.paper["student"]["M=100"] == 58.84
    assert config.table.paper["kd+vid_i"]["M=500"] == 86.53
    assert config.table.paper["kd+at"]["M=5000"] == 91.81
    assert "authors" not in config.table.paper
    cell = lambda column: runner.grid_cell(config, "kd+vid_i", column, 1)
    assert cell("M=100").data.images_per_class == 100 and cell("M=100").data.subset_seed == 1
    # Small scale: max(10, round(61,440 / 10 M)) epochs.
    assert [cell(f"M={m}").num_epochs for m in (100, 500, 1000, 5000)] == [61, 12, 10, 10]
    assert cell("M=100").eval_every_epochs == cell("M=100").checkpoint_every_epochs == 6
    assert cell("M=5000").eval_every_epochs == 1
    assert set(cell("M=100").distill) == {"kd", "vid_i"}
    authors = runner.grid_cell(config, "authors", "M=100", 0)
    assert authors.distill.to_dict() == {
        "kd_authors": dict(method="kd", weight=1.0, temperature=2.0),
        "vid_i_authors": dict(method="vid_i", weight=0.1, layers=("group1", "group2", "group3"),
                              mean_network="authors", variance="authors")}
    assert authors.teacher.workdir == "teachers/cifar10_wrn40_2"
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
    # Issue 17 then gave the small scale a minimum of 10 epochs: the cells that trained fewer
    # (one epoch of 50,000 images) now train 10, evaluated every epoch; all else is the same.
    fixture = json.load(open(os.path.join(ROOT, "tests", "data", "old_grid_cells.json")))
    schedule = ("num_epochs", "eval_every_epochs", "checkpoint_every_epochs")
    for key, old in fixture["cells"].items():
        name, scale, row, column, seed = key.split("/")
        config = _load(name).get_config(scale)
        new = json.loads(runner.grid_cell(config, row, column,
                                          int(seed.removeprefix("seed"))).to_json_best_effort())
        if old["num_epochs"] < 10:
            assert [new[f] for f in schedule] == [10, 1, 1], key
            old = {k: v for k, v in old.items() if k not in schedule}
        _contains(new, old, f"{key}: ")


def test_a_row_is_defined_once_for_the_single_run_and_the_grid():
    single, grid = _load("cifar10_wrn16_1"), _load("cifar10_table1").get_config("full")
    assert list(grid.table.rows) == list(_load("common").TABLE1_ROWS) + ["authors"]
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
    """The real trainer under the protocol (final runs on the search's split, so they hold
    out a validation set): its summary has what the search ranks by, and the table what the
    summary says. (The student row has nothing to search: a search needs a teacher.)"""
    cell = digits_recipe(depth=10, width=1, images_per_class=5, num_epochs=1)
    config = _toy_protocol(None, final_data="split")
    config.cell = cell
    config.table.changes = {"a": {}, "b": {}}
    config.rows, config.columns, config.seeds = "student", "a", "0"
    config.results = str(tmp_path / "toy.json")
    report = runner.run(config, str(tmp_path / "grid"), "cmd").report  # the real trainer
    summary = json.load(open(tmp_path / "grid" / "student" / "a" / "seed0" / "summary.json"))
    assert summary["epochs"] == 1 and summary["selected_by"] == "validation"
    assert 0.0 <= summary["final_validation_accuracy"] <= 1.0
    cell = report["table"]["student"]["a"]
    np.testing.assert_allclose(cell["last_mean"], 100 * summary["final_test_accuracy"])
    np.testing.assert_allclose(cell["best_mean"],
                               100 * summary["test_accuracy_at_best_selection"])


# ---------------------------------------------------------------------------------------------
# The paper's protocol: a search on validation accuracy, then the final runs (fake trainer).

def _toy_protocol(teacher_workdir, **fields):
    teacher = ml_collections.ConfigDict(dict(model=dict(name="wrn", depth=10, width=2),
                                             workdir=teacher_workdir))
    fields = dict(dict(
        seeds=(0, 1, 2), selection="validation", validation_fraction=0.2,
        search_space={"kd": {"temperature": (2.0, 4.0)}, "at": {"weight": (10.0, 100.0)}}),
        **fields)
    return runner.grid_config(
        "toy", "Toy", base_config(), ("student", "kd", "kd+at"),
        {"a": {"data": {"images_per_class": 10}}, "b": {"data": {"images_per_class": 20}}},
        terms={"kd": dict(weight=1.0, temperature=4.0),
               "at": dict(weight=1000.0, layers=("group1",))},
        teacher=teacher, scale="small", paper={"kd": {"a": 50.0}}, **fields)


def _validated_teacher(tmp_path, selected_by="validation"):
    os.makedirs(tmp_path / "teacher" / "best")
    with open(tmp_path / "teacher" / "summary.json", "w") as f:
        json.dump({"selected_by": selected_by}, f)
    return str(tmp_path / "teacher")


def _fake_protocol_train(calls):
    """A summary that makes validation prefer temperature 2 and AT weight 10, and the test
    set prefer temperature 4: a choice made on the test set would differ."""
    def train_fn(config, workdir):
        calls.append(workdir)
        kd = config.distill.get("kd", {})
        at = config.distill.get("at", {})
        validation = 0.5 + 0.1 * (kd.get("temperature") == 2.0) + 0.05 * (at.get("weight") == 10.0)
        test = 0.6 + 0.2 * (kd.get("temperature") == 4.0) + 0.01 * config.seed
        summary = {"final_test_accuracy": test, "best_test_accuracy": test + 0.1, "epochs": 1,
                   "selected_by": "test"}
        if config.data.validation_fraction:
            summary.update(final_validation_accuracy=validation, selected_by="validation",
                           test_accuracy_at_best_selection=test - 0.01)
        os.makedirs(workdir, exist_ok=True)
        for name, content in (("summary.json", json.dumps(summary)),
                              ("config.json", config.to_json_best_effort())):
            with open(os.path.join(workdir, name), "w") as f:
                f.write(content)
        return summary
    return train_fn


def test_the_protocol_grid_is_table1a_on_original_pixels():
    config = _load("cifar10_table1_protocol").get_config()
    assert config.selection == "validation" and config.validation_fraction == 0.2
    assert config.final_data == "all" and config.search_seeds == "0"
    assert config.rows.split(",") == list(config.table.rows) and "authors" in config.table.rows
    assert list(config.table.seeds) == [0, 1, 2]
    assert config.teacher.workdir == "teachers/cifar10_wrn40_2_lossless"
    assert config.table.paper["vid_i"]["M=100"] == 81.59  # the paper's Table 1a
    config.columns = "M=100"
    runs = runner.expand(config, "w")
    searched = [r for r in runs if r.phase == "search"]
    final = [r for r in runs if r.phase == "final"]
    # kd 3, fitnet 3, at 3, nst 3, vid_i 4, kd+at 3 x 3, kd+vid_i 3 x 4; authors: its recipe.
    assert len(searched) == 37 and len(final) == 9 * 3
    assert {r.row for r in searched} == {"kd", "fitnet", "at", "nst", "vid_i", "kd+at",
                                         "kd+vid_i"}
    for run in runs:
        data = run.config.data
        assert (data.source, data.path) == ("arrays", "../shared/data/cifar10-lossless.npz")
        assert data.validation_fraction == (0.2 if run.phase == "search" else 0.0)
        assert run.config.num_epochs == 61
    vid = [r for r in searched if r.row == "vid_i"]
    assert [r.config.distill.vid_i.weight for r in vid] == [0.1, 1.0, 10.0, 30.0]
    assert vid[3].workdir == "w/search/vid_i/M=100/vid_i.weight=30/seed0"
    # Every candidate of the column sees the same batches: they can share steps.
    assert [len(g) for g in runner.step_groups(searched, 64)] == [37]
    authors = next(r for r in final if r.row == "authors")
    assert authors.config.distill.vid_i_authors.weight == 0.1
    assert authors.config.distill.kd_authors.temperature == 2.0
    listed = runner.describe(runs).splitlines()
    # FitNet's hint stage (10 epochs) counts: 3 candidates and 3 seeds.
    assert listed[0].startswith("# search: ") and listed[0].endswith(": 37 runs, 2287 epochs")
    assert listed[38].startswith("# final: ") and listed[38].endswith(": 27 runs, 1677 epochs")
    assert listed[-1] == "# 64 runs, 3964 epochs (0 done)"
    assert sum(" 61 epochs + 10 fitnet_hint  distill: fitnet " in line for line in listed) == 6
    assert "distill: vid_i (weight: chosen from 0.1, 1, 10, 30)" in listed[39 + 3 * 5]


def test_the_search_chooses_on_validation_then_the_final_runs_train_the_choice(tmp_path):
    config, workdir = _toy_protocol(_validated_teacher(tmp_path)), str(tmp_path / "grid")
    config.results = str(tmp_path / "r" / "toy.json")
    runs = runner.expand(config, workdir)
    searched = [r for r in runs if r.phase == "search"]
    assert [r.name for r in searched[:3]] == ["search/kd/a/kd.temperature=2/seed0",
                                              "search/kd/a/kd.temperature=4/seed0",
                                              "search/kd/b/kd.temperature=2/seed0"]
    assert len(searched) == 2 * (2 + 4) and len(runs) == len(searched) + 3 * 2 * 3
    assert all(r.config.data.validation_fraction == 0.2 for r in searched)
    # A column's candidates, of every row, share one step.
    groups = runner.step_groups(searched, 8)
    assert [sorted({r.column for r in g}) for g in groups] == [["a"], ["b"]]
    assert [len(g) for g in groups] == [6, 6]

    calls, groups = [], []
    fake = _fake_protocol_train(calls)

    def together(configs, workdirs):
        groups.append(len(configs))
        return [fake(c, w) for c, w in zip(configs, workdirs)]

    outcome = runner.run(config, workdir, "cmd", fake, together_fn=together)
    assert all("/search/" in c for c in calls[:12]) and not any("/search/" in c
                                                                for c in calls[12:])
    assert len(calls) == 12 + 18 and groups[:2] == [6, 6]
    final = json.load(open(os.path.join(workdir, "kd+at", "b", "seed2", "config.json")))
    # Validation chose temperature 2 (the test set would have chosen 4) and AT weight 10.
    assert final["distill"]["kd"]["temperature"] == 2.0
    assert final["distill"]["at"]["weight"] == 10.0
    assert final["data"]["validation_fraction"] == 0.0  # final_data="all": all M images
    report = outcome.report
    assert report["table"]["kd"]["a"]["values"] == {"kd.temperature": 2.0}
    assert report["table"]["kd+at"]["b"]["values"] == {"kd.temperature": 2.0,
                                                       "at.weight": 10.0}
    assert report["table"]["student"]["a"]["values"] == {}
    kd_a = report["table"]["kd"]["a"]
    np.testing.assert_allclose(kd_a["last_mean"], 61.0)
    assert kd_a["seeds"] == [0, 1, 2] and "best_mean" not in kd_a and kd_a["paper"] == 50.0
    assert all("best_test_accuracy" not in c for c in report["cells"])
    assert runner.aggregate(config, report["cells"]) == report["table"]
    (kd_search,) = [s for s in report["search"] if (s["row"], s["column"]) == ("kd", "a")]
    assert [e["mean_validation_accuracy"] for e in kd_search["candidates"]] == \
        pytest.approx([0.6, 0.5])
    table = open(tmp_path / "r" / "toy.md").read()
    assert table in outcome.text
    assert "| kd | 61.00 +- 1.00 [3] (50.00) kd.temperature=2 |" in table
    assert "| kd | a | **kd.temperature=2: 60.00**; kd.temperature=4: 50.00 |" in table
    assert "| kd+at | b | **kd.temperature=2,at.weight=10: 65.00**; " in table
    assert "Nothing was chosen on the test set" in table and "highest test" not in table

    again = []
    runner.run(config, workdir, "cmd", _fake_protocol_train(again))
    assert again == []  # a finished search and its final runs train nothing


def test_an_interrupted_search_resumes_and_the_split_variant_keeps_validation(tmp_path):
    config = _toy_protocol(_validated_teacher(tmp_path), final_data="split")
    config.results, config.columns = str(tmp_path / "toy.json"), "a"
    workdir, calls = str(tmp_path / "grid"), []
    fake = _fake_protocol_train(calls)

    def interrupted(config, workdir):
        if len(calls) == 4:
            raise KeyboardInterrupt
        return fake(config, workdir)

    with pytest.raises(KeyboardInterrupt):
        runner.run(config, workdir, "cmd", interrupted)
    assert len(calls) == 4 and not os.path.exists(os.path.join(workdir, "kd", "a", "seed0"))
    runner.run(config, workdir, "cmd", fake)
    assert len(calls) == 6 + 9 and len(set(calls)) == 15  # the rest, none twice
    report = json.load(open(config.results))
    final = json.load(open(os.path.join(workdir, "kd", "a", "seed1", "config.json")))
    assert final["data"]["validation_fraction"] == 0.2
    np.testing.assert_allclose(report["table"]["kd"]["a"]["best_mean"], 60.0)
    assert "/ 60.00 [3]" in open(tmp_path / "toy.md").read()


def test_a_diverged_candidate_is_left_out_and_the_others_go_on(tmp_path):
    from vid_jax.training.metrics import TrainingDiverged
    config = _toy_protocol(_validated_teacher(tmp_path))
    config.results, config.columns, config.rows = str(tmp_path / "toy.json"), "a", "kd+at"
    workdir, calls = str(tmp_path / "grid"), []
    fake = _fake_protocol_train(calls)
    blown = os.path.join(workdir, "search", "kd+at", "a", "kd.temperature=2,at.weight=10",
                         "seed0")

    def together(configs, workdirs):
        if blown in workdirs:
            raise TrainingDiverged("training diverged in epoch 3", os.path.join(blown, "x"))
        return [fake(c, w) for c, w in zip(configs, workdirs)]

    report = runner.run(config, workdir, "cmd", fake, together_fn=together).report
    assert os.path.exists(os.path.join(blown, runner.DIVERGED)) and blown not in calls
    (result,) = report["search"]
    assert result["chosen"] == {"kd.temperature": 2.0, "at.weight": 100.0}
    assert "kd.temperature=2,at.weight=10: diverged" in open(tmp_path / "toy.md").read()
    again = []
    runner.run(config, workdir, "cmd", _fake_protocol_train(again), together_fn=together)
    assert again == []  # a diverged candidate is done too

    config.search.at.weight = (1e9,)  # one candidate per temperature; both diverge
    config.search.kd.temperature = (2.0, 3.0)

    def diverges(config, workdir):
        raise TrainingDiverged("training diverged in epoch 1", workdir)

    calls.clear()
    with pytest.raises(ValueError, match=r"Every candidate of row 'kd\+at' in column a "
                                         r"diverged in the search \(kd.temperature=2,"
                                         r"at.weight=1e\+09, kd.temperature=3,at.weight=1e\+09"):
        runner.run(config, str(tmp_path / "other"), "cmd", diverges,
                   together_fn=lambda cs, ws: diverges(cs[0], ws[0]))
    assert calls == []


def test_a_final_run_that_trained_other_values_than_chosen_is_refused(tmp_path):
    config, workdir = _toy_protocol(_validated_teacher(tmp_path)), str(tmp_path / "grid")
    config.results, config.columns, config.rows = str(tmp_path / "toy.json"), "a", "kd"
    runner.run(config, workdir, "cmd", _fake_protocol_train([]))
    # The search is changed under the finished final runs: temperature 4 now wins.
    summary = os.path.join(workdir, "search", "kd", "a", "kd.temperature=4", "seed0",
                           "summary.json")
    json.dump({"final_validation_accuracy": 0.9, "final_test_accuracy": 0.1, "epochs": 1},
              open(summary, "w"))
    calls = []
    with pytest.raises(ValueError, match=r"kd/a/seed0 finished with kd.temperature=2.0, but the "
                                         r"search now chooses kd.temperature=4.0"):
        runner.run(config, workdir, "cmd", _fake_protocol_train(calls))
    assert calls == []


def test_a_rows_own_space_replaces_its_terms_values(tmp_path):
    config = _toy_protocol(str(tmp_path), search_space={
        "kd": {"temperature": (2.0, 4.0)},
        "kd+at": {"kd": {"temperature": (8.0,)}, "at": {"weight": (1.0, 2.0)}}})
    assert runner.search_space(config, "kd") == {"kd.temperature": (2.0, 4.0)}
    assert runner.search_space(config, "kd+at") == {"kd.temperature": (8.0,),
                                                    "at.weight": (1.0, 2.0)}
    assert runner.search_space(config, "student") == {}
    config.columns = "a"
    names = [r.name for r in runner.expand(config, "w") if r.phase == "search"]
    assert names == ["search/kd/a/kd.temperature=2/seed0", "search/kd/a/kd.temperature=4/seed0",
                     "search/kd+at/a/kd.temperature=8,at.weight=1/seed0",
                     "search/kd+at/a/kd.temperature=8,at.weight=2/seed0"]


def test_bad_protocol_input_is_one_error_before_anything_trains(tmp_path):
    def expand(**fields):
        return runner.expand(_toy_protocol(str(tmp_path), **fields), "w")

    bad = {
        r"--config.search.kd\+at.vid_i: row 'kd\+at' has no term 'vid_i'; its terms are kd, at":
            dict(search_space={"kd+at": {"vid_i": {"weight": (1.0,)}}}),
        r"--config.search.vid_i: the grid has no term or row 'vid_i'; its terms are at, kd, "
        r"its rows student, kd, kd\+at":
            dict(search_space={"vid_i": {"weight": (1.0, 2.0)}}),
        r"--config.search.kd.temperature is empty": dict(search_space={"kd": {"temperature": ()}}),
        r"--config.search.kd is empty": dict(search_space={"kd": {}}),
        r"--config.search.kd.temperature=2.0: give a tuple":
            dict(search_space={"kd": {"temperature": 2.0}}),
        r"--config.search: kd.temprature=2.0: config.distill.kd: bad arguments":
            dict(search_space={"kd": {"temprature": (2.0,)}}),
        r"kd.temperature of row 'kd' lists a value twice \(kd.temperature=2, kd.temperature=2\)":
            dict(search_space={"kd": {"temperature": (2.0, 2)}}),
        r"--config.validation_fraction=0.96 holds out 10 of the 10 images of every class in "
        r"column a, which leaves a class with no training image; use a fraction under 0.95":
            dict(validation_fraction=0.96),
        r"--config.validation_fraction=0.0: selection=validation needs a fraction in \(0, 1\)":
            dict(validation_fraction=0.0),
        r"--config.selection=test: a grid never chooses on the test set": dict(selection="test"),
        r"--config.selection=best: choose one of none, validation": dict(selection="best"),
        r"--config.search: the grid chooses nothing \(selection=none\)": dict(selection="none"),
        r"--config.final_data=some: choose one of all, split": dict(final_data="some"),
        r"--config.search_seeds=x: give comma-separated integers": dict(search_seeds=("x",)),
    }
    for message, fields in bad.items():
        with pytest.raises(ValueError, match=message):
            expand(**fields)
    plain = _toy_grid()
    with pytest.raises(ValueError, match=r"--config.validation_fraction: the grid chooses "
                                         r"nothing \(selection=none\); add --config.selection"):
        runner.check_overrides(plain, ["validation_fraction"], runner.expand(plain, "w"))
    config = _toy_protocol(str(tmp_path))
    config.rows = "student"
    with pytest.raises(ValueError, match=r"--config.search.kd.temperature: no row to run has the "
                                         r"term or is the row 'kd' \(rows: student\)"):
        runner.check_overrides(config, ["search.kd.temperature"], runner.expand(config, "w"))
    # A teacher whose checkpoint the test set chose is refused before anything trains.
    config = _toy_protocol(_validated_teacher(tmp_path, selected_by="test"))
    config.results, calls = str(tmp_path / "toy.json"), []
    with pytest.raises(ValueError, match=r"The teacher in .*teacher chose its checkpoint on the "
                                         r"test set \(.*summary.json says selected_by=test\)"):
        runner.run(config, str(tmp_path / "grid"), "cmd", _fake_protocol_train(calls))
    assert calls == [] and not (tmp_path / "grid").exists()


def test_a_summary_ranks_by_the_last_epochs_validation_accuracy(tmp_path):
    from vid_jax.training.metrics import summarize
    lines = [{"epoch": 1, "loss": 2.0, "test_accuracy": 0.3, "validation_accuracy": 0.5},
             {"epoch": 2, "loss": 1.0, "test_accuracy": 0.6, "validation_accuracy": 0.4}]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    summary = summarize(str(tmp_path), "validation")
    assert summary["final_validation_accuracy"] == 0.4
    assert summary["best_validation_accuracy"] == 0.5
    assert summary["best_validation_epoch"] == 1
    assert summary["test_accuracy_at_best_selection"] == 0.3
    with open(tmp_path / "metrics.jsonl", "w") as f:  # a run without a validation split
        f.write("".join(json.dumps({k: v for k, v in line.items()
                                    if k != "validation_accuracy"}) + "\n" for line in lines))
    summary = summarize(str(tmp_path), "test")
    assert "final_validation_accuracy" not in summary and summary["best_test_accuracy"] == 0.6


# ---------------------------------------------------------------------------------------------
# The committed results: their commands are launch.py's, and reproduce their cells and tables.

# Grid reports (results/figures/ holds the diagnostics' figures and numbers, whose commands
# results/figures/README.md gives).
RESULTS = sorted(p for p in glob.glob(os.path.join(ROOT, "results", "**", "*.json"),
                                      recursive=True)
                 if os.path.relpath(p, ROOT).split(os.sep)[1] != "figures")


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
        "--config.selection=test": "error: --config.selection=test: a grid never chooses on the "
                                   "test set",
    }
    for arg, message in bad.items():
        result = _launch("--config=configs/cifar10_table1.py:full", "--config.rows=kd", arg,
                         "--list")
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
