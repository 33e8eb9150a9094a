"""What every distillation method is to the trainer: a term, its context, its stages.

A *term* is a Flax module called as `term(student, teacher, ctx) -> scalar loss`, where
`student` and `teacher` map the layer names the models sow (`group1`, `features`, `logits`...)
to arrays of the current batch, and `ctx` is a `Context`. The trainer adds
`weight * term(...)` to the task loss for each entry of `config.distill`, and one optimizer
updates the student and every term's parameters together. A term may also keep state that is
not trained by gradients (a memory bank, batch statistics) in any collection other than
`params`: the trainer keeps it in the train state, and passes it back mutable at every step.
It may draw random numbers with `self.make_rng("distill")`.

Stages belong to the trainer. A method that trains something before the main stage (FitNet's
hints, FT's paraphraser) declares each such `Stage` in its registry entry: the module that
gives the stage's loss and the parameters the stage trains. In each stage the trainer calls
only the terms that declare it (in the main stage, every term whose `main_stage` attribute is
not False), so a term's `__call__` is its main-stage loss and nothing else.

A term says which layers it reads (`student_layer_names`, `teacher_layer_names`), so a config
that names a layer a model does not sow fails before training.
"""
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

Features = Mapping[str, jax.Array]

@flax.struct.dataclass
class Context:
    """What a term may read besides the layers: the batch, and where and when the step runs."""

    images: jax.Array    # [B, H, W, C] the normalised, augmented input the student saw
    labels: jax.Array    # [B] int32
    labelled: jax.Array  # [B] bool; False: an unlabelled image (no task loss)
    indices: jax.Array   # [B] int32 positions in the training split (for memory banks)
    num_examples: int = flax.struct.field(pytree_node=False, default=0)  # training-split size
    num_classes: int = flax.struct.field(pytree_node=False, default=0)
    # The data-parallel mesh axis, for collectives (None outside shard_map). Each device sees
    # its slice of the batch; a term that needs the whole batch gathers it over this axis.
    axis_name: str | None = flax.struct.field(pytree_node=False, default=None)
    train: bool = flax.struct.field(pytree_node=False, default=True)


def example_context(images: jax.Array, labels: jax.Array | None = None, num_classes: int = 10,
                    num_examples: int | None = None, **changes: Any) -> Context:
    """A Context for a batch outside the trainer (tests, notebooks): all labelled."""
    batch = images.shape[0]
    labels = jnp.zeros((batch,), jnp.int32) if labels is None else labels
    return Context(images=images, labels=labels, labelled=jnp.ones((batch,), bool),
                   indices=jnp.arange(batch, dtype=jnp.int32),
                   num_examples=num_examples or batch, num_classes=num_classes, **changes)


def same_term(term: nn.Module) -> nn.Module:
    """A stage whose loss is the term's own main-stage loss (FitNet's hints, AB, FSP)."""
    return term


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage a method runs before the main one (FitNet's hints, FT's paraphraser...).

    `loss` builds, from the configured term, the module whose value is the stage's loss
    (default: the term itself). A separate module must name its submodules as the term does
    (FT's `paraphraser`), so that the stage trains the term's own parameters; the trainer
    initialises the term and every stage module and merges their parameters.

    In the stage the trainer calls only the terms that declare it; the task loss counts only
    if `task_loss`; the student is updated if `trains_student`, and of each such term's
    parameters those under the submodules `trains_heads` names (None: all of them). Every
    other parameter is fixed. Each stage has its own optimizer state and checkpoints.

    A term's loss counts at its config weight if `weighted`, else at 1: a term whose weight
    sets its strength beside the task loss in the main stage (FitNet's hint) trains alone in
    its stage, where the weight would only scale the learning rate. Terms that have no main
    stage (FSP, AB) keep theirs: it is their stage loss's scale.
    """

    name: str
    epochs: int
    loss: Callable[[nn.Module], nn.Module] = same_term
    trains_student: bool = True
    trains_heads: tuple[str, ...] | None = None
    task_loss: bool = False
    weighted: bool = True
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Method:
    """A registry entry: the config name, the term's module, and what to tell a user."""

    name: str
    build: Callable[..., nn.Module]
    matches: str   # what it matches: logits, intermediate maps, relations...
    paper: str
    example: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # a config entry
    stages: tuple[Stage, ...] = ()
    # Head submodules (by name) that the main stage must not update: trained in a stage
    # before and then fixed, like FT's paraphraser. Their gradients and weight decay are zeroed.
    frozen: tuple[str, ...] = ()


def in_main_stage(term: nn.Module) -> bool:
    """Whether a term gives a loss in the main stage: all do, except those whose `main_stage`
    attribute is False (FSP and AB, initialisations unless asked to stay on)."""
    return bool(getattr(term, "main_stage", True))


class LayerPairs:
    """Mixin for terms that pair student layers with teacher layers of the same position."""

    layers: Sequence[str]
    teacher_layers: Sequence[str] | None

    @property
    def student_layer_names(self) -> tuple[str, ...]:
        return tuple(self.layers)

    @property
    def teacher_layer_names(self) -> tuple[str, ...]:
        names = tuple(self.teacher_layers or self.layers)
        if len(names) != len(self.layers):
            raise ValueError(
                f"{type(self).__name__}: {len(self.layers)} student layers but {len(names)} "
                "teacher layers; give one teacher layer per student layer.")
        return names

    def pairs(self, student: Features, teacher: Features):
        """[(student layer name, student array, teacher array)] in config order."""
        return [(s, student[s], teacher[t])
                for s, t in zip(self.student_layer_names, self.teacher_layer_names)]


class OneLayer:
    """Mixin for terms that read one student layer and one teacher layer (default: the same)."""

    layer: str
    teacher_layer: str | None

    @property
    def student_layer_names(self) -> tuple[str, ...]:
        return (self.layer,)

    @property
    def teacher_layer_names(self) -> tuple[str, ...]:
        return (self.teacher_layer or self.layer,)

    def read(self, student: Features, teacher: Features) -> tuple[jax.Array, jax.Array]:
        return student[self.layer], teacher[self.teacher_layer or self.layer]
