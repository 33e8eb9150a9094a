"""Where data sets come from: TFDS, an image folder on disk, images listed per split (MIT-67),
a NumPy archive of arrays, or scikit-learn's digits.

Each loader reads whole splits into memory as NumPy arrays (uint8 NHWC images, int32 labels);
`load_dataset` picks one from the data config and then applies the configured subsets.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from vid_jax.data.subsets import apply_subsets, select_classes
from vid_jax.data.types import Dataset, DatasetUnavailableError, Split

DataConfig = ml_collections.ConfigDict | Mapping[str, Any]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# How images of any size become one stored size (`data.resize`): "stretch" resizes to
# image_size x image_size; "shorter_side" resizes the shorter side to image_size (keeping the
# aspect ratio) and keeps the centre square, as ImageNet's test transform (resize 256) does
# before its centre crop. Bilinear, antialiased (Pillow's resize).
RESIZE_MODES = ("stretch", "shorter_side")


def resized(image: Image.Image, image_size: int | None, mode: str = "stretch") -> Image.Image:
    """`image` at the stored size `image_size` x `image_size` (None: unchanged)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"data.resize={mode!r}: choose one of {', '.join(RESIZE_MODES)}.")
    if image_size is None:
        return image
    if mode == "stretch":
        return image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    width, height = image.size
    ratio = image_size / min(width, height)
    width, height = max(image_size, round(width * ratio)), max(image_size, round(height * ratio))
    left, top = (width - image_size) // 2, (height - image_size) // 2
    return image.resize((width, height), Image.Resampling.BILINEAR).crop(
        (left, top, left + image_size, top + image_size))


def stored_image(image: np.ndarray, image_size: int, resize: str = "stretch") -> np.ndarray:
    """A decoded image array ([H, W, 1] grey or [H, W, 3]) as uint8 RGB at the stored size
    (`resized`): how a TFDS record is stored, in memory or streamed."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return np.asarray(resized(pil.convert("RGB"), image_size, resize))


# ---------------------------------------------------------------------------------------------
# TFDS.

# Examples per tf.data batch when reading a split: large enough to be fast, bounded because
# `tfds.load(batch_size=-1)` asks for sys.maxsize rows when the split size is unknown (as under
# `tfds.testing.mock_data`), which aborts the process.
_TFDS_CHUNK = 10_000


def _has_network(host: str = "storage.googleapis.com", port: int = 443,
                 timeout: float = 3.0) -> bool:
    """Whether TFDS's download host answers; checked first because a TFDS download without
    network takes minutes to fail."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hide_gpus_from_tensorflow() -> None:
    """Keeps TF (which TFDS runs on) off the accelerators, which belong to JAX."""
    try:
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
    except (ImportError, RuntimeError, ValueError):
        pass  # no TF, or TF already initialised its devices: nothing left to change


def _unavailable_message(name: str, data_dir: str | None, reason: str) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "the default ~/tensorflow_datasets"
    return (
        f"TFDS data set {name!r} is not prepared in {where} and cannot be downloaded "
        f"({reason}). Prepare it on a machine with network (`python -c \"import "
        f"tensorflow_datasets as tfds; tfds.load('{name}')\"`) and point "
        "--config.data.data_dir at a copy, or use --config.data.source=image_folder "
        "--config.data.path=DIR.")


def _read_tfds_split(ds, name: str, split: str, image_size: int | None = None,
                     resize: str = "stretch") -> Split:
    """Reads a supervised tf.data split of (image, label) pairs into one Split; images are
    resized to `image_size` (`resized`), which data sets of varying image sizes (CUB) need."""
    import tensorflow_datasets as tfds

    if image_size is not None:
        images, labels = [], []
        for image, label in tfds.as_numpy(ds):
            images.append(stored_image(image, image_size, resize))
            labels.append(label)
        if not images:
            raise ValueError(f"TFDS data set {name!r} split {split!r} is empty.")
        return Split.from_arrays(np.stack(images), np.asarray(labels))
    if None in ds.element_spec[0].shape:
        raise ValueError(
            f"TFDS data set {name!r} has images of varying size ({ds.element_spec[0].shape}); "
            "set --config.data.image_size to store them at one size (and data.resize).")
    chunks = list(tfds.as_numpy(ds.batch(_TFDS_CHUNK)))
    if not chunks:
        raise ValueError(f"TFDS data set {name!r} split {split!r} is empty.")
    images = np.concatenate([x for x, _ in chunks])
    labels = np.concatenate([y for _, y in chunks])
    if images.ndim == 3:  # grayscale without a channel axis
        images = images[..., None]
    return Split.from_arrays(images, labels)


@contextlib.contextmanager
def _without_tfds_probe_warnings():
    """TFDS warns "Variant folder ... has no dataset_info.json" for each folder it probes for a
    prepared copy; when there is none, the error raised below says so in one message."""
    def keep(record: logging.LogRecord) -> bool:
        return "Variant folder" not in record.getMessage()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


def import_tfds(name: str):
    """TensorFlow Datasets (slow to import: only when TFDS is used), kept off the
    accelerators; without the `tfds` extra, a DatasetUnavailableError that names it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetUnavailableError(
            f"config.data.source='tfds' ({name}) needs TensorFlow Datasets, an optional extra: "
            "pip install 'vid-jax[tfds]' (from a clone: pip install -e '.[tfds]'), or read the "
            "data from an image folder or an .npz (config.data.source).") from None
    _hide_gpus_from_tensorflow()
    return tfds


def load_tfds(name: str, data_dir: str | None = None, train_split: str = "train",
              test_split: str = "test", download: bool = True, image_size: int | None = None,
              resize: str = "stretch") -> Dataset:
    """A TFDS data set, read whole into memory, its images resized to `image_size` if set
    (`resized`; CUB-200-2011 is `caltech_birds2011`, whose images vary in size).

    Reads what is prepared in `data_dir` first; downloads only if that fails, `download` is
    set and the network answers. Otherwise raises DatasetUnavailableError.
    """
    tfds = import_tfds(name)

    def load(split: str, may_download: bool):
        return tfds.load(name, split=split, data_dir=data_dir, as_supervised=True,
                         with_info=True, download=may_download)

    try:
        try:
            with _without_tfds_probe_warnings():
                (train, info), (test, _) = load(train_split, False), load(test_split, False)
        except AssertionError as not_prepared:  # TFDS's "could not find data in <dir>"
            if not download:
                raise DatasetUnavailableError(
                    _unavailable_message(name, data_dir, "download=False")) from not_prepared
            if not _has_network():
                raise DatasetUnavailableError(
                    _unavailable_message(name, data_dir, "no network")) from not_prepared
            try:
                (train, info), (test, _) = load(train_split, True), load(test_split, True)
            except Exception as failed:  # any download failure means the same to the user
                raise DatasetUnavailableError(_unavailable_message(
                    name, data_dir, f"the download failed: {failed}")) from failed
    except NotImplementedError as array_record_only:  # TFDS cannot iterate array_record
        raise DatasetUnavailableError(
            f"TFDS data set {name!r} in {data_dir or 'TFDS_DATA_DIR'} is prepared as "
            "array_record only, which TFDS cannot read whole: stream it with "
            "config.data.load='stream' (pip install 'vid-jax[stream]'), or prepare a tfrecord "
            "copy in another data_dir.") from array_record_only
    except tfds.core.DatasetNotFoundError as unknown:
        # TFDS's own message lists every data set it knows: too long to be useful here.
        raise ValueError(f"TFDS has no data set named {name!r}; see "
                         "https://www.tensorflow.org/datasets/catalog.") from unknown

    label = info.features["label"]
    return Dataset(train=_read_tfds_split(train, name, train_split, image_size, resize),
                   test=_read_tfds_split(test, name, test_split, image_size, resize),
                   num_classes=int(label.num_classes), class_names=tuple(label.names))


# ---------------------------------------------------------------------------------------------
# Image folder: path/<split>/<class>/*.{jpg,jpeg,png}.

def _class_dirs(split_dir: Path) -> list[Path]:
    """The class subdirectories of a split, sorted by name (hidden ones skipped)."""
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    """A class's image files, sorted by name so that the order is deterministic."""
    files = sorted(p for p in class_dir.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"Class folder {class_dir} has no {'/'.join(IMAGE_SUFFIXES)} images.")
    return files


def decode_image(path: Path, image_size: int | None, resize: str = "stretch") -> np.ndarray:
    """One image as uint8 RGB [H, W, 3], resized to a square if `image_size` (`resized`)."""
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":  # grayscale, palette, RGBA, CMYK
                image = image.convert("RGB")
            return np.asarray(resized(image, image_size, resize))
    except (OSError, SyntaxError) as error:  # not an image, truncated, corrupt (Pillow)
        raise ValueError(f"Cannot decode {path}: {error}. Replace or remove the file.") from None


def _folder_split_files(split_dir: Path,
                        class_names: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """One split's image files, class by class, and their labels (positions in
    `class_names`)."""
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        class_files = _image_files(split_dir / class_name)
        files += class_files
        labels += [label] * len(class_files)
    return files, labels


def _decoded_split(files: list[Path], labels: list[int], image_size: int | None, resize: str,
                   num_threads: int, where: str) -> Split:
    # Pillow releases the GIL while it decodes and resizes, so threads help with large images
    # (CUB, MIT-67); for tiny ones (CIFAR) header parsing in Python dominates.
    with ThreadPoolExecutor(num_threads) as pool:
        images = list(pool.map(lambda f: decode_image(f, image_size, resize), files))
    sizes = sorted({image.shape[:2] for image in images})
    if len(sizes) > 1:
        raise ValueError(
            f"The images in {where} have different sizes (e.g. {sizes[0]} and {sizes[-1]}; "
            f"{len(sizes)} sizes in all); set --config.data.image_size to resize them to one.")
    return Split.from_arrays(np.stack(images), np.asarray(labels, np.int32))


def image_folder_files(path: str | os.PathLike, train_split: str = "train",
                       test_split: str = "test"
                       ) -> tuple[tuple[str, ...], dict[str, tuple[list[Path], list[int]]]]:
    """The classes of an image folder `path/<split>/<class>/*.{jpg,jpeg,png}` and, per split,
    its image files and their labels, checked: both splits exist and have the same classes
    (the train split's subdirectories, in sorted order)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetUnavailableError(
            f"Image folder {root} does not exist. Expected the layout "
            f"{root}/{{{train_split},{test_split}}}/<class>/*.jpg (or .jpeg, .png).")
    split_dirs = {split: root / split for split in (train_split, test_split)}
    for split, split_dir in split_dirs.items():
        if not split_dir.is_dir():
            raise ValueError(f"Image folder {root} has no {split!r} split: {split_dir} is "
                             "missing (set --config.data.train_split/test_split if it has "
                             "another name).")
    class_names = tuple(d.name for d in _class_dirs(split_dirs[train_split]))
    if not class_names:
        raise ValueError(f"{split_dirs[train_split]} has no class subdirectories.")
    test_classes = tuple(d.name for d in _class_dirs(split_dirs[test_split]))
    if test_classes != class_names:
        missing = sorted(set(class_names) - set(test_classes))
        extra = sorted(set(test_classes) - set(class_names))
        raise ValueError(f"The {test_split!r} split of {root} must have the same classes as "
                         f"{train_split!r}; missing from it: {missing}, only in it: {extra}.")
    return class_names, {split: _folder_split_files(split_dir, class_names)
                         for split, split_dir in split_dirs.items()}


def load_image_folder(path: str | os.PathLike, train_split: str = "train",
                      test_split: str = "test", image_size: int | None = None,
                      num_threads: int = 8, resize: str = "stretch") -> Dataset:
    """A data set laid out as `path/<split>/<class>/*.{jpg,jpeg,png}`, read whole.

    The classes are the train split's subdirectories in sorted order; the test split must have
    the same ones. Images are decoded as RGB and, if `image_size` is set, resized to
    `image_size` x `image_size` (`resized`).
    """
    class_names, listed = image_folder_files(path, train_split, test_split)
    root = Path(path).expanduser()
    train, test = (_decoded_split(*listed[s], image_size, resize, num_threads, str(root / s))
                   for s in (train_split, test_split))
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"Train images are {train.images.shape[1:3]} but test images are "
                         f"{test.images.shape[1:3]}; set --config.data.image_size.")
    return Dataset(train=train, test=test, num_classes=len(class_names), class_names=class_names)


# ---------------------------------------------------------------------------------------------
# Images listed per split: MIT-67 (Images/<class>/<file>.jpg with TrainImages.txt and
# TestImages.txt, one `<class>/<file>.jpg` per line).

def _read_list(list_file: Path) -> list[str]:
    if not list_file.is_file():
        raise DatasetUnavailableError(f"Image list {list_file} does not exist.")
    entries = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not entries:
        raise ValueError(f"Image list {list_file} lists no images.")
    bad = [e for e in entries if len(Path(e).parts) < 2]
    if bad:
        raise ValueError(f"Image list {list_file}: {bad[0]!r} is not <class>/<image> (the "
                         "class is the first folder of each listed path).")
    return entries


def image_list_files(path: str | os.PathLike, train_list: str | os.PathLike,
                     test_list: str | os.PathLike
                     ) -> tuple[tuple[str, ...], list[tuple[list[Path], list[int]]]]:
    """The classes of the image lists under `path` (`load_image_list`) and, for the train and
    the test list, their image files and labels, checked: every listed image exists."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetUnavailableError(f"Image root {root} does not exist (for MIT-67: the "
                                      "Images folder of indoorCVPR_09.tar).")

    def located(list_file) -> Path:
        list_file = Path(list_file).expanduser()
        if list_file.is_absolute():
            return list_file
        return next((p for p in (root / list_file, root.parent / list_file) if p.is_file()),
                    root / list_file)

    train, test = (_read_list(located(f)) for f in (train_list, test_list))
    class_names = tuple(sorted({Path(e).parts[0] for e in train}))
    unknown = sorted({Path(e).parts[0] for e in test} - set(class_names))
    if unknown:
        raise ValueError(f"{test_list} has classes the train list lacks: {unknown[:5]}.")
    label = {name: i for i, name in enumerate(class_names)}
    splits = []
    for entries in (train, test):
        missing = [e for e in entries if not (root / e).is_file()]
        if missing:
            raise DatasetUnavailableError(f"{len(missing)} listed images are missing under "
                                          f"{root}, e.g. {missing[0]}.")
        splits.append(([root / e for e in entries], [label[Path(e).parts[0]] for e in entries]))
    return class_names, splits


def load_image_list(path: str | os.PathLike, train_list: str | os.PathLike,
                    test_list: str | os.PathLike, image_size: int | None = None,
                    resize: str = "stretch", num_threads: int = 8) -> Dataset:
    """A data set whose splits are lists of image paths under `path`, each `<class>/<image>`
    (MIT-67's TrainImages.txt and TestImages.txt under its Images folder), read whole. A
    relative list file is looked for in `path`, then in its parent. The classes are those of
    the train list, sorted; the test list may have no other. Images are decoded as RGB and
    resized to `image_size` if set (`resized`)."""
    class_names, listed = image_list_files(path, train_list, test_list)
    where = str(Path(path).expanduser())
    train, test = (_decoded_split(files, labels, image_size, resize, num_threads, where)
                   for files, labels in listed)
    return Dataset(train=train, test=test, num_classes=len(class_names),
                   class_names=class_names)


# ---------------------------------------------------------------------------------------------
# A NumPy archive of arrays: x_train, y_train, x_test, y_test (and optionally class_names).

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_arrays(path: str | os.PathLike) -> Dataset:
    """A data set stored as one `.npz` archive (`np.savez` / `np.savez_compressed`).

    `x_*` are uint8 [N, H, W, C] (or [N, H, W] for grey images), `y_*` integer labels in
    0..num_classes-1; `class_names`, if present, names the classes. Read without pickle, so
    an archive cannot run code. This is how `../shared/data/cifar10-lossless.npz` (CIFAR-10's
    original pixels) is read, and how a user brings any data set that fits in memory.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetUnavailableError(
            f"Array archive {path} does not exist. Expected an .npz with "
            f"{', '.join(ARRAY_KEYS)} (see vid_jax.data.load_arrays).")
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in ARRAY_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"Array archive {path} lacks {missing}; it has {archive.files}. "
                             f"It needs {', '.join(ARRAY_KEYS)} (and optionally class_names).")
        arrays = {k: archive[k] for k in ARRAY_KEYS}
        class_names = (tuple(str(c) for c in archive["class_names"])
                       if "class_names" in archive.files else ())
    splits = {}
    for split in ("train", "test"):
        images = arrays[f"x_{split}"]
        splits[split] = Split.from_arrays(images[..., None] if images.ndim == 3 else images,
                                          arrays[f"y_{split}"])
    num_classes = len(class_names) or int(max(splits["train"].labels.max(),
                                              splits["test"].labels.max())) + 1
    for split, values in splits.items():
        if values.labels.min() < 0 or values.labels.max() >= num_classes:
            raise ValueError(f"Array archive {path}: y_{split} has labels outside "
                             f"0..{num_classes - 1} ({num_classes} classes).")
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise ValueError(f"Array archive {path}: x_train images are "
                         f"{splits['train'].images.shape[1:]} but x_test images are "
                         f"{splits['test'].images.shape[1:]}.")
    return Dataset(train=splits["train"], test=splits["test"], num_classes=num_classes,
                   class_names=class_names)


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits: 1,797 8x8 grayscale digits that ship with scikit-learn.

def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's digits as uint8 [N, 8, 8, 1] images, split stratified by class."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    # Pixel values are 0..16; scale them to the 0..255 range of every other source.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=labels, random_state=seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return Dataset(train=Split.from_arrays(images[train_idx], labels[train_idx]),
                   test=Split.from_arrays(images[test_idx], labels[test_idx]),
                   num_classes=10, class_names=tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------------------------------------
# Dispatch on the data config.

def _required(data_config: DataConfig, field: str, source: str) -> Any:
    value = data_config.get(field)
    if value is None:
        raise ValueError(f"source={source!r} needs --config.data.{field}.")
    return value


def _tfds_source(c: DataConfig) -> Dataset:
    return load_tfds(_required(c, "name", "tfds"), data_dir=c.get("data_dir"),
                     train_split=c.get("train_split") or "train",
                     test_split=c.get("test_split") or "test",
                     download=bool(c.get("download", True)), image_size=c.get("image_size"),
                     resize=c.get("resize") or "stretch")


def _image_folder_source(c: DataConfig) -> Dataset:
    return load_image_folder(_required(c, "path", "image_folder"),
                             train_split=c.get("train_split") or "train",
                             test_split=c.get("test_split") or "test",
                             image_size=c.get("image_size"), resize=c.get("resize") or "stretch")


def _image_list_source(c: DataConfig) -> Dataset:
    return load_image_list(_required(c, "path", "image_list"),
                           _required(c, "train_list", "image_list"),
                           _required(c, "test_list", "image_list"),
                           image_size=c.get("image_size"), resize=c.get("resize") or "stretch")


def _arrays_source(c: DataConfig) -> Dataset:
    return load_arrays(_required(c, "path", "arrays"))


def resize_images(dataset: Dataset, image_size: int, mode: str = "stretch") -> Dataset:
    """Every split's images at `image_size` (`resized`): how an archive of arrays is stored at
    another size (after its subsets are drawn, so that only the images kept are resized)."""
    def one(split: Split | None) -> Split | None:
        if split is None or split.images.shape[1:3] == (image_size, image_size):
            return split
        grey = split.images.shape[-1] == 1
        images = np.stack([np.asarray(resized(Image.fromarray(x[..., 0] if grey else x),
                                              image_size, mode)) for x in split.images])
        return dataclasses.replace(split, images=images[..., None] if grey else images)

    return dataclasses.replace(dataset, train=one(dataset.train), test=one(dataset.test),
                               validation=one(dataset.validation))


def _digits_source(c: DataConfig) -> Dataset:
    # The test split keeps load_digits' fixed seed, so runs with other subset seeds are
    # evaluated on the same test images.
    fraction = c.get("test_fraction")
    return load_digits(test_fraction=0.3 if fraction is None else fraction)


# Each source reads a Dataset from the data config.
SOURCES: dict[str, Callable[[DataConfig], Dataset]] = {
    "tfds": _tfds_source,
    "image_folder": _image_folder_source,
    "image_list": _image_list_source,
    "arrays": _arrays_source,
    "digits": _digits_source,
}


def load_dataset(data_config: DataConfig) -> Dataset:
    """The data set `data_config.source` names, with the config's class selection and subsets
    applied: in memory, or streamed from disk with `data_config.load="stream"`
    (`vid_jax.data.stream`)."""
    source = data_config.get("source") or "tfds"
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; known: {', '.join(SOURCES)}.")
    if (data_config.get("resize") or "stretch") not in RESIZE_MODES:
        raise ValueError(f"data.resize={data_config.get('resize')!r}: choose one of "
                         f"{', '.join(RESIZE_MODES)}.")
    from vid_jax.data import stream  # it reads with this module's decoders
    stream.check_load(data_config)
    read = (stream.STREAMS[source] if (data_config.get("load") or "memory") == "stream"
            else SOURCES[source])
    dataset = select_classes(read(data_config), data_config.get("classes"))
    dataset = apply_subsets(dataset, data_config)
    if source == "arrays" and data_config.get("image_size") is not None:
        dataset = resize_images(dataset, data_config.get("image_size"),
                                data_config.get("resize") or "stretch")
    return dataset
