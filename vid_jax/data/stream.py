"""Data sets larger than memory (`config.data.load="stream"`): splits that hold each example's
file (or TFDS record) and label, and decode only the images a batch needs, on grain's
threads, ahead of the step.

A `StreamSplit` stands where an in-memory `Split` stands: the per-class subsets and class
selections take its rows without decoding anything, the sampler draws the same batches from
it, and `rows(indices)` gives a batch's arrays. `read_batches` gives a sequence of batches in
order, decoded `num_threads` examples at a time by a grain pipeline (a `MapDataset` of the
examples, `to_iter_dataset` with `ReadOptions`, `batch`). Which examples a batch holds is a
function of the batch's number, so each process reads only its rows of a global batch, and a
resumed run starts reading at its step and gets the batches an uninterrupted run gets.

Each image is stored as the in-memory loaders store it (`sources.decode_image`,
`sources.stored_image`): resized to `data.image_size` (which streaming needs, so that every
batch has one shape) by `data.resize`; augmentation stays on the device.

A TFDS data set is read through `tfds.data_source`, which needs it prepared as array_record
files (random access): the same sampler, order and resume as an image folder. A set prepared
as tfrecord (TFDS's default) is refused with the command that converts it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vid_jax.data.sources import (
    DataConfig,
    _required,
    _without_tfds_probe_warnings,
    decode_image,
    image_folder_files,
    image_list_files,
    import_tfds,
    stored_image,
)
from vid_jax.data.types import Dataset, DatasetUnavailableError, Split

# `config.data.load`: "memory" decodes whole splits when a run starts (fast steps, small
# sets); "stream" decodes each batch from disk as the run goes (sets larger than memory).
LOADS = ("memory", "stream")
# Examples decoded ahead of the one the step takes, in batches: two keep the next batch ready
# while one is being taken, without holding much more than a batch in memory.
PREFETCH_BATCHES = 2
# Training images whose pixels give the per-channel mean and std when the config sets none:
# all of a smaller set, else a seeded sample (a property of the data set, not of a run's seed).
STATISTICS_SAMPLE = 1000
# Decoding threads by default: one per core, up to grain's own default.
MAX_READ_THREADS = 16
# Labels read per call when a TFDS split's labels are read up front.
_LABEL_CHUNK = 4096


def check_load(c: DataConfig) -> None:
    """Refuses a data config's `load` and `read_threads` that cannot work, each with one line
    that says what to set: before anything is read or written."""
    load = c.get("load") or "memory"
    if load not in LOADS:
        raise ValueError(f"config.data.load={load!r}: choose 'memory' (whole splits decoded "
                         "when the run starts) or 'stream' (each batch decoded from disk).")
    threads = c.get("read_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 0):
        raise ValueError(f"config.data.read_threads={threads!r}: give a number of decoding "
                         "threads >= 0 (0: decode each batch when it is taken).")
    if load == "memory":
        return
    source = c.get("source") or "tfds"
    if source not in STREAM_SOURCES:
        raise ValueError(f"config.data.load='stream' reads {', '.join(STREAM_SOURCES)}; "
                         f"config.data.source={source!r} is read whole: set "
                         "config.data.load='memory'.")
    if c.get("image_size") is None:
        raise ValueError("config.data.load='stream' needs config.data.image_size: every image "
                         "is decoded to that size (config.data.resize) as its batch is read.")
    try:
        import grain  # noqa: F401
    except ImportError:
        raise DatasetUnavailableError(
            "config.data.load='stream' reads with grain, an optional extra: pip install "
            "'vid-jax[stream]' (from a clone: pip install -e '.[stream]'), or set "
            "config.data.load='memory'.") from None


def read_threads(c: DataConfig) -> int:
    """The decoding threads of `config.data.read_threads` (None: one per core, at most
    `MAX_READ_THREADS`)."""
    threads = c.get("read_threads")
    return min(os.cpu_count() or 1, MAX_READ_THREADS) if threads is None else threads


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """Decodes image files as the in-memory loaders do (`sources.decode_image`)."""

    image_size: int
    resize: str = "stretch"

    def read(self, key: str) -> tuple[np.ndarray, None]:
        """The image stored at file `key`; its label is the split's."""
        return decode_image(Path(key), self.image_size, self.resize), None


@dataclasses.dataclass(frozen=True)
class TfdsRecords:
    """Reads records of a TFDS split prepared as array_record files (`tfds.data_source`) and
    stores their images as the in-memory loader does (`sources.stored_image`)."""

    source: Any  # TFDS's ArrayRecordDataSource: random access, picklable
    image_key: str
    label_key: str
    image_size: int
    resize: str = "stretch"

    def read(self, key: int) -> tuple[np.ndarray, int]:
        """The image and the label of record `key`."""
        record = self.source[int(key)]
        return (stored_image(np.asarray(record[self.image_key]), self.image_size, self.resize),
                int(record[self.label_key]))


@dataclasses.dataclass(frozen=True)
class StreamSplit:
    """One split, read from disk a batch at a time.

    keys: each example's file path (image folders, lists) or record number (TFDS);
    labels: int32 [N], or None where each record holds its own (a TFDS split's labels are
    read up front only when a class selection or subset needs them); labelled: bool [N], as
    `Split.labelled`; reader: what decodes a key.
    """

    keys: np.ndarray
    labels: np.ndarray | None
    labelled: np.ndarray
    reader: ImageFiles | TfdsRecords

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The stored [H, W, C] of every image: RGB at the reader's `image_size`."""
        return (self.reader.image_size, self.reader.image_size, 3)

    def take(self, indices: np.ndarray) -> StreamSplit:
        """The examples at `indices`, in that order (nothing decoded)."""
        labels = None if self.labels is None else self.labels[indices]
        return StreamSplit(self.keys[indices], labels, self.labelled[indices], self.reader)

    def example(self, index: int) -> tuple[np.ndarray, np.int32, np.bool_]:
        """(image, label, labelled) of example `index`, decoded."""
        image, label = self.reader.read(self.keys[index])
        label = label if self.labels is None else self.labels[index]
        return image, np.int32(label), self.labelled[index]

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, labels, labelled) of the examples at `indices`, decoded here, in turn."""
        images, labels, labelled = zip(*(self.example(int(i)) for i in indices))
        return np.stack(images), np.asarray(labels, np.int32), np.asarray(labelled, bool)


def read_batches(split: Split | StreamSplit, batch_indices: Callable[[int], np.ndarray],
                 first: int, stop: int, num_threads: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images, labels, labelled) of batches `first` .. `stop - 1` of `split`, in order;
    batch b holds the examples `batch_indices(b)` (as many in every batch).

    An in-memory split is indexed as each batch is taken. A streamed one is decoded by a grain
    pipeline: `num_threads` threads decode examples in order, `PREFETCH_BATCHES` batches ahead
    of the caller (0 threads: each batch is decoded when it is taken). `batch_indices` is
    called from those threads, so it must be safe to call from several at once.
    """
    if not isinstance(split, StreamSplit):
        for b in range(first, stop):
            yield split.rows(batch_indices(b))
        return
    if stop <= first:
        return
    import grain

    rows_per_batch = len(batch_indices(first))
    indices = functools.lru_cache(maxsize=4 * PREFETCH_BATCHES)(batch_indices)

    def example(position: int):
        b, row = divmod(position, rows_per_batch)
        return split.example(int(indices(first + b)[row]))

    examples = grain.MapDataset.range((stop - first) * rows_per_batch).map(example)
    options = grain.ReadOptions(num_threads=num_threads,
                                prefetch_buffer_size=PREFETCH_BATCHES * rows_per_batch)
    batches = iter(examples.to_iter_dataset(options).batch(rows_per_batch))
    try:
        yield from batches
    finally:  # stops the threads when the caller stops early (an error, a finished loop)
        batches.close()


def pixel_statistics(split: Split | StreamSplit, num_threads: int = 0
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the training pixels, scaled to 0..1: of all
    images of an in-memory split; of a streamed one, of `STATISTICS_SAMPLE` images drawn with
    a fixed seed (all of a smaller split), decoded on `num_threads` threads."""
    if not isinstance(split, StreamSplit):
        pixels = split.images.reshape(-1, split.images.shape[-1]) / 255.0
        return tuple(float(v) for v in pixels.mean(0)), tuple(float(v) for v in pixels.std(0))
    n = len(split)
    chosen = (np.arange(n) if n <= STATISTICS_SAMPLE else
              np.sort(np.random.default_rng(0).choice(n, STATISTICS_SAMPLE, replace=False)))
    chunk = 64
    total, squares, count = 0.0, 0.0, 0
    for images, _, _ in read_batches(
            split, lambda b: chosen[np.minimum(np.arange(b * chunk, (b + 1) * chunk), n - 1)],
            0, -(-len(chosen) // chunk), num_threads):
        images = images[:len(chosen) - count]  # the last chunk repeats its last image
        pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total, squares = total + pixels.sum(0), squares + np.square(pixels).sum(0)
        count += len(images)
    mean = total / (count * split.image_shape[0] * split.image_shape[1])
    std = np.sqrt(np.maximum(squares / (count * split.image_shape[0] * split.image_shape[1])
                             - np.square(mean), 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ---------------------------------------------------------------------------------------------
# Sources.

def _file_split(files: list[Path], labels: list[int], reader: ImageFiles) -> StreamSplit:
    return StreamSplit(np.asarray([os.fspath(f) for f in files], dtype=object),
                       np.asarray(labels, np.int32), np.ones(len(files), bool), reader)


def _reader(c: DataConfig) -> ImageFiles:
    return ImageFiles(c.get("image_size"), c.get("resize") or "stretch")


def _stream_image_folder(c: DataConfig) -> Dataset:
    train_split, test_split = c.get("train_split") or "train", c.get("test_split") or "test"
    class_names, listed = image_folder_files(_required(c, "path", "image_folder"), train_split,
                                             test_split)
    return Dataset(train=_file_split(*listed[train_split], _reader(c)),
                   test=_file_split(*listed[test_split], _reader(c)),
                   num_classes=len(class_names), class_names=class_names)


def _stream_image_list(c: DataConfig) -> Dataset:
    class_names, (train, test) = image_list_files(
        _required(c, "path", "image_list"), _required(c, "train_list", "image_list"),
        _required(c, "test_list", "image_list"))
    return Dataset(train=_file_split(*train, _reader(c)), test=_file_split(*test, _reader(c)),
                   num_classes=len(class_names), class_names=class_names)


def needs_labels(c: DataConfig) -> bool:
    """Whether the config's class selection or subsets read the training labels up front."""
    return bool(c.get("classes") is not None or c.get("images_per_class") is not None
                or c.get("labels_per_class") is not None or c.get("validation_fraction"))


def _tfds_split(tfds, builder, source, split: str, c: DataConfig,
                read_labels: bool) -> StreamSplit:
    image_key, label_key = builder.info.supervised_keys
    labels = None
    if read_labels:  # every record read once, its image left undecoded
        undecoded = builder.as_data_source(
            split=split, decoders={image_key: tfds.decode.SkipDecoding()})
        labels = np.concatenate([
            np.asarray([r[label_key] for r in undecoded.__getitems__(
                range(start, min(start + _LABEL_CHUNK, len(undecoded))))], np.int32)
            for start in range(0, len(undecoded), _LABEL_CHUNK)] or [np.zeros(0, np.int32)])
    reader = TfdsRecords(source, image_key, label_key, c.get("image_size"),
                         c.get("resize") or "stretch")
    return StreamSplit(np.arange(len(source)), labels, np.ones(len(source), bool), reader)


def _stream_tfds(c: DataConfig) -> Dataset:
    name, data_dir = _required(c, "name", "tfds"), c.get("data_dir")
    tfds = import_tfds(name)
    prepare = (f"prepare it as array_record files (python -c \"import tensorflow_datasets as "
               f"tfds; tfds.builder('{name}', file_format='array_record')"
               ".download_and_prepare()\", with --config.data.data_dir's directory as "
               "data_dir=...), or set config.data.load='memory'")
    try:
        with _without_tfds_probe_warnings():
            builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as unknown:
        raise ValueError(f"TFDS has no data set named {name!r}; see "
                         "https://www.tensorflow.org/datasets/catalog.") from unknown
    train_split, test_split = c.get("train_split") or "train", c.get("test_split") or "test"
    try:
        sources = {split: builder.as_data_source(split=split)
                   for split in (train_split, test_split)}
    except (ValueError, NotImplementedError) as unreadable:  # not prepared, or as tfrecord
        with _without_tfds_probe_warnings():
            prepared = builder.is_prepared()
        if not prepared:
            where = (data_dir or os.environ.get("TFDS_DATA_DIR")
                     or "the default ~/tensorflow_datasets")
            raise DatasetUnavailableError(f"TFDS data set {name!r} is not prepared in {where}; "
                                          f"streaming does not download: {prepare}.") from None
        raise DatasetUnavailableError(
            f"TFDS data set {name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}, which streaming cannot read at random: "
            f"{prepare}; TFDS can also convert this copy (tfds convert_format "
            f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record, which "
            "needs apache-beam).") from unreadable
    label = builder.info.features[builder.info.supervised_keys[1]]
    return Dataset(
        train=_tfds_split(tfds, builder, sources[train_split], train_split, c, needs_labels(c)),
        test=_tfds_split(tfds, builder, sources[test_split], test_split, c,
                         c.get("classes") is not None),
        num_classes=int(label.num_classes), class_names=tuple(label.names))


# Each source reads a Dataset of StreamSplits from the data config.
STREAMS: Mapping[str, Callable[[DataConfig], Dataset]] = {
    "image_folder": _stream_image_folder,
    "image_list": _stream_image_list,
    "tfds": _stream_tfds,
}
STREAM_SOURCES = tuple(STREAMS)  # those whose examples are files or random-access records
