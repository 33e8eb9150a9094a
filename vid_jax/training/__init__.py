"""Training a teacher, a student alone, or a student with distillation.

  mesh.py       the one-axis data-parallel mesh
  sampler.py    which examples each step sees, a pure function of (seed, step)
  optimizer.py  schedules, transforms, and which parameters a stage trains
  step.py       the jitted train and eval steps (they know no method by name)
  metrics.py    per-step sums, the divergence check, a run's summary
  prepare.py    from a config to a checked `Run`; `run.train_step(stage)` builds a step
  loop.py       the stages and epochs of a run in its workdir, resumable

    summary = training.train_and_evaluate(config, workdir)

    run = training.prepare(config)             # tests and benchmarks: one step by hand
    state, step = run.place(run.state), run.train_step()
    state, metrics = step(state, run.batch(0))

    training.train_together([config_a, config_b], [workdir_a, workdir_b])  # one shared step
"""
from vid_jax.training.loop import train_and_evaluate, train_stage, train_together
from vid_jax.training.mesh import AXIS, make_mesh
from vid_jax.training.metrics import MetricSums, TrainingDiverged, summarize
from vid_jax.training.optimizer import make_optimizer, make_schedule, parameter_labels
from vid_jax.training.prepare import (
    Run,
    TrainStep,
    check_shareable,
    load_teacher,
    prepare,
    shared_train_step,
)
from vid_jax.training.sampler import BatchSampler
from vid_jax.training.step import TrainState, evaluate, make_eval_step

__all__ = [
    "AXIS", "BatchSampler", "MetricSums", "Run", "TrainState", "TrainStep", "TrainingDiverged",
    "evaluate", "load_teacher", "make_eval_step", "make_mesh", "make_optimizer",
    "make_schedule", "parameter_labels", "prepare", "summarize", "train_and_evaluate",
    "train_stage", "train_together", "check_shareable", "shared_train_step",
]
