"""Set-up: from a config to a checked `Run`, before anything is written.

`prepare(config)` loads the data and the teacher, builds the student and the terms, checks
every layer a term reads, and initialises the train state. A `Run` then gives what each stage
needs: its initial state, its optimizer and its jitted step (`run.train_step(stage)`, the one
call tests and benchmarks use to build a step).
"""
import contextlib
import copy
import dataclasses
import functools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vid_jax import augment, data, methods, pretrained
from vid_jax.config_base import check_config
from vid_jax.models import build_model, sown_layers
from vid_jax.training.mesh import (
    AXIS,
    check_batch,
    make_mesh,
    process_rows,
    replicate,
    shard_rows,
)
from vid_jax.training.optimizer import HeadRule, make_optimizer
from vid_jax.training.sampler import BatchSampler
from vid_jax.training.step import ActiveTerm, StepSpec, TrainState, make_train_step

Batch = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # images, labels, labelled, indices


def _abstract_layers(model, variables, image_shape) -> dict[str, jax.ShapeDtypeStruct]:
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    _, sown = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                             variables, x)
    return sown_layers(sown["intermediates"])


def teacher_task(teacher_config, num_classes: int,
                 image_shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """The teacher's classes and input shape: its own (`config.teacher.num_classes`,
    `image_size`) where set, else the student's task's `num_classes` and `image_shape`."""
    size = teacher_config.get("image_size")
    return (teacher_config.get("num_classes") or num_classes,
            tuple(image_shape) if size is None else (size, size, image_shape[-1]))


def load_teacher(teacher_config, num_classes: int, image_shape):
    """The frozen teacher: its model and variables, from its own run (`workdir`) or a weights
    file in torchvision's names (`weights`), checked against the config's model. Its classes
    and input are `teacher_task`'s."""
    if not (teacher_config.get("workdir") or teacher_config.get("weights")):
        raise ValueError("config.teacher.model is set but config.teacher.workdir is not: set it "
                         "to the workdir of the teacher's own run (or config.teacher.weights "
                         "to a weights file).")
    classes, shape = teacher_task(teacher_config, num_classes, image_shape)
    # The axis name only matters for teacher.batch_norm="batch" (statistics over the devices).
    model = build_model(teacher_config.model, classes, bn_axis_name=AXIS)
    variables = pretrained.load_variables(
        model, shape, teacher_config.get("workdir"), teacher_config.get("weights"),
        field="config.teacher",
        target=f"config.teacher.model ({dict(teacher_config.model)}, {classes} classes)",
        hint="Set config.teacher.model (and config.teacher.num_classes) to the model that "
             "made them.")
    return model, jax.tree.map(jnp.asarray, variables)


def init_student(init_from, student: nn.Module, variables: dict[str, Any],
                 image_shape: Sequence[int]) -> dict[str, Any]:
    """The student's initial variables: `variables` (its initialisation), overwritten by the
    checkpoint or weights `config.init_from` names, all of them or (load_classifier=False)
    all but the classifier, which keeps its initialisation (the paper's "Fine-tuning")."""
    if not init_from or not (init_from.get("workdir") or init_from.get("weights")):
        return variables
    keep_classifier = init_from.get("load_classifier", True)
    loaded = pretrained.load_variables(
        student, image_shape, init_from.get("workdir"), init_from.get("weights"),
        exclude=() if keep_classifier else (type(student).CLASSIFIER,),
        field="config.init_from", target="config.model",
        hint="A checkpoint of another task's classes loads with "
             "config.init_from.load_classifier=False." if keep_classifier else "")
    return pretrained.overwrite(variables, loaded)


def _resolved_data_config(config, dataset: data.Dataset) -> None:
    """Fills in per-channel mean/std from the training images when the config leaves them out
    (`data.pixel_statistics`: of a streamed set, a sample)."""
    with config.unlocked():
        if config.data.get("mean") is None or config.data.get("std") is None:
            config.data.mean, config.data.std = data.pixel_statistics(
                dataset.train, data.read_threads(config.data))


def _merged(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """`first` with the entries only `second` has added, recursively."""
    out = dict(second)
    for key, value in first.items():
        both = isinstance(value, Mapping) and isinstance(second.get(key), Mapping)
        out[key] = _merged(value, second[key]) if both else value
    return out


def init_term(term: methods.Term, key: jax.Array, student: Mapping[str, jax.Array],
              teacher: Mapping[str, jax.Array], ctx: methods.Context) -> dict[str, Any]:
    """A term's variables: those of its main-stage module and of each of its stages' loss
    modules (which share its parameter names), merged; from one key, so a parameter two of
    them create starts the same."""
    variables: dict[str, Any] = {}
    for module in term.modules():
        variables = _merged(variables, module.init(
            {"params": key, "distill": jax.random.fold_in(key, 1)}, student, teacher, ctx))
    return variables


class TrainStep:
    """A stage's jitted, data-parallel step with the teacher's variables bound.

    Of one run (`Run.train_step`): `state, metrics = step(state, run.batch(i))`. Of several
    runs sharing the step (`shared_train_step`): `states, metrics = step(states, batch)`, with
    a tuple of states and one metrics dict per run.
    """

    def __init__(self, jitted, teacher_variables: Any, shared: bool):
        self._jitted, self._teacher_variables, self._shared = jitted, teacher_variables, shared

    def _states(self, state):
        return tuple(state) if self._shared else (state,)

    def compile(self, state: TrainState | Sequence[TrainState], batch: Batch) -> float:
        """Compiles ahead of the first step; returns the seconds it took."""
        t0 = time.perf_counter()
        self._jitted = self._jitted.lower(self._states(state), self._teacher_variables,
                                          *batch).compile()
        return time.perf_counter() - t0

    def __call__(self, state: TrainState | Sequence[TrainState], batch: Batch):
        states, metrics = self._jitted(self._states(state), self._teacher_variables, *batch)
        return (states, metrics) if self._shared else (states[0], metrics[0])


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything one run needs, built from its config and checked; nothing written yet."""

    config: ml_collections.ConfigDict  # with the data statistics filled in
    dataset: data.Dataset
    mesh: jax.sharding.Mesh
    student: nn.Module
    teacher: nn.Module | None
    teacher_variables: Any
    terms: list[methods.Term]
    stages: list[methods.Stage]  # those the terms declare, run before the main stage
    sampler: BatchSampler
    state: TrainState  # the initial state of the main stage, on the host

    # -- what a stage trains ------------------------------------------------------------------

    def active_terms(self, stage: methods.Stage | None = None) -> list[methods.Term]:
        """The terms that give a loss in `stage` (None: the main stage)."""
        return [t for t in self.terms if t.loss_module(stage) is not None]

    def _trains_head(self, stage: methods.Stage | None) -> HeadRule:
        if stage is None:  # every active term's heads, but the parts its method fixed
            fixed = {t.name: set(t.method.frozen) for t in self.active_terms()}
            return lambda term, names: term in fixed and not fixed[term] & set(names)
        trained = {t.name: next(s.trains_heads for s in t.method.stages if s.name == stage.name)
                   for t in self.active_terms(stage)}
        return lambda term, names: term in trained and (
            trained[term] is None or bool(set(trained[term]) & set(names)))

    def optimizer(self, stage: methods.Stage | None = None
                  ) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """The stage's transform (only what it trains gets updates) and learning-rate schedule."""
        epochs = self.config.num_epochs if stage is None else stage.epochs
        trains_student = stage is None or stage.trains_student
        return make_optimizer(self.config, self.sampler.steps_per_epoch, epochs, trains_student,
                              self._trains_head(stage))

    def start_stage(self, stage: methods.Stage | None, previous: TrainState) -> TrainState:
        """The state that starts `stage` (None: the main stage) from the weights `previous`
        ended with: each stage has its own optimizer state and step count."""
        tx, _ = self.optimizer(stage)
        return previous.replace(step=jnp.zeros((), jnp.int32), opt_state=tx.init(previous.params))

    def step_spec(self, stage: methods.Stage | None = None) -> StepSpec:
        task = stage is None or stage.task_loss
        return StepSpec(
            student=self.student,
            terms=tuple(ActiveTerm(t.name, t.weight if stage is None or stage.weighted else 1.0,
                                   t.loss_module(stage))
                        for t in self.active_terms(stage)),
            tx=self.optimizer(stage)[0], task_weight=self.config.task_loss_weight if task else 0.0,
            num_examples=len(self.dataset.train), num_classes=self.dataset.num_classes)

    # -- devices ------------------------------------------------------------------------------

    def place(self, tree: Any) -> Any:
        """`tree` replicated on every device of the mesh (a state, variables)."""
        return replicate(self.mesh, tree)

    @functools.cached_property
    def _rows(self) -> np.ndarray:
        return process_rows(self.mesh, self.sampler.batch_size)

    def _indices(self, step: int) -> np.ndarray:
        """This process's rows of the global batch of `step` (indices into the training set)."""
        return self.sampler.indices(step)[self._rows]

    def batch(self, step: int) -> Batch:
        """The training batch of `step`, split over the mesh's devices. The sampler draws the
        global batch; each process loads and places only its own rows of it."""
        idx = self._indices(step)
        return shard_rows(self.mesh, (*self.dataset.train.rows(idx), idx.astype(np.int32)),
                          self.sampler.batch_size)

    def batches(self, first: int, stop: int) -> Iterator[Batch]:
        """The training batches of steps `first` .. `stop - 1`, as `batch` gives them: of a
        streamed data set, decoded on `config.data.read_threads` threads ahead of the step
        (`data.read_batches`). A resumed run starts at its step."""
        rows = data.read_batches(self.dataset.train, self._indices, first, stop,
                                 data.read_threads(self.config.data))
        with contextlib.closing(rows):
            for step, arrays in zip(range(first, stop), rows):
                yield shard_rows(self.mesh, (*arrays, self._indices(step).astype(np.int32)),
                                 self.sampler.batch_size)

    def train_step(self, stage: methods.Stage | None = None) -> TrainStep:
        """The jitted step of `stage` (None: the main stage), for states `start_stage` made
        and placed with `place`."""
        jitted = make_train_step([self.step_spec(stage)], self.teacher, self.mesh, self.config)
        return TrainStep(jitted, self.place(self.teacher_variables), shared=False)


# What runs must have in common to share a step: the same batches, augmented the same way
# (data, seed, batch size, devices) and the same teacher. Everything else may differ: the
# terms and their weights, the student, the optimizer, the task weight.
SHARED_FIELDS = ("data", "augment", "seed", "batch_size", "eval_batch_size", "num_devices")


def check_shareable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """A ValueError naming the first field on which `configs` cannot share a step."""
    def value(config, field):
        v = config.get(field)
        return v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v

    for field in SHARED_FIELDS:
        values = [value(c, field) for c in configs]
        if any(v != values[0] for v in values[1:]):
            raise ValueError(f"Runs that share a step must have the same config.{field}; got "
                             f"{values[0]!r} and {next(v for v in values if v != values[0])!r}.")
    teachers = {json.dumps(c.teacher.to_dict(), sort_keys=True, default=str)
                for c in configs if c.get("teacher") and c.teacher.get("model")}
    if len(teachers) > 1:
        raise ValueError(f"Runs that share a step must distill from the same teacher; got "
                         f"{' and '.join(sorted(teachers))}.")


def shared_train_step(runs: Sequence[Run], stage: methods.Stage | None = None) -> TrainStep:
    """One jitted step for several runs that see the same batches (`check_shareable`): the
    augmentation and the teacher's forward are computed once, then each run's student and
    heads are updated from its own state, as its own step would."""
    check_shareable([r.config for r in runs])
    taught = next((r for r in runs if r.teacher is not None), runs[0])
    # The runs agree on everything the step reads from a config but the teacher's fields,
    # which a run without a teacher leaves at their defaults: the taught run's are the step's.
    jitted = make_train_step([r.step_spec(stage) for r in runs], taught.teacher, runs[0].mesh,
                             taught.config)
    return TrainStep(jitted, runs[0].place(taught.teacher_variables), shared=True)


def prepare(config: ml_collections.ConfigDict, dataset: data.Dataset | None = None,
            teacher_variables: Any = None) -> Run:
    """Loads the data and the teacher and builds the initial state, failing on any bad input.

    `teacher_variables` stands in for the checkpoint in `config.teacher.workdir` (for
    benchmarks and tests); `dataset` for the one `config.data` describes.
    """
    check_config(config)
    config = copy.deepcopy(config)  # filled-in fields stay local
    distills = bool(config.get("teacher") and config.teacher.get("model"))
    dataset = dataset if dataset is not None else data.load_dataset(config.data)
    if config.batch_size > len(dataset.train):
        raise ValueError(f"config.batch_size={config.batch_size} is larger than the "
                         f"{len(dataset.train)} training images: a batch would repeat images. "
                         "Lower it.")
    _resolved_data_config(config, dataset)
    eval_batch = config.get("eval_batch_size") or config.batch_size
    mesh = make_mesh(config.get("num_devices"), (config.batch_size, eval_batch))
    check_batch("batch_size", config.batch_size, mesh)
    check_batch("eval_batch_size", eval_batch, mesh)
    image_shape = augment.input_shape(config.augment, dataset.train.image_shape)

    teacher = teacher_sown = None
    if distills:
        teacher_classes, teacher_shape = teacher_task(config.teacher, dataset.num_classes,
                                                      image_shape)
        if teacher_variables is None:
            teacher, teacher_variables = load_teacher(config.teacher, dataset.num_classes,
                                                      image_shape)
        else:
            teacher = build_model(config.teacher.model, teacher_classes, bn_axis_name=AXIS)
        teacher_sown = _abstract_layers(teacher, teacher_variables, teacher_shape)
    terms = methods.build_terms(config.get("distill"))
    stages = methods.stages_of(terms, config.get("stage_epochs"))

    student = build_model(config.model, dataset.num_classes, bn_axis_name=AXIS)
    root = jax.random.PRNGKey(config.seed)
    student_vars = student.init(jax.random.fold_in(root, 0), jnp.zeros((1, *image_shape)),
                                train=False)
    student_vars = init_student(config.get("init_from"), student, student_vars, image_shape)
    student_sown = _abstract_layers(student, student_vars, image_shape)
    methods.check_layers(terms, list(student_sown),
                         None if teacher_sown is None else list(teacher_sown))

    def zeros(layers):
        return {k: jnp.zeros(v.shape, v.dtype) for k, v in layers.items()}

    ctx = methods.example_context(jnp.zeros((2, *image_shape)), num_classes=dataset.num_classes,
                                  num_examples=len(dataset.train), train=False)
    head_key = jax.random.fold_in(root, 1)
    head_params, head_state = {}, {}
    for i, term in enumerate(terms):
        variables = init_term(term, jax.random.fold_in(head_key, i), zeros(student_sown),
                              zeros(teacher_sown or {}), ctx)
        head_params[term.name] = variables.get("params", {})
        head_state[term.name] = {k: v for k, v in variables.items() if k != "params"}

    sampler = BatchSampler(len(dataset.train), config.batch_size, config.seed)
    initial = TrainState(step=jnp.zeros((), jnp.int32),
                         params={"student": student_vars["params"], "heads": head_params},
                         batch_stats=student_vars.get("batch_stats", {}), head_state=head_state,
                         opt_state=(), rng=jax.random.fold_in(root, 2))
    run = Run(config, dataset, mesh, student, teacher, teacher_variables, terms, stages, sampler,
              initial)
    return dataclasses.replace(run, state=run.start_stage(None, initial))
