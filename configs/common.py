"""What several configs share, defined once: where the data lies, the teachers, the rows of the
VID paper's tables (Ahn et al., CVPR 2019) and the numbers transcribed from it.

Not a config itself (no get_config): configs import it, `from configs import common`.
"""
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from vid_jax.config_base import cifar10_recipe, cifar100_recipe
from vid_jax.models import WRN_GROUPS
from vid_jax.runner import grid_config, row_terms

# Data this project has offline, relative to the project root.
CIFAR10_JPEG = "../shared/data/cifar10-jpeg"  # image folder: {train,test}/<class>/*.jpg
CIFAR10_LOSSLESS = "../shared/data/cifar10-lossless.npz"  # CIFAR-10's original pixels

# The teachers the students distill from: the model and the workdir of the run that trained it.
TEACHER_MODEL = dict(name="wrn", depth=40, width=2)  # WRN-40-2, on CIFAR-10 and CIFAR-100
CIFAR10_TEACHER_WORKDIR = "teachers/cifar10_wrn40_2"  # committed (teachers/README.md)
CIFAR10_TEACHER_HINT = (
    "It is a committed artifact (teachers/README.md); to train it again: python launch.py "
    "--config=configs/cifar10_wrn40_2.py:cpu --workdir=teachers/cifar10_wrn40_2.")
CIFAR100_TEACHER_WORKDIR = "workdirs/cifar100_wrn40_2"
CIFAR100_TEACHER_HINT = ("Train it: python launch.py --config=configs/cifar100_wrn40_2.py "
                         "--workdir=workdirs/cifar100_wrn40_2.")

# The distillation terms of the paper's tables: config.distill entries. KD as Hinton (T=4, with
# CE), FitNet's hint on the middle group, AT's beta = 1000 of its authors' code, NST's weight
# 50/2 of its authors' code on the three group ends, VID-I on the three group ends; VID-LP (for
# a student without maps, the MLP) predicts the teacher's logits from the penultimate layer.
TERMS = {
    "kd": dict(weight=1.0, temperature=4.0),
    "fitnet": dict(weight=1.0, layers=WRN_GROUPS[1:2]),
    "at": dict(weight=1000.0, layers=WRN_GROUPS),
    "nst": dict(weight=25.0, layers=WRN_GROUPS),
    "vid_i": dict(weight=1.0, layers=WRN_GROUPS),
    "vid_lp": dict(weight=1.0),
}
# A row of a table is its terms joined by "+"; "student" has none (the student alone).
TABLE1_ROWS = ("student", "kd", "fitnet", "at", "nst", "vid_i", "kd+at", "kd+vid_i")
MLP_ROWS = ("student", "kd", "vid_lp", "kd+vid_lp")

# Numbers transcribed from the paper: table -> row -> column -> test accuracy (%). A cell
# without one shows "-" in a results table rather than a number from memory.
PAPER = {
    # Table 1a, the M=100 column, as quoted in vid-jax issue 4.
    "cifar10_table1": {"student": {"M=100": 58.84}, "kd": {"M=100": 64.24},
                       "fitnet": {"M=100": 68.90}, "at": {"M=100": 73.40},
                       "nst": {"M=100": 64.53}, "vid_i": {"M=100": 81.59}},
}


def distill(row: str, known=TABLE1_ROWS) -> dict[str, dict]:
    """The config.distill entries of a row of the paper's tables."""
    if row not in known:
        raise ValueError(f"Unknown row {row!r}; choose one of {', '.join(known)}.")
    return {term: dict(TERMS[term]) for term in row_terms(row)}


def teacher(workdir: str) -> ml_collections.ConfigDict:
    """config.teacher of a student of the WRN-40-2 that trained in `workdir`."""
    return ml_collections.ConfigDict(dict(model=dict(TEACHER_MODEL), workdir=workdir))


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
             known=TABLE1_ROWS) -> ml_collections.ConfigDict:
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
# Small scale: every cell trains about this many images (cosine schedule), which a 2-core CPU
# trains in minutes for a WRN-16-1 student; full scale is the recipe of the cell's config.
SMALL_SCALE_IMAGES = 61_440


def grid(name: str, title: str, cell: ml_collections.ConfigDict, rows: Sequence[str],
         columns: Mapping[str, Mapping[str, Any]], scale: str,
         **fields) -> ml_collections.ConfigDict:
    """A grid of the paper at a scale: its rows' terms, its transcribed numbers, and the cell
    base at that scale. small: round(61,440 / the column's training images) epochs, cosine,
    about 10 evaluations; full: the cell's recipe."""
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    cell.progress_bar = False
    if scale == "small":
        cell.optimizer.schedule = "cosine"
        # None: derived per column from images_per_cell (vid_jax.runner.grid_config).
        cell.num_epochs = placeholder(int)
        cell.eval_every_epochs = placeholder(int)
        cell.checkpoint_every_epochs = placeholder(int)
    terms = {t: TERMS[t] for t in dict.fromkeys(t for r in rows for t in row_terms(r))}
    return grid_config(name, title, cell, rows, columns, terms=terms, scale=scale,
                       images_per_cell=SMALL_SCALE_IMAGES if scale == "small" else None,
                       paper=PAPER.get(name), **fields)


def table1_grid(name: str, title: str, columns: Mapping[str, Mapping[str, Any]], scale: str,
                train_images: Mapping[str, int], notes: str) -> ml_collections.ConfigDict:
    """A grid of Table 1 (1a or 1b): its rows, on Table 1's student and teacher; each seed
    draws its own subset."""
    return grid(name, title, table1_student(), TABLE1_ROWS, columns, scale,
                train_images=train_images, seed_fields=("seed", "data.subset_seed"),
                teacher=teacher(CIFAR10_TEACHER_WORKDIR), teacher_hint=CIFAR10_TEACHER_HINT,
                notes=notes)
