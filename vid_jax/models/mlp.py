"""A multi-layer perceptron student, for the VID paper's CNN -> MLP transfer on CIFAR-10.

The image is flattened (32x32x3 -> 3072), then each of `hidden_sizes` is a dense layer
(He-normal initialised) with, if `batch_norm`, BN before its ReLU; then a linear classifier.
The default, three hidden layers of 2048 units, is this library's choice; set `hidden_sizes`
to the architecture a run reproduces. With 10 classes and 32x32x3 inputs the default has
14,706,698 parameters.

The model sows, into the `intermediates` collection (it knows nothing of distillation):

  hidden1 ... hiddenN     each hidden layer's output, after its ReLU: [B, units]
  hidden1_preact ...      the same before the ReLU (after BN when `batch_norm`)
  hiddenN_preact
  features                the penultimate features: the last hidden layer's output
  logits                  the classifier output, in float32
"""
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from vid_jax.models.resnet import batch_norm

# He et al.'s initialisation for layers followed by a ReLU.
dense_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class MLP(nn.Module):
    """Flatten, then ReLU layers of `hidden_sizes` units, then a linear classifier.

    `bn_axis_name` averages batch statistics over devices when `batch_norm` and training;
    without BN it is accepted (the trainer passes it to every student) and unused."""

    num_classes: int
    hidden_sizes: Sequence[int] = (2048, 2048, 2048)
    batch_norm: bool = False
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    CLASSIFIER: ClassVar[str] = "classifier"  # the module that makes the logits

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        norm = batch_norm(train, self.bn_axis_name, self.dtype)
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for layer, units in enumerate(self.hidden_sizes, start=1):
            x = nn.Dense(units, use_bias=not self.batch_norm, kernel_init=dense_init,
                         dtype=self.dtype, name=f"dense{layer}")(x)
            if self.batch_norm:
                x = norm(name=f"bn{layer}")(x)
            self.sow("intermediates", f"hidden{layer}_preact", x)
            x = nn.relu(x)
            self.sow("intermediates", f"hidden{layer}", x)
        self.sow("intermediates", "features", x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        x = x.astype(jnp.float32)
        self.sow("intermediates", "logits", x)
        return x
