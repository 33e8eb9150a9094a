"""VID-I from a WRN-40-2 teacher into a WRN-16-2 student on CIFAR-100 (RepDistiller's recipe).

Reference (RepDistiller, CRD paper Table 1): VID 74.11% top-1; student alone 73.26; teacher
75.61. Train the teacher first with configs/cifar100_wrn40_2.py.

  python launch.py --config=configs/cifar100_wrn16_2.py --workdir=workdirs/cifar100_wrn16_2
"""
import ml_collections

from vid_jax.config_base import cifar100_recipe


def get_config() -> ml_collections.ConfigDict:
    config = cifar100_recipe()
    config.model.update(depth=16, width=2)
    config.teacher.model = ml_collections.ConfigDict(dict(name="wrn", depth=40, width=2))
    config.teacher.workdir = "workdirs/cifar100_wrn40_2"
    config.task_loss_weight = 1.0
    config.distill.vid_i = dict(weight=1.0, layers=("group1", "group2", "group3"))
    return config
