"""`bsn compare`: finished runs side by side on one page (HTML and Markdown).

Each run is read the way the report stage reads it (`report.build.findings` on the run's tables),
so a comparison and a run's own report cannot disagree: the headline numbers are the ones
`metrics.json` holds (`report.build.headline_metrics`, intervals beside their values) and the
claims are the report's verdicts. Runs of different models, corpora or settings may be compared;
the page lists every key of the effective configs (`results/<run>/config.yaml`) that differs.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import yaml

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.config import Config, load_config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, read_json
from bigram_subnetworks.report.claims import STATUSES, Verdict
from bigram_subnetworks.report.summary import Estimate

log = logging.getLogger(__name__)

RESULTS = Path("results")
INTERVAL = "_interval"  # suffix of a metrics.json value's bootstrap interval ({low, high})
ABSENT = "–"
SAME, DIFFERS, APART, PARTIAL = "", "differs", "intervals apart", "not in every run"
VERDICT_DIFFERS = "verdict differs"
_STATUS_CLASS = {
    "holds": "holds",
    "does not hold": "fails",
    "not resolved": "unresolved",
    "not measured": "unmeasured",
    "descriptive": "unmeasured",
}


@dataclass(frozen=True)
class Run:
    """One finished run as the comparison reads it."""

    label: str  # the column heading: the folder's name, or its path where names repeat
    folder: Path
    cfg: Config
    config: dict[str, str]  # flattened effective config: dotted key -> value as YAML text
    headline: dict[str, Any]  # metrics.json's content, computed from the tables
    verdicts: list[Verdict]


# ------------------------------------------------------------------------------ reading


def resolve_run(text: str, results: Path = RESULTS) -> Path:
    """A run folder from a folder path or a run name (`results/<name>`)."""
    given = Path(text)
    if given.is_dir():
        return given
    named = given.parent == Path()  # a bare name: results/<name>
    if named and (results / text).is_dir():
        return results / text
    tried = f" (nor {results / text})" if named else ""
    raise UserError(
        f"{text}: no such run folder{tried}; give a run folder (results/<run>) or a run name"
    )


def check_finished(folder: Path) -> None:
    """Stop in one line unless `folder` holds a finished run (its effective config and the
    report stage's metrics.json)."""
    config = folder / Path(A.RUN_CONFIG.path).name
    if not config.is_file():
        raise UserError(
            f"{folder}: not a run folder: {config} is missing; the config stage writes it "
            f"when the pipeline runs (`snakemake --configfile CONFIG` or `dvc repro`)"
        )
    metrics = folder / Path(A.RUN_METRICS.path).name
    if not metrics.is_file():
        raise UserError(
            f"{folder}: not a finished run: {metrics} is missing; the report stage writes it "
            f"(`snakemake --configfile {config} report`, or `dvc repro`)"
        )


def report_inputs(cfg: Config, folder: Path) -> dict[str, Any]:
    """The report stage's input paths (from the registry) for a run kept in `folder`: the run's
    own files under `folder`, the shared data under the project root above `results/`."""
    from bigram_subnetworks.stages import STAGES, job_fields

    prefix = A.RUN_CONFIG.path.format(run=cfg.run).rsplit("/", 1)[0] + "/"
    root = folder.parent.parent

    def place(path: str) -> Path:
        return folder / path[len(prefix) :] if path.startswith(prefix) else root / path

    stage = STAGES["report"]
    fields = job_fields(cfg, {})
    found: dict[str, Any] = {}
    for name, port in stage.inputs.items():
        if not port.when(cfg):
            continue
        paths = [place(p) for p in port.paths(cfg, fields)]
        found[name] = paths if port.each is not None else paths[0]
    return found


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (lists and scalars are leaves)."""
    if not isinstance(values, dict) or (prefix and not values):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _yaml_text(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 16)
    return text.strip().removesuffix("...").strip()


def load(folder: Path, label: str | None = None) -> Run:
    """Read one finished run (one-line errors for a missing file)."""
    from bigram_subnetworks.report.build import findings, headline_metrics
    from bigram_subnetworks.report.tables import load_run

    check_finished(folder)
    cfg = load_config(folder / Path(A.RUN_CONFIG.path).name)
    tables = load_run(cfg, report_inputs(cfg, folder))
    models, checkpoints, found = findings(tables)
    headline = json.loads(json.dumps(headline_metrics(models, checkpoints, found)))
    stored = read_json(folder / Path(A.RUN_METRICS.path).name)
    if stored != headline:
        log.warning(
            "%s: metrics.json differs from the run's tables (shown: the tables'); rerun the "
            "report stage to bring it up to date",
            folder,
        )
    config = {k: _yaml_text(v) for k, v in flatten(cfg.model_dump(mode="json")).items()}
    return Run(label or folder.name, folder, cfg, config, headline, found)


def load_runs(names: list[str], results: Path = RESULTS) -> list[Run]:
    """The runs named on the command line, each once, labelled by folder name (or path)."""
    folders = [resolve_run(n, results) for n in names]
    unique = list(dict.fromkeys(f.resolve() for f in folders))
    if len(unique) < 2:
        raise UserError("compare: give at least two different runs (folders or names)")
    folders = [next(f for f in folders if f.resolve() == u) for u in unique]
    repeated = len({f.name for f in folders}) < len(folders)
    return [load(f, f.as_posix() if repeated else f.name) for f in folders]


# ----------------------------------------------------------------------------- content


@dataclass(frozen=True)
class Row:
    """One row of a comparison table: leading cells, the compared cells (one per run, after
    any reference such as the paper's) and what differs between the runs."""

    lead: tuple[str, ...]
    cells: tuple[str, ...]
    difference: str = SAME
    statuses: tuple[str | None, ...] = ()  # a verdict per compared cell (claims table only)


@dataclass(frozen=True)
class Section:
    title: str
    columns: tuple[str, ...]  # every heading but the last ("differs")
    rows: list[Row]
    note: str = ""


def _number_text(value: Any) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return format(value, ".4g")


def _estimate(values: dict[str, Any], key: str) -> Estimate | None:
    """The value at `key` with its interval (`<key>_interval`), if it has one."""
    interval = values.get(key + INTERVAL)
    value = values.get(key)
    if not isinstance(interval, dict) or not isinstance(value, int | float):
        return None
    return Estimate(float(value), interval.get("low", math.nan), interval.get("high", math.nan))


def _cell(values: dict[str, Any], key: str) -> str:
    estimate = _estimate(values, key)
    return estimate.text() if estimate is not None else _number_text(values.get(key))


def difference(values: list[dict[str, Any]], key: str) -> str:
    """SAME when every run has the same value; PARTIAL when the runs that have it agree but some
    lack it; APART when every run that has it has an interval and two of them do not overlap
    (the runs are independent: their marginal 95% intervals); else DIFFERS."""
    found = [(v.get(key), v.get(key + INTERVAL)) for v in values]
    if all(f == found[0] for f in found):
        return SAME
    present = [f for f in found if f[0] is not None]
    if all(f == present[0] for f in present):
        return PARTIAL
    estimates = [_estimate(v, key) for v in values if v.get(key) is not None]
    bounded = [e for e in estimates if e is not None and e.has_interval]
    if len(bounded) == len(estimates) and max(e.low for e in bounded) > min(
        e.high for e in bounded
    ):
        return APART
    return DIFFERS


def _union(keys: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(k for each in keys for k in each))


def _metric_rows(per_run: list[dict[str, Any]], lead: tuple[str, ...]) -> list[Row]:
    """One row per metric (intervals merged into their values' cells)."""
    flat = [flatten(v) if v else {} for v in per_run]
    keys = [k for k in _union([list(f) for f in flat]) if INTERVAL not in k]
    rows = []
    for key in keys:
        values = [_with_interval(f, key) for f in flat]
        rows.append(
            Row((*lead, key), tuple(_cell(v, key) for v in values), difference(values, key))
        )
    return rows


def _with_interval(flat: dict[str, Any], key: str) -> dict[str, Any]:
    low, high = flat.get(f"{key}{INTERVAL}.low"), flat.get(f"{key}{INTERVAL}.high")
    values: dict[str, Any] = {key: flat.get(key)} if key in flat else {}
    if low is not None and high is not None:
        values[key + INTERVAL] = {"low": low, "high": high}
    return values


def _labels(runs: list[Run]) -> tuple[str, ...]:
    return tuple(r.label for r in runs)


def headline_section(runs: list[Run]) -> Section:
    models = _union([list(r.headline.get("models", {})) for r in runs])
    rows = []
    for model in models:
        rows += _metric_rows([r.headline.get("models", {}).get(model) for r in runs], (model,))
    return Section(
        "Headline numbers per model",
        ("model", "metric", *_labels(runs)),
        rows,
        "metrics.json's numbers (`dvc metrics show`), computed from each run's tables as its "
        "report computes them; r with its 95% bootstrap interval over eval sequences in "
        "brackets. 'intervals apart': two runs' intervals do not overlap; '–': not in that run "
        "(another model, or not measured).",
    )


def checkpoint_section(runs: list[Run]) -> Section | None:
    per_run = [r.headline.get("checkpoints", {}) for r in runs]
    models = _union([list(c) for c in per_run])
    if not models:
        return None
    rows = []
    for model in models:
        steps = _union([list(c.get(model, {})) for c in per_run])
        steps.sort(key=lambda s: int(s.removeprefix("step_")) if s[5:].isdigit() else -1)
        for step in steps:
            values = [c.get(model, {}).get(step) for c in per_run]
            rows += _metric_rows(values, (model, step.replace("_", " ")))
    return Section(
        "Across checkpoints",
        ("model", "step", "metric", *_labels(runs)),
        rows,
        "metrics.json's checkpoint trajectories: r at every saved step, the power-law fit's "
        "estimate at each budget and the fit's r².",
    )


def claims_section(runs: list[Run]) -> Section:
    by_run = [{v.key: v for v in r.verdicts} for r in runs]
    keys = _union([[v.key for v in r.verdicts] for r in runs])
    rows = []
    for key in keys:
        found = [b.get(key) for b in by_run]
        first = next(v for v in found if v is not None)
        statuses = tuple(v.status if v else None for v in found)
        cells = tuple(v.ours if v else ABSENT for v in found)
        differs = VERDICT_DIFFERS if len(set(statuses)) > 1 else SAME
        rows.append(
            Row(
                (first.claim, first.where),
                (first.paper, *cells),
                differs,
                (first.paper_status, *statuses),
            )
        )
    return Section(
        "Claims of the paper",
        ("claim", "where", "paper", *_labels(runs)),
        rows,
        "Each run's verdict and the numbers that decided it (with their intervals), by the "
        "report's rules (report.claims): holds, does not hold, not resolved, not measured, "
        "descriptive. 'paper': the same rule on the paper's own numbers.",
    )


def runs_section(runs: list[Run]) -> Section:
    def describe(run: Run) -> dict[str, str]:
        counts = {s: sum(v.status == s for v in run.verdicts) for s in STATUSES}
        return {
            "folder": run.folder.as_posix(),
            "run": run.cfg.run,
            "corpus": run.cfg.corpus.name,
            "tokenizer": run.cfg.tokenizer.name,
            "models": ", ".join(run.cfg.models),
            "claims": "; ".join(f"{n} {s}" for s, n in counts.items()),
        }

    described = [describe(r) for r in runs]
    rows = []
    for name in described[0]:
        cells = tuple(d[name] for d in described)
        same = len(set(cells)) == 1 or name in ("folder", "run")  # these always differ
        rows.append(Row((name,), cells, SAME if same else DIFFERS))
    return Section("Runs", ("", *_labels(runs)), rows)


def config_section(runs: list[Run]) -> Section:
    keys = _union([list(r.config) for r in runs])
    rows = []
    for key in keys:
        cells = tuple(r.config.get(key, "(absent)") for r in runs)
        if len(set(cells)) > 1:
            rows.append(Row((key,), cells, DIFFERS))
    same = len(keys) - len(rows)
    return Section(
        "Configuration differences",
        ("key", *_labels(runs)),
        rows,
        f"Keys of the effective configs (config.yaml) whose values differ; {same} of "
        f"{len(keys)} keys are the same in every run.",
    )


def sections(runs: list[Run]) -> list[Section]:
    """The page's sections in reading order: the runs, their claims, what differs in their
    configs, then the numbers."""
    found = [runs_section(runs), claims_section(runs), config_section(runs)]
    found.append(headline_section(runs))
    checkpoints = checkpoint_section(runs)
    return found + ([checkpoints] if checkpoints else [])


def title(runs: list[Run]) -> str:
    return "Bigram subnetworks: " + " vs ".join(f"'{r.label}'" for r in runs)


# ---------------------------------------------------------------------------- rendering

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .5em 0 1.2em; font-size: .86em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr.differs td { background: #fff8dc; } tr.apart td, tr.verdict td { background: #ffe4b5; }
td.mark { font-weight: bold; white-space: nowrap; }
.badge { display: inline-block; padding: 0 .4em; border-radius: .6em; font-size: .9em;
         white-space: nowrap; }
.badge.holds { background: #c8e6c9; } .badge.fails { background: #f5c6cb; }
.badge.unresolved { background: #ffe0a3; } .badge.unmeasured { background: #e0e0e0; }
.note { color: #555; font-size: .9em; }
"""
_ROW_CLASS = {
    DIFFERS: "differs",
    PARTIAL: "differs",
    APART: "apart",
    VERDICT_DIFFERS: "verdict",
}


def _html_cell(text: str, status: str | None) -> str:
    """A cell; a verdict as a badge, with the numbers that decided it one click away."""
    if status is None:
        return f"<td>{escape(text)}</td>"
    badge = f'<span class="badge {_STATUS_CLASS.get(status, "")}">{escape(status)}</span>'
    numbers = f"<details><summary>numbers</summary>{escape(text)}</details>" if text else ""
    return f"<td>{badge}{numbers}</td>"


def _html_section(section: Section) -> str:
    heads = [*section.columns, "differs"]
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = []
    for row in section.rows:
        css = _ROW_CLASS.get(row.difference)
        statuses = row.statuses or (None,) * len(row.cells)
        cells = [f"<td>{escape(c)}</td>" for c in row.lead]
        cells += [_html_cell(c, s) for c, s in zip(row.cells, statuses, strict=True)]
        cells.append(f'<td class="mark">{escape(row.difference)}</td>')
        attribute = f' class="{css}"' if css else ""
        body.append(f"<tr{attribute}>{''.join(cells)}</tr>")
    note = f'<p class="note">{escape(section.note)}</p>\n' if section.note else ""
    rows = "\n".join(body) if body else f'<tr><td colspan="{len(heads)}">none</td></tr>'
    return (
        f"<h2>{escape(section.title)}</h2>\n{note}"
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n'
        "</tbody>\n</table></div>"
    )


def render_html(runs: list[Run], found: list[Section]) -> str:
    """The comparison as one self-contained HTML page (inline CSS, no scripts)."""
    name = title(runs)
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                "<head>",
                '<meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{escape(name)}</title>",
                f"<style>{CSS}</style>",
                "</head>",
                "<body>",
                f"<h1>{escape(name)}</h1>",
                *(_html_section(s) for s in found),
                "</body>",
                "</html>",
            ]
        )
        + "\n"
    )


def _md(text: str) -> str:
    """A Markdown table cell: pipes escaped, one line, no '<' that could open an HTML tag."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _md_section(section: Section) -> str:
    heads = [*section.columns, "differs"]
    lines = [f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    lines += ["| " + " | ".join(_md(h) for h in heads) + " |", "|" + "---|" * len(heads)]
    for row in section.rows:
        statuses = row.statuses or (None,) * len(row.cells)
        cells = [
            f"**{s}**" + (f": {_md(c)}" if c else "") if s else _md(c)
            for c, s in zip(row.cells, statuses, strict=True)
        ]
        mark = f"**{row.difference}**" if row.difference else ""
        lines.append("| " + " | ".join([*map(_md, row.lead), *cells, mark]) + " |")
    if not section.rows:
        lines.append("| " + " | ".join(["none", *[""] * (len(heads) - 1)]) + " |")
    return "\n".join(lines)


def render_markdown(runs: list[Run], found: list[Section]) -> str:
    """The same comparison in Markdown (differences in bold)."""
    return "\n\n".join([f"# {title(runs)}", *(_md_section(s) for s in found)]) + "\n"


def markdown_path(html: Path) -> Path:
    """The Markdown page beside the HTML one (`compare.html` -> `compare.md`)."""
    return html.with_suffix(".md")


def compare(names: list[str], output: Path, results: Path = RESULTS) -> list[Run]:
    """Write the comparison of the runs `names` to `output` (HTML) and beside it (Markdown),
    both atomically together."""
    runs = load_runs(names, results)
    found = sections(runs)
    markdown = markdown_path(output)
    if markdown == output:
        raise UserError(f"{output}: the HTML output needs a suffix other than .md (e.g. .html)")
    with atomic_outputs(output, markdown) as (html_file, markdown_file):
        html_file.write_text(render_html(runs, found), encoding="utf-8")
        markdown_file.write_text(render_markdown(runs, found), encoding="utf-8")
    log.info("compared %d runs -> %s, %s", len(runs), output, markdown)
    return runs
