"""The train step and the eval step: jitted, data-parallel, knowing no method by name.

The train step adds `weight * term(student_layers, teacher_layers, ctx)` to the task loss for
each term active in the stage. It is `jax.jit` of `jax.shard_map` over the one-axis mesh
(`mesh.AXIS`): each device holds a slice of the batch, batch-norm statistics are averaged over
the axis, and every loss is the mean over devices of per-device values normalised so that it
equals the whole batch's (see `losses.cross_entropy`); gradients then equal those of the
whole batch on one device.

A step is built in two halves so that several runs can share one: `augmented_crops` (then the
student's and the teacher's inputs, each in its own normalisation and size) and
`teacher_layers` depend only on the data and the seed, `update` on one run's state.
"""
import dataclasses
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

from vid_jax import augment, data, losses, methods
from vid_jax.models import sown_layers
from vid_jax.training.mesh import AXIS, process_rows, shard_rows
from vid_jax.training.metrics import MetricSums


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: dict[str, Any]  # {"student": ..., "heads": {term name: ...}}
    batch_stats: Any        # the student's
    head_state: dict[str, Any]  # term name -> its collections other than params (memory banks...)
    opt_state: optax.OptState
    rng: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class ActiveTerm:
    """A term as one stage calls it: its name, weight and the module giving its loss."""

    name: str
    weight: float
    loss: nn.Module


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What one run's update needs besides its state: fixed for a stage."""

    student: nn.Module
    terms: tuple[ActiveTerm, ...]
    tx: optax.GradientTransformation
    task_weight: float
    num_examples: int
    num_classes: int


def augmented_crops(config: ml_collections.ConfigDict, rng: jax.Array, step: jax.Array,
                    images: jax.Array) -> jax.Array:
    """This device's slice of the batch, cropped and flipped on the device (pixel values
    0..255; uint8 unless resized): padded crops of the stored size, random crops of
    `augment.crop_size`, or Inception-style crops with `augment.random_resized_scale`. The
    same for every run with the same seed (`rng`) at the same step."""
    local_batch = images.shape[0]
    first = jax.lax.axis_index(AXIS) * local_batch
    keys = augment.example_keys(jax.random.fold_in(rng, step), first + jnp.arange(local_batch))
    size, _, _ = augment.input_shape(config.augment, images.shape[1:])
    padding, flip = config.augment.crop_padding, config.augment.flip
    if config.augment.get("random_resized_scale"):
        return augment.random_resized_crop_flip(images, keys, size,
                                                config.augment.random_resized_scale, flip)
    if config.augment.get("crop_size") is None:  # padded crops of the stored size
        return augment.random_crop_flip(images, keys, padding, flip)
    return augment.random_crop_flip_to(images, keys, size, padding, flip)


def augmented_input(config: ml_collections.ConfigDict, rng: jax.Array, step: jax.Array,
                    images: jax.Array) -> jax.Array:
    """The student's input: `augmented_crops`, normalised with `config.data`'s statistics."""
    crops = augmented_crops(config, rng, step, images)
    return augment.normalize(crops, tuple(config.data.mean), tuple(config.data.std))


def teacher_input(config: ml_collections.ConfigDict, crops: jax.Array,
                  student_input: jax.Array) -> jax.Array:
    """The teacher's input: the student's crops in the teacher's own normalisation and size
    (`config.teacher.mean`, `std`, `image_size`), or the student's input where it sets none."""
    teacher = config.get("teacher") or {}
    mean, std, size = (teacher.get(k) for k in ("mean", "std", "image_size"))
    if mean is None and std is None and size is None:
        return student_input
    x = augment.normalize(crops, tuple(config.data.mean if mean is None else mean),
                          tuple(config.data.std if std is None else std))
    return x if size is None else augment.resize(x, size)


def teacher_layers(teacher: nn.Module | None, variables: Any, x: jax.Array,
                   batch_statistics: bool = False) -> dict[str, Any]:
    """The teacher's sown layers on `x` (none without a teacher), without gradient. Its batch
    norm uses its running statistics, or with `batch_statistics` those of `x` (over the
    devices where the teacher was built with an axis name); the running ones stay as given."""
    if teacher is None:
        return {}
    mutable = ["intermediates", "batch_stats"] if batch_statistics else ["intermediates"]
    _, sown = teacher.apply(variables, x, train=batch_statistics, mutable=mutable)
    return jax.lax.stop_gradient(sown_layers(sown["intermediates"]))


def update(spec: StepSpec, state: TrainState, x: jax.Array, teacher: dict[str, Any],
           labels: jax.Array, labelled: jax.Array, indices: jax.Array
           ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of one run on this device's slice (inside shard_map)."""
    step_key = jax.random.fold_in(state.rng, state.step)
    ctx = methods.Context(images=x, labels=labels, labelled=labelled, indices=indices,
                          num_examples=spec.num_examples, num_classes=spec.num_classes,
                          axis_name=AXIS, train=True)

    def loss_fn(params):
        logits, new_vars = spec.student.apply(
            {"params": params["student"], "batch_stats": state.batch_stats}, x, train=True,
            mutable=["batch_stats", "intermediates"])
        student = sown_layers(new_vars["intermediates"])
        # Unlabelled images (Table 1b) get no task loss.
        task = losses.cross_entropy(logits, labels, labelled, AXIS)
        values, head_state = {}, dict(state.head_state)
        for i, term in enumerate(spec.terms):
            collections = state.head_state[term.name]
            values[term.name], head_state[term.name] = term.loss.apply(
                {"params": params["heads"][term.name], **collections}, student, teacher, ctx,
                rngs={"distill": jax.random.fold_in(step_key, i)}, mutable=list(collections))
        total = spec.task_weight * task + sum(t.weight * values[t.name] for t in spec.terms)
        # The mean over devices is the loss of the whole batch; its gradient is the whole
        # batch's gradient on every device.
        return jax.lax.pmean(total, AXIS), (new_vars["batch_stats"], head_state, task, values,
                                            logits)

    (loss, (batch_stats, head_state, task, values, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = spec.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    mask = labelled.astype(jnp.float32)
    correct = jnp.sum(mask * (jnp.argmax(logits, -1) == labels))
    metrics = {"loss": loss, "task_loss": jax.lax.pmean(task, AXIS),
               **{f"{name}_loss": jax.lax.pmean(v, AXIS) for name, v in values.items()},
               "train_correct": jax.lax.psum(correct, AXIS),
               "train_labelled": jax.lax.psum(jnp.sum(mask), AXIS)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              head_state=jax.tree.map(_replicated, head_state),
                              opt_state=opt_state)
    return new_state, metrics


def _replicated(x: jax.Array) -> jax.Array:
    """A term's state, made the same on every device (a head's batch statistics are averaged;
    a memory bank its term already gathered over the batch is left as it is)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.pmean(x, AXIS)
    return jax.lax.pmax(x, AXIS)


def make_train_step(specs: Sequence[StepSpec], teacher: nn.Module | None,
                    mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict):
    """jit(shard_map(step)): (states, teacher_variables, images, labels, labelled, indices)
    -> (states, metrics), one state and one metrics dict per spec.

    The runs share the batch, its augmentation (taken from the first run's seed: runs that
    share a step share their seed) and the teacher's forward; each has its own update.
    `config` is a run's with the teacher, where one has: its teacher fields are the step's.
    """
    batch_statistics = (config.get("teacher") or {}).get("batch_norm") == "batch"

    def step(states, teacher_variables, images, labels, labelled, indices):
        crops = augmented_crops(config, states[0].rng, states[0].step, images)
        x = augment.normalize(crops, tuple(config.data.mean), tuple(config.data.std))
        taught = teacher_layers(teacher, teacher_variables, teacher_input(config, crops, x),
                                batch_statistics=batch_statistics)
        results = [update(spec, state, x, taught, labels, labelled, indices)
                   for spec, state in zip(specs, states, strict=True)]
        return tuple(r[0] for r in results), tuple(r[1] for r in results)

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), *[P(AXIS)] * 4),
                            out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))


def make_eval_step(model: nn.Module, mesh: jax.sharding.Mesh,
                   config: ml_collections.ConfigDict):
    """(variables, images, labels, valid) -> (number correct, summed cross-entropy), on the
    centre crop of `augment.crop_size` when it is set."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def step(variables, images, labels, valid):
        size, _, _ = augment.input_shape(config.augment, images.shape[1:])
        if config.augment.get("crop_size") is not None or \
                config.augment.get("random_resized_scale"):
            images = augment.center_crop(images, size)
        logits = model.apply(variables, augment.normalize(images, mean, std), train=False)
        valid = valid.astype(jnp.float32)
        correct = jnp.sum(valid * (jnp.argmax(logits, -1) == labels))
        loss = jnp.sum(valid * optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return jax.lax.psum(correct, AXIS), jax.lax.psum(loss, AXIS)

    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                                 out_specs=(P(), P())))


def evaluate(eval_step, variables, split: data.Split | data.StreamSplit, batch_size: int,
             sharding: NamedSharding, read_threads: int = 0) -> dict[str, float]:
    """Accuracy and loss over a whole split, in batches split over `sharding`'s mesh; the last
    batch is padded and masked, not dropped. Each process loads and places only its own rows
    of every batch (of a streamed split, decoded on `read_threads` threads ahead)."""
    n, mesh = len(split), sharding.mesh
    rows = process_rows(mesh, batch_size)
    totals = MetricSums()
    num_batches = -(-n // batch_size)

    def batch_indices(b: int) -> np.ndarray:
        return np.minimum(b * batch_size + rows, n - 1)  # padding repeats the last image

    for b, (images, labels, _) in enumerate(data.read_batches(split, batch_indices, 0,
                                                              num_batches, read_threads)):
        valid = b * batch_size + rows < n
        batch = shard_rows(mesh, (images, labels, valid), batch_size)
        batch_correct, batch_loss = eval_step(variables, *batch)
        totals.add({"correct": batch_correct, "loss": batch_loss})
    sums = totals.result()
    return {"accuracy": sums["correct"] / n, "loss": sums["loss"] / n}
