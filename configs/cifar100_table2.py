"""Table 2 of the VID paper: CIFAR-100, WRN-40-2 teacher -> WRN students of four sizes (the
columns WRN-40-2, WRN-16-2, WRN-40-1, WRN-16-1); rows as Table 1a. CIFAR-100 comes from TFDS:
prepare it where there is network and set --config.cell.data.data_dir. The argument after the
colon picks the scale: small (default) or full (RepDistiller's recipe, 240 epochs).

  python launch.py --config=configs/cifar100_table2.py --list
  python launch.py --config=configs/cifar100_table2.py --config.columns=WRN-16-2 \\
      --config.cell.data.data_dir=DIR
"""
import ml_collections

from configs import common

STUDENTS = {"WRN-40-2": (40, 2), "WRN-16-2": (16, 2), "WRN-40-1": (40, 1), "WRN-16-1": (16, 1)}


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
    return common.grid(
        "cifar100_table2", "Table 2: CIFAR-100, WRN-40-2 teacher -> WRN students",
        common.cifar100_student(16, 1), common.TABLE1_ROWS,
        {name: dict(model=dict(depth=d, width=w)) for name, (d, w) in STUDENTS.items()}, scale,
        train_images=dict.fromkeys(STUDENTS, 50_000),
        teacher=common.teacher(common.CIFAR100_TEACHER_WORKDIR),
        teacher_hint=common.CIFAR100_TEACHER_HINT,
        notes="CIFAR-100 comes from TFDS: prepare it where there is network and set "
              "--config.cell.data.data_dir, or add an image folder of it.")
