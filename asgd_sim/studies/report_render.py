"""Rendering a report: sections to one self-contained HTML page and a Markdown twin.

``report.html`` embeds every figure as a base64 PNG and carries its own CSS: it opens offline,
can be mailed or attached to an issue, and needs no server. ``report.md`` has the same text and
tables and links the PNG files (so it renders on GitHub next to the results).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Section", "render_html", "render_markdown", "write_atomic", "num", "FIGURES"]

FIGURES = "report_figures"  # generated PNGs live here, beside report.html


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)  # (header, rows)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)
    code: str | None = None  # preformatted text
    fold: bool = True  # HTML: show the code folded (click to open)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


# ---------------------------------------------------------------------------------- rendering

_CSS = """
body { font: 15px/1.45 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4c72b0; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #2b4a80; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccd; padding: .3em .6em; text-align: right; }
th { background: #eef1f7; }
td:first-child, th:first-child, table.kv td { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { font-size: 12px; color: #666; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
footer { margin-top: 3em; font-size: 12px; color: #888; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section]) -> str:
    """One page, no external resources: figures inline as data URIs, CSS inline."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for section in sections:
        out.append(f"<h2>{e(section.title)}</h2>")
        out += [f"<p>{e(p)}</p>" for p in section.text]
        for header, rows in section.tables:
            out.append("<table>" if any(header) else '<table class="kv">')
            if any(header):
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        for png, caption in section.figures:
            out.append(f'<figure><img src="{_data_uri(png)}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>')
        if section.code:
            out.append(f"<details><summary>show</summary><pre>{e(section.code)}</pre></details>" if section.fold else f"<pre>{e(section.code)}</pre>")
    out.append("<footer>Written by asgd-sim report. Self-contained: the figures are embedded.</footer></body></html>")
    return "\n".join(out) + "\n"


def render_markdown(title: str, sections: list[Section], folder: Path) -> str:
    """The same report as Markdown, linking the PNG files relative to ``folder``."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for p in section.text:
            out += [p, ""]
        for header, rows in section.tables:
            head = header if any(header) else ["", ""]
            out.append("| " + " | ".join(cell(h) for h in head) + " |")
            out.append("|" + "|".join(" --- " for _ in head) + "|")
            out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
            out.append("")
        for png, caption in section.figures:
            try:
                link = png.resolve().relative_to(folder.resolve()).as_posix()
            except ValueError:
                link = png.as_posix()
            out += [f"![{caption}]({link})", ""]
        if section.code:
            out += ["```" + ("toml" if "scenario" in section.title.lower() else ""), section.code.rstrip(), "```", ""]
    return "\n".join(out)
