"""The fields every run config has, with their defaults; `configs/*.py` start from here.

`check_config` refuses values no run can train with, before anything reads data or writes.
"""
import math
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from vid_jax.data.stream import check_load
from vid_jax.pretrained import IMAGENET_CROP, IMAGENET_MEAN, IMAGENET_RESIZE, IMAGENET_STD


def base_config() -> ml_collections.ConfigDict:
    # Fields that default to None are typed placeholders, so `--config.a.b=v` can set them.
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict(dict(
        source="tfds",                      # tfds | image_folder | arrays | digits
        name="cifar10",                     # tfds name
        data_dir=placeholder(str),          # tfds data_dir
        download=True,                      # tfds may download when it has network
        path=placeholder(str),              # image_folder root (path/{train,test}/<class>/*.jpg),
                                            # arrays .npz (x_train, y_train, x_test, y_test)
                                            # or image_list root (the lists' paths under it)
        image_size=placeholder(int),        # stored size on load; None keeps the images' size
        resize="stretch",                   # stretch: to image_size x image_size; shorter_side:
                                            # shorter side to image_size, centre crop a square
        train_split="train",                # tfds / image_folder split
        test_split="test",
        train_list=placeholder(str),        # image_list: files listing <class>/<image> paths
        test_list=placeholder(str),         # (MIT-67's TrainImages.txt, TestImages.txt)
        classes=placeholder(tuple),         # a class selection (names or labels), relabelled
                                            # 0..k-1 in this order; None = all classes
        test_fraction=0.3,                  # digits only: its held-out share
        images_per_class=placeholder(int),  # M of Table 1a; None = all
        labels_per_class=placeholder(int),  # N_l of Table 1b; None = all labelled
        validation_fraction=0.0,            # per-class hold-out (the paper used 0.2)
        subset_seed=0,
        mean=placeholder(tuple),            # None: computed from the training images
        std=placeholder(tuple),             # (streamed: from a sample of 1,000 of them)
        load="memory",                      # memory: whole splits decoded into RAM at the
                                            # start (small sets, fastest steps); stream: each
                                            # batch decoded from disk on read_threads threads
                                            # (sets larger than RAM: image_folder, image_list,
                                            # tfds as array_record; needs image_size)
        read_threads=placeholder(int),      # stream: decoding threads; None: one per core
    ))
    config.augment = ml_collections.ConfigDict(dict(
        crop_padding=4, flip=True,
        crop_size=placeholder(int),         # the network's input: random crops of the stored
                                            # images in training, the centre crop at test;
                                            # None = the stored size (padded crops)
        random_resized_scale=placeholder(tuple),  # e.g. (0.08, 1.0): Inception-style crops
    ))

    config.model = ml_collections.ConfigDict(dict(name="wrn", depth=16, width=1))
    # A distillation run sets teacher.model and teacher.workdir (the teacher's own run) or
    # teacher.weights (torchvision / timm weights, vid_jax.pretrained). The teacher's task and
    # input are its own where set: its classes, its input size (the student's crops resized)
    # and its normalisation; None: the student's.
    config.teacher = teacher_config()
    # A student that starts from a checkpoint (the paper's "Fine-tuning" row): a run's workdir
    # or a weights file; load_classifier=False keeps its freshly initialised classifier.
    config.init_from = ml_collections.ConfigDict(dict(
        workdir=placeholder(str), weights=placeholder(str), load_classifier=True))
    # Terms of the distillation loss: name -> {weight, method (default: name), **arguments}.
    config.distill = ml_collections.ConfigDict()
    config.task_loss_weight = 1.0
    # Epochs of the stages the terms declare (e.g. fitnet_hint), overriding their defaults.
    config.stage_epochs = ml_collections.ConfigDict()

    config.num_epochs = 200
    config.batch_size = 128
    config.eval_batch_size = 512  # divisible by 1, 2, 4 or 8 devices (vid_jax.host)
    config.num_devices = placeholder(int)  # None: all devices JAX sees
    config.optimizer = ml_collections.ConfigDict(dict(
        name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
        schedule="piecewise", boundaries_epochs=(60, 120, 160), decay_factor=0.2))
    config.head_optimizer = None  # None: the same as the student's
    config.checkpoint_every_epochs = 1  # saves at evaluated epochs that are multiples, and the last
    config.eval_every_epochs = 1  # the last epoch is always evaluated
    config.progress_bar = True
    config.log_epochs = True
    return config


# How the frozen teacher's batch norm normalises during distillation: "running", with its
# running statistics (eval mode, as RepDistiller runs a teacher), or "batch",
# with each training batch's statistics (averaged over the devices), its running statistics
# left as they are: the authors' VID code never puts the teacher in eval mode.
TEACHER_BATCH_NORM = ("running", "batch")


def teacher_config(model: dict | None = None, workdir: str | None = None,
                   **fields) -> ml_collections.ConfigDict:
    """config.teacher: its model, where its variables come from, its task and input, and how
    its batch norm normalises (`TEACHER_BATCH_NORM`)."""
    teacher = ml_collections.ConfigDict(dict(
        model=model, workdir=placeholder(str), weights=placeholder(str),
        num_classes=placeholder(int), image_size=placeholder(int), mean=placeholder(tuple),
        std=placeholder(tuple), batch_norm=TEACHER_BATCH_NORM[0]))
    teacher.update(workdir=workdir, **fields)
    return teacher


def imagenet_input(config: ml_collections.ConfigDict, stored: int = IMAGENET_RESIZE,
                   crop: int = IMAGENET_CROP,
                   scale: tuple[float, float] | None = (0.08, 1.0)) -> ml_collections.ConfigDict:
    """ImageNet's preprocessing, the one published ImageNet weights expect: images stored with
    their shorter side at `stored` (centre square), Inception-style crops of `scale` of the
    area resized to `crop` (None: random `crop` x `crop` crops) and flips in training, the
    centre `crop` at test, ImageNet's channel mean and std."""
    config.data.update(image_size=stored, resize="shorter_side", mean=IMAGENET_MEAN,
                       std=IMAGENET_STD)
    config.augment.update(crop_padding=0, flip=True, crop_size=crop, random_resized_scale=scale)
    return config


def cifar100_recipe() -> ml_collections.ConfigDict:
    """RepDistiller's CIFAR-100 schedule: 240 epochs, batch 64, lr 0.05 x0.1 at 150/180/210."""
    config = base_config()
    config.data.source = "tfds"
    config.data.name = "cifar100"
    # The published channel statistics of CIFAR-100's training set.
    config.data.mean = (0.5071, 0.4865, 0.4409)
    config.data.std = (0.2673, 0.2564, 0.2762)
    config.num_epochs = 240
    config.batch_size = 64
    config.optimizer.update(learning_rate=0.05, weight_decay=5e-4, schedule="piecewise",
                            boundaries_epochs=(150, 180, 210), decay_factor=0.1)
    return config


def cifar10_recipe() -> ml_collections.ConfigDict:
    """WRN's CIFAR schedule (Zagoruyko & Komodakis): 200 epochs, batch 128, lr 0.1 x0.2 at
    60/120/160. TFDS by default; `--config.data.source=image_folder --config.data.path=DIR`
    reads the same data from an image folder."""
    config = base_config()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)
    config.num_epochs = 200
    config.batch_size = 128
    return config


def digits_recipe(depth: int, width: int, images_per_class: int | None,
                  num_epochs: int) -> ml_collections.ConfigDict:
    """A WRN-depth-width run on scikit-learn's digits (no download), as the quickstart trains."""
    config = base_config()
    config.data.source = "digits"
    config.data.images_per_class = images_per_class
    config.augment.crop_padding = 1  # 8x8 images: a one-pixel shift
    config.augment.flip = False      # a mirrored digit is another digit
    config.model.update(depth=depth, width=width)
    config.num_epochs = num_epochs
    config.batch_size = 32
    config.eval_batch_size = 544  # the 540 test digits in one batch, padded to 8 x 68
    config.optimizer.update(learning_rate=0.05, schedule="cosine")
    config.checkpoint_every_epochs = 10
    config.progress_bar = False
    config.log_epochs = False
    return config


def _at_least(config: ml_collections.ConfigDict, path: str, low: float, what: str,
              optional: bool = False) -> None:
    node: Any = config
    for part in path.split("."):
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if node is None and optional:
        return
    number = isinstance(node, (int, float)) and not isinstance(node, bool)
    if not number or not math.isfinite(node) or node < low:
        raise ValueError(f"config.{path}={node!r}: {what}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses a run config's values that no run can train with, each with one line that says
    what to set. (A term's own values are checked where it is built: methods.build_terms; what
    depends on the data set, where it is loaded: training.prepare.)"""
    _at_least(config, "num_epochs", 1, "train at least 1 epoch")
    _at_least(config, "batch_size", 1, "a batch holds at least 1 image")
    _at_least(config, "eval_batch_size", 1, "a batch holds at least 1 image (None: batch_size)",
              optional=True)
    _at_least(config, "checkpoint_every_epochs", 1,
              "save every N >= 1 epochs (the last epoch is always saved)")
    _at_least(config, "eval_every_epochs", 1,
              "evaluate every N >= 1 epochs (the last epoch is always evaluated)")
    _at_least(config, "task_loss_weight", 0, "the task loss's weight cannot be negative")
    _at_least(config, "optimizer.learning_rate", 0, "give a learning rate >= 0")
    _at_least(config, "data.images_per_class", 1,
              "keep at least 1 image per class (None: all of them)", optional=True)
    distills = bool(config.get("distill"))
    _at_least(config, "data.labels_per_class", 0 if distills else 1,
              "keep at least 1 label per class (None: all); 0 only trains with distillation "
              "terms, which learn from unlabelled images", optional=True)
    check_load(config.data)
    batch_norm = (config.get("teacher") or {}).get("batch_norm", TEACHER_BATCH_NORM[0])
    if batch_norm not in TEACHER_BATCH_NORM:
        raise ValueError(f"config.teacher.batch_norm={batch_norm!r}: use \"running\" (the "
                         "teacher's running statistics) or \"batch\" (each batch's, as the VID "
                         "authors' code).")
    fraction = config.data.get("validation_fraction") or 0.0
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.data.validation_fraction={fraction!r}: hold out a fraction "
                         "in [0, 1) of each class's training images.")
    for stage in config.get("stage_epochs") or {}:
        _at_least(config, f"stage_epochs.{stage}", 0, "a stage trains 0 or more epochs")
