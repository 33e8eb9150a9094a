"""Flax modules for the distillation methods that carry their own parameters.

Each head maps (student features, teacher features) to a scalar loss and is trained
jointly with the student; the teacher features should arrive with gradients already
stopped. The arithmetic lives in `vid_jax.losses`; the heads only add parameters.
Attention transfer has no parameters and stays a pure function,
`vid_jax.losses.attention_transfer`.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax

from vid_jax.heads.pointwise import PointwiseConv
from vid_jax.losses import core as losses

Array = jax.Array


# PyTorch's default initialisation of nn.Conv2d weights, kaiming_uniform_(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The mean networks of the authors' code and RepDistiller
# are left at it.
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class MeanNetwork:
    """How one implementation of VID builds the mean network mu (`VIDHead.mean_network`).

    Attributes:
        num_layers: its number of 1x1 convolutions (`VIDHead.num_layers` overrides it).
        between: what comes between two convolutions: "relu", "bn_relu" or "none".
        use_bias: whether a convolution has a bias (one followed by batch norm never has:
            the norm's shift replaces it).
        kernel_init: initialiser of the convolution kernels.
    """

    num_layers: int
    between: str
    use_bias: bool
    kernel_init: nn.initializers.Initializer


MEAN_NETWORKS = {
    # The CVPR text: three 1x1 convolutions with ReLU between (init and bias not given).
    "paper": MeanNetwork(3, "relu", True, nn.initializers.lecun_normal()),
    # RepDistiller's VIDLoss: the same without biases, PyTorch's default init.
    "repdistiller": MeanNetwork(3, "relu", False, torch_conv_init),
    # The authors' code (amzn/xfer): C_s -> C_t -> C_t, no bias, no non-linearity.
    "authors": MeanNetwork(2, "none", False, torch_conv_init),
    # The workshop text: two 1x1 convolutions with batch norm and ReLU between.
    "workshop": MeanNetwork(2, "bn_relu", True, nn.initializers.lecun_normal()),
}
VARIANCES = ("softplus_eps", "authors")


def _softplus(x: float) -> float:
    """log(1 + e^x) of a Python float, without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def check_vid_options(mean_network: str, variance: str) -> None:
    """Raises one ValueError naming the choices if either option is unknown."""
    if mean_network not in MEAN_NETWORKS:
        raise ValueError(f"mean_network={mean_network!r} is not one of "
                         f"{', '.join(map(repr, MEAN_NETWORKS))}.")
    if variance not in VARIANCES:
        raise ValueError(f"variance={variance!r} is not one of {', '.join(map(repr, VARIANCES))}.")


class VIDHead(nn.Module):
    r"""Variational Information Distillation head (Ahn et al., CVPR 2019).

    Models the teacher features t given the student features s with a Gaussian

        q(t | s) = N( t ; mu(s), diag(sigma^2) ),

    where mu is a small network of 1x1 convolutions and sigma^2 is one learned variance per
    teacher channel, shared by all positions. The loss is the mean Gaussian negative
    log-likelihood `losses.vid_nll` (paper eq. 4).

    The implementations of VID differ in mu and in the variance; both are fields:

    `mean_network` (hidden convolutions `hidden_channels` wide, default C_t):
        "paper" (default): the CVPR text, three 1x1 convolutions with ReLU between (none
            after the last: the mean is unbounded), with biases, Flax's lecun_normal kernels.
        "repdistiller": the same as RepDistiller builds it: no biases, PyTorch's default
            kernels U(+-1/sqrt(C_in)).
        "authors": the authors' code (amzn/xfer, var_info_distil): two 1x1 convolutions
            C_s -> C_t -> C_t, no biases, no non-linearity (so mu is linear in s), PyTorch's
            default kernels.
        "workshop": the workshop text: two 1x1 convolutions with batch norm and ReLU between
            (the first without bias, the norm shifts; lecun_normal kernels, which that text
            does not give). Its statistics are the `batch_stats` collection: batch statistics
            (averaged over `axis_name`) when `train`, the running averages otherwise.

    `variance`:
        "softplus_eps" (default): sigma_c^2 = softplus(alpha_c) + eps (paper eq. 5), alpha
            initialised by inverse softplus so that sigma^2 = init_variance at step 0 (as
            RepDistiller).
        "authors": sigma_c^2 = softplus(alpha_c), no eps, alpha initialised to
            softplus(init_variance): the authors' code means the inverse softplus but applies
            the softplus, so with init_variance 5 the variance starts at
            softplus(softplus(5)) = 5.0134, not 5.

    The defaults are the CVPR paper's text, with which this library's committed results were
    made (parameters `convs_0..2`, each with kernel and bias, and `alpha`); the authors'
    code, the published recipe the paper's numbers came from, is
    `mean_network="authors", variance="authors"` (checked against a PyTorch build of it in
    tests/test_vid_golden.py).

    Inputs may be NHWC maps (VID-I) or [B, D] vectors (e.g. VID-LP on logits or
    pooled features). A [B, D] input is treated as a 1x1 map, for which a 1x1
    convolution is exactly a dense layer; one parameter layout thus serves both.

    Attributes:
        teacher_channels: C_t, channels of the teacher features (output of mu).
        hidden_channels: width of the hidden 1x1 convolutions; None means
            `teacher_channels` (as RepDistiller and the authors' code do).
        num_layers: number of 1x1 convolutions in mu; None means the mean network's own
            (3 for "paper" and "repdistiller", 2 for "authors" and "workshop"); 1 gives a
            single linear map.
        init_variance: sigma^2 at initialisation (5.0 in RepDistiller and the authors' code;
            see `variance` for what "authors" makes of it); a large start damps the
            (t - mu)^2 / sigma^2 gradients while mu is still untrained.
        eps: variance floor of "softplus_eps", so the 1/sigma^2 term stays bounded.
        mean_network: "paper", "repdistiller", "authors" or "workshop" (above).
        variance: "softplus_eps" or "authors" (above).
        axis_name: mesh axis over which "workshop"'s batch norm averages batch statistics
            when training data-parallel.
    """

    teacher_channels: int
    hidden_channels: int | None = None
    num_layers: int | None = None
    init_variance: float = 5.0
    eps: float = 1e-5
    mean_network: str = "paper"
    variance: str = "softplus_eps"
    axis_name: str | None = None

    def setup(self) -> None:
        check_vid_options(self.mean_network, self.variance)
        net = MEAN_NETWORKS[self.mean_network]
        num_layers = net.num_layers if self.num_layers is None else self.num_layers
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        hidden = self.hidden_channels or self.teacher_channels
        widths = [hidden] * (num_layers - 1) + [self.teacher_channels]
        batch_norm = net.between == "bn_relu"
        self.convs = [
            PointwiseConv(width, use_bias=net.use_bias and not (batch_norm and i < num_layers - 1),
                          kernel_init=net.kernel_init)
            for i, width in enumerate(widths)]
        # Flax momentum 0.9 is PyTorch's 0.1.
        self.bns = [nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=self.axis_name)
                    for _ in widths[:-1]] if batch_norm else []
        if self.variance == "softplus_eps":
            if self.init_variance <= self.eps:
                raise ValueError(
                    f"init_variance ({self.init_variance}) must exceed eps ({self.eps}).")
            # Inverse softplus, so softplus(alpha) + eps == init_variance at step 0.
            alpha0 = math.log(math.expm1(self.init_variance - self.eps))
        else:
            alpha0 = _softplus(self.init_variance)  # the authors' code, see above
        self.alpha = self.param(
            "alpha", nn.initializers.constant(alpha0), (self.teacher_channels,)
        )

    def variance_values(self) -> Array:
        """Per-channel variance sigma^2, shape [C_t]: softplus(alpha) (+ eps)."""
        variance = jax.nn.softplus(self.alpha)
        return variance + self.eps if self.variance == "softplus_eps" else variance

    def mean_and_variance(self, student_map: Array, train: bool = False) -> tuple[Array, Array]:
        """Returns (mu(s), sigma^2).

        Args:
            student_map: [B, H, W, C_s] map or [B, D] vector.
            train: batch statistics in "workshop"'s batch norm (and update the running
                ones); other mean networks ignore it.

        Returns:
            mean with the input's leading shape and C_t channels, and variance [C_t].
        """
        x = student_map
        if x.ndim not in (2, 4):
            raise ValueError(f"VIDHead expects [B, D] or NHWC input, got {x.shape}.")
        between = MEAN_NETWORKS[self.mean_network].between
        for i, conv in enumerate(self.convs):
            if i > 0:
                if between == "bn_relu":
                    x = self.bns[i - 1](x, use_running_average=not train)
                if between != "none":
                    x = nn.relu(x)
            x = conv(x)
        return x, self.variance_values()

    def __call__(self, student_map: Array, teacher_map: Array, train: bool = False) -> Array:
        """VID loss -log q(t | s), averaged over all teacher elements.

        NHWC maps of different spatial sizes are first average-pooled to the smaller
        size (`losses.match_spatial`); the student is pooled before mu, as in
        RepDistiller.

        Args:
            student_map: [B, H_s, W_s, C_s] or [B, D_s].
            teacher_map: [B, H_t, W_t, C_t] or [B, C_t], same rank as the student.
            train: see `mean_and_variance`.

        Returns:
            Scalar loss.
        """
        if student_map.ndim != teacher_map.ndim:
            raise ValueError(
                f"Student {student_map.shape} and teacher {teacher_map.shape} must "
                "have the same rank."
            )
        if student_map.ndim == 4:
            student_map, teacher_map = losses.match_spatial(student_map, teacher_map)
        mean, variance = self.mean_and_variance(student_map, train)
        return losses.vid_nll(teacher_map, mean, variance)


class FitNetHead(nn.Module):
    """FitNets regressor and hint loss (Romero et al., ICLR 2015).

    The regressor r is one convolution mapping the student's guided layer to the
    teacher's channel count; the loss is `losses.fitnet_hint_loss(r(s), t)`. The paper
    sizes a valid convolution so that spatial sizes line up; here mismatched maps are
    instead average-pooled to the smaller size first (`losses.match_spatial`) and the
    convolution uses SAME padding, so any kernel size keeps that size.

    Attributes:
        teacher_channels: C_t, channels of the teacher hint layer.
        kernel_size: k of the k x k regressor convolution (1 = a 1x1 projection).
    """

    teacher_channels: int
    kernel_size: int = 1

    @nn.compact
    def __call__(self, student_map: Array, teacher_map: Array) -> Array:
        """Hint loss between the regressed student map and the teacher map.

        Args:
            student_map: [B, H_s, W_s, C_s].
            teacher_map: [B, H_t, W_t, C_t].

        Returns:
            Scalar loss.
        """
        student_map, teacher_map = losses.match_spatial(student_map, teacher_map)
        k = self.kernel_size
        if k == 1:
            regressor = PointwiseConv(self.teacher_channels, name="regressor")
        else:
            regressor = nn.Conv(self.teacher_channels, (k, k), padding="SAME", name="regressor")
        regressed = regressor(student_map)
        return losses.fitnet_hint_loss(regressed, teacher_map)

