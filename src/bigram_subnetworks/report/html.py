"""Render the report document as self-contained HTML (inline CSS, images as data URIs, no
scripts, no external URLs) and as Markdown (tables; figures linked by relative path)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from html import escape

import polars as pl

VERDICT_COLUMN = "verdict"
PAPER_VERDICT_COLUMN = "rule on the paper's numbers"

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
p, dd, li, figcaption { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; margin: .6em 0 1.2em; }
table { border-collapse: collapse; font-size: .86em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.holds { background: #dff0d8; } td.fails { background: #f8d7da; }
td.unmeasured { background: #eeeeee; color: #555; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; margin-top: .3em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
dl.glance dt { font-weight: bold; margin-top: .6em; } dl.glance dd { margin-left: 1.2em; }
.note { color: #555; font-size: .9em; }
.badge { display: inline-block; padding: .05em .5em; border-radius: .8em; font-size: .85em;
         font-weight: 600; white-space: nowrap; border: 1px solid; }
.badge.holds { background: #dafbe1; color: #116329; border-color: #4ac26b; }
.badge.fails { background: #ffebe9; color: #a40e26; border-color: #ff8182; }
.badge.unresolved { background: #fff8c5; color: #7d4e00; border-color: #d4a72c; }
.badge.unmeasured { background: #eaeef2; color: #424a53; border-color: #afb8c1; }
.badge.descriptive { background: #ddf4ff; color: #0a3069; border-color: #54aeff; }
.claims { margin: .6em 0 1.2em; font-size: .92em; }
.claims .line { display: grid; align-items: baseline; gap: .2em 1em;
                grid-template-columns: minmax(0, 3fr) minmax(0, 1.4fr) minmax(0, 1.2fr) 9em;
                padding: .35em .5em; }
.claims .head { font-weight: bold; background: #f2f2f2; border: 1px solid #ccc; }
.claims details { border: 1px solid #ccc; border-top: none; }
.claims summary { cursor: pointer; list-style: none; }
.claims summary::-webkit-details-marker { display: none; }
.claims summary .claim::before { content: "▸ "; color: #777; }
.claims details[open] summary .claim::before { content: "▾ "; }
.claims details[open] summary { background: #f7f7f7; }
.claims .side { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.claims .where { color: #666; font-size: .85em; }
.mark { font-weight: 600; margin-right: .4em; white-space: nowrap; }
.mark.holds { color: #116329; } .mark.fails { color: #a40e26; }
.mark.unresolved { color: #7d4e00; } .mark.unmeasured { color: #57606a; }
.mark.descriptive { color: #0a3069; }
.claims .more { padding: .2em 1em .8em 1.6em; border-top: 1px dashed #ddd; }
.claims .more h4 { margin: .7em 0 .1em; font-size: .95em; }
.claims .more p { margin: .1em 0 .3em; }
.claims .more ul { margin: .2em 0; padding-left: 1.2em; } .claims .more li { margin: .15em 0; }
@media (max-width: 700px) {
  body { padding: 0 .6em; margin: 1em auto; }
  .claims .head { display: none; }
  .claims .line { grid-template-columns: minmax(0, 1fr) auto; }
  .claims .line .claim { grid-column: 1 / -1; }
  .claims .side { white-space: normal; overflow-wrap: anywhere; }
  .claims .line .side::before { content: attr(data-label) ": "; color: #666; }
  .claims .line .verdict { grid-column: 2; grid-row: 2 / span 2; align-self: center; }
  .claims .more { padding-left: .8em; }
}
"""
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_VERDICT_CLASSES = {
    "holds": "holds",
    "does not hold": "fails",
    "not measured": "unmeasured",
    "descriptive": "unmeasured",
}
# one badge class per verdict, and a mark so a verdict is never told by colour alone
BADGES = {
    "holds": ("holds", "✓"),
    "does not hold": ("fails", "✗"),
    "not resolved": ("unresolved", "?"),
    "not measured": ("unmeasured", "–"),
    "descriptive": ("descriptive", "i"),
}


@dataclass(frozen=True)
class Table:
    """A titled table of preformatted cells."""

    title: str
    frame: pl.DataFrame  # every cell a string
    note: str = ""
    numeric: tuple[str, ...] = ()  # columns right-aligned in HTML


@dataclass(frozen=True)
class FigureEntry:
    name: str
    caption: str
    png: bytes


Subject = tuple[str, str, str]  # (model or trajectory, its verdict, the numbers that decided)


@dataclass(frozen=True)
class ClaimLine:
    """One claim of the paper: one line at a glance, the rule and the numbers behind it."""

    claim: str
    where: str
    status: str  # this run's verdict
    paper_status: str  # the same rule on the paper's numbers
    ours: str  # every subject's numbers in one text (shown where there are no subjects)
    paper: str
    rule: str
    not_resolved: str
    thresholds: tuple[tuple[str, str], ...]  # ("name = value", where the value comes from)
    subjects: tuple[Subject, ...] = ()
    paper_subjects: tuple[Subject, ...] = ()


@dataclass(frozen=True)
class ClaimsSection:
    """The claims, one line each, with their details one click away."""

    title: str
    claims: list[ClaimLine]
    note: str = ""


@dataclass(frozen=True)
class Document:
    """Everything the report shows, in reading order."""

    title: str
    subtitle: str
    glance: list[tuple[str, str]]  # (question, answer)
    tables: list[Table | ClaimsSection]  # summary and paper comparison, before the figures
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
        for row in table.frame.iter_rows()
    )
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (
        f"<h2>{escape(table.title)}</h2>\n{note}\n"
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table></div>"
    )


def badge(status: str) -> str:
    """A verdict as a coloured badge that also carries its mark and its words."""
    css, mark = BADGES.get(status, ("unmeasured", "·"))
    return f'<span class="badge {css}">{mark} {escape(status)}</span>'


SHORT_SIDE = 70  # characters: a side's numbers are shown in the line itself up to this length


def side_summary(subjects: tuple[Subject, ...], text: str) -> str:
    """One line for one side of a claim: its numbers when short, else how many subjects (models)
    it was decided on ('8 models'), and how many each verdict has where they differ
    ('holds: 1 of 2; does not hold: 1 of 2')."""
    if len(text) <= SHORT_SIDE or not subjects:
        return text
    counts = {label: sum(s == label for _, s, _ in subjects) for label in BADGES}
    total = len(subjects)
    models = f"{total} model{'s' if total > 1 else ''}"
    if max(counts.values()) == total:
        return models
    return "; ".join(f"{label}: {n} of {models}" for label, n in counts.items() if n)


def marks(subjects: tuple[Subject, ...], text: str) -> str:
    """One line of a run's side: its numbers when short, else each model with its verdict's
    mark in the verdict's colour (e.g. '✓ tiny-a  ✗ tiny-b')."""
    if len(text) <= SHORT_SIDE or not subjects:
        return escape(text)
    return " ".join(
        f'<span class="mark {BADGES.get(status, ("unmeasured", ""))[0]}" title="{escape(status)}">'
        f"{BADGES.get(status, ('', '·'))[1]} {escape(name)}</span>"
        for name, status, _ in subjects
    )


def _subjects_html(subjects: tuple[Subject, ...], text: str) -> str:
    if not subjects:
        return f"<p>{escape(text)}</p>"
    items = "".join(
        f"<li><b>{escape(name)}</b> {badge(status)} {escape(detail)}</li>"
        for name, status, detail in subjects
    )
    return f"<ul>{items}</ul>"


def claim_html(line: ClaimLine) -> str:
    """A claim as a `<details>`: the summary line, then the rule, thresholds and numbers."""
    paper = side_summary(line.paper_subjects, line.paper)
    thresholds = "".join(
        f"<li><b>{escape(name)}</b>: {escape(source)}</li>" for name, source in line.thresholds
    )
    return (
        '<details>\n<summary class="line">'
        f'<span class="claim">{escape(line.claim)} '
        f'<span class="where">({escape(line.where)})</span></span>'
        f'<span class="side" data-label="paper" title="{escape(line.paper)}">'
        f"{badge(line.paper_status)} {escape(paper)}</span>"
        f'<span class="side" data-label="this run" title="{escape(line.ours)}">'
        f"{marks(line.subjects, line.ours)}</span>"
        f'<span class="verdict">{badge(line.status)}</span>'
        "</summary>\n"
        '<div class="more">'
        f"<h4>Rule</h4><p>{escape(line.rule)}</p>"
        f"<h4>Not resolved when</h4><p>{escape(line.not_resolved or '–')}</p>"
        + (f"<h4>Thresholds and their sources</h4><ul>{thresholds}</ul>" if thresholds else "")
        + f"<h4>This run, per model</h4>{_subjects_html(line.subjects, line.ours)}"
        f"<h4>The paper ({escape(line.where)}), the same rule on its numbers</h4>"
        f"{_subjects_html(line.paper_subjects, line.paper)}"
        "</div>\n</details>"
    )


def claims_html(section: ClaimsSection) -> str:
    note = f'<p class="note">{escape(section.note)}</p>' if section.note else ""
    head = (
        '<div class="line head"><span>claim (click for the rule and the numbers)</span>'
        "<span>paper</span><span>this run</span><span>verdict</span></div>"
    )
    body = "\n".join(claim_html(line) for line in section.claims)
    return f'<h2>{escape(section.title)}</h2>\n{note}\n<div class="claims">\n{head}\n{body}\n</div>'


def block_html(block: Table | ClaimsSection) -> str:
    return claims_html(block) if isinstance(block, ClaimsSection) else table_html(block)


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
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="note">{escape(doc.subtitle)}</p>',
        "<h2>Answers at a glance</h2>",
        f'<dl class="glance">\n{glance}\n</dl>',
        *(block_html(t) for t in doc.tables),
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
        "| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in table.frame.iter_rows()
    ]
    return "\n".join(lines)


def claims_markdown(section: ClaimsSection) -> str:
    """The claims at a glance as a table, then each claim's rule, thresholds and numbers."""
    glance = Table(
        section.title,
        pl.DataFrame(
            [
                {
                    "claim": f"{c.claim} ({c.where})",
                    "paper": f"{c.paper_status} ({side_summary(c.paper_subjects, c.paper)})",
                    "this run": side_summary(c.subjects, c.ours),
                    "verdict": c.status,
                }
                for c in section.claims
            ],
            schema=dict.fromkeys(["claim", "paper", "this run", "verdict"], pl.String),
        ),
        section.note,
    )
    parts = [table_markdown(glance), "### The claims in detail"]
    for c in section.claims:
        lines = [f"**{_markdown_cell(c.claim)}** ({c.where}): **{c.status}**", ""]
        lines.append(f"- Rule: {c.rule}")
        lines.append(f"- Not resolved when: {c.not_resolved or '–'}")
        lines += [f"- Threshold {name}: {source}" for name, source in c.thresholds]
        lines += [f"- This run, {n}: {s}; {d}" for n, s, d in c.subjects] or [
            f"- This run: {c.ours}"
        ]
        lines += [f"- Paper, {n}: {s}; {d}" for n, s, d in c.paper_subjects] or [
            f"- Paper: {c.paper}"
        ]
        parts.append("\n".join(_TAG_START.sub("&lt;", line) for line in lines))
    return "\n\n".join(parts)


def block_markdown(block: Table | ClaimsSection) -> str:
    return claims_markdown(block) if isinstance(block, ClaimsSection) else table_markdown(block)


def render_markdown(doc: Document) -> str:
    """The report's numbers as Markdown; figures are linked from `figures/<name>.png`."""
    parts = [
        f"# {doc.title}",
        doc.subtitle,
        "## Answers at a glance",
        "\n".join(f"- **{q}** {a}" for q, a in doc.glance),
        *(block_markdown(t) for t in doc.tables),
        "## Figures",
        "\n".join(f"- [{f.name}](figures/{f.name}.png): {f.caption}" for f in doc.figures),
        *(table_markdown(t) for t in doc.appendix),
        "## Configuration",
        f"```yaml\n{doc.config_yaml.rstrip()}\n```",
        doc.citation,
    ]
    return "\n\n".join(parts) + "\n"
