"""λ selection (the paper's §A.3) and the optimal-mask pairing (§6.1), from `masks.parquet`.

Per model: the selected bigram mask is the sparsest trained bigram mask (finite λ) whose bigram r
is within `tolerance` of the λ = 0 mask's; its pair is the sparsest `full`-target mask that keeps
more weights than it. The result is one small JSON file, so every later stage has a static set of
inputs (all masks) and reads the choice from it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from bigram_subnetworks.artifacts import MASK_METRICS
from bigram_subnetworks.config import Config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, read_json, read_parquet, write_json

log = logging.getLogger(__name__)

R_METRIC = "bigram_r"


def _masks_of(table: pa.Table, model: str, target: str) -> list[dict[str, Any]]:
    """Trained masks (finite λ) of one model and target: lambda, lambda_value, kept, r."""
    rows: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        if row["model"] != model or row["target"] != target:
            continue
        if not math.isfinite(row["lambda_value"]):
            continue
        entry = rows.setdefault(
            row["lambda"], {"lambda": row["lambda"], "lambda_value": row["lambda_value"]}
        )
        entry[row["metric"]] = row["value"]
    return sorted(rows.values(), key=lambda r: r["lambda_value"])


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "lambda": entry["lambda"],
        "kept": int(entry["kept"]),
        "kept_fraction": entry["kept_fraction"],
        "bigram_r": entry[R_METRIC],
    }


def select_masks(table: pa.Table, models: list[str], tolerance: float) -> dict[str, Any]:
    """The selection for every model (see the module docstring)."""
    selection: dict[str, Any] = {"tolerance": tolerance, "metric": R_METRIC, "models": {}}
    for model in models:
        bigram = _masks_of(table, model, "bigram")
        reference = next((m for m in bigram if m["lambda_value"] == 0), None)
        if reference is None:
            raise UserError(
                f"model {model}: no bigram mask with λ = 0, which λ selection compares against; "
                "add '0' to lambdas.bigram"
            )
        floor = reference[R_METRIC] - tolerance
        eligible = [m for m in bigram if m[R_METRIC] >= floor]
        chosen = min(eligible, key=lambda m: (m["kept"], -m["lambda_value"]))
        optimal = [m for m in _masks_of(table, model, "full") if m["kept"] > chosen["kept"]]
        paired = min(optimal, key=lambda m: (m["kept"], -m["lambda_value"])) if optimal else None
        if paired is None:
            log.warning(
                "%s: no optimal (full-target) mask keeps more than the selected bigram mask "
                "(%d weights); analyses that need the pair skip this model",
                model,
                chosen["kept"],
            )
        selection["models"][model] = {
            "reference": _summary(reference),
            "bigram": _summary(chosen),
            "optimal": _summary(paired) if paired else None,
        }
        log.info(
            "%s: bigram λ=%s (%.4f kept, r=%.3f vs %.3f at λ=0); optimal λ=%s",
            model,
            chosen["lambda"],
            chosen["kept_fraction"],
            chosen[R_METRIC],
            reference[R_METRIC],
            paired["lambda"] if paired else "none",
        )
    return selection


def run_stage(cfg: Config, *, mask_metrics: Path, selection: Path) -> None:
    """The select stage: `selection.json` from `masks.parquet` (every model in it, in order)."""
    table = read_parquet(mask_metrics, columns=MASK_METRICS.schema.names)
    models = list(dict.fromkeys(table.column("model").to_pylist()))
    chosen = select_masks(table, models, cfg.analysis.selection_tolerance)
    with atomic_outputs(selection) as (temp,):
        write_json(chosen, temp)


def read_selection(path: Path, model: str) -> dict[str, Any]:
    """One model's entry of `selection.json`."""
    selection = read_json(path)
    if model not in selection.get("models", {}):
        raise UserError(f"{path}: no entry for model {model!r}; rerun the select stage")
    return selection["models"][model]
