"""python -m vid_jax.experiments GRID [--scale=small|full] [--rows=..] [--columns=..] [--seeds=..]

Runs a grid of the paper's experiments (methods x data regimes x seeds), resuming what an
earlier run of the same command left, and writes results/<grid>_<scale>.{json,md}.

  python -m vid_jax.experiments cifar10_table1 --scale=small --columns=M=100 --seeds=0,1
  python -m vid_jax.experiments cifar10_table1 --list      # the cells, without training
"""
import ast
import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow is only TFDS's reader here

from vid_jax import host  # noqa: E402  (imports no JAX)

host.use_all_cpu_cores()  # before JAX starts: one XLA CPU device per core

from absl import app, flags, logging  # noqa: E402

from vid_jax.experiments import GRIDS, SCALES, run_grid  # noqa: E402

_SCALE = flags.DEFINE_enum("scale", "small", SCALES,
                           "small: schedules a CPU can run; full: the paper's recipes.")
_ROWS = flags.DEFINE_list("rows", None, "Rows (methods) to run; default all.")
_COLUMNS = flags.DEFINE_list("columns", None, "Columns (data regimes, students); default all.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds; default the grid's (0,1).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Where the cells train (default workdirs/experiments/GRID_SCALE).")
_RESULTS = flags.DEFINE_string("results", None,
                               "Results JSON; the markdown goes beside it "
                               "(default results/GRID_SCALE.json).")
_TEACHER = flags.DEFINE_string("teacher_workdir", None,
                               "The teacher's workdir, instead of the grid's default.")
_OVERRIDES = flags.DEFINE_multi_string("set", [], "key=value set in every cell's config, "
                                       "e.g. --set=num_epochs=2 --set=optimizer.learning_rate=0.05")
_LIST = flags.DEFINE_bool("list", False, "Print the cells and their workdirs; train nothing.")


def _term_of(item: str) -> str | None:
    """The distillation term a --set item changes (`distill.vid_i.weight=4` -> vid_i)."""
    parts = item.partition("=")[0].split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "distill" else None


def _check_terms_are_run(cells, overrides) -> None:
    """A term's field set where no row to run has that term would change nothing: an error."""
    for item in overrides:
        term = _term_of(item)
        if term is not None and not any(term in cell.config.distill for cell in cells):
            raise ValueError(f"--set={item}: no row to run has the distillation term "
                             f"{term!r}; pick rows that do with --rows.")


def _describe_terms(config) -> str:
    """`kd (weight 1.0), vid_i (weight 4.0)`, or `-` for a student alone."""
    return ", ".join(f"{term} (weight {entry.get('weight', 1.0)})"
                     for term, entry in config.distill.items()) or "-"


def _apply_overrides(config, overrides) -> None:
    """Sets each key=value in `config`.

    A field of a distillation term (`distill.vid_i.weight=4`) is set only in the rows that
    have that term: the other rows of the table stay as they are."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set={item!r} is not key=value.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as cosine
        *parents, leaf = key.split(".")
        term = _term_of(item)
        if term is not None and term not in config.distill:
            continue
        node = config
        for p in parents:
            if p not in node:
                raise ValueError(f"--set={item}: the cells' configs have no field "
                                 f"{'.'.join(parents[:parents.index(p) + 1])!r}.")
            node = node[p]
        # New keys only where configs hold open maps (terms, stage lengths): a typo elsewhere
        # must not pass silently.
        if leaf not in node and parents[:1] not in (["distill"], ["stage_epochs"]):
            raise ValueError(f"--set={item}: the cells' configs have no field {key!r}.")
        with node.unlocked():
            node[leaf] = value


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) != 2 or argv[1] not in GRIDS:
        given = argv[1:] or ["nothing"]
        print(f"error: name one grid (got {' '.join(given)}); grids: {', '.join(GRIDS)}.",
              file=sys.stderr)
        sys.exit(2)
    grid, scale = GRIDS[argv[1]], _SCALE.value
    try:
        seeds = [int(s) for s in _SEEDS.value] if _SEEDS.value else None
        cells = grid.cells(scale, _ROWS.value, _COLUMNS.value, seeds)
        table_cells = grid.cells(scale, seeds=sorted(set(grid.seeds) | set(seeds or [])))
        _check_terms_are_run(cells, _OVERRIDES.value)
        for cell in [*cells, *table_cells]:
            _apply_overrides(cell.config, _OVERRIDES.value)
            if _TEACHER.value and cell.config.teacher.get("model"):
                cell.config.teacher.workdir = _TEACHER.value
        name = f"{grid.name}_{scale}"
        workdir = _WORKDIR.value or os.path.join("workdirs", "experiments", name)
        results = _RESULTS.value or os.path.join("results", f"{name}.json")
        if _LIST.value:
            for cell in cells:
                print(f"{os.path.join(workdir, cell.path)}  {cell.config.num_epochs} epochs  "
                      f"distill: {_describe_terms(cell.config)}")
            return
        command = "python -m vid_jax.experiments " + shlex.join(sys.argv[1:])
        report = run_grid(grid, cells, scale, workdir, results, command,
                          table_cells=table_cells)
    except (ValueError, FileNotFoundError, KeyError, TypeError,
            FloatingPointError) as e:  # FloatingPointError: train.TrainingDiverged
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(open(os.path.splitext(results)[0] + ".md").read())
    print(f"{len(report['cells'])} cells done; wrote {results} and its .md")


if __name__ == "__main__":
    app.run(main)
