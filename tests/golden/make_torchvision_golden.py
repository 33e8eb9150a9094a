"""Writes tests/data/torchvision_golden.safetensors: small networks in torchvision's layer names,
random weights and BatchNorm statistics, with an input and what PyTorch computes from it, for
tests/test_pretrained.py (which converts the weights with vid_jax.pretrained, no PyTorch).

PyTorch is never a dependency of vid-jax; this script runs in a virtual environment of its own
(from the repository root):

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install torch numpy safetensors    # or a local torch wheel
    .venv-torch/bin/python tests/golden/make_torchvision_golden.py

torchvision itself is not needed: the networks below are written in plain PyTorch with
torchvision's module names and structure (torchvision/models/resnet.py, vgg.py: conv1, bn1,
maxpool, layer{k}.{i}.conv{j}/bn{j}/downsample.{0,1}, fc; features.{n} of VGG-BN), at small
widths so that the fixture stays small:

  basic       ResNet of BasicBlocks, stage sizes (2, 1, 1, 1), base width 4, 7 classes
  bottleneck  ResNet of Bottlenecks (stride on the 3x3, torchvision's "v1.5"), stage sizes
              (1, 1, 1, 1), base width 2, 7 classes
  vgg         VGG-BN of blocks [4], [8], [8, 8] (convolutions with bias, as torchvision's),
              then global average pooling (vid-jax's VGG head; torchvision's classifier does
              not fit it), whose output ("features") is compared

Every weight, BatchNorm scale, bias, running mean and running variance is random (a fixed
seed), so that a transposed kernel or a swapped statistic shows. Inputs are [2, 3, 36, 36]
(odd sizes after the stem test PyTorch's floor in strides and pooling). Keys: each network's
state dict under `<net>.` (as torchvision names it, num_batches_tracked included) and
`golden.<net>.input` (NCHW), `golden.<net>.logits` / `golden.<net>.features`, computed in
eval mode in float64 from the float32 weights.
"""
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

SEED = 0
CLASSES = 7
INPUT = (2, 3, 36, 36)
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                   "torchvision_golden.safetensors")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with a base width other than 64."""

    def __init__(self, block, layers, width, num_classes):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for k, blocks in enumerate(layers, start=1):
            setattr(self, f"layer{k}", self._make_layer(block, width * 2 ** (k - 1), blocks,
                                                        1 if k == 1 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        self.num_stages = len(layers)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)
        features = torch.flatten(self.avgpool(x), 1)
        return self.fc(features), features


class VGGFeatures(nn.Module):
    """torchvision's VGG-BN `features` (make_layers(cfg, batch_norm=True)), then global
    average pooling."""

    def __init__(self, blocks):
        super().__init__()
        layers, in_channels = [], 3
        for block in blocks:
            for channels in block:
                layers += [nn.Conv2d(in_channels, channels, 3, padding=1),
                           nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
                in_channels = channels
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return None, self.features(x).mean(dim=(2, 3))


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights, biases and BatchNorm statistics (eval mode uses the statistics)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=generator)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.5, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
                m.running_mean.normal_(0.0, 0.3, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.num_batches_tracked.fill_(7)


def main() -> None:
    generator = torch.Generator().manual_seed(SEED)
    networks = {
        "basic": ResNet(BasicBlock, (2, 1, 1, 1), 4, CLASSES),
        "bottleneck": ResNet(Bottleneck, (1, 1, 1, 1), 2, CLASSES),
        "vgg": VGGFeatures(((4,), (8,), (8, 8))),
    }
    tensors = {}
    for name, net in networks.items():
        randomise(net, generator)
        net.eval()
        x = torch.randn(INPUT, generator=generator)
        for key, value in net.state_dict().items():
            tensors[f"{name}.{key}"] = value.numpy()
        with torch.no_grad():  # float64 from exactly the stored float32 numbers
            logits, features = net.double()(x.double())
        tensors[f"golden.{name}.input"] = x.numpy()
        tensors[f"golden.{name}.features"] = features.numpy()
        if logits is not None:
            tensors[f"golden.{name}.logits"] = logits.numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, OUT,
              metadata={"torch": torch.__version__, "script": os.path.basename(__file__)})
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
