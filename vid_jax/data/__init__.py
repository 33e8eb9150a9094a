"""Data sets: loaders (TFDS, image folders, .npz archives, scikit-learn's digits), in memory
or streamed from disk (`stream.py`), and seeded per-class subsets of the training split."""
from vid_jax.data.sources import (
    SOURCES,
    load_arrays,
    load_dataset,
    load_digits,
    load_image_folder,
    load_image_list,
    load_tfds,
)
from vid_jax.data.stream import (
    LOADS,
    STREAM_SOURCES,
    StreamSplit,
    pixel_statistics,
    read_batches,
    read_threads,
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
    "LOADS", "SOURCES", "STREAM_SOURCES", "Dataset", "DatasetUnavailableError", "Split",
    "StreamSplit", "apply_subsets", "holdout_split", "images_per_class", "labelled_mask",
    "load_arrays", "load_dataset", "load_digits", "load_image_folder", "load_image_list",
    "load_tfds", "pixel_statistics", "read_batches", "read_threads", "select_classes",
]
