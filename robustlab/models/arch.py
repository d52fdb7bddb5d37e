"""Architectures: the zoo's small Fashion-MNIST networks and standard 32x32 ResNets."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@contextlib.contextmanager
def seeded_weights(seed: int) -> Iterator[None]:
    """Modules built (or ``reset_parameters``-ed) inside draw their weights from ``seed`` on the CPU generator,
    forked: the caller's random state (CPU and CUDA) is as it was afterwards. Build on the CPU, then move, so the
    weights do not depend on the device."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield


class SmallCNN(nn.Module):
    """Two conv-pool blocks and a 128-unit head: the zoo's Fashion-MNIST/MNIST workhorse (~0.4 M params)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.feature_dim = 128
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, 128), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(128, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.embed(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


class MLP(nn.Module):
    """A two-hidden-layer perceptron: a differently built model for transfer experiments."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, hidden: int = 256, image_size: int = 28) -> None:
        super().__init__()
        self.feature_dim = hidden
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ResNet32(nn.Module):
    """ResNet-18 layout for 32x32 inputs (3x3 stem, no max-pool), pre-activation or not."""

    def __init__(self, block: type[nn.Module], preact: bool, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [block(in_planes, planes, stride), block(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = 512
        self.fc = nn.Linear(512, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layers(out if self.preact else F.relu(self.bn1(out)))
        if self.preact:
            out = F.relu(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def preact_resnet18(in_channels: int = 3, num_classes: int = 10, **_: object) -> nn.Module:
    """PreActResNet-18 (He et al. 2016), the fast-AT papers' CIFAR-10 model."""
    model = _ResNet32(PreActBlock, preact=True, in_channels=in_channels, num_classes=num_classes)
    model.bn1 = nn.BatchNorm2d(512)
    return model


def resnet18(in_channels: int = 3, num_classes: int = 10, **_: object) -> nn.Module:
    """ResNet-18 for 32x32 inputs (the SSL papers' CIFAR-10 backbone)."""
    return _ResNet32(BasicBlock, preact=False, in_channels=in_channels, num_classes=num_classes)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "mlp": MLP,
    "preact-resnet18": preact_resnet18,
    "resnet18": resnet18,
}
