"""Headline numbers per model, computed once from the run's tables and shared by the summary
tables, the paper comparison and `metrics.json`. Missing quantities are NaN (or None).

The same dataclasses hold the paper's own reported numbers (`report.paper.paper_evidence`), so the
verdict functions of `report.claims` read a run and the paper alike: every field has a default,
and a source fills in what it has.
"""

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
LOW, HIGH = "_low", "_high"  # suffixes of an r metric's bootstrap interval (analysis.scoring)


@dataclass(frozen=True)
class Estimate:
    """A correlation with its bootstrap interval (NaN bounds: none, e.g. the paper's numbers) and
    the unseen-bigram fraction of the positions it was scored on (NaN: not known)."""

    value: float = NAN
    low: float = NAN
    high: float = NAN
    unseen: float = NAN

    @property
    def measured(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def bounds(self) -> tuple[float, float]:
        """(low, high); the point value twice where there is no interval."""
        return (self.low, self.high) if self.has_interval else (self.value, self.value)

    def text(self, spec: str = ".3f") -> str:
        """'0.912 [0.905, 0.918]' (or just the value without an interval; '–' when missing)."""
        if not self.measured:
            return "–"
        if not self.has_interval:
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    @classmethod
    def of(cls, values: dict[str, Any], metric: str, unseen: str = "unseen_fraction") -> Estimate:
        """The estimate of `metric` from a row of metrics (with `metric_low`/`_high`)."""

        def number(name: str) -> float:
            value = values.get(name)
            return float(value) if value is not None and pd.notna(value) else NAN

        return cls(number(metric), number(metric + LOW), number(metric + HIGH), number(unseen))


@dataclass(frozen=True)
class ModelSummary:
    """One model's headline numbers (fractions of the masked weights; r = bigram surprisal r).

    `estimates` holds every r with its interval and unseen fraction, by name: full_model_r,
    full_model_r_dropinf, best_r, best_r_dropinf, selected_r, lambda0_r, empty_r (the empty mask:
    embeddings only). `sweep` lists the trained bigram masks that keep weights as (kept, r)."""

    model: str
    parameters: float = NAN
    masked_weights: int = 0
    eval_loss: float = NAN
    bigram_baseline_loss: float = NAN
    full_model_r: float = NAN
    lambda0_r: float = NAN
    lambda0_kept_fraction: float = NAN
    best_r: float = NAN
    best_lambda: str | None = None
    best_dropinf_lambda: str | None = None
    selected_lambda: str | None = None
    selected_kept: int = 0
    selected_kept_fraction: float = NAN
    selected_r: float = NAN
    optimal_lambda: str | None = None
    optimal_kept_fraction: float = NAN
    overlap_observed: float = NAN
    overlap_expected: float = NAN  # uniform within-block null
    overlap_ratio: float = NAN
    overlap_p: float = NAN
    overlap_draws: int = 0
    overlap_row_expected: float = NAN  # row-shuffle null (the authors' code)
    overlap_row_ratio: float = NAN
    overlap_row_p: float = NAN
    overlap_share: float = NAN  # share of the bigram mask inside the optimal mask
    first_mlp_share: float = NAN
    mlp_share: float = NAN
    attention_share: float = NAN
    largest_group: str | None = None  # e.g. "layer 0 MLP": the layer × {attention, MLP} group
    first_mlp_is_plurality: bool | None = None
    unseen_fraction: float = NAN  # eval positions whose bigram was never counted
    estimates: dict[str, Estimate] = field(default_factory=dict)
    sweep: list[tuple[float, Estimate]] = field(default_factory=list)  # (kept, r) per mask
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

    def estimate(self, name: str) -> Estimate:
        """An r by name (see the class docstring); NaN when not measured."""
        return self.estimates.get(name, Estimate())

    @property
    def p_resolution(self) -> float:
        """The smallest p-value the overlap test's draws can give: 1 / (draws + 1)."""
        return 1.0 / (self.overlap_draws + 1) if self.overlap_draws > 0 else NAN


def _value(frame: pd.DataFrame, column: str) -> float:
    """The single value of `column` in a one-row frame; NaN when absent."""
    if frame.empty or column not in frame:
        return NAN
    value = frame[column].iloc[0]
    return float(value) if pd.notna(value) else NAN


def _row(frame: pd.DataFrame) -> dict[str, Any]:
    return frame.iloc[0].to_dict() if not frame.empty else {}


def _mask_row(metrics: pd.DataFrame, target: str, label: str | None) -> pd.DataFrame:
    return metrics[(metrics["target"] == target) & (metrics["lambda"] == label)]


def location(blocks: pd.DataFrame) -> dict[str, Any]:
    """Where a mask's kept weights sit, from its per-block rows (layer, kind, kept): shares in
    layer 0's MLP, in all MLPs and in attention, the largest layer × {attention, MLP} group and
    whether layer 0's MLP holds the plurality (the same rule as the checkpoints stage's)."""
    from bigram_subnetworks.analysis.checkpoints import largest_group, location_shares

    rows = blocks[["layer", "kind", "kept"]].to_dict("records") if len(blocks) else []
    shares = location_shares(rows)
    plurality = shares.pop("first_mlp_plurality")
    return {
        **shares,
        "largest_group": largest_group(rows),
        "first_mlp_is_plurality": None if math.isnan(plurality) else bool(plurality),
    }


def _best(trained: pd.DataFrame, metric: str) -> pd.DataFrame:
    if trained.empty or metric not in trained:
        return trained.head(0)
    return trained.sort_values(metric, ascending=False, kind="stable").head(1)


def summarise_model(tables: RunTables, model: str) -> ModelSummary:
    """The headline numbers of one model (see `ModelSummary`)."""
    chosen = tables.selection.get("models", {}).get(model)
    if chosen is None:
        raise UserError(f"selection.json: no entry for model {model!r}; rerun the select stage")
    metrics = tables.metric_table()
    metrics = metrics[metrics["model"] == model]
    full = _mask_row(metrics, REFERENCE, "neginf")
    empty = _mask_row(metrics, REFERENCE, "inf")
    trained_bigram = metrics[
        (metrics["target"] == "bigram") & metrics["lambda_value"].map(math.isfinite)
    ]
    best = _best(trained_bigram, "bigram_r")
    best_dropinf = _best(trained_bigram, "bigram_r_dropinf")
    selected_label = chosen["bigram"]["lambda"]
    selected = _mask_row(metrics, "bigram", selected_label)
    optimal_label = chosen["optimal"]["lambda"] if chosen.get("optimal") else None
    lambda0 = _mask_row(metrics, "bigram", "0")
    estimates = {
        "full_model_r": Estimate.of(_row(full), "bigram_r"),
        "full_model_r_dropinf": Estimate.of(_row(full), "bigram_r_dropinf"),
        "best_r": Estimate.of(_row(best), "bigram_r"),
        "best_r_dropinf": Estimate.of(_row(best_dropinf), "bigram_r_dropinf"),
        "selected_r": Estimate.of(_row(selected), "bigram_r"),
        "lambda0_r": Estimate.of(_row(lambda0), "bigram_r"),
        "empty_r": Estimate.of(_row(empty), "bigram_r"),
    }
    sweep = [
        (float(row["kept"]), Estimate.of(row, "bigram_r"))
        for row in trained_bigram.sort_values("kept").to_dict("records")
        if row.get("kept", 0) > 0
    ]

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
        best_dropinf_lambda=str(best_dropinf["lambda"].iloc[0]) if not best_dropinf.empty else None,
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
        overlap_draws=int(_value(pair, "draws")) if not pair.empty else 0,
        overlap_row_expected=_value(pair, "row_expected"),
        overlap_row_ratio=_value(pair, "row_ratio"),
        overlap_row_p=_value(pair, "row_p_value"),
        overlap_share=_value(pair, "share_a_in_b"),
        **location(blocks),
        unseen_fraction=_value(full, "unseen_fraction"),
        estimates=estimates,
        sweep=sweep,
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
    """One checkpoint model's trajectory: per step, the full model's and λ = 0 mask's r, the
    fitted r at each budget (with whether it was extrapolated), and per λ label whether the
    layer-0 MLP holds the plurality of the mask (None: the mask keeps nothing)."""

    model: str
    steps: list[int] = field(default_factory=list)
    full_model_r: dict[int, Estimate] = field(default_factory=dict)
    lambda0_r: dict[int, Estimate] = field(default_factory=dict)
    r_at_budget: dict[int, dict[int, Estimate]] = field(default_factory=dict)  # budget -> step
    extrapolated: dict[int, dict[int, bool]] = field(default_factory=dict)  # budget -> step
    plurality: dict[str, dict[int, bool | None]] = field(default_factory=dict)  # λ -> step
    unseen_fraction: float = NAN
    r_variant: str = "clipped r"  # which r the trajectories show (see regime_of)


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
        plurality: dict[str, dict[int, bool | None]] = {}
        if "first_mlp_plurality" in masks:
            trained = masks[masks["target"] == "bigram"]
            for r in trained.to_dict("records"):
                value = r["first_mlp_plurality"]
                flag = None if value is None or pd.isna(value) else bool(value)
                plurality.setdefault(str(r["lambda"]), {})[int(r["step"])] = flag
        unseen = full["unseen_fraction"] if "unseen_fraction" in full else pd.Series([], float)
        last = full.sort_values("step").tail(1).to_dict("records")
        suffix, variant = regime_of(last[0] if last else {})
        summaries.append(
            CheckpointSummary(
                model=str(model),
                steps=sorted(int(s) for s in rows["step"].unique()),
                full_model_r=_by_step(full, "bigram_r" + suffix),
                lambda0_r=_by_step(lambda0, "bigram_r" + suffix),
                r_at_budget=_estimates_by_budget(fits, "r_at_budget" + suffix),
                extrapolated=_flags_by_budget(
                    fits[fits["metric"] == f"r_at_budget{suffix}_extrapolated"]
                ),
                plurality=plurality,
                unseen_fraction=float(unseen.iloc[0]) if len(unseen) else NAN,
                r_variant=variant,
            )
        )
    return summaries


# Clipping the unseen bigrams' surprisal moves r by less than this: negligible (half a unit of the
# third decimal, the precision the paper reports r to).
NEGLIGIBLE_CLIPPING = 0.0005


def regime_of(full: dict[str, Any]) -> tuple[str, str]:
    """The metric suffix and name of the r that matches the paper's regime, from a full model's
    row: the drop-unseen r where clipping the unseen bigrams moves r by NEGLIGIBLE_CLIPPING or
    more (the paper counts bigrams over 1.28B tokens: few are unseen), the clipped r otherwise."""
    unseen, clipped, dropped = (
        float(full[k]) if full.get(k) is not None and pd.notna(full[k]) else NAN
        for k in ("unseen_fraction", "bigram_r", "bigram_r_dropinf")
    )
    if not (unseen > 0 and math.isfinite(clipped) and math.isfinite(dropped)):
        return "", "clipped r"
    if abs(clipped - dropped) < NEGLIGIBLE_CLIPPING:
        return "", f"clipped r ({unseen:.2%} unseen: negligible)"
    return "_dropinf", f"drop-unseen r ({unseen:.2%} of eval positions unseen)"


def _by_step(masks: pd.DataFrame, metric: str = "bigram_r") -> dict[int, Estimate]:
    return {int(r["step"]): Estimate.of(r, metric) for r in masks.to_dict("records")}


def _estimates_by_budget(
    fits: pd.DataFrame, metric: str = "r_at_budget"
) -> dict[int, dict[int, Estimate]]:
    wide = wide_metrics(fits, ["budget", "step"])
    out: dict[int, dict[int, Estimate]] = {}
    if metric not in wide:
        return out
    for r in wide.sort_values(["budget", "step"]).to_dict("records"):
        out.setdefault(int(r["budget"]), {})[int(r["step"])] = Estimate.of(r, metric)
    return out


def _flags_by_budget(rows: pd.DataFrame) -> dict[int, dict[int, bool]]:
    out: dict[int, dict[int, bool]] = {}
    for r in rows.sort_values(["budget", "step"]).itertuples():
        out.setdefault(int(r.budget), {})[int(r.step)] = bool(r.value)
    return out


def control_values(tables: RunTables) -> dict[str, dict[str, Estimate]]:
    """Bigram r of every Table 2 control (with its interval and unseen fraction), per model
    (empty when not configured)."""
    if tables.controls is None:
        return {}
    wide = wide_metrics(tables.controls, ["model", "control"])
    out: dict[str, dict[str, Estimate]] = {}
    for r in wide.to_dict("records"):
        out.setdefault(str(r["model"]), {})[str(r["control"])] = Estimate.of(r, "bigram_r")
    return out
