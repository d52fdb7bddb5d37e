"""The Markdown robustlab's reports write (headings, paragraphs, lists, pipe tables, bold, code) as HTML, so
``report.html`` shows exactly the numbers of ``report.md`` without a Markdown dependency."""

from __future__ import annotations

import html
import re

_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"), (re.compile(r"`(.+?)`"), r"<code>\1</code>")]


def inline(text: str) -> str:
    """Escaped text with ``**bold**`` and ```code``` marked up."""
    out = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    head, body = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    rows = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body)
    header = "".join(f"<th>{inline(c)}</th>" for c in head)
    return f'<div class="table"><table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div>'


def markdown_to_html(text: str, heading_offset: int = 1) -> str:
    """HTML for robustlab's Markdown; headings move down ``heading_offset`` levels (the page has its own h1)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + heading_offset, 6)
            blocks.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]) if j - i >= 2 else f"<p>{inline(line)}</p>")
            i = j
        elif line.lstrip().startswith("- "):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith("- "):
                items.append(f"<li>{inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            blocks.append(f"<ul>{''.join(items)}</ul>")
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].lstrip().startswith(("#", "|", "- ")):
                j += 1
            blocks.append(f"<p>{inline(' '.join(lines[i:j]))}</p>")
            i = j
    return "\n".join(blocks)


__all__ = ["inline", "markdown_to_html"]
