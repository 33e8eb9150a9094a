"""The data set: its splits and classes. An in-memory `Split` holds whole arrays, which the
trainer indexes per batch; a streamed split (`stream.StreamSplit`) decodes each batch's images
from disk. Both give a batch's rows with `rows(indices)`."""
from __future__ import annotations

import dataclasses

import numpy as np


class DatasetUnavailableError(RuntimeError):
    """A data set that cannot be read from disk or downloaded."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a data set.

    images: uint8 [N, H, W, C]; labels: int32 [N]; labelled: bool [N]. An image with
    labelled=False gets no task loss but still gets the distillation loss (Table 1b).
    """

    images: np.ndarray
    labels: np.ndarray
    labelled: np.ndarray

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray,
                    labelled: np.ndarray | None = None) -> Split:
        """Checks shapes and dtypes; labels become int32, `labelled` defaults to all True."""
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"images must be 4-D [N, H, W, C]; got shape {images.shape}.")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0..255); got {images.dtype}.")
        n = images.shape[0]
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match {n} images; "
                             f"got {labels.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers; got {labels.dtype}.")
        if labelled is None:
            labelled = np.ones(n, dtype=bool)
        labelled = np.asarray(labelled)
        if labelled.shape != (n,) or labelled.dtype != np.bool_:
            raise ValueError(f"labelled must be bool with shape ({n},); "
                             f"got {labelled.dtype} {labelled.shape}.")
        return cls(images, labels.astype(np.int32), labelled)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> Split:
        """The examples at `indices`, in that order."""
        return Split(self.images[indices], self.labels[indices], self.labelled[indices])

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, labels, labelled) of the examples at `indices`: a batch's arrays."""
        return self.images[indices], self.labels[indices], self.labelled[indices]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The stored [H, W, C] of every image."""
        return tuple(self.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set's splits and classes; `validation` is None unless one was held out. The
    splits are `Split`s, or `stream.StreamSplit`s (`config.data.load="stream"`)."""

    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] = ()
    validation: Split | None = None
