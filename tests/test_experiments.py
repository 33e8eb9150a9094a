"""The experiment grids and their runner: cells, resuming, the results table, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train import tiny_config, tiny_dataset

from vid_jax import train
from vid_jax.experiments import GRIDS, SCALES, TABLE_ROWS, Cell, Grid, run_grid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", sorted(GRIDS))
def test_every_cell_of_every_grid_builds(name, scale):
    grid = GRIDS[name]
    cells = grid.cells(scale)
    assert len(cells) == len(grid.rows) * len(grid.columns) * len(grid.seeds)
    assert len({c.path for c in cells}) == len(cells)
    for cell in cells:
        assert cell.config.num_epochs > 0 and cell.config.seed == cell.seed
        if cell.config.distill:
            assert cell.config.teacher.model.name == "wrn" and cell.config.teacher.workdir
        else:
            assert not cell.config.teacher.get("model")


def test_table1a_is_the_papers_grid():
    grid = GRIDS["cifar10_table1"]
    assert list(grid.rows) == ["student", "kd", "fitnet", "at", "nst", "vid_i", "kd+at",
                               "kd+vid_i"]
    assert list(grid.columns) == ["M=5000", "M=1000", "M=500", "M=100"]
    assert grid.paper[("vid_i", "M=100")] == 81.59 and grid.paper[("student", "M=100")] == 58.84
    small = {c.column: c.config for c in grid.cells("small", rows=["kd+vid_i"], seeds=[1])}
    assert small["M=100"].data.images_per_class == 100 and small["M=100"].data.subset_seed == 1
    assert small["M=100"].num_epochs == 61 and small["M=5000"].num_epochs == 1
    assert set(small["M=100"].distill) == {"kd", "vid_i"}
    full = grid.cells("full", rows=["student"], columns=["M=500"], seeds=[0])[0].config
    assert (full.num_epochs, full.optimizer.schedule) == (200, "piecewise")
    assert full.model.depth == 16 and full.model.width == 1


def test_bad_selections_name_what_exists():
    grid = GRIDS["cifar10_table1"]
    with pytest.raises(ValueError, match=r"no row \['vid'\]; its rows are student, kd"):
        grid.cells("small", rows=["vid"])
    with pytest.raises(ValueError, match=r"no column \['M=7'\]"):
        grid.cells("small", columns=["M=7"])
    with pytest.raises(ValueError, match="Unknown scale 'tiny'"):
        grid.cells("tiny")


def _toy_grid(build=None):
    def tiny(row, column, seed, scale):
        return tiny_config(num_epochs=1, seed=seed)
    return Grid(name="toy", title="Toy", rows=("student", "kd"), columns=("a", "b"),
                build=build or tiny, paper={("kd", "a"): 50.0}, seeds=(0, 1))


def _fake_train(calls, fail_after=None):
    """Writes a summary.json as train_and_evaluate would; accuracy depends on the cell."""
    def train_fn(config, workdir):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt  # the grid is killed here
        calls.append(workdir)
        row, column, seed = workdir.split(os.sep)[-3:]
        acc = {"student": 0.5, "kd": 0.6}[row] + 0.1 * int(seed[-1]) + 0.01 * (column == "b")
        summary = {"final_test_accuracy": acc, "best_test_accuracy": acc + 0.05, "epochs": 1}
        os.makedirs(workdir)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary
    return train_fn


def test_an_interrupted_grid_resumes_and_tabulates_every_cell(tmp_path):
    grid, workdir, results = _toy_grid(), str(tmp_path / "grid"), str(tmp_path / "r" / "toy.json")
    cells = grid.cells("small")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, cells, "small", workdir, results, "cmd", _fake_train(calls, fail_after=3))
    assert len(calls) == 3
    partial = json.load(open(results))
    assert len(partial["cells"]) == 3  # the table of what was done survives the interruption
    # One seed has no spread: none is shown rather than a made-up 0.00.
    assert partial["table"]["student"]["b"]["last_std"] is None
    assert "| student | 55.00 +- 7.07 / 60.00 [2] (-) | 51.00 / 56.00 [1] (-) |" in open(
        str(tmp_path / "r" / "toy.md")).read()

    report = run_grid(grid, cells, "small", workdir, results, "cmd", _fake_train(calls))
    assert len(calls) == 8 and len(set(calls)) == 8  # the 5 others, none twice
    kd_a = report["table"]["kd"]["a"]
    assert kd_a["seeds"] == [0, 1] and kd_a["paper"] == 50.0
    np.testing.assert_allclose(kd_a["last_mean"], 65.0)
    np.testing.assert_allclose(kd_a["last_std"], np.std([60.0, 70.0], ddof=1))
    np.testing.assert_allclose(kd_a["best_mean"], 70.0)
    table = open(str(tmp_path / "r" / "toy.md")).read()
    assert "| kd | 65.00 +- 7.07 / 70.00 [2] (50.00) | 66.00 +- 7.07 / 71.00 [2] (-) |" in table
    assert json.load(open(results)) == report

    again = []
    run_grid(grid, cells, "small", workdir, results, "cmd", _fake_train(again))
    assert again == []  # a finished grid trains nothing


def test_a_subset_run_keeps_the_rest_of_the_grid_in_the_table(tmp_path):
    grid, workdir, results = _toy_grid(), str(tmp_path / "grid"), str(tmp_path / "toy.json")
    run_grid(grid, grid.cells("small", rows=["student"]), "small", workdir, results, "cmd",
             _fake_train([]))
    report = run_grid(grid, grid.cells("small", rows=["kd"], columns=["a"]), "small", workdir,
                      results, "cmd", _fake_train([]), table_cells=grid.cells("small"))
    assert set(report["table"]) == {"student", "kd"} and len(report["cells"]) == 6


def test_a_missing_teacher_fails_before_any_cell_trains(tmp_path):
    def with_teacher(row, column, seed, scale):
        config = tiny_config(num_epochs=1, seed=seed)
        config.teacher.model = dict(name="wrn", depth=10, width=2)
        config.teacher.workdir = str(tmp_path / "no_teacher")
        return config
    grid = Grid(name="toy", title="Toy", rows=("kd",), columns=("a",), build=with_teacher,
                teacher_hint="Train it with X.")
    calls = []
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*no_teacher/best\. "
                                                r"Train it with X\. Or pass --teacher_workdir"):
        run_grid(grid, grid.cells("small"), "small", str(tmp_path / "grid"),
                 str(tmp_path / "toy.json"), "cmd", _fake_train(calls))
    assert calls == [] and not (tmp_path / "grid").exists() and not (tmp_path / "toy.json").exists()


def test_real_training_through_the_runner(tmp_path):
    grid = Grid(name="toy", title="Toy", rows=("student",), columns=("a",),
                build=lambda r, c, s, scale: tiny_config(num_epochs=1, seed=s), seeds=(0, 1))

    def train_fn(config, workdir):
        return train.train_and_evaluate(config, workdir, dataset=tiny_dataset())
    report = run_grid(grid, grid.cells("small"), "small", str(tmp_path / "grid"),
                      str(tmp_path / "toy.json"), "cmd", train_fn)
    cell = report["table"]["student"]["a"]
    finals = [100 * json.load(open(tmp_path / "grid" / "student" / "a" / f"seed{s}" /
                                   "summary.json"))["final_test_accuracy"] for s in (0, 1)]
    np.testing.assert_allclose(cell["last_mean"], np.mean(finals))


def test_the_module_lists_cells_and_refuses_unknown_grids():
    run = lambda *args: subprocess.run([sys.executable, "-m", "vid_jax.experiments", *args],
                                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    listed = run("cifar10_table1", "--list", "--columns=M=100", "--rows=vid_i,kd")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].startswith("workdirs/experiments/cifar10_table1_small/vid_i/M=100/seed0  61 "
                               "epochs  distill: vid_i")
    assert len(lines) == 4
    unknown = run("table9")
    assert unknown.returncode == 2 and "grids: cifar10_table1, " in unknown.stderr
    bad_row = run("cifar10_table1", "--rows=vid", "--list")
    assert bad_row.returncode == 2 and "its rows are student" in bad_row.stderr
    typo = run("cifar10_table1", "--set=num_epoch=3", "--list")
    assert typo.returncode == 2 and "have no field 'num_epoch'" in typo.stderr
    assert "Traceback" not in unknown.stderr + bad_row.stderr + typo.stderr
    changed = run("cifar10_table1", "--set=num_epochs=3", "--columns=M=100", "--rows=kd", "--list")
    assert "/kd/M=100/seed0  3 epochs  distill: kd" in changed.stdout
    # A term's field reaches the rows with that term, and only those.
    weighted = run("cifar10_table1", "--set=distill.vid_i.weight=4.0", "--columns=M=100",
                   "--rows=student,vid_i", "--seeds=0", "--list")
    assert weighted.returncode == 0, weighted.stderr
    assert weighted.stdout.splitlines()[0].endswith("/student/M=100/seed0  61 epochs  distill: -")
    assert weighted.stdout.splitlines()[1].endswith("distill: vid_i (weight 4.0)")
    no_term = run("cifar10_table1", "--set=distill.vid_i.weight=4.0", "--rows=kd", "--list")
    assert no_term.returncode == 2
    assert "no row to run has the distillation term 'vid_i'" in no_term.stderr
    assert "Traceback" not in weighted.stderr + no_term.stderr


def test_rows_are_registered_methods():
    from vid_jax import methods
    for entries in TABLE_ROWS.values():
        assert set(entries) <= set(methods.METHODS)
    assert isinstance(GRIDS["cifar10_table1"].cells("small", seeds=[0])[0], Cell)
