"""Contrastive losses: SimCLR's InfoNCE and SimCo's dual-temperature InfoNCE, with negatives gathered across DDP
ranks (gradients flow back to every rank)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


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


__all__ = ["gather_with_grad", "info_nce", "simco_loss"]
