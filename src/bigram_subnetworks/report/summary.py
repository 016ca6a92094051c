"""Headline numbers per model, computed once from the run's tables and shared by the summary
tables, the paper comparison and `metrics.json`. Missing quantities are NaN (or None)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.report.tables import RunTables, wide_metrics

NAN = math.nan
REFERENCE = "reference"  # masks.parquet target of the full model (λ neginf) and the empty mask
ATTENTION_KINDS = ("Q", "K", "V", "O")
MLP_KINDS = ("MLP-in", "MLP-out")
BLOCK_KINDS = (*ATTENTION_KINDS, *MLP_KINDS)
# Condition names written by the ablate and residual stages, in display order.
ABLATION_CONDITIONS = (
    "full model",
    "bigram alone",
    "random alone",
    "bigram removed",
    "random removed",
    "optimal removed",
)
RESIDUAL_CONDITIONS = ("full model", "bigram", "random")


@dataclass(frozen=True)
class ModelSummary:
    """One model's headline numbers (fractions of the masked weights; r = bigram surprisal r)."""

    model: str
    parameters: float
    masked_weights: int
    eval_loss: float
    bigram_baseline_loss: float
    full_model_r: float
    lambda0_r: float
    lambda0_kept_fraction: float
    best_r: float
    best_lambda: str | None
    selected_lambda: str
    selected_kept: int
    selected_kept_fraction: float
    selected_r: float
    optimal_lambda: str | None
    optimal_kept_fraction: float
    overlap_observed: float
    overlap_expected: float
    overlap_ratio: float
    overlap_p: float
    overlap_share: float  # share of the bigram mask inside the optimal mask
    first_mlp_share: float
    mlp_share: float
    attention_share: float
    largest_group: str | None  # e.g. "layer 0 MLP": the layer × {attention, MLP} group with most
    first_mlp_is_plurality: bool | None
    ablation_mean: dict[str, float] = field(default_factory=dict)  # condition -> bits
    ablation_sd: dict[str, float] = field(default_factory=dict)
    rotation_to_input: dict[str, dict[int, float]] = field(default_factory=dict)  # cond -> layer
    rotation_to_output: dict[str, dict[int, float]] = field(default_factory=dict)
    covariance_01: dict[str, float] = field(default_factory=dict)  # cond -> similarity(0, 1)

    @property
    def beats_bigram_baseline(self) -> bool | None:
        if math.isnan(self.eval_loss) or math.isnan(self.bigram_baseline_loss):
            return None
        return self.eval_loss < self.bigram_baseline_loss


def _value(frame: pd.DataFrame, column: str) -> float:
    """The single value of `column` in a one-row frame; NaN when absent."""
    if frame.empty or column not in frame:
        return NAN
    value = frame[column].iloc[0]
    return float(value) if pd.notna(value) else NAN


def _mask_row(metrics: pd.DataFrame, target: str, label: str | None) -> pd.DataFrame:
    return metrics[(metrics["target"] == target) & (metrics["lambda"] == label)]


def location(blocks: pd.DataFrame) -> dict[str, Any]:
    """Where a mask's kept weights sit, from its per-block rows (layer, kind, kept): shares in
    layer 0's MLP, in all MLPs and in attention, and the largest layer × {attention, MLP} group."""
    kept = float(blocks["kept"].sum()) if len(blocks) else 0.0
    if kept == 0:
        return {
            "first_mlp_share": NAN,
            "mlp_share": NAN,
            "attention_share": NAN,
            "largest_group": None,
            "first_mlp_is_plurality": None,
        }
    is_mlp = blocks["kind"].isin(MLP_KINDS)
    groups = blocks.assign(part=is_mlp.map({True: "MLP", False: "attention"}))
    by_group = groups.groupby(["layer", "part"])["kept"].sum()
    first_mlp = float(by_group.get((0, "MLP"), 0))
    top_layer, top_part = by_group.idxmax()
    return {
        "first_mlp_share": first_mlp / kept,
        "mlp_share": float(blocks.loc[is_mlp, "kept"].sum()) / kept,
        "attention_share": float(blocks.loc[~is_mlp, "kept"].sum()) / kept,
        "largest_group": f"layer {int(top_layer)} {top_part}",
        "first_mlp_is_plurality": first_mlp > 0 and first_mlp >= float(by_group.max()),
    }


def summarise_model(tables: RunTables, model: str) -> ModelSummary:
    """The headline numbers of one model (see `ModelSummary`)."""
    chosen = tables.selection.get("models", {}).get(model)
    if chosen is None:
        raise UserError(f"selection.json: no entry for model {model!r}; rerun the select stage")
    metrics = tables.metric_table()
    metrics = metrics[metrics["model"] == model]
    full = _mask_row(metrics, REFERENCE, "neginf")
    trained_bigram = metrics[
        (metrics["target"] == "bigram") & metrics["lambda_value"].map(math.isfinite)
    ]
    best = trained_bigram.sort_values("bigram_r", ascending=False).head(1)
    selected_label = chosen["bigram"]["lambda"]
    selected = _mask_row(metrics, "bigram", selected_label)
    optimal_label = chosen["optimal"]["lambda"] if chosen.get("optimal") else None
    lambda0 = _mask_row(metrics, "bigram", "0")

    pair = tables.overlap[
        (tables.overlap["model"] == model) & tables.overlap["selected"].astype(bool)
    ]
    blocks = tables.blocks[
        (tables.blocks["model"] == model)
        & (tables.blocks["target"] == "bigram")
        & (tables.blocks["lambda"] == selected_label)
        & tables.blocks["head"].isna()
    ]
    info = tables.model_info.get(model, {})
    baseline = (info.get("bigram_baseline") or {}).get("cross_entropy")
    ablations = tables.ablations[tables.ablations["model"] == model].set_index("condition")
    residual = tables.residual[tables.residual["model"] == model]
    return ModelSummary(
        model=model,
        parameters=float(info.get("parameters", NAN)),
        masked_weights=int(_value(full, "kept")) if not full.empty else 0,
        eval_loss=float(info.get("final_eval_loss", NAN)),
        bigram_baseline_loss=float(baseline) if baseline is not None else NAN,
        full_model_r=_value(full, "bigram_r"),
        lambda0_r=_value(lambda0, "bigram_r"),
        lambda0_kept_fraction=_value(lambda0, "kept_fraction"),
        best_r=_value(best, "bigram_r"),
        best_lambda=str(best["lambda"].iloc[0]) if not best.empty else None,
        selected_lambda=selected_label,
        selected_kept=int(chosen["bigram"]["kept"]),
        selected_kept_fraction=_value(selected, "kept_fraction"),
        selected_r=_value(selected, "bigram_r"),
        optimal_lambda=optimal_label,
        optimal_kept_fraction=_value(_mask_row(metrics, "full", optimal_label), "kept_fraction"),
        overlap_observed=_value(pair, "observed"),
        overlap_expected=_value(pair, "expected"),
        overlap_ratio=_value(pair, "ratio"),
        overlap_p=_value(pair, "p_value"),
        overlap_share=_value(pair, "share_a_in_b"),
        **location(blocks),
        ablation_mean=ablations["mean_surprisal_bits"].astype(float).to_dict(),
        ablation_sd=ablations["sd_surprisal_bits"].astype(float).to_dict(),
        rotation_to_input=_per_layer(residual, "rotation_to_input"),
        rotation_to_output=_per_layer(residual, "rotation_to_output"),
        covariance_01=_covariance_01(residual),
    )


def _per_layer(residual: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    rows = residual[residual["metric"] == metric]
    return {
        str(condition): {int(r.layer): float(r.value) for r in group.itertuples()}
        for condition, group in rows.groupby("condition", sort=False)
    }


def _covariance_01(residual: pd.DataFrame) -> dict[str, float]:
    rows = residual[
        (residual["metric"] == "covariance_similarity")
        & (residual["layer"] == 0)
        & (residual["layer_b"] == 1)
    ]
    return {str(r.condition): float(r.value) for r in rows.itertuples()}


def summarise(tables: RunTables) -> list[ModelSummary]:
    """`summarise_model` for every model of the run, in config order."""
    return [summarise_model(tables, model) for model in tables.models]


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint model's trajectory: per step, the full model's and λ = 0 mask's r, and the
    fitted r at each budget (with whether it was extrapolated)."""

    model: str
    steps: list[int]
    full_model_r: dict[int, float]
    lambda0_r: dict[int, float]
    r_at_budget: dict[int, dict[int, float]]  # budget -> step -> r
    extrapolated: dict[int, dict[int, bool]]  # budget -> step -> outside the fitted range


def summarise_checkpoints(tables: RunTables) -> list[CheckpointSummary]:
    """Per-model trajectories from `checkpoints.parquet` (empty when not configured)."""
    if tables.checkpoints is None:
        return []
    table = tables.checkpoints
    summaries = []
    for model, rows in table.groupby("model", sort=False):
        masks = wide_metrics(
            rows[rows["budget"].isna() & rows["target"].notna()],
            ["step", "target", "lambda"],
        )
        full = masks[(masks["target"] == REFERENCE) & (masks["lambda"] == "neginf")]
        lambda0 = masks[(masks["target"] == "bigram") & (masks["lambda"] == "0")]
        fits = rows[rows["budget"].notna()]
        estimates = fits[fits["metric"] == "r_at_budget"]
        flags = fits[fits["metric"] == "r_at_budget_extrapolated"]
        summaries.append(
            CheckpointSummary(
                model=str(model),
                steps=sorted(int(s) for s in rows["step"].unique()),
                full_model_r=dict(zip(full["step"].astype(int), full["bigram_r"], strict=True)),
                lambda0_r=dict(zip(lambda0["step"].astype(int), lambda0["bigram_r"], strict=True)),
                r_at_budget=_by_budget(estimates, float),
                extrapolated=_by_budget(flags, bool),
            )
        )
    return summaries


def _by_budget(rows: pd.DataFrame, cast: type) -> dict[int, dict[int, Any]]:
    out: dict[int, dict[int, Any]] = {}
    for r in rows.sort_values(["budget", "step"]).itertuples():
        out.setdefault(int(r.budget), {})[int(r.step)] = cast(r.value)
    return out


def control_values(tables: RunTables) -> dict[str, dict[str, float]]:
    """Bigram r of every Table 2 control, per model (empty when not configured)."""
    if tables.controls is None:
        return {}
    rows = tables.controls[tables.controls["metric"] == "bigram_r"]
    return {
        str(model): {str(r.control): float(r.value) for r in group.itertuples()}
        for model, group in rows.groupby("model", sort=False)
    }
