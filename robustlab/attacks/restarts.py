"""Restarts as rows of one batch around the gradient loop, the per-sample choice among restarts, keyed random starts.

R restarts of N samples run as one batch of R * N rows where ``restart_batch`` allows (the per-step Python
overhead is paid once, which is what small models spend their time on); per sample the same choice as restarts
run one after another: the first success, else the higher attack objective (an earlier restart on a tie). With
early stopping all rows of a sample leave once one of them breaks, so the success kept is the first in time.
Each restart's keyed random starts: a sample's start depends on its content and the restart's salt alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from robustlab.attacks.protocol import AttackResult
from robustlab.threat import LOW_PRECISION, ThreatModel


def restart_groups(restarts: int, samples: int, restart_batch: int) -> list[int]:
    """How many restarts each batch holds: as many as fit ``restart_batch`` rows (at least one per batch)."""
    per_batch = max(1, min(restarts, restart_batch // max(samples, 1)))
    return [min(per_batch, restarts - done) for done in range(0, restarts, per_batch)]


def best_of_restarts(
    attempt: Callable[[int], AttackResult], restarts: int, samples: int, restart_batch: int, sign: float
) -> AttackResult:
    """The restart wrapper: ``attempt(rows)`` runs ``rows`` restarts as one batch (:func:`restart_groups`); per sample
    the first success, else the highest objective (:func:`pick`); no further group once every sample broke."""
    best: AttackResult | None = None
    for rows in restart_groups(restarts, samples, restart_batch):
        group = attempt(rows)
        best = group if best is None else pick(best, group, sign)
        if bool(best.success.all()):
            break
    assert best is not None
    return best


def stack_rows(t: Tensor, rows: int) -> Tensor:
    """``rows`` copies of ``t`` along the batch dimension (restart ``r``'s rows ``r * N ... r * N + N - 1``)."""
    return t if rows == 1 else t.repeat(rows, *([1] * (t.dim() - 1)))


def pick(best: AttackResult, run: AttackResult, sign: float) -> AttackResult:
    """Per sample: the first success wins; between failures, the higher attack objective (``best`` on a tie), so a
    sample's pick does not depend on whether the others succeeded."""
    better = (run.success & ~best.success) | (~run.success & ~best.success & (sign * run.loss > sign * best.loss))
    take = better.view(-1, *([1] * (best.x_adv.dim() - 1)))
    return AttackResult(
        torch.where(take, run.x_adv, best.x_adv),
        torch.where(better, run.success, best.success),
        torch.where(better, run.loss, best.loss),
        torch.where(better[:, None], run.logits, best.logits),
    )


def pick_rows(rows: AttackResult, restarts: int, sign: float) -> AttackResult:
    """Collapse ``restarts`` stacked runs (rows ``r * N + i``) to one per sample, as :func:`pick` would in order."""
    n = rows.success.shape[0] // restarts
    success = rows.success.view(restarts, n)
    objective = (sign * rows.loss).view(restarts, n)
    # the first successful restart if any (argmax: the first True), else the highest objective (the first on a tie)
    first = success.to(torch.uint8).argmax(0)
    row = torch.where(success.any(0), first, objective.argmax(0)) * n + torch.arange(n, device=success.device)
    return AttackResult(rows.x_adv[row], rows.success[row], rows.loss[row], rows.logits[row])


def keyed_starts(x: Tensor, threat: ThreatModel, salt: int, l2_radius: str) -> Tensor:
    """One random start per sample, drawn from a generator seeded by the sample's content and ``salt`` (one draw of
    the attack's generator per restart), so a sample's start does not depend on the rest of the batch."""
    own = torch.Generator(device=x.device)
    keys = [(key ^ salt) % (2**63) for key in sample_keys(x).tolist()]
    if threat.norm == "linf" and x.dtype not in LOW_PRECISION and keys:  # random_start's draws, one clip (speed)
        u = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        for row, key in zip(u.unbind(0), keys):  # torch.rand per sample, drawn in place (no stack)
            row.uniform_(generator=own.manual_seed(key))
        return threat.clip(u.mul_(2).sub_(1).mul_(threat.eps).add_(x))  # x + (2u - 1) eps, in place
    starts = [threat.random_start(x[i : i + 1], own.manual_seed(k), l2_radius) for i, k in enumerate(keys)]
    return torch.cat(starts) if starts else x.clone()


def sample_keys(x: Tensor) -> Tensor:
    """A 62-bit integer per sample from its content, by exact arithmetic, so independent of the batch: the pixels
    quantised to 1/65536, two weighted sums (a float64 matrix product while every partial sum is an integer below
    2**53, else int64), mixed."""
    q = (x.detach().flatten(1).float() * 65536).round_().cpu()
    weights = _key_weights(q.shape[1])
    if q.numel() and float(torch.stack(torch.aminmax(q)).abs().max()) * _KEY_WEIGHT_MAX * q.shape[1] < 2.0**53:
        sums = (q.double() @ weights.double()).long()
    else:
        sums = (q.long()[:, :, None] * weights[None]).sum(1)
    return (sums[:, 0] * 2654435761 + sums[:, 1]) % (2**62)


_KEY_WEIGHT_MAX = 2**18


@functools.cache
def _key_weights(dim: int) -> Tensor:
    return torch.randint(1, _KEY_WEIGHT_MAX, (dim, 2), generator=torch.Generator().manual_seed(12345))


__all__ = [
    "best_of_restarts",
    "keyed_starts",
    "pick",
    "pick_rows",
    "restart_groups",
    "sample_keys",
    "stack_rows",
]
