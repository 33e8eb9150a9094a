"""Table 1a of the VID paper: a WRN-16-1 student of a WRN-40-2 teacher on CIFAR-10.

The argument after the colon picks the row: student (alone), kd, fitnet, at, vid_i, kd_at,
kd_vid_i. `--config.data.images_per_class=M` picks the column (M = 5000/1000/500/100).

  python launch.py --config=configs/cifar10_wrn16_1.py:vid_i --config.data.images_per_class=100
"""
import ml_collections

from vid_jax.config_base import cifar10_recipe

GROUPS = ("group1", "group2", "group3")
# name -> config.distill entries. Weights: KD as Hinton (T=4, with CE), AT's beta=1000 as in
# its authors' code, FitNet's hint on the middle group, VID-I on all three group ends.
ROWS = {
    "student": {},
    "kd": {"kd": dict(weight=1.0, temperature=4.0)},
    "fitnet": {"fitnet": dict(weight=1.0, layers=("group2",))},
    "at": {"at": dict(weight=1000.0, layers=GROUPS)},
    "vid_i": {"vid_i": dict(weight=1.0, layers=GROUPS)},
    "kd_at": {"kd": dict(weight=1.0, temperature=4.0), "at": dict(weight=1000.0, layers=GROUPS)},
    "kd_vid_i": {"kd": dict(weight=1.0, temperature=4.0), "vid_i": dict(weight=1.0, layers=GROUPS)},
}


def get_config(row: str = "vid_i") -> ml_collections.ConfigDict:
    if row not in ROWS:
        raise ValueError(f"Unknown row {row!r}; choose one of {', '.join(ROWS)}.")
    config = cifar10_recipe()
    config.model.update(depth=16, width=1)
    if ROWS[row]:
        config.teacher.model = ml_collections.ConfigDict(dict(name="wrn", depth=40, width=2))
        config.teacher.workdir = "teachers/cifar10_wrn40_2"  # committed (teachers/README.md)
    for name, entry in ROWS[row].items():
        config.distill[name] = entry
    return config
