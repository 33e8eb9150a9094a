"""vid_jax.data: seeded per-class subsets, and the loaders (digits, image folder, TFDS mocked).

Needs neither network nor ../shared: image folders are written to tmp_path, TFDS is mocked or
pointed at an empty directory.
"""
import re
import sys
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vid_jax import data
from vid_jax.data import sources


def _labels(counts):
    """Labels with counts[c] examples of class c, shuffled so that order carries no class."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    return np.random.default_rng(123).permutation(labels)


def _synthetic(per_class=60, num_classes=10, size=4):
    """A Dataset whose image i has every pixel equal to i % 256, to trace examples through."""
    def split(n):
        labels = _labels([n] * num_classes)
        images = np.broadcast_to((np.arange(len(labels)) % 256).astype(np.uint8)[:, None, None,
                                                                                None],
                                 (len(labels), size, size, 3)).copy()
        return data.Split.from_arrays(images, labels)
    return data.Dataset(train=split(per_class), test=split(per_class // 3),
                        num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# Split.

def test_split_from_arrays_converts_and_defaults():
    split = data.Split.from_arrays(np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 1, 2]))
    assert split.labels.dtype == np.int32
    assert split.labelled.dtype == bool and split.labelled.all()
    assert len(split) == 3
    taken = split.take(np.array([2, 0]))
    np.testing.assert_array_equal(taken.labels, [2, 0])


@pytest.mark.parametrize("images, labels, labelled, match", [
    (np.zeros((3, 2, 2), np.uint8), np.zeros(3, int), None, "4-D"),
    (np.zeros((3, 2, 2, 1), np.float32), np.zeros(3, int), None, "uint8"),
    (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(4, int), None, r"shape \(3,\)"),
    (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, float), None, "integers"),
    (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(3, int), np.ones(3, int), "bool"),
])
def test_split_from_arrays_rejects_bad_arrays(images, labels, labelled, match):
    with pytest.raises(ValueError, match=match):
        data.Split.from_arrays(images, labels, labelled)


# ---------------------------------------------------------------------------------------------
# Subsets.

def test_images_per_class_counts_nested_and_seeded():
    labels = _labels([80, 70, 90])
    small, large = (data.images_per_class(labels, m, seed=0) for m in (10, 50))
    np.testing.assert_array_equal(np.bincount(labels[small]), [10, 10, 10])
    np.testing.assert_array_equal(np.bincount(labels[large]), [50, 50, 50])
    assert np.all(np.diff(large) > 0)  # sorted, no repeats
    assert set(small) <= set(large)
    np.testing.assert_array_equal(small, data.images_per_class(labels, 10, seed=0))
    assert not np.array_equal(small, data.images_per_class(labels, 10, seed=1))


def test_images_per_class_names_short_classes():
    labels = _labels([600, 500, 600, 480])
    with pytest.raises(ValueError, match=r"images_per_class=600 but class 1 has only 500, "
                                         r"class 3 has only 480 training images; "
                                         r"use at most 480\."):
        data.images_per_class(labels, 600, seed=0)
    with pytest.raises(ValueError, match=r"but class 3 has only 480 training images; use at"):
        data.images_per_class(labels, 490, seed=0)


def test_labelled_mask_counts_and_nesting():
    labels = _labels([40, 30, 50])
    few, many = (data.labelled_mask(labels, n, seed=3) for n in (5, 20))
    assert few.dtype == bool and few.shape == labels.shape
    np.testing.assert_array_equal(np.bincount(labels[few]), [5, 5, 5])
    np.testing.assert_array_equal(np.bincount(labels[many]), [20, 20, 20])
    assert np.all(many[few])
    with pytest.raises(ValueError, match="labels_per_class=31 but class 1 has only 30"):
        data.labelled_mask(labels, 31, seed=3)


def test_holdout_split_per_class_and_disjoint():
    labels = _labels([100, 50, 7])
    train, val = data.holdout_split(labels, 0.2, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[val]), [20, 10, 1])
    np.testing.assert_array_equal(np.bincount(labels[train]), [80, 40, 6])
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    # At least one per class even when the fraction rounds to zero.
    _, val = data.holdout_split(labels, 0.01, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[val]), [1, 1, 1])
    train, val = data.holdout_split(labels, 0.0, seed=0)
    assert len(val) == 0 and len(train) == len(labels)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            data.holdout_split(labels, bad, seed=0)


def test_apply_subsets_end_to_end():
    dataset = _synthetic(per_class=60)
    config = {"images_per_class": 20, "validation_fraction": 0.2, "labels_per_class": 5,
              "subset_seed": 7}
    out = data.apply_subsets(dataset, config)
    np.testing.assert_array_equal(np.bincount(out.train.labels), [16] * 10)
    np.testing.assert_array_equal(np.bincount(out.validation.labels), [4] * 10)
    np.testing.assert_array_equal(np.bincount(out.train.labels[out.train.labelled]), [5] * 10)
    assert out.validation.labelled.all()
    assert out.test is dataset.test and out.num_classes == 10
    # Images travel with their labels, and train and validation come from the M subset.
    chosen = data.images_per_class(dataset.train.labels, 20, seed=7)
    seen = {int(v) for split in (out.train, out.validation) for v in split.images[:, 0, 0, 0]}
    assert seen == set((chosen % 256).tolist())
    # Works from a ConfigDict too, and the defaults change nothing.
    same = data.apply_subsets(dataset, ml_collections.ConfigDict({
        "images_per_class": None, "validation_fraction": 0.0, "labels_per_class": None,
        "subset_seed": 0}))
    assert same.train is dataset.train and same.validation is None


# ---------------------------------------------------------------------------------------------
# Digits.

def test_load_digits_shapes_and_stratification():
    dataset = data.load_digits(test_fraction=0.3, seed=0)
    train, test = dataset.train, dataset.test
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and train.images.max() == 255
    assert dataset.num_classes == 10 and dataset.class_names == tuple("0123456789")
    share = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
    np.testing.assert_allclose(share, 0.3, atol=0.02)


# ---------------------------------------------------------------------------------------------
# Image folder.

def _write_folder(root, classes_per_split, size=(6, 5), per_class=3):
    """Writes lossless PNGs; returns {split: [(class, pixels), ...]} in sorted file order."""
    rng = np.random.default_rng(0)
    written = {}
    for split, classes in classes_per_split.items():
        written[split] = []
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.png")
                written[split].append((name, pixels))
    return written


def test_load_image_folder_round_trips_pixels(tmp_path):
    classes = ["zebra", "ant", "moth"]  # written unsorted: labels follow the sorted names
    written = _write_folder(tmp_path, {"train": classes, "test": classes})
    dataset = data.load_image_folder(tmp_path, num_threads=2)
    assert dataset.class_names == ("ant", "moth", "zebra") and dataset.num_classes == 3
    assert dataset.train.images.shape == (9, 5, 6, 3) and dataset.train.images.dtype == np.uint8
    assert dataset.train.labels.dtype == np.int32
    for split_name, split in (("train", dataset.train), ("test", dataset.test)):
        expected = sorted(written[split_name], key=lambda item: item[0])  # stable: file order
        np.testing.assert_array_equal(split.labels,
                                      [dataset.class_names.index(c) for c, _ in expected])
        np.testing.assert_array_equal(split.images, np.stack([p for _, p in expected]))


def test_load_image_folder_resizes(tmp_path):
    _write_folder(tmp_path, {"train": ["a", "b"], "test": ["a", "b"]})
    dataset = data.load_image_folder(tmp_path, image_size=4)
    assert dataset.train.images.shape == (6, 4, 4, 3)
    assert dataset.test.images.shape == (6, 4, 4, 3)


def test_load_image_folder_converts_to_rgb(tmp_path):
    _write_folder(tmp_path, {"train": ["a"], "test": ["a"]})
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(gray).save(tmp_path / "train" / "a" / "gray.png")
    rgba = np.full((5, 6, 4), 200, np.uint8)
    Image.fromarray(rgba).save(tmp_path / "train" / "a" / "rgba.png")
    images = data.load_image_folder(tmp_path).train.images
    assert images.shape == (5, 5, 6, 3)
    np.testing.assert_array_equal(images[3], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(images[4], 200)


def test_load_image_folder_errors(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="does not exist.*<class>"):
        data.load_image_folder(tmp_path / "nowhere")

    _write_folder(tmp_path / "mismatch", {"train": ["a", "b"], "test": ["a", "c"]})
    with pytest.raises(ValueError, match=r"same classes.*missing from it: \['b'\], only in it: "
                                         r"\['c'\]"):
        data.load_image_folder(tmp_path / "mismatch")

    _write_folder(tmp_path / "notest", {"train": ["a"]})
    with pytest.raises(ValueError, match="no 'test' split"):
        data.load_image_folder(tmp_path / "notest")

    _write_folder(tmp_path / "empty", {"train": ["a", "b"], "test": ["a", "b"]})
    for f in (tmp_path / "empty" / "test" / "b").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="has no .jpg/.jpeg/.png images"):
        data.load_image_folder(tmp_path / "empty")

    _write_folder(tmp_path / "mixed", {"train": ["a"], "test": ["a"]})
    Image.new("RGB", (9, 9)).save(tmp_path / "mixed" / "train" / "a" / "big.png")
    with pytest.raises(ValueError, match="different sizes.*--config.data.image_size"):
        data.load_image_folder(tmp_path / "mixed")
    assert data.load_image_folder(tmp_path / "mixed", image_size=3).train.images.shape == (
        4, 3, 3, 3)


# ---------------------------------------------------------------------------------------------
# TFDS (mocked, or an empty data_dir: never the network).

def test_load_tfds_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        dataset = data.load_tfds("cifar10")
    assert dataset.train.images.shape == (12, 32, 32, 3)
    assert dataset.test.images.shape == (12, 32, 32, 3)
    assert dataset.train.images.dtype == np.uint8 and dataset.train.labels.dtype == np.int32
    assert dataset.num_classes == 10 and len(dataset.class_names) == 10
    assert dataset.train.labels.min() >= 0 and dataset.train.labels.max() < 10

    with tfds.testing.mock_data(num_examples=5):
        mnist = data.load_tfds("mnist")
    assert mnist.train.images.shape == (5, 28, 28, 1)


@pytest.mark.parametrize("download", [False, True])
def test_load_tfds_unavailable_fails_fast(tmp_path, monkeypatch, download):
    checks = []
    monkeypatch.setattr(sources, "_has_network", lambda *args, **kwargs: checks.append(1))
    reason = "no network" if download else "download=False"
    pattern = (rf"'cifar100' is not prepared in {re.escape(str(tmp_path))} .*\({reason}\)"
               r".*--config.data.source=image_folder")
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError, match=pattern):
        data.load_tfds("cifar100", data_dir=str(tmp_path), download=download)
    assert time.perf_counter() - start < 10
    assert len(checks) == int(download)  # the network is only checked when it may be used


def test_load_tfds_unknown_name():
    with pytest.raises(ValueError, match="TFDS has no data set named 'no_such_data_set'"):
        data.load_tfds("no_such_data_set")


# ---------------------------------------------------------------------------------------------
# load_dataset.

def test_load_dataset_dispatches_and_applies_subsets(tmp_path):
    config = ml_collections.ConfigDict({
        "source": "digits", "test_fraction": 0.3, "images_per_class": 7, "labels_per_class": 3,
        "validation_fraction": 0.0, "subset_seed": 0})
    dataset = data.load_dataset(config)
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [7] * 10)
    assert dataset.train.labelled.sum() == 30

    _write_folder(tmp_path, {"train": ["a", "b"], "test": ["a", "b"]})
    folder = data.load_dataset({"source": "image_folder", "path": str(tmp_path)})
    assert folder.class_names == ("a", "b") and len(folder.train) == 6

    assert set(data.SOURCES) == {"tfds", "image_folder", "image_list", "arrays", "digits"}


def test_load_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    y_train, y_test = np.arange(12) % 3, np.arange(6) % 3
    path = tmp_path / "set.npz"
    np.savez_compressed(path, x_train=x_train, y_train=y_train.astype(np.uint8), x_test=x_test,
                        y_test=y_test.astype(np.uint8), class_names=np.array(["a", "b", "c"]))
    dataset = data.load_dataset({"source": "arrays", "path": str(path), "images_per_class": 2})
    assert dataset.num_classes == 3 and dataset.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [2, 2, 2])
    np.testing.assert_array_equal(dataset.test.images, x_test)
    assert dataset.test.labels.dtype == np.int32

    # Grey images without a channel axis get one; classes are counted from the labels.
    np.savez(path, x_train=x_train[..., 0], y_train=y_train, x_test=x_test[..., 0], y_test=y_test)
    grey = data.load_arrays(path)
    assert grey.train.images.shape == (12, 4, 4, 1) and grey.num_classes == 3


def test_load_arrays_errors(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="does not exist"):
        data.load_arrays(tmp_path / "none.npz")
    path = tmp_path / "set.npz"
    images = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(path, x_train=images, y_train=np.arange(3))
    with pytest.raises(ValueError, match=r"lacks \['x_test', 'y_test'\]"):
        data.load_arrays(path)
    np.savez(path, x_train=images, y_train=np.arange(3), x_test=images, y_test=np.array([0, 1, 5]),
             class_names=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="y_test has labels outside 0..2"):
        data.load_arrays(path)


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="Unknown data source 'nope'; known: tfds, image_folder"):
        data.load_dataset({"source": "nope"})
    with pytest.raises(ValueError, match="needs --config.data.path"):
        data.load_dataset({"source": "image_folder"})


def test_a_tfds_set_without_the_tfds_extra_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(data.DatasetUnavailableError, match=r"pip install 'vid-jax\[tfds\]'"):
        data.load_tfds("cifar10")
