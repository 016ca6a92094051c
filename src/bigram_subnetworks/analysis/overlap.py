"""Overlap of two masks of one model, and its significance under a within-block null.

Overlap = |A ∧ B| / N_masked. Null: A and B are each redrawn uniformly within every Block (Q, K, V,
O, MLP-in, MLP-out of every layer) with their own kept counts. Blocks are then independent and the
overlap inside block b is hypergeometric (population n_b, k_A successes, k_B draws), so the
expected overlap is Σ_b k_A k_B / n_b exactly and one null draw is one hypergeometric variate per
block: O(blocks × draws) work, never O(parameters × draws).

Everything after `block_overlap` works on per-block counts only, so masks of a billion entries
are read once and never shuffled. This module imports numpy only; the mask functions take torch
tensors but load the mask toolkit (and torch) when first called.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bigram_subnetworks.artifacts import OVERLAP, OVERLAP_NULL

if TYPE_CHECKING:
    import torch

    from bigram_subnetworks.config import Config
    from bigram_subnetworks.models.layout import Layout

log = logging.getLogger(__name__)

DEFAULT_DRAWS = 10_000
CHUNK_VARIATES = 1 << 22  # hypergeometric variates per sampling pass (32 MiB of int64)


@dataclass(frozen=True, eq=False)  # arrays: no elementwise ==
class BlockOverlap:
    """Per-block sizes n_b, kept counts k_A and k_B, and observed intersections |A ∧ B|.

    The fields are 1-D int64 arrays of equal length, checked for consistency on construction.
    """

    size: np.ndarray
    kept_a: np.ndarray
    kept_b: np.ndarray
    both: np.ndarray

    def __post_init__(self) -> None:
        for name in ("size", "kept_a", "kept_b", "both"):
            value = np.asarray(getattr(self, name))
            if value.ndim != 1 or (value.size and not np.issubdtype(value.dtype, np.integer)):
                raise ValueError(
                    f"{name}: expected a 1-D integer array, got {value.dtype} {value.shape}"
                )
            object.__setattr__(self, name, value.astype(np.int64))
        size, a, b, both = self.size, self.kept_a, self.kept_b, self.both
        if not size.size or not size.size == a.size == b.size == both.size:
            raise ValueError(
                f"need one or more blocks and equal lengths; got {size.size} sizes, "
                f"{a.size} kept_a, {b.size} kept_b, {both.size} both"
            )
        if np.any(size < 1):
            raise ValueError("every block needs at least one entry")
        if np.any((a < 0) | (a > size) | (b < 0) | (b > size)):
            raise ValueError("kept counts must lie in [0, block size]")
        if np.any((both > np.minimum(a, b)) | (both < np.maximum(0, a + b - size))):
            raise ValueError("intersections must lie in [max(0, k_A + k_B - n), min(k_A, k_B)]")

    @property
    def n_masked(self) -> int:
        return int(self.size.sum())

    @property
    def observed(self) -> int:
        """|A ∧ B|, summed over blocks."""
        return int(self.both.sum())


@dataclass(frozen=True)
class OverlapResult:
    """Overlap test outcome; overlaps and kept amounts are fractions of the masked entries."""

    observed: float  # |A ∧ B| / N
    expected: float  # Σ_b k_A k_B / n_b / N, exact under the null
    expected_sd: float  # exact null standard deviation / N
    ratio: float  # observed / expected; NaN when expected is 0
    p_value: float  # (1 + #{null >= observed}) / (1 + draws)
    null_mean: float  # mean of the null draws / N
    null_sd: float  # standard deviation of the null draws / N
    share_a_in_b: float  # |A ∧ B| / |A|; NaN when A is empty
    kept_a: float  # |A| / N
    kept_b: float  # |B| / N
    observed_count: int  # |A ∧ B|
    n_masked: int  # N
    draws: int
    seed: int


def block_overlap(
    mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor], layout: Layout
) -> BlockOverlap:
    """Per-block counts of two masks of the model with `layout`, blocks in `layout.blocks()`
    order."""
    from bigram_subnetworks.masks.toolkit import check_mask  # torch only when masks are used

    check_mask(mask_a, layout, "overlap mask A")
    check_mask(mask_b, layout, "overlap mask B")
    blocks = layout.blocks()
    size, kept_a, kept_b, both = (np.zeros(len(blocks), dtype=np.int64) for _ in range(4))
    for i, block in enumerate(blocks):
        a, b = block.select(mask_a[block.param]), block.select(mask_b[block.param])
        size[i] = block.size
        kept_a[i], kept_b[i] = int(a.count_nonzero()), int(b.count_nonzero())
        both[i] = int((a & b).count_nonzero())
    return BlockOverlap(size, kept_a, kept_b, both)


def expected_overlap(counts: BlockOverlap) -> float:
    """Exact null mean of |A ∧ B| (a count, not a fraction): Σ_b k_A k_B / n_b."""
    return float(np.sum(counts.kept_a * (counts.kept_b / counts.size)))


def overlap_sd(counts: BlockOverlap) -> float:
    """Exact null standard deviation of |A ∧ B| (a count): the hypergeometric variances summed."""
    n, a, b = (x.astype(np.float64) for x in (counts.size, counts.kept_a, counts.kept_b))
    numerator = a * b * (n - a) * (n - b)
    denominator = n * n * (n - 1)
    variance = np.divide(numerator, denominator, out=np.zeros_like(n), where=n > 1)
    return float(np.sqrt(variance.sum()))


def null_overlaps(counts: BlockOverlap, draws: int = DEFAULT_DRAWS, seed: int = 0) -> np.ndarray:
    """`draws` null samples of |A ∧ B| (int64 counts; divide by `n_masked` for fractions).

    Each sample is one hypergeometric draw per block, summed over blocks; the same seed gives
    the same samples (and `overlap_test` uses exactly these).
    """
    if draws < 1:
        raise ValueError(f"draws {draws}: need at least one null draw")
    rng = np.random.default_rng(seed)
    n_blocks = counts.size.size
    rows = max(1, CHUNK_VARIATES // n_blocks)
    out = np.empty(draws, dtype=np.int64)
    for start in range(0, draws, rows):
        stop = min(start + rows, draws)
        sample = rng.hypergeometric(
            counts.kept_a, counts.size - counts.kept_a, counts.kept_b, size=(stop - start, n_blocks)
        )
        out[start:stop] = sample.sum(axis=1)
    return out


def overlap_test(counts: BlockOverlap, draws: int = DEFAULT_DRAWS, seed: int = 0) -> OverlapResult:
    """Observed vs. null overlap from per-block counts, with the +1-corrected p-value."""
    null = null_overlaps(counts, draws, seed)
    n = counts.n_masked
    observed, expected = counts.observed, expected_overlap(counts)
    total_a = int(counts.kept_a.sum())
    return OverlapResult(
        observed=observed / n,
        expected=expected / n,
        expected_sd=overlap_sd(counts) / n,
        ratio=observed / expected if expected > 0 else float("nan"),
        p_value=(1 + int(np.count_nonzero(null >= observed))) / (1 + draws),
        null_mean=float(null.mean()) / n,
        null_sd=float(null.std()) / n,
        share_a_in_b=observed / total_a if total_a else float("nan"),
        kept_a=total_a / n,
        kept_b=int(counts.kept_b.sum()) / n,
        observed_count=observed,
        n_masked=n,
        draws=draws,
        seed=seed,
    )


def mask_overlap_test(
    mask_a: Mapping[str, torch.Tensor],
    mask_b: Mapping[str, torch.Tensor],
    layout: Layout,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> OverlapResult:
    """`overlap_test` of two masks of one model (A is the mask whose share inside B is
    reported)."""
    return overlap_test(block_overlap(mask_a, mask_b, layout), draws, seed)


def pair_rows(
    model: str,
    bigram: Mapping[str, Mapping[str, torch.Tensor]],
    optimal: Mapping[str, Mapping[str, torch.Tensor]],
    layout: Layout,
    selected: tuple[str, str] | None,
    draws: int,
    seed: int,
) -> tuple[list[dict], np.ndarray | None]:
    """Overlap rows for every (bigram λ, optimal λ) pair of one model, and the null draws of the
    selected pair (None when the model has no selected pair)."""
    rows, selected_null = [], None
    for bigram_label, mask_a in bigram.items():
        for optimal_label, mask_b in optimal.items():
            counts = block_overlap(mask_a, mask_b, layout)
            result = overlap_test(counts, draws, seed)
            is_selected = selected == (bigram_label, optimal_label)
            if is_selected:
                selected_null = null_overlaps(counts, draws, seed) / counts.n_masked
            rows.append(
                {
                    "model": model,
                    "bigram_lambda": bigram_label,
                    "optimal_lambda": optimal_label,
                    "selected": is_selected,
                    **asdict(result),
                }
            )
    return rows, selected_null


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    selection: Path,
    overlap: Path,
    overlap_null: Path,
) -> None:
    """The overlap stage: `overlap.parquet` (every bigram × optimal pair of every model) and
    `overlap_null.parquet` (the null draws of each model's selected pair)."""
    import pyarrow as pa

    from bigram_subnetworks.analysis.scoring import index_masks
    from bigram_subnetworks.analysis.select import read_selection
    from bigram_subnetworks.io import atomic_outputs, write_parquet
    from bigram_subnetworks.masks.toolkit import load_mask
    from bigram_subnetworks.models.layout import layout_of
    from bigram_subnetworks.models.loading import load_model, model_identity

    index = index_masks(masks)
    rows: list[dict] = []
    nulls: list[dict] = []
    for model_dir in models:
        model = model_dir.name
        network, info = load_model(model_dir)
        layout, identity = layout_of(network), model_identity(model_dir, info)
        chosen = read_selection(selection, model)
        trained = [m for m in index.get(model, []) if np.isfinite(m.lam)]
        loaded = {(m.target, m.label): load_mask(m.path, layout, identity)[0] for m in trained}
        bigram = {label: mask for (target, label), mask in loaded.items() if target == "bigram"}
        optimal = {label: mask for (target, label), mask in loaded.items() if target == "full"}
        pair = (
            (chosen["bigram"]["lambda"], chosen["optimal"]["lambda"]) if chosen["optimal"] else None
        )
        model_rows, null = pair_rows(
            model, bigram, optimal, layout, pair, cfg.analysis.overlap_draws, cfg.seed
        )
        rows += model_rows
        if null is not None:
            nulls += [{"model": model, "draw": i, "overlap": float(v)} for i, v in enumerate(null)]
        log.info("%s: %d bigram × optimal pairs tested", model, len(model_rows))
    with atomic_outputs(overlap, overlap_null) as (table_file, null_file):
        write_parquet(pa.Table.from_pylist(rows, schema=OVERLAP.schema), table_file, seed=cfg.seed)
        write_parquet(
            pa.Table.from_pylist(nulls, schema=OVERLAP_NULL.schema), null_file, seed=cfg.seed
        )
