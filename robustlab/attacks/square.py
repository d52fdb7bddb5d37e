"""Square Attack (Andriushchenko et al. 2020): a black-box random search over square-shaped updates, Linf and L2.

Each query changes one random square window of the current best perturbation; a change that raises the margin loss
(or breaks the sample) is kept. The window side follows the paper's p-schedule, rescaled to the query budget, so a
short run shrinks its squares too. A sample leaves as soon as it breaks and is queried no more. Every random draw
of a sample comes from a counter-based generator keyed by the sample's content and the seed, so its result does not
depend on the batch it is in (the ``per_sample`` contract of the evaluator).
"""

from __future__ import annotations

import functools
import math
import time

import torch
from torch import Tensor, nn

from robustlab.attacks import options
from robustlab.attacks.protocol import (
    AttackBase,
    AttackResult,
    check_batch,
    check_first_logits,
    model_logits,
    untouched,
)
from robustlab.attacks.restarts import sample_keys
from robustlab.criteria import Criterion, check_criterion
from robustlab.errors import RobustlabError
from robustlab.losses import cw_margin
from robustlab.threat import ThreatModel

# the paper's p-schedule for a 10000-query budget: p_init halves after each of these queries
SCHEDULE_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_M32 = 0xFFFFFFFF


def p_schedule(query: int, n_queries: int, p_init: float) -> float:
    """The fraction of pixels the square changes at ``query`` (0-based): ``p_init`` halved at each breakpoint of
    the paper's 10000-query schedule, the breakpoints rescaled by ``n_queries / 10000``."""
    it = int(query / n_queries * 10000)
    return p_init / 2 ** sum(it > b for b in SCHEDULE_BREAKPOINTS)


def square_side(p: float, n_features: int, channels: int, side: int, minimum: int, odd: bool) -> int:
    """The window side for a fraction ``p`` of the pixels, in ``[minimum, side]`` (``odd`` for L2's pattern)."""
    s = max(int(round(math.sqrt(p * n_features / channels))), minimum)
    s = s + 1 if odd and s % 2 == 0 else s
    return min(s, side)


def _mix32(h: Tensor | int) -> Tensor | int:
    """A 32-bit integer hash (lowbias32) on int64 tensors (or Python ints) holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32  # int64 products wrap; their low 32 bits are exact
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def key_state(keys: Tensor) -> Tensor:
    """Each row's generator state from its 64-bit key (once per run; :func:`keyed_uniform` draws from it)."""
    return _mix32((keys & _M32) ^ _mix32((keys >> 32) & _M32 ^ 0x9E3779B9))


@functools.cache
def _slot_hashes(slots: int, device: torch.device) -> Tensor:
    """The hash of each slot index (the same for every row and counter: computed once)."""
    ids = torch.arange(slots, device=device, dtype=torch.int64)
    return _mix32((ids * 0x9E3779B9 + 0x7F4A7C15) & _M32)


def keyed_uniform(state: Tensor, counter: int, slots: int) -> Tensor:
    """``(N, slots)`` uniform draws in [0, 1) that depend only on each row's :func:`key_state` and ``counter``: a
    counter-based generator (the same draws for a sample whatever else is in its batch)."""
    stream = _mix32(state ^ _mix32(counter & _M32))  # the counter's hash in Python ints: the same bits, no tensor
    bits = _mix32(stream[:, None] ^ _slot_hashes(slots, state.device))
    return (bits >> 8).float() / 2.0**24


def _windows(u_h: Tensor, u_w: Tensor, s: int, h: int, w: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Per row a random ``s x s`` window: each pixel's row and column offsets from its top-left corner, ``(N, h)``
    and ``(N, w)``, and its 0/1 mask ``(N, 1, h, w)`` in ``dtype`` (a float mask multiplies without a cast)."""
    vh = (u_h * (h - s + 1)).long().clamp_(max=h - s)
    vw = (u_w * (w - s + 1)).long().clamp_(max=w - s)
    rows = torch.arange(h, device=u_h.device)[None, :] - vh[:, None]
    cols = torch.arange(w, device=u_h.device)[None, :] - vw[:, None]
    in_rows, in_cols = ((rows >= 0) & (rows < s)).to(dtype), ((cols >= 0) & (cols < s)).to(dtype)
    return rows, cols, (in_rows[:, :, None] * in_cols[:, None, :])[:, None]


@functools.cache
def _l2_pattern(s: int) -> Tensor:
    """The paper's L2 update pattern on an ``s x s`` window: two halves of opposite sign, each a sum of concentric
    rectangles weighted ``1 / (k + 1)^2``, unit L2 norm; stacked with its transpose."""

    def rectangles(a: int, b: int) -> Tensor:
        out = torch.zeros(a, b)
        ca, cb = a // 2, b // 2
        for k in range(max(ca, cb) + 1):
            out[max(ca - k, 0) : min(ca + k + 1, a), max(cb - k, 0) : min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
        return out / out.norm()

    half = s // 2
    pattern = torch.cat([rectangles(half, s), -rectangles(s - half, s)]) if half else -rectangles(s, s)
    pattern = pattern / pattern.norm()
    return torch.stack([pattern, pattern.t()])


def _placed_pattern(s: int, flip: Tensor, rows: Tensor, cols: Tensor, inside: Tensor) -> Tensor:
    """The L2 pattern (transposed where ``flip``) placed in each row's window (offsets and mask of
    :func:`_windows`), zero outside: ``(N, 1, h, w)``."""
    n, h, w = inside.shape[0], inside.shape[2], inside.shape[3]
    pattern = _l2_pattern(s).to(rows.device, inside.dtype)[flip.long()]  # (N, s, s)
    by_row = pattern.gather(1, rows.clamp(0, s - 1)[:, :, None].expand(n, h, s))
    return by_row.gather(2, cols.clamp(0, s - 1)[:, None, :].expand(n, h, w))[:, None] * inside


def _signs(u: Tensor) -> Tensor:
    """+-1 from uniform draws, shaped ``(N, C, 1, 1)``."""
    return (u >= 0.5).float().mul_(2).sub_(1)[:, :, None, None]


def _l2_normalised(delta: Tensor) -> Tensor:
    return delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)


def _merge(best: AttackResult, run: AttackResult, rows: Tensor) -> AttackResult:
    """Take ``run`` (on ``best``'s ``rows``) where it breaks the sample or finds a higher margin."""
    better = run.success | (run.loss > best.loss[rows])
    take = rows[better]
    best.x_adv[take], best.success[take] = run.x_adv[better], run.success[better]
    best.loss[take], best.logits[take] = run.loss[better], run.logits[better]
    return best


class Square(AttackBase):
    """Square Attack: random search with square-shaped updates, ``n_queries`` model queries per sample at most.

    Args:
        n_queries: the query budget per sample and restart (AutoAttack standard: 5000).
        p_init: the fraction of pixels the first squares change (AutoAttack standard: 0.8); it halves on the
            paper's schedule, rescaled to ``n_queries``.
        restarts: independent runs on the samples not broken yet, each with fresh draws.
        seed: the salt of each sample's keyed draws; the global RNG is never touched.
        criterion: success criterion; default misclassified (untargeted) or top-1 = target (targeted).
        max_queries: a budget that grows (``None``: fixed at ``n_queries``). The samples still robust after the
            first ``n_queries`` get blocks of twice the previous block's queries, each continuing from their best
            perturbation with the p-schedule rescaled to the block, until a block breaks no sample or a sample has
            spent ``max_queries``: the search stops where more queries stopped paying.

    The loss is the margin on the model's logits (``max_{j != y} z_j - z_y``; targeted: ``z_t - max_{j != t} z_j``).
    A candidate that the projection leaves equal to the sample's best (a late Linf square whose signs change no
    pixel) is not sent to the model: it has the best's logits and cannot improve. ``result.info["candidates"]``
    holds each sample's candidates drawn (the budget it spent), ``result.info["queries"]`` the model queries among
    them; ``result.info["blocks"]`` the budget of each block of a growing run and the samples it broke.
    """

    name = "square"

    def __init__(
        self,
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        seed: int = 0,
        criterion: Criterion | None = None,
        max_queries: int | None = None,
    ) -> None:
        self.n_queries = options.whole("n_queries", n_queries)
        self.max_queries = None if max_queries is None else options.whole("max_queries", max_queries)
        # keyed draws and a per-sample schedule: a sample's result does not depend on its batch, unless the budget
        # grows (whether another block runs depends on what the batch's last block broke)
        self.per_sample = self.max_queries is None
        if self.max_queries is not None and self.max_queries < self.n_queries:
            raise RobustlabError(
                f"max_queries {self.max_queries} is below n_queries {self.n_queries}; give max_queries >= n_queries"
            )
        self.p_init = options.number("p_init", p_init, low=0, high=1)
        if self.p_init == 0:
            raise RobustlabError("p_init must be > 0 (the fraction of pixels a square changes), e.g. 0.8")
        self.restarts = options.whole("restarts", restarts)
        self.seed = options.seed(seed)
        if criterion is not None:
            check_criterion(criterion)
        self.criterion = criterion

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {
            "attack": self.name,
            "n_queries": self.n_queries,
            "p_init": self.p_init,
            "restarts": self.restarts,
            "max_queries": self.max_queries,
            "seed": self.seed,
            "loss": "margin",
            "criterion": getattr(self.criterion, "name", None),
        }

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Attack ``model`` at ``x`` (true labels ``y``) inside ``threat``; with ``target`` a targeted attack."""
        start = time.perf_counter()
        criterion = check_batch(x, y, target, threat, self.criterion)
        if x.dim() != 4:
            raise RobustlabError(f"square attacks image batches (N, C, H, W), got inputs of shape {tuple(x.shape)}")
        x = x.detach()
        keys = sample_keys(x).to(x.device)
        salts = torch.randint(0, 2**62, (self.restarts,), generator=torch.Generator().manual_seed(self.seed))
        counts = torch.zeros(2, x.shape[0], dtype=torch.long, device=x.device)  # model queries, candidates
        best: AttackResult | None = None
        with torch.no_grad(), untouched(model, x.device):
            todo = torch.arange(x.shape[0], device=x.device)
            for salt in salts.tolist():
                rows = todo if best is None else todo[~best.success[todo]]
                if rows.numel() == 0:
                    break
                tr = target[rows] if target is not None else None
                run = self._run(
                    model, x[rows], y[rows], tr, threat, criterion, keys[rows] ^ salt, counts, rows, self.n_queries
                )  # fmt: skip
                best = run if best is None else _merge(best, run, rows)
            assert best is not None
            blocks = [{"queries": self.n_queries, "broken": int(best.success.sum())}]
            budget, spent, block = self.n_queries, self.n_queries * self.restarts, 0
            while self.max_queries is not None and spent < self.max_queries and blocks[-1]["broken"] > 0:
                rows = todo[~best.success]
                if rows.numel() == 0:
                    break
                block += 1
                budget = min(2 * budget, self.max_queries - spent)
                tr = target[rows] if target is not None else None
                salt = int(salts[0]) ^ (block * 0x9E3779B97F4A7C15 & (2**62 - 1))  # fresh draws per block
                run = self._run(model, x[rows], y[rows], tr, threat, criterion, keys[rows] ^ salt, counts, rows,
                                budget, start=best.x_adv[rows])  # fmt: skip
                best = _merge(best, run, rows)
                blocks.append({"queries": budget, "broken": int(run.success.sum())})
                spent += budget
        sign = -1.0 if target is not None else 1.0
        best.loss = sign * best.loss  # the margin towards the target, as targeted attacks report it
        queries, candidates = counts.cpu()
        best.info = {
            "time_s": time.perf_counter() - start, **self.config(),
            "queries": queries, "candidates": candidates, "blocks": blocks,
        }  # fmt: skip
        return best

    def _objective(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """The margin the search raises: ``max_{j != y} z_j - z_y``, or ``z_t - max_{j != t} z_j``."""
        return cw_margin(logits, y) if target is None else -cw_margin(logits, target)

    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, threat: ThreatModel,
        criterion: Criterion, keys: Tensor, counts: Tensor, rows: Tensor, budget: int, start: Tensor | None = None,
    ) -> AttackResult:  # fmt: skip
        """One run of ``budget`` candidates on ``x`` from ``start`` (default: the paper's first query);
        ``counts[:, rows]`` counts each sample's model queries (row 0) and candidates drawn (row 1)."""
        state = key_state(keys)
        x_best = self._init(x, threat, state) if start is None else start.clone()
        logits = model_logits(model, x_best)
        check_first_logits(logits, y, target, criterion)
        logits = logits.float()
        loss = self._objective(logits, y, target)
        success = criterion(logits, y, target)
        counts[:, rows] += 1
        active = (~success).nonzero().squeeze(1)
        step = self._linf_step if threat.norm == "linf" else self._l2_step
        for i in range(budget - 1):
            if active.numel() == 0:
                break
            xb = x_best[active]
            x_new = step(x[active], xb, threat, state[active], i + 1, p_schedule(i, budget, self.p_init))
            counts[1, rows[active]] += 1
            # a candidate equal to its best (a square that changes no pixel after the projection: about a quarter
            # of Linf's candidates at 1000 queries) has the best's logits: it cannot improve, the model is not asked
            moved = (x_new - xb).flatten(1).abs().amax(1) > 0
            ask = active if bool(moved.all()) else active[moved]
            if ask.numel() == 0:
                continue
            if ask is not active:
                x_new = x_new[moved]
            new_logits = model_logits(model, x_new).float()
            counts[0, rows[ask]] += 1
            ya, ta = y[ask], target[ask] if target is not None else None
            new_loss = self._objective(new_logits, ya, ta)
            broke = criterion(new_logits, ya, ta)
            improved = broke | (new_loss > loss[ask])
            take = ask[improved]
            x_best[take], logits[take] = x_new[improved], new_logits[improved]
            loss[take], success[take] = new_loss[improved], broke[improved]
            if bool(broke.any()):
                active = active[~success[active]]
        return AttackResult(x_best, success, loss, logits)

    def _init(self, x: Tensor, threat: ThreatModel, state: Tensor) -> Tensor:
        """The first query: vertical stripes of +-eps (Linf), or a grid of signed L2 patterns of norm eps (L2)."""
        n, c, h, w = x.shape
        if threat.norm == "linf":
            stripes = _signs(keyed_uniform(state, 0, c * w)).view(n, c, 1, w)
            return threat.project(x + threat.eps * stripes, x)
        s = max(h // 5, 1)
        offset = (h - 5 * s) // 2
        tiles = [(offset + i * s, offset + j * s) for i in range(h // s) for j in range(w // s)]
        tiles = [(a, b) for a, b in tiles if a + s <= h and b + s <= w]
        u = keyed_uniform(state, 0, len(tiles) * (c + 1)).view(n, len(tiles), c + 1)
        delta = torch.zeros_like(x)
        pattern = _l2_pattern(s).to(x.device, x.dtype)
        for t, (a, b) in enumerate(tiles):
            flipped = pattern[(u[:, t, c] >= 0.5).long()]  # (n, s, s)
            delta[:, :, a : a + s, b : b + s] += flipped[:, None] * _signs(u[:, t, :c]).to(x.dtype)
        return threat.project(x + threat.eps * _l2_normalised(delta), x)

    def _linf_step(
        self, x: Tensor, x_best: Tensor, threat: ThreatModel, state: Tensor, counter: int, p: float
    ) -> Tensor:
        """A square of side s set to +-eps per channel (random sign) around ``x``, the rest of ``x_best`` kept."""
        n, c, h, w = x.shape
        s = square_side(p, c * h * w, c, min(h, w), minimum=1, odd=False)
        u = keyed_uniform(state, counter, 2 + c)
        mask = _windows(u[:, 0], u[:, 1], s, h, w, x.dtype)[2]
        return threat.project(x_best + mask * (2 * threat.eps * _signs(u[:, 2:]).to(x.dtype)), x)

    def _l2_step(self, x: Tensor, x_best: Tensor, threat: ThreatModel, state: Tensor, counter: int, p: float) -> Tensor:
        """Move the perturbation's mass of a second window into a new pattern on the first, keeping norm eps."""
        n, c, h, w = x.shape
        s = square_side(p, c * h * w, c, min(h, w), minimum=3, odd=True)
        u = keyed_uniform(state, counter, 5 + c)
        rows, cols, mask1 = _windows(u[:, 0], u[:, 1], s, h, w, x.dtype)
        both = torch.maximum(mask1, _windows(u[:, 2], u[:, 3], s, h, w, x.dtype)[2])
        delta = x_best - x

        def window_norm(t: Tensor) -> Tensor:
            return t.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()

        norm_image = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_window1 = window_norm(delta * mask1)
        norm_windows = window_norm(delta * both)
        new = _placed_pattern(s, u[:, 4] >= 0.5, rows, cols, mask1) * _signs(u[:, 5:]).to(x.dtype)
        new = new + delta * mask1 / (norm_window1 + 1e-12)
        budget = ((threat.eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / (window_norm(new) + 1e-12) * budget
        delta = delta * (1 - both) + new
        return threat.project(x + threat.eps * _l2_normalised(delta), x)


__all__ = ["SCHEDULE_BREAKPOINTS", "Square", "key_state", "keyed_uniform", "p_schedule", "square_side"]
