"""Terms of the VID paper's main comparison: VID-I, KD, FitNet, AT."""
from collections.abc import Sequence

import flax.linen as nn
import jax

from vid_jax import heads, losses
from vid_jax.methods.base import Context, Features, LayerPairs, Method, Stage
from vid_jax.models import WRN_GROUPS as GROUPS


class VIDI(LayerPairs, nn.Module):
    """VID-I (Ahn et al. 2019, eq. 2-4): -log q(t|s) summed over intermediate layer pairs.

    One `heads.VIDHead` per pair; `mean_network` ("paper", "repdistiller", "authors",
    "workshop") and `variance` ("softplus_eps", "authors") choose how mu and sigma^2 are built,
    as the CVPR text (the default, that of the committed results), RepDistiller, the authors'
    code or the workshop text do (see `heads.VIDHead`). The authors' own recipe is
    `dict(weight=0.1, mean_network="authors", variance="authors")` with KD (T=2) beside it.
    "workshop"'s batch norm uses batch statistics, averaged over `ctx.axis_name`, when
    `ctx.train`; its statistics are the term's `batch_stats` collection.
    """

    layers: Sequence[str] = GROUPS
    teacher_layers: Sequence[str] | None = None
    hidden_channels: int | None = None
    num_layers: int | None = None
    init_variance: float = 5.0
    eps: float = 1e-5
    mean_network: str = "paper"
    variance: str = "softplus_eps"

    def __post_init__(self) -> None:
        heads.check_vid_options(self.mean_network, self.variance)  # at config time
        super().__post_init__()

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return sum(
            heads.VIDHead(t.shape[-1], self.hidden_channels, self.num_layers,
                          self.init_variance, self.eps, self.mean_network, self.variance,
                          ctx.axis_name, name=f"vid_{name}")(s, t, ctx.train)
            for name, s, t in self.pairs(student, teacher))


class KD(nn.Module):
    """Hinton et al. 2015: temperature-softened KL between teacher and student logits."""

    temperature: float = 4.0
    student_layer_names = ("logits",)
    teacher_layer_names = ("logits",)

    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        classes = student["logits"].shape[-1], teacher["logits"].shape[-1]
        if classes[0] != classes[1]:
            raise ValueError(f"kd compares the logits of one task, but the student has "
                             f"{classes[0]} classes and the teacher {classes[1]}; from a "
                             "teacher of another task, distill with lwf or vid_lp.")
        return losses.kd_loss(student["logits"], teacher["logits"], self.temperature)


class FitNet(LayerPairs, nn.Module):
    """Romero et al. 2015: L2 hint between a regressed student layer and a teacher layer.

    The paper trains in two stages: first the student up to its guided layer, with the
    regressor, on the hint loss alone (stage `fitnet_hint`, run before the main stage; the
    config weight does not scale it), then the whole student (the paper with KD: add a `kd`
    term). RepDistiller runs one stage with CE + hint; here the main stage keeps the hint term
    at its config weight, so both are configs: `stage_epochs.fitnet_hint=0` gives
    RepDistiller's, a small weight the paper's. (The hint stage updates the whole student:
    the layers above the guided one get no gradient there, only weight decay.)
    """

    layers: Sequence[str] = ("group2",)
    teacher_layers: Sequence[str] | None = None
    kernel_size: int = 1

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return sum(heads.FitNetHead(t.shape[-1], self.kernel_size, name=f"regressor_{name}")(s, t)
                   for name, s, t in self.pairs(student, teacher))


class AT(LayerPairs, nn.Module):
    """Zagoruyko & Komodakis 2017: match normalised spatial attention maps."""

    layers: Sequence[str] = GROUPS
    teacher_layers: Sequence[str] | None = None
    p: float = 2.0

    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return sum(losses.attention_transfer(s, t, self.p)
                   for _, s, t in self.pairs(student, teacher))


METHODS = [
    Method("vid_i", VIDI, "intermediate maps",
           "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019",
           example=dict(weight=1.0, layers=GROUPS)),
    Method("kd", KD, "logits", "Hinton et al., Distilling the Knowledge in a Neural Network, 2015",
           example=dict(weight=1.0, temperature=4.0)),
    Method("fitnet", FitNet, "intermediate maps (regressed)",
           "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015",
           example=dict(weight=1.0, layers=("group2",)),
           stages=(Stage("fitnet_hint", epochs=10, weighted=False,
                         description="student and regressor on the hint loss alone"),)),
    Method("at", AT, "attention maps of intermediate layers",
           "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017",
           example=dict(weight=1000.0, layers=GROUPS)),
]
