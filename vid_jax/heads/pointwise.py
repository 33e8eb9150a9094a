"""A 1x1 convolution computed as one matrix product, the building block of most heads."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class PointwiseConv(nn.Module):
    """A 1x1 convolution (a dense layer on the last axis) with `nn.Conv`'s parameters.

    The output is `x @ kernel + bias` at every position, for inputs of any rank whose last
    axis is the channels ([B, H, W, C] maps, [B, C] vectors). The parameters have the names,
    shapes ([1, 1, C_in, C_out] kernel) and initial values of `nn.Conv(features, (1, 1))`, so
    either module loads the other's checkpoints.

    Why not `nn.Conv` or `nn.Dense`: the positions are flattened to one axis first, so the
    weight gradient is a single [C_in, N] x [N, C_out] product. On XLA CPU the gradient of a
    1x1 convolution, or of a dense layer applied to a 4-D map (a dot contracting over B, H and
    W), runs 2.3-4.6x slower than that (benchmarks/head_speed.py; benchmarks/README.md,
    "VID-I's heads").

    Attributes:
        features: output channels.
        use_bias: add a learned bias.
        kernel_init: initialiser of the [1, 1, C_in, C_out] kernel (`nn.Conv`'s default).
        bias_init: initialiser of the bias.
    """

    features: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (1, 1, in_features, self.features))
        y = jnp.dot(x.reshape(-1, in_features), kernel.reshape(in_features, self.features))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y.reshape(*x.shape[:-1], self.features)
