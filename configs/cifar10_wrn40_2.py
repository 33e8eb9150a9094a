"""Teacher for Table 1 of the VID paper: WRN-40-2 on all of CIFAR-10.

  python launch.py --config=configs/cifar10_wrn40_2.py --workdir=workdirs/cifar10_wrn40_2
  # the same data from the image folder:
  python launch.py --config=configs/cifar10_wrn40_2.py --config.data.source=image_folder \
      --config.data.path=../shared/data/cifar10-jpeg
"""
import ml_collections

from vid_jax.config_base import cifar10_recipe


def get_config() -> ml_collections.ConfigDict:
    config = cifar10_recipe()
    config.model.update(depth=40, width=2)
    return config
