"""Data of the transfer experiments (Table 3 of the VID paper): images of any size stored at one
size (CUB through TFDS, MIT-67 from its image lists), a class selection, M images per class of
classes of different sizes, and the crops that make a network's input from stored images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vid_jax import augment, data
from vid_jax.data import sources


def _image(width, height, value=None, seed=0):
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    else:
        pixels = np.full((height, width, 3), value, np.uint8)
    return Image.fromarray(pixels)


def test_shorter_side_keeps_the_aspect_ratio_and_the_centre():
    # A 40 x 20 image: white but for 5 black columns on each side.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 5:35] = 255
    image = Image.fromarray(pixels)
    square = np.asarray(sources.resized(image, 10, "shorter_side"))
    assert square.shape == (10, 10, 3)
    assert square.min() == 255  # the centre square of the 20 x 10 resize is all white
    stretched = np.asarray(sources.resized(image, 10, "stretch"))
    assert stretched.shape == (10, 10, 3) and stretched[:, 0].max() < 128  # the sides stay
    assert sources.resized(image, None) is image
    with pytest.raises(ValueError, match="data.resize='crop': choose one of stretch, "
                                         "shorter_side"):
        sources.resized(image, 10, "crop")


def test_cub_through_tfds_is_stored_at_one_size():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="'caltech_birds2011' has images of varying size.*"
                                             "data.image_size"):
            data.load_tfds("caltech_birds2011")
        birds = data.load_tfds("caltech_birds2011", image_size=12, resize="shorter_side")
    assert birds.train.images.shape == (4, 12, 12, 3) and birds.test.images.shape[1:] == (12, 12, 3)
    assert birds.train.images.dtype == np.uint8 and birds.num_classes == 200
    assert birds.train.labels.max() < 200


def _mit67(root, sizes):
    """Images/<class>/<n>.jpg of various sizes, and TrainImages.txt / TestImages.txt beside
    Images/ as MIT-67 ships them (2 train images and 1 test image per class, one more train
    image for 'bar')."""
    images = root / "Images"
    train, test = [], []
    for c, (name, count) in enumerate((("kitchen", 3), ("bar", 4), ("airport_inside", 3))):
        (images / name).mkdir(parents=True)
        for i in range(count):
            width, height = sizes[(c + i) % len(sizes)]
            _image(width, height, value=40 * c + 10).save(images / name / f"{i}.jpg")
            (test if i == count - 1 else train).append(f"{name}/{i}.jpg")
    (root / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "TestImages.txt").write_text("\n".join(test) + "\n")
    return images


def test_mit67_from_its_image_lists(tmp_path):
    images = _mit67(tmp_path, [(30, 20), (16, 24), (40, 40)])
    with pytest.raises(ValueError, match="different sizes.*data.image_size"):
        data.load_image_list(images, "TrainImages.txt", "TestImages.txt")
    dataset = data.load_dataset(dict(source="image_list", path=str(images),
                                     train_list="TrainImages.txt", test_list="TestImages.txt",
                                     image_size=8, resize="shorter_side"))
    assert dataset.class_names == ("airport_inside", "bar", "kitchen")  # sorted
    assert dataset.train.images.shape == (7, 8, 8, 3) and len(dataset.test) == 3
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [2, 3, 2])
    # Each class's images are flat grey of its own value: the labels follow the paths.
    means = [dataset.train.images[dataset.train.labels == k].mean() for k in range(3)]
    assert np.allclose(means, [90, 50, 10], atol=2)

    (tmp_path / "TestImages.txt").write_text("bar/3.jpg\nlibrary/0.jpg\n")
    with pytest.raises(ValueError, match="classes the train list lacks: \\['library'\\]"):
        data.load_image_list(images, "TrainImages.txt", "TestImages.txt", image_size=8)
    (tmp_path / "TestImages.txt").write_text("bar/9.jpg\n")
    with pytest.raises(data.DatasetUnavailableError, match="1 listed images are missing.*bar/9"):
        data.load_image_list(images, "TrainImages.txt", "TestImages.txt", image_size=8)


def _dataset(counts, num_test=2):
    """Classes of the given training sizes; image pixels hold the image's original label."""
    labels = np.repeat(np.arange(len(counts)), counts)
    test_labels = np.repeat(np.arange(len(counts)), num_test)
    return data.Dataset(
        train=data.Split.from_arrays(np.broadcast_to(labels[:, None, None, None], (len(labels),
                                                     2, 2, 1)).astype(np.uint8), labels),
        test=data.Split.from_arrays(np.broadcast_to(
            test_labels[:, None, None, None], (len(test_labels), 2, 2, 1)).astype(np.uint8),
            test_labels),
        num_classes=len(counts), class_names=tuple("abcdefghij"[:len(counts)]))


def test_a_class_selection_relabels_in_the_order_given():
    dataset = _dataset([3, 4, 5, 6])
    picked = data.select_classes(dataset, ("d", "b"))
    assert picked.num_classes == 2 and picked.class_names == ("d", "b")
    np.testing.assert_array_equal(np.bincount(picked.train.labels), [6, 4])
    # The images of new label 0 are those of old label 3 ("d"), in both splits.
    for split in (picked.train, picked.test):
        np.testing.assert_array_equal(split.images[:, 0, 0, 0], np.where(split.labels == 0, 3, 1))
    by_label = data.select_classes(dataset, (3, 1))
    np.testing.assert_array_equal(by_label.train.labels, picked.train.labels)
    assert data.select_classes(dataset, None) is dataset
    with pytest.raises(ValueError, match="'z' is not a class of the data set \\(a, b, c, d\\)"):
        data.select_classes(dataset, ("a", "z"))
    with pytest.raises(ValueError, match="give each class once"):
        data.select_classes(dataset, ("a", 0))


def test_m_images_per_class_of_classes_of_different_sizes(tmp_path):
    counts = [3, 4, 5, 6]
    path = tmp_path / "arrays.npz"
    full = _dataset(counts)
    np.savez(path, x_train=full.train.images, y_train=full.train.labels,
             x_test=full.test.images, y_test=full.test.labels, class_names=np.array(list("abcd")))
    every = data.load_dataset(dict(source="arrays", path=str(path)))  # "M ~ avg": all of them
    np.testing.assert_array_equal(np.bincount(every.train.labels), counts)
    m2 = data.load_dataset(dict(source="arrays", path=str(path), images_per_class=2,
                                classes=("c", "d", "b")))
    np.testing.assert_array_equal(np.bincount(m2.train.labels), [2, 2, 2])
    assert set(m2.train.images[:, 0, 0, 0]) == {1, 2, 3} and len(m2.test) == 6
    bigger = data.load_dataset(dict(source="arrays", path=str(path), images_per_class=2,
                                    image_size=5))  # an archive stored at another size
    assert bigger.train.images.shape == (8, 5, 5, 1) and bigger.test.images.shape == (8, 5, 5, 1)
    np.testing.assert_array_equal(bigger.train.images[:, 2, 2, 0], np.repeat(np.arange(4), 2))
    with pytest.raises(ValueError, match="images_per_class=4 but class 0 has only 3"):
        data.load_dataset(dict(source="arrays", path=str(path), images_per_class=4))


def test_crops_from_stored_images():
    # Each pixel holds its position, so a crop shows where it came from.
    rows, cols = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    images = jnp.asarray(np.stack([image] * 6))
    keys = augment.example_keys(jax.random.key(0), jnp.arange(6))

    crop = jax.jit(augment.random_crop_flip_to, static_argnums=(2, 3, 4))
    resized_crop = jax.jit(augment.random_resized_crop_flip, static_argnums=(2, 3, 4))
    crops = np.asarray(crop(images, keys, 8, 0, False))
    assert crops.shape == (6, 8, 8, 3)
    for crop in crops:  # a contiguous 8 x 8 window of the 12 x 12 image
        top, left = crop[0, 0, :2]
        np.testing.assert_array_equal(crop[..., 0], image[top:top + 8, left:left + 8, 0])
        np.testing.assert_array_equal(crop[..., 1], image[top:top + 8, left:left + 8, 1])
    assert len({tuple(c[0, 0, :2]) for c in crops}) > 1  # not all at one offset

    centre = np.asarray(augment.center_crop(images, 8))
    np.testing.assert_array_equal(centre[0], image[2:10, 2:10])

    resized = np.asarray(resized_crop(images, keys, 8, (0.25, 1.0), True))
    assert resized.shape == (6, 8, 8, 3) and resized.dtype == np.float32
    assert resized.min() >= 0 and resized.max() <= 11
    flat = resized_crop(jnp.full((6, 12, 12, 3), 77, jnp.uint8), keys, 8, (0.25, 1.0), True)
    np.testing.assert_allclose(flat, 77, atol=1e-3)  # resampling a constant keeps it
    again = resized_crop(images, keys, 8, (0.25, 1.0), True)
    np.testing.assert_array_equal(resized, again)  # a pure function of the keys

    assert augment.input_shape({"crop_size": 8}, (12, 12, 3)) == (8, 8, 3)
    assert augment.input_shape({}, (12, 10, 3)) == (12, 10, 3)
    with pytest.raises(ValueError, match="augment.crop_size=16 must be in 1..12"):
        augment.input_shape({"crop_size": 16}, (12, 12, 3))
