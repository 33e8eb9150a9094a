"""Table 1a of the VID paper, one run: a WRN-16-1 student of the WRN-40-2 teacher on CIFAR-10.

The argument after the colon picks the row: student (alone), kd, fitnet, at, nst, vid_i, kd+at,
kd+vid_i, or authors (the authors' own recipe: KD with T = 2 and 0.1 * VID-I with their linear
mean network and variance); configs/common.py defines them, for this config and the grids
alike.
`--config.data.images_per_class=M` picks the column (M = 5000/1000/500/100). The data are the
image folder ../shared/data/cifar10-jpeg (`--config.data.source=tfds` reads TFDS instead); the
teacher is the committed teachers/cifar10_wrn40_2. The whole table, with seeds and a
CPU-sized scale: configs/cifar10_table1.py.

  python launch.py --config=configs/cifar10_wrn16_1.py:vid_i --config.data.images_per_class=100
"""
import ml_collections

from configs import common


def get_config(row: str = "vid_i") -> ml_collections.ConfigDict:
    return common.with_row(common.table1_student(), row, common.CIFAR10_TEACHER_WORKDIR)
