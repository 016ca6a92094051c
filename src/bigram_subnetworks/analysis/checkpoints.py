"""Bigram subnetworks across pretraining checkpoints (the paper's §4).

At every configured checkpoint of a model, bigram masks are trained for a λ subset and scored like
the final model's masks (r, kept fraction, LM loss, ...), plus where the mask sits: the share of
its kept weights in the first layer's MLP, in all MLPs and in attention. The checkpoint's own full
model is scored too, so its bigram r is tracked per step.

Per checkpoint, bigram r is fitted against the number of active (kept) parameters N over the λ
sweep as a power law in the deficit, 1 − r = c · N^(−k), by least squares on log(1 − r) against
log N, and r is estimated at fixed budgets of active parameters, as the paper does for 500K
parameters. Estimates outside the fitted range of N are flagged as extrapolated.
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

from bigram_subnetworks.config import Config, lambda_value
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, read_parquet, write_parquet

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.parquet"
SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("step", pa.int64()),
        ("target", pa.string()),
        ("lambda", pa.string()),
        ("lambda_value", pa.float64()),
        ("budget", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)


def checkpoint_dir(checkpoints_dir: Path, model: str, step: int) -> Path:
    """Where the masks and metrics of one checkpoint go: <checkpoints_dir>/<model>/step-<N>/."""
    return Path(checkpoints_dir) / model / f"step-{step}"


def location_shares(blocks: list[dict[str, Any]]) -> dict[str, float]:
    """Shares of a mask's kept weights in layer 0's MLP, in every MLP and in attention, from
    per-block rows (layer, kind, kept); NaN for an empty mask."""
    kept = sum(b["kept"] for b in blocks)
    if kept == 0:
        return {"first_mlp_share": math.nan, "mlp_share": math.nan, "attention_share": math.nan}
    mlp = [b for b in blocks if b["kind"].startswith("MLP")]
    first_mlp = sum(b["kept"] for b in mlp if b["layer"] == 0)
    mlp_kept = sum(b["kept"] for b in mlp)
    return {
        "first_mlp_share": first_mlp / kept,
        "mlp_share": mlp_kept / kept,
        "attention_share": (kept - mlp_kept) / kept,
    }


def train_checkpoint_masks(
    cfg: Config, name: str, model_dir: Path, step: int, data_dir: Path, output_dir: Path
) -> None:
    """The checkpoint-masks stage: train the configured λ subset of bigram masks at one checkpoint
    and write them with `metrics.parquet` (every mask, the checkpoint's full model and the empty
    mask, with location shares)."""
    from bigram_subnetworks.analysis.evaluate import eval_sample, evaluate_model, find_masks
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.masks.train import MaskRun, train_mask
    from bigram_subnetworks.models.loading import load_checkpoint, pick_device

    if cfg.checkpoints is None:
        raise UserError("checkpoints: not configured; add a checkpoints section to the config")
    spec = cfg.models.get(name)
    trust = bool(getattr(spec, "trust_remote_code", False))
    model, identity = load_checkpoint(model_dir, step, trust_remote_code=trust)
    counts = read_bigram_counts(data_dir)
    train = read_sequences(data_dir / "tokens_train.parquet")
    device = pick_device(cfg.device)
    for label in cfg.checkpoints.lambdas:
        run = MaskRun("bigram", label, cfg.masks, cfg.seed, identity)
        log.info("%s step %d: training the bigram mask with λ=%s", name, step, label)
        train_mask(
            model, run, train, counts, output_dir / "bigram" / f"lambda-{label}.safetensors", device
        )

    evaluation = eval_sample(
        read_sequences(data_dir / "tokens_eval.parquet"), cfg.analysis.eval_sequences, cfg.seed
    )
    metrics, blocks = evaluate_model(
        name,
        model,
        find_masks(output_dir),
        counts,
        evaluation,
        cfg.analysis.batch_size,
        device,
        identity,
    )
    by_mask: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for block in blocks:
        if block["head"] is None:
            by_mask[(block["target"], block["lambda"])].append(block)
    rows = [{**row, "step": step, "budget": None} for row in metrics]
    for (target, label), mask_blocks in by_mask.items():
        for metric, value in location_shares(mask_blocks).items():
            rows.append(_row(name, step, target, label, metric, value))
    with atomic_outputs(output_dir / METRICS_FILE) as (temp,):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
    log.info("%s step %d: %d masks scored -> %s", name, step, len(by_mask), output_dir)


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


def fit_rows(
    model: str, step: int, masks: list[tuple[float, float]], budgets: list[int]
) -> list[dict[str, Any]]:
    """The fit's parameters and the r estimated at every budget, for one checkpoint's masks given
    as (active parameters, bigram r)."""
    fit = fit_power_law(np.array([m[0] for m in masks]), np.array([m[1] for m in masks]))
    if fit is None:
        log.warning("%s step %d: fewer than two usable masks; no power-law fit", model, step)
        return [_row(model, step, None, None, "fit_points", 0)]
    rows = [
        _row(model, step, None, None, "fit_scale", fit.scale),
        _row(model, step, None, None, "fit_exponent", fit.exponent),
        _row(model, step, None, None, "fit_r2", fit.r2),
        _row(model, step, None, None, "fit_points", fit.points),
    ]
    for budget in budgets:
        outside = not fit.n_min <= budget <= fit.n_max
        rows.append(_row(model, step, None, None, "r_at_budget", fit.r_at(budget), budget))
        rows.append(_row(model, step, None, None, "r_at_budget_extrapolated", outside, budget))
    return rows


def run_checkpoints(cfg: Config, checkpoints_dir: Path, output: Path) -> None:
    """The checkpoints stage: gather every checkpoint's metrics, add the power-law fits and write
    `checkpoints.parquet` (one row per model × step × mask × metric, fits with a null λ)."""
    if cfg.checkpoints is None:
        raise UserError("checkpoints: not configured; add a checkpoints section to the config")
    rows: list[dict[str, Any]] = []
    for model in cfg.checkpoints.models:
        for step in cfg.checkpoints.steps:
            path = checkpoint_dir(checkpoints_dir, model, step) / METRICS_FILE
            table = read_parquet(path, columns=SCHEMA.names).to_pylist()
            rows += table
            values: dict[str, dict[str, float]] = defaultdict(dict)
            for row in table:
                if row["target"] == "bigram":
                    values[row["lambda"]][row["metric"]] = row["value"]
            masks = [(v["kept"], v["bigram_r"]) for v in values.values()]
            rows += fit_rows(model, step, masks, cfg.checkpoints.budgets)
    with atomic_outputs(output) as (temp,):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
    log.info(
        "%d checkpoints of %d model(s) -> %s",
        len(cfg.checkpoints.steps) * len(cfg.checkpoints.models),
        len(cfg.checkpoints.models),
        output,
    )
