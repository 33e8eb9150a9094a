"""VGG networks with batch normalisation and a single linear classifier.

`config` lists, per block, the channels of its 3x3 convolutions (each conv-BN-ReLU); each block
ends with a 2x2 max-pool; then global average pooling and one linear layer. VGG-9, the student
of the VID paper's transfer experiments (Ahn et al., CVPR 2019: an ImageNet ResNet-34 teacher,
CUB-200 / MIT-67), is read here as 8 convolutions and 1 classifier layer in VGG's configuration
"A" (VGG-11 without its two hidden fully connected layers): blocks [64], [128], [256, 256],
[512, 512], [512, 512]. That reading is this library's (the layer list is not taken from the
paper). It is also RepDistiller's `vgg11_bn` (named by the configuration, not by its layers) but
for RepDistiller's convolution biases (redundant before BN, left out here) and pooling (it taps
features before each max-pool, skips the fourth max-pool unless the input is 64 pixels high,
and has none after the last block). VGG-9 has 9,223,232 + 513 x num_classes parameters.

The model sows, into the `intermediates` collection (it knows nothing of distillation):

  stage1 ... stage5       each block's output, after its ReLU and max-pool
  stage1_preact ...       the same before the ReLU: the max-pooled output of the block's last
  stage5_preact           BN (max-pool and ReLU commute, so stage{k} = relu(stage{k}_preact)),
                          for methods that need pre-ReLU features (AB, OD)
  features                the penultimate features, after global average pooling: [B, 512]
  logits                  the classifier output, in float32
"""
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from vid_jax.models.resnet import batch_norm, conv

VGG9 = ((64,), (128,), (256, 256), (512, 512), (512, 512))


class VGG(nn.Module):
    """VGG-BN with the blocks of `config`; `bn_axis_name` averages batch statistics over devices;
    `base_channels` (64, the width of VGG's first block) scales every width, for smaller nets."""

    config: Sequence[Sequence[int]]
    num_classes: int
    base_channels: int = 64
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    CLASSIFIER: ClassVar[str] = "classifier"  # the module that makes the logits

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if not self.config or not all(self.config):
            raise ValueError(f"VGG config must list blocks of conv channels, got {self.config}.")
        norm = batch_norm(train, self.bn_axis_name, self.dtype)
        x = x.astype(self.dtype)
        for stage, channels in enumerate(self.config, start=1):
            for index, width in enumerate(channels):
                width = width * self.base_channels // 64
                x = conv(width, 3, 1, self.dtype, name=f"stage{stage}_conv{index}")(x)
                x = norm(name=f"stage{stage}_bn{index}")(x)
                if index < len(channels) - 1:
                    x = nn.relu(x)
            # Pooling first is the same as ReLU first (both are monotone), and cheaper.
            x = nn.max_pool(x, (2, 2), (2, 2))
            self.sow("intermediates", f"stage{stage}_preact", x)
            x = nn.relu(x)
            self.sow("intermediates", f"stage{stage}", x)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        x = x.astype(jnp.float32)
        self.sow("intermediates", "logits", x)
        return x


vgg9 = functools.partial(VGG, config=VGG9)
