"""The report's figures: one seaborn style, drawn into the names given, reproducible PNG bytes.

Figures are built as `matplotlib.figure.Figure` objects and rendered by the Agg canvas directly,
without pyplot: no interactive backend is ever selected, nothing is registered globally, and a
figure is freed as soon as its PNG bytes exist. PNGs carry no software or time metadata, so the
same tables give byte-identical files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from bigram_subnetworks.report.claims import HIGH_R, OVERLAP_RATIO, SPARSE, Threshold, deciding_r
from bigram_subnetworks.report.ngrams import NgramResults
from bigram_subnetworks.report.paper import paper_evidence
from bigram_subnetworks.report.summary import (
    ABLATION_CONDITIONS,
    BLOCK_KINDS,
    RESIDUAL_CONDITIONS,
    CheckpointSummary,
    Estimate,
    ModelSummary,
)
from bigram_subnetworks.report.tables import RunTables

DPI = 110
RC = {
    "svg.hashsalt": "bigram-subnetworks",
    "font.family": "DejaVu Sans",
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
}
CONDITION_COLOURS = dict(
    zip(
        (*RESIDUAL_CONDITIONS, *ABLATION_CONDITIONS[1:]),
        sns.color_palette("colorblind", 3 + len(ABLATION_CONDITIONS) - 1),
        strict=True,
    )
)

# Residual conditions stay distinguishable where their curves coincide.
LINE_STYLES = {"full model": "o-", "bigram": "s--", "random": "^:"}


@dataclass(frozen=True)
class FigureData:
    """What the figure builders read."""

    tables: RunTables
    models: list[ModelSummary]
    checkpoints: list[CheckpointSummary]
    ngrams: NgramResults | None = None  # the n-gram orders' section (None: not configured)

    def colour(self, model: str) -> tuple[float, float, float]:
        palette = sns.color_palette("colorblind", max(len(self.tables.models), 1))
        return palette[self.tables.models.index(model) % len(palette)]


@contextmanager
def figure_style() -> Iterator[None]:
    """The report's one style (seaborn whitegrid, fixed fonts and hash salt)."""
    with (
        sns.axes_style("whitegrid"),
        sns.plotting_context("notebook"),
        mpl.rc_context(RC),
    ):
        yield


def _figure(rows: int, cols: int, panel: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure of rows × cols axes, each `panel` inches (width, height)."""
    figure = Figure(figsize=(panel[0] * cols, panel[1] * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes without metadata that would vary between runs."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    figure.clear()
    return buffer.getvalue()


def _floats(rows: pl.DataFrame, column: str) -> np.ndarray:
    """A column as float64 values, NaN where missing."""
    return rows[column].cast(pl.Float64).fill_null(math.nan).to_numpy()


def _yerr(rows: pl.DataFrame, metric: str) -> np.ndarray | None:
    """Asymmetric error bars (2, n) from the `<metric>_low`/`_high` columns (None if absent)."""
    low, high = f"{metric}_low", f"{metric}_high"
    if low not in rows.columns or high not in rows.columns:
        return None
    value = _floats(rows, metric)
    bars = np.vstack([value - _floats(rows, low), _floats(rows, high)])
    bars[1] -= value
    return np.where(np.isfinite(bars), np.clip(bars, 0, None), 0.0)


def _estimate_bars(estimates: list[Any]) -> np.ndarray:
    """Error bars (2, n) of report Estimates (zero where there is no interval)."""
    bars = np.array([[e.value - e.low, e.high - e.value] for e in estimates], dtype=float).T
    bars = bars.reshape(2, len(estimates))
    return np.where(np.isfinite(bars), np.clip(bars, 0, None), 0.0)


def _grid_of(rows: pl.DataFrame, index: str, columns: str, values: str) -> pl.DataFrame:
    """The mean of `values` per (`index`, `columns`) as one row per index value (ascending) and
    one column per `columns` value (named by its text); null where there is none."""
    return rows.pivot(on=columns, index=index, values=values, aggregate_function="mean").sort(index)


def _floats_grid(grid: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """The named columns of a grid as a float64 array, NaN where missing."""
    return np.column_stack([_floats(grid, c) for c in columns]).reshape(len(grid), len(columns))


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


# ------------------------------------------------------------------------ the figures


def sparsity_r(data: FigureData) -> Figure:
    metrics = data.tables.metric_table()
    trained = metrics.filter(pl.col("lambda_value").is_finite() & (pl.col("kept") > 0))
    has_optimal = bool((trained["target"] == "full").any())
    figure, axes = _figure(1, 2 if has_optimal else 1, (5.0, 3.8))
    ax = axes[0, 0]
    bigram = trained.filter(pl.col("target") == "bigram").sort("kept", maintain_order=True)
    for s in data.models:
        colour = data.colour(s.model)
        rows = bigram.filter(pl.col("model") == s.model)
        ax.errorbar(
            _floats(rows, "kept"),
            _floats(rows, "bigram_r"),
            yerr=_yerr(rows, "bigram_r"),
            fmt="o-",
            color=colour,
            capsize=2,
            label=s.model,
        )
        for label, kept, r in zip(
            rows["lambda"], _floats(rows, "kept"), _floats(rows, "bigram_r"), strict=True
        ):
            ax.annotate(
                f"λ={label}",
                (kept, r),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=6,
                color=colour,
            )
        if math.isfinite(s.full_model_r):
            ax.axhline(s.full_model_r, color=colour, linestyle="--", linewidth=1)
    if bigram.is_empty():
        _empty(ax, "no trained bigram mask keeps any weight")
    else:
        ax.set_xscale("log")
        ax.set(
            xlabel="active parameters (kept masked weights)",
            ylabel="bigram surprisal r",
            title="bigram masks (dashed: full model)",
        )
        ax.legend(title="model")
    if has_optimal:
        ax = axes[0, 1]
        optimal = trained.filter(pl.col("target") == "full").sort("kept", maintain_order=True)
        for s in data.models:
            rows = optimal.filter(pl.col("model") == s.model)
            colour = data.colour(s.model)
            kept = _floats(rows, "kept")
            ax.plot(kept, _floats(rows, "bigram_r"), "o-", color=colour, label=s.model)
            ax.plot(kept, _floats(rows, "full_model_r"), "s:", color=colour)
        ax.set_xscale("log")
        ax.set(
            xlabel="active parameters",
            ylabel="r",
            title="optimal masks: r with bigram (—) / full model (⋯)",
        )
    return figure


def block_heatmaps(data: FigureData) -> Figure:
    blocks = data.tables.blocks
    rows, cols = _grid(len(data.models), 3)
    layers = int(blocks["layer"].max()) + 1 if len(blocks) else 1
    figure, axes = _figure(rows, cols, (4.2, 1.2 + 0.42 * layers))
    for ax, s in zip(axes.ravel(), data.models, strict=False):
        selected = blocks.filter(
            (pl.col("model") == s.model)
            & (pl.col("target") == "bigram")
            & (pl.col("lambda") == s.selected_lambda)
            & pl.col("head").is_null()
        )
        if selected.is_empty():
            _empty(ax, f"{s.model}: no block counts for λ = {s.selected_lambda}")
            continue
        grid = _grid_of(selected, "layer", "kind", "fraction")
        kinds = [k for k in BLOCK_KINDS if k in grid.columns]
        # seaborn takes the cells as an array and the labels as lists (no frame needed)
        sns.heatmap(
            _floats_grid(grid, kinds),
            xticklabels=kinds,
            yticklabels=grid["layer"].to_list(),
            ax=ax,
            cmap="rocket_r",
            vmin=0,
            annot=len(grid) <= 12,
            fmt=".1%",
            annot_kws={"fontsize": 7},
            cbar_kws={"label": "kept fraction"},
        )
        ax.set(
            title=f"{s.model}: λ = {s.selected_lambda}, {s.selected_kept_fraction:.2%} kept",
            xlabel="",
            ylabel="layer",
        )
    for ax in axes.ravel()[len(data.models) :]:
        ax.set_axis_off()
    return figure


def ablations(data: FigureData) -> Figure:
    figure, axes = _figure(1, 1, (max(5.0, 1.6 * len(data.models) + 2.5), 3.8))
    ax = axes[0, 0]
    conditions = [c for c in ABLATION_CONDITIONS if any(c in s.ablation_mean for s in data.models)]
    if not conditions:
        _empty(ax, "no ablation results")
        return figure
    width = 0.8 / len(conditions)
    centres = np.arange(len(data.models))
    for i, condition in enumerate(conditions):
        means = [s.ablation_mean.get(condition, np.nan) for s in data.models]
        sds = [s.ablation_sd.get(condition, np.nan) for s in data.models]
        ax.bar(
            centres + (i - (len(conditions) - 1) / 2) * width,
            means,
            width,
            yerr=sds,
            capsize=2,
            color=CONDITION_COLOURS[condition],
            label=condition,
            error_kw={"linewidth": 0.8},
        )
    ax.set_xticks(centres, [s.model for s in data.models])
    ax.set(ylabel="mean surprisal (bits)", title="ablations of the selected masks")
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    return figure


def overlap(data: FigureData) -> Figure:
    null = data.tables.overlap_null
    rows, cols = _grid(len(data.models) + 1, 4)
    figure, axes = _figure(rows, cols, (3.4, 2.9))
    flat = axes.ravel()
    nulls = (
        ("overlap", "uniform null", "0.6", "overlap_expected", "--"),
        ("row_overlap", "row-shuffle null (paper)", "tab:blue", "overlap_row_expected", ":"),
    )
    for ax, s in zip(flat, data.models, strict=False):
        mine = null.filter(pl.col("model") == s.model)
        draws = {
            n[0]: _floats(mine, n[0])[~np.isnan(_floats(mine, n[0]))]
            for n in nulls
            if n[0] in mine.columns
        }
        shown = [n for n in nulls if len(draws.get(n[0], ()))]
        if not shown or not math.isfinite(s.overlap_observed):
            _empty(ax, f"{s.model}:\nno selected bigram/optimal pair")
            continue
        values = np.concatenate([draws[n[0]] for n in shown])
        bins = np.histogram_bin_edges(values, bins=30)
        for column, label, colour, expected, style in shown:
            ax.hist(draws[column], bins=bins, color=colour, alpha=0.6, label=label)
            mean = getattr(s, expected)
            if math.isfinite(mean):
                ax.axvline(mean, color=colour, linestyle=style, linewidth=1.2)
        low, high = float(values.min()), float(values.max())
        margin = max(high - low, abs(high) * 1e-3, 1e-12) * 0.15
        ratio = s.overlap_row_ratio if math.isfinite(s.overlap_row_ratio) else s.overlap_ratio
        if s.overlap_observed <= high + margin:
            ax.axvline(s.overlap_observed, color="tab:red", linewidth=2, label="observed")
            ax.set_xlim(min(low, s.overlap_observed) - margin, high + margin)
        else:  # far beyond the null: point at it from the right edge
            ax.set_xlim(low - margin, high + margin)
            ax.annotate(
                f"observed {s.overlap_observed:.3g}\n({ratio:.1f}× expected) →",
                xy=(0.98, 0.6),
                xycoords="axes fraction",
                ha="right",
                color="tab:red",
                fontsize=8,
            )
        p_value = s.overlap_row_p if math.isfinite(s.overlap_row_p) else s.overlap_p
        ax.set(
            title=f"{s.model}: p = {p_value:.2g} (resolution {s.p_resolution:.1g})",
            xlabel="overlap (fraction of masked weights)",
            ylabel="null draws",
        )
        ax.legend(loc="upper left", fontsize=6)
    ax = flat[len(data.models)]
    measured = [s for s in data.models if math.isfinite(s.overlap_ratio)]
    if measured:
        centres = np.arange(len(measured))
        for offset, attribute, label, colour in (
            (-0.2, "overlap_row_ratio", "row-shuffle null", "tab:blue"),
            (0.2, "overlap_ratio", "uniform null", "0.6"),
        ):
            ratios = [getattr(s, attribute) for s in measured]
            bars = ax.bar(centres + offset, ratios, 0.4, color=colour, label=label)
            ax.bar_label(bars, labels=[f"{r:.1f}×" for r in ratios], fontsize=7)
        ax.set_xticks(centres, [s.model for s in measured])
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set(ylabel="observed / expected", title="overlap vs chance (dashed: 1×)")
        ax.tick_params(axis="x", rotation=20)
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no overlap ratio measured")
    for ax in flat[len(data.models) + 1 :]:
        ax.set_axis_off()
    return figure


def rotations(data: FigureData) -> Figure:
    figure, axes = _figure(max(len(data.models), 1), 2, (4.2, 2.8))
    for row, s in zip(axes, data.models, strict=False):
        for ax, (direction, values) in zip(
            row,
            (("to input", s.rotation_to_input), ("to output", s.rotation_to_output)),
            strict=True,
        ):
            if not values:
                _empty(ax, f"{s.model}: no rotations")
                continue
            for condition, by_layer in values.items():
                layers = sorted(by_layer)
                ax.plot(
                    layers,
                    [by_layer[layer] for layer in layers],
                    LINE_STYLES.get(condition, "o-"),
                    color=CONDITION_COLOURS.get(condition),
                    label=condition,
                )
            ax.set(
                title=f"{s.model}: rotation {direction}",
                xlabel="layer",
                ylabel="median rotation (°)",
                ylim=(0, None),
            )
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
            ax.legend()
    return figure


def covariance(data: FigureData) -> Figure:
    table = data.tables.residual.filter(pl.col("metric") == "covariance_similarity")
    figure, axes = _figure(max(len(data.models), 1), 3, (3.0, 2.8))
    low = float(table["value"].min()) if len(table) else 0.0  # type: ignore[arg-type]
    image = None
    for row, s in zip(axes, data.models, strict=False):
        for ax, condition in zip(row, RESIDUAL_CONDITIONS, strict=True):
            rows = table.filter((pl.col("model") == s.model) & (pl.col("condition") == condition))
            if rows.is_empty():
                _empty(ax, f"{s.model}: no {condition} similarities")
                continue
            grid = _grid_of(rows, "layer", "layer_b", "value")
            others = sorted((c for c in grid.columns if c != "layer"), key=int)
            image = ax.imshow(
                _floats_grid(grid, others), vmin=low, vmax=1.0, cmap="viridis", origin="upper"
            )
            ax.set(title=f"{s.model}: {condition}", xlabel="layer", ylabel="layer")
            ticks = range(len(grid))
            ax.set_xticks(ticks, [int(v) for v in others])
            ax.set_yticks(ticks, [int(v) for v in grid["layer"]])
            ax.grid(False)
    if image is not None:
        figure.colorbar(image, ax=axes.ravel().tolist(), label="covariance similarity")
    return figure


def _step_axis(ax: Axes, steps: list[int]) -> Callable[[Any], Any]:
    """A log step axis with step 0 drawn apart, left of the smallest positive step behind a
    grey break; returns the map from steps to positions on it."""
    positive = [s for s in steps if s > 0] or [1]
    zero = min(positive) / 4
    ax.set_xscale("log")
    ax.axvspan(zero * 1.5, min(positive) / 1.5, color="0.92", lw=0, zorder=0)
    decades = range(0, int(math.log10(max(positive))) + 1)
    ticks = [10**d for d in decades if 10**d >= min(positive)]
    ax.xaxis.set_major_locator(mpl.ticker.FixedLocator([zero, *ticks]))
    ax.xaxis.set_major_formatter(mpl.ticker.FixedFormatter(["0", *(f"{t:,}" for t in ticks)]))
    ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())

    def position(step: Any) -> Any:
        return np.where(np.asarray(step, dtype=float) > 0, step, zero)

    return position


def _mark_peak(ax: Axes, x: Any, values: list[float], colour: Any) -> None:
    """A star on the highest point of a series (the peak the trajectory claims look at)."""
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    if finite:
        value, index = max(finite)
        ax.plot(x[index], value, "*", color=colour, markersize=11, zorder=5)


def checkpoints(data: FigureData) -> Figure:
    table = data.tables.checkpoints
    figure, axes = _figure(max(len(data.checkpoints), 1), 3, (4.2, 3.0))
    if table is None or not data.checkpoints:
        _empty(axes[0, 0], "no checkpoint data")
        for ax in axes.ravel()[1:]:
            ax.set_axis_off()
        return figure
    for row, c in zip(axes, data.checkpoints, strict=True):
        masks = table.filter(
            (pl.col("model") == c.model)
            & pl.col("budget").is_null()
            & (pl.col("target") == "bigram")
        )
        labels = sorted(masks["lambda"].unique(), key=float)
        palette = dict(zip(labels, sns.color_palette("crest", len(labels)), strict=True))
        r_ax, kept_ax, mlp_ax = row
        where = {ax: _step_axis(ax, c.steps) for ax in row}
        steps = sorted(c.full_model_r)
        full = [c.full_model_r[s] for s in steps]
        x = where[r_ax](steps)
        r_ax.errorbar(
            x,
            [e.value for e in full],
            yerr=_estimate_bars(full),
            fmt="k--",
            capsize=2,
            label="full model",
        )
        _mark_peak(r_ax, x, [e.value for e in full], "black")
        budget_colours = sns.color_palette("flare", len(c.r_at_budget))
        for colour, (budget, by_step) in zip(budget_colours, c.r_at_budget.items(), strict=True):
            flags = c.extrapolated.get(budget, {})
            at = sorted(by_step)
            estimates = [by_step[s] for s in at]
            values = [e.value for e in estimates]
            x = where[r_ax](at)
            r_ax.errorbar(
                x,
                values,
                yerr=_estimate_bars(estimates),
                fmt=":",
                color=colour,
                capsize=2,
                label=f"r at {budget:,} active",
            )
            for position, value, step in zip(x, values, at, strict=True):
                hollow = flags.get(step, False)
                r_ax.plot(
                    position, value, "D", color=colour, fillstyle="none" if hollow else "full"
                )
            _mark_peak(
                r_ax,
                x,
                [v if not flags.get(s) else math.nan for v, s in zip(values, at, strict=True)],
                colour,
            )
        for ax, metric in ((kept_ax, "kept_fraction"), (mlp_ax, "first_mlp_share")):
            for label in labels:
                series = masks.filter((pl.col("lambda") == label) & (pl.col("metric") == metric))
                series = series.sort("step", maintain_order=True)
                ax.plot(
                    where[ax](series["step"].to_numpy()),
                    _floats(series, "value"),
                    "o-",
                    color=palette[label],
                    label=f"λ={label}",
                )
        for ax, ylabel in (
            (r_ax, f"bigram r ({c.r_variant.split(' (')[0]})"),
            (kept_ax, "kept fraction"),
            (mlp_ax, "share in the layer-0 MLP"),
        ):
            ax.set(xlabel="pretraining step", ylabel=ylabel, title=f"{c.model}: {ylabel}")
        r_ax.legend(fontsize="small")
        kept_ax.legend(fontsize="small")
    return figure


def training_curves(data: FigureData) -> Figure:
    history = data.tables.histories
    figure, axes = _figure(max(len(data.models), 1), 3, (4.0, 2.8))
    for row, s in zip(axes, data.models, strict=False):
        curves = history.filter(pl.col("model") == s.model)
        if curves.is_empty():
            _empty(row[0], f"{s.model}: no training logs")
            for ax in row[1:]:
                ax.set_axis_off()
            continue
        labels = sorted(curves["lambda"].unique(), key=float)
        palette = dict(zip(labels, sns.color_palette("flare", len(labels)), strict=True))
        groups = curves.partition_by("target", "lambda", as_dict=True)
        for target, label in sorted(groups, key=lambda key: (key[0], float(key[1]))):
            curve = groups[(target, label)]
            style = "-" if target == "bigram" else "--"
            attempts = int(curve["attempts"][0])
            retried = f" ({attempts} attempts)" if attempts > 1 else ""
            for ax, column in zip(row, ("loss", "kept", "undecided"), strict=True):
                ax.plot(
                    curve["step"].to_numpy(),
                    _floats(curve, column),
                    style,
                    color=palette[label],
                    linewidth=1,
                    label=f"{target} λ={label}{retried}",
                )
        for ax, name in zip(
            row, ("target cross-entropy (nats)", "kept fraction", "undecided fraction"), strict=True
        ):
            ax.set(xlabel="step", ylabel=name, title=f"{s.model}: {name}")
        row[0].legend(fontsize=6, ncols=2)
    return figure


def _claim_panel(
    ax: Axes,
    rows: list[tuple[str, Any, list[tuple[Estimate, str, str]]]],
    threshold: Threshold,
    title: str,
    log: bool = False,
) -> None:
    """One numeric claim on one axis: a row per model (the paper's, then this run's), each
    row's estimates as points with their intervals, and the rule's threshold as a line."""
    if not any(points for _, _, points in rows):
        _empty(ax, f"{title}: not measured")
        return
    for y, (_, colour, points) in enumerate(rows):
        values = [e.value for e, _, _ in points]
        if len(values) > 1:
            ax.plot(values, [y] * len(values), "-", color=colour, linewidth=1, alpha=0.5)
        for estimate, marker, fill in points:
            ax.errorbar(
                [estimate.value],
                [y],
                xerr=_estimate_bars([estimate]),
                fmt=marker,
                color=colour,
                markerfacecolor=colour if fill == "filled" else "white",
                capsize=2,
            )
    ax.axvline(threshold.value, color="0.3", linestyle="--", linewidth=1)
    ax.annotate(
        f"{threshold.name} {threshold.value:g}",
        (threshold.value, 0.0),
        xycoords=("data", "axes fraction"),
        xytext=(2, 3),
        textcoords="offset points",
        fontsize=7,
        color="0.3",
    )
    if log:
        ax.set_xscale("log")
        plain = mpl.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_locator(mpl.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_title(title)


def claims(data: FigureData) -> Figure:
    """Per numeric claim, the paper's values (black; exact) and this run's (model colours, 95%
    intervals) on one axis, with the rule's threshold."""
    paper = paper_evidence().models
    figure, axes = _figure(1, 3, (4.3, 0.3 * (len(paper) + len(data.models)) + 1.4))

    def rows(pick: Callable[[ModelSummary], list[tuple[Estimate, str, str]]]) -> list[Any]:
        out = [(f"paper: {s.model}", "black", pick(s)) for s in paper]
        return out + [(s.model, data.colour(s.model), pick(s)) for s in data.models]

    def best_and_full(s: ModelSummary) -> list[tuple[Estimate, str, str]]:
        full, best = deciding_r(s, "full_model_r")[0], deciding_r(s, "best_r")[0]
        points = [(full, "o", "hollow"), (best, "o", "filled")]
        return [p for p in points if p[0].measured]

    def single(value: Callable[[ModelSummary], float]) -> Callable[[ModelSummary], list[Any]]:
        def pick(s: ModelSummary) -> list[Any]:
            v = value(s)
            return [(Estimate(v), "D", "filled")] if math.isfinite(v) and v > 0 else []

        return pick

    panels = [
        (rows(best_and_full), HIGH_R, "bigram r: full model (○) → best mask (●)", False),
        (rows(single(lambda s: s.selected_kept_fraction)), SPARSE, "selected: kept fraction", True),
        (rows(single(lambda s: s.overlap_row_ratio)), OVERLAP_RATIO, "bigram ∩ optimal mask", True),
    ]
    # the same rows (models with a number in some panel) in every panel, so rows line up
    keep = [i for i in range(len(panels[0][0])) if any(p[0][i][2] for p in panels)]
    for ax, (panel_rows, threshold, title, log) in zip(axes[0], panels, strict=True):
        _claim_panel(ax, [panel_rows[i] for i in keep], threshold, title, log)
    axes[0, 0].set_xlabel("r (the paper's regime)")
    axes[0, 1].set_xlabel("fraction of the masked weights")
    axes[0, 2].set_xlabel("× chance (row-shuffle null)")
    for ax in axes[0, 1:]:
        ax.tick_params(labelleft=False)
    return figure


def ngram_figure(results: NgramResults | None, colour: Callable[[str], Any]) -> Figure:
    """Sparsity, nesting and location of every n-gram order's selected mask (report.ngrams):
    kept weights per order, the share of each order's mask inside another's against both nulls'
    chance shares, and per model a layer × block heat map of each order's kept share."""
    if results is None or results.sparsity.is_empty():
        figure, axes = _figure(1, 1, (5.0, 2.0))
        _empty(axes[0, 0], "no n-gram orders to compare")
        return figure
    models = results.models()
    targets = list(dict.fromkeys(results.sparsity.sort("order")["target"].to_list()))
    layers = results.location["layer"].n_unique()
    rows, cols = _grid(len(models), 3)
    heat_height = 0.9 + 0.28 * layers * len(targets)
    figure = Figure(
        figsize=(max(10.0, 4.2 * cols), 3.6 + heat_height * rows), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(figure)
    upper, lower = figure.subfigures(2, 1, height_ratios=[3.6, heat_height * rows])
    size_ax, nest_ax = upper.subplots(1, 2, width_ratios=[1, 2])
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        rows_of = results.sparsity.filter(pl.col("model") == model)
        kept = dict(zip(rows_of["target"], rows_of["kept"], strict=True))
        ratio = dict(zip(rows_of["target"], rows_of["kept_ratio_to_bigram"], strict=True))
        x = np.arange(len(targets)) + (i - (len(models) - 1) / 2) * width
        heights = [kept.get(t, 0.0) for t in targets]
        size_ax.bar(x, heights, width, color=colour(model), label=model)
        for xi, height, t in zip(x, heights, targets, strict=True):
            if height > 0 and math.isfinite(ratio.get(t, math.nan)):
                size_ax.text(xi, height, f"×{ratio[t]:.2g}", ha="center", va="bottom", fontsize=7)
    size_ax.set_yscale("log")
    kept_any = results.sparsity.filter(pl.col("kept") > 0)["kept"]
    if len(kept_any):  # bars from a decade below the smallest; room above for labels, legend
        floor = 10 ** math.floor(math.log10(float(kept_any.min()) / 2))
        size_ax.set_ylim(floor, float(kept_any.max()) * 6)
    size_ax.set_xticks(np.arange(len(targets)), targets)
    size_ax.set(ylabel="kept weights (selected mask)", title="size (× the bigram mask's)")
    size_ax.legend(frameon=False, loc="upper left")
    pairs = list(
        dict.fromkeys(zip(results.nesting["target"], results.nesting["other_target"], strict=True))
    )
    for i, model in enumerate(models):
        rows_of = results.nesting.filter(pl.col("model") == model)
        found = {(r["target"], r["other_target"]): r for r in rows_of.iter_rows(named=True)}
        x = np.arange(len(pairs)) + (i - (len(models) - 1) / 2) * width
        for xi, pair in zip(x, pairs, strict=True):
            row = found.get(pair)
            if row is None:
                continue
            nest_ax.plot([xi], [row["share"]], "o", color=colour(model))
            nest_ax.plot([xi], [row["row_expected_share"]], "_", color="tab:blue", ms=12, mew=2)
            nest_ax.plot([xi], [row["expected_share"]], "_", color="0.55", ms=12, mew=1)
    nest_ax.plot([], [], "o", color="0.3", label="observed share")
    nest_ax.plot([], [], "_", color="tab:blue", ms=12, mew=2, label="chance, row-shuffle null")
    nest_ax.plot([], [], "_", color="0.55", ms=12, mew=1, label="chance, uniform null")
    nest_ax.set_xticks(np.arange(len(pairs)), [f"{a}\nin {b}" for a, b in pairs])
    nest_ax.set(ylim=(0, 1.05), ylabel="share of A's kept weights in B", title="nesting: A in B")
    nest_ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    kinds = [k for k in BLOCK_KINDS if k in set(results.location["kind"])]
    attention = results.attention_share()
    heat_axes = lower.subplots(rows, cols, squeeze=False)
    for ax, model in zip(heat_axes.ravel(), models, strict=False):
        cells = results.location.filter(pl.col("model") == model).sort(["order", "layer"])
        label_of = [f"{row['target']} L{row['layer']}" for row in cells.iter_rows(named=True)]
        labels = list(dict.fromkeys(label_of))
        grid = np.full((len(labels), len(kinds)), np.nan)
        for label, kind, share in zip(label_of, cells["kind"], cells["share"], strict=True):
            grid[labels.index(label), kinds.index(kind)] = share
        sns.heatmap(
            grid, ax=ax, cmap="rocket_r", vmin=0, annot=len(labels) <= 16, fmt=".0%",
            annot_kws={"fontsize": 6}, xticklabels=kinds, yticklabels=labels,
            cbar_kws={"label": "share of the mask", "format": PercentFormatter(1.0, 0)},
        )  # fmt: skip
        ax.tick_params(axis="y", rotation=0)
        shares = attention.filter(pl.col("model") == model)
        text = ", ".join(
            f"{t} {s:.0%}" for t, s in zip(shares["target"], shares["attention_share"], strict=True)
        )
        ax.set(title=f"{model}\nattention: {text}", xlabel="", ylabel="")
    for ax in heat_axes.ravel()[len(models) :]:
        ax.set_axis_off()
    return figure


def ngrams(data: FigureData) -> Figure:
    """The n-gram orders' figure of a run (`ngram_figure`)."""
    return ngram_figure(data.ngrams, data.colour)


BUILDERS: dict[str, Callable[[FigureData], Figure]] = {
    "claims": claims,
    "sparsity_r": sparsity_r,
    "block_heatmaps": block_heatmaps,
    "ablations": ablations,
    "overlap": overlap,
    "rotations": rotations,
    "covariance": covariance,
    "checkpoints": checkpoints,
    "training_curves": training_curves,
    "ngrams": ngrams,
}


def render_figures(names: Sequence[str], data: FigureData) -> dict[str, bytes]:
    """PNG bytes of the named figures (names of artifacts.REPORT_FIGURES), by name, in order."""
    rendered = {}
    with figure_style():
        for name in names:
            rendered[name] = png_bytes(BUILDERS[name](data))
    return rendered
