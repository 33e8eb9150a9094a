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


def _apply_overrides(config, overrides) -> set[str]:
    """Sets each key=value in `config`; returns the overrides it applied.

    A field of a distillation term (`distill.vid_i.weight=4`) is set only in the rows that
    have that term: the other rows of the table stay as they are."""
    applied = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set={item!r} is not key=value.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as cosine
        *parents, leaf = key.split(".")
        if len(parents) >= 2 and parents[0] == "distill" and parents[1] not in config.distill:
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
        applied.add(item)
    return applied


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
        applied = set()  # by the cells to run (the table's cells only read results)
        for i, cell in enumerate([*cells, *table_cells]):
            overridden = _apply_overrides(cell.config, _OVERRIDES.value)
            if i < len(cells):
                applied |= overridden
            if _TEACHER.value and cell.config.teacher.get("model"):
                cell.config.teacher.workdir = _TEACHER.value
        for item in _OVERRIDES.value:
            if item not in applied:
                term = item.split(".")[1]
                raise ValueError(f"--set={item}: no row to run has the distillation term "
                                 f"{term!r}; pick rows that do with --rows.")
        name = f"{grid.name}_{scale}"
        workdir = _WORKDIR.value or os.path.join("workdirs", "experiments", name)
        results = _RESULTS.value or os.path.join("results", f"{name}.json")
        if _LIST.value:
            terms = lambda config: ", ".join(f"{name} (weight {entry.get('weight', 1.0)})"
                                             for name, entry in config.distill.items())
            for cell in cells:
                print(f"{os.path.join(workdir, cell.path)}  {cell.config.num_epochs} epochs  "
                      f"distill: {terms(cell.config) or '-'}")
            return
        command = "python -m vid_jax.experiments " + shlex.join(sys.argv[1:])
        report = run_grid(grid, cells, scale, workdir, results, command,
                          table_cells=table_cells)
    except (ValueError, FileNotFoundError, KeyError, TypeError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(open(os.path.splitext(results)[0] + ".md").read())
    print(f"{len(report['cells'])} cells done; wrote {results} and its .md")


if __name__ == "__main__":
    app.run(main)
