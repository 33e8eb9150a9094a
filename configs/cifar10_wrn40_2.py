"""Teacher for Table 1 of the VID paper: WRN-40-2 on all of CIFAR-10.

The argument after the colon picks the schedule:
  full (default): WRN's recipe, 200 epochs, batch 128, lr 0.1 x0.2 at 60/120/160, from TFDS.
  cpu: what a 2-core CPU can train in a few sessions (about 20 min an epoch with 2 XLA
       devices): 15 epochs, batch 128, lr 0.1 cosine, from ../shared/data/cifar10-jpeg.
       The committed teacher teachers/cifar10_wrn40_2 (87.16%).
  lossless: the stronger teacher, trained over many CPU sessions: 40 epochs, batch 128,
       lr 0.1 cosine, on CIFAR-10's original pixels (../shared/data/cifar10-lossless.npz);
       2% of every class (1,000 images) held out to choose the checkpoint, so the test set
       chooses nothing.

  python launch.py --config=configs/cifar10_wrn40_2.py --workdir=workdirs/cifar10_wrn40_2
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python launch.py \
      --config=configs/cifar10_wrn40_2.py:cpu --workdir=workdirs/cifar10_wrn40_2_cpu
  # the full recipe from the image folder:
  python launch.py --config=configs/cifar10_wrn40_2.py --config.data.source=image_folder \
      --config.data.path=../shared/data/cifar10-jpeg
"""
import ml_collections

from configs import common
from vid_jax.config_base import cifar10_recipe

SCHEDULES = ("full", "cpu", "lossless")


def get_config(schedule: str = "full") -> ml_collections.ConfigDict:
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    config = cifar10_recipe()
    config.model = ml_collections.ConfigDict(common.TEACHER_MODEL)
    if schedule == "cpu":
        common.cifar10_images(config)
        config.num_epochs = 15
        config.optimizer.schedule = "cosine"
    if schedule == "lossless":
        config.data.source = "arrays"
        config.data.path = common.CIFAR10_LOSSLESS
        config.data.validation_fraction = 0.02
        config.num_epochs = 40
        config.optimizer.schedule = "cosine"
        config.progress_bar = False
    return config
