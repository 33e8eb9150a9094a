"""Data sets in memory: loaders (TFDS, image folders, .npz archives, scikit-learn's digits)
and seeded per-class subsets of the training split."""
from vid_jax.data.sources import (
    SOURCES,
    load_arrays,
    load_dataset,
    load_digits,
    load_image_folder,
    load_image_list,
    load_tfds,
)
from vid_jax.data.subsets import (
    apply_subsets,
    holdout_split,
    images_per_class,
    labelled_mask,
    select_classes,
)
from vid_jax.data.types import Dataset, DatasetUnavailableError, Split

__all__ = [
    "SOURCES", "Dataset", "DatasetUnavailableError", "Split", "apply_subsets", "holdout_split",
    "images_per_class", "labelled_mask", "load_arrays", "load_dataset", "load_digits",
    "load_image_folder", "load_image_list", "load_tfds", "select_classes",
]
