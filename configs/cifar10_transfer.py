"""Table 3's transfer on data this project has offline: CIFAR-10's original pixels
(../shared/data/cifar10-lossless.npz) split into two tasks. A ResNet-34 teacher learns five
classes (airplane, automobile, bird, cat, deer); students learn the other five (dog, frog,
horse, ship, truck) from M images per class, with Table 3's rows. The argument after the colon:

  source     a pipeline: the ResNet-34 teacher, and the students' own networks (ResNet-18,
             VGG-9) on the source classes, which the fine_tuned row starts from (the paper's
             students start from their own ImageNet weights)
  resnet18   the grid with a ResNet-18 student: rows of Table 3 x M = 10, 50 x seeds 0, 1
  vgg9       the same with a VGG-9 student

  python launch.py --config=configs/cifar10_transfer.py:source      # workdirs/cifar10_transfer
  python launch.py --config=configs/cifar10_transfer.py:resnet18 --list
  python launch.py --config=configs/cifar10_transfer.py:resnet18 --config.columns=M=10

The grids read the source pipeline's runs from workdirs/cifar10_transfer (--config.teacher.
workdir and --config.table.row_changes.fine_tuned.init_from.workdir point elsewhere). Images
stay 32 x 32 (padded crops and flips); the ImageNet-form networks then end at 1 x 1 maps.
Widths are this CPU's: at 32 x 32 a full-width ResNet-34 trains at 43 images/s on 2 cores and
VGG-9 at 27, so the teacher is a ResNet-34 of half width (base_channels 32: 161 images/s) and
the students quarter width (16: ResNet-18 1,295, VGG-9 599 images/s). The source runs train 12
epochs of their 25,000 images. Layers: as configs/transfer_table3.py (the teacher's four stage
ends; the student's of the same strides). Every cell trains about 15,360 images (cosine, batch
16, lr 0.05; the fine_tuned row lr 0.005): 307 epochs of the 50 images of M = 10, 61 of the 250
of M = 50. These values are this library's guesses, not chosen on a validation split.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common, transfer_table3
from vid_jax.config_base import cifar10_recipe, teacher_config
from vid_jax.runner import grid_config

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")
SOURCE_WORKDIR = "workdirs/cifar10_transfer"  # the source pipeline's default workdir
M = (10, 50)
STUDENTS = ("resnet18", "vgg9")
# The networks, by role name: widths this CPU affords (see the docstring).
MODELS = {"resnet34": dict(name="resnet34", base_channels=32),
          "resnet18": dict(name="resnet18", base_channels=16),
          "vgg9": dict(name="vgg9", base_channels=16)}
SOURCE_EPOCHS = 12
IMAGES_PER_CELL = 15_360


def width(role: str) -> str:
    """How `MODELS[role]` compares with the published network's width, for table titles."""
    return {64: "full-width", 32: "half-width", 16: "quarter-width"}[MODELS[role]["base_channels"]]


def run_config(model: str, classes, num_epochs: int | None) -> ml_collections.ConfigDict:
    """A run on five of CIFAR-10's classes, 32 x 32, CIFAR's crops and flips and channel
    statistics (of all ten classes)."""
    config = cifar10_recipe()
    config.data.update(source="arrays", path=common.CIFAR10_LOSSLESS, classes=tuple(classes))
    config.model = ml_collections.ConfigDict(MODELS[model])
    config.num_epochs = num_epochs
    config.batch_size, config.eval_batch_size = 64, 512
    config.optimizer.update(learning_rate=0.1, schedule="cosine", weight_decay=5e-4)
    return config


def source_pipeline() -> ml_collections.ConfigDict:
    """The teacher and the students' networks on the source classes (all 25,000 images)."""
    config = ml_collections.ConfigDict()
    config.jobs = {name: run_config(name, SOURCE_CLASSES, SOURCE_EPOCHS)
                   for name in ("resnet34", *STUDENTS)}
    config.job_order = ("resnet34", *STUDENTS)
    config.descriptions = {name: f"{name} on {', '.join(SOURCE_CLASSES)}"
                           for name in config.job_order}
    return config


def target_grid(student: str) -> ml_collections.ConfigDict:
    cell = run_config(student, TARGET_CLASSES, placeholder(int))
    cell.batch_size = 16  # M = 10 of five classes is 50 images
    cell.optimizer.learning_rate = 0.05
    # None: derived per column from images_per_cell (placeholders, so --config. can set them).
    cell.eval_every_epochs = cell.checkpoint_every_epochs = placeholder(int)
    cell.progress_bar = False
    columns = {f"M={m}": dict(data=dict(images_per_class=m)) for m in M}
    return grid_config(
        f"cifar10_transfer_{student}",
        f"Transfer on CIFAR-10: {width('resnet34')} ResNet-34 teacher on "
        f"{', '.join(SOURCE_CLASSES)} -> {width(student)} {transfer_table3.TITLES[student]} "
        f"student on {', '.join(TARGET_CLASSES)}, M images "
        "per class", cell, common.TABLE3_ROWS, columns,
        terms=transfer_table3.terms(student),
        teacher=teacher_config(MODELS["resnet34"], f"{SOURCE_WORKDIR}/resnet34",
                               num_classes=len(SOURCE_CLASSES)),
        train_images={f"M={m}": m * len(TARGET_CLASSES) for m in M},
        seeds=(0, 1), seed_fields=("seed", "data.subset_seed"), scale="small",
        images_per_cell=IMAGES_PER_CELL, named_rows={"fine_tuned": ()},
        row_changes={"fine_tuned": dict(
            init_from=dict(workdir=f"{SOURCE_WORKDIR}/{student}", load_classifier=False),
            optimizer=dict(learning_rate=0.005))},
        teacher_hint="Train it and the fine_tuned row's source network first: python launch.py "
                     "--config=configs/cifar10_transfer.py:source.",
        notes="The teacher learnt the other five classes; the fine_tuned row starts from the "
              "student's network trained on them (its classifier new). Each seed draws its "
              "own M-per-class subset.")


def get_config(part: str = "source") -> ml_collections.ConfigDict:
    if part == "source":
        return source_pipeline()
    if part in STUDENTS:
        return target_grid(part)
    raise ValueError(f"Unknown part {part!r}; choose source, {', '.join(STUDENTS)}.")
