"""Heads of the transfer family: LwF's old-task classifier, AB's connector, channel adapters.

Each maps student features (and the teacher's, with gradients already stopped) to a scalar loss
or to adapted features; the arithmetic is in `vid_jax.losses.transfer`.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from vid_jax.heads.pointwise import PointwiseConv
from vid_jax.losses import core as losses
from vid_jax.losses import transfer as transfer_losses

Array = jax.Array

# N(0, 2 / (k * k * out_channels)): the connector initialisation of AB's code (PyTorch's
# kaiming_normal_ with mode='fan_out'), as the WRN convolutions.
connector_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Connector(nn.Module):
    """A 1x1 convolution (no bias), optionally followed by batch normalisation, that maps the
    student's channels to the teacher's (AB's connector r(.); FSP's and KD-SVD's adapters).

    [B, D] vectors are treated as 1x1 maps (the convolution is then a dense layer).

    Attributes:
        channels: the output channels (the teacher's).
        batch_norm: follow the convolution with BatchNorm (AB's connector: conv + BN).
        momentum: BatchNorm's running-average momentum (PyTorch's 0.1 is Flax's 0.9).
    """

    channels: int
    batch_norm: bool = False
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: Array, train: bool = False, axis_name: str | None = None) -> Array:
        """Args: x [B, H, W, C_s] or [B, C_s]; train: use batch statistics (and update the
        running ones); axis_name: the data-parallel axis to average batch statistics over."""
        y = PointwiseConv(self.channels, use_bias=False, kernel_init=connector_init,
                          name="conv")(x)
        if self.batch_norm:
            y = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                             epsilon=1e-5, axis_name=axis_name if train else None,
                             name="bn")(y)
        return y


class ABHead(nn.Module):
    r"""Activation-boundary transfer for one layer pair (Heo et al., AAAI 2019).

    The connector r = BN(conv1x1(.)) maps the student's pre-activation map to the teacher's
    channels; the loss is `losses.transfer.activation_boundary_loss(r(S), T, margin)`. Maps of
    different spatial sizes are first average-pooled to the smaller one.

    Attributes:
        teacher_channels: C_t.
        margin: m of the hinge.
    """

    teacher_channels: int
    margin: float = 1.0

    @nn.compact
    def __call__(self, student_map: Array, teacher_map: Array, train: bool = False,
                 axis_name: str | None = None) -> Array:
        if student_map.ndim == 4:
            student_map, teacher_map = losses.match_spatial(student_map, teacher_map)
        connected = Connector(self.teacher_channels, batch_norm=True, name="connector")(
            student_map, train, axis_name)
        return transfer_losses.activation_boundary_loss(connected, teacher_map, self.margin)


class LwFHead(nn.Module):
    r"""Learning without Forgetting's old-task head (Li & Hoiem 2016).

    A linear classifier z_o = W f + b on the student's penultimate features f, with as many
    outputs as the teacher's (old task's) logits, trained so that softmax(z_o / T) matches
    the teacher's softened outputs (`losses.transfer.lwf_loss`). In LwF the old head starts
    from the old model's classifier; a student of another architecture has none to copy, so
    it starts at random (Flax's default dense initialisation).

    Attributes:
        temperature: T (2 in LwF).
    """

    temperature: float = 2.0

    @nn.compact
    def __call__(self, student_features: Array, teacher_logits: Array) -> Array:
        old_task_logits = nn.Dense(teacher_logits.shape[-1], name="old_task_classifier")(
            student_features)
        return transfer_losses.lwf_loss(old_task_logits, teacher_logits, self.temperature)
