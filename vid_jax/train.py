"""Training a teacher, a student alone, or a student with distillation: one loop, one step.

The step knows no method by name: it adds `weight * term(student_layers, teacher_layers)` for
each term that `config.distill` lists (see `vid_jax.methods`). It is jitted and data-parallel:
`jax.shard_map` over a one-axis mesh named `data`; each device holds a slice of the batch,
batch-norm statistics are averaged over the axis, and the loss is the mean over devices, so
gradients equal those of the whole batch on one device.
"""
import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from vid_jax import augment, data, methods
from vid_jax.checkpoints import Checkpoints, load_variables
from vid_jax.metric_writer import MetricWriter, read_metrics, write_atomically
from vid_jax.models import build_model, sown_layers

AXIS = "data"


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: dict[str, Any]  # {"student": ..., "heads": {term name: ...}}
    batch_stats: Any        # the student's
    head_state: dict[str, Any]  # term name -> its collections other than params (memory banks...)
    opt_state: optax.OptState
    rng: jnp.ndarray


# ---------------------------------------------------------------------------------------------
# Devices and batches.

def make_mesh(num_devices: int | None = None,
              batch_sizes: Sequence[int] = ()) -> jax.sharding.Mesh:
    """A one-axis mesh over the first `num_devices` devices; by default over as many as
    divide every one of `batch_sizes` (all devices, when they divide them)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices}, but JAX sees only {len(devices)}.")
        devices = devices[:num_devices]
    else:
        # E.g. 6 host devices (vid_jax.host: one per core) and batch 64: use 4 of them.
        count = max(n for n in range(1, len(devices) + 1)
                    if all(b % n == 0 for b in batch_sizes))
        devices = devices[:count]
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


class BatchSampler:
    """Batch indices as a pure function of (seed, step): a stream of seeded permutations.

    Batches always have the same shape (a batch may run across the end of an epoch), so the
    step never recompiles, and a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_examples // self.batch_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cache = (epoch, rng.permutation(self.num_examples))
        return self._cache[1]

    def indices(self, step: int) -> np.ndarray:
        out, position = [], step * self.batch_size
        while sum(map(len, out)) < self.batch_size:
            epoch, offset = divmod(position, self.num_examples)
            take = self._permutation(epoch)[offset:offset + self.batch_size - sum(map(len, out))]
            out.append(take)
            position += len(take)
        return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Optimizer.

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


def parameter_labels(params: dict[str, Any], stage: methods.Stage | None = None,
                     frozen: Sequence[str] = ()) -> dict[str, Any]:
    """"student", "heads" or "frozen" for every parameter.

    In a stage (see `methods.Stage`), what its `trains` does not name is frozen; in the main
    stage, head parameters under a submodule a method declares `frozen` are.
    """
    def label(path, _):
        group, names = path[0].key, [getattr(k, "key", None) for k in path[1:]]
        if stage is None:
            return "frozen" if group == "heads" and set(names) & set(frozen) else group
        trained = group in stage.trains or (
            group == "heads" and any(f"heads:{n}" in stage.trains for n in names))
        return group if trained else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int,
                   stage: methods.Stage | None = None, frozen: Sequence[str] = ()
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Student and heads get their own transforms, through `optax.partition`; frozen
    parameters (see `parameter_labels`) get none."""
    student_schedule = make_schedule(config.optimizer, steps_per_epoch, num_epochs)
    head_opt = config.get("head_optimizer") or config.optimizer
    tx = optax.partition(
        {"student": make_transform(config.optimizer, student_schedule),
         "heads": make_transform(head_opt, make_schedule(head_opt, steps_per_epoch, num_epochs)),
         "frozen": optax.set_to_zero()},
        lambda params: parameter_labels(params, stage, frozen))
    return tx, student_schedule


# ---------------------------------------------------------------------------------------------
# The step.

def make_train_step(student, teacher, terms, tx, mesh, config, num_examples: int,
                    num_classes: int, stage: methods.Stage | None = None):
    """Returns jit(shard_map(step)):
    (state, teacher_variables, images, labels, labelled, indices) -> (state, metrics).

    In a stage before the main one, terms are told its name and the task loss counts only if
    the stage asks for it.
    """
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    padding, flip = config.augment.crop_padding, config.augment.flip
    task_weight = config.task_loss_weight if stage is None or stage.task_loss else 0.0
    stage_name = methods.DISTILL if stage is None else stage.name

    def step(state, teacher_variables, images, labels, labelled, indices):
        local_batch = images.shape[0]
        first = jax.lax.axis_index(AXIS) * local_batch
        step_key = jax.random.fold_in(state.rng, state.step)
        keys = augment.example_keys(step_key, first + jnp.arange(local_batch))
        x = augment.normalize(augment.random_crop_flip(images, keys, padding, flip), mean, std)
        ctx = methods.Context(images=x, labels=labels, labelled=labelled, indices=indices,
                              num_examples=num_examples, num_classes=num_classes,
                              axis_name=AXIS, stage=stage_name, train=True)

        teacher_layers = {}
        if teacher is not None:
            _, sown = teacher.apply(teacher_variables, x, train=False, mutable=["intermediates"])
            teacher_layers = jax.lax.stop_gradient(sown_layers(sown["intermediates"]))

        # Unlabelled images get no task loss (Table 1b); normalise by the global label count.
        mask = labelled.astype(jnp.float32)
        num_labelled = jax.lax.psum(jnp.sum(mask), AXIS)
        num_devices = jax.lax.psum(1, AXIS)

        def loss_fn(params):
            logits, new_vars = student.apply(
                {"params": params["student"], "batch_stats": state.batch_stats}, x, train=True,
                mutable=["batch_stats", "intermediates"])
            student_layers = sown_layers(new_vars["intermediates"])
            cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            task = jnp.sum(mask * cross_entropy) * num_devices / jnp.maximum(num_labelled, 1.0)
            values, head_state = {}, {}
            for i, term in enumerate(terms):
                collections = state.head_state[term.name]
                values[term.name], head_state[term.name] = term.module.apply(
                    {"params": params["heads"][term.name], **collections}, student_layers,
                    teacher_layers, ctx, rngs={"distill": jax.random.fold_in(step_key, i)},
                    mutable=list(collections))
            total = task_weight * task + sum(term.weight * values[term.name] for term in terms)
            # The mean over devices is the loss of the whole batch; its gradient is the
            # whole batch's gradient on every device.
            return jax.lax.pmean(total, AXIS), (new_vars["batch_stats"], head_state, task,
                                                values, logits)

        (loss, (batch_stats, head_state, task, values, logits)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(mask * (jnp.argmax(logits, -1) == labels))
        metrics = {"loss": loss, "task_loss": jax.lax.pmean(task, AXIS),
                   **{f"{name}_loss": jax.lax.pmean(v, AXIS) for name, v in values.items()},
                   "train_correct": jax.lax.psum(correct, AXIS), "train_labelled": num_labelled}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  head_state=jax.tree.map(_replicated, head_state),
                                  opt_state=opt_state)
        return new_state, metrics

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), *[P(AXIS)] * 4),
                            out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))


def _replicated(x: jax.Array) -> jax.Array:
    """A term's state, made the same on every device (a head's batch statistics are averaged;
    a memory bank its term already gathered over the batch is left as it is)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.pmean(x, AXIS)
    return jax.lax.pmax(x, AXIS)


def make_eval_step(model, mesh, config):
    """(variables, images, labels, valid) -> (number correct, summed cross-entropy)."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def step(variables, images, labels, valid):
        logits = model.apply(variables, augment.normalize(images, mean, std), train=False)
        valid = valid.astype(jnp.float32)
        correct = jnp.sum(valid * (jnp.argmax(logits, -1) == labels))
        loss = jnp.sum(valid * optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return jax.lax.psum(correct, AXIS), jax.lax.psum(loss, AXIS)

    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                                 out_specs=(P(), P())))


def evaluate(eval_step, variables, split: data.Split, batch_size: int,
             sharding: NamedSharding) -> dict[str, float]:
    """Accuracy and loss over a whole split; the last batch is padded and masked, not dropped."""
    n = len(split)
    totals = MetricSums()
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        valid = idx < n
        idx = np.where(valid, idx, 0)
        batch = jax.device_put((split.images[idx], split.labels[idx], valid), sharding)
        batch_correct, batch_loss = eval_step(variables, *batch)
        totals.add({"correct": batch_correct, "loss": batch_loss})
    sums = totals.result()
    return {"accuracy": sums["correct"] / n, "loss": sums["loss"] / n}


class TrainingDiverged(FloatingPointError):
    """An epoch's summed losses are not finite."""


def check_finite(totals: dict[str, float], epoch: int, workdir: str) -> None:
    """Stops a run whose loss became NaN or infinite, before that epoch writes anything."""
    losses = {k: v for k, v in totals.items() if k.endswith("loss")}
    if all(np.isfinite(v) for v in losses.values()):
        return
    shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))
    raise TrainingDiverged(
        f"training diverged in epoch {epoch}: the losses summed over its steps are {shown}. "
        f"{workdir} keeps the metrics and checkpoints of the epochs before it. Lower "
        "config.optimizer.learning_rate or the weight of the term that blew up "
        "(config.distill.<term>.weight) and train in a new workdir.")


class MetricSums:
    """Sums per-step metrics on the host while keeping at most two steps in flight.

    `add(metrics)` of step n fetches step n-1's metrics, so the host waits for step n-1 while
    step n runs and prepares batch n+1 meanwhile. Why bounded: a loop that never waits
    queues thousands of steps, and on several XLA CPU devices one device's all-reduce then
    waited more than 40 s for the other and XLA aborted the process ("Termination timeout for
    all reduce ... only 1 of them arrived"); benchmarks/dispatch_depth.py reproduces it. Sums
    are float64 on the host, so thousands of steps add up without float32 round-off.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._sums: dict[str, float] = {}

    def _fetch_pending(self) -> None:
        if self._pending is not None:
            for k, v in jax.device_get(self._pending).items():
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._pending = None

    def add(self, metrics: dict[str, Any]) -> None:
        self._fetch_pending()
        self._pending = metrics

    def result(self) -> dict[str, float]:
        """The sums of every added step (waits for the last one)."""
        self._fetch_pending()
        return dict(self._sums)


# ---------------------------------------------------------------------------------------------
# Set-up: everything is checked before anything is written.

def _check_batch(name: str, batch_size: int, mesh) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"config.{name}={batch_size} is not divisible by the {mesh.size} devices; "
                         f"use a multiple of {mesh.size}.")


def _abstract_layers(model, variables, image_shape) -> dict[str, jax.ShapeDtypeStruct]:
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    _, sown = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                             variables, x)
    return sown_layers(sown["intermediates"])


def load_teacher(teacher_config, num_classes: int, image_shape):
    """The frozen teacher: its model and variables, checked against the config's model."""
    if not teacher_config.get("workdir"):
        raise ValueError("config.teacher.model is set but config.teacher.workdir is not: set it "
                         "to the workdir of the teacher's own run.")
    model = build_model(teacher_config.model, num_classes)
    variables = load_variables(teacher_config.workdir)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
    expected = {k: expected[k] for k in ("params", "batch_stats") if k in expected}
    got = jax.tree.map(lambda a: tuple(np.shape(a)), variables)
    want = jax.tree.map(lambda a: tuple(a.shape), expected)
    if got != want:
        raise ValueError(
            f"The checkpoint in {teacher_config.workdir} does not fit config.teacher.model "
            f"({dict(teacher_config.model)}, {num_classes} classes): its variables have other "
            "names or shapes. Set config.teacher.model to the model that run trained.")
    return model, jax.tree.map(jnp.asarray, variables)


def _resolved_data_config(config, dataset: data.Dataset) -> None:
    """Fills in per-channel mean/std from the training images when the config leaves them out."""
    with config.unlocked():
        if config.data.get("mean") is None or config.data.get("std") is None:
            pixels = dataset.train.images.reshape(-1, dataset.train.images.shape[-1]) / 255.0
            config.data.mean = tuple(float(v) for v in pixels.mean(0))
            config.data.std = tuple(float(v) for v in pixels.std(0))


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
    tx: optax.GradientTransformation  # the main stage's
    schedule: optax.Schedule
    state: TrainState  # the initial state of the main stage, on the host

    def start_stage(self, stage: methods.Stage | None, previous: TrainState
                    ) -> tuple[TrainState, optax.GradientTransformation, optax.Schedule]:
        """The state, optimizer and schedule that start `stage` (None: the main stage) from
        the weights `previous` ended with; each stage has its own optimizer and step count."""
        epochs = self.config.num_epochs if stage is None else stage.epochs
        frozen = [name for term in self.terms for name in term.method.frozen]
        tx, schedule = make_optimizer(self.config, self.sampler.steps_per_epoch, epochs, stage,
                                      frozen)
        state = previous.replace(step=jnp.zeros((), jnp.int32),
                                 opt_state=tx.init(previous.params))
        return state, tx, schedule


def prepare(config: ml_collections.ConfigDict, dataset: data.Dataset | None = None,
            teacher_variables: Any = None) -> Run:
    """Loads the data and the teacher and builds the initial state, failing on any bad input.

    `teacher_variables` stands in for the checkpoint in `config.teacher.workdir` (for
    benchmarks and tests); `dataset` for the one `config.data` describes.
    """
    config = copy.deepcopy(config)  # filled-in fields stay local
    distills = bool(config.get("teacher") and config.teacher.get("model"))
    dataset = dataset if dataset is not None else data.load_dataset(config.data)
    _resolved_data_config(config, dataset)
    mesh = make_mesh(config.get("num_devices"),
                     (config.batch_size, config.get("eval_batch_size") or config.batch_size))
    _check_batch("batch_size", config.batch_size, mesh)
    _check_batch("eval_batch_size", config.get("eval_batch_size") or config.batch_size, mesh)
    image_shape = dataset.train.images.shape[1:]

    teacher = teacher_sown = None
    if distills:
        if teacher_variables is None:
            teacher, teacher_variables = load_teacher(config.teacher, dataset.num_classes,
                                                      image_shape)
        else:
            teacher = build_model(config.teacher.model, dataset.num_classes)
        teacher_sown = _abstract_layers(teacher, teacher_variables, image_shape)
    terms = methods.build_terms(config.get("distill"))
    stages = methods.stages_of(terms, config.get("stage_epochs"))

    student = build_model(config.model, dataset.num_classes, bn_axis_name=AXIS)
    root = jax.random.PRNGKey(config.seed)
    student_vars = student.init(jax.random.fold_in(root, 0), jnp.zeros((1, *image_shape)),
                                train=False)
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
        key = jax.random.fold_in(head_key, i)
        variables = term.module.init({"params": key, "distill": jax.random.fold_in(key, 1)},
                                     zeros(student_sown), zeros(teacher_sown or {}), ctx)
        head_params[term.name] = variables.get("params", {})
        head_state[term.name] = {k: v for k, v in variables.items() if k != "params"}

    sampler = BatchSampler(len(dataset.train), config.batch_size, config.seed)
    initial = TrainState(step=jnp.zeros((), jnp.int32),
                         params={"student": student_vars["params"], "heads": head_params},
                         batch_stats=student_vars.get("batch_stats", {}), head_state=head_state,
                         opt_state=(), rng=jax.random.fold_in(root, 2))
    run = Run(config, dataset, mesh, student, teacher, teacher_variables, terms, stages, sampler,
              None, None, initial)
    state, tx, schedule = run.start_stage(None, initial)
    return dataclasses.replace(run, tx=tx, schedule=schedule, state=state)


# ---------------------------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the summary.

    Stages that the config's terms declare (FitNet's hints, FT's paraphraser...) run first,
    each in `workdir/stages/<name>` with its own checkpoints; the main stage starts from the
    weights the last one ended with.
    """
    run = prepare(config, dataset)
    state, stages = run.state, {}
    for stage in run.stages:
        if stage.epochs > 0:
            if run.config.get("log_epochs", True):
                print(f"stage {stage.name}: {stage.description} ({stage.epochs} epochs)")
            state, stages[stage.name] = train_stage(
                run, state, os.path.join(workdir, "stages", stage.name), stage)
    _, summary = train_stage(run, state, workdir, stages_before=stages)
    return summary


def train_stage(run: Run, previous: TrainState, workdir: str,
                stage: methods.Stage | None = None,
                stages_before: dict[str, dict[str, Any]] | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
    """Trains one stage in `workdir` from the weights of `previous`, resuming from the
    workdir's latest checkpoint; returns the final state and the summary (which records the
    summaries of `stages_before`)."""
    config, dataset, mesh, sampler = run.config, run.dataset, run.mesh, run.sampler
    num_epochs = config.num_epochs if stage is None else stage.epochs
    state, tx, schedule = run.start_stage(stage, previous)
    eval_batch = config.get("eval_batch_size") or config.batch_size

    # Validation passed: from here on the workdir is written.
    os.makedirs(workdir, exist_ok=True)
    checkpoints = Checkpoints(workdir)
    start_epoch = 0
    restored = checkpoints.restore_latest(jax.device_get(state))
    if restored is not None:
        state, start_epoch = restored
    write_atomically(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    writer = MetricWriter(workdir, resume_epoch=start_epoch)

    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(AXIS))
    state = jax.device_put(state, replicated)
    teacher_variables = jax.device_put(run.teacher_variables, replicated)
    train_split = dataset.train

    def batch(step: int):
        idx = sampler.indices(step)
        return jax.device_put((train_split.images[idx], train_split.labels[idx],
                               train_split.labelled[idx], idx.astype(np.int32)), batch_sharding)

    t0 = time.perf_counter()
    train_step = make_train_step(run.student, run.teacher, run.terms, tx, mesh, config,
                                 len(train_split), dataset.num_classes, stage).lower(
        state, teacher_variables, *batch(0)).compile()
    compile_seconds = time.perf_counter() - t0
    eval_step = make_eval_step(run.student, mesh, config)
    selection = "validation" if dataset.validation is not None else "test"

    # Closed also on an error, so the checkpoints saved so far are complete.
    try:
        for epoch in range(start_epoch + 1, num_epochs + 1):
            t0 = time.perf_counter()
            sums = MetricSums()
            first_step = (epoch - 1) * sampler.steps_per_epoch
            for step in tqdm(range(first_step, first_step + sampler.steps_per_epoch),
                             desc=f"epoch {epoch}/{num_epochs}", leave=False,
                             disable=not config.get("progress_bar", True)):
                state, metrics = train_step(state, teacher_variables, *batch(step))
                sums.add(metrics)
                if step == 0:  # the losses of the weights the stage starts from
                    at_start = {f"{k}_at_start": float(v)
                                for k, v in jax.device_get(metrics).items()
                                if k.endswith("_loss")}
            totals = sums.result()
            check_finite(totals, epoch, workdir)
            seconds = time.perf_counter() - t0
            record = {k: float(v) / sampler.steps_per_epoch for k, v in totals.items()
                      if k not in ("train_correct", "train_labelled")}
            record["train_accuracy"] = float(totals["train_correct"]) / max(
                float(totals["train_labelled"]), 1.0)
            record["learning_rate"] = float(schedule(int(state.step) - 1))
            record["images_per_sec"] = sampler.steps_per_epoch * config.batch_size / seconds
            if epoch == 1:
                record.update(at_start)
            variables = {"params": state.params["student"], "batch_stats": state.batch_stats}
            # Evaluating 10,000 test images can cost as much as an epoch on few training images:
            # `eval_every_epochs` thins it out; the last epoch is always evaluated.
            evaluated = epoch % config.get("eval_every_epochs", 1) == 0 or epoch == num_epochs
            if evaluated:
                for split_name, split in (("test", dataset.test),
                                          ("validation", dataset.validation)):
                    if split is not None:
                        for k, v in evaluate(eval_step, variables, split, eval_batch,
                                             batch_sharding).items():
                            record[f"{split_name}_{k}"] = v
            writer.write(epoch, record)
            # A save needs the accuracy that ranks the best checkpoint: only evaluated epochs.
            if evaluated and (epoch % config.checkpoint_every_epochs == 0 or epoch == num_epochs):
                checkpoints.save(epoch, state, variables,
                                 {"accuracy": record[f"{selection}_accuracy"]})
            if config.get("log_epochs", True):
                test = f"  test_acc {record['test_accuracy']:.4f}" if evaluated else ""
                print(f"epoch {epoch:4d}  loss {record['loss']:.4f}  train_acc "
                      f"{record['train_accuracy']:.4f}{test}  "
                      f"{record['images_per_sec']:.0f} img/s", flush=True)
    finally:
        writer.close()
        checkpoints.close()

    summary = summarize(workdir, selection)
    num_params = sum(x.size for x in jax.tree.leaves(state.params["student"]))
    summary.update(compile_seconds=compile_seconds, student_parameters=int(num_params))
    if stages_before:
        summary["stages"] = stages_before
    write_atomically(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return state, summary


def summarize(workdir: str, selection: str = "test") -> dict[str, Any]:
    """Final and best accuracies, and each distillation term's loss at the first step (before
    any update), in the first epoch and in the last epoch, from a run's metrics.jsonl."""
    lines = read_metrics(os.path.join(workdir, MetricWriter.FILENAME))
    last = lines[-1]
    evaluated = [line for line in lines if f"{selection}_accuracy" in line]
    best = max(evaluated, key=lambda line: line[f"{selection}_accuracy"])
    not_terms = {"loss", "task_loss", "test_loss", "validation_loss"}
    term_losses = {k[:-len("_loss")]: {"first_step": lines[0].get(f"{k}_at_start"),
                                       "first_epoch": lines[0][k], "last_epoch": last[k]}
                   for k in last if k.endswith("_loss") and k not in not_terms}
    return {"epochs": last["epoch"], "final_test_accuracy": last["test_accuracy"],
            "best_test_accuracy": max(line["test_accuracy"] for line in evaluated),
            f"best_{selection}_epoch": best["epoch"],
            "test_accuracy_at_best_selection": best["test_accuracy"],
            "selected_by": selection, "term_losses": term_losses}
