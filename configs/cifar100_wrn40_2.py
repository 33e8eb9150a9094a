"""Teacher: WRN-40-2 on CIFAR-100 (TFDS), RepDistiller's recipe (reference: 75.61% top-1).

  python launch.py --config=configs/cifar100_wrn40_2.py --workdir=workdirs/cifar100_wrn40_2
"""
import ml_collections

from configs import common
from vid_jax.config_base import cifar100_recipe


def get_config() -> ml_collections.ConfigDict:
    config = cifar100_recipe()
    config.model = ml_collections.ConfigDict(common.TEACHER_MODEL)
    return config
