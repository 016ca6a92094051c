"""Overlap of two masks of one model, and its significance under two within-block nulls.

Overlap = |A ∧ B| / N_masked. Blocks are Q, K, V, O, MLP-in and MLP-out of every layer.

**Uniform null** (the paper's text: "random within block"). A and B are each redrawn uniformly
within every block with their own kept counts. Blocks are then independent and the overlap inside
block b is hypergeometric (population n_b, k_A successes, k_B draws), so the expected overlap is
Σ_b k_A k_B / n_b exactly and one null draw is one hypergeometric variate per block:
O(blocks × draws) work, never O(parameters × draws).

**Row-shuffle null** (the authors' released code, `np.random.shuffle` on each (out, in) weight
matrix, which permutes whole rows). The rows of A's and of B's matrix are permuted independently
within every block, which keeps each row's entries and their column alignment. Only the relative
permutation τ matters, so a draw is Σ_i |A_i ∧ B_τ(i)|, with τ uniform: with the row-pair counts
M_ij = |A_i ∧ B_j| computed once (a sparse product), one draw is one lookup per row, O(rows)
instead of O(entries). Its mean is exact, Σ_b Σ_ij M_ij / R_b (the column counts of A and B
multiplied and summed, divided by the number of rows), and so is its variance (Hoeffding's
permutation variance, 1/(R−1) Σ_ij of the doubly centred M_ij²). Where masks concentrate on some
input columns (embedding dimensions), this null expects more overlap than the uniform one, so its
ratio is smaller. The paper's Table 3 numbers (expected overlap = mean of 10K such draws) come from
this null, so the report compares Table 3 with it. Row draws are made for each model's selected
pair (the pair Table 3 reports); the exact row mean and sd are given for every pair. One
difference remains: for GPT-NeoX's fused query_key_value the authors' code takes contiguous thirds
of the rows as Q, K and V, while the blocks here are the true per-head interleaved Q, K and V rows
(see `models.layout`), so rows are shuffled within the right kind.

Everything after `block_overlap` / `row_blocks` works on counts only, so masks of a billion
entries are read once and never shuffled. This module imports numpy and scipy only; the mask
functions take torch tensors but load the mask toolkit (and torch) when first called.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bigram_subnetworks.artifacts import OVERLAP, OVERLAP_NULL, REFERENCE_MASK, REFERENCE_OVERLAP
from bigram_subnetworks.errors import UserError

if TYPE_CHECKING:
    import torch

    from bigram_subnetworks.config import Config
    from bigram_subnetworks.models.layout import Layout

log = logging.getLogger(__name__)

DEFAULT_DRAWS = 10_000
CHUNK_VARIATES = 1 << 22  # variates (or row lookups) per sampling pass (32 MiB of int64)
ROW_STREAM = 0x2055  # seeds the row-shuffle draws apart from the uniform null's


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


@dataclass(frozen=True, eq=False)
class RowBlock:
    """The row-pair intersection counts M_ij = |A_i ∧ B_j| of one block's (out, in) matrices,
    sparse: `keys` = i · rows + j (sorted, int64) and `counts` (int64) of the pairs M_ij > 0."""

    rows: int
    keys: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> int:
        """Σ_ij M_ij = Σ_c colA_c · colB_c."""
        return int(self.counts.sum())

    def mean(self) -> float:
        """Exact null mean of Σ_i M_i,τ(i): Σ_ij M_ij / rows."""
        return self.total / self.rows

    def variance(self) -> float:
        """Exact null variance of Σ_i M_i,τ(i) over uniform permutations τ (Hoeffding 1951):
        Σ_ij d_ij² / (rows − 1), d the doubly centred M."""
        r = self.rows
        if r < 2 or self.keys.size == 0:
            return 0.0
        i, j = np.divmod(self.keys, r)
        m = self.counts.astype(np.float64)
        row_means = np.bincount(i, weights=m, minlength=r) / r
        col_means = np.bincount(j, weights=m, minlength=r) / r
        grand = m.sum() / (r * r)
        centred = (m * m).sum() - r * (row_means @ row_means) - r * (col_means @ col_means)
        centred += r * r * grand * grand
        return max(centred, 0.0) / (r - 1)


@dataclass(frozen=True)
class OverlapResult:
    """Overlap test outcome; overlaps and kept amounts are fractions of the masked entries.
    `row_*`: the row-shuffle null (NaN without row blocks; p and draw statistics NaN without
    row draws)."""

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
    row_expected: float = float("nan")  # exact row-shuffle null mean / N
    row_expected_sd: float = float("nan")  # exact row-shuffle null sd / N
    row_ratio: float = float("nan")  # observed / row_expected
    row_p_value: float = float("nan")  # (1 + #{row null >= observed}) / (1 + draws)
    row_null_mean: float = float("nan")  # mean of the row-shuffle draws / N
    row_null_sd: float = float("nan")  # sd of the row-shuffle draws / N


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


def _output_axis(layout: Layout) -> int:
    """0 when the layout's weights are stored (out, in) (nn.Linear), 1 for (in, out) (Conv1D)."""
    from bigram_subnetworks.models.layout import _ARCHS  # the one place the layout records it

    return _ARCHS[layout.arch].output_axis


def row_pairs(a: np.ndarray, b: np.ndarray) -> RowBlock:
    """`RowBlock` of two boolean (rows, cols) matrices (rows = output units)."""
    from scipy import sparse

    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"row_pairs: need two equal 2-D shapes, got {a.shape} and {b.shape}")
    rows = a.shape[0]
    product = (
        sparse.csr_array(a.astype(np.int64)) @ sparse.csr_array(b.astype(np.int64)).T
    ).tocoo()
    keys = product.row.astype(np.int64) * rows + product.col.astype(np.int64)
    counts = product.data.astype(np.int64)
    keep = counts > 0
    order = np.argsort(keys[keep], kind="stable")
    return RowBlock(rows, keys[keep][order], counts[keep][order])


def row_blocks(
    mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor], layout: Layout
) -> list[RowBlock]:
    """The `RowBlock` of every block in `layout.blocks()` order, each block read as its (out, in)
    matrix (GPT-2's Conv1D blocks are transposed first), as the authors' code shuffles them."""
    from bigram_subnetworks.masks.toolkit import check_mask

    check_mask(mask_a, layout, "overlap mask A")
    check_mask(mask_b, layout, "overlap mask B")
    transpose = _output_axis(layout) == 1
    out = []
    for block in layout.blocks():
        a = block.select(mask_a[block.param]).numpy().astype(bool)
        b = block.select(mask_b[block.param]).numpy().astype(bool)
        if transpose:
            a, b = a.T, b.T
        out.append(row_pairs(a, b))
    return out


def row_null_overlaps(blocks: list[RowBlock], draws: int, seed: int = 0) -> np.ndarray:
    """`draws` samples of |A ∧ B| (int64 counts) under the row-shuffle null: per block, a seeded
    uniform permutation τ of its rows and Σ_i M_i,τ(i), looked up for the rows with any M_ij > 0
    only (O(rows) per draw, vectorised over chunks of draws)."""
    if draws < 1:
        raise ValueError(f"draws {draws}: need at least one null draw")
    rng = np.random.default_rng([seed, ROW_STREAM])
    total = np.zeros(draws, dtype=np.int64)
    for block in blocks:
        if block.keys.size == 0:
            continue
        r = block.rows
        active = np.unique(block.keys // r)  # rows i with some M_ij > 0
        identity = np.broadcast_to(np.arange(r, dtype=np.int64), (1, r))
        chunk = max(1, CHUNK_VARIATES // r)
        for start in range(0, draws, chunk):
            stop = min(start + chunk, draws)
            tau = rng.permuted(np.broadcast_to(identity, (stop - start, r)), axis=1)
            query = active[None, :] * r + tau[:, active]
            where = np.searchsorted(block.keys, query)
            where = np.minimum(where, block.keys.size - 1)
            hit = block.keys[where] == query
            total[start:stop] += np.where(hit, block.counts[where], 0).sum(axis=1)
    return total


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


def overlap_test(
    counts: BlockOverlap,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    rows: list[RowBlock] | None = None,
    row_draws: bool = False,
) -> OverlapResult:
    """Observed vs. null overlap from per-block counts, with the +1-corrected p-value; with
    `rows` (the same masks' `row_blocks`) also the exact row-shuffle mean and sd, and with
    `row_draws` its `draws` seeded draws and p-value."""
    null = null_overlaps(counts, draws, seed)
    n = counts.n_masked
    observed, expected = counts.observed, expected_overlap(counts)
    total_a = int(counts.kept_a.sum())
    row: dict[str, float] = {}
    if rows is not None:
        row_mean = sum(block.mean() for block in rows)
        row["row_expected"] = row_mean / n
        row["row_expected_sd"] = float(np.sqrt(sum(block.variance() for block in rows))) / n
        row["row_ratio"] = observed / row_mean if row_mean > 0 else float("nan")
        if row_draws:
            row_null = row_null_overlaps(rows, draws, seed)
            row["row_p_value"] = (1 + int(np.count_nonzero(row_null >= observed))) / (1 + draws)
            row["row_null_mean"] = float(row_null.mean()) / n
            row["row_null_sd"] = float(row_null.std()) / n
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
        **row,
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
) -> tuple[list[dict], dict[str, np.ndarray] | None]:
    """Overlap rows for every (bigram λ, optimal λ) pair of one model (both nulls' exact means;
    row-shuffle draws for the selected pair only), and the null draws of the selected pair as
    fractions, {"uniform": ..., "row": ...} (None when the model has no selected pair)."""
    rows, selected_null = [], None
    for bigram_label, mask_a in bigram.items():
        for optimal_label, mask_b in optimal.items():
            counts = block_overlap(mask_a, mask_b, layout)
            blocks = row_blocks(mask_a, mask_b, layout)
            is_selected = selected == (bigram_label, optimal_label)
            result = overlap_test(counts, draws, seed, blocks, row_draws=is_selected)
            if is_selected:
                selected_null = {
                    "uniform": null_overlaps(counts, draws, seed) / counts.n_masked,
                    "row": row_null_overlaps(blocks, draws, seed) / counts.n_masked,
                }
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


# OverlapResult fields a reference_overlap row carries as they are.
REFERENCE_RESULT_FIELDS = ("observed", "expected", "expected_sd", "ratio", "p_value")
REFERENCE_RESULT_FIELDS += ("row_expected", "row_expected_sd", "row_ratio", "observed_count")
REFERENCE_RESULT_FIELDS += ("n_masked", "draws", "seed")


def reference_rows(
    model: str,
    masks: Mapping[tuple[str, str], Mapping[str, torch.Tensor]],
    references: Mapping[str, tuple[Mapping[str, torch.Tensor], dict]],
    layout: Layout,
    draws: int,
    seed: int,
) -> list[dict]:
    """Overlap rows of every authors' mask (λ label -> (mask, its metadata)) with every mask of
    this run ((target, λ label) -> mask) of one model: the run's mask is A, the authors' B; both
    nulls' exact means (uniform-null p from `draws` draws) and the share of each inside the
    other."""
    rows = []
    for reference_label, (reference, metadata) in references.items():
        record = metadata.get("reference", {})
        for (target, label), mask in masks.items():
            counts = block_overlap(mask, reference, layout)
            result = overlap_test(counts, draws, seed, row_blocks(mask, reference, layout))
            kept_reference = int(counts.kept_b.sum())
            rows.append(
                {
                    "model": model,
                    "reference_lambda": reference_label,
                    "reference_source": ", ".join(map(str, metadata.get("sources", []))),
                    "orig_model_name": record.get("orig_model_name"),
                    "target": target,
                    "lambda": label,
                    "share_run_in_reference": result.share_a_in_b,
                    "share_reference_in_run": (
                        result.observed_count / kept_reference if kept_reference else float("nan")
                    ),
                    "kept_run": result.kept_a,
                    "kept_reference": result.kept_b,
                    **{key: getattr(result, key) for key in REFERENCE_RESULT_FIELDS},
                }
            )
    return rows


def _load_references(
    paths: list[Path], layout: Layout, identity: dict
) -> dict[str, tuple[dict, dict]]:
    """One model's imported authors' masks (reference_mask stage files) by λ label, checked
    against the model."""
    from bigram_subnetworks.masks.toolkit import load_mask

    return {REFERENCE_MASK.parse(p)["lam"]: load_mask(p, layout, identity) for p in paths}


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    selection: Path,
    overlap: Path,
    overlap_null: Path,
    references: list[Path] | None = None,
    reference_overlap: Path | None = None,
) -> None:
    """The overlap stage: `overlap.parquet` (every bigram × optimal pair of every model),
    `overlap_null.parquet` (the null draws of each model's selected pair) and, with
    `reference_masks`, `reference_overlap.parquet` (the authors' masks against this run's)."""
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
    compared: list[dict] = []
    names = {model_dir.name for model_dir in models}
    unknown = sorted({REFERENCE_MASK.parse(p)["model"] for p in references or []} - names)
    if unknown:
        raise UserError(
            f"overlap: reference masks of {unknown[0]}, which is not a model of the run"
        )
    for model_dir in models:
        model = model_dir.name
        network, info = load_model(model_dir)
        layout, identity = layout_of(network), model_identity(model_dir, info)
        chosen = read_selection(selection, model)
        trained = [m for m in index.get(model, []) if np.isfinite(m.lam)]
        loaded = {(m.target, m.label): load_mask(m.path, layout, identity)[0] for m in trained}
        mine = [p for p in references or [] if REFERENCE_MASK.parse(p)["model"] == model]
        if mine:
            found = _load_references(mine, layout, identity)
            compared += reference_rows(
                model, loaded, found, layout, cfg.analysis.overlap_draws, cfg.seed
            )
            log.info("%s: %d authors' mask(s) compared", model, len(found))
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
            nulls += [
                {"model": model, "draw": i, "overlap": float(u), "row_overlap": float(r)}
                for i, (u, r) in enumerate(zip(null["uniform"], null["row"], strict=True))
            ]
        log.info("%s: %d bigram × optimal pairs tested", model, len(model_rows))
    extra = [reference_overlap] if reference_overlap is not None else []
    with atomic_outputs(overlap, overlap_null, *extra) as (table_file, null_file, *reference_file):
        write_parquet(pa.Table.from_pylist(rows, schema=OVERLAP.schema), table_file, seed=cfg.seed)
        write_parquet(
            pa.Table.from_pylist(nulls, schema=OVERLAP_NULL.schema), null_file, seed=cfg.seed
        )
        if reference_file:
            table = pa.Table.from_pylist(compared, schema=REFERENCE_OVERLAP.schema)
            write_parquet(table, reference_file[0], seed=cfg.seed)
