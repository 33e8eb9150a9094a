"""A finished run, read back from its workdir: its config, data, student, teacher and heads.

    run = load_run("workdirs/quickstart/student_vid_i")
    student_input, teacher_input = run.inputs(images)
    layers = model_layers(run.student, run.student_variables, student_input)

The student and the terms' heads come from the latest train state in `checkpoints/` (the
heads are saved only there; `best/` holds the model variables alone), so they are the
weights of one and the same epoch: the last one of a finished run.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vid_jax import augment, data, methods
from vid_jax.checkpoints import load_variables
from vid_jax.models import build_model, sown_layers


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """What a run trained, ready to be applied (on one device, in evaluation mode)."""

    workdir: str
    config: ml_collections.ConfigDict  # as the run wrote it to config.json
    dataset: data.Dataset
    student: nn.Module
    student_variables: dict[str, Any]  # {params, batch_stats}
    head_params: dict[str, Any]        # term name -> its parameters
    head_state: dict[str, Any]         # term name -> its other collections
    terms: list[methods.Term]
    step: int                          # optimizer steps of the saved state
    teacher: nn.Module | None
    teacher_variables: dict[str, Any] | None
    teacher_config: ml_collections.ConfigDict | None  # a config.teacher entry: whence, input

    @property
    def teacher_workdir(self) -> str | None:
        return None if self.teacher_config is None else self.teacher_config.get("workdir")

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.workdir))

    def inputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images -> (the student's input, the teacher's), as the trainer evaluates:
        the centre crop where the run crops, the student's normalisation, and the teacher's
        own normalisation and size where its config sets them (`step.teacher_input`)."""
        from vid_jax.training.step import teacher_input

        config = self.config
        size, _, _ = augment.input_shape(config.augment, images.shape[1:])
        if config.augment.get("crop_size") is not None or \
                config.augment.get("random_resized_scale"):  # as step.make_eval_step
            images = augment.center_crop(images, size)
        student = _normalize(images, tuple(config.data.mean), tuple(config.data.std))
        with_teacher = ml_collections.ConfigDict(
            dict(data=config.data.to_dict(), teacher=(self.teacher_config or {})))
        return np.asarray(student), np.asarray(teacher_input(with_teacher, images, student))

    def term(self, method: str) -> methods.Term | None:
        """The run's first term of `method` (e.g. "vid_i"), or None."""
        return next((t for t in self.terms if t.method.name == method), None)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run wrote to `workdir/config.json`, or a FileNotFoundError saying so."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir} holds no config.json: it is not the workdir of a "
                                "run (a pipeline's runs are in its subdirectories).")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _teacher_config(config: ml_collections.ConfigDict,
                    teacher: str | ml_collections.ConfigDict | None
                    ) -> ml_collections.ConfigDict | None:
    """`teacher` as a config.teacher entry, or the run's own (None if it has none)."""
    if isinstance(teacher, str):  # a teacher's workdir: its model as that run wrote it
        return ml_collections.ConfigDict(dict(model=read_config(teacher).model.to_dict(),
                                              workdir=teacher))
    if teacher is not None:
        return teacher
    own = config.get("teacher") or {}
    return config.teacher if own.get("model") else None


def load_run(workdir: str, teacher: str | ml_collections.ConfigDict | None = None,
             dataset: data.Dataset | None = None) -> FinishedRun:
    """Reads a run's config, data, latest train state and teacher.

    Args:
        workdir: the run's workdir (config.json and checkpoints/).
        teacher: for a run trained without one, or in place of its own `config.teacher`: a
            teacher's workdir (its model read from its config.json), or a `config.teacher`
            entry (another run's, to diagnose students against the same teacher).
        dataset: the run's data set, if already loaded (else `config.data` is loaded).
    """
    # Imported here: the trainer's set-up is what checks a teacher's checkpoint.
    from vid_jax.training import load_teacher

    config = read_config(workdir)
    teacher_config = _teacher_config(config, teacher)
    state = load_variables(workdir, "checkpoints")
    if dataset is None:  # read whole, also a streamed run's: the diagnostics index its arrays
        dataset = data.load_dataset({**config.data.to_dict(), "load": "memory"})
    image_shape = dataset.train.images.shape[1:]
    teacher_model = teacher_variables = None
    if teacher_config is not None:
        teacher_model, teacher_variables = load_teacher(teacher_config, dataset.num_classes,
                                                        image_shape)
    return FinishedRun(
        workdir=workdir, config=config, dataset=dataset,
        student=build_model(config.model, dataset.num_classes),
        student_variables=jax.tree.map(jnp.asarray, {"params": state["params"]["student"],
                                                     "batch_stats": state["batch_stats"]}),
        head_params=jax.tree.map(jnp.asarray, dict(state["params"].get("heads", {}))),
        head_state=jax.tree.map(jnp.asarray, dict(state.get("head_state", {}))),
        terms=methods.build_terms(config.get("distill")), step=int(state["step"]),
        teacher=teacher_model, teacher_variables=teacher_variables,
        teacher_config=teacher_config)


_normalize = jax.jit(augment.normalize, static_argnums=(1, 2))


@functools.partial(jax.jit, static_argnums=0)
def _sown(model: nn.Module, variables: Any, x: jax.Array) -> dict[str, jax.Array]:
    _, sown = model.apply(variables, x, train=False, mutable=["intermediates"])
    return sown_layers(sown["intermediates"])


def model_layers(model: nn.Module, variables: Any, images: np.ndarray | jax.Array,
                 batch_size: int = 256) -> dict[str, np.ndarray]:
    """The layers `model` sows on normalised `images`, in evaluation mode, as NumPy arrays.
    Every batch is padded to `batch_size`, so a model compiles once whatever the count."""
    images, chunks = np.asarray(images), []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]
        padded = np.pad(chunk, [(0, batch_size - chunk.shape[0])] + [(0, 0)] * (chunk.ndim - 1))
        chunks.append(jax.tree.map(lambda a, k=chunk.shape[0]: np.asarray(a)[:k],
                                   _sown(model, variables, padded)))
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
