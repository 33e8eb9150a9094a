"""The optimizer: schedules, transforms, and which parameters a stage trains.

The student and the terms' heads get their own transforms through `optax.partition`
(`config.optimizer`, and `config.head_optimizer` when set); parameters a stage does not train
are labelled "frozen" and get no update, weight decay included.
"""
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import optax


def make_schedule(opt: ml_collections.ConfigDict, steps_per_epoch: int,
                  num_epochs: int) -> optax.Schedule:
    lr = opt.learning_rate
    if opt.schedule == "piecewise":
        return optax.piecewise_constant_schedule(
            lr, {int(e * steps_per_epoch): opt.decay_factor for e in opt.boundaries_epochs})
    if opt.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, num_epochs * steps_per_epoch)
    if opt.schedule == "constant":
        return optax.constant_schedule(lr)
    raise ValueError(f"Unknown schedule {opt.schedule!r}; use piecewise, cosine or constant.")


def make_transform(opt: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
    if opt.name == "sgd":
        # Decay is added to the gradient, as PyTorch's SGD(weight_decay=...) does.
        return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                           optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
    if opt.name == "adamw":
        return optax.adamw(schedule, weight_decay=opt.weight_decay)
    raise ValueError(f"Unknown optimizer {opt.name!r}; use sgd or adamw.")


# (term name, names of the submodules above a head parameter) -> whether it trains.
HeadRule = Callable[[str, Sequence[str]], bool]


def parameter_labels(params: dict[str, Any], trains_student: bool,
                     trains_head: HeadRule) -> dict[str, Any]:
    """"student", "heads" or "frozen" for every parameter of {"student": ..., "heads": {term
    name: ...}}."""
    def label(path, _):
        if path[0].key == "student":
            return "student" if trains_student else "frozen"
        term, names = path[1].key, [getattr(k, "key", None) for k in path[2:]]
        return "heads" if trains_head(term, names) else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int,
                   trains_student: bool = True, trains_head: HeadRule = lambda *_: True
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The stage's transform (student, heads, frozen) and the student's schedule."""
    student_schedule = make_schedule(config.optimizer, steps_per_epoch, num_epochs)
    head_opt = config.get("head_optimizer") or config.optimizer
    tx = optax.partition(
        {"student": make_transform(config.optimizer, student_schedule),
         "heads": make_transform(head_opt, make_schedule(head_opt, steps_per_epoch, num_epochs)),
         "frozen": optax.set_to_zero()},
        lambda params: parameter_labels(params, trains_student, trains_head))
    return tx, student_schedule
