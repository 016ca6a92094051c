"""The overlap test: the uniform within-block null (hypergeometric) and the authors' row-shuffle
null against brute-force shuffles, p-values and their resolution, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bigram_subnetworks.analysis.overlap import (
    BlockOverlap,
    block_overlap,
    expected_overlap,
    mask_overlap_test,
    null_overlaps,
    overlap_sd,
    overlap_test,
    row_blocks,
    row_null_overlaps,
)
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.toolkit import (
    block_counts,
    intersection,
    keep_all,
    keep_none,
    random_within_blocks,
)
from bigram_subnetworks.models.layout import Layout

DRAWS = 20_000


_PARAMS = {  # per architecture: the layer prefix and its QKV, O, MLP-in, MLP-out weights
    "gpt_neox": (
        "gpt_neox.layers.{}.",
        ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ),
    "gpt2": ("transformer.h.{}.", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
}


def tiny_layout(arch: str = "gpt_neox", n_layers: int = 2, d: int = 8, heads: int = 2) -> Layout:
    """A real-shaped layout (what `layout_of` gives for such a model) without building one."""
    prefix, params = _PARAMS[arch]
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)]
    if arch == "gpt2":  # Conv1D stores (in, out)
        shapes = [(cols, rows) for rows, cols in shapes]
    named = {
        prefix.format(layer) + param + ".weight": shape
        for layer in range(n_layers)
        for param, shape in zip(params, shapes, strict=True)
    }
    return Layout(arch, n_layers, heads, d, 4 * d, tuple(named), named)


def random_mask(layout: Layout, densities: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """Independent Bernoulli entries with one density per block (so counts vary by block)."""
    generator = torch.Generator().manual_seed(seed)
    mask = keep_none(layout)
    for block, p in zip(layout.blocks(), densities, strict=True):
        shape = block.select(mask[block.param]).shape
        mask[block.param][block.index()] = torch.rand(shape, generator=generator) < p
    return mask


@pytest.fixture(scope="module")
def layout() -> Layout:
    return tiny_layout()


@pytest.fixture(scope="module")
def masks(layout: Layout) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two correlated masks: B keeps half of A plus its own entries, densities vary by block."""
    n_blocks = len(layout.blocks())
    densities = np.random.default_rng(0).uniform(0.1, 0.5, n_blocks)
    a = random_mask(layout, densities, seed=1)
    extra = random_mask(layout, densities, seed=2)
    half = random_mask(layout, np.full(n_blocks, 0.5), seed=3)
    b = {name: (a[name] & half[name]) | extra[name] for name in a}
    return a, b


def brute_null(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], layout: Layout, draws: int, seed: int
) -> np.ndarray:
    """|A ∧ B| after permuting each block's entries of A and of B independently, `draws` times."""
    rng = np.random.default_rng(seed)
    total = np.zeros(draws, dtype=np.int64)
    for block in layout.blocks():
        rows_a = np.tile(block.select(a[block.param]).numpy().ravel(), (draws, 1))
        rows_b = np.tile(block.select(b[block.param]).numpy().ravel(), (draws, 1))
        total += np.count_nonzero(rng.permuted(rows_a, axis=1) & rng.permuted(rows_b, axis=1), 1)
    return total


@pytest.fixture(scope="module")
def nulls(layout: Layout, masks) -> tuple[BlockOverlap, np.ndarray, np.ndarray]:
    counts = block_overlap(*masks, layout)
    return counts, null_overlaps(counts, DRAWS, seed=0), brute_null(*masks, layout, DRAWS, seed=1)


def exact_null_pmf(counts: BlockOverlap) -> np.ndarray:
    """The null distribution of |A ∧ B|: per-block hypergeometric pmfs convolved."""
    pmf = np.ones(1)
    for n, a, b in zip(counts.size, counts.kept_a, counts.kept_b, strict=True):
        pmf = np.convolve(pmf, stats.hypergeom(n, a, b).pmf(np.arange(min(a, b) + 1)))
    return pmf


def test_block_overlap_matches_toolkit_block_counts(layout: Layout, masks) -> None:
    a, b = masks
    counts = block_overlap(a, b, layout)
    assert counts.size.tolist() == [r["size"] for r in block_counts(a, layout)]
    assert counts.kept_a.tolist() == [r["kept"] for r in block_counts(a, layout)]
    assert counts.kept_b.tolist() == [r["kept"] for r in block_counts(b, layout)]
    assert counts.both.tolist() == [r["kept"] for r in block_counts(intersection(a, b), layout)]
    assert counts.n_masked == layout.n_masked
    assert counts.observed == sum(int((a[k] & b[k]).count_nonzero()) for k in a)


def test_block_overlap_gpt2_layout() -> None:
    layout = tiny_layout("gpt2", n_layers=1, d=4)
    a = random_mask(layout, np.full(6, 0.5), seed=0)
    b = random_mask(layout, np.full(6, 0.5), seed=1)
    counts = block_overlap(a, b, layout)
    assert counts.both.tolist() == [r["kept"] for r in block_counts(intersection(a, b), layout)]
    assert counts.n_masked == layout.n_masked


def test_fast_null_matches_brute_force_shuffles(nulls) -> None:
    counts, fast, brute = nulls
    expected = expected_overlap(counts)
    assert abs(fast.mean() - brute.mean()) <= 0.01 * brute.mean()
    assert abs(expected - brute.mean()) <= 0.01 * brute.mean()
    assert abs(expected - fast.mean()) <= 0.01 * expected
    assert fast.std() == pytest.approx(brute.std(), rel=0.05)
    assert stats.ks_2samp(fast, brute).pvalue > 0.01
    quantiles = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    assert np.abs(np.quantile(fast, quantiles) - np.quantile(brute, quantiles)).max() <= 2


def test_both_nulls_match_the_exact_distribution(nulls) -> None:
    counts, fast, brute = nulls
    pmf = exact_null_pmf(counts)
    mean = float(np.arange(pmf.size) @ pmf)
    assert expected_overlap(counts) == pytest.approx(mean, rel=1e-9)
    assert overlap_sd(counts) ** 2 == pytest.approx(float(np.arange(pmf.size) ** 2 @ pmf) - mean**2)
    for sample in (fast, brute):  # total variation distance to the exact pmf
        empirical = np.bincount(sample, minlength=pmf.size) / sample.size
        assert 0.5 * np.abs(empirical[: pmf.size] - pmf).sum() < 0.05


def test_expected_overlap_formula() -> None:
    counts = BlockOverlap(
        np.array([10, 100]), np.array([5, 10]), np.array([4, 30]), np.array([2, 3])
    )
    assert expected_overlap(counts) == pytest.approx(5 * 4 / 10 + 10 * 30 / 100)
    result = overlap_test(counts, draws=100)
    assert result.expected == pytest.approx(5 / 110)
    assert result.observed == pytest.approx(5 / 110)
    assert result.ratio == pytest.approx(1.0)
    assert result.share_a_in_b == pytest.approx(5 / 15)
    assert (result.kept_a, result.kept_b) == (pytest.approx(15 / 110), pytest.approx(34 / 110))


def test_p_value_uses_the_plus_one_correction(nulls) -> None:
    counts, _, _ = nulls
    null = null_overlaps(counts, 500, seed=7)
    result = overlap_test(counts, draws=500, seed=7)
    assert result.p_value == (1 + np.count_nonzero(null >= counts.observed)) / 501
    assert result.null_mean == pytest.approx(null.mean() / counts.n_masked)
    assert result.null_sd == pytest.approx(null.std() / counts.n_masked)
    # far above every draw: the smallest p is 1 / (draws + 1), never 0
    high = BlockOverlap(counts.size, counts.kept_a, counts.kept_a, counts.kept_a)
    assert overlap_test(high, draws=500).p_value == 1 / 501
    # a null at or above the observation in every draw: p = 1
    low = BlockOverlap(
        counts.size,
        counts.kept_a,
        counts.kept_b,
        np.maximum(0, counts.kept_a + counts.kept_b - counts.size),
    )
    assert overlap_test(low, draws=500).p_value == 1.0


def test_identical_masks(layout: Layout, masks) -> None:
    a, _ = masks
    result = mask_overlap_test(a, a, layout, draws=1000)
    kept = sum(int(t.count_nonzero()) for t in a.values())
    assert result.observed_count == kept
    assert result.observed == result.kept_a == result.kept_b == kept / layout.n_masked
    assert result.share_a_in_b == 1.0
    assert result.ratio > 1
    assert result.p_value == 1 / 1001


def test_disjoint_masks(layout: Layout, masks) -> None:
    a, _ = masks
    b = {name: ~t for name, t in a.items()}
    result = mask_overlap_test(a, b, layout, draws=1000)
    assert result.observed == result.observed_count == 0
    assert result.share_a_in_b == 0.0
    assert result.ratio == 0.0
    assert result.p_value == 1.0
    assert result.kept_a + result.kept_b == pytest.approx(1.0)


def test_empty_mask(layout: Layout, masks) -> None:
    result = mask_overlap_test(keep_none(layout), masks[1], layout, draws=100)
    assert result.observed == result.expected == result.null_mean == result.null_sd == 0
    assert math.isnan(result.ratio)
    assert math.isnan(result.share_a_in_b)
    assert result.kept_a == 0.0
    assert result.p_value == 1.0
    both_empty = mask_overlap_test(keep_none(layout), keep_none(layout), layout, draws=100)
    assert both_empty.kept_b == 0.0 and math.isnan(both_empty.ratio)


def test_full_mask_makes_the_null_constant(layout: Layout, masks) -> None:
    b = masks[1]
    result = mask_overlap_test(keep_all(layout), b, layout, draws=100)
    assert result.observed == result.expected == result.null_mean == result.kept_b
    assert result.null_sd == result.expected_sd == 0.0
    assert result.ratio == 1.0
    assert result.share_a_in_b == result.kept_b
    assert result.p_value == 1.0


def test_single_entry_blocks() -> None:
    counts = BlockOverlap(
        np.ones(3, int), np.array([0, 1, 1]), np.array([1, 0, 1]), np.array([0, 0, 1])
    )
    result = overlap_test(counts, draws=10)
    assert result.expected == result.observed == pytest.approx(1 / 3)
    assert result.expected_sd == 0.0
    assert result.p_value == 1.0


def test_seeded_draws_are_deterministic(nulls) -> None:
    counts, _, _ = nulls
    assert np.array_equal(null_overlaps(counts, 300, seed=5), null_overlaps(counts, 300, seed=5))
    assert not np.array_equal(null_overlaps(counts, 300, seed=5), null_overlaps(counts, 300, 6))
    assert overlap_test(counts, 300, seed=5) == overlap_test(counts, 300, seed=5)
    assert overlap_test(counts, 300, seed=5).seed == 5


def test_null_of_the_same_structure_is_not_significant(layout: Layout, masks) -> None:
    """A mask redrawn within blocks has only chance overlap with another (p not tiny)."""
    a, b = masks
    p_values = [
        mask_overlap_test(random_within_blocks(a, layout, seed), b, layout, 2000).p_value
        for seed in range(5)
    ]
    assert min(p_values) > 0.001
    assert mask_overlap_test(a, b, layout, 2000).p_value < 0.001  # B was built to contain A


@pytest.mark.parametrize(
    ("size", "kept_a", "kept_b", "both"),
    [
        ([10], [11], [0], [0]),  # kept > size
        ([10], [-1], [0], [0]),  # negative
        ([10], [3], [4], [5]),  # both > min(k_A, k_B)
        ([10], [8], [8], [5]),  # both < k_A + k_B - n
        ([10, 10], [1], [1], [1]),  # lengths differ
        ([], [], [], []),  # no blocks
        ([0], [0], [0], [0]),  # empty block
        ([10.0], [1.0], [1.0], [1.0]),  # not integers
    ],
)
def test_inconsistent_counts_are_refused(size, kept_a, kept_b, both) -> None:
    with pytest.raises(ValueError):
        BlockOverlap(np.array(size), np.array(kept_a), np.array(kept_b), np.array(both))


def test_bad_draws_and_foreign_masks_are_refused(layout: Layout, masks) -> None:
    counts = block_overlap(*masks, layout)
    with pytest.raises(ValueError, match="draws"):
        null_overlaps(counts, 0)
    other = tiny_layout(n_layers=1)
    with pytest.raises(UserError, match="another model"):
        block_overlap(keep_none(other), masks[1], layout)


# ------------------------------------------------------------------ row-shuffle null


def out_in_blocks(mask: dict[str, torch.Tensor], layout: Layout) -> list[np.ndarray]:
    """Every block of a mask as its (out, in) matrix (GPT-2's Conv1D transposed)."""
    matrices = []
    for block in layout.blocks():
        matrix = block.select(mask[block.param]).numpy()
        matrices.append(matrix.T if layout.arch == "gpt2" else matrix)
    return matrices


def brute_row_null(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], layout: Layout, draws: int, seed: int
) -> np.ndarray:
    """|A ∧ B| after shuffling the rows of every (out, in) block matrix of A and of B
    independently, as the authors' `np.random.shuffle` on 2-D arrays does, `draws` times."""
    rng = np.random.default_rng(seed)
    total = np.zeros(draws, dtype=np.int64)
    for left, right in zip(out_in_blocks(a, layout), out_in_blocks(b, layout), strict=True):
        for draw in range(draws):
            total[draw] += np.count_nonzero(
                left[rng.permutation(len(left))] & right[rng.permutation(len(right))]
            )
    return total


def column_skewed_masks(layout: Layout, seed: int) -> tuple[dict, dict]:
    """A and B that both favour the same few input columns of every block (as masks that use a
    few embedding dimensions do): the row-shuffle null then expects more overlap than uniform."""
    generator = torch.Generator().manual_seed(seed)
    a, b = keep_none(layout), keep_none(layout)
    for block in layout.blocks():
        shape = block.select(a[block.param]).shape
        out_axis = 1 if layout.arch == "gpt2" else 0
        n_in = shape[1 - out_axis]
        weight = torch.linspace(0.6, 0.02, n_in)
        density = weight[None, :] if out_axis == 0 else weight[:, None]
        for mask in (a, b):
            mask[block.param][block.index()] = torch.rand(shape, generator=generator) < density
    return a, b


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2"])
def test_row_null_matches_brute_force_row_shuffles(arch: str) -> None:
    layout = tiny_layout(arch, n_layers=1, d=6)
    a, b = column_skewed_masks(layout, seed=3)
    blocks = row_blocks(a, b, layout)
    fast = row_null_overlaps(blocks, 20_000, seed=0)
    brute = brute_row_null(a, b, layout, 4_000, seed=1)
    mean = sum(block.mean() for block in blocks)
    sd = math.sqrt(sum(block.variance() for block in blocks))
    assert fast.mean() == pytest.approx(mean, rel=0.01)
    assert brute.mean() == pytest.approx(mean, abs=4 * sd / math.sqrt(4_000))
    assert fast.std() == pytest.approx(sd, rel=0.03)
    assert brute.std() == pytest.approx(sd, rel=0.06)
    assert stats.ks_2samp(fast, brute).pvalue > 0.001
    # column alignment is kept: more expected overlap than uniformly redrawn masks
    assert mean > 1.05 * expected_overlap(block_overlap(a, b, layout))


def test_row_null_exact_mean_is_column_counts_over_rows(layout: Layout, masks) -> None:
    a, b = masks
    blocks = row_blocks(a, b, layout)
    for block, left, right in zip(
        blocks, out_in_blocks(a, layout), out_in_blocks(b, layout), strict=True
    ):
        columns = left.sum(0).astype(np.int64) @ right.sum(0).astype(np.int64)
        assert block.rows == left.shape[0]
        assert block.mean() == pytest.approx(columns / left.shape[0])


def test_row_null_is_seeded_and_identical_masks_never_exceed_themselves(layout, masks) -> None:
    a, b = masks
    blocks = row_blocks(a, b, layout)
    assert np.array_equal(row_null_overlaps(blocks, 300, 5), row_null_overlaps(blocks, 300, 5))
    assert not np.array_equal(row_null_overlaps(blocks, 300, 5), row_null_overlaps(blocks, 300, 6))
    same = row_blocks(a, a, layout)
    kept = sum(int(t.count_nonzero()) for t in a.values())
    assert row_null_overlaps(same, 500, 0).max() <= kept
    with pytest.raises(ValueError, match="draws"):
        row_null_overlaps(blocks, 0)


def test_overlap_test_reports_both_nulls_and_the_p_resolution(layout, masks) -> None:
    a, b = masks
    counts, blocks = block_overlap(a, b, layout), row_blocks(a, b, layout)
    exact_only = overlap_test(counts, 200, 0, blocks)
    assert math.isnan(exact_only.row_p_value) and math.isfinite(exact_only.row_expected)
    result = overlap_test(counts, 400, 0, blocks, row_draws=True)
    row_mean = sum(block.mean() for block in blocks)
    assert result.row_expected == pytest.approx(row_mean / counts.n_masked)
    assert result.row_ratio == pytest.approx(counts.observed / row_mean)
    null = row_null_overlaps(blocks, 400, 0)
    assert result.row_p_value == (1 + np.count_nonzero(null >= counts.observed)) / 401
    assert result.row_p_value >= 1 / 401  # the resolution: never below 1 / (draws + 1)
    assert result.row_null_mean == pytest.approx(null.mean() / counts.n_masked)
    # the uniform null is unchanged by the row null
    assert result.p_value == overlap_test(counts, 400, 0).p_value
