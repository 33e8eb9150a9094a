"""Streaming (`config.data.load="stream"`, vid_jax/data/stream.py): an image folder or a TFDS
set read from disk a batch at a time gives the batches, and the training, of the same data
read whole; each process's rows make up the global batch; a resumed run reads from its step;
bad values are one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vid_jax import config_base, data, errors, training
from vid_jax.training.sampler import BatchSampler

pytest.importorskip("grain")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_train import tiny_config  # noqa: E402

CLASSES = ("cat", "dog", "emu")


def _folder(root, train_per_class=6, test_per_class=3, seed=0):
    """JPEGs of varying sizes (and one grey PNG) in root/{train,test}/<class>/."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in CLASSES:
            os.makedirs(root / split / c)
            for i in range(n):
                h, w = rng.integers(10, 20, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
                    root / split / c / f"{i}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (9, 14), np.uint8)).save(root / "train/emu/grey.png")
    return root


def _config(path, load, **data_fields):
    """test_train's tiny run, with a small MLP, reading the folder at `path`."""
    config = tiny_config(**{"model": dict(name="mlp", hidden_sizes=(8,)), "batch_size": 4,
                            "eval_batch_size": 4, "num_epochs": 2, "num_devices": 2})
    config.data.update(dict(dict(source="image_folder", path=str(path), image_size=8,
                                 load=load, read_threads=2, mean=(0.5, 0.5, 0.5),
                                 std=(0.25, 0.25, 0.25)), **data_fields))
    return config


def _host(batch):
    return tuple(np.asarray(x) for x in batch)


def _same(first, second):
    first, second = list(first), list(second)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for x, y in zip(_host(a), _host(b)):
            np.testing.assert_array_equal(x, y)


def test_a_streamed_folder_gives_the_batches_of_the_folder_read_whole(tmp_path):
    root = _folder(tmp_path / "folder")
    subsets = dict(images_per_class=5, labels_per_class=3, validation_fraction=0.2,
                   resize="shorter_side")
    memory = training.prepare(_config(root, "memory", **subsets))
    stream = training.prepare(_config(root, "stream", **subsets))
    assert isinstance(stream.dataset.train, data.StreamSplit)
    assert len(stream.dataset.train) == len(memory.dataset.train) == 12
    assert stream.dataset.train.image_shape == memory.dataset.train.image_shape == (8, 8, 3)
    # Three epochs of three steps: batches that run across the epochs' ends, as the sampler
    # draws them (images, labels, labelled, indices).
    _same(memory.batches(0, 9), stream.batches(0, 9))
    _same([memory.batch(4)], [stream.batch(4)])
    for split in ("test", "validation"):
        held = getattr(memory.dataset, split)
        np.testing.assert_array_equal(
            held.images, getattr(stream.dataset, split).rows(np.arange(len(held)))[0])
    # Without a mean and std in the config, the streamed set's are those of its images.
    config = _config(root, "stream")
    config.data.mean = config.data.std = None
    statistics = training.prepare(config).config.data
    pixels = training.prepare(_config(root, "memory")).dataset.train.images / 255.0
    np.testing.assert_allclose(statistics.mean, pixels.reshape(-1, 3).mean(0), rtol=1e-12)
    np.testing.assert_allclose(statistics.std, pixels.reshape(-1, 3).std(0), rtol=1e-9)


def test_a_resumed_stream_reads_the_batches_of_an_uninterrupted_one(tmp_path):
    root = _folder(tmp_path / "folder")
    run = training.prepare(_config(root, "stream"))
    uninterrupted = list(run.batches(0, 12))
    for k in (1, 5, 9):  # within an epoch, at its start, after two epochs' ends
        _same(uninterrupted[k:], list(run.batches(k, 12)))
    config = _config(root, "stream", read_threads=0)  # decoded when taken: the same batches
    _same(uninterrupted[3:], list(training.prepare(config).batches(3, 12)))


def test_each_process_reads_its_rows_and_they_make_the_global_batch(tmp_path):
    dataset = data.load_dataset(dict(source="image_folder", path=str(_folder(tmp_path / "f")),
                                     image_size=8, load="stream"))
    whole = data.load_dataset(dict(source="image_folder", path=str(tmp_path / "f"),
                                   image_size=8))
    batch, processes = 6, 2
    sampler = BatchSampler(len(dataset.train), batch, seed=3)
    shards = []
    for process in range(processes):  # process_rows' split: contiguous spans, in order
        rows = np.arange(batch)[process * batch // processes:(process + 1) * batch // processes]
        shards.append(list(data.read_batches(
            dataset.train, lambda s, rows=rows: sampler.indices(s)[rows], 2, 7, num_threads=3)))
    for step, parts in zip(range(2, 7), zip(*shards)):
        indices = sampler.indices(step)
        for column, expected in enumerate(whole.train.rows(indices)):
            np.testing.assert_array_equal(np.concatenate([p[column] for p in parts]), expected)


def test_streamed_training_is_the_training_of_the_folder_read_whole(tmp_path, monkeypatch):
    """Two epochs from the folder read whole, and streamed with a stop in the second epoch
    and a resume (from the first epoch's checkpoint, reading from its step on): the same
    metrics."""
    root = _folder(tmp_path / "folder")
    training.train_and_evaluate(_config(root, "memory"), str(tmp_path / "memory"))

    batches = training.Run.batches

    def stopping(run, first, stop):
        for step, batch in zip(range(first, stop), batches(run, first, stop)):
            if step == 4:  # the second epoch's second step (3 steps an epoch)
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(training.Run, "batches", stopping)
    with pytest.raises(KeyboardInterrupt):
        training.train_and_evaluate(_config(root, "stream"), str(tmp_path / "stream"))
    monkeypatch.setattr(training.Run, "batches", batches)
    training.train_and_evaluate(_config(root, "stream"), str(tmp_path / "stream"))

    def metrics(name):
        with open(tmp_path / name / "metrics.jsonl") as f:
            return [{k: v for k, v in json.loads(line).items() if k != "images_per_sec"}
                    for line in f]

    assert [m["epoch"] for m in metrics("stream")] == [1, 2]
    assert metrics("stream") == metrics("memory")


TFDS_NAME = "vid_jax_stream_check"


def _tfds_builder(tfds):
    """A tiny registered TFDS data set of random RGB images of varying sizes, 3 classes."""
    class VidJaxStreamCheck(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=list(CLASSES))}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 12),
                    "test": self._generate_examples(1, 6)}

        def _generate_examples(self, seed, n):
            rng = np.random.default_rng(seed)
            for i in range(n):
                h, w = rng.integers(10, 20, 2)
                yield i, {"image": rng.integers(0, 256, (h, w, 3), np.uint8), "label": i % 3}

    return VidJaxStreamCheck


@pytest.fixture(scope="module")
def tfds_copies(tmp_path_factory):
    """The same TFDS set prepared as tfrecord (what TFDS's in-memory reader reads) and as
    array_record (what streaming reads)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = _tfds_builder(tfds)
    copies = {}
    for file_format in ("tfrecord", "array_record"):
        copies[file_format] = str(tmp_path_factory.mktemp(file_format))
        builder(data_dir=copies[file_format], file_format=file_format).download_and_prepare()
    return copies


def test_a_tfds_set_as_array_record_streams_the_images_and_labels_read_whole(tfds_copies):
    base = dict(source="tfds", name=TFDS_NAME, image_size=8, download=False)
    for fields in ({}, dict(classes=("emu", "cat"), images_per_class=3)):
        whole = data.load_dataset(dict(base, data_dir=tfds_copies["tfrecord"], **fields))
        streamed = data.load_dataset(dict(base, data_dir=tfds_copies["array_record"],
                                          load="stream", **fields))
        assert streamed.class_names == whole.class_names
        for split in ("train", "test"):
            expected = getattr(whole, split)
            images, labels, _ = getattr(streamed, split).rows(np.arange(len(expected)))
            np.testing.assert_array_equal(images, expected.images)
            np.testing.assert_array_equal(labels, expected.labels)
    # Without a class selection or subset, labels are not read up front (each record's own).
    assert data.load_dataset(dict(base, data_dir=tfds_copies["array_record"],
                                  load="stream")).train.labels is None


def test_a_tfds_set_streaming_cannot_read_is_one_line(tfds_copies, tmp_path):
    base = dict(source="tfds", name=TFDS_NAME, image_size=8, load="stream")
    with pytest.raises(data.DatasetUnavailableError, match="is stored as tfrecord, which "
                       "streaming cannot read at random: prepare it as array_record files"):
        data.load_dataset(dict(base, data_dir=tfds_copies["tfrecord"]))
    with pytest.raises(data.DatasetUnavailableError, match="is not prepared in .*; streaming "
                       "does not download"):
        data.load_dataset(dict(base, data_dir=str(tmp_path)))
    # The other way round: read whole, an array_record copy is one line that names streaming.
    with pytest.raises(data.DatasetUnavailableError, match="is prepared as array_record only, "
                       "which TFDS cannot read whole: stream it with config.data.load='stream'"):
        data.load_dataset(dict(base, load="memory", data_dir=tfds_copies["array_record"],
                               download=False))


def test_tfds_mock_data_streams():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):
        dataset = data.load_dataset(dict(source="tfds", name="cifar10", image_size=8,
                                         load="stream"))
        images, labels, labelled = dataset.train.rows(np.arange(4))
        assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and labelled.all() and dataset.num_classes == 10
        np.testing.assert_array_equal(images, dataset.train.rows(np.arange(4))[0])


@pytest.mark.parametrize("field, value, message", [
    ("load", "disk", "config.data.load='disk': choose 'memory' (whole splits decoded when the "
                     "run starts) or 'stream' (each batch decoded from disk)."),
    ("read_threads", -1, "config.data.read_threads=-1: give a number of decoding threads >= 0"),
    ("source", "digits", "config.data.load='stream' reads image_folder, image_list, tfds; "
                         "config.data.source='digits' is read whole"),
    ("image_size", None, "config.data.load='stream' needs config.data.image_size"),
])
def test_a_bad_stream_value_is_one_line_before_anything_is_read(tmp_path, field, value,
                                                                message):
    config = _config(tmp_path / "nothing", "stream")
    config.data[field] = value
    with pytest.raises(ValueError) as raised:
        config_base.check_config(config)
    assert str(raised.value).startswith(message)
    assert errors.user_error(raised.value) == str(raised.value)  # shown as one line


def test_without_grain_streaming_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # `import grain` raises ImportError
    with pytest.raises(data.DatasetUnavailableError, match=r"pip install 'vid-jax\[stream\]'"):
        config_base.check_config(_config(tmp_path, "stream"))


def test_launch_trains_from_a_streamed_folder(tmp_path):
    root = _folder(tmp_path / "folder")
    config_file = tmp_path / "streamed.py"
    config_file.write_text(
        "from vid_jax import config_base\n\n\n"
        "def get_config():\n"
        "    config = config_base.base_config()\n"
        f"    config.data.update(source='image_folder', path={str(root)!r}, image_size=8,\n"
        "                       load='stream')\n"
        "    config.model = dict(name='mlp', hidden_sizes=(8,))\n"
        "    config.update(num_epochs=2, batch_size=4, eval_batch_size=4, progress_bar=False)\n"
        "    return config\n")
    command = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={config_file}",
               f"--workdir={tmp_path / 'run'}"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    bad = subprocess.run(command + ["--config.data.load=disk"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert "config.data.load='disk': choose 'memory'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "run" / "summary.json") as f:
        summary = json.load(f)
    assert summary["selected_epoch"] == 2 and 0.0 <= summary["final_test_accuracy"] <= 1.0
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["data"]["load"] == "stream"


def test_a_streamed_image_that_cannot_be_decoded_is_one_line_naming_it(tmp_path):
    root = _folder(tmp_path / "folder")
    with open(root / "train" / "dog" / "2.jpg", "r+b") as f:
        f.truncate(100)
    dataset = data.load_dataset(dict(source="image_folder", path=str(root), image_size=8,
                                     load="stream"))
    with pytest.raises(ValueError) as raised:
        list(data.read_batches(dataset.train, lambda b: np.arange(4 * b, 4 * b + 4), 0, 5, 2))
    assert errors.user_error(raised.value) == (
        f"Cannot decode {root / 'train' / 'dog' / '2.jpg'}: Truncated File Read. Replace or "
        "remove the file.")
