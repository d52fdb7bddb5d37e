"""The encoder view of any classifier (its penultimate feature), SimCLR's projector, and the classifier file.

The encoder of a classifier is its penultimate feature (``forward_features`` of the robustlab architectures, the
input of ``.fc`` for torchvision ResNets); the classifier itself, head included, is what is saved, so an encoder
checkpoint is also a classifier checkpoint and fine-tuning only swaps the head.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.models import Normalize, seeded_weights


def classifier_head(net: nn.Module) -> nn.Linear:
    """The linear head ``.fc`` of a classifier (inside a :class:`Normalize` wrapper if there is one)."""
    inner = net.model if isinstance(net, Normalize) else net
    head = getattr(inner, "fc", None)
    if not isinstance(head, nn.Linear):
        raise RobustlabError(
            f"{type(inner).__name__} has no linear head .fc; an encoder must be a classifier whose last layer is "
            "a torch.nn.Linear named fc (the robustlab architectures, torchvision ResNets)"
        )
    return head


def replace_head(net: nn.Module, num_classes: int, seed: int = 0) -> nn.Linear:
    """Give the classifier a fresh linear head with ``num_classes`` outputs (same device), drawn from ``seed``
    (the global RNG is untouched, so the same seed gives the same head); returns it."""
    inner = net.model if isinstance(net, Normalize) else net
    old = classifier_head(net)
    with seeded_weights(seed):
        head = nn.Linear(old.in_features, num_classes)
    inner.fc = head.to(old.weight.device)
    return inner.fc


class Encoder(nn.Module):
    """The feature extractor of a classifier: [0, 1] pixels -> penultimate features ``(N, feature_dim)``.

    The classifier's head is not part of the encoder, so its parameters are frozen here (DDP would otherwise
    wait for their gradients); :func:`replace_head` gives fine-tuning a fresh, trainable head.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        head = classifier_head(net)
        head.requires_grad_(False)
        self.feature_dim = head.in_features
        inner = net.model if isinstance(net, Normalize) else net
        self._native = hasattr(inner, "forward_features")

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        if isinstance(net, Normalize):
            x = (x - net.mean) / net.std
            net = net.model
        if self._native:
            return net.forward_features(x)
        captured: list[Tensor] = []
        hook = net.fc.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            net(x)
        finally:
            hook.remove()
        return captured[0].flatten(1)


class Projector(nn.Sequential):
    """SimCLR's projection MLP: Linear -> BatchNorm -> ReLU -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class SSLModel(nn.Module):
    """Encoder + projector: what contrastive SSL trains; ``forward`` returns the projections."""

    def __init__(self, net: nn.Module, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.encoder = Encoder(net)
        self.projector = Projector(self.encoder.feature_dim, hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))


def load_projector(spec: str | os.PathLike, trust_checkpoint: bool = False) -> Projector:
    """The SSL projector of a ``robustlab ssl`` run (``spec``: its run folder or its model.pt), in eval mode, read
    from the run's training checkpoint ``last.pt`` (model.pt holds the encoder's classifier only); one line where
    there is none (a zoo model, a lone model file, a supervised run)."""
    from robustlab.safe_load import safe_load

    path = Path(spec)
    ckpt = path / "last.pt" if path.is_dir() else path.parent / "last.pt"
    state: dict[str, Any] = {}
    if path.exists() and ckpt.is_file():
        saved = safe_load(ckpt, trust_checkpoint, what="the teacher's training checkpoint")
        model = saved.get("model") if isinstance(saved, dict) else None
        prefix = "projector."
        state = {k[len(prefix) :]: v for k, v in (model or {}).items() if k.startswith(prefix)}
    if not {"0.weight", "3.weight"} <= set(state):
        raise RobustlabError(
            f"teacher {str(spec)!r} has no SSL projector (a robustlab ssl run folder keeps it in last.pt); give the "
            "teacher's ssl run folder, or drop the projector option"
        )
    hidden_dim, in_dim = state["0.weight"].shape
    projector = Projector(in_dim, hidden_dim, state["3.weight"].shape[0])
    projector.load_state_dict(state)
    return projector.eval()


def save_classifier(
    path: str | os.PathLike, net: nn.Module, arch: str | None, dataset: str | None, **meta: Any
) -> None:
    """Save a classifier as robustlab's one model file (``robustlab.models.save_model``; ``load_model`` reads it)."""
    from robustlab.models import save_model

    save_model(path, net, arch, dataset=dataset, **meta)


__all__ = [
    "Encoder",
    "Projector",
    "SSLModel",
    "classifier_head",
    "load_projector",
    "replace_head",
    "save_classifier",
]
