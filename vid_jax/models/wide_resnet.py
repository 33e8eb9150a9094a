"""Pre-activation Wide Residual Networks for CIFAR (Zagoruyko & Komodakis, BMVC 2016).

WRN-d-w has three groups of n = (d - 4) / 6 basic blocks, with 16w, 32w and 64w channels and
strides 1, 2, 2. The model sows, into the `intermediates` collection, the layers that
distillation methods tap (it knows nothing of them):

  group1, group2, group3  the end of each residual group, before the BN-ReLU that follows
  group1_preact ...       that BN's output, the ReLU's input (the next group's first block's
  group3_preact           first BN; the final BN for group3), for methods defined on pre-ReLU
                          maps (AB, OD), as their authors' code taps it
  features                the penultimate features (after BN-ReLU and global average pooling)
  logits                  the classifier output
"""
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

# The ends of the three residual groups, the layers VID-I, AT, NST... tap by default.
GROUPS = ("group1", "group2", "group3")
# The ReLU inputs that follow them (AB and OD tap these).
GROUPS_PREACT = tuple(f"{g}_preact" for g in GROUPS)

# PyTorch's kaiming_normal_(mode='fan_out'), as in the reference WRN code.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 projection when the shape changes.
    Returns the block's output and its first BN's output (its input's pre-ReLU map)."""

    channels: int
    strides: int
    norm: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        conv = lambda c, k, s: nn.Conv(
            c, (k, k), (s, s), padding="SAME" if k > 1 else "VALID",
            use_bias=False, kernel_init=conv_init, dtype=self.dtype)
        normalised = self.norm()(x)
        preact = nn.relu(normalised)
        if x.shape[-1] != self.channels or self.strides != 1:
            # The projection reads the pre-activated input, as in the authors' code.
            shortcut = conv(self.channels, 1, self.strides)(preact)
        else:
            shortcut = x
        y = conv(self.channels, 3, self.strides)(preact)
        y = nn.relu(self.norm()(y))
        y = conv(self.channels, 3, 1)(y)
        return y + shortcut, normalised


class WideResNet(nn.Module):
    """WRN-depth-width for small images; `bn_axis_name` averages batch statistics over devices."""

    depth: int
    width: int
    num_classes: int
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    CLASSIFIER: ClassVar[str] = "Dense_0"  # the module that makes the logits (unnamed)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40...), got {self.depth}.")
        blocks_per_group = (self.depth - 4) // 6
        norm = lambda: nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5,
            axis_name=self.bn_axis_name if train else None, dtype=self.dtype)
        x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_init,
                    dtype=self.dtype)(x.astype(self.dtype))
        for group, (channels, strides) in enumerate(
                ((16 * self.width, 1), (32 * self.width, 2), (64 * self.width, 2)), start=1):
            for block in range(blocks_per_group):
                x, normalised = BasicBlock(channels, strides if block == 0 else 1, norm,
                                           self.dtype)(x)
                if group > 1 and block == 0:  # the previous group's end, normalised
                    self.sow("intermediates", GROUPS_PREACT[group - 2], normalised)
            self.sow("intermediates", GROUPS[group - 1], x)
        x = norm()(x)
        self.sow("intermediates", GROUPS_PREACT[-1], x)
        x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        x = x.astype(jnp.float32)
        self.sow("intermediates", "logits", x)
        return x
