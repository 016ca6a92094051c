"""Bigram subnetworks across pretraining checkpoints (the paper's §4).

The bigram masks of every configured checkpoint (trained by the train_mask stage under model keys
`<model>+step-<N>`; the final checkpoint's are the main grid's) are scored like the final model's
masks (r with its bootstrap interval, kept fraction, LM loss, ...), plus where each mask sits: the
share of its kept weights in the first layer's MLP, in all MLPs and in attention, and whether the
first MLP holds the plurality (the largest layer × {attention, MLP} group), which the paper reports
at every checkpoint. The full model (and the empty mask) is scored at every checkpoint the model
saved, with or without masks there (cheap: one pass each), so its bigram r, and where it peaks, is
tracked at every saved step.

Per checkpoint, bigram r is fitted against the number of active (kept) parameters N over the λ
sweep as a power law in the deficit, 1 − r = c · N^(−k), by least squares on log(1 − r) against
log N, and r is estimated at fixed budgets of active parameters, as the paper does for 500K
parameters. Estimates outside the fitted range of N are flagged as extrapolated (reported, never
used to decide a verdict). Each estimate's interval refits the power law on every bootstrap
resample of the masks' r (the same resamples for every mask), so it carries the eval-sequence
uncertainty of all the points it rests on. Every replicate (each mask's r, each budget estimate) is
written to `checkpoints_replicates.parquet`, so the report decides "A above B" on the interval of
the resampled difference A − B (paired).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bigram_subnetworks.artifacts import CHECKPOINTS, model_key
from bigram_subnetworks.config import Config, lambda_value
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, write_parquet

log = logging.getLogger(__name__)

SCHEMA = CHECKPOINTS.schema
DROPINF = "_dropinf"  # metric suffix of the fit of the drop-unseen r


def location_shares(blocks: list[dict[str, Any]]) -> dict[str, float]:
    """Where a mask's kept weights sit, from per-block rows (layer, kind, kept): the shares in
    layer 0's MLP, in every MLP and in attention, and `first_mlp_plurality` (1.0 when layer 0's
    MLP holds at least as many as every other layer × {attention, MLP} group, else 0.0); NaN
    for an empty mask."""
    kept = sum(b["kept"] for b in blocks)
    if kept == 0:
        return dict.fromkeys(
            ("first_mlp_share", "mlp_share", "attention_share", "first_mlp_plurality"), math.nan
        )
    groups: dict[tuple[int, str], int] = defaultdict(int)
    for b in blocks:
        groups[(int(b["layer"]), "MLP" if b["kind"].startswith("MLP") else "attention")] += int(
            b["kept"]
        )
    first_mlp = groups.get((0, "MLP"), 0)
    mlp_kept = sum(count for (_, part), count in groups.items() if part == "MLP")
    return {
        "first_mlp_share": first_mlp / kept,
        "mlp_share": mlp_kept / kept,
        "attention_share": (kept - mlp_kept) / kept,
        "first_mlp_plurality": float(first_mlp > 0 and first_mlp >= max(groups.values())),
    }


def largest_group(blocks: list[dict[str, Any]]) -> str | None:
    """The layer × {attention, MLP} group holding most of a mask's kept weights ("layer 0 MLP");
    None for an empty mask."""
    groups: dict[tuple[int, str], int] = defaultdict(int)
    for b in blocks:
        groups[(int(b["layer"]), "MLP" if b["kind"].startswith("MLP") else "attention")] += int(
            b["kept"]
        )
    if not groups or max(groups.values()) == 0:
        return None
    layer, part = max(groups, key=lambda key: (groups[key], -key[0], key[1] == "MLP"))
    return f"layer {layer} {part}"


def _row(
    model: str,
    step: int,
    target: str | None,
    label: str | None,
    metric: str,
    value: float,
    budget: int | None = None,
) -> dict[str, Any]:
    return {
        "model": model,
        "step": step,
        "target": target,
        "lambda": label,
        "lambda_value": lambda_value(label) if label is not None else None,
        "budget": budget,
        "metric": metric,
        "value": float(value),
    }


@dataclass(frozen=True)
class PowerLaw:
    """1 − r = scale · N^(−exponent), fitted on `points` masks with N in [n_min, n_max]."""

    scale: float
    exponent: float
    r2: float
    points: int
    n_min: float
    n_max: float

    def r_at(self, active: float) -> float:
        return 1.0 - self.scale * active ** (-self.exponent)


def fit_power_law(active: np.ndarray, r: np.ndarray) -> PowerLaw | None:
    """Least-squares fit of log(1 − r) = log c − k · log N over masks with N > 0 and r < 1;
    None when fewer than two distinct N remain."""
    active, r = np.asarray(active, dtype=np.float64), np.asarray(r, dtype=np.float64)
    usable = (active > 0) & np.isfinite(r) & (r < 1)
    x, y = np.log(active[usable]), np.log1p(-r[usable])
    if len(np.unique(x)) < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0
    return PowerLaw(
        math.exp(intercept),
        -slope,
        r2,
        int(usable.sum()),
        float(active[usable].min()),
        float(active[usable].max()),
    )


def budget_replicates(
    active: np.ndarray, replicates: np.ndarray, budgets: list[int], usable: np.ndarray
) -> np.ndarray:
    """r at every budget under the power law refitted on each bootstrap resample: `replicates`
    is (resamples, masks) of bigram r, `usable` the masks the point fit used. Returns
    (resamples, budgets); NaN for a resample with an r ≥ 1 or a non-finite r."""
    x = np.log(np.asarray(active, dtype=np.float64)[usable])
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log1p(-np.asarray(replicates, dtype=np.float64)[:, usable])
    bad = ~np.isfinite(y).all(1)
    y[bad] = 0.0  # estimated, then set to NaN below
    centred = x - x.mean()
    slope = (y - y.mean(1, keepdims=True)) @ centred / (centred @ centred)
    intercept = y.mean(1) - slope * x.mean()
    logs = np.log(np.asarray(budgets, dtype=np.float64))
    estimate = 1.0 - np.exp(intercept[:, None] + slope[:, None] * logs[None, :])
    estimate[bad] = np.nan
    return estimate


def fit_rows(
    model: str,
    step: int,
    masks: list[tuple[float, float]],
    budgets: list[int],
    replicates: np.ndarray | None = None,
    suffix: str = "",
) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """The fit's parameters (its quality `fit_r2` included) and the r estimated at every budget,
    for one checkpoint's masks given as (active parameters, bigram r); with `replicates`
    ((resamples, masks) bootstrap r of the same masks) also each estimate's percentile interval
    (`r_at_budget_low`/`_high`) and, returned beside the rows, its replicates by budget. Metric
    names end with `suffix` (`_dropinf` for the fit of the drop-unseen r)."""
    active = np.array([m[0] for m in masks], dtype=np.float64)
    r = np.array([m[1] for m in masks], dtype=np.float64)
    fit = fit_power_law(active, r)
    if fit is None:
        log.warning("%s step %d: fewer than two usable masks; no power-law fit", model, step)
        return [_row(model, step, None, None, "fit_points" + suffix, 0)], {}
    rows = [
        _row(model, step, None, None, "fit_scale" + suffix, fit.scale),
        _row(model, step, None, None, "fit_exponent" + suffix, fit.exponent),
        _row(model, step, None, None, "fit_r2" + suffix, fit.r2),
        _row(model, step, None, None, "fit_points" + suffix, fit.points),
    ]
    intervals: dict[int, tuple[float, float]] = {}
    draws: dict[int, np.ndarray] = {}
    if replicates is not None and np.asarray(replicates).size:
        from bigram_subnetworks.analysis.scoring import percentile_interval

        usable = (active > 0) & np.isfinite(r) & (r < 1)
        estimates = budget_replicates(active, np.asarray(replicates), budgets, usable)
        draws = {b: estimates[:, i] for i, b in enumerate(budgets)}
        intervals = {b: percentile_interval(column) for b, column in draws.items()}
    for budget in budgets:
        outside = not fit.n_min <= budget <= fit.n_max
        name = f"r_at_budget{suffix}"
        rows.append(_row(model, step, None, None, name, fit.r_at(budget), budget))
        rows.append(_row(model, step, None, None, f"{name}_extrapolated", outside, budget))
        if budget in intervals:
            low, high = intervals[budget]
            rows.append(_row(model, step, None, None, f"r_at_budget{suffix}_low", low, budget))
            rows.append(_row(model, step, None, None, f"r_at_budget{suffix}_high", high, budget))
    return rows, draws


def checkpoint_rows(
    name: str,
    step: int,
    model: Any,
    identity: dict[str, Any],
    masks: list[Any],
    counts: Any,
    sequences: np.ndarray,
    batch_size: int,
    device: Any,
    resamples: int = 0,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """The rows of one checkpoint (every mask, the checkpoint's full model and the empty mask,
    with the location of each mask) and the bootstrap replicates of each mask's bigram r."""
    from bigram_subnetworks.analysis.scoring import score_masks

    found = score_masks(
        name, model, masks, counts, sequences, batch_size, device, identity, resamples, seed
    )
    by_mask: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for block in found.blocks:
        if block["head"] is None:
            by_mask[(block["target"], block["lambda"])].append(block)
    rows = [{**row, "step": step, "budget": None} for row in found.metrics]
    for (target, label), mask_blocks in by_mask.items():
        for metric, value in location_shares(mask_blocks).items():
            rows.append(_row(name, step, target, label, metric, value))
    return rows, found.replicates


def saved_steps(info: dict[str, Any]) -> list[int]:
    """The checkpoint steps a model folder holds, from its model.json: an embedded model's saved
    `step-<N>/` folders, a Hub model's fetched revisions."""
    return sorted(int(step) for step in info.get("checkpoints") or [])


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    tokens_eval: Path,
    bigram_stats: Path,
    checkpoints: Path,
    checkpoint_replicates: Path,
) -> None:
    """The checkpoints stage: score every checkpoint's masks and the full model at every saved
    checkpoint, add the power-law fits and write `checkpoints.parquet` (one row per model × step
    × mask × metric; fits have a null λ) and the bootstrap replicates of every r and estimate."""
    from bigram_subnetworks.analysis.scoring import (
        R_METRICS,
        ReplicateSeries,
        eval_sample,
        index_masks,
        replicate_series,
        replicate_table,
    )
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.models.loading import dropped_steps, pick_device, read_model_info
    from bigram_subnetworks.models.variants import load_variant

    if cfg.checkpoints is None:
        raise UserError("checkpoints: not configured; add a checkpoints section to the config")
    counts = read_bigram_counts(bigram_stats)
    sequences = eval_sample(read_sequences(tokens_eval), cfg.analysis.eval_sequences, cfg.seed)
    device = pick_device(cfg.device)
    index = index_masks(masks)
    rows: list[dict[str, Any]] = []
    series: list[ReplicateSeries] = []
    scored = 0
    for model_dir in models:
        name = model_dir.name
        info = read_model_info(model_dir)
        final = info.get("final_step")
        with_masks = set(cfg.checkpoints.steps)
        # steps whose revisions serve another step's weights (fetch, duplicate_steps: drop)
        for step in sorted((with_masks | set(saved_steps(info))) - dropped_steps(info)):
            variant = None if step == final else f"step-{step}"
            model, identity = load_variant(model_dir, variant)
            step_masks = index.get(model_key(name, variant), []) if step in with_masks else []
            table, replicates = checkpoint_rows(
                name,
                step,
                model,
                identity,
                step_masks,
                counts,
                sequences,
                cfg.analysis.batch_size,
                device,
                cfg.analysis.bootstrap_resamples,
                cfg.seed,
            )
            rows += table
            series += replicate_series(name, replicates, step)
            scored += 1
            if step not in with_masks or not step_masks:
                log.info("%s step %d: full model and empty mask scored", name, step)
                continue
            values: dict[str, dict[str, float]] = defaultdict(dict)
            for row in table:
                if row["target"] == "bigram":
                    values[row["lambda"]][row["metric"]] = row["value"]
            for metric, suffix in (("bigram_r", ""), ("bigram_r_dropinf", DROPINF)):
                # the fit of the clipped r, and of the drop-unseen r (the paper's regime)
                column = R_METRICS.index(metric)
                points = [(v["kept"], v[metric]) for v in values.values()]
                draws = np.stack(
                    [replicates[("bigram", label)][:, column] for label in values], axis=1
                )
                fitted, estimates = fit_rows(
                    name, step, points, cfg.checkpoints.budgets, draws, suffix
                )
                rows += fitted
                series += [
                    (name, step, None, None, budget, "r_at_budget" + suffix, estimate)
                    for budget, estimate in estimates.items()
                ]
            log.info("%s step %d: %d masks scored", name, step, len(step_masks))
    with atomic_outputs(checkpoints, checkpoint_replicates) as (temp, temp_replicates):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
        write_parquet(replicate_table(series), temp_replicates, seed=cfg.seed)
    log.info("%d checkpoints of %d model(s) -> %s", scored, len(models), checkpoints)
