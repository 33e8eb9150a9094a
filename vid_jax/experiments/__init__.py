"""The paper's experiments as grids of configs, and a resumable runner that tabulates them.

  python -m vid_jax.experiments cifar10_table1 --scale=small --columns=M=100 --seeds=0,1
"""
from vid_jax.experiments.grids import GRIDS, SCALES, TABLE_ROWS, Cell, Grid
from vid_jax.experiments.runner import aggregate, check_teachers, markdown, run_grid

__all__ = ["GRIDS", "SCALES", "TABLE_ROWS", "Cell", "Grid", "aggregate", "check_teachers",
           "markdown", "run_grid"]
