"""Model registry: a config names a model and its arguments; nothing here knows of distillation."""
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from vid_jax.models import cifar_resnet, resnet, vgg
from vid_jax.models.mlp import MLP
from vid_jax.models.wide_resnet import GROUPS as WRN_GROUPS
from vid_jax.models.wide_resnet import GROUPS_PREACT as WRN_GROUPS_PREACT
from vid_jax.models.wide_resnet import WideResNet

__all__ = ["MODELS", "WRN_GROUPS", "WRN_GROUPS_PREACT", "MLP", "WideResNet", "build_model",
           "sown_layers"]

# A model class, or a partial of one that fixes its architecture (its config may override).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "wrn": WideResNet,
    # ImageNet-form ResNets (torchvision's).
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    # RepDistiller's CIFAR ResNets; "cifar_resnet" takes depth (and num_filters) from the config.
    "cifar_resnet": cifar_resnet.CifarResNet,
    "resnet8": cifar_resnet.resnet8,
    "resnet14": cifar_resnet.resnet14,
    "resnet20": cifar_resnet.resnet20,
    "resnet32": cifar_resnet.resnet32,
    "resnet44": cifar_resnet.resnet44,
    "resnet56": cifar_resnet.resnet56,
    "resnet110": cifar_resnet.resnet110,
    "resnet8x4": cifar_resnet.resnet8x4,
    "resnet32x4": cifar_resnet.resnet32x4,
    # VGG-BN; "vgg" takes its blocks from the config.
    "vgg": vgg.VGG,
    "vgg9": vgg.vgg9,
    "mlp": MLP,
}


def build_model(model_config: Mapping[str, Any], num_classes: int, **overrides: Any) -> nn.Module:
    """Builds `model_config.name` with the config's other fields as constructor arguments.

    The classes are a task's, not the architecture's: `num_classes` (a student's come from its
    data, a teacher's from `config.teacher.num_classes`), never a field of the model config."""
    kwargs = dict(model_config)
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
    if "num_classes" in kwargs:
        raise ValueError(
            f"The model config {dict(model_config)} sets num_classes; a model's classes are its "
            f"task's: set config.teacher.num_classes for a teacher (a student's come from its "
            "data), or pass them as build_model's num_classes.")
    return MODELS[name](num_classes=num_classes, **kwargs, **overrides)


def sown_layers(intermediates: Mapping[str, Any], prefix: str = "") -> dict[str, jax.Array]:
    """Flattens Flax's `intermediates` collection to {layer name: array}."""
    layers = {}
    for key, value in intermediates.items():
        name = f"{prefix}{key}"
        if isinstance(value, tuple):
            layers[name] = value[-1]
        else:
            layers.update(sown_layers(value, prefix=f"{name}/"))
    return layers
