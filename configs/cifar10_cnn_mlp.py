"""CNN -> MLP of the VID paper: CIFAR-10, WRN-40-2 teacher -> MLP student (3 x 1024 hidden
units); rows student, kd, vid_lp, kd+vid_lp (the MLP has no maps: VID-LP predicts the teacher's
logits from its penultimate layer). The argument after the colon picks the scale: small
(default) or full.

  python launch.py --config=configs/cifar10_cnn_mlp.py --list
"""
import ml_collections

from configs import common


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
    cell = common.table1_student()
    cell.model = ml_collections.ConfigDict(dict(name="mlp", hidden_sizes=(1024, 1024, 1024)))
    return common.grid(
        "cifar10_cnn_mlp",
        "CNN -> MLP: CIFAR-10, WRN-40-2 teacher -> MLP student (3 x 1024 hidden units)",
        cell, common.MLP_ROWS, {"all": {}}, scale, train_images={"all": 50_000},
        teacher=common.teacher(common.CIFAR10_TEACHER_WORKDIR),
        teacher_hint=common.CIFAR10_TEACHER_HINT)
