"""Every registered distillation method on the quickstart's digits, one job each.

A WRN-16-2 teacher on all training digits (as in configs/quickstart.py), then a WRN-10-1
student on 10 digits per class for each method, selected by the method's example config
entry, for the VID paper's combinations, and alone. The table at the end gives each job's
test accuracy and each distillation term's loss at the first step and over the last epoch.

  python launch.py --config=configs/method_zoo.py --workdir=workdirs/method_zoo
  python launch.py --config=configs/method_zoo.py:vid_i,kd+at --workdir=...  # some only
"""
import ml_collections

from vid_jax import methods
from vid_jax.config_base import digits_recipe

IMAGES_PER_CLASS = 10
NUM_EPOCHS = 30
STAGE_EPOCHS = 5  # for the methods that declare a stage before the main one
# The combinations of the VID paper's tables: the terms' example entries, summed.
COMBINATIONS = ("kd+at", "kd+vid_i", "lwf+fitnet", "vid_lp+vid_i")


def get_config(names: str = "") -> ml_collections.ConfigDict:
    chosen = [n for n in names.split(",") if n] or [*methods.METHODS, *COMBINATIONS]
    unknown = sorted({m for n in chosen for m in n.split("+")} - set(methods.METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown} in --config=configs/method_zoo.py:"
                         f"{names}; registered: {', '.join(methods.METHODS)}.")
    teacher = digits_recipe(depth=16, width=2, images_per_class=None, num_epochs=15)
    jobs = {"teacher": teacher,
            "student": digits_recipe(10, 1, IMAGES_PER_CLASS, NUM_EPOCHS)}
    descriptions = {"teacher": "WRN-16-2, all training digits",
                    "student": f"WRN-10-1, {IMAGES_PER_CLASS} digits per class, alone"}
    for name in chosen:
        combined = [methods.METHODS[m] for m in name.split("+")]
        job = digits_recipe(10, 1, IMAGES_PER_CLASS, NUM_EPOCHS)
        for method in combined:
            job.distill[method.name] = dict(method.example)
            for stage in method.stages:
                job.stage_epochs[stage.name] = STAGE_EPOCHS
        if any(term.module.teacher_layer_names for term in methods.build_terms(job.distill)):
            job.teacher.model = teacher.model
            job.teacher.workdir = "{workdir}/teacher"
        jobs[name] = job
        descriptions[name] = " + ".join(m.matches for m in combined)

    config = ml_collections.ConfigDict()
    config.jobs = jobs
    config.job_order = tuple(jobs)
    config.descriptions = descriptions
    return config
