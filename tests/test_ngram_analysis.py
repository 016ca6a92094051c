"""The ngrams analysis (issue #24): the exact uniform-null p against exact rational arithmetic and
the null's draws, nesting numbers against brute force on small masks, row-shuffle p-values against
brute shuffles, location shares, the stage end to end on a tiny model with masks of three orders,
and the report section (HTML, Markdown, figure)."""

from __future__ import annotations

import copy
import json
import math
from fractions import Fraction
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.analysis.ngrams import (
    OrderMask,
    exact_overlap_log_p,
    location_rows,
    model_rows,
    nesting_rows,
    run_stage,
    sparsity_rows,
)
from bigram_subnetworks.analysis.overlap import BlockOverlap, null_overlaps
from bigram_subnetworks.cli import main
from bigram_subnetworks.config import validate_config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import write_json
from bigram_subnetworks.masks.toolkit import keep_none, save_mask
from bigram_subnetworks.models.layout import Layout, layout_of
from bigram_subnetworks.models.loading import model_identity
from bigram_subnetworks.report.html import Document, FigureEntry, render_html, render_markdown
from bigram_subnetworks.report.ngrams import NgramResults, ngram_tables, p_text, read_ngrams
from bigram_subnetworks.stages import STAGES, arguments, job_fields, main_masks, stages_for
from test_overlap import random_mask, tiny_layout
from tiny_models import tiny_lm

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORDERS = (("unigram", 1), ("bigram", 2), ("trigram", 3))


# ----------------------------------------------------------------------- the exact p


def rational_tail(counts: BlockOverlap) -> Fraction:
    """P(Σ_b X_b ≥ observed), X_b hypergeometric, in exact rational arithmetic."""
    dist = {0: Fraction(1)}
    for n, a, b in zip(
        counts.size.tolist(), counts.kept_a.tolist(), counts.kept_b.tolist(), strict=True
    ):
        pmf = {
            x: Fraction(math.comb(a, x) * math.comb(n - a, b - x), math.comb(n, b))
            for x in range(max(0, a + b - n), min(a, b) + 1)
        }
        step: dict[int, Fraction] = {}
        for s, p in dist.items():
            for x, q in pmf.items():
                step[s + x] = step.get(s + x, Fraction(0)) + p * q
        dist = step
    return sum((p for s, p in dist.items() if s >= counts.observed), Fraction(0))


@st.composite
def block_counts(draw: st.DrawFn) -> BlockOverlap:
    """1-4 blocks of up to 30 entries, any kept counts and any possible intersection."""
    sizes, kept_a, kept_b, both = [], [], [], []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 30))
        a, b = draw(st.integers(0, n)), draw(st.integers(0, n))
        sizes.append(n)
        kept_a.append(a)
        kept_b.append(b)
        both.append(draw(st.integers(max(0, a + b - n), min(a, b))))
    return BlockOverlap(*(np.array(v) for v in (sizes, kept_a, kept_b, both)))


@settings(max_examples=150, deadline=None)
@given(block_counts())
def test_the_exact_p_is_the_rational_tail(counts: BlockOverlap) -> None:
    tail = rational_tail(counts)
    expected = math.log(tail.numerator) - math.log(tail.denominator)
    assert exact_overlap_log_p(counts) == pytest.approx(expected, abs=1e-9, rel=1e-9)


def test_the_exact_p_at_the_extremes() -> None:
    def counts(*columns: list[int]) -> BlockOverlap:
        return BlockOverlap(*(np.array(c) for c in columns))

    # the largest possible intersection: every block's smallest kept set inside the other
    nested = counts([40, 25], [10, 5], [20, 9], [10, 5])
    tail = rational_tail(nested)
    assert math.exp(exact_overlap_log_p(nested)) == pytest.approx(float(tail), rel=1e-9)
    assert exact_overlap_log_p(counts([40, 25], [10, 5], [20, 9], [0, 0])) == 0.0  # smallest
    assert exact_overlap_log_p(counts([10], [0], [7], [0])) == 0.0  # an empty mask
    # far below the smallest double: a nested pair of real-sized blocks
    big = counts([10**6] * 24, [20_000] * 24, [30_000] * 24, [20_000] * 24)
    log_p = exact_overlap_log_p(big)
    assert math.isfinite(log_p) and log_p / math.log(10) < -1e4


def test_the_exact_p_agrees_with_the_null_draws() -> None:
    """Where the p is large enough to be estimated, the null's seeded draws find it."""
    size = np.array([64, 96, 256, 256])
    kept_a, kept_b = np.array([20, 30, 60, 90]), np.array([16, 40, 80, 50])
    expected = (kept_a * kept_b / size).sum()
    for shift in (0, 4, 9):
        both = np.round(kept_a * kept_b / size).astype(int)
        both[0] += shift
        counts = BlockOverlap(size, kept_a, kept_b, both)
        draws = null_overlaps(counts, 40_000, seed=3)
        exact = math.exp(exact_overlap_log_p(counts))
        found = float(np.mean(draws >= counts.observed))
        assert abs(found - exact) <= 4 * math.sqrt(exact * (1 - exact) / 40_000) + 1e-4, (
            shift,
            expected,
        )


# ---------------------------------------------------------------------- the analyses


def order_masks(layout: Layout, seed: int, densities: tuple[float, ...]) -> list[OrderMask]:
    """Three masks with block-varying densities; the trigram mask holds half of the bigram's."""
    rng = np.random.default_rng(seed)
    n_blocks = len(layout.blocks())
    made = [
        random_mask(layout, rng.uniform(0, d, n_blocks), seed + i) for i, d in enumerate(densities)
    ]
    half = random_mask(layout, np.full(n_blocks, 0.5), seed + 7)
    made[2] = {k: made[2][k] | (made[1][k] & half[k]) for k in made[2]}
    return [
        OrderMask(target, order, str(i), 0.5 + 0.1 * i, mask)
        for i, ((target, order), mask) in enumerate(zip(ORDERS, made, strict=True))
    ]


def block_matrices(mask: dict[str, torch.Tensor], layout: Layout) -> list[np.ndarray]:
    """Every block's entries as a (rows = outputs, cols) boolean matrix (GPT-NeoX stores them
    (out, in))."""
    return [block.select(mask[block.param]).numpy().astype(bool) for block in layout.blocks()]


def by_metric(rows: list[dict[str, Any]], **where: Any) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in rows if all(r[k] == v for k, v in where.items())}


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000), st.sampled_from([(0.05, 0.3, 0.5), (0.6, 0.1, 0.3), (0.0, 0.2, 0.2)])
)
def test_nesting_numbers_match_brute_force(seed: int, densities: tuple[float, ...]) -> None:
    layout = tiny_layout(n_layers=2, d=4, heads=2)
    masks = order_masks(layout, seed, densities)
    rows = nesting_rows("m", masks, layout, draws=50, seed=seed)
    for a in masks:
        for b in masks:
            if a is b:
                continue
            values = by_metric(rows, target=a.target, other_target=b.target)
            both = sum(int((a.mask[k] & b.mask[k]).sum()) for k in a.mask)
            kept_a = sum(int(t.sum()) for t in a.mask.values())
            kept_b = sum(int(t.sum()) for t in b.mask.values())
            blocks = list(
                zip(block_matrices(a.mask, layout), block_matrices(b.mask, layout), strict=True)
            )
            uniform = sum(x.sum() * y.sum() / x.size for x, y in blocks)
            # row shuffle: Σ_i |A_i ∧ B_τ(i)| averaged over τ is colsum(A)·colsum(B) / rows
            row = sum(float(x.sum(0) @ y.sum(0)) / x.shape[0] for x, y in blocks)
            assert (values["both"], values["kept"], values["other_kept"]) == (both, kept_a, kept_b)
            if kept_a:
                assert values["share"] == pytest.approx(both / kept_a)
                assert values["expected_share"] == pytest.approx(uniform / kept_a)
                assert values["row_expected_share"] == pytest.approx(row / kept_a)
            else:
                assert math.isnan(values["share"]) and math.isnan(values["expected_share"])
            ratio = both / uniform if uniform else math.nan
            assert values["ratio"] == pytest.approx(ratio, nan_ok=True)
            assert values["row_ratio"] == pytest.approx(
                both / row if row else math.nan, nan_ok=True
            )
            assert values["log10_p_exact"] <= 0 and 0 < values["row_p_value"] <= 1
            backward = by_metric(rows, target=b.target, other_target=a.target)
            for shared in ("both", "ratio", "row_ratio", "p_exact", "row_p_value"):
                assert backward[shared] == pytest.approx(values[shared], nan_ok=True)
    assert {r["order"] for r in rows} == {1, 2, 3} and len({r["metric"] for r in rows}) == 12


def brute_row_shuffles(a: OrderMask, b: OrderMask, layout: Layout, draws: int) -> np.ndarray:
    """|A ∧ B| after permuting the rows of each of B's blocks, `draws` times (the authors'
    np.random.shuffle of each (out, in) matrix)."""
    rng = np.random.default_rng(12345)
    total = np.zeros(draws, dtype=np.int64)
    for x, y in zip(block_matrices(a.mask, layout), block_matrices(b.mask, layout), strict=True):
        for i in range(draws):
            total[i] += np.count_nonzero(x & y[rng.permutation(y.shape[0])])
    return total


def test_row_shuffle_p_values_match_brute_shuffles() -> None:
    """A weakly nested pair, so that its p is well inside (0, 1): the stage's seeded row-null p
    and mean agree with brute shuffles of the mask rows, and the exact uniform p with the
    uniform null's draws."""
    layout = tiny_layout(n_layers=1, d=8, heads=2)
    n_blocks = len(layout.blocks())
    a = random_mask(layout, np.full(n_blocks, 0.3), seed=1)
    b = random_mask(layout, np.full(n_blocks, 0.3), seed=2)
    tilt = random_mask(layout, np.full(n_blocks, 0.04), seed=3)
    b = {k: b[k] | (a[k] & tilt[k]) for k in b}
    pair = [OrderMask("bigram", 2, "1", 0.9, a), OrderMask("trigram", 3, "1", 0.8, b)]
    draws = 4000
    values = by_metric(nesting_rows("m", pair, layout, draws, seed=0), target="bigram")
    brute = brute_row_shuffles(pair[0], pair[1], layout, draws)
    both = int(values["both"])
    p_brute = (1 + int(np.count_nonzero(brute >= both))) / (1 + draws)
    assert 0.005 < p_brute < 0.5  # the test can tell p-values apart
    tolerance = 4 * math.sqrt(p_brute * (1 - p_brute) / draws) * math.sqrt(2)
    assert abs(values["row_p_value"] - p_brute) <= tolerance
    kept = values["kept"]
    assert values["row_expected_share"] * kept == pytest.approx(brute.mean(), rel=0.01)
    # the exact uniform p and the draws of the uniform null of analysis.overlap
    from bigram_subnetworks.analysis.overlap import block_overlap

    uniform = null_overlaps(block_overlap(a, b, layout), draws, seed=9)
    found = (1 + int(np.count_nonzero(uniform >= both))) / (1 + draws)
    exact = values["p_exact"]
    assert abs(found - exact) <= 4 * math.sqrt(exact * (1 - exact) / draws) + 2 / draws


def test_location_shares_sum_to_one_per_order() -> None:
    layout = tiny_layout(n_layers=3, d=8, heads=2)
    masks = order_masks(layout, 5, (0.1, 0.3, 0.2))
    masks.append(OrderMask("empty", 4, "inf", math.nan, keep_none(layout)))
    rows = location_rows("m", masks, layout)
    for subject in masks:
        cells = [r for r in rows if r["target"] == subject.target]
        share = sum(r["value"] for r in cells if r["metric"] == "share")
        kept = sum(r["value"] for r in cells if r["metric"] == "kept")
        size = sum(r["value"] for r in cells if r["metric"] == "size")
        assert kept == sum(int(t.sum()) for t in subject.mask.values())
        assert size == layout.n_masked
        assert len(cells) == 4 * 3 * 6  # kept, size, share, fraction per layer × kind
        if kept:
            assert share == pytest.approx(1.0)
        else:
            assert all(math.isnan(r["value"]) for r in cells if r["metric"] == "share")
        for layer in range(3):
            for kind in ("Q", "K", "V", "O", "MLP-in", "MLP-out"):
                cell = by_metric(cells, layer=layer, kind=kind)
                assert cell["fraction"] == pytest.approx(cell["kept"] / cell["size"])


def test_sparsity_ratios_are_to_the_bigram_mask() -> None:
    layout = tiny_layout()
    masks = order_masks(layout, 2, (0.1, 0.2, 0.4))
    rows = sparsity_rows("m", masks, layout.n_masked)
    kept = {m.target: sum(int(t.sum()) for t in m.mask.values()) for m in masks}
    for subject in masks:
        values = by_metric(rows, target=subject.target)
        assert values["kept"] == kept[subject.target]
        assert values["kept_fraction"] == pytest.approx(kept[subject.target] / layout.n_masked)
        assert values["kept_ratio_to_bigram"] == pytest.approx(
            kept[subject.target] / kept["bigram"]
        )
        assert values["r"] == subject.r
    no_bigram = sparsity_rows("m", [masks[0], masks[2]], layout.n_masked)
    assert all(math.isnan(r["value"]) for r in no_bigram if r["metric"] == "kept_ratio_to_bigram")


def test_p_text_shows_powers_of_ten_below_doubles() -> None:
    assert p_text(0.0123, -1.91) == "0.012"
    assert p_text(0.0, -28010.1) == "< 10^-28010"
    assert p_text(None, None) == "–"


# ------------------------------------------------------------------ the stage, the report

RAW_CONFIG: dict[str, Any] = {
    "run": "ngrams",
    "corpus": {"name": "toy", "source": "sotu"},
    "tokenizer": {"name": "toy-bpe", "source": "train", "vocab_size": 512},
    "models": {"tiny": {"source": "embedded", "layers": 2, "d_model": 16, "heads": 2}},
    "lambdas": {
        "unigram": ["0", "1e1"],
        "bigram": ["neginf", "0", "1e1", "inf"],
        "trigram": ["0", "1e1"],
        "full": ["1e1"],
    },
    "analysis": {"overlap_draws": 300},
}


def write_masks(root: Path, cfg: Any) -> tuple[Layout, dict[tuple[str, str], dict]]:
    """A tiny model folder and a mask of every (target, λ) of the config, nested per order."""
    model_dir = root / A.MODEL.render(run=cfg.run, model="tiny")
    tiny_lm(d=16, heads=2, ff=64).save_pretrained(model_dir / "final")
    info = {"source": "embedded", "name": "tiny"}
    write_json(info, model_dir / "model.json")
    layout = layout_of(tiny_lm(d=16, heads=2, ff=64))
    identity = model_identity(model_dir, info)
    made = {}
    for i, job in enumerate(main_masks(cfg)):
        density = {"0": 0.4, "1e1": 0.1, "neginf": 1.0, "inf": 0.0}[job["lam"]]
        mask = random_mask(layout, np.full(len(layout.blocks()), density), seed=i)
        made[job["target"], job["lam"]] = mask
        path = root / A.MASK.render(run=cfg.run, **job)
        save_mask(path, mask, identity | {"target": job["target"], "lambda": job["lam"]})
    return layout, made


def write_selection(root: Path, cfg: Any, masks: dict[tuple[str, str], dict], label: str) -> None:
    orders = {
        target: {
            "lambda": label,
            "kept": sum(int(t.sum()) for t in masks[target, label].values()),
            "kept_fraction": 0.1,
            "r": 0.5 + n / 10,
        }
        for target, n in ORDERS
    }
    entry = {"bigram": orders["bigram"], "optimal": None, "orders": orders}
    write_json({"models": {"tiny": entry}}, root / A.SELECTION.render(run=cfg.run))


def stage_argv(cfg: Any, name: str) -> list[str]:
    stage = STAGES[name]
    return [stage.command, "--config", "config.yaml", *arguments(stage, cfg, job_fields(cfg, {}))]


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`bsn ngrams` of a tiny model with masks of three orders, as the front-ends call it."""
    root = tmp_path_factory.mktemp("ngrams")
    cfg = validate_config(copy.deepcopy(RAW_CONFIG))
    (root / "config.yaml").write_text(yaml.safe_dump(RAW_CONFIG), encoding="utf-8")
    layout, masks = write_masks(root, cfg)
    write_selection(root, cfg, masks, "1e1")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(stage_argv(cfg, "ngrams")) == 0
    output = root / A.NGRAMS.render(run=cfg.run)
    return {"root": root, "cfg": cfg, "layout": layout, "masks": masks, "output": output}


def test_the_stage_compares_the_selected_masks_of_three_orders(stage_run: dict) -> None:
    cfg, layout, masks = stage_run["cfg"], stage_run["layout"], stage_run["masks"]
    table = pq.read_table(stage_run["output"])
    assert table.schema.equals(A.NGRAMS.schema, check_metadata=False)
    rows = table.to_pylist()
    chosen = [OrderMask(t, n, "1e1", 0.5 + n / 10, masks[t, "1e1"]) for t, n in ORDERS]
    direct = model_rows("tiny", chosen, layout, cfg.analysis.overlap_draws, cfg.seed)
    assert len(rows) == len(direct)
    for found, wanted in zip(rows, direct, strict=True):
        assert {k: v for k, v in found.items() if k != "value"} == {
            k: v for k, v in wanted.items() if k != "value"
        }
        assert found["value"] == pytest.approx(wanted["value"], nan_ok=True)
    assert {r["analysis"] for r in rows} == {"sparsity", "nesting", "location"}
    pairs = {(r["target"], r["other_target"]) for r in rows if r["analysis"] == "nesting"}
    assert len(pairs) == 6  # every ordered pair of three orders
    # the same seed gives the same file
    first = stage_run["output"].read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(stage_run["root"])
        assert main(stage_argv(cfg, "ngrams")) == 0
    assert stage_run["output"].read_bytes() == first


def test_the_stage_refuses_a_stale_or_incomplete_selection(stage_run: dict, tmp_path: Path) -> None:
    cfg, root = stage_run["cfg"], stage_run["root"]
    fields = job_fields(cfg, {})
    paths = {n: port.paths(cfg, fields) for n, port in STAGES["ngrams"].ports(cfg).items()}
    selection = root / paths["selection"][0]

    def run() -> None:
        run_stage(
            cfg,
            models=[root / p for p in paths["models"]],
            masks=[root / p for p in paths["masks"]],
            selection=selection,
            ngrams=tmp_path / "out.parquet",
        )

    stale = json.loads(selection.read_text())
    stale["models"]["tiny"]["orders"]["trigram"]["kept"] += 1
    write_json(stale, selection)
    with pytest.raises(UserError, match="rerun the evaluate and select stages"):
        run()
    del stale["models"]["tiny"]["orders"]
    write_json(stale, selection)
    with pytest.raises(UserError, match="no selected unigram mask"):
        run()
    write_selection(root, cfg, stage_run["masks"], "1e1")
    assert not (tmp_path / "out.parquet").exists()


def test_the_stage_and_figure_exist_only_with_two_orders() -> None:
    cfg = validate_config(copy.deepcopy(RAW_CONFIG))
    assert "ngrams" in [s.name for s in stages_for(cfg, "snakemake")]
    assert "ngrams" in A.figure_names(False, True)
    report = STAGES["report"].ports(cfg)
    assert "ngrams" in report
    bigram_only = copy.deepcopy(RAW_CONFIG)
    del bigram_only["lambdas"]["unigram"], bigram_only["lambdas"]["trigram"]
    plain = validate_config(bigram_only)
    assert "ngrams" not in [s.name for s in stages_for(plain, "snakemake")]
    assert "ngrams" not in STAGES["report"].ports(plain)
    assert "ngrams" not in [
        p.rsplit("/", 1)[-1].removesuffix(".png")
        for p in STAGES["report"].ports(plain)["figures"].paths(plain, job_fields(plain, {}))
    ]


def test_the_report_section_and_figure(stage_run: dict) -> None:
    from bigram_subnetworks.report.figures import figure_style, ngram_figure, png_bytes

    results = read_ngrams(stage_run["output"])
    assert isinstance(results, NgramResults)
    assert read_ngrams(None) is None and ngram_tables(None) == []
    tables = ngram_tables(results)
    assert [t.frame.height for t in tables] == [3, 6, 3 * 2]  # orders, ordered pairs, order × layer
    sparsity = tables[0].frame
    kept = {t: sum(int(m.sum()) for m in stage_run["masks"][t, "1e1"].values()) for t, _ in ORDERS}
    assert sparsity["kept weights"].to_list() == [f"{kept[t]:,}" for t, _ in ORDERS]
    assert sparsity["× the bigram mask's"].to_list() == [
        f"{kept[t] / kept['bigram']:.2f}" for t, _ in ORDERS
    ]
    with figure_style():
        png = png_bytes(ngram_figure(results, lambda model: (0.2, 0.4, 0.6)))
    assert png.startswith(PNG_SIGNATURE)
    document = Document(
        title="t",
        subtitle="s",
        glance=[],
        tables=tables,
        figures=[FigureEntry("ngrams", A.REPORT_FIGURES["ngrams"], png)],
    )
    html, markdown = render_html(document), render_markdown(document)
    for table in tables:
        assert escape(table.title) in html and f"## {table.title}" in markdown
    assert "trigram (n = 3)" in html and "| tiny | trigram (n = 3) |" in markdown
    assert "[ngrams](figures/ngrams.png)" in markdown


def test_the_snakemake_caption_is_the_figure_caption() -> None:
    caption = (Path(__file__).resolve().parents[1] / "workflow/report/ngrams.rst").read_text()
    assert " ".join(caption.split()) == A.REPORT_FIGURES["ngrams"]
