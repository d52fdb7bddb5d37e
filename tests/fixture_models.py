"""Small models for tests, importable as ``fixture_models:NAME`` (tests/ is on sys.path under pytest)."""

import torch
from torch import nn

from robustlab.training import Callback


class FlatFeatures(nn.Module):
    """Not a classifier: returns a 4-D feature map instead of (N, classes) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def feature_map() -> nn.Module:
    return FlatFeatures()


def five_classes() -> nn.Module:
    """A classifier with 5 outputs: Fashion-MNIST labels 5..9 are out of its range."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))


def linear_fmnist() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def rounding_cnn(levels: int = 4) -> nn.Module:
    """zoo:fmnist-cnn behind ``round(levels * x) / levels`` (module ``preprocess``): zero input gradients."""
    from robustlab.models import load_model
    from robustlab.models.preprocess import Quantize, defended

    return defended(load_model("zoo:fmnist-cnn"), Quantize(levels))


def noisy_cnn(sigma: float = 0.3) -> nn.Module:
    """zoo:fmnist-cnn with Gaussian noise of std ``sigma`` on the input at every forward pass."""
    from robustlab.models import load_model
    from robustlab.models.preprocess import GaussianNoise, defended

    return defended(load_model("zoo:fmnist-cnn"), GaussianNoise(sigma))


class KillAfterEpoch(Callback):
    """A training callback that simulates a kill: raises KeyboardInterrupt after epoch ``at`` ended (its records
    are written, its checkpoint is not), so a test can resume and compare with an uninterrupted run."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_epoch_end(self, ctx):
        if ctx.epoch == self.at:
            raise KeyboardInterrupt
