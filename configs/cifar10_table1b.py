"""Table 1b of the VID paper: CIFAR-10, WRN-40-2 -> WRN-16-1, all 50,000 training images, N_l of
them labelled per class (N_l = 1000/500/100); the others get no task loss, only the
distillation terms. Rows as Table 1a (configs/cifar10_table1.py, which says how to select and
override); the argument after the colon picks the scale: small (default; 10 epochs of the
50,000 images, the small scale's minimum) or full (WRN's recipe, 200 epochs). The paper's
numbers are those of its workshop version (the CVPR Table 1b is not in our sources).

What this project's 2-core CPU affords (the table's notes give the hours): at small scale a
cell takes about an hour and a column of 8 rows x 2 seeds about 15 h; full scale is beyond it.

  python launch.py --config=configs/cifar10_table1b.py --list
  python launch.py --config=configs/cifar10_table1b.py --config.columns=N_l=100 --config.seeds=0
"""
import ml_collections

from configs import common

N_L = (1000, 500, 100)


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
    return common.table1_grid(
        "cifar10_table1b",
        "Table 1b: CIFAR-10, WRN-40-2 -> WRN-16-1, all 50,000 images, N_l labelled per class",
        {f"N_l={n}": dict(data=dict(labels_per_class=n)) for n in N_L}, scale,
        train_images={f"N_l={n}": 50_000 for n in N_L},
        notes="Unlabelled images get no task loss, only the distillation terms. The paper's "
              "numbers: its workshop version's Table 1b (VID-I called MI there).")
