"""Table 3 of the VID paper: transfer from an ImageNet ResNet-34 to students on other data sets,
M training images per class; rows student, fine_tuned, lwf, fitnet, at, nst, vid_lp, vid_i,
lwf+fitnet, vid_lp+vid_i. The argument after the colon picks the panel:

  mit67_resnet18  (a) MIT-67 -> ResNet-18        columns M~80 (all), M=50, M=25, M=10
  mit67_vgg9      (b) MIT-67 -> VGG-9 (its numbers are not in our sources)
  cub_resnet18    (c) CUB-200-2011 -> ResNet-18  columns M~30 (all: the paper's M~29.95), M=20,
                                                 M=10, M=5
  cub_vgg9        (d) CUB-200-2011 -> VGG-9

It runs where the data and the ImageNet weights are (nothing here can download them):

  weights/resnet34.safetensors   the teacher: torchvision's ResNet-34 (IMAGENET1K_V1), e.g.
                                 timm's copy, hf.co/timm/resnet34.tv_in1k (model.safetensors),
                                 or resnet34-b627a593.pth with PyTorch installed
  weights/resnet18.safetensors   the fine_tuned row's ResNet-18 (timm/resnet18.tv_in1k)
  weights/vgg11_bn.safetensors   the fine_tuned row's VGG-9: VGG-11-BN's eight convolutions
                                 (timm/vgg11_bn.tv_in1k; its classifier does not fit VGG-9's)
  CUB-200-2011                   TFDS caltech_birds2011, prepared in --config.cell.data.data_dir
  MIT-67                         data/mit67/Images (indoorCVPR_09.tar) with TrainImages.txt and
                                 TestImages.txt beside it (--config.cell.data.path=...)

  python launch.py --config=configs/transfer_table3.py:cub_resnet18 --list
  python launch.py --config=configs/transfer_table3.py:cub_resnet18 \\
      --config.cell.data.data_dir=DIR --config.teacher.weights=PATH \\
      --config.table.row_changes.fine_tuned.init_from.weights=PATH --config.columns=M=10

What the paper says and what is this library's choice (the paper's text gives no recipe):
images are stored with their shorter side at 256 and trained on Inception-style crops of 224
with flips (ImageNet's preprocessing, its mean and std), tested on the centre 224; the teacher
sees the student's input and keeps its BatchNorm statistics (eval mode). Representative layers
(the paper: "ends of residual blocks and the max-pooling layers of VGG"): the ends of
ResNet's four stages (stride 4, 8, 16, 32) and, for VGG-9, its max-pooled blocks 2-5 (the same
strides); FitNet's hint is the third pair. Every cell trains about 200 epochs of all of the
data set's training images (cosine, SGD 0.9, lr 0.1, batch 64, weight decay 5e-4): M = 10 of
MIT-67 trains 1600 epochs. The fine_tuned row starts from the student's ImageNet weights but
its classifier, at lr 0.01. The paper chose each method's hyper-parameters on a 20%
validation split; these cells train fixed values (`--config.selection=validation` with
`--config.search...` runs that protocol).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common
from vid_jax.config_base import base_config, imagenet_input, teacher_config
from vid_jax.runner import grid_config

# Where the ImageNet weights are looked for, relative to the project root.
WEIGHTS = {"resnet34": "weights/resnet34.safetensors",
           "resnet18": "weights/resnet18.safetensors",
           "vgg9": "weights/vgg11_bn.safetensors"}
MIT67_IMAGES = "data/mit67/Images"

RESNET_STAGES = ("stage1", "stage2", "stage3", "stage4")
# Each student's layers of the same strides as the teacher's RESNET_STAGES (4, 8, 16, 32).
STUDENT_LAYERS = {"resnet18": RESNET_STAGES, "vgg9": ("stage2", "stage3", "stage4", "stage5")}

DATA = {
    # CUB-200-2011: 5,994 training images in 200 classes (29 to 30 each: M ~ 29.95).
    "cub": dict(source="tfds", name="caltech_birds2011", train_images=5_994,
                per_class=(20, 10, 5)),
    # MIT-67: TrainImages.txt lists 80 images of each of 67 classes, 5,360 in all.
    "mit67": dict(source="image_list", path=MIT67_IMAGES, train_list="TrainImages.txt",
                  test_list="TestImages.txt", train_images=5_360, per_class=(50, 25, 10)),
}
TITLES = {"cub": "CUB-200-2011", "mit67": "MIT-67", "resnet18": "ResNet-18", "vgg9": "VGG-9"}
EPOCHS_OF_ALL = 200  # every cell trains about this many epochs of all the training images


def terms(student: str) -> dict[str, dict]:
    """The config.distill entries of Table 3's methods for `student`, from the teacher's four
    stage ends (LwF and VID-LP read the logits and the penultimate features)."""
    pairs = dict(layers=STUDENT_LAYERS[student], teacher_layers=RESNET_STAGES)
    hint = dict(layers=STUDENT_LAYERS[student][2:3], teacher_layers=RESNET_STAGES[2:3])
    return {
        "lwf": dict(weight=1.0, temperature=2.0),
        "fitnet": dict(weight=1.0, **hint),
        "at": dict(weight=1000.0, **pairs),
        "nst": dict(weight=25.0, **pairs),
        "vid_lp": dict(weight=1.0),
        "vid_i": dict(weight=1.0, **pairs),
    }


def get_config(panel: str = "cub_resnet18") -> ml_collections.ConfigDict:
    dataset, _, student = panel.partition("_")
    if dataset not in DATA or student not in STUDENT_LAYERS:
        raise ValueError(f"Unknown panel {panel!r}; choose one of mit67_resnet18, mit67_vgg9, "
                         "cub_resnet18, cub_vgg9.")
    source = dict(DATA[dataset])
    all_images, per_class = source.pop("train_images"), source.pop("per_class")

    cell = imagenet_input(base_config())
    cell.data.update(**source)
    cell.model = ml_collections.ConfigDict(dict(name=student))
    cell.batch_size, cell.eval_batch_size = 64, 256
    cell.optimizer.update(learning_rate=0.1, schedule="cosine", weight_decay=5e-4)
    # None: derived per column from images_per_cell (placeholders, so --config. can set them).
    cell.num_epochs = cell.eval_every_epochs = cell.checkpoint_every_epochs = placeholder(int)
    cell.progress_bar = False

    all_column, *m_columns = common.TABLE3_M[dataset]
    columns = {all_column: dict(data=dict(images_per_class=None)),
               **{c: dict(data=dict(images_per_class=m)) for c, m in zip(m_columns, per_class)}}
    train_images = {all_column: all_images,
                    **{c: m * (200 if dataset == "cub" else 67)
                       for c, m in zip(m_columns, per_class)}}
    name = f"table3_{panel}"
    return grid_config(
        name, f"Table 3: {TITLES[dataset]}, ImageNet ResNet-34 teacher -> {TITLES[student]} "
              "student, M training images per class", cell, common.TABLE3_ROWS, columns,
        terms=terms(student),
        teacher=teacher_config(dict(name="resnet34"), weights=WEIGHTS["resnet34"],
                               num_classes=1000),
        train_images=train_images, seeds=(0, 1, 2), seed_fields=("seed", "data.subset_seed"),
        scale="full", images_per_cell=EPOCHS_OF_ALL * all_images,
        paper=common.PAPER.get(name), named_rows={"fine_tuned": ()},
        row_changes={"fine_tuned": dict(
            init_from=dict(weights=WEIGHTS[student], load_classifier=False),
            optimizer=dict(learning_rate=0.01))},
        teacher_hint="The teacher is torchvision's ImageNet ResNet-34: put its weights at "
                     f"{WEIGHTS['resnet34']} (see configs/transfer_table3.py).",
        notes="Every cell trains about 200 epochs of all the training images (cosine, lr 0.1; "
              "the fine_tuned row lr 0.01); each seed draws its own M-per-class subset. "
              "Layers: the teacher's four stage ends, the student's of the same strides.")
