"""VID-I from a WRN-40-2 teacher into a WRN-16-2 student on CIFAR-100 (RepDistiller's recipe).

Reference (RepDistiller, CRD paper Table 1): VID 74.11% top-1; student alone 73.26; teacher
75.61. Train the teacher first with configs/cifar100_wrn40_2.py.

  python launch.py --config=configs/cifar100_wrn16_2.py --workdir=workdirs/cifar100_wrn16_2
"""
import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.with_row(common.cifar100_student(16, 2), "vid_i",
                             common.CIFAR100_TEACHER_WORKDIR)
    config.task_loss_weight = 1.0
    return config
