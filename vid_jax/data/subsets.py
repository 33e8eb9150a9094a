"""Seeded per-class subsets of a training set: M images per class (Table 1a), N_l labelled
images per class (Table 1b) and a per-class validation hold-out; and a selection of classes.

Each function draws one seeded permutation per class that does not depend on how many images
it then takes, so for one seed a smaller subset is always inside a larger one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from vid_jax.data.types import Dataset


def _per_class_orders(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Each class's indices in one seeded random order (classes in ascending label order)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def _check_per_class(labels: np.ndarray, name: str, count: int) -> None:
    """Raises a ValueError that names every class with fewer than `count` images."""
    if count < 0:
        raise ValueError(f"{name} must be >= 0; got {count}.")
    classes, counts = np.unique(labels, return_counts=True)
    short = [f"class {c} has only {n}" for c, n in zip(classes, counts, strict=True) if n < count]
    if short:
        listed = ", ".join(short[:3]) + (f" (and {len(short) - 3} more classes)"
                                         if len(short) > 3 else "")
        raise ValueError(f"{name}={count} but {listed} training images; "
                         f"use at most {counts.min()}.")


def _first_per_class(labels: np.ndarray, count: int, seed: int, name: str) -> np.ndarray:
    """Sorted indices of the first `count` of every class's seeded order."""
    _check_per_class(labels, name, count)
    chosen = [order[:count] for order in _per_class_orders(labels, seed)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def images_per_class(labels: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Sorted indices of `m` images of every class, nested in `m` for one seed."""
    return _first_per_class(labels, m, seed, "images_per_class")


def labelled_mask(labels: np.ndarray, labels_per_class: int, seed: int) -> np.ndarray:
    """A bool mask, True for `labels_per_class` images of every class, nested for one seed."""
    mask = np.zeros(len(labels), dtype=bool)
    mask[_first_per_class(labels, labels_per_class, seed, "labels_per_class")] = True
    return mask


def holdout_split(labels: np.ndarray, fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices: `fraction` of every class held out for validation.

    Rounds to the nearest count, but holds out at least one image per class when fraction > 0.
    """
    labels = np.asarray(labels)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1); got {fraction}.")
    train, validation = [], []
    for order in _per_class_orders(labels, seed):
        n_val = max(1, int(fraction * len(order) + 0.5)) if fraction > 0 else 0
        if fraction > 0 and n_val >= len(order):
            c = labels[order[0]]
            raise ValueError(f"validation_fraction={fraction} would hold out all "
                             f"{len(order)} images of class {c}; it needs at least 2.")
        validation.append(order[:n_val])
        train.append(order[n_val:])
    empty = np.zeros(0, np.int64)
    return (np.sort(np.concatenate(train)) if train else empty,
            np.sort(np.concatenate(validation)) if validation else empty)


def select_classes(dataset: Dataset, classes: Sequence[str | int] | None) -> Dataset:
    """The data set restricted to `classes` (names, or labels 0..num_classes-1), relabelled
    0..k-1 in the order given, in both splits (None: unchanged). How one data set gives two
    tasks: a teacher's classes and a student's other classes (CIFAR-10's first five and last
    five)."""
    if classes is None:
        return dataset
    if isinstance(classes, (str, int)):
        classes = (classes,)
    names = list(dataset.class_names)
    labels = []
    for c in classes:
        if isinstance(c, str) and c in names:
            labels.append(names.index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and \
                0 <= c < dataset.num_classes:
            labels.append(int(c))
        else:
            known = ", ".join(names) if names else f"labels 0..{dataset.num_classes - 1}"
            raise ValueError(f"data.classes: {c!r} is not a class of the data set ({known}).")
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"data.classes={tuple(classes)!r}: give each class once, at least one.")
    new_label = np.full(dataset.num_classes, -1, np.int32)
    new_label[labels] = np.arange(len(labels), dtype=np.int32)

    def keep(split):
        if split is None:
            return None
        chosen = np.flatnonzero(new_label[split.labels] >= 0)
        taken = split.take(chosen)
        return dataclasses.replace(taken, labels=new_label[taken.labels])

    return dataclasses.replace(
        dataset, train=keep(dataset.train), test=keep(dataset.test),
        validation=keep(dataset.validation), num_classes=len(labels),
        class_names=tuple(names[i] for i in labels) if names else ())


def apply_subsets(dataset: Dataset,
                  data_config: ml_collections.ConfigDict | Mapping[str, Any]) -> Dataset:
    """Applies the config's subsets to the training split, in this order:

    `images_per_class` (None = all), then the `validation_fraction` hold-out from those
    (0 = none; it becomes `dataset.validation`), then `labels_per_class` (None = all
    labelled) on the images that remain; all drawn with `subset_seed`.
    """
    m = data_config.get("images_per_class")
    fraction = data_config.get("validation_fraction") or 0.0
    n_labelled = data_config.get("labels_per_class")
    seed = data_config.get("subset_seed") or 0

    train, validation = dataset.train, dataset.validation
    if m is not None:
        train = train.take(images_per_class(train.labels, m, seed))
    if fraction:
        if validation is not None:
            raise ValueError("The data set already has a validation split; "
                             "set validation_fraction=0 to use it.")
        keep, held_out = holdout_split(train.labels, fraction, seed)
        train, validation = train.take(keep), train.take(held_out)
    if n_labelled is not None:
        mask = labelled_mask(train.labels, n_labelled, seed)
        train = dataclasses.replace(train, labelled=train.labelled & mask)
    return dataclasses.replace(dataset, train=train, validation=validation)
