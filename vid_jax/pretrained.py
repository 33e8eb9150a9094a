"""Weights from elsewhere into a vid-jax model: a vid-jax run's checkpoint, or a PyTorch state
dict in torchvision's (or timm's) layer names, and the ImageNet preprocessing that goes with
published ImageNet weights.

A state dict is read from a `.safetensors` file with the `safetensors` package (no PyTorch
needed; timm publishes its weights so, and torchvision's `.pth` files convert with
`safetensors.torch.save_file(torch.load(path), out)`) or from a `.pth` / `.pt` file when
PyTorch is installed. These layouts load:

  ResNet (resnet18/34/50, any stage sizes and base_channels)  torchvision's and timm's ResNet
      conv1, bn1, layer{k}.{i}.conv{j} / bn{j} / downsample.{0,1}, fc
  VGG (vgg9 = VGG-11-BN's convolutions, any VGG config)       torchvision's / timm's VGG-BN
      features.{n}: each convolution and its BatchNorm, in order. The convolutions' biases
      are folded into the BatchNorm's running mean (exact: BN subtracts the mean, in training
      too). Their classifiers (two hidden layers on 7x7 maps) do not fit vid-jax's VGG (one
      linear layer on pooled features): load all but the classifier.

A parameter that does not fit fails with one error naming the first one that differs and both
shapes; so does a checkpoint with parameters the model lacks (a ResNet-34 into a ResNet-18).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The ImageNet preprocessing of torchvision's and timm's weights: channel mean and std of
# pixels in [0, 1]; test images resized (shorter side) to 256 and centre-cropped to 224,
# training images randomly resized and cropped to 224 (`config_base.imagenet_input`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
StateDict = dict[str, np.ndarray]
Path_ = tuple[str, ...]  # a variable's path: (collection, module, ..., leaf)


# ---------------------------------------------------------------------------------------------
# Reading a state dict.

def read_state_dict(path: str | os.PathLike) -> StateDict:
    """A PyTorch state dict as {name: float32 or integer numpy array}, from `.safetensors`
    (safetensors' numpy API) or from `.pth` / `.pt` / `.bin` (needs PyTorch). A `module.`
    prefix on every name (a DataParallel checkpoint) is dropped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        tensors = load_file(str(path))
    elif path.suffix in WEIGHT_SUFFIXES:
        tensors = _read_torch_file(path)
    else:
        raise ValueError(f"Weights file {path}: expected one of {', '.join(WEIGHT_SUFFIXES)}.")
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _read_torch_file(path: Path) -> StateDict:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{path} is a PyTorch file and PyTorch is not installed: install torch, or "
            "convert it once where it is (python -c \"import torch; from safetensors.torch "
            "import save_file; save_file(torch.load('IN.pth'), 'OUT.safetensors')\") and "
            "load the .safetensors.") from None
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):  # training checkpoints
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
    return {k: v.detach().cpu().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}


# ---------------------------------------------------------------------------------------------
# torchvision's names for a model's variables.

@dataclasses.dataclass(frozen=True)
class TorchSource:
    """Where one vid-jax variable comes from: the torch tensor `key`, laid out by `convert`,
    which may also read the tensors `also` names (a folded bias)."""

    key: str
    convert: Callable[[StateDict], np.ndarray]
    also: tuple[str, ...] = ()


def _conv(key: str) -> TorchSource:  # [out, in, kh, kw] -> [kh, kw, in, out]
    return TorchSource(key, lambda sd: np.transpose(sd[key], (2, 3, 1, 0)))


def _dense(key: str) -> TorchSource:  # [out, in] -> [in, out]
    return TorchSource(key, lambda sd: np.transpose(sd[key]))


def _same(key: str) -> TorchSource:
    return TorchSource(key, lambda sd: sd[key])


def _batch_norm(prefix: str, leaf: str, folded_bias: str | None = None) -> TorchSource:
    """A Flax BatchNorm variable from torch's: scale = weight, mean = running_mean (minus the
    preceding convolution's bias, which BN's mean subtraction cancels), var = running_var."""
    if leaf == "mean" and folded_bias is not None:
        key = f"{prefix}.running_mean"
        return TorchSource(key, lambda sd: sd[key] - sd.get(folded_bias, 0.0), (folded_bias,))
    name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    return _same(f"{prefix}.{name[leaf]}")


def _resnet_sources(path: Path_) -> TorchSource | None:
    collection, *modules, leaf = path
    torch_modules = []
    for module in modules:
        if block := re.fullmatch(r"stage(\d+)_block(\d+)", module):
            torch_modules.append(f"layer{block[1]}.{block[2]}")
        else:
            torch_modules.append({"downsample_conv": "downsample.0",
                                  "downsample_bn": "downsample.1"}.get(module, module))
    prefix = ".".join(torch_modules)
    if modules[-1] == "fc":
        return _dense(f"{prefix}.weight") if leaf == "kernel" else _same(f"{prefix}.bias")
    if leaf == "kernel":
        return _conv(f"{prefix}.weight")
    return _batch_norm(prefix, leaf)


def _vgg_sources(model: nn.Module) -> Callable[[Path_], TorchSource | None]:
    """features.{n}: torchvision's VGG-BN Sequential, a convolution (n), its BN (n + 1) and
    ReLU (n + 2) per layer and a max-pool at each block's end."""
    index, position = {}, 0
    for stage, channels in enumerate(model.config, start=1):
        for layer in range(len(channels)):
            index[f"stage{stage}_conv{layer}"] = position
            index[f"stage{stage}_bn{layer}"] = position + 1
            position += 3
        position += 1  # the max-pool

    def sources(path: Path_) -> TorchSource | None:
        _, module, leaf = path
        if module == model.CLASSIFIER:
            return None  # torchvision's classifier has no counterpart here
        n = index[module]
        if leaf == "kernel":
            return _conv(f"features.{n}.weight")
        return _batch_norm(f"features.{n}", leaf, folded_bias=f"features.{n - 1}.bias")

    return sources


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """How a vid-jax model's variables are named in PyTorch: a source per variable (None: no
    counterpart) and the name prefixes of the torch classifier."""

    sources: Callable[[Path_], TorchSource | None]
    classifier_prefixes: tuple[str, ...]
    unused_suffixes: tuple[str, ...] = ("num_batches_tracked",)


def torch_layout(model: nn.Module) -> TorchLayout:
    """The torchvision / timm layout of `model` (a ResNet or a VGG), or a ValueError."""
    from vid_jax.models import resnet, vgg
    if isinstance(model, resnet.ResNet):
        return TorchLayout(_resnet_sources, ("fc.",))
    if isinstance(model, vgg.VGG):
        # torchvision: classifier.0/3/6; timm: pre_logits.fc1/fc2, head.fc.
        return TorchLayout(_vgg_sources(model), ("classifier.", "pre_logits.", "head."))
    raise ValueError(f"PyTorch weights load into the ImageNet ResNets (resnet18/34/50) and VGG "
                     f"models (torchvision's and timm's names); {type(model).__name__} has "
                     "no torchvision counterpart.")


# ---------------------------------------------------------------------------------------------
# Checking and converting.

def _flat(tree: Mapping[str, Any], prefix: Path_ = ()) -> dict[Path_, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _unflat(flat: Mapping[Path_, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def model_template(model: nn.Module, input_shape: Iterable[int]) -> dict[str, Any]:
    """The shapes of `model`'s params and batch_stats for inputs of `input_shape` (H, W, C)."""
    return _unflat(_ordered_template(model, input_shape))


def _ordered_template(model: nn.Module, input_shape: Iterable[int]) -> dict[Path_, Any]:
    """{path: shape} of `model`'s params and batch_stats in the order the model makes them
    (stem first, classifier last), so that the first misfit named is the network's first
    (`jax.eval_shape` returns them sorted by name; the order is read while it traces)."""
    order: list[Path_] = []

    def init():
        made = model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False)
        made = {k: made[k] for k in ("params", "batch_stats") if k in made}
        order.extend(_flat(made))
        return made

    shapes = _flat(jax.eval_shape(init))
    return {path: shapes[path] for path in order}


def _name(path: Path_) -> str:
    return "/".join(path)


def _excluded(path: Path_, exclude: Iterable[str]) -> bool:
    return len(path) > 1 and path[1] in set(exclude)


def _misfit(source: str, target: str, detail: str, hint: str = "") -> ValueError:
    return ValueError(f"{source} does not fit {target}: {detail}." + (f" {hint}" if hint else ""))


def check_fit(variables: Mapping[str, Any], template: Mapping[str, Any],
              source: str = "The variables", target: str = "the model", hint: str = "",
              exclude: Iterable[str] = ()) -> None:
    """A ValueError naming the first variable of `template` (in the model's order) that
    `variables` lacks or holds with another shape, or the first one it has and the model
    lacks; top-level modules in `exclude` are not compared."""
    got = {p: tuple(np.shape(v)) for p, v in _flat(variables).items()
           if not _excluded(p, exclude)}
    want = {p: tuple(v.shape) for p, v in _flat(template).items() if not _excluded(p, exclude)}
    for path, shape in want.items():
        if path not in got:
            raise _misfit(source, target, f"it has no {_name(path)} (shape {shape} in the "
                          "model)", hint)
        if got[path] != shape:
            raise _misfit(source, target, f"{_name(path)} has shape {got[path]} there and "
                          f"{shape} in the model", hint)
    extra = [p for p in got if p not in want]
    if extra:
        raise _misfit(source, target, f"it has {_name(extra[0])} (shape {got[extra[0]]}), "
                      f"which the model lacks ({len(extra)} such variables)", hint)


def from_torch(state_dict: Mapping[str, np.ndarray], model: nn.Module,
               input_shape: Iterable[int], exclude: Iterable[str] = (),
               source: str = "The state dict", target: str = "the model",
               hint: str = "") -> dict[str, Any]:
    """`model`'s {params, batch_stats} (numpy, float32) from a state dict in torchvision's
    names, checked: every variable present with its shape, every tensor used (but BN's
    num_batches_tracked). Top-level modules in `exclude` (the classifier, say) are left out of
    the result, and their tensors (all of the torch classifier's, if it is the model's
    classifier) go unused. `source` and `target` name the two in errors; `hint` ends them."""
    exclude = tuple(exclude)
    layout = torch_layout(model)
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    converted, used = {}, set()
    for path, shape in _ordered_template(model, input_shape).items():
        origin = layout.sources(path)
        if _excluded(path, exclude):
            used.update(() if origin is None else (origin.key, *origin.also))
            continue
        if origin is None:
            raise _misfit(source, target, f"the model's {_name(path)} has no counterpart in "
                          "torchvision's layout (its VGG classifier has two hidden layers on "
                          "7x7 maps); load all but the classifier (load_classifier=False)")
        if origin.key not in state_dict:
            raise _misfit(source, target, f"it has no {origin.key} (the model's "
                          f"{_name(path)}, shape {tuple(shape.shape)}): is it another "
                          "architecture?", hint)
        value = origin.convert(state_dict)
        if value.shape != tuple(shape.shape):
            torch_shape = tuple(state_dict[origin.key].shape)
            laid_out = f" ({value.shape} laid out as the model's)" if torch_shape != \
                value.shape else ""
            raise _misfit(source, target, f"{origin.key} (the model's {_name(path)}) has "
                          f"shape {torch_shape}{laid_out} and the model's has "
                          f"{tuple(shape.shape)}", hint)
        converted[path] = value.astype(np.float32)
        used.update((origin.key, *origin.also))
    ignored = layout.classifier_prefixes if type(model).CLASSIFIER in exclude else ()
    unused = [k for k in state_dict if k not in used and not k.endswith(layout.unused_suffixes)
              and not k.startswith(ignored)]
    if unused:
        raise _misfit(source, target, f"it has {unused[0]} (shape "
                      f"{tuple(state_dict[unused[0]].shape)}), which the model lacks "
                      f"({len(unused)} such tensors): is it a deeper or another architecture?",
                      hint)
    return _unflat(converted)


# ---------------------------------------------------------------------------------------------
# One entry point: a run's checkpoint or a weights file, for a teacher or a student's start.

def load_variables(model: nn.Module, input_shape: Iterable[int], workdir: str | None = None,
                   weights: str | None = None, exclude: Iterable[str] = (),
                   field: str = "config.teacher", target: str = "the model",
                   hint: str = "") -> dict[str, Any]:
    """`model`'s {params, batch_stats} from exactly one of `workdir` (a vid-jax run's best
    epoch) or `weights` (a torchvision / timm state dict file), checked against the model;
    the top-level modules in `exclude` are left out. `field` is the config entry that names
    them, `target` the model in errors; `hint` says how to fix a misfit."""
    if bool(workdir) == bool(weights):
        raise ValueError(f"{field}: set exactly one of {field}.workdir (a vid-jax run) and "
                         f"{field}.weights (a {'/'.join(WEIGHT_SUFFIXES)} file in "
                         "torchvision's names).")
    exclude = tuple(exclude)
    if weights:
        return from_torch(read_state_dict(weights), model, input_shape, exclude,
                          f"The weights in {weights}", target, hint)
    from vid_jax.checkpoints import load_variables as load_checkpoint
    loaded = {p: v for p, v in _flat(load_checkpoint(workdir)).items()
              if not _excluded(p, exclude)}
    check_fit(_unflat(loaded), model_template(model, input_shape),
              f"The checkpoint in {workdir}", target, hint, exclude)
    return _unflat(loaded)


def overwrite(variables: Mapping[str, Any], loaded: Mapping[str, Any]) -> dict[str, Any]:
    """`variables` with every leaf that `loaded` has replaced by `loaded`'s (as jax arrays)."""
    flat = _flat(variables)
    flat.update({p: jnp.asarray(v) for p, v in _flat(loaded).items()})
    return _unflat(flat)
