"""The report as a document: a list of blocks (headings, paragraphs, tables, figures, ...) and its two renderings.

:func:`render_html` gives one self-contained page (works offline: inline CSS, figures embedded as PNG data URIs,
no scripts, no external links); :func:`render_md` gives Markdown that links the figures as ``figures/*.png``.
This module only formats text; the figures arrive as PNG bytes.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DASH",
    "Block",
    "Bullets",
    "Code",
    "Figure",
    "Heading",
    "Para",
    "Table",
    "fmt",
    "render_html",
    "render_md",
    "slug",
]

DASH = "–"
"""What a missing number is shown as."""


@dataclass
class Heading:
    """A heading; level 2 headings are the report's sections (and its table of contents)."""

    level: int
    text: str


@dataclass
class Para:
    """A paragraph; ``note`` paragraphs are highlighted (missing inputs, skipped figures), a ``lead`` paragraph is
    the answer the report opens with (boxed, larger)."""

    text: str
    note: bool = False
    lead: bool = False


@dataclass
class Bullets:
    """A bulleted list of plain-text items."""

    items: list[str]


@dataclass
class Table:
    """A table of text cells; ``numeric`` columns are right-aligned, ``marked`` rows highlighted."""

    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = frozenset()
    caption: str | None = None
    marked: frozenset[int] = frozenset()  # rows to highlight (values that differ between runs)


@dataclass
class Figure:
    """A PNG figure: embedded in the HTML, written to ``figures/<name>.png`` for the Markdown."""

    name: str
    caption: str
    png: bytes
    half: bool = False  # consecutive half-width figures sit side by side in HTML


@dataclass
class Code:
    """A collapsible block of preformatted text (e.g. a config file)."""

    summary: str
    text: str


Block = Heading | Para | Bullets | Table | Figure | Code
"""Any block of a document."""


def _alt(fig: Figure) -> str:
    """Short alternative text of a figure (the caption follows it anyway)."""
    return fig.name.replace("_", " ")


def slug(text: str) -> str:
    """An HTML anchor / file-name fragment of ``text``: lower-case letters and digits joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``None``/NaN/missing as an en dash."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return DASH
    if not math.isfinite(float(value)):
        return DASH
    return f"{float(value):.{digits}f}"


_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1d1f23; font-size: 16px; line-height: 1.55;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 36px 80px; }
h1 { font-size: 1.9rem; margin: 0.2em 0 0.2em; }
h2 { font-size: 1.4rem; margin: 2.2em 0 0.6em; padding-bottom: 0.25em; border-bottom: 2px solid #e4e6ea; }
h3 { font-size: 1.1rem; margin: 1.4em 0 0.4em; }
p, li { max-width: 80ch; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; }
.meta { color: #59606b; margin-top: 0; }
nav.toc { background: #f6f7f9; border: 1px solid #e4e6ea; border-radius: 6px; padding: 0.6em 1.1em; margin: 1em 0; }
nav.toc ol { margin: 0.2em 0; padding-left: 1.4em; columns: 3; }
nav.toc a { color: #0b5cad; text-decoration: none; }
.table-wrap { overflow-x: auto; margin: 0.8em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.92rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 0.4em; }
th, td { padding: 0.38em 0.75em; border-bottom: 1px solid #e4e6ea; text-align: left; vertical-align: top; }
thead th { background: #f1f3f5; font-weight: 600; border-bottom: 2px solid #d5d8dd; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td:first-child { white-space: nowrap; }
tr.diff td:first-child { font-weight: 600; color: #8a4b00; }
.figrow { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.figrow figure { flex: 1 1 420px; max-width: calc(50% - 12px); }
figure { margin: 1.2em 0 1.8em; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eceef1; border-radius: 4px; }
figcaption { color: #4a505a; font-size: 0.92rem; margin-top: 0.4em; max-width: 95ch; }
.lead { background: #eef5ff; border-left: 4px solid #0b5cad; padding: 0.6em 1em; border-radius: 0 4px 4px 0;
  font-size: 1.08rem; max-width: 95ch; margin: 0.5em 0; }
.note { background: #fff8e1; border-left: 4px solid #e0a800; padding: 0.5em 0.9em; border-radius: 0 4px 4px 0; }
details { margin: 0.5em 0; }
summary { cursor: pointer; font-weight: 600; }
details pre { background: #f6f8fa; border: 1px solid #e4e6ea; padding: 0.8em; overflow: auto; font-size: 0.82rem;
  max-height: 480px; }
"""


def render_html(title: str, subtitle: str, blocks: Sequence[Block]) -> str:
    """The whole document as one self-contained HTML page (inline CSS, figures as data URIs, no scripts)."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(subtitle)}</p>',
    ]
    toc = [b.text for b in blocks if isinstance(b, Heading) and b.level == 2]
    out.append('<nav class="toc"><strong>Contents</strong><ol>')
    out += [f'<li><a href="#{slug(t)}">{esc(t)}</a></li>' for t in toc]
    out.append("</ol></nav>")
    in_row = False
    for b in blocks:
        if in_row and not (isinstance(b, Figure) and b.half):
            out.append("</div>")
            in_row = False
        if isinstance(b, Heading):
            out.append(f'<h{b.level} id="{slug(b.text)}">{esc(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            cls = ' class="note"' if b.note else ' class="lead"' if b.lead else ""
            out.append(f"<p{cls}>{esc(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            cls = [' class="num"' if j in b.numeric else "" for j in range(len(b.header))]
            rows = [
                '<div class="table-wrap"><table>',
                f"<caption>{esc(b.caption)}</caption>" if b.caption else "",
                "<thead><tr>" + "".join(f"<th{cls[j]}>{esc(h)}</th>" for j, h in enumerate(b.header)) + "</tr></thead>",
                "<tbody>",
            ]
            rows += [("<tr class=\"diff\">" if i in b.marked else "<tr>")
                     + "".join(f"<td{cls[j]}>{esc(c)}</td>" for j, c in enumerate(r)) + "</tr>"
                     for i, r in enumerate(b.rows)]
            rows.append("</tbody></table></div>")
            out.append("".join(rows))
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            fig_html = (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(_alt(b))}">'
                        f"<figcaption>{esc(b.caption)}</figcaption></figure>")
            if b.half:
                if not in_row:
                    out.append('<div class="figrow">')
                    in_row = True
                out.append(fig_html)
                continue
            out.append(fig_html)
        elif isinstance(b, Code):
            out.append(f"<details><summary>{esc(b.summary)}</summary><pre>{esc(b.text)}</pre></details>")
    if in_row:
        out.append("</div>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(title: str, subtitle: str, blocks: Sequence[Block]) -> str:
    """The whole document as GitHub-flavoured Markdown (figures linked as ``figures/<name>.png``)."""
    out = [f"# {title}", "", subtitle, ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [("> **Note:** " if b.note else "") + (f"**{b.text}**" if b.lead else b.text), ""]
        elif isinstance(b, Bullets):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"**{b.caption}**", ""]
            align = ["---:" if j in b.numeric else "---" for j in range(len(b.header))]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("| " + " | ".join(align) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            out += [f"![{_alt(b)}](figures/{b.name}.png)", "", f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += ["<details><summary>" + html.escape(b.summary) + "</summary>", "", "```yaml", b.text.rstrip(),
                    "```", "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"
