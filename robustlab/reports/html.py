"""``report.html``: one self-contained page (images embedded as base64 PNG, no network) for any run folder that
holds a ``report.json`` -- evaluation, attack, transfer or training -- built only from what the run saved
(``report.json``, ``report.md``, the PNG plots, ``gallery.pt``), so it can be rebuilt without recomputing."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import atomic_write_bytes
from robustlab.reports.kinds import report_from_dict, report_kind
from robustlab.reports.markdown import inline, markdown_to_html
from robustlab.safe_load import safe_load

HTML_FILE = "report.html"
GALLERY_FILE = "gallery.pt"  # an attack run's gallery tiles (robustlab.eval.gallery writes it)
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d2430;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d8dde6;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#5b6472;font-size:.9rem}code{background:#f1f3f7;padding:0 .25rem;border-radius:3px}
.table{overflow-x:auto}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d8dde6;padding:.25rem .55rem;text-align:left}th{background:#f1f3f7}
.flag{padding:.4rem .7rem;border-radius:4px;margin:.3rem 0}.fired{background:#fdecea;border-left:4px solid #c62828}
.passed{background:#edf7ee;border-left:4px solid #2e7d32}figure{display:inline-block;margin:.5rem 1rem .5rem 0}
figure img{max-width:34rem;border:1px solid #d8dde6}figcaption{font-size:.85rem;color:#5b6472}
.gallery{display:flex;flex-wrap:wrap;gap:.6rem}.tile{border:1px solid #d8dde6;border-radius:4px;padding:.35rem;
font-size:.78rem;background:#fafbfc}.tile img{width:112px;height:112px;image-rendering:pixelated;margin-right:2px}
.broken{border-top:3px solid #c62828}.held{border-top:3px solid #2e7d32}
"""


def read_report(out: str | os.PathLike) -> dict[str, Any]:
    """``OUT/report.json``, or one error line naming what is missing."""
    path = Path(out) / "report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RobustlabError(f"cannot read {path} ({type(exc).__name__}); give the folder of a finished run") from None


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _tensor_png(image: Any) -> str:
    """A uint8 (C, H, W) tensor as an embedded PNG."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sanity_section(data: dict[str, Any]) -> str:
    """The gradient-masking checks in plain words (evaluation reports)."""
    flags = data.get("sanity")
    if not flags:
        return ""
    fired = [f for f in flags if f.get("fired")]
    lead = (
        f"{len(fired)} of {len(flags)} checks found a warning sign: the attacks may be too weak for this model "
        "(e.g. gradient masking), so the robust accuracy above may be too high."
        if fired
        else f"All {len(flags)} checks passed: no sign that the attacks are too weak for this model."
    )
    items = "".join(
        f'<div class="flag {"fired" if f.get("fired") else "passed"}"><strong>'
        f"{'Warning' if f.get('fired') else 'Passed'}</strong> ({inline(str(f.get('name')))}): "
        f"{inline(str(f.get('message', '')))}{_passes(f)}</div>"
        for f in flags
    )
    state = {True: ("fired", "Indicator fired"), False: ("passed", "Indicator ok"), None: ("passed", "Not computed")}
    items += "".join(  # indicators of attack failure (Pintor et al. 2022), each with what it means
        f'<div class="flag {state[i.get("fired")][0]}"><strong>{state[i.get("fired")][1]}</strong> '
        f"({inline(str(i.get('name')))}): {inline(str(i.get('message', '')))} <em>{inline(str(i.get('meaning', '')))}"
        "</em></div>"
        for i in data.get("indicators") or []
    )
    headline = data.get("adaptive", {}).get("headline")
    note = f"<p>The headline is {inline(str(headline))}.</p>" if headline else ""
    return f'<section id="sanity"><h2>Sanity checks</h2><p>{lead}</p>{note}{items}</section>'


def _passes(flag: dict[str, Any]) -> str:
    """What a sanity check cost (images forward / input gradients backward); nothing where none was counted."""
    if not (flag.get("forward_passes") or flag.get("backward_passes")):
        return ""
    return f" ({flag['forward_passes']} forward, {flag.get('backward_passes', 0)} backward passes)"


def plots_section(out: Path) -> str:
    figures = "".join(
        f'<figure><img src="{_png(p)}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.stem.replace("_", " "))}'
        "</figcaption></figure>"
        for p in sorted(out.glob("*.png"))
    )
    return f'<section id="plots"><h2>Plots</h2>{figures}</section>' if figures else ""


def gallery_section(out: Path) -> str:
    """Per class: tiles of samples the attack broke and samples it did not (clean, adversarial, perturbation)."""
    if not (out / GALLERY_FILE).is_file():
        return ""
    g = safe_load(out / GALLERY_FILE, what="gallery")
    names = g.get("class_names") or []
    label = lambda c: html.escape(names[c] if c < len(names) else str(c))  # noqa: E731
    parts = [
        '<section id="gallery"><h2>Gallery</h2><p>Each tile: the clean image, the adversarial image and the '
        f"perturbation amplified {g['amplification']:.1f}x (grey is zero), with the true label, the predictions and "
        f"the interest class rank (ICR: the true class's rank after the attack, 1 = top). Samples are picked per "
        f"class among the samples the model classified correctly, and attacked again on their own with the same attack "
        f"({html.escape(str(g['attack']))}, {html.escape(str(g['norm']))} eps {g['eps']:.4g}): "
        "every tile shows what its own image does.</p>"
    ]
    for c in dict.fromkeys(g["label"].tolist()):
        tiles = []
        for i in (g["label"] == c).nonzero().flatten().tolist():
            broken = bool(g["success"][i])
            images = "".join(f'<img src="{_tensor_png(g[k][i])}" alt="{k}">' for k in ("x", "x_adv", "delta"))
            tiles.append(
                f'<div class="tile {"broken" if broken else "held"}">{images}<br>sample {int(g["index"][i])}: '
                f"{'broken' if broken else 'not broken'}<br>true {label(c)}, clean {label(int(g['pred_clean'][i]))}"
                f", adversarial {label(int(g['pred_adv'][i]))}, ICR {int(g['icr'][i])}</div>"
            )
        parts.append(f'<h3>{label(c)}</h3><div class="gallery">{"".join(tiles)}</div>')
    return "".join(parts) + "</section>"


def _rows(d: dict[str, Any]) -> str:
    cells = lambda v: inline(json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))  # noqa: E731
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{cells(v)}</td></tr>" for k, v in d.items())


SETTING_IN_METHOD = {"pgd_steps": "steps", "gradalign_lambda": "lambda"}  # a setting's name in method.config()


def resolved_settings(settings: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """The command's settings with the values the method resolved where the command left them unset (step size,
    noise sigma, PGD steps, ...), and "-" where a setting was not given and does not apply."""
    resolved = {k: method.get(SETTING_IN_METHOD.get(k, k)) if v is None else v for k, v in settings.items()}
    return {k: "-" if v is None else v for k, v in resolved.items()}


def config_section(data: dict[str, Any]) -> str:
    """The run's configuration and environment, as they are in ``report.json``."""
    config = {**({"threat": data["threat"]} if "threat" in data else {}), **(data.get("config") or {})}
    if "settings" in data:
        settings = data["settings"]  # the command's settings (resolved), then the loop's where they add something
        loop = {f"loop.{k}": "-" if v is None else v for k, v in config.items() if settings.get(k, object()) != v}
        config = {**resolved_settings(settings, data.get("method") or {}), **loop}
    env = data.get("environment") or {}
    return (
        f'<section id="config"><h2>Configuration</h2><div class="table"><table>{_rows(config)}</table></div>'
        f'<h3>Environment</h3><div class="table"><table>{_rows(env)}</table></div></section>'
    )


def render_html(out: str | os.PathLike) -> str:
    """The page for the run folder ``out`` (which must hold ``report.json``)."""
    out = Path(out)
    data = read_report(out)
    report = report_from_dict(data)
    kind = report.kind
    markdown = (out / "report.md").read_text() if (out / "report.md").is_file() else ""
    if data.get("sanity"):  # the flags get their own section, in plain words
        markdown = markdown.split("\n## Sanity checks")[0]
    env = data.get("environment") or {}
    meta = f"robustlab {env.get('robustlab', '')} · {kind} · wall time {data.get('wall_time_s', '-')} s"
    command = f'<p class="meta"><code>{html.escape(env["command"])}</code></p>' if env.get("command") else ""
    title = html.escape(report.page_title())
    body = [
        f'<header><h1>{title}</h1><p class="meta">{html.escape(meta)}</p>{command}</header>',
        f'<section id="summary"><h2>Summary</h2>{markdown_to_html(markdown, heading_offset=2)}</section>',
        sanity_section(data),
        plots_section(out),
        gallery_section(out),
        config_section(data),
    ]
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n"
    )


def write_html(out: str | os.PathLike) -> str:
    """Write ``OUT/report.html`` from what the run saved in ``out``; returns its path."""
    path = Path(out) / HTML_FILE
    atomic_write_bytes(path, render_html(out).encode())
    return str(path)


__all__ = ["GALLERY_FILE", "HTML_FILE", "read_report", "render_html", "report_kind", "write_html"]
