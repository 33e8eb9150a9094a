"""ImageNet-form Residual Networks (He et al., CVPR 2016), laid out as torchvision's.

A 7x7 stride-2 convolution with BN-ReLU and a 3x3 stride-2 max-pool (the stem), then four
stages of 64, 128, 256 and 512 channels (times 4 at a bottleneck block's output), with
strides 1, 2, 2, 2 (in a bottleneck block on its 3x3 convolution, as torchvision's "v1.5"),
global average pooling and a linear classifier. Blocks are post-activation: the ReLU comes
after the sum of the residual branch and the shortcut, a 1x1 convolution with BN where the
shape changes. Padding is PyTorch's (k // 2 on each side), so torchvision weights map on.

With 1000 classes, resnet18 has 11,689,512 parameters and resnet34 21,797,672, resnet50
25,557,032: torchvision's counts (BN scale and bias included; running statistics are state).
Module names follow torchvision's (conv1, bn1, stage{k}_block{i} for layer{k}.{i}, conv1..3,
bn1..3, downsample_conv / downsample_bn for downsample.0 / .1, fc), so its weights and timm's
load with `vid_jax.pretrained`; `base_channels` (64) scales every width, for small test nets.

The model sows, into the `intermediates` collection (it knows nothing of distillation):

  stem                    the stem's output, after its max-pool (stride 4)
  stage1 ... stage4       the end of each stage: the last block's output, after its ReLU
  stage1_preact ...       the same before that ReLU (the sum of the residual branch and the
  stage4_preact           shortcut), for methods that need pre-ReLU features (AB, OD)
  features                the penultimate features, after global average pooling: [B, D]
  logits                  the classifier output, in float32
"""
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'), as torchvision initialises.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(channels: int, kernel: int, strides: int = 1, dtype: Any = jnp.float32,
         name: str | None = None) -> nn.Conv:
    """A bias-free convolution padded as PyTorch's `padding=kernel // 2`."""
    pad = kernel // 2
    return nn.Conv(channels, (kernel, kernel), (strides, strides), padding=((pad, pad),) * 2,
                   use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut; returns (ReLU of the sum, the sum)."""

    channels: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        y = conv(self.channels, 3, self.strides, self.dtype, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = conv(self.channels, 3, 1, self.dtype, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        preact = y + shortcut(x, self.channels, self.strides, self.norm, self.dtype)
        return nn.relu(preact), preact


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus the shortcut; returns
    (ReLU of the sum, the sum)."""

    channels: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        out_channels = self.channels * self.expansion
        y = conv(self.channels, 1, 1, self.dtype, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = conv(self.channels, 3, self.strides, self.dtype, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = conv(out_channels, 1, 1, self.dtype, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        preact = y + shortcut(x, out_channels, self.strides, self.norm, self.dtype)
        return nn.relu(preact), preact


def shortcut(x: jnp.ndarray, channels: int, strides: int, norm: Callable[..., nn.Module],
             dtype: Any) -> jnp.ndarray:
    """The identity, or a 1x1 convolution with BN where the shape changes (option B).

    Called inside a block's compact `__call__`, so its modules are the block's."""
    if x.shape[-1] == channels and strides == 1:
        return x
    return norm(name="downsample_bn")(
        conv(channels, 1, strides, dtype, name="downsample_conv")(x))


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def batch_norm(train: bool, axis_name: str | None, dtype: Any) -> Callable[..., nn.Module]:
    """The models' BatchNorm: PyTorch's defaults (momentum 0.1 = Flax's 0.9, epsilon 1e-5);
    batch statistics averaged over `axis_name` (the devices) when training."""
    return functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
        axis_name=axis_name if train else None, dtype=dtype)


def run_stages(module: nn.Module, x: jnp.ndarray, stage_sizes: Sequence[int],
               channels: Sequence[int], block: type[nn.Module], norm: Callable[..., nn.Module],
               first_stride: int = 1) -> jnp.ndarray:
    """Runs the stages of post-activation blocks, sowing `stage{k}` and `stage{k}_preact`.

    Called inside `module`'s compact `__call__`; stage k > 1 starts with stride 2."""
    for stage, (size, width) in enumerate(zip(stage_sizes, channels, strict=True), start=1):
        preact = x
        for index in range(size):
            strides = (first_stride if stage == 1 else 2) if index == 0 else 1
            x, preact = block(width, strides, norm, module.dtype,
                              name=f"stage{stage}_block{index}")(x)
        module.sow("intermediates", f"stage{stage}_preact", preact)
        module.sow("intermediates", f"stage{stage}", x)
    return x


class ResNet(nn.Module):
    """ResNet with `stage_sizes` blocks of type `block` ("basic" or "bottleneck") per stage.

    `bn_axis_name` averages batch statistics over devices when training; `base_channels` is
    the width of the stem and the first stage (stage k has base_channels * 2^(k-1), times 4 at
    a bottleneck block's output)."""

    stage_sizes: Sequence[int]
    num_classes: int
    block: str = "basic"
    base_channels: int = 64
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    CLASSIFIER: ClassVar[str] = "fc"  # the module that makes the logits

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block must be one of {sorted(BLOCKS)}, got {self.block!r}.")
        norm = batch_norm(train, self.bn_axis_name, self.dtype)
        x = conv(self.base_channels, 7, 2, self.dtype, name="conv1")(x.astype(self.dtype))
        x = nn.relu(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        self.sow("intermediates", "stem", x)
        stage_sizes = tuple(self.stage_sizes)
        channels = [self.base_channels * 2 ** i for i in range(len(stage_sizes))]
        x = run_stages(self, x, stage_sizes, channels, BLOCKS[self.block], norm)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        x = x.astype(jnp.float32)
        self.sow("intermediates", "logits", x)
        return x


resnet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic")
resnet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic")
resnet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck")
