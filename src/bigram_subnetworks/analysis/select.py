"""λ selection (the paper's §A.3) and the optimal-mask pairing (§6.1), from `masks.parquet`.

Per model: the selected bigram mask is the sparsest trained bigram mask (finite λ) whose bigram r
is within `tolerance` of the λ = 0 mask's; its pair is the sparsest `full`-target mask that keeps
more weights than it. Every n-gram target of the run (unigram, bigram, trigram) gets its own choice
by the same rule on its own r (`<target>_r`, the r with the order-n model's surprisal), under
`orders`. The result is one small JSON file, so every later stage has a static set of inputs (all
masks) and reads the choice from it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from bigram_subnetworks.artifacts import MASK_METRICS, NGRAM_ORDERS
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


def order_metric(target: str) -> str:
    """The r an n-gram target's masks are selected by: the r with the model they are trained
    towards, `<target>_r_backoff` from n = 3 on (training backs an unseen context off to its
    longest seen suffix), else `<target>_r` (bigram: `bigram_r`)."""
    return f"{target}_r_backoff" if NGRAM_ORDERS[target] >= 3 else f"{target}_r"


def choose(masks: list[dict[str, Any]], metric: str, tolerance: float) -> tuple[dict, dict]:
    """(the λ = 0 mask, the sparsest mask whose `metric` is within `tolerance` of its); `masks`
    as `_masks_of` gives them, with a λ = 0 mask among them (ties: the larger λ)."""
    reference = next(m for m in masks if m["lambda_value"] == 0)
    floor = reference[metric] - tolerance
    eligible = [m for m in masks if m[metric] >= floor]
    return reference, min(eligible, key=lambda m: (m["kept"], -m["lambda_value"]))


def _order_masks(table: pa.Table, model: str, target: str) -> list[dict[str, Any]]:
    """The trained masks of one n-gram target, which must include λ = 0 (one-line error)."""
    masks = _masks_of(table, model, target)
    if not any(m["lambda_value"] == 0 for m in masks):
        raise UserError(
            f"model {model}: no {target} mask with λ = 0, which λ selection compares against; "
            f"add '0' to lambdas.{target}"
        )
    return masks


def select_orders(table: pa.Table, model: str, tolerance: float) -> dict[str, Any]:
    """Per n-gram target with masks in `table` (in order of n): the chosen λ, its kept count and
    fraction and its r with that order's model."""
    present = set(table.column("target").to_pylist())
    orders: dict[str, Any] = {}
    for target in (t for t in NGRAM_ORDERS if t in present):
        metric = order_metric(target)
        _, chosen = choose(_order_masks(table, model, target), metric, tolerance)
        orders[target] = {
            "lambda": chosen["lambda"],
            "kept": int(chosen["kept"]),
            "kept_fraction": chosen["kept_fraction"],
            "r": chosen[metric],
        }
    return orders


def select_masks(table: pa.Table, models: list[str], tolerance: float) -> dict[str, Any]:
    """The selection for every model (see the module docstring)."""
    selection: dict[str, Any] = {"tolerance": tolerance, "metric": R_METRIC, "models": {}}
    for model in models:
        reference, chosen = choose(_order_masks(table, model, "bigram"), R_METRIC, tolerance)
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
            "orders": select_orders(table, model, tolerance),
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
