"""PyTorch weights in torchvision's names load into vid-jax's ResNet and VGG and compute what
PyTorch computes; weights that do not fit fail with one error naming the first misfit.

The fixture, tests/data/torchvision_golden.safetensors, is made by
tests/golden/make_torchvision_golden.py (its docstring gives the command; PyTorch in a venv of
its own): small networks with torchvision's module names (a BasicBlock ResNet, a Bottleneck
ResNet, VGG-BN features), random weights and BatchNorm statistics, an input and the logits (or
pooled features) PyTorch computed in eval mode. This test needs no PyTorch.
"""
import os

import jax
import numpy as np
import pytest

from vid_jax import pretrained
from vid_jax.models import build_model, sown_layers

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "torchvision_golden.safetensors")
CLASSES = 7
MODELS = {  # the fixture's networks as vid-jax models
    "basic": dict(name="resnet18", stage_sizes=(2, 1, 1, 1), base_channels=4),
    "bottleneck": dict(name="resnet50", stage_sizes=(1, 1, 1, 1), base_channels=2),
    "vgg": dict(name="vgg", config=((4,), (8,), (8, 8))),
}


@pytest.fixture(scope="module")
def fixture():
    tensors = pretrained.read_state_dict(FIXTURE)
    nets = {}
    for name in MODELS:
        nets[name] = {
            "state_dict": {k[len(name) + 1:]: v for k, v in tensors.items()
                           if k.startswith(f"{name}.")},
            **{k.rsplit(".", 1)[1]: v for k, v in tensors.items()
               if k.startswith(f"golden.{name}.")}}
    return nets


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _forward(model, variables, x):
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
    return sown_layers(apply(variables, _nhwc(x))[1]["intermediates"])


def _fresh(model):
    """Stand-in variables of a freshly initialised model (ones; a real initialisation takes
    many seconds to compile), for the variables a load leaves out."""
    return jax.tree.map(lambda a: np.ones(a.shape, a.dtype),
                        pretrained.model_template(model, (36, 36, 3)))


@pytest.mark.parametrize("name", ["basic", "bottleneck"])
def test_converted_resnet_gives_pytorchs_logits(fixture, name):
    net = fixture[name]
    model = build_model(MODELS[name], CLASSES)
    variables = pretrained.from_torch(net["state_dict"], model, (36, 36, 3))
    layers = _forward(model, variables, net["input"])
    scale = np.abs(net["logits"]).max()
    np.testing.assert_allclose(layers["logits"], net["logits"], rtol=0, atol=2e-5 * scale)
    np.testing.assert_allclose(layers["features"], net["features"], rtol=0,
                               atol=2e-5 * np.abs(net["features"]).max())


def test_converted_vgg_gives_pytorchs_features_with_its_conv_biases_folded(fixture):
    net = fixture["vgg"]
    model = build_model(MODELS["vgg"], CLASSES)
    with pytest.raises(ValueError, match="classifier.*load_classifier=False"):
        pretrained.from_torch(net["state_dict"], model, (36, 36, 3))
    variables = pretrained.from_torch(net["state_dict"], model, (36, 36, 3),
                                      exclude=("classifier",))
    assert "classifier" not in variables["params"]
    fresh = _fresh(model)
    layers = _forward(model, pretrained.overwrite(fresh, variables), net["input"])
    np.testing.assert_allclose(layers["features"], net["features"], rtol=0,
                               atol=2e-5 * np.abs(net["features"]).max())
    # The biases are not zero, so the fold matters: without it the features differ.
    state = dict(net["state_dict"], **{k: 0 * v for k, v in net["state_dict"].items()
                                       if k.endswith(".bias") and "features.0." in k})
    unfolded = pretrained.overwrite(fresh, pretrained.from_torch(
        state, model, (36, 36, 3), exclude=("classifier",)))
    assert np.abs(_forward(model, unfolded, net["input"])["features"]
                  - net["features"]).max() > 1e-3


def test_all_but_the_classifier_loads_into_a_model_of_other_classes(fixture):
    net = fixture["basic"]
    model = build_model(MODELS["basic"], 3)
    with pytest.raises(ValueError, match=r"fc\.weight \(the model's params/fc/kernel\) has "
                                         r"shape \(7, 32\) \(\(32, 7\) laid out as the "
                                         r"model's\) and the model's has \(32, 3\)"):
        pretrained.from_torch(net["state_dict"], model, (36, 36, 3))
    variables = pretrained.from_torch(net["state_dict"], model, (36, 36, 3), exclude=("fc",))
    assert "fc" not in variables["params"]
    fresh = _fresh(model)
    layers = _forward(model, pretrained.overwrite(fresh, variables), net["input"])
    np.testing.assert_allclose(layers["features"], net["features"], rtol=0,
                               atol=2e-5 * np.abs(net["features"]).max())


def test_weights_that_do_not_fit_name_the_first_misfit(fixture):
    weights = fixture["basic"]["state_dict"]
    wider = build_model(dict(MODELS["basic"], base_channels=8), CLASSES)
    with pytest.raises(ValueError, match=r"conv1\.weight \(the model's params/conv1/kernel\) "
                                         r"has shape \(4, 3, 7, 7\) \(\(7, 7, 3, 4\) laid out "
                                         r"as the model's\) and the model's has \(7, 7, 3, 8\)"):
        pretrained.from_torch(weights, wider, (36, 36, 3))
    shallower = build_model(dict(MODELS["basic"], stage_sizes=(1, 1, 1, 1)), CLASSES)
    with pytest.raises(ValueError, match=r"has layer1\.1\.\S+ \(shape \(4, ?\S*\)\), which "
                                         r"the model lacks \(10 such tensors\)"):
        pretrained.from_torch(weights, shallower, (36, 36, 3))
    deeper = build_model(dict(MODELS["basic"], stage_sizes=(2, 2, 1, 1)), CLASSES)
    with pytest.raises(ValueError, match=r"has no layer2\.1\.conv1\.weight"):
        pretrained.from_torch(weights, deeper, (36, 36, 3))
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        pretrained.from_torch(weights, build_model(dict(name="wrn", depth=10, width=1), 7),
                              (8, 8, 3))


def test_a_torch_file_without_pytorch_says_how_to_convert_it(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "resnet34.pth"
    path.write_bytes(b"not read")
    try:
        import torch  # noqa: F401
        pytest.skip("PyTorch is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="PyTorch is not installed.*safetensors"):
        pretrained.read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.read_state_dict(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("config,shape", [
    (dict(name="wrn", depth=10, width=1), (8, 8, 3)),
    (dict(name="resnet18", base_channels=2), (32, 32, 3)),
    (dict(name="resnet8"), (8, 8, 3)),
    (dict(name="vgg", config=((4,),)), (8, 8, 3)),
    (dict(name="mlp", hidden_sizes=(4,)), (4, 4, 1))])
def test_each_models_classifier_is_the_module_that_makes_its_logits(config, shape):
    """What `init_from.load_classifier=False` leaves out: `CLASSIFIER` names a top-level
    module whose kernel has one column per class."""
    model = build_model(config, 5)
    params = pretrained.model_template(model, shape)["params"]
    assert params[type(model).CLASSIFIER]["kernel"].shape[-1] == 5
