"""Subnetworks of several n-gram orders compared: size, nesting and location (issue #24).

Per model, the selected mask of every configured n-gram target (selection.json's "orders": the
sparsest λ within the tolerance of that order's λ = 0 mask) is read, and three analyses are
written as one long table, `ngrams.parquet` (one row per model × analysis × subject × metric):

- **sparsity**: kept weights of each order's selected mask, their fraction of the masked weights,
  their ratio to the selected bigram mask's and the order's r;
- **nesting**, for every ordered pair (A, B) of orders: |A ∧ B|, |A|, |B|, the share of A inside B
  (|A ∧ B| / |A|), its expectation and × chance under both overlap nulls of `analysis.overlap`
  (uniform redraws within each block; the authors' row shuffle), the exact upper-tail p of the
  uniform null (`exact_overlap_p`) and the row-shuffle p from `analysis.overlap_draws` seeded
  draws. |A ∧ B| and its null distributions are symmetric in A and B, so each unordered pair is
  tested once and gives both ordered rows (which differ in the share and its expectation);
- **location**: each order's kept weights per layer × block (Q, K, V, O, MLP-in, MLP-out) as a
  share of the mask's kept weights and as the block's kept fraction.

Exact uniform-null p. Under the uniform null |A ∧ B| is a sum of independent hypergeometric
counts, one per block. Its upper tail at the observed count is computed exactly (to double
precision) by exponential tilting: each block's pmf is reweighted by e^{θx} with θ ≥ 0 chosen so
the reweighted mean of the sum is the observed count, the reweighted pmfs are convolved (where
they have mass, so the convolution has few terms and no underflow) and the tail is reweighted
back: P(S ≥ s) = Π_b M_b(θ) · Σ_{t ≥ s} e^{−θt} q_θ(t). The log of p is kept, so p values far
below the smallest double (typical for nested masks) are reported as log10 p.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigram_subnetworks.analysis.overlap import (
    BlockOverlap,
    block_overlap,
    expected_overlap,
    overlap_test,
    row_blocks,
)
from bigram_subnetworks.artifacts import NGRAM_ORDERS, NGRAMS
from bigram_subnetworks.errors import UserError

if TYPE_CHECKING:
    import torch

    from bigram_subnetworks.config import Config
    from bigram_subnetworks.models.layout import Layout

log = logging.getLogger(__name__)

SPARSITY, NESTING, LOCATION = "sparsity", "nesting", "location"
TILT_CUT = 80.0  # a block's tilted weights below e^-80 of its largest are left out (exact in f64)
TILT_STEPS = 60  # bisection steps for the tilt θ (its bracket halves each step)


@dataclass(frozen=True)
class OrderMask:
    """One order's selected mask of one model: target, order n, λ label, r and the mask."""

    target: str
    order: int
    label: str
    r: float
    mask: Mapping[str, torch.Tensor]


# ------------------------------------------------------------------- the exact uniform-null p


@dataclass(frozen=True, eq=False)
class _Supports:
    """Every block's possible intersections x (concatenated, int64), their log pmf under the
    uniform null, the block of each, and where each block starts in the concatenation. Memory:
    three numbers per possible intersection, Σ_b (min(k_A, k_B) − max(0, k_A + k_B − n_b) + 1)."""

    x: np.ndarray
    log_pmf: np.ndarray
    block: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, counts: BlockOverlap) -> _Supports:
        from scipy import stats

        lows = np.maximum(0, counts.kept_a + counts.kept_b - counts.size)
        highs = np.minimum(counts.kept_a, counts.kept_b)
        lengths = highs - lows + 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        block = np.repeat(np.arange(lengths.size), lengths)
        x = lows[block] + np.arange(block.size) - starts[block]
        log_pmf = stats.hypergeom.logpmf(
            x, counts.size[block], counts.kept_a[block], counts.kept_b[block]
        )
        return cls(x, log_pmf, block, starts)

    def tilted(self, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """Per entry, log(pmf · e^{θx}) minus its block's largest; per block, that largest plus
        the log of its sum (ln M_b(θ))."""
        weights = self.log_pmf + theta * self.x
        top = np.maximum.reduceat(weights, self.starts)
        weights = weights - top[self.block]
        return weights, top + np.log(np.add.reduceat(np.exp(weights), self.starts))

    def tilted_mean(self, theta: float) -> float:
        """The mean of Σ_b X_b when every block's pmf is reweighted by e^{θx}."""
        probabilities = np.exp(self.tilted(theta)[0])
        totals = np.add.reduceat(probabilities, self.starts)
        return float(np.sum(np.add.reduceat(probabilities * self.x, self.starts) / totals))


def _tilt(supports: _Supports, observed: int) -> float:
    """θ ≥ 0 with the tilted mean at `observed` (0 when the untilted mean is above it; the
    bracket's end when `observed` is the largest possible sum, which no finite θ reaches). Any
    θ ≥ 0 gives the exact tail; this one puts the observed count where the tilted sum has mass."""
    if supports.tilted_mean(0.0) >= observed:
        return 0.0
    high = 1.0
    while supports.tilted_mean(high) < observed and high < 2.0**10:
        high *= 2.0
    low = 0.0
    for _ in range(TILT_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if supports.tilted_mean(middle) < observed else (low, middle)
    return high


def _convolve_all(windows: list[np.ndarray]) -> np.ndarray:
    """The convolution of non-negative 1-D arrays (one FFT product; rounding noise clipped)."""
    length = sum(w.size for w in windows) - len(windows) + 1
    size = 1 << max(0, (length - 1).bit_length())
    product = np.ones(size // 2 + 1, dtype=np.complex128)
    for window in windows:
        product *= np.fft.rfft(window, size)
    return np.clip(np.fft.irfft(product, size)[:length], 0.0, None)


def exact_overlap_log_p(counts: BlockOverlap) -> float:
    """ln P(|A ∧ B| ≥ observed) under the uniform within-block null, exact to double precision
    (see the module docstring); 0.0 when the observed count is the smallest possible."""
    supports = _Supports.of(counts)
    observed = counts.observed
    if observed <= int(supports.x[supports.starts].sum()):
        return 0.0
    theta = _tilt(supports, observed)
    weights, log_norm = supports.tilted(theta)
    ends = np.append(supports.starts[1:], supports.x.size)
    windows, start = [], 0
    for first, end in zip(supports.starts, ends, strict=True):
        block = weights[first:end]
        kept = np.flatnonzero(block >= -TILT_CUT)  # contiguous: the tilted pmf is log-concave
        start += int(supports.x[first + kept[0]])
        tilted_pmf = np.exp(block) / np.exp(block).sum()
        windows.append(tilted_pmf[kept[0] : kept[-1] + 1])
    mass = _convolve_all(windows)
    totals = np.arange(start, start + mass.size)
    above = totals >= observed
    tail = float(np.sum(mass[above] * np.exp(-theta * (totals[above] - observed))))
    if tail <= 0.0:
        return -math.inf
    return min(0.0, float(log_norm.sum()) - theta * observed + math.log(tail))


# ----------------------------------------------------------------------------- the analyses


def _row(
    model: str, analysis: str, subject: OrderMask, metric: str, value: float, **where: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "analysis": analysis,
        "target": subject.target,
        "order": subject.order,
        "lambda": subject.label,
        "other_target": None,
        "other_order": None,
        "other_lambda": None,
        "layer": None,
        "kind": None,
        **where,
        "metric": metric,
        "value": float(value),
    }


def _kept(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(int(t.count_nonzero()) for t in mask.values())


def sparsity_rows(model: str, masks: list[OrderMask], n_masked: int) -> list[dict[str, Any]]:
    """Kept weights, kept fraction, ratio to the bigram mask's kept weights and r, per order."""
    bigram = next((m for m in masks if m.target == "bigram"), None)
    base = _kept(bigram.mask) if bigram is not None else 0
    rows = []
    for subject in masks:
        kept = _kept(subject.mask)
        values = {
            "kept": kept,
            "kept_fraction": kept / n_masked,
            "kept_ratio_to_bigram": kept / base if base else math.nan,
            "r": subject.r,
        }
        rows += [_row(model, SPARSITY, subject, k, v) for k, v in values.items()]
    return rows


def pair_values(counts: BlockOverlap, result: Any, log_p: float) -> tuple[dict, dict]:
    """The nesting metrics of (A, B) and of (B, A) from one pair's counts, its `overlap_test`
    result (with row-shuffle draws) and its exact uniform-null ln p."""
    n, both = counts.n_masked, counts.observed
    kept_a, kept_b = int(counts.kept_a.sum()), int(counts.kept_b.sum())
    expected, row_expected = expected_overlap(counts), result.row_expected * n
    shared = {
        "both": both,
        "ratio": result.ratio,
        "p_exact": math.exp(log_p),
        "log10_p_exact": log_p / math.log(10),
        "row_ratio": result.row_ratio,
        "row_p_value": result.row_p_value,
        "draws": result.draws,
    }

    def one_way(kept: int, other: int) -> dict[str, float]:
        return {
            "kept": kept,
            "other_kept": other,
            "share": both / kept if kept else math.nan,
            "expected_share": expected / kept if kept else math.nan,
            "row_expected_share": row_expected / kept if kept else math.nan,
            **shared,
        }

    return one_way(kept_a, kept_b), one_way(kept_b, kept_a)


def nesting_rows(
    model: str, masks: list[OrderMask], layout: Layout, draws: int, seed: int
) -> list[dict[str, Any]]:
    """The nesting metrics of every ordered pair of orders (see the module docstring)."""
    rows = []
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            counts = block_overlap(a.mask, b.mask, layout)
            shuffled = row_blocks(a.mask, b.mask, layout)
            result = overlap_test(counts, draws, seed, shuffled, row_draws=True)
            forward, backward = pair_values(counts, result, exact_overlap_log_p(counts))
            for subject, other, values in ((a, b, forward), (b, a, backward)):
                where = {
                    "other_target": other.target,
                    "other_order": other.order,
                    "other_lambda": other.label,
                }
                rows += [_row(model, NESTING, subject, k, v, **where) for k, v in values.items()]
    return rows


def location_rows(model: str, masks: list[OrderMask], layout: Layout) -> list[dict[str, Any]]:
    """Per order × layer × block kind: kept weights, block size, share of the mask's kept
    weights and kept fraction (blocks of one kind in several matrices are summed)."""
    from bigram_subnetworks.masks.toolkit import block_counts

    rows = []
    for subject in masks:
        cells: dict[tuple[int, str], list[int]] = {}
        for entry in block_counts(subject.mask, layout):
            cell = cells.setdefault((entry["layer"], entry["kind"]), [0, 0])
            cell[0] += entry["kept"]
            cell[1] += entry["size"]
        total = sum(kept for kept, _ in cells.values())
        for (layer, kind), (kept, size) in cells.items():
            values = {
                "kept": kept,
                "size": size,
                "share": kept / total if total else math.nan,
                "fraction": kept / size,
            }
            where = {"layer": layer, "kind": kind}
            rows += [_row(model, LOCATION, subject, k, v, **where) for k, v in values.items()]
    return rows


def model_rows(
    model: str, masks: list[OrderMask], layout: Layout, draws: int, seed: int
) -> list[dict[str, Any]]:
    """All three analyses of one model's selected masks (in order of n)."""
    ordered = sorted(masks, key=lambda m: m.order)
    return (
        sparsity_rows(model, ordered, layout.n_masked)
        + nesting_rows(model, ordered, layout, draws, seed)
        + location_rows(model, ordered, layout)
    )


# --------------------------------------------------------------------------------- the stage


def selected_orders(selection: Path, model: str, targets: list[str]) -> dict[str, dict]:
    """selection.json's entry of every target for one model (one-line error when missing)."""
    from bigram_subnetworks.analysis.select import read_selection

    orders = read_selection(selection, model).get("orders") or {}
    missing = [t for t in targets if t not in orders]
    if missing:
        raise UserError(
            f"{selection}: no selected {missing[0]} mask for model {model!r} (models.{model}."
            "orders); rerun the select stage"
        )
    return {t: orders[t] for t in targets}


def run_stage(
    cfg: Config, *, models: list[Path], masks: list[Path], selection: Path, ngrams: Path
) -> None:
    """The ngrams stage: `ngrams.parquet` from every model's selected mask of each n-gram order
    among `masks` (every configured order's masks, each order's selected one read)."""
    import pyarrow as pa

    from bigram_subnetworks.analysis.scoring import find_mask, index_masks
    from bigram_subnetworks.io import atomic_outputs, write_parquet
    from bigram_subnetworks.masks.toolkit import load_mask
    from bigram_subnetworks.models.layout import layout_of
    from bigram_subnetworks.models.loading import load_model, model_identity

    index = index_masks(masks)
    rows: list[dict[str, Any]] = []
    for model_dir in models:
        model = model_dir.name
        network, info = load_model(model_dir)
        layout, identity = layout_of(network), model_identity(model_dir, info)
        given = {m.target for m in index.get(model, []) if m.target in NGRAM_ORDERS}
        targets = sorted(given, key=NGRAM_ORDERS.__getitem__)
        if len(targets) < 2:
            raise UserError(
                f"ngrams: masks of {len(targets)} n-gram target(s) of {model} given; the stage "
                "compares two or more (configure lambdas.unigram or lambdas.trigram)"
            )
        chosen = []
        for target, entry in selected_orders(selection, model, targets).items():
            path = find_mask(index, model, target, entry["lambda"])
            mask = load_mask(path, layout, identity)[0]
            if _kept(mask) != int(entry["kept"]):
                raise UserError(
                    f"{path}: keeps {_kept(mask)} weights, {selection} says {entry['kept']}; "
                    "rerun the evaluate and select stages"
                )
            chosen.append(
                OrderMask(target, NGRAM_ORDERS[target], entry["lambda"], entry["r"], mask)
            )
        rows += model_rows(model, chosen, layout, cfg.analysis.overlap_draws, cfg.seed)
        log.info("%s: selected masks of %s compared", model, ", ".join(targets))
    with atomic_outputs(ngrams) as (temp,):
        write_parquet(pa.Table.from_pylist(rows, schema=NGRAMS.schema), temp, seed=cfg.seed)
