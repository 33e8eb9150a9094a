"""Relational terms: RKD, SP, CC, PKT, CRD, which match relations between the batch's examples.

Each loss compares examples within a batch, so with data parallelism (`ctx.axis_name` set) the
terms gather the layers of the whole batch over the axis before computing it: every device
then computes the loss of the global batch, equal to the one-device loss. CRD is the exception
whose loss is a mean over examples (each against the memory): each device computes its own
examples' part and the trainer's mean over devices makes the whole; its memory update gathers
the batch so every device's copy stays the same. All of them work in the main stage only.

By default they read the penultimate `features` ([B, D]); any layer may be named, and NHWC
maps are flattened to [B, H*W*C] as the public implementations do.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax

from vid_jax.heads import relational as rel_heads
from vid_jax.losses import relational as rel_losses
from vid_jax.methods.base import (
    Context,
    Features,
    LayerPairs,
    Method,
    OneLayer,
)
from vid_jax.models import WRN_GROUPS as GROUPS


def gather_batch(x: jax.Array, ctx: Context) -> jax.Array:
    """The whole batch's rows of x: all-gathered over `ctx.axis_name` in data-parallel steps."""
    if ctx.axis_name is None:
        return x
    return jax.lax.all_gather(x, ctx.axis_name, tiled=True)


class RKD(OneLayer, nn.Module):
    """Park et al. 2019: match distance-wise and angle-wise relations (RKD-DA).

    The loss is w_D * L_RKD-D + w_A * L_RKD-A (`rel_losses.rkd_loss`), with the paper's weights
    w_D = 25, w_A = 50 as attributes; the config weight multiplies the sum (1 for the paper).
    """

    layer: str = "features"
    teacher_layer: str | None = None
    distance_weight: float = 25.0
    angle_weight: float = 50.0

    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = self.read(student, teacher)
        return rel_losses.rkd_loss(gather_batch(s, ctx), gather_batch(t, ctx),
                                   self.distance_weight, self.angle_weight)


class SP(LayerPairs, nn.Module):
    """Tung & Mori 2019: match the batch's row-normalised similarity (Gram) matrices.

    Summed over layer pairs (`rel_losses.sp_loss`). Defaults to the three WRN groups; the
    paper's weight gamma is 3000. RepDistiller uses the last group's map only
    (`layers=("group3",)`).
    """

    layers: Sequence[str] = GROUPS
    teacher_layers: Sequence[str] | None = None

    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        return sum(rel_losses.sp_loss(gather_batch(s, ctx), gather_batch(t, ctx))
                   for _, s, t in self.pairs(student, teacher))


class CC(OneLayer, nn.Module):
    """Peng et al. 2019: match the correlation between instances (Taylor-expanded RBF kernel).

    The paper computes the correlation of the networks' feature embeddings (their penultimate
    features) after l2 normalisation; since the correlation matrix is B x B, student and teacher
    dimensions need not match and no projection is needed (as in the public reimplementations,
    e.g. Knowledge-Distillation-Zoo and MMRazor). `embed_dim` adds a trained linear embedding on
    the student side only: a trained teacher-side projection would let both heads collapse to
    one point (C_s = C_t) and empty the loss, so the teacher's features are used as they are.
    (RepDistiller's `Correlation`, trained embeddings on both sides with a different loss, is
    not the paper's.)
    """

    layer: str = "features"
    teacher_layer: str | None = None
    gamma: float = 0.4
    order: int = 2
    embed_dim: int | None = None

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = self.read(student, teacher)
        if self.embed_dim:
            s = rel_heads.LinearEmbedding(self.embed_dim, normalize=False,
                                          name="embed_student")(s)
        return rel_losses.cc_loss(gather_batch(rel_losses.flatten_batch(s), ctx),
                                  gather_batch(rel_losses.flatten_batch(t), ctx),
                                  self.gamma, self.order)


class PKT(OneLayer, nn.Module):
    """Passalis & Tefas 2018: match conditional distributions of a cosine-similarity kernel."""

    layer: str = "features"
    teacher_layer: str | None = None
    eps: float = 1e-7

    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = self.read(student, teacher)
        return rel_losses.pkt_loss(gather_batch(s, ctx), gather_batch(t, ctx), self.eps)


class CRD(OneLayer, nn.Module):
    """Tian et al. 2020: contrast each example's embedding against memories of others.

    See `rel_heads.CRDHead`. The memory banks (`memory` collection) have `ctx.num_examples`
    rows, read when the term is initialised, and are indexed by `ctx.indices`; they are updated
    in training steps only (`ctx.train`), never at init. Negatives are drawn with the `distill`
    RNG. Negatives are uniform over the other examples, as in the paper; RepDistiller's CIFAR
    loader instead draws them from examples of other classes.

    `num_negatives` defaults to 4,096, a quarter of the paper's and RepDistiller's 16,384:
    every step gathers batch x (K + 1) x `embed_dim` memory entries per bank (at batch 128 and
    K = 16,384, 1.1 GB in float32 each), which a CPU or a small accelerator holds badly. Set
    16384 for the paper's.
    """

    layer: str = "features"
    teacher_layer: str | None = None
    embed_dim: int = 128
    num_negatives: int = 4096
    temperature: float = 0.07
    momentum: float = 0.5
    symmetric: bool = True

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = self.read(student, teacher)
        head = rel_heads.CRDHead(self.embed_dim, self.num_negatives, self.temperature,
                                 self.momentum, self.symmetric, name="crd")
        return head(s, t, ctx.indices, ctx.num_examples, ctx.axis_name,
                    update=ctx.train and not self.is_initializing())


METHODS = [
    Method("rkd", RKD, "relations between examples (distances and angles) of features",
           "Park et al., Relational Knowledge Distillation, CVPR 2019",
           example=dict(weight=1.0, layer="features")),
    Method("sp", SP, "batch similarity (Gram) matrices of intermediate maps",
           "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019",
           example=dict(weight=3000.0, layers=GROUPS)),
    Method("cc", CC, "correlations between examples (RBF kernel) of features",
           "Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019",
           example=dict(weight=100.0, layer="features")),
    Method("pkt", PKT, "conditional distributions of cosine similarities of features",
           "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge "
           "Transfer, ECCV 2018",
           example=dict(weight=500.0, layer="features")),
    Method("crd", CRD, "contrastive: embedded features against memory banks",
           "Tian et al., Contrastive Representation Distillation, ICLR 2020",
           example=dict(weight=0.8, layer="features", num_negatives=4096)),
]
