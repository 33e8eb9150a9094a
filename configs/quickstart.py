"""The offline quickstart: VID-I on scikit-learn's digits, which ship with scikit-learn.

Three runs in order: a WRN-16-2 teacher on all training digits; then a WRN-10-1 student on
only `M` digits per class, trained twice from the same seed, alone and with VID-I from the
teacher's three group ends. Ends with a table of the three test accuracies.

  python launch.py --config=configs/quickstart.py --workdir=workdirs/quickstart
"""
import copy

import ml_collections

from vid_jax.config_base import digits_recipe
from vid_jax.models import WRN_GROUPS

IMAGES_PER_CLASS = 10


def get_config() -> ml_collections.ConfigDict:
    teacher = digits_recipe(depth=16, width=2, images_per_class=None, num_epochs=15)
    student = digits_recipe(depth=10, width=1, images_per_class=IMAGES_PER_CLASS, num_epochs=80)
    vid = copy.deepcopy(student)
    vid.teacher.model = teacher.model
    vid.teacher.workdir = "{workdir}/teacher"
    # The VID term is a mean over every element of three maps, small beside the cross-entropy;
    # on 100 training images a weight of 16 did best of 1, 4, 8, 16, 32 (seed 0).
    vid.distill.vid_i = dict(weight=16.0, layers=WRN_GROUPS)

    config = ml_collections.ConfigDict()
    config.jobs = dict(teacher=teacher, student=student, student_vid_i=vid)
    config.job_order = ("teacher", "student", "student_vid_i")
    config.descriptions = dict(
        teacher="WRN-16-2, all training digits",
        student=f"WRN-10-1, {IMAGES_PER_CLASS} digits per class, alone",
        student_vid_i=f"WRN-10-1, {IMAGES_PER_CLASS} digits per class, VID-I from the teacher")
    return config
