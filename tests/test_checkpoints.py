"""Checkpoint trajectories: the power-law fit, budget estimates and where a mask sits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import GPTNeoXForCausalLM

from bigram_subnetworks.analysis.checkpoints import (
    budget_replicates,
    fit_power_law,
    fit_rows,
    largest_group,
    location_shares,
)
from bigram_subnetworks.models.layout import embedding_parameters
from bigram_subnetworks.models.variants import transplant_embeddings
from tiny_models import tiny_lm


@given(
    scale=st.floats(0.05, 5.0),
    exponent=st.floats(0.05, 1.0),
    sizes=st.lists(st.integers(100, 10_000_000), min_size=2, max_size=8, unique=True),
)
def test_the_fit_recovers_an_exact_power_law(
    scale: float, exponent: float, sizes: list[int]
) -> None:
    active = np.array(sizes, dtype=np.float64)
    r = 1.0 - scale * active**-exponent
    fit = fit_power_law(active, r)
    assert fit is not None and fit.points == len(sizes)
    assert fit.scale == pytest.approx(scale, rel=1e-6)
    assert fit.exponent == pytest.approx(exponent, rel=1e-6, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    budget = float(np.sqrt(active.min() * active.max()))
    assert fit.r_at(budget) == pytest.approx(1.0 - scale * budget**-exponent, rel=1e-6)


def test_the_fit_matches_an_independent_least_squares_solve() -> None:
    active = np.array([2e3, 9e3, 4e4, 2.5e5])
    r = np.array([0.61, 0.77, 0.83, 0.86])
    design = np.column_stack([np.ones(4), np.log(active)])
    (intercept, slope), *_ = np.linalg.lstsq(design, np.log(1 - r), rcond=None)
    fit = fit_power_law(active, r)
    assert fit is not None
    assert fit.scale == pytest.approx(math.exp(intercept))
    assert fit.exponent == pytest.approx(-slope)
    assert 0 < fit.r2 < 1


def test_empty_masks_and_perfect_r_are_left_out_of_the_fit() -> None:
    assert fit_power_law(np.array([0.0, 500.0]), np.array([0.3, 0.8])) is None
    assert fit_power_law(np.array([100.0, 500.0]), np.array([0.3, 1.0])) is None
    fit = fit_power_law(np.array([0.0, 100.0, 500.0]), np.array([0.3, 0.5, 0.8]))
    assert fit is not None and fit.points == 2


def test_fit_rows_give_budget_estimates_and_flag_extrapolation() -> None:
    masks = [(1_000.0, 0.5), (10_000.0, 0.75)]
    rows, draws = fit_rows("m", 100, masks, [5_000, 100_000])
    assert draws == {}  # no replicates given
    estimates = {(r["metric"], r["budget"]): r["value"] for r in rows}
    # 1 − r halves per decade here: k = log10(2), so 1 − r(1e5) = 0.25 / 2 = 0.125.
    assert estimates[("fit_exponent", None)] == pytest.approx(math.log10(2))
    assert estimates[("r_at_budget", 100_000)] == pytest.approx(0.875)
    assert estimates[("r_at_budget_extrapolated", 100_000)] == 1.0
    assert estimates[("r_at_budget_extrapolated", 5_000)] == 0.0
    assert all(r["step"] == 100 and r["lambda"] is None for r in rows)
    assert [r["metric"] for r in fit_rows("m", 0, masks[:1], [5_000])[0]] == ["fit_points"]


def test_location_shares_split_the_kept_weights() -> None:
    blocks = [
        {"layer": 0, "kind": "Q", "kept": 10},
        {"layer": 0, "kind": "MLP-in", "kept": 30},
        {"layer": 0, "kind": "MLP-out", "kept": 20},
        {"layer": 1, "kind": "O", "kept": 15},
        {"layer": 1, "kind": "MLP-out", "kept": 25},
    ]
    shares = location_shares(blocks)
    assert shares == {
        "first_mlp_share": 0.5,
        "mlp_share": 0.75,
        "attention_share": 0.25,
        "first_mlp_plurality": 1.0,
    }
    assert largest_group(blocks) == "layer 0 MLP"
    empty = location_shares([{**b, "kept": 0} for b in blocks])
    assert all(math.isnan(v) for v in empty.values())
    assert largest_group([{**b, "kept": 0} for b in blocks]) is None


def test_the_first_mlp_plurality_is_checked_against_every_layer_group() -> None:
    """Layer 1's MLP (30) beats layer 0's (25), although layer 0's MLP holds more than layer 0's
    attention and than any single block elsewhere: no plurality."""
    blocks = [
        {"layer": 0, "kind": "MLP-in", "kept": 20},
        {"layer": 0, "kind": "MLP-out", "kept": 5},
        {"layer": 0, "kind": "V", "kept": 10},
        {"layer": 1, "kind": "MLP-in", "kept": 15},
        {"layer": 1, "kind": "MLP-out", "kept": 15},
    ]
    assert location_shares(blocks)["first_mlp_plurality"] == 0.0
    assert largest_group(blocks) == "layer 1 MLP"


def test_budget_intervals_refit_the_power_law_on_every_resample() -> None:
    rng = np.random.default_rng(0)
    active = np.array([2e3, 9e3, 4e4, 2.5e5])
    r = np.array([0.61, 0.77, 0.83, 0.86])
    replicates = r + rng.normal(0, 0.01, size=(200, 4))
    budgets = [5_000, 100_000]
    usable = np.ones(4, bool)
    fast = budget_replicates(active, replicates, budgets, usable)
    for b in range(0, 200, 37):
        fit = fit_power_law(active, replicates[b])
        assert fit is not None
        assert fast[b] == pytest.approx([fit.r_at(n) for n in budgets])
    rows, draws = fit_rows("m", 7, list(zip(active, r, strict=True)), budgets, replicates)
    for i, budget in enumerate(budgets):  # the replicates behind each interval, for pairing
        assert np.array_equal(draws[budget], fast[:, i])
    found = {(row["metric"], row["budget"]): row["value"] for row in rows}
    for budget in budgets:
        low, high = found[("r_at_budget_low", budget)], found[("r_at_budget_high", budget)]
        assert low < found[("r_at_budget", budget)] < high
        column = fast[:, budgets.index(budget)]
        assert (low, high) == pytest.approx(tuple(np.quantile(column, [0.025, 0.975])))
    assert not any(row["metric"].endswith("_low") for row in fit_rows("m", 7, [], budgets)[0])
    broken = replicates.copy()
    broken[0, 1] = 1.0  # r = 1 in one resample: that resample gives no estimate
    assert np.isnan(budget_replicates(active, broken, budgets, usable)[0]).all()


def tiny_neox(seed: int, tied: bool = False) -> GPTNeoXForCausalLM:
    return tiny_lm(ff=32, positions=16, seed=seed, tie_word_embeddings=tied)


@pytest.mark.parametrize("tied", [False, True])
def test_transplanting_embeddings_keeps_the_body(tied: bool) -> None:
    trained, initial = tiny_neox(1, tied), tiny_neox(2, tied)
    embeddings = embedding_parameters(initial)
    assert len(embeddings) == (1 if tied else 2)  # a tied unembedding is the token embedding
    embedding_ids = {id(p) for p in embeddings.values()}
    body_before = {
        n: p.clone() for n, p in initial.named_parameters() if id(p) not in embedding_ids
    }
    transplant_embeddings(initial, trained)
    for name, param in embedding_parameters(trained).items():
        assert torch.equal(embedding_parameters(initial)[name], param)
    assert torch.equal(
        initial.get_output_embeddings().weight, trained.get_output_embeddings().weight
    )
    assert body_before and all(
        torch.equal(param, body_before[name])
        for name, param in initial.named_parameters()
        if name in body_before
    )


def test_transplanting_between_tied_and_untied_models_is_refused() -> None:
    from bigram_subnetworks.errors import UserError

    with pytest.raises(UserError, match="ties its unembedding"):
        transplant_embeddings(tiny_neox(1, tied=True), tiny_neox(2, tied=False))


def test_the_stage_scores_the_full_model_at_every_saved_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 item 11: the full model (and the empty mask) is scored at every checkpoint the
    model saved, not only at the steps with masks (config steps [0, 60]; saved 0, 1, 3, 60), and
    every r's bootstrap replicates are written beside the table, the ones behind its intervals."""
    from bigram_subnetworks.analysis import checkpoints as stage
    from bigram_subnetworks.analysis.scoring import percentile_interval
    from bigram_subnetworks.config import load_config
    from bigram_subnetworks.data.bigrams import count_bigrams

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "smoke.yaml")
    cfg = cfg.model_copy(
        update={"analysis": cfg.analysis.model_copy(update={"bootstrap_resamples": 50})}
    )
    assert cfg.checkpoints is not None and cfg.checkpoints.steps == [0, 60]
    rng = np.random.default_rng(0)
    sequences = rng.integers(0, 40, (12, 10)).astype(np.uint32)
    loaded: list[str | None] = []

    def load_variant(model_dir: Path, variant: str | None) -> tuple[object, dict]:
        loaded.append(variant)
        step = 60 if variant is None else int(variant.removeprefix("step-"))
        return tiny_lm(vocab=40, seed=step), {}

    info = {
        "source": "embedded",
        "name": "neox-2x16",
        "final_step": 60,
        "checkpoints": [0, 1, 3, 60],
    }
    monkeypatch.setattr("bigram_subnetworks.models.loading.read_model_info", lambda _: info)
    monkeypatch.setattr("bigram_subnetworks.models.variants.load_variant", load_variant)
    monkeypatch.setattr("bigram_subnetworks.data.tokenize.read_sequences", lambda _: sequences)
    monkeypatch.setattr(
        "bigram_subnetworks.data.bigrams.read_bigram_counts",
        lambda _: count_bigrams(rng.integers(0, 40, (80, 10)).astype(np.uint32), 40),
    )
    table, replicates = tmp_path / "checkpoints.parquet", tmp_path / "replicates.parquet"
    stage.run_stage(
        cfg,
        models=[tmp_path / "neox-2x16"],
        masks=[],
        tokens_eval=tmp_path / "tokens.parquet",
        bigram_stats=tmp_path / "data",
        checkpoints=table,
        checkpoint_replicates=replicates,
    )
    assert loaded == ["step-0", "step-1", "step-3", None]
    rows = pq.read_table(table).to_pylist()
    full = {
        r["step"]: r["value"] for r in rows if r["lambda"] == "neginf" and r["metric"] == "bigram_r"
    }
    assert sorted(full) == [0, 1, 3, 60]
    draws = pq.read_table(replicates).to_pandas()
    for step in (1, 60):
        mine = draws[
            (draws["step"] == step)
            & (draws["lambda"] == "neginf")
            & (draws["metric"] == "bigram_r")
        ].sort_values("resample")
        assert list(mine["resample"]) == list(range(50))
        bounds = {
            r["metric"]: r["value"] for r in rows if r["step"] == step and r["lambda"] == "neginf"
        }
        assert percentile_interval(mine["value"].to_numpy()) == pytest.approx(
            (bounds["bigram_r_low"], bounds["bigram_r_high"])
        )
