"""The VID paper's experiments as grids of run configs: rows (methods) x columns (data regimes
or students) x seeds, each cell one ordinary config for `train.train_and_evaluate`.

A grid holds the paper's numbers where they are transcribed here; a cell without one shows
"-" in the table rather than a number from memory.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from vid_jax.config_base import cifar10_recipe, cifar100_recipe

GROUPS = ("group1", "group2", "group3")
KD = {"kd": dict(weight=1.0, temperature=4.0)}
AT = {"at": dict(weight=1000.0, layers=GROUPS)}
VID_I = {"vid_i": dict(weight=1.0, layers=GROUPS)}
# The rows of Tables 1 and 2: config.distill entries. KD as Hinton (T=4, with CE), FitNet's
# hint on the middle group, AT's beta = 1000 of its authors' code, NST's weight 50/2 of its
# authors' code on the three group ends, VID-I on the three group ends.
TABLE_ROWS: dict[str, dict[str, dict[str, Any]]] = {
    "student": {},
    "kd": KD,
    "fitnet": {"fitnet": dict(weight=1.0, layers=("group2",))},
    "at": AT,
    "nst": {"nst": dict(weight=25.0, layers=GROUPS)},
    "vid_i": VID_I,
    "kd+at": {**KD, **AT},
    "kd+vid_i": {**KD, **VID_I},
}
SCALES = ("small", "full")
# Small scale: every cell gets about this many training images (cosine schedule), which a
# 2-core CPU trains in minutes for a WRN-16-1 student; full scale is the paper's recipe.
SMALL_SCALE_IMAGES = 61_440
# Where the grids look for the teachers they distill from, relative to the project root.
CIFAR10_TEACHER = ml_collections.ConfigDict(dict(
    model=dict(name="wrn", depth=40, width=2), workdir="teachers/cifar10_wrn40_2"))
CIFAR10_TEACHER_HINT = (
    "It is a committed artifact (teachers/README.md); to train it again: python launch.py "
    "--config=configs/cifar10_wrn40_2.py:cpu --workdir=teachers/cifar10_wrn40_2.")
CIFAR100_TEACHER = ml_collections.ConfigDict(dict(
    model=dict(name="wrn", depth=40, width=2), workdir="workdirs/cifar100_wrn40_2"))


@dataclasses.dataclass(frozen=True)
class Cell:
    row: str
    column: str
    seed: int
    config: ml_collections.ConfigDict

    @property
    def path(self) -> str:
        """The cell's workdir below the grid's: row/column/seed<k>."""
        return f"{self.row}/{self.column}/seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Grid:
    """A table of the paper: `build(row, column, seed, scale)` makes one cell's config."""

    name: str
    title: str
    rows: Sequence[str]
    columns: Sequence[str]
    build: Callable[[str, str, int, str], ml_collections.ConfigDict]
    paper: Mapping[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    seeds: Sequence[int] = (0, 1)
    notes: str = ""
    teacher_hint: str = ""  # how to make the teacher checkpoint when it is missing

    def cells(self, scale: str, rows: Sequence[str] | None = None,
              columns: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> list[Cell]:
        """The grid's cells (all, or the rows, columns and seeds asked for), row-major."""
        if scale not in SCALES:
            raise ValueError(f"Unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
        rows, columns = list(rows or self.rows), list(columns or self.columns)
        for kind, asked, known in (("row", rows, self.rows), ("column", columns, self.columns)):
            unknown = [a for a in asked if a not in known]
            if unknown:
                raise ValueError(f"Grid {self.name} has no {kind} {unknown}; its {kind}s are "
                                 f"{', '.join(known)}.")
        return [Cell(r, c, s, self.build(r, c, s, scale))
                for r in rows for c in columns for s in (seeds or self.seeds)]


def _small_schedule(config: ml_collections.ConfigDict, num_train_images: int) -> None:
    config.num_epochs = max(1, round(SMALL_SCALE_IMAGES / num_train_images))
    config.optimizer.schedule = "cosine"
    # About 10 evaluations of the test set: at M=100, one costs about as much as an epoch.
    config.eval_every_epochs = max(1, config.num_epochs // 10)
    config.checkpoint_every_epochs = config.eval_every_epochs


def _finish(config: ml_collections.ConfigDict, scale: str, num_train_images: int,
            entries: dict[str, dict[str, Any]],
            teacher: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The scale's schedule, the row's distillation terms, and the teacher where it has any."""
    if scale == "small":
        _small_schedule(config, num_train_images)
    if entries:
        config.teacher = ml_collections.ConfigDict(teacher.to_dict())
    for name, entry in entries.items():
        config.distill[name] = dict(entry)
    return config


def _cifar10(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CIFAR-10 from ../shared/data/cifar10-jpeg (the data this project has offline)."""
    config.data.source = "image_folder"
    config.data.path = "../shared/data/cifar10-jpeg"
    config.progress_bar = False
    return config


# ---------------------------------------------------------------------------------------------
# Table 1a: CIFAR-10, WRN-40-2 -> WRN-16-1, M images per class.

def _table1a(row: str, column: str, seed: int, scale: str) -> ml_collections.ConfigDict:
    m = int(column.removeprefix("M="))
    config = _cifar10(cifar10_recipe())
    config.model.update(depth=16, width=1)
    config.data.images_per_class = m
    config.seed = config.data.subset_seed = seed  # seeds vary the subset too
    return _finish(config, scale, 10 * m, TABLE_ROWS[row], CIFAR10_TEACHER)


TABLE1A = Grid(
    name="cifar10_table1",
    title="Table 1a: CIFAR-10, WRN-40-2 teacher -> WRN-16-1 student, M training images per class",
    rows=tuple(TABLE_ROWS), columns=("M=5000", "M=1000", "M=500", "M=100"), build=_table1a,
    # Ahn et al. 2019, Table 1a, as quoted in vid-jax issue 4 (the M=100 column).
    paper={("student", "M=100"): 58.84, ("kd", "M=100"): 64.24, ("fitnet", "M=100"): 68.90,
           ("at", "M=100"): 73.40, ("nst", "M=100"): 64.53, ("vid_i", "M=100"): 81.59},
    notes="Each seed draws its own M-per-class subset (config.data.subset_seed = seed).",
    teacher_hint=CIFAR10_TEACHER_HINT)


# ---------------------------------------------------------------------------------------------
# Table 1b: CIFAR-10, all images, N_l of them labelled per class (the rest: distillation only).

def _table1b(row: str, column: str, seed: int, scale: str) -> ml_collections.ConfigDict:
    n_l = int(column.removeprefix("N_l="))
    config = _cifar10(cifar10_recipe())
    config.model.update(depth=16, width=1)
    config.data.labels_per_class = n_l
    config.seed = config.data.subset_seed = seed
    return _finish(config, scale, 50_000, TABLE_ROWS[row], CIFAR10_TEACHER)


TABLE1B = Grid(
    name="cifar10_table1b",
    title="Table 1b: CIFAR-10, WRN-40-2 -> WRN-16-1, all 50,000 images, N_l labelled per class",
    rows=tuple(TABLE_ROWS), columns=("N_l=1000", "N_l=500", "N_l=100"), build=_table1b,
    notes="Unlabelled images get no task loss, only the distillation terms.",
    teacher_hint=CIFAR10_TEACHER_HINT)


# ---------------------------------------------------------------------------------------------
# Table 2: CIFAR-100, WRN-40-2 teacher, WRN students of several sizes.

STUDENTS = {"WRN-40-2": (40, 2), "WRN-16-2": (16, 2), "WRN-40-1": (40, 1), "WRN-16-1": (16, 1)}


def _table2(row: str, column: str, seed: int, scale: str) -> ml_collections.ConfigDict:
    depth, width = STUDENTS[column]
    config = cifar100_recipe()
    config.model.update(depth=depth, width=width)
    config.seed = seed
    config.progress_bar = False
    return _finish(config, scale, 50_000, TABLE_ROWS[row], CIFAR100_TEACHER)


TABLE2 = Grid(
    name="cifar100_table2",
    title="Table 2: CIFAR-100, WRN-40-2 teacher -> WRN students",
    rows=tuple(TABLE_ROWS), columns=tuple(STUDENTS), build=_table2,
    notes="CIFAR-100 comes from TFDS: prepare it where there is network and set "
          "--config.data.data_dir, or add an image folder of it.",
    teacher_hint="Train it: python launch.py --config=configs/cifar100_wrn40_2.py "
                 "--workdir=workdirs/cifar100_wrn40_2.")


# ---------------------------------------------------------------------------------------------
# CNN -> MLP on CIFAR-10.

MLP_ROWS = {
    "student": {},
    "kd": KD,
    # The MLP has no maps: VID-LP predicts the teacher's logits from its penultimate layer.
    "vid_lp": {"vid_lp": dict(weight=1.0)},
    "kd+vid_lp": {**KD, "vid_lp": dict(weight=1.0)},
}


def _cnn_mlp(row: str, column: str, seed: int, scale: str) -> ml_collections.ConfigDict:
    config = _cifar10(cifar10_recipe())
    config.model = ml_collections.ConfigDict(dict(name="mlp", hidden_sizes=(1024, 1024, 1024)))
    config.seed = seed
    return _finish(config, scale, 50_000, MLP_ROWS[row], CIFAR10_TEACHER)


CNN_MLP = Grid(
    name="cifar10_cnn_mlp",
    title="CNN -> MLP: CIFAR-10, WRN-40-2 teacher -> MLP student (3 x 1024 hidden units)",
    rows=tuple(MLP_ROWS), columns=("all",), build=_cnn_mlp, teacher_hint=CIFAR10_TEACHER_HINT)


GRIDS: dict[str, Grid] = {g.name: g for g in (TABLE1A, TABLE1B, TABLE2, CNN_MLP)}

