"""The report stage: figures, `index.html`, `summary.md` and `metrics.json` from a finished run."""

from __future__ import annotations

import csv
import io
import logging
import math
import numbers
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from bigram_subnetworks.artifacts import REPORT_FIGURES
from bigram_subnetworks.config import Config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, write_json
from bigram_subnetworks.report.claims import (
    CLAIMS,
    DESCRIPTIVE,
    FAILS,
    FIT_POINTS,
    FIT_QUALITY,
    HOLDS,
    NOT_MEASURED,
    NOT_RESOLVED,
    STATUSES,
    SUBNETWORK_GAIN,
    Evidence,
    Verdict,
    plurality_applies,
    verdicts,
)
from bigram_subnetworks.report.figures import FigureData, render_figures
from bigram_subnetworks.report.html import (
    ClaimLine,
    ClaimsSection,
    Document,
    FigureEntry,
    Table,
    render_html,
    render_markdown,
)
from bigram_subnetworks.report.ngrams import ngram_tables, read_ngrams
from bigram_subnetworks.report.paper import scale_note, side_by_side
from bigram_subnetworks.report.reference import reference_table
from bigram_subnetworks.report.summary import (
    ABLATION_CONDITIONS,
    CheckpointSummary,
    Estimate,
    ModelSummary,
    control_values,
    summarise,
    summarise_checkpoints,
)
from bigram_subnetworks.report.tables import RunTables, load_run, stage_costs, wide_metrics

log = logging.getLogger(__name__)

PACKAGES = (
    "torch",
    "transformers",
    "snakemake",
    "dvc",
    "numpy",
    "polars",
    "pandas",
    "matplotlib",
    "seaborn",
)
CITATION = (
    "Chang, T. A. & Bergen, B. K. (2025). Bigram Subnetworks: Mapping to Next Tokens in "
    "Transformer Language Models. NeurIPS 2025. arXiv:2504.15471."
)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a table cell; '–' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "–"


def _text_frame(rows: list[dict[str, str]], missing: str = "–") -> pl.DataFrame:
    """Preformatted table rows as a frame of strings: the columns in order of first appearance,
    `missing` where a row has no cell."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return pl.DataFrame(
        [[str(row.get(column, missing)) for column in columns] for row in rows],
        schema=dict.fromkeys(columns, pl.String),
        orient="row",
    )


# ---------------------------------------------------------------------------- tables


def summary_table(models: list[ModelSummary]) -> Table:
    rows = []
    for s in models:
        rotation = {c: s.rotation_to_input.get(c, {}).get(1) for c in ("full model", "bigram")}
        rows.append(
            {
                "model": s.model,
                "parameters": _fmt(s.parameters, ",.0f"),
                "masked weights": f"{s.masked_weights:,}",
                "eval loss / bigram baseline (nats)": (
                    f"{_fmt(s.eval_loss)} / {_fmt(s.bigram_baseline_loss)}"
                ),
                "unseen eval bigrams": _fmt(s.unseen_fraction, ".2%"),
                "full-model r": s.estimate("full_model_r").text(),
                "best r (λ)": f"{s.estimate('best_r').text()} ({s.best_lambda or '–'})",
                "best drop-unseen r (λ)": (
                    f"{s.estimate('best_r_dropinf').text()} ({s.best_dropinf_lambda or '–'})"
                ),
                "selected λ": s.selected_lambda or "–",
                "kept": _fmt(s.selected_kept_fraction, ".2%"),
                "selected r": s.estimate("selected_r").text(),
                "optimal pair λ (kept)": (
                    f"{s.optimal_lambda} ({_fmt(s.optimal_kept_fraction, '.2%')})"
                    if s.optimal_lambda
                    else "none"
                ),
                "overlap × chance, row / uniform null (p, resolution)": (
                    f"{_fmt(s.overlap_row_ratio, '.2f')} / {_fmt(s.overlap_ratio, '.2f')} "
                    f"({_fmt(s.overlap_row_p, '.2g')}, {_fmt(s.p_resolution, '.2g')})"
                ),
                "layer-0 MLP share": _fmt(s.first_mlp_share, ".1%"),
                "layer-1 rotation to input, full / bigram (°)": (
                    f"{_fmt(rotation['full model'], '.1f')} / {_fmt(rotation['bigram'], '.1f')}"
                ),
            }
        )
    # laid out per model (a column each), so that the page stays as wide as the screen
    quantities = [column for column in rows[0] if column != "model"] if rows else []
    frame = pl.DataFrame(
        {"quantity": quantities, **{row["model"]: [row[q] for q in quantities] for row in rows}}
    )
    return Table(
        "Summary per model",
        frame,
        "r: Pearson correlation of per-token surprisal with the bigram model's (bits), with its "
        "95% bootstrap interval over eval sequences in brackets; unseen bigrams (zero bigram "
        "probability) are clipped to the largest finite surprisal, or dropped in the drop-unseen "
        "r. Kept: fraction of the masked weights (block weight matrices). Overlap: observed / "
        "expected under the row-shuffle null (the authors' code, which Table 3 used) and the "
        "uniform within-block null; p under the row-shuffle null and its resolution "
        "1/(draws + 1). Rotation: median eigenvalue angle of the ridge map from layer 1 to the "
        "input embeddings; rotations are read off maps fitted on three quarters of the residual "
        "sequences, while token recall and the linear-map r are scored on the held-out quarter.",
        tuple(s.model for s in models),
    )


def ablation_table(models: list[ModelSummary]) -> Table:
    rows = [
        {
            "model": s.model,
            **{
                c: (
                    f"{s.ablation_mean[c]:.2f} ± {_fmt(s.ablation_sd.get(c), '.2f')}"
                    if c in s.ablation_mean
                    else "–"
                )
                for c in ABLATION_CONDITIONS
            },
        }
        for s in models
    ]
    return Table(
        "Ablations: mean surprisal (bits) ± sd",
        _text_frame(rows),
        "'alone': only the mask's weights are kept; 'removed': the mask's weights are zeroed.",
        tuple(ABLATION_CONDITIONS),
    )


def claims_section(found: list[Verdict]) -> ClaimsSection:
    """The claims, one line each (claim | paper | this run | verdict), with the rule, the
    thresholds and where they come from, and every subject's numbers one click away."""
    lines = [
        ClaimLine(
            claim=v.claim,
            where=v.where,
            status=v.status,
            paper_status=v.paper_status,
            ours=v.ours,
            paper=v.paper,
            rule=v.rule,
            not_resolved=v.not_resolved,
            thresholds=tuple(
                (t.describe().split(": ", 1)[0], t.source) for t in CLAIMS[v.key].thresholds
            ),
            subjects=v.subjects,
            # where the paper gives no numbers for the rule, its text says what the paper says
            paper_subjects=() if v.paper_status == NOT_MEASURED else v.paper_subjects,
        )
        for v in found
    ]
    return ClaimsSection(
        "Comparison with the paper",
        lines,
        "Each verdict is computed from this run's tables with the rule stated before the data: "
        "'holds' if it passes for every model where it was measured, 'does not hold' if it fails "
        "for one, 'not resolved' if the data cannot decide (each rule says when), 'not measured' "
        "without data, 'descriptive' for a number shown but not tested. The same rule is run on "
        "the paper's own numbers (paper_numbers.yaml), which it must pass wherever the paper "
        "gives numbers. Intervals: 95% bootstrap over eval sequences; a comparison A vs B is "
        "decided on the interval of the difference A − B, paired (the same resamples for every "
        "r of the run) unless marked marginal. Click a claim for its rule, its thresholds and "
        "every model's numbers, on both sides.",
    )


def _estimates_text(values: dict[str, Estimate], name: str) -> str:
    estimate = values.get(name, Estimate())
    unseen = f"; {estimate.unseen:.1%} unseen" if math.isfinite(estimate.unseen) else ""
    return estimate.text() + unseen if estimate.measured else "–"


def controls_table(controls: dict[str, dict[str, Estimate]]) -> Table | None:
    if not controls:
        return None
    names = list(dict.fromkeys(name for values in controls.values() for name in values))
    frame = _text_frame(
        [{"model": m, **{n: _estimates_text(v, n) for n in names}} for m, v in controls.items()]
    )
    return Table(
        "Table 2 controls: bigram r",
        frame,
        "As the paper's Table 2 (λ = 0), with 95% bootstrap intervals and the share of unseen "
        "eval bigrams. The linear map is the layer-0 'to output' ridge map fitted on the bigram "
        "subnetwork (selected λ) on three quarters of the residual sequences and scored on the "
        "held-out quarter.",
        tuple(names),
    )


def checkpoint_table(checkpoints: list[CheckpointSummary]) -> Table | None:
    rows = []
    for c in checkpoints:
        for step in c.steps:
            row = {
                "model": c.model,
                "step": str(step),
                "full-model r": c.full_model_r.get(step, Estimate()).text(),
                "λ = 0 r": c.lambda0_r.get(step, Estimate()).text(),
            }
            for budget, by_step in c.r_at_budget.items():
                flag = "*" if c.extrapolated.get(budget, {}).get(step) else ""
                row[f"r at {budget:,}"] = by_step.get(step, Estimate()).text() + flag
            if step in c.fit_r2:
                points = c.fit_points.get(step)
                row["fit r² (masks)"] = f"{c.fit_r2[step]:.2f}" + (f" ({points})" if points else "")
            for label, flags in c.plurality.items():
                flag = flags.get(step)
                mask = c.mask_r.get(label, {}).get(step, Estimate())
                applies = plurality_applies(mask, c.empty_r.get(step, Estimate()))
                row[f"layer-0 MLP plurality (λ = {label})"] = (
                    "–"
                    if flag is None
                    else "not applicable"
                    if applies is False
                    else ("yes" if flag else "no")
                )
            rows.append(row)
    if not rows:
        return None
    frame = _text_frame(rows)
    numeric = tuple(c for c in frame.columns if c != "model")
    unseen = [c.unseen_fraction for c in checkpoints if math.isfinite(c.unseen_fraction)]
    note = (
        "r at N: the power-law fit's estimate with N active parameters, its interval from "
        "refitting on every bootstrap resample (* extrapolated: shown, never used by a verdict); "
        f"fit r²: the fit's quality (a fit decides only with ≥ {FIT_POINTS} masks and r² ≥ "
        f"{FIT_QUALITY.value:g}). The full model is scored at every saved checkpoint. Plurality "
        "'not applicable': the mask's r is not above the empty mask's by the subnetwork gain "
        f"({SUBNETWORK_GAIN.value:g}, paired interval), so there is no subnetwork to locate."
    )
    if unseen:
        note += f" Unseen eval bigrams: {_span(unseen, '.2%')}."
    return Table("Across checkpoints", frame, note, numeric)


def dropped_steps_table(tables: RunTables) -> Table | None:
    """The checkpoint steps fetch dropped because their revisions serve another step's weights
    (model.json's `dropped_steps`, with checkpoints.duplicate_steps: drop)."""
    rows = [
        {
            "model": model,
            "step": str(step),
            "kept instead": str(why["kept"]),
            "same file as step(s)": ", ".join(map(str, why["shares_with"])),
            "shared weight file (sha256)": f"{why['file']} ({why['sha256']})",
        }
        for model, info in tables.model_info.items()
        for step, why in sorted((info.get("dropped_steps") or {}).items(), key=lambda i: int(i[0]))
    ]
    if not rows:
        return None
    note = (
        "Their Hub revisions hold a weight file (the whole model or one shard) identical to "
        "another step's, so they are not the checkpoints they claim to be; the checkpoint "
        "analysis leaves them out (checkpoints.duplicate_steps: drop)."
    )
    return Table("Checkpoint steps dropped", _text_frame(rows), note)


def block_names_table(tables: RunTables) -> Table:
    """Each model's blocks in its own terms: the parameters (layer 0's names, with the layer
    number as <l>) that Q, K, V, O, MLP-in and MLP-out are parts of."""
    blocks = tables.blocks
    if "param" not in blocks.columns or blocks.is_empty():
        return Table("Blocks in each model's terms", pl.DataFrame(), "Not recorded.")
    names = (
        blocks.filter((pl.col("layer") == 0) & pl.col("head").is_null())
        .unique(["model", "kind", "param"], keep="first", maintain_order=True)
        .group_by("model", "kind", maintain_order=True)
        .agg(pl.col("param").cast(pl.String).str.replace(".0.", ".<l>.", literal=True))
    )
    rows: dict[str, dict[str, str]] = {}
    for model, kind, params in names.iter_rows():
        rows.setdefault(model, {"model": model})[kind] = ", ".join(params)
    note = (
        "Fused Q/K/V weights (GPT-NeoX interleaves them per head, GPT-2 concatenates them) are "
        "split into their Q, K and V rows or columns; gated MLPs count gate and up as MLP-in."
    )
    return Table("Blocks in each model's terms", _text_frame(list(rows.values())), note)


def generations_table(tables: RunTables) -> Table:
    frame = tables.generations.select(
        "model",
        "condition",
        "prompt",
        "decoding",
        pl.col("text").str.replace_all("\n", "\\n", literal=True),
    )
    return Table("Generations", frame, "Newlines are shown as \\n.")


def cost_table(cfg: Config, tables: RunTables) -> Table:
    costs = stage_costs(cfg, tables.benchmarks)
    rows = [
        {
            "stage": r["stage"],
            "jobs measured": str(r["jobs"]),
            "wall time (s)": _fmt(r["seconds"], ",.1f") if r["jobs"] else NOT_MEASURED,
            "peak memory (MB)": _fmt(r["max_rss_mb"], ",.0f") if r["jobs"] else NOT_MEASURED,
        }
        for r in costs.iter_rows(named=True)
    ]
    measured = costs.filter(pl.col("jobs") > 0)
    rows.append(
        {
            "stage": "total",
            "jobs measured": str(int(costs["jobs"].sum())),
            "wall time (s)": f"{measured['seconds'].sum():,.1f}" if len(measured) else NOT_MEASURED,
            "peak memory (MB)": _fmt(measured["max_rss_mb"].max(), ",.0f")  # type: ignore[arg-type]
            if len(measured)
            else NOT_MEASURED,
        }
    )
    return Table(
        "Cost per stage",
        _text_frame(rows),
        "From Snakemake's benchmark files (sum of wall-clock seconds over a stage's jobs); "
        "stages run without them (e.g. through DVC) are not measured.",
        ("jobs measured", "wall time (s)", "peak memory (MB)"),
    )


def versions() -> dict[str, str]:
    """Python's and the key packages' versions ('not installed' where absent)."""
    found = {"python": platform.python_version()}
    for package in ("bigram-subnetworks", *PACKAGES):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def versions_table() -> Table:
    frame = _text_frame(
        [{"package": name, "version": version} for name, version in versions().items()]
    )
    return Table("Versions", frame)


# ------------------------------------------------------------------- at a glance


def _span(values: list[float], spec: str) -> str:
    """The range of the finite values ('–' if none); signed formats use 'to'."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    low, high = format(min(finite), spec), format(max(finite), spec)
    return low if low == high else f"{low}{' to ' if spec.startswith('+') else '–'}{high}"


def _increases(models: list[ModelSummary], condition: str) -> list[float]:
    """Mean-surprisal change of an ablation condition against the full model, per model."""
    return [
        s.ablation_mean.get(condition, math.nan) - s.ablation_mean.get("full model", math.nan)
        for s in models
    ]


def glance(models: list[ModelSummary], found: list[Verdict]) -> list[tuple[str, str]]:
    """Short answers to the reader's first questions, from the summaries and verdicts."""
    status = {v.key: v.status for v in found}
    above = [s for s in models if s.best_r > s.full_model_r]
    exists = (
        f"In {len(above)} of {len(models)} models a bigram mask matches bigram surprisal better "
        f"than the full model (best r {_span([s.best_r for s in models], '.3f')} vs full model "
        f"{_span([s.full_model_r for s in models], '.3f')}). The selected masks keep "
        f"{_span([s.selected_kept_fraction for s in models], '.2%')} of the masked weights at r "
        f"{_span([s.selected_r for s in models], '.3f')}."
    )
    baseline = [s for s in models if s.beats_bigram_baseline is False]
    if baseline:
        exists += (
            " Caution: "
            + ", ".join(s.model for s in baseline)
            + " did not beat the bigram baseline's eval loss, so its masks say little."
        )
    located = [s for s in models if s.largest_group is not None]
    where = (
        f"The layer-0 MLP holds {_span([s.first_mlp_share for s in located], '.1%')} of the "
        f"selected masks' weights, attention "
        f"{_span([s.attention_share for s in located], '.1%')}; the largest layer × "
        "{attention, MLP} group: "
        + ", ".join(f"{s.model}: {s.largest_group}" for s in located)
        + "."
        if located
        else "Not measured: the selected masks keep no weights."
    )
    matters = (
        "Removing the selected bigram mask changes mean surprisal by "
        f"{_span(_increases(models, 'bigram removed'), '+.2f')} bits, a random mask of the same "
        f"block structure by {_span(_increases(models, 'random removed'), '+.2f')}, the paired "
        f"optimal mask by {_span(_increases(models, 'optimal removed'), '+.2f')}. Random removal "
        f"harmless but bigram removal harmful: {status.get('random_removal', NOT_MEASURED)}; "
        "bigram removal about as harmful as optimal removal: "
        f"{status.get('bigram_vs_optimal', NOT_MEASURED)}; overlap with the optimal mask above "
        f"chance: {status.get('overlap', NOT_MEASURED)}."
    )
    counts = {label: sum(v.status == label for v in found) for label in STATUSES}
    tested = len(found) - counts[DESCRIPTIVE]
    failing = [v.claim for v in found if v.status == FAILS]
    compare = (
        f"{counts[HOLDS]} of {tested} tested claims hold here; {counts[FAILS]} "
        f"{'does' if counts[FAILS] == 1 else 'do'} not hold; {counts[NOT_RESOLVED]} "
        f"{'is' if counts[NOT_RESOLVED] == 1 else 'are'} not resolved; {counts[NOT_MEASURED]} "
        f"{'was' if counts[NOT_MEASURED] == 1 else 'were'} not measured "
        f"({counts[DESCRIPTIVE]} descriptive). {scale_note(models)}"
    )
    if failing:
        compare += " Not reproduced: " + "; ".join(failing) + "."
    return [
        ("Do bigram subnetworks exist here?", exists),
        ("Where are they?", where),
        ("Do they matter?", matters),
        ("How does this compare with the paper?", compare),
    ]


# ------------------------------------------------------------------------ metrics


def _finite_items(values: dict[str, Any]) -> dict[str, Any]:
    """Plain ints, floats and strings only, without missing or non-finite numbers (JSON and
    `dvc metrics` need finite values); empty sections are dropped."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _finite_items(value)
            if nested:
                out[key] = nested
        elif isinstance(value, str):
            out[key] = value
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            out[key] = float(value)
    return out


def _interval(estimate: Estimate) -> dict[str, float]:
    return {"low": estimate.low, "high": estimate.high}


def _key(name: str) -> str:
    """A metrics.json key of a condition name: ASCII letters, digits and '_' only, so DVC's
    dotted paths stay unambiguous ('optimal removed, λ=1e1' -> 'optimal_removed_lambda_1e1')."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name.replace("λ", "lambda")).strip("_")


def headline_metrics(
    models: list[ModelSummary], checkpoints: list[CheckpointSummary], found: list[Verdict]
) -> dict[str, Any]:
    """The numbers `dvc metrics show` compares across runs (finite numbers and λ labels)."""
    per_model = {}
    for s in models:
        per_model[s.model] = {
            "eval_loss": s.eval_loss,
            "bigram_baseline_loss": s.bigram_baseline_loss,
            "masked_weights": s.masked_weights,
            "full_model_r": s.full_model_r,
            "full_model_r_interval": _interval(s.estimate("full_model_r")),
            "unseen_fraction": s.unseen_fraction,
            "lambda0_r": s.lambda0_r,
            "lambda0_kept_fraction": s.lambda0_kept_fraction,
            "best_r": s.best_r,
            "best_r_interval": _interval(s.estimate("best_r")),
            "best_r_dropinf": s.estimate("best_r_dropinf").value,
            "selected_lambda": s.selected_lambda,
            "selected_kept_fraction": s.selected_kept_fraction,
            "selected_r": s.selected_r,
            "selected_r_interval": _interval(s.estimate("selected_r")),
            "optimal_lambda": s.optimal_lambda,
            "overlap_ratio": s.overlap_ratio,
            "overlap_p": s.overlap_p,
            "overlap_row_ratio": s.overlap_row_ratio,
            "overlap_row_p": s.overlap_row_p,
            "first_mlp_share": s.first_mlp_share,
            "ablation_surprisal_bits": {_key(c): v for c, v in s.ablation_mean.items()},
            "rotation_layer1_to_input": {
                _key(c): layers.get(1, math.nan) for c, layers in s.rotation_to_input.items()
            },
        }
    trajectories = {
        c.model: {
            f"step_{step}": {
                "full_model_r": c.full_model_r.get(step, Estimate()).value,
                "lambda0_r": c.lambda0_r.get(step, Estimate()).value,
                "fit_r2": c.fit_r2.get(step, math.nan),
                **{
                    f"r_at_{budget}": by_step.get(step, Estimate()).value
                    for budget, by_step in c.r_at_budget.items()
                },
            }
            for step in c.steps
        }
        for c in checkpoints
    }
    claims = {
        "holds": sum(v.status == HOLDS for v in found),
        "does_not_hold": sum(v.status == FAILS for v in found),
        "not_resolved": sum(v.status == NOT_RESOLVED for v in found),
        "not_measured": sum(v.status == NOT_MEASURED for v in found),
        "descriptive": sum(v.status == DESCRIPTIVE for v in found),
    }
    return _finite_items({"models": per_model, "checkpoints": trajectories, "claims": claims})


# ------------------------------------------------------------------------ the stage


def run_subtitle(cfg: Config, tables: RunTables, n_models: int) -> str:
    """What the run is: corpus, tokenizer, its train and eval sequences (tokens.json) and, when
    the bigram statistics were counted over other tokens (data.bigram_tokens), their count."""
    bigrams, tokens = tables.data_info["bigrams"], tables.data_info["tokens"]
    splits, seq_len = tokens.get("splits", {}), tokens.get("seq_len")
    train = splits.get("train", {}).get("sequences")
    train_tokens = train * seq_len if isinstance(train, int) and isinstance(seq_len, int) else None
    counted = bigrams.get("n_tokens")
    statistics = (
        f"bigram statistics over {_count(counted)} tokens, " if counted != train_tokens else ""
    )
    return (
        f"Run '{cfg.run}': corpus {cfg.corpus.name}, tokenizer {cfg.tokenizer.name} "
        f"(vocabulary {_count(bigrams.get('vocab_size'))}), {_count(train)} train sequences of "
        f"{_count(seq_len)} tokens ({_count(train_tokens)} tokens), {statistics}"
        f"{_count(splits.get('eval', {}).get('sequences'))} eval sequences; {n_models} model(s): "
        f"{', '.join(tables.models)}."
    )


def build_document(
    cfg: Config,
    tables: RunTables,
    models: list[ModelSummary],
    checkpoints: list[CheckpointSummary],
    found: list[Verdict],
    figures: dict[str, bytes],
    reference: Table | None = None,
    beyond: list[Table] | None = None,
) -> Document:
    """The report's content, rendered by `render_html` and `render_markdown`; `reference`: the
    section comparing this run's masks with the authors' (report.reference); `beyond`: sections
    beyond the paper's bigrams (report.ngrams)."""
    subtitle = run_subtitle(cfg, tables, len(models))
    paper_table = claims_section(found)
    numbers = Table(
        "Key numbers: paper vs this run",
        side_by_side(models),
        "Ranges over the paper's models (paper_numbers.yaml) and over this run's models.",
    )
    main = [
        summary_table(models),
        paper_table,
        numbers,
        ablation_table(models),
        *(t for t in (controls_table(control_values(tables)), checkpoint_table(checkpoints)) if t),
        *(t for t in (dropped_steps_table(tables),) if t),
        *([reference] if reference is not None else []),
        *(beyond or []),
    ]
    return Document(
        title=f"Bigram subnetworks: report of run '{cfg.run}'",
        subtitle=subtitle,
        glance=glance(models, found),
        tables=main,
        figures=[FigureEntry(name, REPORT_FIGURES[name], png) for name, png in figures.items()],
        appendix=[
            block_names_table(tables),
            generations_table(tables),
            cost_table(cfg, tables),
            versions_table(),
        ],
        config_yaml=yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False),
        citation="Reproduces: " + CITATION,
    )


def _csv_cell(value: object) -> object:
    """A CSV cell: floats to 6 significant digits, missing values (None, NaN) empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, ".6g") if isinstance(value, float) else value


def csv_text(frame: pl.DataFrame) -> str:
    """A frame as CSV text for DVC (`_csv_cell` values, minimal quoting, one line per row)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(frame.columns)
    writer.writerows(map(_csv_cell, row) for row in frame.iter_rows())
    return buffer.getvalue()


def plot_tables(tables: RunTables) -> dict[str, str]:
    """CSV tables for `dvc plots` (DVC reads CSV, not Parquet): bigram r against active
    parameters for every mask, and (when configured) per checkpoint."""
    wide = tables.metric_table()
    sweep = wide.filter(pl.col("target").is_in(["bigram", "full"])).sort(
        ["model", "target", "lambda_value"], maintain_order=True
    )
    columns = ["model", "target", "lambda", "kept", "kept_fraction", "bigram_r"]
    columns += [c for c in ("bigram_r_low", "bigram_r_high") if c in sweep.columns]
    out = {"sparsity": csv_text(sweep.select(columns).rename({"kept": "active_parameters"}))}
    if tables.checkpoints is not None:
        trained = tables.checkpoints.filter(pl.col("target") == "bigram")
        steps = wide_metrics(trained, ["model", "step", "lambda", "lambda_value"])
        columns = ["model", "step", "lambda", "kept", "bigram_r", "first_mlp_share"]
        out["checkpoints"] = csv_text(
            steps.sort(["model", "lambda_value", "step"], maintain_order=True)
            .select(columns)
            .rename({"kept": "active_parameters"})
        )
    return out


def findings(
    tables: RunTables,
) -> tuple[list[ModelSummary], list[CheckpointSummary], list[Verdict]]:
    """A run's summaries, checkpoint trajectories and verdicts: what the report and `bsn
    compare` both show, computed one way."""
    models = summarise(tables)
    checkpoints = summarise_checkpoints(tables)
    return models, checkpoints, verdicts(Evidence(models, checkpoints, control_values(tables)))


def run_stage(
    cfg: Config,
    *,
    figures: list[Path],
    html: Path,
    summary: Path,
    plots: list[Path],
    metrics_json: Path,
    **inputs: Any,
) -> None:
    """The report stage: figures, `index.html`, `summary.md`, the DVC plot tables and
    `metrics.json`, all written atomically together, from the run's tables (`inputs`, by name)."""
    from bigram_subnetworks.stages import benchmark_files

    tables = load_run(cfg, inputs, [p for p in benchmark_files(cfg) if p.is_file()])
    models, checkpoints, found = findings(tables)
    ngrams = read_ngrams(inputs.get("ngrams"))
    data = FigureData(tables, models, checkpoints, ngrams)
    pngs = render_figures([p.stem for p in figures], data)
    reference = reference_table(inputs.get("reference_overlap"))
    beyond = ngram_tables(ngrams)
    document = build_document(cfg, tables, models, checkpoints, found, pngs, reference, beyond)
    csvs = plot_tables(tables)
    if [p.stem for p in plots] != list(csvs):
        raise UserError(
            f"report: the declared plots {[p.stem for p in plots]} differ from the ones drawn "
            f"({list(csvs)})"
        )
    with atomic_outputs(*figures, *plots, html, summary, metrics_json) as temps:
        for temp, png in zip(temps, pngs.values(), strict=False):
            temp.write_bytes(png)
        for temp, csv in zip(temps[len(pngs) :], csvs.values(), strict=False):
            temp.write_text(csv, encoding="utf-8")
        html_file, markdown_file, metrics_file = temps[len(pngs) + len(csvs) :]
        html_file.write_text(render_html(document), encoding="utf-8")
        markdown_file.write_text(render_markdown(document), encoding="utf-8")
        write_json(headline_metrics(models, checkpoints, found), metrics_file)
    held = sum(v.status == HOLDS for v in found)
    log.info(
        "report of %d model(s): %d figures, %d of %d claims hold -> %s",
        len(models),
        len(pngs),
        held,
        len(found),
        html.parent,
    )
