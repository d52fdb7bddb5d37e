"""The examples an attack report shows: per class, a few samples the attack broke and a few it did not, with the
clean image, the adversarial image and the perturbation, saved small (``OUT/gallery.pt``, uint8 images) so that
``report.html`` can be rebuilt from the run folder without recomputing.

The gallery's samples are chosen from the run's per-sample outcome and attacked again on their own (same attack
object, same seed); what each tile shows (prediction, interest class rank, success) is measured on the very
example shown, so a tile never claims what its image does not do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from robustlab.eval.result import EvalResult
from robustlab.io import atomic_torch_save
from robustlab.models.mode import temporary_mode
from robustlab.reports.html import GALLERY_FILE
from robustlab.threat import ThreatModel

MAX_CLASSES = 20  # classes shown (the first ones met in the data)
MAX_SIDE = 64  # larger images are stored (and shown) at this size, to keep the file and the page small


def pick_samples(result: EvalResult, attack: str, per_class: int = 2) -> list[int]:
    """Per class, the first ``per_class`` samples (clean-correct, attacked) the attack broke in the run and the
    first ``per_class`` it did not."""
    picks: list[int] = []
    attacked = result.attacked[attack] & result.clean_correct
    success, labels = result.broken[attack], result.labels
    for c in list(dict.fromkeys(labels.tolist()))[:MAX_CLASSES]:
        for outcome in (True, False):
            hits = torch.nonzero(attacked & (success == outcome) & (labels == c)).flatten()
            picks += hits[:per_class].tolist()
    return sorted(picks)


def _take(data: Any, index: list[int]) -> tuple[Tensor, Tensor]:
    if isinstance(data, tuple):
        return data[0][index], data[1][index]
    items = [data[i] for i in index]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _small(x: Tensor) -> Tensor:
    side = max(x.shape[-2:])
    return F.interpolate(x, scale_factor=MAX_SIDE / side, mode="area") if side > MAX_SIDE else x


def _uint8(x: Tensor, lo: float, hi: float) -> Tensor:
    return ((x - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)


def build_gallery(
    model: nn.Module, data: Any, attack: Any, threat: ThreatModel, result: EvalResult, per_class: int = 2,
    device: torch.device | str = "cpu", dataset_name: str | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """The gallery of ``attack`` (its name in ``result``) on ``data`` (class names from ``dataset_name`` where
    the data has none): None when nothing was attacked."""
    from robustlab.eval.metrics import class_names

    candidates = pick_samples(result, attack.name, 3 * per_class)  # a random start may not repeat the run's outcome
    if not candidates:
        return None
    x, y = _take(data, candidates)
    x, y = x.to(device), y.to(device)
    with temporary_mode(model, training=False):
        x_adv = attack(model, x, y, threat).x_adv.detach()
        with torch.no_grad():
            clean, adv = model(x), model(x_adv)
    broken, keep, seen = adv.argmax(1) != y, [], {}
    for i, (c, b) in enumerate(zip(y.tolist(), broken.tolist())):  # per class: per_class broken, per_class not
        if seen.setdefault((c, b), 0) < per_class:
            seen[(c, b)] += 1
            keep.append(i)
    index = [candidates[i] for i in keep]
    x, y, x_adv, clean, adv = x[keep], y[keep], x_adv[keep], clean[keep], adv[keep]
    icr = 1 + (adv > adv.gather(1, y[:, None])).sum(1)
    lo, hi = threat.bounds
    delta = _small((x_adv - x).float().cpu())
    scale = float(delta.abs().max()) or 1.0  # the perturbation is shown amplified to the full range
    return {
        "index": torch.tensor(index), "attack": attack.name, "label": y.cpu(), "pred_clean": clean.argmax(1).cpu(),
        "pred_adv": adv.argmax(1).cpu(), "icr": icr.cpu(), "success": (adv.argmax(1) != y).cpu(),
        "x": _uint8(_small(x.float().cpu()), lo, hi), "x_adv": _uint8(_small(x_adv.float().cpu()), lo, hi),
        "delta": _uint8(delta, -scale, scale), "amplification": (hi - lo) / (2 * scale),
        "class_names": class_names(data, dataset_name, result.clean_logits.shape[1]), "norm": threat.norm,
        "eps": threat.eps,
    }  # fmt: skip


def save_gallery(out: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, str]:
    """:func:`build_gallery` written to ``out/gallery.pt``; returns ``{"gallery": path}`` (empty: no gallery)."""
    gallery = build_gallery(*args, **kwargs)
    if gallery is None:
        return {}
    path = Path(out) / GALLERY_FILE
    atomic_torch_save(gallery, path)
    return {"gallery": str(path)}


__all__ = ["GALLERY_FILE", "build_gallery", "pick_samples", "save_gallery"]
