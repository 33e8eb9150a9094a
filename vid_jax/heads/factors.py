"""Flax heads of the factor family: FT's paraphraser and translator, OD's connector and
running margin, IE-KD's inheriting/exploring encoders.

The heads return arrays (factors, reconstructions, margins); the losses on them are the
pure functions of `vid_jax.losses.factors`, and the terms in `vid_jax.methods.factors`
decide which to take in which stage. Batch-normalised heads take `train` (batch
statistics and their running averages when True, the running averages when False) and an
`axis_name` over which batch statistics are averaged when training data-parallel.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vid_jax.heads.pointwise import PointwiseConv
from vid_jax.losses import factors as factor_losses

Array = jax.Array

# PyTorch's kaiming_normal_(mode='fan_out'), the initialisation of FT's and OD's code.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
    # Flax momentum 0.9 is PyTorch's 0.1, the default of the papers' code.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name if train else None)


class FactorCoder(nn.Module):
    r"""Three 3x3 convolutions, each followed by BN and LeakyReLU(0.1) (FT's code).

    Widths C_in -> C_in -> C_out -> C_out, stride 1 and SAME padding, so the spatial size
    is kept. This is FT's translator (student map -> factor), each half of FT's
    paraphraser (encoder: C_t -> factor; decoder: factor -> C_t), and IE-KD's encoders.
    FT's decoder uses transposed convolutions; with stride 1 and padding 1 a transposed
    3x3 convolution is a 3x3 convolution with a flipped kernel, the same family of maps,
    so plain convolutions are used.

    Attributes:
        out_channels: C_out, channels of the output.
        use_bn: batch normalisation after each convolution (then without conv bias).
            FT's released code has the BNs commented out; its reference implementation
            for the paraphraser/translator classes and IE-KD's code use them.
        negative_slope: slope of the LeakyReLU for negative inputs.
        axis_name: mesh axis over which BN averages batch statistics when training.
    """

    out_channels: int
    use_bn: bool = True
    negative_slope: float = 0.1
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, H, W, C_in] -> [B, H, W, C_out]."""
        for width in (x.shape[-1], self.out_channels, self.out_channels):
            x = nn.Conv(width, (3, 3), padding="SAME", use_bias=not self.use_bn,
                        kernel_init=conv_init)(x)
            if self.use_bn:
                x = _batch_norm(train, self.axis_name)(x)
            x = nn.leaky_relu(x, self.negative_slope)
        return x


class Paraphraser(nn.Module):
    r"""FT's paraphraser, and IE-KD's auto-encoder: a convolutional auto-encoder.

        factor = encoder(x),   reconstruction = decoder(factor),

    with `FactorCoder` halves: C -> C -> kC -> kC and kC -> kC -> C -> C, where k is the
    paraphrase rate (FT: 0.5). It is trained on the teacher's map alone with the
    reconstruction loss (`losses.factors.reconstruction_loss`), then fixed; only
    `encode` is used afterwards.

    Attributes:
        channels: C, channels of the map it reconstructs.
        factor_channels: kC, channels of the factor.
        use_bn, negative_slope, axis_name: as in `FactorCoder`.
    """

    channels: int
    factor_channels: int
    use_bn: bool = True
    negative_slope: float = 0.1
    axis_name: str | None = None

    def setup(self) -> None:
        kwargs = dict(use_bn=self.use_bn, negative_slope=self.negative_slope,
                      axis_name=self.axis_name)
        self.encoder = FactorCoder(self.factor_channels, **kwargs)
        self.decoder = FactorCoder(self.channels, **kwargs)

    def encode(self, x: Array, train: bool = False) -> Array:
        """The factor of an [B, H, W, C] map: [B, H, W, kC]."""
        return self.encoder(x, train)

    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
        """(factor [B, H, W, kC], reconstruction [B, H, W, C])."""
        factor = self.encoder(x, train)
        return factor, self.decoder(factor, train)


class ODConnector(nn.Module):
    """OD's student transform: a 1x1 convolution (no bias) to the teacher's channels, then BN.

    Attributes:
        channels: channels of the teacher map.
        axis_name: mesh axis over which BN averages batch statistics when training.
    """

    channels: int
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """[B, H, W, C_s] -> [B, H, W, channels]."""
        x = PointwiseConv(self.channels, use_bias=False, kernel_init=conv_init, name="conv")(x)
        return _batch_norm(train, self.axis_name)(x)


class NegativeMeanMargin(nn.Module):
    r"""A running per-channel estimate of m_c = E[t_c | t_c < 0], OD's margin.

    The paper computes m_c in closed form (`losses.factors.gaussian_negative_mean`) from
    the mean and scale of the teacher's BN before the ReLU, assuming Gaussian responses.
    The terms here see only the layers the teacher sows, not its BN parameters (and a
    WRN group map is sown before that BN), so the margin is instead estimated from the
    responses it applies to: running averages, over training batches, of the per-channel
    moments of `losses.factors.negative_moments`, with m = s / q. This needs no Gaussian
    assumption and fits whatever map is sown; it is noisy only in the first steps.

    State (collection "margin", kept by the trainer): `negative_sum` and
    `negative_fraction`, each [C], starting at zero (their common bias cancels in s / q).
    They are updated when `update` is True (training steps), never at initialisation;
    with `axis_name` the batch moments are first averaged over devices, so every device
    keeps the same margin and it equals the one-device estimate on the whole batch.

    Attributes:
        momentum: weight of the old running averages at each update.
    """

    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: Array, update: bool = False, axis_name: str | None = None) -> Array:
        """Updates the estimate with `x` ([..., C], gradients stopped) if asked; returns m [C]."""
        x = jax.lax.stop_gradient(x)
        channels = x.shape[-1]
        negative_sum = self.variable("margin", "negative_sum", jnp.zeros, (channels,), x.dtype)
        negative_fraction = self.variable("margin", "negative_fraction", jnp.zeros,
                                          (channels,), x.dtype)
        if update and not self.is_initializing():
            batch_sum, batch_fraction = factor_losses.negative_moments(x)
            if axis_name is not None:
                batch_sum, batch_fraction = jax.lax.pmean((batch_sum, batch_fraction), axis_name)
            m = self.momentum
            negative_sum.value = m * negative_sum.value + (1 - m) * batch_sum
            negative_fraction.value = m * negative_fraction.value + (1 - m) * batch_fraction
        return factor_losses.margin_from_moments(negative_sum.value, negative_fraction.value)


class InheritExploreHead(nn.Module):
    r"""IE-KD's student side: split the map channel-wise, encode each part, compare.

    The first half of the student's channels is the inheriting part, the rest the
    exploring part (the "natural" split of IE-KD's code; which channels go where does
    not matter, since the layers before are trained with the split). Each part gets its
    own `FactorCoder` ("inherit_encoder", "explore_encoder") into the teacher's factor
    space, and the loss is `losses.factors.inheritance_exploration_loss` with the
    distance named by `distance` (`losses.factors.IE_DISTANCES`).

    Attributes:
        factor_channels: channels of the teacher factor.
        distance: "ft", "at" or "od".
        inheritance_weight: lambda_inh.
        exploration_weight: lambda_exp.
        use_bn, negative_slope, axis_name: as in `FactorCoder`.
    """

    factor_channels: int
    distance: str = "ft"
    inheritance_weight: float = 1.0
    exploration_weight: float = 1.0
    use_bn: bool = True
    negative_slope: float = 0.1
    axis_name: str | None = None

    @nn.compact
    def __call__(self, student_map: Array, teacher_factor: Array, train: bool = False) -> Array:
        """Scalar loss of an [B, H, W, C_s] map against a [B, H, W, factor_channels] factor.

        Args:
            student_map: the student's map, C_s >= 2 channels.
            teacher_factor: the teacher's factor at the same spatial size (gradients
                stopped, and for "od" already margin-transformed, by the caller).
            train: batch statistics in the encoders' BN.
        """
        if self.distance not in factor_losses.IE_DISTANCES:
            raise ValueError(f"Unknown IE distance {self.distance!r}; known: "
                             f"{', '.join(factor_losses.IE_DISTANCES)}.")
        channels = student_map.shape[-1]
        if channels < 2:
            raise ValueError(f"IE-KD splits the student's channels in two; got {channels}.")
        split = channels // 2
        kwargs = dict(use_bn=self.use_bn, negative_slope=self.negative_slope,
                      axis_name=self.axis_name)
        inherit = FactorCoder(self.factor_channels, **kwargs, name="inherit_encoder")(
            student_map[..., :split], train)
        explore = FactorCoder(self.factor_channels, **kwargs, name="explore_encoder")(
            student_map[..., split:], train)
        return factor_losses.inheritance_exploration_loss(
            inherit, explore, teacher_factor, factor_losses.IE_DISTANCES[self.distance],
            self.inheritance_weight, self.exploration_weight)
