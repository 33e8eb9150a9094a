"""Flax modules for the distillation methods that carry their own parameters.

Each head maps (student features, teacher features) to a scalar loss and is trained
jointly with the student; the teacher features should arrive with gradients already
stopped. The arithmetic lives in `vid_jax.losses`; the heads only add parameters.
Attention transfer has no parameters and stays a pure function,
`vid_jax.losses.attention_transfer`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from vid_jax.heads.pointwise import PointwiseConv
from vid_jax.losses import core as losses

Array = jax.Array


class VIDHead(nn.Module):
    r"""Variational Information Distillation head (Ahn et al., CVPR 2019).

    Models the teacher features t given the student features s with a Gaussian

        q(t | s) = N( t ; mu(s), diag(sigma^2) ),
        sigma_c^2 = softplus(alpha_c) + eps                     (paper eq. 5),

    where mu is a stack of `num_layers` 1x1 convolutions with ReLU between them (the
    paper uses three; none after the last, since the mean is unbounded) and sigma^2 is
    one learned variance per teacher channel, shared by all positions. The loss is the
    mean Gaussian negative log-likelihood `losses.vid_nll` (paper eq. 4).

    Inputs may be NHWC maps (VID-I) or [B, D] vectors (e.g. VID-LP on logits or
    pooled features). A [B, D] input is treated as a 1x1 map, for which a 1x1
    convolution is exactly a dense layer; one parameter layout thus serves both.

    Attributes:
        teacher_channels: C_t, channels of the teacher features (output of mu).
        hidden_channels: width of the hidden 1x1 convolutions; None means
            `teacher_channels` (as RepDistiller does).
        num_layers: number of 1x1 convolutions in mu; 1 gives a single linear map.
        init_variance: sigma^2 at initialisation (5.0 in RepDistiller); a large start
            damps the (t - mu)^2 / sigma^2 gradients while mu is still untrained.
        eps: variance floor, so the 1/sigma^2 term stays bounded.
    """

    teacher_channels: int
    hidden_channels: int | None = None
    num_layers: int = 3
    init_variance: float = 5.0
    eps: float = 1e-5

    def setup(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
        if self.init_variance <= self.eps:
            raise ValueError(
                f"init_variance ({self.init_variance}) must exceed eps ({self.eps})."
            )
        hidden = self.hidden_channels or self.teacher_channels
        widths = [hidden] * (self.num_layers - 1) + [self.teacher_channels]
        self.convs = [PointwiseConv(width) for width in widths]
        # Inverse softplus, so softplus(alpha) + eps == init_variance at step 0.
        alpha0 = math.log(math.expm1(self.init_variance - self.eps))
        self.alpha = self.param(
            "alpha", nn.initializers.constant(alpha0), (self.teacher_channels,)
        )

    def variance(self) -> Array:
        """Per-channel variance sigma^2 = softplus(alpha) + eps, shape [C_t]."""
        return jax.nn.softplus(self.alpha) + self.eps

    def mean_and_variance(self, student_map: Array) -> tuple[Array, Array]:
        """Returns (mu(s), sigma^2).

        Args:
            student_map: [B, H, W, C_s] map or [B, D] vector.

        Returns:
            mean with the input's leading shape and C_t channels, and variance [C_t].
        """
        x = student_map
        if x.ndim not in (2, 4):
            raise ValueError(f"VIDHead expects [B, D] or NHWC input, got {x.shape}.")
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = nn.relu(x)
            x = conv(x)
        return x, self.variance()

    def __call__(self, student_map: Array, teacher_map: Array) -> Array:
        """VID loss -log q(t | s), averaged over all teacher elements.

        NHWC maps of different spatial sizes are first average-pooled to the smaller
        size (`losses.match_spatial`); the student is pooled before mu, as in
        RepDistiller.

        Args:
            student_map: [B, H_s, W_s, C_s] or [B, D_s].
            teacher_map: [B, H_t, W_t, C_t] or [B, C_t], same rank as the student.

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
        mean, variance = self.mean_and_variance(student_map)
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

