"""The CIFAR Residual Networks of RepDistiller / CRD (Tian et al., ICLR 2020), `models/resnet.py`.

`num_filters = (stem, stage1, stage2, stage3)`: a 3x3 convolution of `stem` channels with
BN-ReLU, then three stages of n post-activation blocks with strides 1, 2, 2, global average
pooling and a linear classifier. With basic blocks depth = 6n + 2 (resnet8, 14, 20, 32, 44, 56,
110 with filters (16, 16, 32, 64); resnet8x4 and resnet32x4 with (32, 64, 128, 256)); with
bottleneck blocks depth = 9n + 2 and stage outputs 4x their filters. Blocks are those of
`vid_jax.models.resnet` (torchvision's, as RepDistiller's): the shortcut is a 1x1 convolution
with BN where the shape changes (option B), the identity elsewhere.

Parameters for 100 classes: resnet20 278,324, resnet32 472,756, resnet56 861,620,
resnet110 1,736,564, resnet8x4 1,233,540, resnet32x4 7,433,860 (the CRD paper's table:
0.28M, 0.47M, 0.86M, 1.74M, 1.23M, 7.43M).

The model sows, into the `intermediates` collection (it knows nothing of distillation):

  stem                    the stem's output, after its BN-ReLU (RepDistiller's f0)
  stage1, stage2, stage3  the end of each stage: the last block's output, after its ReLU
  stage1_preact ...       the same before that ReLU (the sum of the residual branch and the
  stage3_preact           shortcut; RepDistiller's `preact=True` features), for AB and OD
  features                the penultimate features, after global average pooling: [B, D]
  logits                  the classifier output, in float32
"""
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from vid_jax.models.resnet import BLOCKS, batch_norm, conv, run_stages


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ResNet-depth; `bn_axis_name` averages batch statistics over devices."""

    depth: int
    num_classes: int
    num_filters: Sequence[int] = (16, 16, 32, 64)
    block: str = "basic"
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    CLASSIFIER: ClassVar[str] = "fc"  # the module that makes the logits

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.block not in BLOCKS:
            raise ValueError(f"CIFAR ResNet block must be one of {sorted(BLOCKS)}, "
                             f"got {self.block!r}.")
        per_block = 2 if self.block == "basic" else 3
        if self.depth < 2 + 3 * per_block or (self.depth - 2) % (3 * per_block):
            raise ValueError(f"A CIFAR ResNet of {self.block} blocks has depth "
                             f"{3 * per_block}n+2 (n >= 1), got {self.depth}.")
        filters = tuple(self.num_filters)
        if len(filters) != 4:
            raise ValueError(f"num_filters is (stem, stage1, stage2, stage3), got {filters}.")
        blocks_per_stage = (self.depth - 2) // (3 * per_block)
        norm = batch_norm(train, self.bn_axis_name, self.dtype)
        x = conv(filters[0], 3, 1, self.dtype, name="conv1")(x.astype(self.dtype))
        x = nn.relu(norm(name="bn1")(x))
        self.sow("intermediates", "stem", x)
        x = run_stages(self, x, (blocks_per_stage,) * 3, filters[1:], BLOCKS[self.block], norm)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        x = x.astype(jnp.float32)
        self.sow("intermediates", "logits", x)
        return x


def _named(depth: int, num_filters: tuple[int, ...]) -> functools.partial:
    return functools.partial(CifarResNet, depth=depth, num_filters=num_filters)


resnet8 = _named(8, (16, 16, 32, 64))
resnet14 = _named(14, (16, 16, 32, 64))
resnet20 = _named(20, (16, 16, 32, 64))
resnet32 = _named(32, (16, 16, 32, 64))
resnet44 = _named(44, (16, 16, 32, 64))
resnet56 = _named(56, (16, 16, 32, 64))
resnet110 = _named(110, (16, 16, 32, 64))
resnet8x4 = _named(8, (32, 64, 128, 256))
resnet32x4 = _named(32, (32, 64, 128, 256))
