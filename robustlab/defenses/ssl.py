"""Self-supervised teachers: an encoder view of any classifier, a projector, SSL augmentations on tensors,
SimCLR (InfoNCE) and SimCo (dual temperature) losses that gather negatives across DDP ranks, a kNN monitor.

The encoder of a classifier is its penultimate feature (``forward_features`` of the robustlab architectures,
the input of ``.fc`` for torchvision ResNets); the classifier itself, head included, is what is saved, so an
encoder checkpoint is also a classifier checkpoint and ``robustlab finetune`` only swaps the head.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.defenses.loop import SeededMethod, TrainContext
from robustlab.distributed import unwrap
from robustlab.errors import RobustlabError
from robustlab.models import Normalize, load_model, seeded_weights
from robustlab.models.loader import load_checkpoint

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- encoders


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


def save_classifier(
    path: str | os.PathLike, net: nn.Module, arch: str | None, dataset: str | None, **meta: Any
) -> None:
    """Save a classifier as ``{"model_state", "arch", "dataset", ...}`` (loadable by :func:`resolve_model`)."""
    from robustlab.io import atomic_torch_save

    head = classifier_head(net)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_torch_save(
        {"model_state": state, "arch": arch, "dataset": dataset, "num_classes": head.out_features, **meta}, path
    )


def resolve_model(
    spec: str, checkpoint: str | None = None, trust: bool = False, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a classifier from a :func:`robustlab.models.load_model` spec, or from a run folder of
    ``robustlab ssl``/``deacl``/``pseudo-at``/``finetune`` (its ``model.pt``)."""
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "model.pt")):
        spec = os.path.join(spec, "model.pt")
    return load_model(spec, checkpoint, trust, device=device)


def model_arch(spec: str, net: nn.Module) -> tuple[str | None, str | None]:
    """The ``(arch, dataset)`` a model was built from, where robustlab knows it (zoo or own checkpoint)."""
    from robustlab.models import zoo_index

    if spec.startswith("zoo:") and spec[4:] in zoo_index():
        meta = zoo_index()[spec[4:]]
        return meta["arch"], meta["dataset"]
    path = os.path.join(spec, "model.pt") if os.path.isdir(spec) else spec
    if os.path.isfile(path):
        with contextlib.suppress(RobustlabError):
            obj = load_checkpoint(path)
            if isinstance(obj, dict):
                return obj.get("arch"), obj.get("dataset")
    return None, None


# ---------------------------------------------------------------------------------------------- augmentations


AUGMENT_STRENGTHS = ("strong", "weak", "none")


class Augment:
    """Batched SSL augmentations on [0, 1] tensors: random resized crop, horizontal flip, and (strong only)
    brightness/contrast jitter and random grayscale; every random draw comes from the passed generator.

    ``strength="strong"`` is SimCLR's recipe; ``"weak"`` (crop + flip) is DeACL's stage-2 augmentation.
    """

    def __init__(
        self,
        strength: str = "strong",
        crop_scale: tuple[float, float] | None = None,
        jitter: float = 0.4,
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
    ) -> None:
        if strength not in AUGMENT_STRENGTHS:
            raise RobustlabError(
                f"unknown augmentation strength {strength!r}; choose one of: {', '.join(AUGMENT_STRENGTHS)}"
            )
        self.strength = strength
        self.crop_scale = crop_scale or ((0.2, 1.0) if strength == "strong" else (0.6, 1.0))
        self.jitter, self.jitter_prob, self.gray_prob = jitter, jitter_prob, gray_prob

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.strength == "none":
            return x
        x = self.crop_flip(x, generator)
        if self.strength == "strong":
            x = self.color(x, generator)
        return x

    def _rand(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return torch.rand(n, generator=generator, device=generator.device).to(device)

    def crop_flip(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random resized crop (area in ``crop_scale``, aspect 3/4..4/3) and a horizontal flip with p = 0.5."""
        n, dev = x.shape[0], x.device
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * self._rand(n, generator, dev)
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * self._rand(n, generator, dev)
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (1 - w) * (2 * self._rand(n, generator, dev) - 1)
        cy = (1 - h) * (2 * self._rand(n, generator, dev) - 1)
        flip = torch.where(self._rand(n, generator, dev) < 0.5, -1.0, 1.0).to(dev)
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def color(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Brightness and contrast jitter (with probability ``jitter_prob``), then random grayscale."""
        n, dev = x.shape[0], x.device
        shape = (n,) + (1,) * (x.dim() - 1)
        apply = (self._rand(n, generator, dev) < self.jitter_prob).view(shape)
        brightness = (1 + self.jitter * (2 * self._rand(n, generator, dev) - 1)).view(shape)
        contrast = (1 + self.jitter * (2 * self._rand(n, generator, dev) - 1)).view(shape)
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        jittered = ((x * brightness - mean * brightness) * contrast + mean * brightness).clamp(0, 1)
        x = torch.where(apply, jittered, x)
        if x.shape[1] == 3:
            gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
            x = torch.where((self._rand(n, generator, dev) < self.gray_prob).view(shape), gray, x)
        return x


# ---------------------------------------------------------------------------------------------- losses


def gather_with_grad(z: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows of ``z`` (gradients flow back to every rank) and this rank's offset in them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated upstream in favour of a private API; still the autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(z.contiguous())
    return torch.cat(parts), dist.get_rank() * z.shape[0]


def _pair_logits(z1: Tensor, z2: Tensor, gather: bool) -> tuple[Tensor, Tensor]:
    """Cosine similarities of the 2B local views to all 2B*world views (self masked) and the positives' columns."""
    b = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]), dim=1)
    everything, offset = gather_with_grad(local) if gather else (local, 0)
    sim = local @ everything.T
    rows = torch.arange(2 * b, device=z1.device)
    sim[rows, offset + rows] = float("-inf")  # a view is not its own negative
    positives = offset + (rows + b) % (2 * b)
    return sim, positives


def info_nce(z1: Tensor, z2: Tensor, temperature: float = 0.2, gather: bool = True) -> Tensor:
    """SimCLR's NT-Xent (InfoNCE) over both views; negatives are all other views, on every DDP rank."""
    sim, positives = _pair_logits(z1, z2, gather)
    return F.cross_entropy(sim / temperature, positives)


def simco_loss(z1: Tensor, z2: Tensor, tau_alpha: float = 0.1, tau_beta: float = 1.0, gather: bool = True) -> Tensor:
    """SimCo's dual-temperature InfoNCE: ``sg[(1 - P^beta_ii) / (1 - P^alpha_ii)] * (-log P^alpha_ii)``.

    With ``tau_beta == tau_alpha`` the weight is 1 and this is :func:`info_nce` at ``tau_alpha``.
    """
    sim, positives = _pair_logits(z1, z2, gather)
    log_p_alpha = F.log_softmax(sim / tau_alpha, dim=1).gather(1, positives[:, None]).squeeze(1)
    with torch.no_grad():
        p_beta = F.softmax(sim / tau_beta, dim=1).gather(1, positives[:, None]).squeeze(1)
        weight = (1 - p_beta) / (1 - log_p_alpha.exp()).clamp_min(1e-12)
    return (weight * -log_p_alpha).mean()


# ---------------------------------------------------------------------------------------------- methods


class ContrastiveSSL(SeededMethod):
    """SimCLR (``tau_beta=None``) or SimCo: a training :class:`Method` for :class:`SSLModel` (labels unused).

    Both views of a batch go through the model in one forward pass (one DDP forward per step).
    """

    def __init__(
        self,
        method: str = "simclr",
        temperature: float = 0.2,
        tau_beta: float | None = None,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        if method not in ("simclr", "simco"):
            raise RobustlabError(f"unknown SSL method {method!r}; choose simclr or simco")
        self.name = method
        self.temperature = temperature
        self.tau_beta = (1.0 if tau_beta is None else tau_beta) if method == "simco" else None
        self.augment = augment or Augment("strong")
        self.seed = seed

    def views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = self.generator(x.device)
        return self.augment(x, g), self.augment(x, g)

    def loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        if self.tau_beta is None:
            return info_nce(z1, z2, self.temperature)
        return simco_loss(z1, z2, self.temperature, self.tau_beta)

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Two augmented views, one forward pass, the contrastive loss."""
        v1, v2 = self.views(x)
        z = model(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        loss = self.loss(z1, z2)
        with torch.no_grad():
            alignment = F.cosine_similarity(z1, z2).mean().item()
        return loss, {"loss": loss.item(), "positive_cos": alignment}


# ---------------------------------------------------------------------------------------------- monitor


@torch.no_grad()
def embed(encoder: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """L2-normalised features of ``x``, in batches, without gradients."""
    device = next(encoder.parameters()).device
    feats = [F.normalize(encoder(x[i : i + batch_size].to(device)), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(feats)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode, restore every submodule's mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def knn_accuracy(
    encoder: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Weighted kNN accuracy on cosine similarity (Wu et al. 2018): the SSL monitor; labels only evaluate."""
    with eval_mode(encoder):
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


class KNNMonitor:
    """Training-loop callback: the kNN accuracy of the encoder after each epoch, as ``knn_accuracy`` in the
    epoch's stats (a small labelled train/test split that only monitors; training never sees the labels)."""

    def __init__(self, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], k: int = 20) -> None:
        self.train, self.test, self.k = train, test, k

    def measure(self, model: nn.Module) -> float:
        model = unwrap(model)
        encoder = model.encoder if isinstance(model, SSLModel) else model
        return knn_accuracy(encoder, self.train, self.test, self.k)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        ctx.stats["knn_accuracy"] = self.measure(ctx.model)


__all__ = [
    "AUGMENT_STRENGTHS",
    "Augment",
    "ContrastiveSSL",
    "Encoder",
    "KNNMonitor",
    "Projector",
    "SSLModel",
    "classifier_head",
    "eval_mode",
    "gather_with_grad",
    "info_nce",
    "knn_accuracy",
    "replace_head",
    "resolve_model",
    "save_classifier",
    "simco_loss",
]
