"""Terms of the factor family: Factor Transfer, the overhaul of feature distillation, IE-KD.

FT and IE-KD first fit an auto-encoder to the teacher's map (a stage of their own, in which
only that auto-encoder is trained), then fix it and transfer its factor. OD matches pre-ReLU
maps through a margin ReLU and a partial L2. IE-DML applies IE-KD to two networks trained
together, with no fixed teacher.
"""
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax

from vid_jax.heads import factors as factor_heads
from vid_jax.losses import core as core_losses
from vid_jax.losses import factors as factor_losses
from vid_jax.methods.base import (
    Context,
    Features,
    LayerPairs,
    Method,
    OneLayer,
    Stage,
)
from vid_jax.models import WRN_GROUPS_PREACT as GROUPS_PREACT
from vid_jax.models import build_model, sown_layers

FT_STAGE = "ft_paraphraser"
IE_STAGE = "ie_autoencoder"


def _factor_channels(channels: int, rate: float) -> int:
    """FT's k*C channels of a factor, rounded as in its code, at least one."""
    return max(1, int(round(channels * rate)))


class FT(OneLayer, nn.Module):
    """Factor Transfer (Kim, Park, Kwak, NeurIPS 2018).

    Stage `ft_paraphraser`: the paraphraser, a convolutional auto-encoder on the teacher's
    map (factor rate k = `rate`), is trained alone on the reconstruction loss
    `losses.factors.reconstruction_loss`. Main stage: the paraphraser is fixed (the
    registry entry lists it in `frozen`, its output is stop-gradient-ed and its BN uses
    its running averages, as the code's `module_t.eval()`), and the translator, trained
    with the student, maps the student's map to a factor; the loss is
    `losses.factors.factor_transfer_loss` (p = 1) between the two factors. With
    `stage_epochs.ft_paraphraser=0` the paraphraser stays at its random initialisation.

    Where this differs from the public code (Jangho-Kim/Factor-Transfer-pytorch), the
    paper is followed: the reconstruction loss is the paper's squared L2 (the code uses
    L1), the FT loss is the paper's per-example L1 norm (the code's `nn.L1Loss` is the
    element mean times beta = 500, i.e. a weight of 500 / (k*C*H*W) here), and the
    paraphraser and translator use BN (commented out in that code, present in the
    authors' other release). So the example's weight 1 is the paper's loss at unit weight;
    the code's beta = 500 would be 500 / 4,096 = 0.12 for a WRN-40-2 teacher's `group3`
    (128 channels, 8 x 8) at rate 0.5, about an eighth of it. The paper distills the
    teacher's last block output after its ReLU; the WRN here sows `group3` before its final
    BN-ReLU, which is used as is.
    Maps of different spatial sizes are average-pooled to the smaller size first.
    """

    layer: str = "group3"
    teacher_layer: str | None = None
    rate: float = 0.5
    p: float = 1.0
    use_bn: bool = True

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = core_losses.match_spatial(*self.read(student, teacher))
        factor_channels = _factor_channels(t.shape[-1], self.rate)
        paraphraser = factor_heads.Paraphraser(t.shape[-1], factor_channels, self.use_bn,
                                               axis_name=ctx.axis_name, name="paraphraser")
        translator = factor_heads.FactorCoder(factor_channels, self.use_bn,
                                              axis_name=ctx.axis_name, name="translator")
        teacher_factor = jax.lax.stop_gradient(paraphraser.encode(t, train=False))
        return factor_losses.factor_transfer_loss(translator(s, train=ctx.train), teacher_factor,
                                                  self.p)


class TeacherMapReconstruction(OneLayer, nn.Module):
    """The stage before FT and IE-KD: an auto-encoder (`heads.factors.Paraphraser`, named
    `autoencoder` as in the term, so the stage trains the term's own parameters) on the
    teacher's map alone, loss `losses.factors.reconstruction_loss`. The map is first pooled
    as the term pools it (`losses.core.match_spatial`), so the auto-encoder learns the map
    it later encodes."""

    autoencoder: str
    layer: str = "group3"
    teacher_layer: str | None = None
    rate: float = 0.5
    use_bn: bool = True

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        _, t = core_losses.match_spatial(*self.read(student, teacher))
        _, reconstruction = factor_heads.Paraphraser(
            t.shape[-1], _factor_channels(t.shape[-1], self.rate), self.use_bn,
            axis_name=ctx.axis_name, name=self.autoencoder)(t, train=ctx.train)
        return factor_losses.reconstruction_loss(t, reconstruction)


def _reconstruction_stage(name: str, autoencoder: str, epochs: int) -> Stage:
    """The stage that fits a term's `autoencoder` submodule to the teacher's map, alone."""
    def loss(term: nn.Module) -> nn.Module:
        return TeacherMapReconstruction(autoencoder, term.layer, term.teacher_layer, term.rate,
                                        term.use_bn)
    return Stage(name, epochs, loss, trains_student=False, trains_heads=(autoencoder,),
                 description=f"{autoencoder} on the reconstruction of the teacher's map")


class OD(LayerPairs, nn.Module):
    """A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019).

    For each layer pair: the teacher's pre-ReLU map goes through the margin ReLU
    max(t, m_c) (`losses.factors.margin_relu`), the student's through a 1x1 conv + BN
    connector (`heads.factors.ODConnector`), and the loss is the partial L2 distance
    (`losses.factors.partial_l2_loss`: summed over elements, divided by the batch size).
    As in the authors' code (clovaai/overhaul-distillation), layer i of n is weighted
    `layer_decay ** (n - 1 - i)` (1/2 per step back from the last layer); set
    `layer_decay=1` for equal weights. The code's further division by 1000 (CIFAR) is the
    term's config weight, 1e-3 in the example.

    The maps are the ReLUs' inputs, as the authors' code taps them (the output of the BN
    before each ReLU): WRN's `group{k}_preact` by default, `stage{k}_preact` of the other
    models.

    Deviation, the margin: the paper computes m_c = E[t_c | t_c < 0] in closed form from
    the teacher BN's mean and scale (the BN right before the ReLU), assuming Gaussian
    responses. A term sees only the layers the teacher sows, not its BN parameters; so m_c
    is estimated from the sown map itself, as a running average over training batches of
    the per-channel negative moments (`heads.factors.NegativeMeanMargin`, state collection
    "margin", synchronised over `ctx.axis_name`). For Gaussian responses both give the
    same m_c; the estimate needs no Gaussian assumption.
    """

    layers: tuple[str, ...] = GROUPS_PREACT
    teacher_layers: tuple[str, ...] | None = None
    layer_decay: float = 0.5
    margin_momentum: float = 0.9

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        pairs = self.pairs(student, teacher)
        total = 0.0
        for i, (name, s, t) in enumerate(pairs):
            s, t = core_losses.match_spatial(s, t)
            margin = factor_heads.NegativeMeanMargin(self.margin_momentum, name=f"margin_{name}")(
                t, update=ctx.train, axis_name=ctx.axis_name)
            connected = factor_heads.ODConnector(t.shape[-1], axis_name=ctx.axis_name,
                                                 name=f"connector_{name}")(s, train=ctx.train)
            weight = self.layer_decay ** (len(pairs) - 1 - i)
            total = total + weight * factor_losses.overhaul_distillation_loss(connected, t, margin)
        return total


class IEKD(OneLayer, nn.Module):
    """Inheritance and Exploration KD (Huang et al., CVPR 2021); the variant sets `distance`.

    Stage `ie_autoencoder`: an auto-encoder (`heads.factors.Paraphraser`, named
    "ie_autoencoder", factor rate `rate`) learns the teacher's compact factor F_T with the
    reconstruction loss; it is then fixed (`frozen`, stop-gradient, BN running averages).
    Main stage: the student's map is split channel-wise into an inheriting and an
    exploring half, each encoded into the factor space by its own encoder trained with
    the student (`heads.factors.InheritExploreHead`), and the loss is
    lambda_inh * d(F_inh, F_T) - lambda_exp * d(F_exp, F_T)
    (`losses.factors.inheritance_exploration_loss`): the paper's exploration loss is the
    negative of the inheritance distance. It stays bounded because every distance here
    compares unit-norm vectors: FT's normalised factors (IE-FT, the paper's default, also
    registered as "ie_kd"), AT's normalised attention maps of the factors (IE-AT), and for
    IE-OD the partial L2 on per-example L2-normalised factors, the teacher's first
    margin-ReLU'd with a running E[F_T | F_T < 0] as in `OD` (OD's own distance is
    unbounded, so its negative would diverge).

    The paper is followed where the public code (aliyun/Revisiting-Knowledge-
    Distillation-an-Inheritance-and-Exploration-Framework) reads otherwise: that code
    names the network being trained "teacher" and the pretrained one "student", so it
    appears to split the teacher; it is the same structure as the paper's (the network
    being trained is split, the fixed one is auto-encoded). Its distances are means over
    all elements; the paper's per-example norms are used here. Its optional random
    channel split is not offered: the first half of the channels inherits.
    """

    distance: ClassVar[str] = "ft"
    layer: str = "group3"
    teacher_layer: str | None = None
    rate: float = 0.5
    inheritance_weight: float = 1.0
    exploration_weight: float = 1.0
    use_bn: bool = True
    margin_momentum: float = 0.9

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        s, t = core_losses.match_spatial(*self.read(student, teacher))
        factor_channels = _factor_channels(t.shape[-1], self.rate)
        autoencoder = factor_heads.Paraphraser(t.shape[-1], factor_channels, self.use_bn,
                                               axis_name=ctx.axis_name, name="ie_autoencoder")
        teacher_factor = jax.lax.stop_gradient(autoencoder.encode(t, train=False))
        if self.distance == "od":
            margin = factor_heads.NegativeMeanMargin(self.margin_momentum, name="margin")(
                teacher_factor, update=ctx.train, axis_name=ctx.axis_name)
            teacher_factor = factor_losses.margin_relu(teacher_factor, margin)
        return factor_heads.InheritExploreHead(
            factor_channels, self.distance, self.inheritance_weight, self.exploration_weight,
            self.use_bn, axis_name=ctx.axis_name, name="ie_student")(
                s, teacher_factor, train=ctx.train)


class IEFT(IEKD):
    """IE-KD with FT's distance between factors: the paper's default (also "ie_kd")."""

    distance: ClassVar[str] = "ft"


class IEAT(IEKD):
    """IE-KD with AT's distance: normalised spatial attention maps of the factors."""

    distance: ClassVar[str] = "at"


class IEOD(IEKD):
    """IE-KD with OD's partial L2 (per-example normalised) on margin-ReLU'd factors."""

    distance: ClassVar[str] = "od"


class IEDML(nn.Module):
    """IE-KD applied to deep mutual learning (Huang et al., CVPR 2021, the DML extension).

    No fixed teacher: the term owns a peer network (`peer_model`, a model config such as
    dict(name="wrn", depth=10, width=1)), runs it on `ctx.images`, and each network
    treats the other as its teacher. Each network has an auto-encoder on its own map
    ("student_autoencoder", "peer_autoencoder"), trained online with the reconstruction
    loss on its stop-gradient map, whose factor is the other network's inheritance and
    exploration target; each network's map is split and encoded as in `IEKD`
    ("student_ie", "peer_ie"), with FT's distance (the paper's default). The loss is

        CE(peer) + IE(student <- peer) + IE(peer <- student)
        + reconstruction(student AE) + reconstruction(peer AE)
        + kl_weight * [ KL(p_peer || p_student) + KL(p_student || p_peer) ],

    the last line DML's mutual KL at temperature `temperature` (`losses.kd_loss`; set
    `kl_weight=0` for IE alone). Every target (the other network's factor or
    probabilities) is stop-gradient-ed, so one optimizer on the summed loss gives each
    network the gradient of its own objective; the paper (like DML's code) instead
    alternates a step for each network, which the trainer's single step does not do.
    The student's own CE is the trainer's task loss; the term's weight scales all of the
    above (including the peer's CE), so keep it at 1.

    The peer's parameters are the term's `params` under "peer" and its BN statistics the
    term's "batch_stats" collection (BN over `ctx.axis_name` when training, like the
    student's). The auto-encoders are trained online rather than in a stage before, as
    there is no fixed network to fit them to. Needs no teacher: `teacher_layer_names`
    is empty.
    """

    peer_model: Mapping[str, Any]
    layer: str = "group3"
    peer_layer: str | None = None
    rate: float = 0.5
    inheritance_weight: float = 1.0
    exploration_weight: float = 1.0
    kl_weight: float = 1.0
    temperature: float = 1.0
    use_bn: bool = True

    teacher_layer_names: ClassVar[tuple[str, ...]] = ()

    @property
    def student_layer_names(self) -> tuple[str, ...]:
        return (self.layer, "logits") if self.kl_weight else (self.layer,)

    def _run_peer(self, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The peer's logits and sown layers on ctx.images; its BN statistics updated."""
        # parent=None: an unbound model applied by hand, so its sown intermediates do not
        # land in this term's collections and its variables are plain param / state leaves.
        peer = build_model(self.peer_model, ctx.num_classes, bn_axis_name=ctx.axis_name,
                           parent=None)

        def init(rng: jax.Array) -> dict[str, Any]:
            return peer.init(rng, ctx.images, train=False)

        # Flax also traces a param's init function in apply (to check shapes), so it must
        # work there too. BN statistics do not depend on the key.
        params = self.param("peer", lambda rng: init(rng)["params"])
        stats = self.variable("batch_stats", "peer",
                              lambda: init(jax.random.key(0)).get("batch_stats", {}))
        logits, updates = peer.apply({"params": params, "batch_stats": stats.value}, ctx.images,
                                     train=ctx.train, mutable=["batch_stats", "intermediates"])
        if ctx.train and not self.is_initializing():
            stats.value = updates.get("batch_stats", {})
        return logits, sown_layers(updates["intermediates"])

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        peer_logits, peer_layers = self._run_peer(ctx)
        peer_layer = self.peer_layer or self.layer
        if peer_layer not in peer_layers:
            raise ValueError(f"ie_dml: the peer does not sow {peer_layer!r}; it sows: "
                             f"{', '.join(peer_layers)}.")
        s, p = core_losses.match_spatial(student[self.layer], peer_layers[peer_layer])
        common = dict(use_bn=self.use_bn, axis_name=ctx.axis_name)
        student_k = _factor_channels(s.shape[-1], self.rate)
        peer_k = _factor_channels(p.shape[-1], self.rate)
        s_factor, s_reconstruction = factor_heads.Paraphraser(
            s.shape[-1], student_k, **common, name="student_autoencoder")(
                jax.lax.stop_gradient(s), train=ctx.train)
        p_factor, p_reconstruction = factor_heads.Paraphraser(
            p.shape[-1], peer_k, **common, name="peer_autoencoder")(
                jax.lax.stop_gradient(p), train=ctx.train)
        reconstruction = (
            factor_losses.reconstruction_loss(jax.lax.stop_gradient(s), s_reconstruction)
            + factor_losses.reconstruction_loss(jax.lax.stop_gradient(p), p_reconstruction))
        weights = dict(inheritance_weight=self.inheritance_weight,
                       exploration_weight=self.exploration_weight)
        student_ie = factor_heads.InheritExploreHead(peer_k, "ft", **weights, **common,
                                                     name="student_ie")(
            s, jax.lax.stop_gradient(p_factor), train=ctx.train)
        peer_ie = factor_heads.InheritExploreHead(student_k, "ft", **weights, **common,
                                                  name="peer_ie")(
            p, jax.lax.stop_gradient(s_factor), train=ctx.train)
        loss = (core_losses.cross_entropy(peer_logits, ctx.labels, ctx.labelled,
                                           ctx.axis_name)
                + student_ie + peer_ie + reconstruction)
        if self.kl_weight:
            student_logits = student["logits"]
            mutual = (core_losses.kd_loss(student_logits, jax.lax.stop_gradient(peer_logits),
                                          self.temperature)
                      + core_losses.kd_loss(peer_logits, jax.lax.stop_gradient(student_logits),
                                            self.temperature))
            loss = loss + self.kl_weight * mutual
        return loss


_FT_PAPER = ("Kim, Park, Kwak, Paraphrasing Complex Network: Network Compression via Factor "
             "Transfer, NeurIPS 2018")
_OD_PAPER = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
_IE_PAPER = ("Huang et al., Revisiting Knowledge Distillation: An Inheritance and Exploration "
             "Framework, CVPR 2021")
_IE_STAGES = (_reconstruction_stage(IE_STAGE, "ie_autoencoder", epochs=30),)
_IE_EXAMPLE = dict(weight=1.0, layer="group3")

METHODS = [
    Method("ft", FT, "factors of the last group map (paraphraser / translator)", _FT_PAPER,
           example=dict(weight=1.0, layer="group3"),
           # 30 paraphraser epochs: the FT code's and RepDistiller's.
           stages=(_reconstruction_stage(FT_STAGE, "paraphraser", epochs=30),),
           frozen=("paraphraser",)),
    Method("od", OD, "pre-ReLU maps (margin ReLU, partial L2)", _OD_PAPER,
           example=dict(weight=1e-3, layers=GROUPS_PREACT)),
    Method("ie_ft", IEFT, "factors: inheriting half pulled in, exploring half pushed away",
           _IE_PAPER, example=_IE_EXAMPLE, stages=_IE_STAGES, frozen=("ie_autoencoder",)),
    Method("ie_kd", IEFT, "as ie_ft (the paper's default IE-KD)", _IE_PAPER,
           example=_IE_EXAMPLE, stages=_IE_STAGES, frozen=("ie_autoencoder",)),
    Method("ie_at", IEAT, "attention maps of factors, inheriting / exploring halves",
           _IE_PAPER, example=_IE_EXAMPLE, stages=_IE_STAGES, frozen=("ie_autoencoder",)),
    Method("ie_od", IEOD, "margin-ReLU'd factors (partial L2), inheriting / exploring halves",
           _IE_PAPER, example=_IE_EXAMPLE, stages=_IE_STAGES, frozen=("ie_autoencoder",)),
    Method("ie_dml", IEDML, "online: factors of a peer network, both ways, + DML's KL",
           _IE_PAPER, example=dict(weight=1.0, layer="group3",
                                   peer_model=dict(name="wrn", depth=10, width=1))),
]
