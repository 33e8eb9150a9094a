"""The registry of distillation methods: config name -> loss term.

A term is a Flax module `term(student_layers, teacher_layers) -> scalar`, where both arguments
map the names a model sows (`group1`, `logits`, ...) to arrays. It declares which layers it
reads in `student_layer_names` / `teacher_layer_names`, so a config that asks for a layer the
model does not sow fails before training. The trainer only ever looks terms up here by name.

Run `python -m vid_jax.methods` for the table of registered methods.
"""
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vid_jax import heads, losses

Features = Mapping[str, jnp.ndarray]


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
            raise ValueError(f"{type(self).__name__}: {len(self.layers)} student layers but "
                             f"{len(names)} teacher layers; give one teacher layer per student layer.")
        return names

    def pairs(self, student: Features, teacher: Features):
        return [(s, student[s], teacher[t])
                for s, t in zip(self.student_layer_names, self.teacher_layer_names)]


class VIDI(LayerPairs, nn.Module):
    """VID-I (Ahn et al. 2019, eq. 2-4): -log q(t|s) summed over intermediate layer pairs."""

    layers: Sequence[str] = ("group1", "group2", "group3")
    teacher_layers: Sequence[str] | None = None
    hidden_channels: int | None = None
    num_layers: int = 3
    init_variance: float = 5.0
    eps: float = 1e-5

    @nn.compact
    def __call__(self, student: Features, teacher: Features) -> jnp.ndarray:
        return sum(
            heads.VIDHead(t.shape[-1], self.hidden_channels, self.num_layers,
                          self.init_variance, self.eps, name=f"vid_{name}")(s, t)
            for name, s, t in self.pairs(student, teacher))


class KD(nn.Module):
    """Hinton et al. 2015: temperature-softened KL between teacher and student logits."""

    temperature: float = 4.0
    student_layer_names = ("logits",)
    teacher_layer_names = ("logits",)

    def __call__(self, student: Features, teacher: Features) -> jnp.ndarray:
        return losses.kd_loss(student["logits"], teacher["logits"], self.temperature)


class FitNet(LayerPairs, nn.Module):
    """Romero et al. 2015: L2 hint between a regressed student layer and a teacher layer."""

    layers: Sequence[str] = ("group2",)
    teacher_layers: Sequence[str] | None = None
    kernel_size: int = 1

    @nn.compact
    def __call__(self, student: Features, teacher: Features) -> jnp.ndarray:
        return sum(heads.FitNetHead(t.shape[-1], self.kernel_size, name=f"regressor_{name}")(s, t)
                   for name, s, t in self.pairs(student, teacher))


class AT(LayerPairs, nn.Module):
    """Zagoruyko & Komodakis 2017: match normalised spatial attention maps."""

    layers: Sequence[str] = ("group1", "group2", "group3")
    teacher_layers: Sequence[str] | None = None
    p: float = 2.0

    def __call__(self, student: Features, teacher: Features) -> jnp.ndarray:
        return sum(losses.attention_transfer(s, t, self.p)
                   for _, s, t in self.pairs(student, teacher))


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    build: Callable[..., nn.Module]
    matches: str
    paper: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("vid_i", VIDI, "intermediate maps",
           "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"),
    Method("kd", KD, "logits", "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"),
    Method("fitnet", FitNet, "intermediate maps (regressed)",
           "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"),
    Method("at", AT, "attention maps of intermediate layers",
           "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017"),
]}


@dataclasses.dataclass(frozen=True)
class Term:
    """One weighted term of the distillation loss, as a config entry asked for it."""

    name: str
    weight: float
    module: nn.Module


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
        try:
            module = METHODS[method_name].build(**entry)
        except TypeError as e:
            raise ValueError(f"config.distill.{name}: bad arguments for {method_name!r}: {e}") from e
        terms.append(Term(name, weight, module))
    return terms


def check_layers(terms: Sequence[Term], student_sown: Sequence[str],
                 teacher_sown: Sequence[str] | None) -> None:
    """Fails before training if a term reads a layer that a model does not sow."""
    for term in terms:
        for role, wanted, sown in (("student", term.module.student_layer_names, student_sown),
                                   ("teacher", term.module.teacher_layer_names, teacher_sown)):
            if sown is None:
                raise ValueError(f"config.distill.{term.name} needs a teacher, but config.teacher "
                                 "is not set; set config.teacher.model and config.teacher.workdir.")
            missing = [layer for layer in wanted if layer not in sown]
            if missing:
                raise ValueError(
                    f"config.distill.{term.name} reads {role} layer(s) {missing}, which the {role} "
                    f"model does not sow; it sows: {', '.join(sown)}.")


def describe() -> str:
    rows = [(m.name, m.matches, m.paper) for m in METHODS.values()]
    widths = [max(len(r[i]) for r in rows + [("method", "matches", "paper")]) for i in range(2)]
    lines = [f"{'method':<{widths[0]}}  {'matches':<{widths[1]}}  paper"]
    lines += [f"{n:<{widths[0]}}  {w:<{widths[1]}}  {p}" for n, w, p in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
