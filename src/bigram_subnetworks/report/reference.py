"""The report's section on the paper authors' released masks (config `reference_masks`): how much
of this run's masks the authors' contain and the other way round, against chance."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from bigram_subnetworks.artifacts import REFERENCE_OVERLAP
from bigram_subnetworks.report.html import Table
from bigram_subnetworks.report.tables import read_table

TITLE = "This run's masks and the authors' released ones"
NOTE = (
    "Each row compares one of this run's masks (A) with one of the paper authors' released masks "
    "of the same model (B, imported by the reference_mask stage; its card names the file). "
    "Overlap = |A ∧ B| over the masked entries; × chance divides it by its expectation under the "
    "authors' row shuffle and under uniform redraws within each block (exact means); p: uniform "
    "null, (1 + #{draws ≥ observed}) / (1 + draws). The shares are |A ∧ B| / |A| and "
    "|A ∧ B| / |B|: 1.0 when the run's mask is the authors'. The paper reports no such number; "
    "a bigram mask that finds the paper's subnetwork shares far more with it than chance."
)


def _number(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}"


def reference_table(path: Path | str | None) -> Table | None:
    """The section's table from `reference_overlap.parquet` (None when not configured)."""
    if path is None:
        return None
    frame = read_table(Path(path), REFERENCE_OVERLAP)
    if frame.is_empty():
        return None
    frame = frame.sort(
        ["model", "reference_lambda", "target", "lambda"], nulls_last=True, maintain_order=True
    )
    rows = [
        {
            "model": row["model"],
            "authors' mask (λ)": f"{row['orig_model_name'] or '?'} (λ {row['reference_lambda']})",
            "this run's mask": f"{row['target']} λ {row['lambda']}",
            "kept: this run / authors'": (
                f"{_number(row['kept_run'], '.4f')} / {_number(row['kept_reference'], '.4f')}"
            ),
            "overlap": _number(row["observed"], ".4f"),
            "× chance, row / uniform null": (
                f"{_number(row['row_ratio'], '.2f')} / {_number(row['ratio'], '.2f')}"
            ),
            "p (uniform)": _number(row["p_value"], ".2g"),
            "share of this run's in the authors'": _number(row["share_run_in_reference"], ".3f"),
            "share of the authors' in this run's": _number(row["share_reference_in_run"], ".3f"),
        }
        for row in frame.iter_rows(named=True)
    ]
    numeric = ("overlap", "p (uniform)")
    numeric += ("share of this run's in the authors'", "share of the authors' in this run's")
    return Table(TITLE, pl.DataFrame(rows), NOTE, numeric=numeric)
