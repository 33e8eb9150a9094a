"""Terms of the transfer family: VID-LP, LwF, NST, FSP, KD-SVD, AB.

The methods the VID paper compares with beyond its main table (VID-LP its own logit variant;
LwF, NST and others in its transfer experiments), and the initialisation-style methods FSP and
AB, which the papers train in a stage of their own before the task.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax

from vid_jax.heads import VIDHead, check_vid_options
from vid_jax.heads import transfer as transfer_heads
from vid_jax.losses import transfer as transfer_losses
from vid_jax.methods.base import (
    Context,
    Features,
    LayerPairs,
    Method,
    OneLayer,
    Stage,
)
from vid_jax.models import WRN_GROUPS as GROUPS
from vid_jax.models import WRN_GROUPS_PREACT as GROUPS_PREACT

FSP_STAGE = "fsp_init"
AB_STAGE = "ab_init"


class VIDLP(OneLayer, nn.Module):
    """VID-LP (Ahn et al. 2019, eq. 3 and 6): -log q(t|s) of the teacher's logits t, with a
    Gaussian whose mean is linear in the student's penultimate features s, mu(s) = W s + b,
    and whose variance is one per logit (`heads.VIDHead`, one layer): `variance`
    "softplus_eps" (default, as VID-I's) or "authors" (softplus, no eps, the authors' VID-I
    initialisation). The mean network is not a field: the paper defines VID-LP's as linear."""

    layer: str = "features"
    teacher_layer: str = "logits"
    init_variance: float = 5.0
    eps: float = 1e-5
    variance: str = "softplus_eps"

    def __post_init__(self) -> None:
        check_vid_options("paper", self.variance)  # at config time
        super().__post_init__()

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = self.read(student, teacher)
        return VIDHead(t.shape[-1], num_layers=1, init_variance=self.init_variance,
                       eps=self.eps, variance=self.variance, name="vid_lp")(s, t)


class LwF(OneLayer, nn.Module):
    """Learning without Forgetting (Li & Hoiem 2016) across architectures, as in VID's
    transfer experiments: an extra linear head on the student's penultimate features predicts
    the teacher's (old-task) logits, with LwF's T=2 soft cross-entropy. The teacher's number
    of classes may differ from the student's task.

    Not reproduced: LwF's optional warm-up (new-task head alone first), which would train
    only the student's classifier, a finer split than stages offer; and its old head's
    initialisation from the old model (impossible across architectures)."""

    temperature: float = 2.0
    layer: str = "features"
    teacher_layer: str = "logits"

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return transfer_heads.LwFHead(self.temperature, name="lwf")(*self.read(student, teacher))


class NST(LayerPairs, nn.Module):
    """Neuron Selectivity Transfer (Huang & Wang 2017): per example, MMD^2 (polynomial kernel,
    d=2, c=0) between the student's and the teacher's l2-normalised channel maps, summed over
    layer pairs. The paper's lambda/2 is the weight."""

    layers: Sequence[str] = GROUPS
    teacher_layers: Sequence[str] | None = None
    degree: int = 2
    offset: float = 0.0

    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return sum(transfer_losses.nst_loss(s, t, self.degree, self.offset)
                   for _, s, t in self.pairs(student, teacher))


def _adapted(term: nn.Module, student: Features, teacher: Features) -> tuple[list, list]:
    """The student and teacher maps of a term's layer pairs, the student's passed through a
    1x1 convolution to the teacher's channels (one per layer) if `term.adapt`."""
    student_maps, teacher_maps = [], []
    for name, s, t in term.pairs(student, teacher):
        if term.adapt:
            s = transfer_heads.Connector(t.shape[-1], name=f"adapter_{name}")(s)
        student_maps.append(s)
        teacher_maps.append(t)
    return student_maps, teacher_maps


class FSP(LayerPairs, nn.Module):
    """Flow of Solution Procedure (Yim et al., CVPR 2017): match the FSP matrices of consecutive
    layers (`losses.transfer.fsp_loss`; with WRN groups, (group1, group2) and (group2, group3)
    are the input and output of groups 2 and 3, the paper's pairs).

    The paper trains in two stages: the student on the FSP loss alone (stage `fsp_init`), then
    on the task alone. So this term gives its loss only in `fsp_init`, and the trainer leaves
    it out of the main stage unless `main_stage=True` (then it is added to the task loss at its
    weight, as a one-stage method).

    The paper needs equal student and teacher channels at every layer; with `adapt=False`
    (default) other channel counts raise a ValueError at the first call. `adapt=True` maps each
    student layer to the teacher's channels with a learned 1x1 convolution (no bias) first,
    trained with the student in `fsp_init` (an addition of this library: the FSP matrix of the
    adapted layers is A1^T G_S A2).
    """

    layers: Sequence[str] = GROUPS
    teacher_layers: Sequence[str] | None = None
    adapt: bool = False
    main_stage: bool = False

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return transfer_losses.fsp_loss(*_adapted(self, student, teacher))


class KDSVD(LayerPairs, nn.Module):
    """KD-SVD (Lee, Kim & Song, ECCV 2018): truncated SVD of each sensing point's map, student
    vectors aligned to the teacher's, RBF graphs between consecutive sensing points matched
    (`losses.transfer.kd_svd_loss`). One stage, added to the task loss.

    The singular vectors are C-dimensional, so student and teacher need equal channels at each
    layer (the paper's students share the teacher's widths); with `adapt=True` each student
    layer first goes through a learned 1x1 convolution to the teacher's channels (an addition
    of this library; with `adapt=False` other channel counts raise a ValueError)."""

    layers: Sequence[str] = GROUPS
    teacher_layers: Sequence[str] | None = None
    num_vectors: int = 1
    rbf_scale: float = 8.0
    gap_eps: float = 1e-4
    adapt: bool = False

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return transfer_losses.kd_svd_loss(*_adapted(self, student, teacher), self.num_vectors,
                                           self.rbf_scale, self.gap_eps)


class AB(LayerPairs, nn.Module):
    """Activation Boundary distillation (Heo et al., AAAI 2019) on pre-activation maps.

    For each layer pair, a connector (1x1 conv + BN, `heads.transfer.ABHead`) maps the student's
    pre-activation to the teacher's channels, and the squared-hinge alternative loss with
    margin m makes the student's neurons active exactly where the teacher's are. The maps are
    the ReLUs' inputs, as the authors' code taps them: WRN's `group{k}_preact` (the BN output
    after each group end; the group ends themselves differ in sign from it for 17-28% of the
    CIFAR-10 teacher's activations), `stage{k}_preact` of the other models.

    AB is an initialisation: the paper trains the student and connectors on the AB loss alone
    (stage `ab_init`), then the student on the task alone. So this term gives its loss only in
    `ab_init`, and the trainer leaves it out of the main stage unless `main_stage=True`.
    `layer_weights` (default all 1) weight the pairs; the authors' code uses 1/4, 1/2, 1 from
    the shallowest pair and an overall 3e-3.

    The connectors' BatchNorm statistics are the term's `batch_stats` collection (kept by the
    trainer); they use batch statistics, averaged over `ctx.axis_name`, when `ctx.train`.
    """

    layers: Sequence[str] = GROUPS_PREACT
    teacher_layers: Sequence[str] | None = None
    margin: float = 1.0
    layer_weights: Sequence[float] | None = None
    main_stage: bool = False

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        pairs = self.pairs(student, teacher)
        weights = self.layer_weights or (1.0,) * len(pairs)
        if len(weights) != len(pairs):
            raise ValueError(f"AB: {len(weights)} layer_weights for {len(pairs)} layer pairs.")
        return sum(w * transfer_heads.ABHead(t.shape[-1], self.margin, name=f"ab_{name}")(
                       s, t, ctx.train, ctx.axis_name)
                   for w, (name, s, t) in zip(weights, pairs))


METHODS = [
    Method("vid_lp", VIDLP, "logits (from the penultimate features)",
           "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019",
           example=dict(weight=1.0)),
    Method("lwf", LwF, "teacher logits, through an extra old-task head",
           "Li & Hoiem, Learning without Forgetting, ECCV 2016 / TPAMI 2017",
           example=dict(weight=1.0, temperature=2.0)),
    Method("nst", NST, "channel-map distributions (MMD) of intermediate layers",
           "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity "
           "Transfer, arXiv 2017",
           example=dict(weight=25.0, layers=GROUPS)),
    Method("fsp", FSP, "FSP (Gram) matrices between consecutive layers",
           "Yim et al., A Gift from Knowledge Distillation: Fast Optimization, Network "
           "Minimization and Transfer Learning, CVPR 2017",
           # adapt=True: WRN students are narrower than their teachers.
           example=dict(weight=1e-3, layers=GROUPS, adapt=True),
           stages=(Stage(FSP_STAGE, epochs=30,
                         description="student (and adapters) on the FSP loss alone"),)),
    Method("kd_svd", KDSVD, "RBF graphs of singular vectors of intermediate layers",
           "Lee, Kim & Song, Self-supervised Knowledge Distillation Using Singular Value "
           "Decomposition, ECCV 2018",
           example=dict(weight=1.0, layers=GROUPS, adapt=True)),
    Method("ab", AB, "activation boundaries of pre-activation maps",
           "Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by "
           "Hidden Neurons, AAAI 2019",
           example=dict(weight=3e-3, layers=GROUPS_PREACT, layer_weights=(0.25, 0.5, 1.0)),
           stages=(Stage(AB_STAGE, epochs=30,
                         description="student and connectors on the AB loss alone"),)),
]
