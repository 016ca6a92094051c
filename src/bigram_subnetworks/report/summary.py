"""Headline numbers per model, computed once from the run's tables and shared by the summary
tables, the paper comparison and `metrics.json`. Missing quantities are NaN (or None).

The same dataclasses hold the paper's own reported numbers (`report.paper.paper_evidence`), so the
verdict functions of `report.claims` read a run and the paper alike: every field has a default,
and a source fills in what it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from bigram_subnetworks.artifacts import RANDOM_BODY, model_key
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
    """A correlation with its bootstrap interval (NaN bounds: none, e.g. the paper's numbers),
    the unseen-bigram fraction of the positions it was scored on (NaN: not known) and, where the
    run stored them, its bootstrap replicates (`draws`: one value per resample, the resamples
    shared by every r of a run, so two estimates' difference is paired)."""

    value: float = NAN
    low: float = NAN
    high: float = NAN
    unseen: float = NAN
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)

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

    @property
    def paired(self) -> bool:
        """Whether the estimate carries bootstrap replicates."""
        return self.draws is not None and len(self.draws) > 0

    def minus(self, other: Estimate) -> Estimate:
        """self − other. Paired where both carry replicates of the same resamples: the interval
        is the percentile interval of the resampled difference (and the result keeps those
        replicates); otherwise the marginal bounds' separation (low − other's high, high −
        other's low), which is exact for exact values (the paper's)."""
        value = self.value - other.value
        if self.paired and other.paired and len(self.draws) == len(other.draws):  # type: ignore[arg-type]
            from bigram_subnetworks.analysis.scoring import percentile_interval

            difference = np.asarray(self.draws) - np.asarray(other.draws)
            low, high = percentile_interval(difference)
            return Estimate(value, low, high, draws=difference)
        (a_low, a_high), (b_low, b_high) = self.bounds(), other.bounds()
        return Estimate(value, a_low - b_high, a_high - b_low)

    @classmethod
    def of(
        cls,
        values: dict[str, Any],
        metric: str,
        unseen: str = "unseen_fraction",
        draws: np.ndarray | None = None,
    ) -> Estimate:
        """The estimate of `metric` from a row of metrics (with `metric_low`/`_high`), with its
        bootstrap replicates where given."""

        def number(name: str) -> float:
            return _float(values.get(name))

        return cls(
            number(metric), number(metric + LOW), number(metric + HIGH), number(unseen), draws
        )


ReplicateKey = tuple[str, int | None, str | None, str | None, int | None, str]


@dataclass(frozen=True)
class Replicates:
    """A run's bootstrap replicates (artifacts.REPLICATES_SCHEMA) by (model, step, target, λ
    label, budget, metric); step and budget None where they do not apply (the evaluate stage's
    masks, the checkpoints' masks)."""

    series: dict[ReplicateKey, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, table: pl.DataFrame | None) -> Replicates:
        if table is None or table.is_empty():
            return cls()
        keys = ["model", "step", "target", "lambda", "budget", "metric"]
        series = (
            table.sort([*keys, "resample"], maintain_order=True)
            .group_by(keys, maintain_order=True)
            .agg(pl.col("value").cast(pl.Float64))
        )
        return cls(
            {
                (
                    str(model),
                    None if step is None else int(step),
                    None if target is None else str(target),
                    None if label is None else str(label),
                    None if budget is None else int(budget),
                    str(metric),
                ): np.asarray(values, dtype=np.float64)
                for model, step, target, label, budget, metric, values in series.iter_rows()
            }
        )

    def get(
        self,
        model: str,
        metric: str,
        target: str | None = None,
        label: str | None = None,
        step: int | None = None,
        budget: int | None = None,
    ) -> np.ndarray | None:
        return self.series.get((model, step, target, label, budget, metric))


@dataclass(frozen=True)
class ModelSummary:
    """One model's headline numbers (fractions of the masked weights; r = bigram surprisal r).

    `estimates` holds every r with its interval and unseen fraction, by name: full_model_r,
    full_model_r_dropinf, best_r, best_r_dropinf, selected_r, lambda0_r, empty_r (the empty mask:
    embeddings only), each also as `<name>_dropinf`. `sweep` lists the trained bigram masks that
    keep weights as (kept, r), on the r of the paper's regime (`regime_of`)."""

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
    # the diagnostic r over well-estimated contexts: the share of positions it covers, and the
    # context count they need (analysis.min_context_count; 0: not computed)
    well_estimated_fraction: float = NAN
    well_estimated_min_count: int = 0
    estimates: dict[str, Estimate] = field(default_factory=dict)
    sweep: list[tuple[float, Estimate]] = field(default_factory=list)  # (kept, r) per mask
    ablation_mean: dict[str, float] = field(default_factory=dict)  # condition -> bits
    ablation_sd: dict[str, float] = field(default_factory=dict)
    # (weights the removed optimal mask keeps, surprisal increase in bits) per λ of the sweep
    optimal_removal_sweep: list[tuple[float, float]] = field(default_factory=list)
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
    def optimal_removed_matched(self) -> float:
        """Optimal removal's surprisal increase at the selected bigram mask's kept count,
        interpolated over the optimal λ sweep (`analysis.ablate.size_matched_increase`); NaN
        when that count lies outside the sweep's range (not resolved)."""
        from bigram_subnetworks.analysis.ablate import size_matched_increase

        found = size_matched_increase(self.optimal_removal_sweep, float(self.selected_kept))
        return NAN if found is None else found

    @property
    def p_resolution(self) -> float:
        """The smallest p-value the overlap test's draws can give: 1 / (draws + 1)."""
        return 1.0 / (self.overlap_draws + 1) if self.overlap_draws > 0 else NAN


def _float(value: Any) -> float:
    """A table value as a float; NaN when missing (None)."""
    return NAN if value is None else float(value)


def _value(frame: pl.DataFrame, column: str) -> float:
    """The single value of `column` in a one-row frame; NaN when absent."""
    if frame.is_empty() or column not in frame.columns:
        return NAN
    return _float(frame[column][0])


def _row(frame: pl.DataFrame) -> dict[str, Any]:
    return frame.row(0, named=True) if not frame.is_empty() else {}


def _mask_row(metrics: pl.DataFrame, target: str, label: str | None) -> pl.DataFrame:
    if label is None:
        return metrics.clear()
    return metrics.filter((pl.col("target") == target) & (pl.col("lambda") == label))


def _by_condition(rows: pl.DataFrame, column: str) -> dict[str, float]:
    """`column` of one model's ablation rows by condition (the last row of a repeated one)."""
    return dict(zip(rows["condition"].to_list(), map(_float, rows[column].to_list()), strict=True))


def location(blocks: pl.DataFrame) -> dict[str, Any]:
    """Where a mask's kept weights sit, from its per-block rows (layer, kind, kept): shares in
    layer 0's MLP, in all MLPs and in attention, the largest layer × {attention, MLP} group and
    whether layer 0's MLP holds the plurality (the same rule as the checkpoints stage's)."""
    from bigram_subnetworks.analysis.checkpoints import largest_group, location_shares

    rows = blocks.select("layer", "kind", "kept").to_dicts()
    shares = location_shares(rows)
    plurality = shares.pop("first_mlp_plurality")
    return {
        **shares,
        "largest_group": largest_group(rows),
        "first_mlp_is_plurality": None if math.isnan(plurality) else bool(plurality),
    }


def _best(trained: pl.DataFrame, metric: str) -> pl.DataFrame:
    if trained.is_empty() or metric not in trained.columns:
        return trained.head(0)
    return trained.sort(metric, descending=True, nulls_last=True, maintain_order=True).head(1)


def summarise_model(tables: RunTables, model: str) -> ModelSummary:
    """The headline numbers of one model (see `ModelSummary`)."""
    chosen = tables.selection.get("models", {}).get(model)
    if chosen is None:
        raise UserError(f"selection.json: no entry for model {model!r}; rerun the select stage")
    metrics = tables.metric_table()
    metrics = metrics.filter(pl.col("model") == model)
    full = _mask_row(metrics, REFERENCE, "neginf")
    empty = _mask_row(metrics, REFERENCE, "inf")
    trained_bigram = metrics.filter(
        (pl.col("target") == "bigram") & pl.col("lambda_value").is_finite()
    )
    best = _best(trained_bigram, "bigram_r")
    best_dropinf = _best(trained_bigram, "bigram_r_dropinf")
    selected_label = chosen["bigram"]["lambda"]
    selected = _mask_row(metrics, "bigram", selected_label)
    optimal_label = chosen["optimal"]["lambda"] if chosen.get("optimal") else None
    lambda0 = _mask_row(metrics, "bigram", "0")
    replicates = _replicates(tables, model, final=True)

    def estimate(row: dict[str, Any], metric: str) -> Estimate:
        draws = replicates.get(model, metric, row.get("target"), row.get("lambda"))
        return Estimate.of(row, metric, draws=draws)

    estimates = {
        "full_model_r": estimate(_row(full), "bigram_r"),
        "full_model_r_dropinf": estimate(_row(full), "bigram_r_dropinf"),
        "best_r": estimate(_row(best), "bigram_r"),
        "best_r_dropinf": estimate(_row(best_dropinf), "bigram_r_dropinf"),
        "selected_r": estimate(_row(selected), "bigram_r"),
        "selected_r_dropinf": estimate(_row(selected), "bigram_r_dropinf"),
        "lambda0_r": estimate(_row(lambda0), "bigram_r"),
        "lambda0_r_dropinf": estimate(_row(lambda0), "bigram_r_dropinf"),
        "empty_r": estimate(_row(empty), "bigram_r"),
        "empty_r_dropinf": estimate(_row(empty), "bigram_r_dropinf"),
        # diagnostic only: the best mask's r over well-estimated contexts (scoring.well_estimated)
        "best_r_well_estimated": estimate(
            _row(_best(trained_bigram, "bigram_r_well_estimated")), "bigram_r_well_estimated"
        ),
    }
    suffix, _ = regime_of(_row(full))
    sweep = [
        (float(row["kept"]), estimate(row, "bigram_r" + suffix))
        for row in trained_bigram.sort("kept", maintain_order=True).to_dicts()
        if _float(row.get("kept")) > 0
    ]

    pair = tables.overlap.filter((pl.col("model") == model) & pl.col("selected").cast(pl.Boolean))
    blocks = tables.blocks.filter(
        (pl.col("model") == model)
        & (pl.col("target") == "bigram")
        & (pl.col("lambda") == selected_label)
        & pl.col("head").is_null()
    )
    info = tables.model_info.get(model, {})
    ablations = tables.ablations.filter(pl.col("model") == model)
    residual = tables.residual.filter(pl.col("model") == model)
    return ModelSummary(
        model=model,
        parameters=float(info.get("parameters", NAN)),
        masked_weights=int(_value(full, "kept")) if not full.is_empty() else 0,
        eval_loss=_value(full, "lm_loss"),  # every model's, on the run's eval sequences
        bigram_baseline_loss=_value(full, "bigram_baseline_loss"),
        full_model_r=_value(full, "bigram_r"),
        lambda0_r=_value(lambda0, "bigram_r"),
        lambda0_kept_fraction=_value(lambda0, "kept_fraction"),
        best_r=_value(best, "bigram_r"),
        best_lambda=str(best["lambda"][0]) if not best.is_empty() else None,
        best_dropinf_lambda=str(best_dropinf["lambda"][0]) if not best_dropinf.is_empty() else None,
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
        overlap_draws=int(_value(pair, "draws")) if not pair.is_empty() else 0,
        overlap_row_expected=_value(pair, "row_expected"),
        overlap_row_ratio=_value(pair, "row_ratio"),
        overlap_row_p=_value(pair, "row_p_value"),
        overlap_share=_value(pair, "share_a_in_b"),
        **location(blocks),
        unseen_fraction=_value(full, "unseen_fraction"),
        well_estimated_fraction=_value(full, "well_estimated_fraction"),
        well_estimated_min_count=int(np.nan_to_num(_value(full, "well_estimated_min_count"))),
        estimates=estimates,
        sweep=sweep,
        ablation_mean=_by_condition(ablations, "mean_surprisal_bits"),
        ablation_sd=_by_condition(ablations, "sd_surprisal_bits"),
        optimal_removal_sweep=_optimal_removal_sweep(
            ablations, int(_value(full, "kept")) if not full.is_empty() else 0
        ),
        rotation_to_input=_per_layer(residual, "rotation_to_input"),
        rotation_to_output=_per_layer(residual, "rotation_to_output"),
        covariance_01=_covariance_01(residual),
    )


def _optimal_removal_sweep(ablations: pl.DataFrame, masked: int) -> list[tuple[float, float]]:
    """(kept weights of the removed optimal mask, surprisal increase over the full model) of
    every sweep removal in one model's ablation rows (condition, kept, mean_surprisal_bits);
    `masked` is the model's masked-weight count (a removal keeps the complement)."""
    from bigram_subnetworks.analysis.ablate import SWEEP_CONDITION

    means = _by_condition(ablations, "mean_surprisal_bits")
    if "full model" not in means:
        return []
    return sorted(
        (float(masked - row["kept"]), _float(row["mean_surprisal_bits"]) - means["full model"])
        for row in ablations.iter_rows(named=True)
        if str(row["condition"]).startswith(SWEEP_CONDITION)
    )


def _per_layer(residual: pl.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in residual.filter(pl.col("metric") == metric).iter_rows(named=True):
        out.setdefault(str(r["condition"]), {})[int(r["layer"])] = _float(r["value"])
    return out


def _covariance_01(residual: pl.DataFrame) -> dict[str, float]:
    rows = residual.filter(
        (pl.col("metric") == "covariance_similarity")
        & (pl.col("layer") == 0)
        & (pl.col("layer_b") == 1)
    )
    return {str(r["condition"]): _float(r["value"]) for r in rows.iter_rows(named=True)}


def _replicates(tables: RunTables, model: str, final: bool) -> Replicates:
    """One model's replicates: the evaluate stage's (`final`) or the checkpoints stage's."""
    table = tables.replicates
    if table is None or table.is_empty():
        return Replicates()
    return Replicates.of(
        table.filter((pl.col("model") == model) & (pl.col("step").is_null() == final))
    )


def summarise(tables: RunTables) -> list[ModelSummary]:
    """`summarise_model` for every model of the run, in config order."""
    return [summarise_model(tables, model) for model in tables.models]


@dataclass(frozen=True)
class CheckpointSummary:
    """One checkpoint model's trajectory, on the r of the paper's regime (`r_variant`): per step,
    the full model's, the empty mask's and the λ = 0 mask's r, every checkpoint mask's r and kept
    count (by λ label, then step), the fitted r at each budget (with whether it was extrapolated)
    and the fit's quality (r² of log(1 − r) on log N, and its number of masks), and per λ label
    whether the layer-0 MLP holds the plurality of the mask (None: the mask keeps nothing)."""

    model: str
    steps: list[int] = field(default_factory=list)
    full_model_r: dict[int, Estimate] = field(default_factory=dict)
    lambda0_r: dict[int, Estimate] = field(default_factory=dict)
    r_at_budget: dict[int, dict[int, Estimate]] = field(default_factory=dict)  # budget -> step
    extrapolated: dict[int, dict[int, bool]] = field(default_factory=dict)  # budget -> step
    plurality: dict[str, dict[int, bool | None]] = field(default_factory=dict)  # λ -> step
    unseen_fraction: float = NAN
    r_variant: str = "clipped r"  # which r the trajectories show (see regime_of)
    empty_r: dict[int, Estimate] = field(default_factory=dict)  # step -> the empty mask's r
    mask_r: dict[str, dict[int, Estimate]] = field(default_factory=dict)  # λ -> step -> r
    kept: dict[str, dict[int, float]] = field(default_factory=dict)  # λ -> step -> kept weights
    fit_r2: dict[int, float] = field(default_factory=dict)  # step -> r² (absent: not reported)
    fit_points: dict[int, int] = field(default_factory=dict)  # step -> masks in the fit


def summarise_checkpoints(tables: RunTables) -> list[CheckpointSummary]:
    """Per-model trajectories from `checkpoints.parquet` (empty when not configured), with the
    bootstrap replicates of every r and estimate attached (paired comparisons)."""
    if tables.checkpoints is None:
        return []
    table = tables.checkpoints
    summaries = []
    for rows in table.partition_by("model", maintain_order=True):
        model = str(rows["model"][0])
        replicates = _replicates(tables, model, final=False)
        masks = wide_metrics(
            rows.filter(pl.col("budget").is_null() & pl.col("target").is_not_null()),
            ["step", "target", "lambda"],
        )
        full = _mask_row(masks, REFERENCE, "neginf")
        empty = _mask_row(masks, REFERENCE, "inf")
        trained = masks.filter(pl.col("target") == "bigram")
        fits = rows.filter(pl.col("budget").is_not_null())
        plurality: dict[str, dict[int, bool | None]] = {}
        if "first_mlp_plurality" in masks.columns:
            for r in trained.iter_rows(named=True):
                value = _float(r["first_mlp_plurality"])
                flag = None if math.isnan(value) else bool(value)
                plurality.setdefault(str(r["lambda"]), {})[int(r["step"])] = flag
        unseen = _value(full, "unseen_fraction")
        last = full.sort("step", maintain_order=True).tail(1).to_dicts()
        suffix, variant = regime_of(last[0] if last else {})
        metric = "bigram_r" + suffix

        mask_r: dict[str, dict[int, Estimate]] = {}
        kept: dict[str, dict[int, float]] = {}
        for group in trained.partition_by("lambda", maintain_order=True):
            label = str(group["lambda"][0])
            mask_r[label] = _by_step(group, metric, replicates, model)
            if "kept" in group.columns:
                kept[label] = {
                    int(r["step"]): _float(r["kept"]) for r in group.iter_rows(named=True)
                }
        quality = rows.filter(pl.col("budget").is_null() & pl.col("target").is_null())
        r2 = quality.filter(pl.col("metric") == "fit_r2" + suffix)
        points = quality.filter(pl.col("metric") == "fit_points" + suffix)
        summaries.append(
            CheckpointSummary(
                model=model,
                steps=sorted(int(s) for s in rows["step"].unique()),
                full_model_r=_by_step(full, metric, replicates, model),
                lambda0_r=mask_r.get("0", {}),
                r_at_budget=_estimates_by_budget(fits, "r_at_budget" + suffix, replicates, model),
                extrapolated=_flags_by_budget(
                    fits.filter(pl.col("metric") == f"r_at_budget{suffix}_extrapolated")
                ),
                plurality=plurality,
                unseen_fraction=unseen,
                r_variant=variant,
                empty_r=_by_step(empty, metric, replicates, model),
                mask_r=mask_r,
                kept=kept,
                fit_r2={int(r["step"]): _float(r["value"]) for r in r2.iter_rows(named=True)},
                fit_points={int(r["step"]): int(r["value"]) for r in points.iter_rows(named=True)},
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
        _float(full.get(k)) for k in ("unseen_fraction", "bigram_r", "bigram_r_dropinf")
    )
    if not (unseen > 0 and math.isfinite(clipped) and math.isfinite(dropped)):
        return "", "clipped r"
    if abs(clipped - dropped) < NEGLIGIBLE_CLIPPING:
        return "", f"clipped r ({unseen:.2%} unseen: negligible)"
    return "_dropinf", f"drop-unseen r ({unseen:.2%} of eval positions unseen)"


def _by_step(
    frame: pl.DataFrame, metric: str, replicates: Replicates, model: str
) -> dict[int, Estimate]:
    """One mask's (or reference's) r per step, with its replicates."""
    return {
        int(r["step"]): Estimate.of(
            r, metric, draws=replicates.get(model, metric, r["target"], r["lambda"], int(r["step"]))
        )
        for r in frame.iter_rows(named=True)
    }


def _estimates_by_budget(
    fits: pl.DataFrame, metric: str, replicates: Replicates, model: str
) -> dict[int, dict[int, Estimate]]:
    wide = wide_metrics(fits, ["budget", "step"])
    out: dict[int, dict[int, Estimate]] = {}
    if metric not in wide.columns:
        return out
    for r in wide.sort(["budget", "step"], maintain_order=True).iter_rows(named=True):
        budget, step = int(r["budget"]), int(r["step"])
        draws = replicates.get(model, metric, step=step, budget=budget)
        out.setdefault(budget, {})[step] = Estimate.of(r, metric, draws=draws)
    return out


def _flags_by_budget(rows: pl.DataFrame) -> dict[int, dict[int, bool]]:
    out: dict[int, dict[int, bool]] = {}
    for r in rows.sort(["budget", "step"], maintain_order=True).iter_rows(named=True):
        out.setdefault(int(r["budget"]), {})[int(r["step"])] = bool(r["value"])
    return out


# Where each Table 2 control's r was scored (analysis.controls.control_table): the model variant
# whose replicates hold it (None: the evaluate stage's model; `step-0` and `random-body`: the
# controls stage's variants, stored under their model keys), its target and λ label (None: the
# control row's own label). The linear map, scored on the residual stage's held-out sequences,
# has no replicates on the shared resamples and compares on its marginal interval.
CONTROL_SOURCES: dict[str, tuple[str | None, str, str | None]] = {
    "full model": (None, REFERENCE, "neginf"),
    "bigram subnetwork": (None, "bigram", "0"),
    "bigram subnetwork (selected λ)": (None, "bigram", None),
    "random init": ("step-0", "bigram", "0"),
    "random body, trained embeddings": (RANDOM_BODY, RANDOM_BODY, "0"),
    "embeddings only": (None, REFERENCE, "inf"),
}


def control_values(tables: RunTables) -> dict[str, dict[str, Estimate]]:
    """Bigram r of every Table 2 control (with its interval, unseen fraction and, where the
    scoring stage stored them, replicates), per model, on the r of the paper's regime: the
    variant `regime_of` picks from the model's full-model control, the same rule as every other
    claim's (empty when not configured). Replicates are attached only where their percentile
    interval is the control's stored one, so a control never pairs with another r's resamples."""
    if tables.controls is None:
        return {}
    from bigram_subnetworks.analysis.scoring import percentile_interval

    wide = wide_metrics(tables.controls, ["model", "control", "lambda"])
    out: dict[str, dict[str, Estimate]] = {}
    for rows in wide.partition_by("model", maintain_order=True):
        model = str(rows["model"][0])
        records = rows.to_dicts()
        full = next((r for r in records if r["control"] == "full model"), {})
        metric = "bigram_r" + regime_of(full)[0]
        for r in records:
            estimate = Estimate.of(r, metric)
            source = CONTROL_SOURCES.get(str(r["control"]))
            if source is not None and estimate.has_interval:
                variant, target, label = source
                key = model_key(model, variant)
                draws = _replicates(tables, key, final=True).get(
                    key, metric, target, label or str(r["lambda"])
                )
                if draws is not None and np.allclose(
                    percentile_interval(draws), (estimate.low, estimate.high)
                ):
                    estimate = replace(estimate, draws=draws)
            out.setdefault(model, {})[str(r["control"])] = estimate
    return out
