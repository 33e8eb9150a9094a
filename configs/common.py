"""What several configs share, defined once: where the data lies, the teachers, the rows of the
VID paper's tables (Ahn et al., CVPR 2019) and the numbers transcribed from it.

Not a config itself (no get_config): configs import it, `from configs import common`.
"""
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from vid_jax import search
from vid_jax.config_base import cifar10_recipe, cifar100_recipe, teacher_config
from vid_jax.models import WRN_GROUPS
from vid_jax.runner import epochs_per_cell, grid_config, row_terms, search_space

# Data this project has offline, relative to the project root.
CIFAR10_JPEG = "../shared/data/cifar10-jpeg"  # image folder: {train,test}/<class>/*.jpg
CIFAR10_LOSSLESS = "../shared/data/cifar10-lossless.npz"  # CIFAR-10's original pixels

# The teachers the students distill from: the model and the workdir of the run that trained it.
TEACHER_MODEL = dict(name="wrn", depth=40, width=2)  # WRN-40-2, on CIFAR-10 and CIFAR-100
CIFAR10_TEACHER_WORKDIR = "teachers/cifar10_wrn40_2"  # committed (teachers/README.md)
CIFAR10_TEACHER_HINT = (
    "It is a committed artifact (teachers/README.md); to train it again: python launch.py "
    "--config=configs/cifar10_wrn40_2.py:cpu --workdir=teachers/cifar10_wrn40_2.")
# On CIFAR-10's original pixels, its checkpoint chosen on a validation split (2% of every
# class), so that the protocol's grid chooses nothing on the test set (teachers/README.md).
CIFAR10_LOSSLESS_TEACHER_WORKDIR = "teachers/cifar10_wrn40_2_lossless"
CIFAR10_LOSSLESS_TEACHER_HINT = (
    "It is trained by: python launch.py --config=configs/cifar10_wrn40_2.py:lossless "
    "--workdir=workdirs/cifar10_wrn40_2_lossless (40 epochs, resumable; teachers/README.md), "
    "then committed to teachers/cifar10_wrn40_2_lossless; until then point "
    "--config.teacher.workdir at its workdir.")
CIFAR100_TEACHER_WORKDIR = "workdirs/cifar100_wrn40_2"
CIFAR100_TEACHER_HINT = ("Train it: python launch.py --config=configs/cifar100_wrn40_2.py "
                         "--workdir=workdirs/cifar100_wrn40_2.")

# The distillation terms of the paper's tables: config.distill entries. KD as Hinton (T=4, with
# CE), FitNet's hint on the middle group, AT's beta = 1000 of its authors' code, NST's weight
# 25 on the three group ends (the paper writes its term lambda / 2 * MMD^2; its authors' code
# and RepDistiller scale the MMD by 50, twice this weight: the search below spans both),
# VID-I on the three group ends; VID-LP (for a student without maps, the MLP) predicts the
# teacher's logits from the penultimate layer.
# The authors' own recipe (amzn/xfer, var_info_distil; ../shared/paper/README.md): KD with
# T = 2 beside 0.1 * VID-I with their linear mean network and their variance.
TERMS = {
    "kd": dict(weight=1.0, temperature=4.0),
    "fitnet": dict(weight=1.0, layers=WRN_GROUPS[1:2]),
    "at": dict(weight=1000.0, layers=WRN_GROUPS),
    "nst": dict(weight=25.0, layers=WRN_GROUPS),
    "vid_i": dict(weight=1.0, layers=WRN_GROUPS),
    "vid_lp": dict(weight=1.0),
    "kd_authors": dict(method="kd", weight=1.0, temperature=2.0),
    "vid_i_authors": dict(method="vid_i", weight=0.1, layers=WRN_GROUPS,
                          mean_network="authors", variance="authors"),
}
# A row of a table is its terms joined by "+"; "student" has none (the student alone). A row
# named otherwise lists its terms here.
TABLE1_ROWS = ("student", "kd", "fitnet", "at", "nst", "vid_i", "kd+at", "kd+vid_i")
NAMED_ROWS = {"authors": ("kd_authors", "vid_i_authors")}
AUTHORS_ROW = "authors"
MLP_ROWS = ("student", "kd", "vid_lp", "kd+vid_lp")

# The protocol's search spaces (configs/cifar10_table1_protocol.py): every row with a term
# tries each of its values (a row with two terms, every combination). KD's temperature;
# each other term's weight over two decades around its default (VID-I: up to 30, the best
# weight of results/ablations at M = 100; 100 diverged there). The authors' row keeps its
# recipe.
SEARCH = {
    "kd": dict(temperature=(2.0, 4.0, 8.0)),
    "fitnet": dict(weight=(0.1, 1.0, 10.0)),
    "at": dict(weight=(100.0, 1000.0, 10000.0)),
    "nst": dict(weight=(2.5, 25.0, 250.0)),
    "vid_i": dict(weight=(0.1, 1.0, 10.0, 30.0)),
}

# Numbers transcribed from the paper (../shared/paper/README.md): table -> row -> column ->
# test accuracy (%). A cell without one shows "-" in a results table rather than a number
# from memory.
_TABLE1A_M = ("M=5000", "M=1000", "M=500", "M=100")
_TABLE1A = {
    "student": (90.72, 84.67, 79.63, 58.84), "kd": (91.27, 86.11, 82.23, 64.24),
    "fitnet": (90.64, 84.78, 80.73, 68.90), "at": (91.60, 87.26, 84.94, 73.40),
    "nst": (91.16, 86.55, 82.61, 64.53), "vid_i": (91.85, 89.73, 88.09, 81.59),
    "kd+at": (91.81, 87.34, 85.01, 76.29), "kd+vid_i": (91.70, 88.59, 86.53, 78.48),
}
# Table 1b as the paper's workshop version reports it (VID-I called "MI" there); the CVPR
# paper's own Table 1b is not in our sources.
_TABLE1B_N = ("N_l=1000", "N_l=500", "N_l=100")
_TABLE1B = {
    "kd": (91.33, 91.30, 91.29), "fitnet": (85.25, 82.03, 76.85), "at": (89.30, 88.72, 86.34),
    "vid_i": (90.33, 90.23, 89.03), "kd+at": (91.56, 91.81, 91.34),
    "kd+vid_i": (91.57, 91.44, 91.34),
}
_TABLE2_STUDENTS = ("WRN-40-2", "WRN-16-2", "WRN-40-1", "WRN-16-1")
_TABLE2 = {
    "student": (74.34, 70.42, 68.79, 65.46), "kd": (75.80, 72.87, 70.99, 66.03),
    "fitnet": (74.29, 70.89, 68.66, 65.38), "at": (74.76, 71.06, 69.85, 65.31),
    "nst": (74.81, 71.19, 68.00, 64.95), "vid_i": (75.25, 73.31, 71.51, 66.32),
    "kd+vid_i": (76.11, 73.69, 72.16, 67.19), "kd+at": (75.86, 73.13, 71.40, 67.07),
}
# Table 3: transfer from an ImageNet ResNet-34, M training images per class ("M~avg": all of
# them, non-uniform per class). Panels (a) MIT-67 -> ResNet-18, (c) CUB-200-2011 -> ResNet-18,
# (d) CUB-200-2011 -> VGG-9 (its caption is missing in our source; CUB by its M ~ 29.95, the
# student by elimination); (b), MIT-67 -> VGG-9, is not in our sources. "fine_tuned" is the
# paper's "Fine-tuning": the student initialised from its own ImageNet weights.
TABLE3_ROWS = ("student", "fine_tuned", "lwf", "fitnet", "at", "nst", "vid_lp", "vid_i",
               "lwf+fitnet", "vid_lp+vid_i")
TABLE3_M = {"mit67": ("M~80", "M=50", "M=25", "M=10"),
            "cub": ("M~30", "M=20", "M=10", "M=5")}  # M~30: the paper's M~29.95
_TABLE3 = {
    "table3_mit67_resnet18": (
        (48.13, 37.69, 27.01, 14.25), (70.97, 66.04, 58.13, 47.91),
        (63.43, 51.79, 41.04, 22.76), (71.34, 60.45, 54.78, 36.94),
        (58.21, 48.66, 43.66, 27.01), (55.52, 46.34, 33.21, 20.82),
        (67.91, 58.51, 47.09, 31.94), (71.34, 63.66, 60.07, 50.97),
        (70.97, 60.37, 54.48, 38.73), (71.87, 65.75, 61.79, 50.37)),
    "table3_cub_resnet18": (
        (37.22, 24.33, 12.00, 7.09), (76.69, 71.00, 59.25, 44.07),
        (55.18, 42.13, 26.23, 14.27), (66.63, 56.63, 46.68, 31.04),
        (54.62, 41.44, 28.90, 16.55), (55.01, 41.87, 23.76, 15.63),
        (65.59, 54.12, 39.20, 27.86), (73.25, 67.20, 56.86, 46.21),
        (68.69, 58.81, 48.86, 31.30), (69.71, 63.94, 52.87, 41.12)),
    "table3_cub_vgg9": (
        (44.59, 32.10, 15.69, 9.66), (60.96, 51.86, 46.88, 39.98),
        (52.18, 38.05, 25.57, 13.93), (68.96, 61.52, 48.04, 32.89),
        (56.28, 43.96, 28.33, 13.98), (56.55, 44.95, 28.43, 14.66),
        (66.82, 55.94, 38.10, 30.47), (71.51, 65.69, 53.29, 38.09),
        (70.56, 62.44, 47.36, 30.52), (70.00, 65.14, 53.78, 38.76)),
}
PAPER = {
    name: {row: dict(zip(columns, values, strict=True)) for row, values in table.items()}
    for name, columns, table in (("cifar10_table1", _TABLE1A_M, _TABLE1A),
                                 ("cifar10_table1b", _TABLE1B_N, _TABLE1B),
                                 ("cifar100_table2", _TABLE2_STUDENTS, _TABLE2),
                                 *((name, TABLE3_M[name.split("_")[1]],
                                    dict(zip(TABLE3_ROWS, rows, strict=True)))
                                   for name, rows in _TABLE3.items()))}
# The paper's teachers (WRN-40-2), test accuracy (%).
PAPER_TEACHER = {"cifar10": 94.26, "cifar100": 74.16}


def terms_of(row: str) -> tuple[str, ...]:
    """A row's terms: NAMED_ROWS's, else its name split on "+"."""
    return tuple(NAMED_ROWS.get(row, row_terms(row)))


def distill(row: str, known=TABLE1_ROWS + (AUTHORS_ROW,)) -> dict[str, dict]:
    """The config.distill entries of a row of the paper's tables."""
    if row not in known:
        raise ValueError(f"Unknown row {row!r}; choose one of {', '.join(known)}.")
    return {term: dict(TERMS[term]) for term in terms_of(row)}


def teacher(workdir: str) -> ml_collections.ConfigDict:
    """config.teacher of a student of the WRN-40-2 that trained in `workdir`."""
    return teacher_config(dict(TEACHER_MODEL), workdir)


def cifar10_images(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CIFAR-10 from the image folder this project has offline (instead of TFDS)."""
    config.data.source = "image_folder"
    config.data.path = CIFAR10_JPEG
    return config


def table1_student() -> ml_collections.ConfigDict:
    """Table 1's student alone: WRN-16-1 on CIFAR-10 (the image folder), WRN's recipe."""
    config = cifar10_images(cifar10_recipe())
    config.model.update(depth=16, width=1)
    return config


def cifar100_student(depth: int, width: int) -> ml_collections.ConfigDict:
    """A WRN-depth-width student alone on CIFAR-100 (TFDS), RepDistiller's recipe."""
    config = cifar100_recipe()
    config.model.update(depth=depth, width=width)
    return config


def with_row(config: ml_collections.ConfigDict, row: str, teacher_workdir: str,
             known=TABLE1_ROWS + (AUTHORS_ROW,)) -> ml_collections.ConfigDict:
    """`config` with the row's terms, and the teacher where the row has any."""
    entries = distill(row, known)
    if entries:
        config.teacher = teacher(teacher_workdir)
    for name, entry in entries.items():
        config.distill[name] = entry
    return config


# ---------------------------------------------------------------------------------------------
# The paper's grids (configs/cifar10_table1.py, ...): scales and the shared parts.

SCALES = ("small", "full")
# Small scale: every cell trains about SMALL_SCALE_IMAGES images (cosine schedule), and every
# training image at least SMALL_SCALE_MIN_EPOCHS times, so a column of many images is not one
# epoch: round(61,440 / n) epochs for n images up to 6,144, 10 above (M = 1000 and 5000,
# Table 1b's 50,000). Full scale is the recipe of the cell's config.
SMALL_SCALE_IMAGES = 61_440
SMALL_SCALE_MIN_EPOCHS = 10
# What this project's 2-core CPU trains: a WRN-16-1 student with VID-I from the WRN-40-2, the
# teacher's forward included, about 150 images/s alone (the student alone about twice as
# fast); eight runs in one shared step about 1.85x as fast as one after another
# (benchmarks/README.md). A column that takes more than CPU_AFFORDABLE_HOURS at that rate is
# beyond what this CPU can run here.
CPU_IMAGES_PER_SECOND = 150
CPU_AFFORDABLE_HOURS = 24


def grid(name: str, title: str, cell: ml_collections.ConfigDict, rows: Sequence[str],
         columns: Mapping[str, Mapping[str, Any]], scale: str, paper: str | None = None,
         **fields) -> ml_collections.ConfigDict:
    """A grid of the paper at a scale: its rows' terms, its transcribed numbers (of the paper's
    table `paper`, default `name`), and the cell base at that scale. small: max(10,
    round(61,440 / the column's training images)) epochs, cosine, about 10 evaluations;
    full: the cell's recipe."""
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    cell.progress_bar = False
    if scale == "small":
        cell.optimizer.schedule = "cosine"
        # None: derived per column from images_per_cell (vid_jax.runner.grid_config).
        cell.num_epochs = placeholder(int)
        cell.eval_every_epochs = placeholder(int)
        cell.checkpoint_every_epochs = placeholder(int)
    named = {r: NAMED_ROWS[r] for r in rows if r in NAMED_ROWS}
    terms = {t: TERMS[t] for t in dict.fromkeys(
        t for r in rows for t in named.get(r, row_terms(r)))}
    return grid_config(name, title, cell, rows, columns, terms=terms, scale=scale,
                       images_per_cell=SMALL_SCALE_IMAGES if scale == "small" else None,
                       min_epochs=SMALL_SCALE_MIN_EPOCHS if scale == "small" else None,
                       paper=PAPER.get(paper or name), named_rows=named, **fields)


def cpu_cost(config: ml_collections.ConfigDict) -> str:
    """What the grid's default runs cost this project's CPU per column (VID-I's rate, one run
    at a time; sharing a step is faster), and which columns it cannot afford."""
    rows = [r for r in config.rows.split(",") if r]
    seeds = len(config.seeds.split(","))
    searched = 0.0  # search runs, in final runs' worth of images
    if config.selection == "validation":
        candidates = [len(search.candidates(search_space(config, row))) for row in rows]
        runs = sum(n for n in candidates if n > 1) * len(config.search_seeds.split(","))
        searched = runs * (1 - config.validation_fraction)
    parts, beyond = [], []
    for column in config.table.columns:
        n = config.table.train_images[column]
        epochs = (config.cell.num_epochs if config.cell.num_epochs is not None else
                  epochs_per_cell(config.images_per_cell, n, config.min_epochs))
        hours = epochs * n / CPU_IMAGES_PER_SECOND / 3600
        column_hours = hours * (len(rows) * seeds + searched)
        a_cell = f"{60 * hours:.0f} min" if hours < 1 else f"{hours:.1f} h"
        parts.append(f"{column} {a_cell} a cell, {column_hours:,.0f} h the column")
        if column_hours > CPU_AFFORDABLE_HOURS:
            beyond.append(column)
    runs = f"{len(rows)} rows x {seeds} seeds" + (
        f" + {searched / (1 - config.validation_fraction):.0f} search runs a column"
        if searched else "")
    return (f"Cost on this project's 2-core CPU at {CPU_IMAGES_PER_SECOND} images/s (a VID-I "
            f"cell, alone; the default {runs}): " + "; ".join(parts) + ". "
            + (f"Beyond this CPU (over {CPU_AFFORDABLE_HOURS} h a column): "
               f"{', '.join(beyond)}." if beyond else "Every column fits in "
               f"{CPU_AFFORDABLE_HOURS} h."))


def table1_grid(name: str, title: str, columns: Mapping[str, Mapping[str, Any]], scale: str,
                train_images: Mapping[str, int], notes: str,
                **fields) -> ml_collections.ConfigDict:
    """A grid of Table 1 (1a or 1b): its rows (the authors' recipe as an optional one), on
    Table 1's student and teacher; each seed draws its own subset. `fields` replace the
    defaults (data, teacher, selection...)."""
    fields = dict(dict(teacher=teacher(CIFAR10_TEACHER_WORKDIR),
                       teacher_hint=CIFAR10_TEACHER_HINT, optional_rows=(AUTHORS_ROW,)),
                  **fields)
    cell = fields.pop("cell", None) or table1_student()
    config = grid(name, title, cell, TABLE1_ROWS + (AUTHORS_ROW,), columns, scale,
                  train_images=train_images, seed_fields=("seed", "data.subset_seed"),
                  **fields)
    config.notes = " ".join(filter(None, (notes, cpu_cost(config))))
    return config
