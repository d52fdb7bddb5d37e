"""The SSL monitor: weighted kNN accuracy of the encoder's features (labels only evaluate, training never sees them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.models.mode import temporary_mode
from robustlab.ssl.encoder import SSLModel
from robustlab.training.context import Callback, TrainContext


@torch.no_grad()
def embed(encoder: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """L2-normalised features of ``x``, in batches, without gradients."""
    device = next(encoder.parameters()).device
    feats = [F.normalize(encoder(x[i : i + batch_size].to(device)), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(feats)


def knn_accuracy(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Weighted kNN accuracy on cosine similarity (Wu et al. 2018): the SSL monitor; labels only evaluate."""
    with temporary_mode(encoder, training=False):
        bank, query = embed(encoder, train[0]), embed(encoder, test[0])
    bank_labels = train[1].to(bank.device)
    classes = num_classes or int(bank_labels.max()) + 1
    correct = 0
    for i in range(0, len(query), 512):
        sim = query[i : i + 512] @ bank.T
        top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
        votes = torch.zeros(top.shape[0], classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
        correct += (votes.argmax(1).cpu() == test[1][i : i + 512]).sum().item()
    return correct / len(query)


class KNNMonitor(Callback):
    """Training-loop callback: the kNN accuracy of the encoder after each epoch, as ``knn_accuracy`` in the
    epoch's stats (a small labelled train/test split that only monitors; training never sees the labels)."""

    def __init__(self, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], k: int = 20) -> None:
        self.train, self.test, self.k = train, test, k

    @classmethod
    def from_datasets(cls, train: Dataset, test: Dataset, n: int, k: int = 20) -> KNNMonitor:
        """The monitor on the first ``n`` labelled train items (more than the split holds is refused in one line,
        so the ``--knn-n`` recorded is the number used) and the first ``max(n // 4, 100)`` test items (at most
        all of them)."""
        if n > len(train):  # type: ignore[arg-type]
            raise RobustlabError(
                f"--knn-n {n} is more than the {len(train)} labelled train items; give at most {len(train)} "  # type: ignore[arg-type]
                "(0 turns the kNN monitor off)"
            )
        return cls(first_items(train, n), first_items(test, min(max(n // 4, 100), len(test))), k)  # type: ignore[arg-type]

    def measure(self, model: nn.Module) -> float:
        model = unwrap(model)
        encoder = model.encoder if isinstance(model, SSLModel) else model
        return knn_accuracy(encoder, self.train, self.test, self.k)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        ctx.stats["knn_accuracy"] = self.measure(ctx.model)


def first_items(dataset: Dataset, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` items of ``dataset`` as ``(images, labels)`` tensors."""
    images, labels = default_collate([dataset[i] for i in range(n)])
    return images, torch.as_tensor(labels)


__all__ = ["KNNMonitor", "embed", "first_items", "knn_accuracy"]
