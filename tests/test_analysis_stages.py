"""Ablation conditions, generations and the overlap stage's pair table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer
from transformers import GPTNeoXForCausalLM

from bigram_subnetworks.analysis.ablate import (
    ablation_masks,
    generation_rows,
    surprisal_rows,
)
from bigram_subnetworks.analysis.controls import control_table, linear_map_values
from bigram_subnetworks.analysis.overlap import pair_rows
from bigram_subnetworks.analysis.scoring import evaluate_model
from bigram_subnetworks.artifacts import CONTROLS, OVERLAP, RANDOM_BODY
from bigram_subnetworks.data.bigrams import count_bigrams
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.toolkit import block_counts, kept
from bigram_subnetworks.masks.train import MaskedLM
from bigram_subnetworks.models.layout import layout_of
from bigram_subnetworks.report.summary import ABLATION_CONDITIONS
from tiny_models import tiny_lm

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(small_bpe: Tokenizer) -> GPTNeoXForCausalLM:
    return tiny_lm(vocab=small_bpe.get_vocab_size(), ff=32, initializer_range=0.3)


def random_mask(layout: Any, density: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=generator) < density for n, s in layout.shapes.items()}


def test_ablation_conditions_keep_the_right_weights(model: GPTNeoXForCausalLM) -> None:
    layout = layout_of(model)
    bigram, optimal = random_mask(layout, 0.1, 0), random_mask(layout, 0.2, 1)
    conditions = ablation_masks(layout, bigram, optimal, seed=0)
    # The stage writes exactly the conditions the report reads, in its display order.
    assert tuple(conditions) == ABLATION_CONDITIONS
    assert ABLATION_CONDITIONS[0] == "full model" and ABLATION_CONDITIONS[-1] == "optimal removed"
    total = layout.n_masked
    assert kept(conditions["full model"]) == total
    assert kept(conditions["bigram removed"]) == total - kept(bigram)
    assert kept(conditions["optimal removed"]) == total - kept(optimal)
    random_counts = [r["kept"] for r in block_counts(conditions["random alone"], layout)]
    assert random_counts == [r["kept"] for r in block_counts(bigram, layout)]
    assert not all(torch.equal(conditions["random alone"][n], bigram[n]) for n in bigram)
    assert "optimal removed" not in ablation_masks(layout, bigram, None, seed=0)


def test_full_model_ablation_row_matches_the_evaluation(model: GPTNeoXForCausalLM) -> None:
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    train = rng.integers(0, vocab, (50, 12)).astype(np.uint32)
    held_out = rng.integers(0, vocab, (8, 12)).astype(np.uint32)
    counts = count_bigrams(train, vocab)
    lm = MaskedLM(model, vocab)
    layout = lm.layout
    conditions = ablation_masks(layout, random_mask(layout, 0.3, 2), None, seed=0)
    rows = {
        r["condition"]: r for r in surprisal_rows("m", lm, conditions, counts, held_out, 4, CPU)
    }
    metrics, _ = evaluate_model("m", model, [], counts, held_out, 4, CPU)
    full_loss = next(
        r["value"] for r in metrics if r["lambda"] == "neginf" and r["metric"] == "lm_loss"
    )
    assert rows["full model"]["lm_loss"] == pytest.approx(full_loss, rel=1e-6)
    assert rows["full model"]["perplexity"] == pytest.approx(np.exp(full_loss), rel=1e-6)
    assert rows["full model"]["tokens"] == 8 * 11
    assert rows["bigram removed"]["sd_surprisal_bits"] > 0


def test_generations_are_deterministic_per_condition(
    model: GPTNeoXForCausalLM, small_bpe: Tokenizer
) -> None:
    layout = layout_of(model)
    conditions = ablation_masks(layout, random_mask(layout, 0.5, 3), None, seed=0)
    args = ("m", model, conditions, small_bpe, ["The Congress"], 6, 0.3, 0)
    first, second = generation_rows(*args), generation_rows(*args)
    assert first == second
    assert len(first) == len(conditions) * 2
    assert {r["decoding"] for r in first} == {"greedy", "sample τ=0.3"}
    weights = dict(model.named_parameters())
    name = layout.masked[0]
    before = weights[name].detach().clone()
    generation_rows(*args)
    assert torch.equal(weights[name], before)  # the masks are undone


def test_overlap_pairs_flag_the_selected_pair(model: GPTNeoXForCausalLM) -> None:
    layout = layout_of(model)
    bigram = {"0": random_mask(layout, 0.5, 0), "1e1": random_mask(layout, 0.05, 1)}
    optimal = {"1": random_mask(layout, 0.4, 2), "1e1": random_mask(layout, 0.1, 3)}
    rows, null = pair_rows("m", bigram, optimal, layout, ("1e1", "1e1"), 500, 0)
    assert len(rows) == 4
    assert [r["selected"] for r in rows] == [False, False, False, True]
    assert null is not None and null["uniform"].shape == null["row"].shape == (500,)
    selected = rows[-1]
    assert selected["null_mean"] == pytest.approx(float(null["uniform"].mean()))
    assert selected["row_null_mean"] == pytest.approx(float(null["row"].mean()))
    assert 0 < selected["p_value"] <= 1 and 1 / 501 <= selected["row_p_value"] <= 1
    # every pair has both nulls' exact means; row draws only for the selected pair
    assert all(np.isfinite(r["row_expected"]) and np.isfinite(r["row_ratio"]) for r in rows)
    assert all(np.isnan(r["row_p_value"]) for r in rows[:-1])
    assert pa.Table.from_pylist(rows, schema=OVERLAP.schema).num_rows == 4
    _, no_null = pair_rows("m", bigram, optimal, layout, None, 10, 0)
    assert no_null is None


def test_the_linear_map_control_is_the_bigram_subnetwork_condition() -> None:
    """Table 2's "embeddings + learned linear map" uses L_out fitted on the bigram subnetwork
    (§A.4, footnote 11), not on the full model: the residual rows differ per condition and the
    control must report the bigram one, with its interval and unseen fraction."""

    def rows(condition: str, r: float) -> list[dict[str, Any]]:
        values = {
            "layer0_linear_map_bigram_r": r,
            "layer0_linear_map_bigram_r_low": r - 0.01,
            "layer0_linear_map_bigram_r_high": r + 0.01,
            "layer0_linear_map_unseen_fraction": 0.02,
            "rotation_to_input": 40.0,
        }
        return [
            {"model": "m", "condition": condition, "metric": metric, "value": value}
            for metric, value in values.items()
        ]

    residual = rows("full model", 0.85) + rows("bigram", 0.62) + rows("random", 0.30)
    values = linear_map_values(residual, "m")
    assert values["bigram_r"] == 0.62
    assert (values["bigram_r_low"], values["bigram_r_high"]) == (0.61, 0.63)
    assert values["unseen_fraction"] == 0.02 and "rotation_to_input" not in values

    def metric_rows(model_target_label: tuple[str, str], r: float) -> list[dict[str, Any]]:
        target, label = model_target_label
        return [
            {"model": "m", "target": target, "lambda": label, "metric": metric, "value": value}
            for metric, value in (("bigram_r", r), ("bigram_r_low", r - 0.01), ("kept", 5.0))
        ]

    evaluated = (
        metric_rows(("reference", "neginf"), 0.7)
        + metric_rows(("reference", "inf"), 0.3)
        + metric_rows(("bigram", "0"), 0.9)
        + metric_rows(("bigram", "1e1"), 0.88)
    )
    table = control_table(
        "m",
        "1e1",
        evaluated,
        metric_rows(("bigram", "0"), 0.75),
        metric_rows((RANDOM_BODY, "0"), 0.86),
        residual,
    )
    found = {(r["control"], r["metric"]): r["value"] for r in table}
    assert found[("embeddings + layer-0 linear map", "bigram_r")] == 0.62
    assert found[("full model", "bigram_r")] == 0.7
    assert found[("random body, trained embeddings", "bigram_r")] == 0.86
    assert found[("bigram subnetwork", "bigram_r_low")] == pytest.approx(0.89)
    assert pa.Table.from_pylist(table, schema=CONTROLS.schema).num_rows == len(table)
    with pytest.raises(UserError, match="bigram subnetwork"):
        linear_map_values(rows("full model", 0.85), "m")
