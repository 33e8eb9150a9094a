"""The registry of distillation methods: config name -> loss term.

A config lists terms under `config.distill`: `name: {weight, method (default: name), **args}`.
The trainer only ever looks them up here; it knows no method by name. The protocol a term
follows (its call, its context, its stages) is in `vid_jax.methods.base`; the terms are in one
module per family. `python -m vid_jax.methods` prints the table of registered methods.
"""
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from vid_jax.methods import core, factors, online, relational, transfer
from vid_jax.methods.base import (
    Context,
    Features,
    LayerPairs,
    Method,
    OneLayer,
    Stage,
    example_context,
    in_main_stage,
)

FAMILIES = (core, transfer, relational, factors, online)
METHODS: dict[str, Method] = {m.name: m for family in FAMILIES for m in family.METHODS}

__all__ = ["METHODS", "Context", "Features", "LayerPairs", "Method", "OneLayer", "Stage",
           "Term", "build_terms", "check_layers", "describe", "example_context", "in_main_stage",
           "markdown", "stages_of"]


@dataclasses.dataclass(frozen=True)
class Term:
    """One weighted term of the distillation loss, as a config entry asked for it."""

    name: str
    weight: float
    module: nn.Module
    method: Method

    def loss_module(self, stage: Stage | None = None) -> nn.Module | None:
        """The module whose value is this term's loss in `stage` (None: the main stage), or
        None when the term takes no part in it."""
        if stage is None:
            return self.module if in_main_stage(self.module) else None
        own = [s for s in self.method.stages if s.name == stage.name]
        return own[0].loss(self.module) if own else None

    def modules(self) -> list[nn.Module]:
        """Every module the term is called through, in any stage: the term first, then each of
        its stages' loss modules (which share the term's parameter names)."""
        return [self.module, *(s.loss(self.module) for s in self.method.stages)]


def build_terms(distill_config: Mapping[str, Any] | None) -> list[Term]:
    """`config.distill` -> terms. Each entry is `name: {weight, method (default: name), **args}`."""
    terms = []
    for name, entry in (distill_config or {}).items():
        entry = dict(entry)
        method_name = entry.pop("method", name)
        weight = float(entry.pop("weight", 1.0))
        if method_name not in METHODS:
            raise ValueError(
                f"Unknown distillation method {method_name!r} in config.distill.{name}; "
                f"registered methods: {', '.join(sorted(METHODS))} (python -m vid_jax.methods).")
        method = METHODS[method_name]
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"config.distill.{name}.weight={weight!r}: a term's weight is a "
                             "finite number >= 0 (0 turns it off).")
        temperature = entry.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float))
                                            and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"config.distill.{name}.temperature={temperature!r}: a softmax "
                             "temperature is a finite number > 0 (4 is Hinton's usual value).")
        try:
            module = method.build(**entry)
        except (TypeError, ValueError) as e:  # unknown argument; a bad value a term checks
            raise ValueError(
                f"config.distill.{name}: bad arguments for {method_name!r}: {e}") from e
        terms.append(Term(name, weight, module, method))
    return terms


def stages_of(terms: Sequence[Term], epochs: Mapping[str, int] | None = None) -> list[Stage]:
    """The stages the terms declare, in term order, once each; `epochs` overrides lengths."""
    stages: dict[str, Stage] = {}
    for term in terms:
        for stage in term.method.stages:
            stages.setdefault(stage.name, stage)
    epochs = dict(epochs or {})
    unknown = set(epochs) - set(stages)
    if unknown:
        raise ValueError(f"config.stage_epochs names {sorted(unknown)}, which no term declares; "
                         f"the terms' stages: {sorted(stages) or 'none'}.")
    return [dataclasses.replace(s, epochs=int(epochs.get(s.name, s.epochs)))
            for s in stages.values()]


def check_layers(terms: Sequence[Term], student_sown: Sequence[str],
                 teacher_sown: Sequence[str] | None) -> None:
    """Fails before training if a term reads a layer that a model does not sow."""
    for term in terms:
        for role, wanted, sown in (("student", term.module.student_layer_names, student_sown),
                                   ("teacher", term.module.teacher_layer_names, teacher_sown)):
            if not wanted:
                continue
            if sown is None:
                raise ValueError(f"config.distill.{term.name} needs a teacher, but config.teacher "
                                 "is not set; set config.teacher.model and config.teacher.workdir.")
            missing = [layer for layer in wanted if layer not in sown]
            if missing:
                raise ValueError(
                    f"config.distill.{term.name} reads {role} layer(s) {missing}, which the {role} "
                    f"model does not sow; it sows: {', '.join(sown)}.")


def describe() -> str:
    """One line per registered method: its config name, what it matches, its paper."""
    rows = [("method", "matches", "paper")] + [(m.name, m.matches, m.paper)
                                               for m in METHODS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{n:<{widths[0]}}  {w:<{widths[1]}}  {p}" for n, w, p in rows)


def _config_line(name: str, entry: Mapping[str, Any]) -> str:
    return f"config.distill.{name} = dict({', '.join(f'{k}={v!r}' for k, v in entry.items())})"


def markdown() -> str:
    """The README's table: each method, what it matches, its paper, the config that selects it,
    and the stages it runs before the main one."""
    lines = ["| method | matches | paper | config | stages before the main one |",
             "|---|---|---|---|---|"]
    for m in METHODS.values():
        stages = ", ".join(f"`{s.name}` ({s.description})" for s in m.stages)
        lines.append(f"| `{m.name}` | {m.matches} | {m.paper} | "
                     f"`{_config_line(m.name, m.example)}` | {stages} |")
    return "\n".join(lines)
