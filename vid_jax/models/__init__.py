"""Model registry: a config names a model and its arguments; nothing here knows of distillation."""
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from vid_jax.models.wide_resnet import WideResNet

MODELS: dict[str, type[nn.Module]] = {
    "wrn": WideResNet,
}


def build_model(model_config: Mapping[str, Any], num_classes: int, **overrides: Any) -> nn.Module:
    """Builds `model_config.name` with the config's other fields as constructor arguments."""
    kwargs = dict(model_config)
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.")
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
