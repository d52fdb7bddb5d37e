"""Shared fixtures: the zoo models and small real Fashion-MNIST batches."""

from __future__ import annotations

import pytest
import torch

from robustlab.data import load_dataset
from robustlab.models import load_model


@pytest.fixture(scope="session")
def fmnist_test():
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def fmnist_batch(fmnist_test):
    """The first 500 Fashion-MNIST test images and labels."""

    def take(n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        return fmnist_test.images[:n].float() / 255, fmnist_test.labels[:n].clone()

    return take


@pytest.fixture(scope="session")
def zoo_cnn():
    return load_model("zoo:fmnist-cnn")


@pytest.fixture(scope="session")
def zoo_mlp():
    return load_model("zoo:fmnist-mlp")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op CPU thread (restored afterwards): for small tensors on a small, shared CPU, more threads only
    contend. Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
