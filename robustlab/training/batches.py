"""Batches of a training set in the order of a DistributedSampler: a function of (seed, epoch), so resume needs no
state. In-memory datasets (``.images`` uint8 + ``.labels``, or a Subset of one) are sliced directly."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


class Batches:
    """``batches.epoch(e)`` yields this rank's ``(images, labels)`` batches of epoch ``e``; ``len`` is the steps per
    epoch."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        max_steps: int | None = None,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.max_steps, self.num_workers = max_steps, num_workers
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.images, self.labels = in_memory(dataset)

    def __len__(self) -> int:
        n, b = len(self.sampler), self.batch_size
        steps = n // b if self.drop_last else math.ceil(n / b)
        return min(steps, self.max_steps or steps)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.set_epoch(epoch)
        indices = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        b = self.batch_size
        if self.images is None:
            loader = DataLoader(
                self.dataset, batch_size=b, sampler=indices.tolist(), num_workers=self.num_workers,
                drop_last=self.drop_last,
            )  # fmt: skip
            for i, batch in enumerate(loader):
                if i >= len(self):
                    return
                yield batch[0], batch[1]
            return
        for i in range(len(self)):
            images = self.images[indices[i * b : (i + 1) * b]]
            x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
            yield x, self.labels[indices[i * b : (i + 1) * b]]


def in_memory(dataset: Dataset) -> tuple[Tensor | None, Tensor | None]:
    """``(images, labels)`` tensors behind an in-memory dataset (or a Subset of one), else ``(None, None)``."""
    if isinstance(dataset, Subset):
        images, labels = in_memory(dataset.dataset)
        if images is None or labels is None:
            return None, None
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return images[idx], labels[idx]
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, Tensor) and isinstance(labels, Tensor):
        return images, labels.long()
    return None, None
