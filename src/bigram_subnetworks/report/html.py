"""Render the report document as self-contained HTML (inline CSS, images as data URIs, no
scripts, no external URLs) and as Markdown (tables; figures linked by relative path)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html import escape

import pandas as pd

VERDICT_COLUMN = "verdict"
PAPER_VERDICT_COLUMN = "rule on the paper's numbers"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .86em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.holds { background: #dff0d8; } td.fails { background: #f8d7da; }
td.unmeasured { background: #eeeeee; color: #555; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; margin-top: .3em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
dl.glance dt { font-weight: bold; margin-top: .6em; } dl.glance dd { margin-left: 1.2em; }
.note { color: #555; font-size: .9em; }
"""
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_VERDICT_CLASSES = {
    "holds": "holds",
    "does not hold": "fails",
    "not measured": "unmeasured",
    "descriptive": "unmeasured",
}


@dataclass(frozen=True)
class Table:
    """A titled table of preformatted cells."""

    title: str
    frame: pd.DataFrame
    note: str = ""
    numeric: tuple[str, ...] = ()  # columns right-aligned in HTML


@dataclass(frozen=True)
class FigureEntry:
    name: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Document:
    """Everything the report shows, in reading order."""

    title: str
    subtitle: str
    glance: list[tuple[str, str]]  # (question, answer)
    tables: list[Table]  # summary and paper comparison, shown before the figures
    figures: list[FigureEntry]
    appendix: list[Table] = field(default_factory=list)  # generations, cost, versions
    config_yaml: str = ""
    citation: str = ""


def _cell(column: str, value: object, numeric: tuple[str, ...]) -> str:
    text = escape(str(value))
    if column in (VERDICT_COLUMN, PAPER_VERDICT_COLUMN):
        return f'<td class="{_VERDICT_CLASSES.get(str(value), "")}">{text}</td>'
    return f'<td class="num">{text}</td>' if column in numeric else f"<td>{text}</td>"


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.frame.columns)
    body = "\n".join(
        "<tr>"
        + "".join(
            _cell(str(c), v, table.numeric) for c, v in zip(table.frame.columns, row, strict=True)
        )
        + "</tr>"
        for row in table.frame.itertuples(index=False)
    )
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (
        f"<h2>{escape(table.title)}</h2>\n{note}\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


def figure_html(entry: FigureEntry) -> str:
    data = base64.b64encode(entry.png).decode("ascii")
    return (
        f'<figure id="{escape(entry.name)}">\n'
        f'<img src="data:image/png;base64,{data}" alt="{escape(entry.name)}">\n'
        f"<figcaption><b>{escape(entry.name)}</b>: {escape(entry.caption)}</figcaption>\n"
        "</figure>"
    )


def render_html(doc: Document) -> str:
    """The whole report as one self-contained HTML page."""
    glance = "\n".join(
        f"<dt>{escape(question)}</dt><dd>{escape(answer)}</dd>" for question, answer in doc.glance
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(doc.title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="note">{escape(doc.subtitle)}</p>',
        "<h2>Answers at a glance</h2>",
        f'<dl class="glance">\n{glance}\n</dl>',
        *(table_html(t) for t in doc.tables),
        "<h2>Figures</h2>",
        *(figure_html(f) for f in doc.figures),
        *(table_html(t) for t in doc.appendix),
        "<h2>Configuration</h2>",
        f"<pre>{escape(doc.config_yaml)}</pre>",
        f'<p class="note">{escape(doc.citation)}</p>',
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _markdown_cell(value: object) -> str:
    """A table cell: pipes escaped, one line, and no '<' that could open an HTML tag."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return _TAG_START.sub("&lt;", text)


def table_markdown(table: Table) -> str:
    columns = [str(c) for c in table.frame.columns]
    lines = [
        f"## {table.title}",
        "",
        *([table.note, ""] if table.note else []),
        "| " + " | ".join(_markdown_cell(c) for c in columns) + " |",
        "|" + "|".join("---:" if c in table.numeric else "---" for c in columns) + "|",
    ]
    lines += [
        "| " + " | ".join(_markdown_cell(v) for v in row) + " |"
        for row in table.frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def render_markdown(doc: Document) -> str:
    """The report's numbers as Markdown; figures are linked from `figures/<name>.png`."""
    parts = [
        f"# {doc.title}",
        doc.subtitle,
        "## Answers at a glance",
        "\n".join(f"- **{q}** {a}" for q, a in doc.glance),
        *(table_markdown(t) for t in doc.tables),
        "## Figures",
        "\n".join(f"- [{f.name}](figures/{f.name}.png): {f.caption}" for f in doc.figures),
        *(table_markdown(t) for t in doc.appendix),
        "## Configuration",
        f"```yaml\n{doc.config_yaml.rstrip()}\n```",
        doc.citation,
    ]
    return "\n\n".join(parts) + "\n"
