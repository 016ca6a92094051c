"""Issue 20: Pythia-style initialisation of the embedded models, the trained-embeddings variant
(token embeddings and unembedding only), Table 2 controls on every embedded model, and the
size-matched comparison of bigram and optimal removal."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from transformers import GPTNeoXForCausalLM

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.analysis.ablate import (
    ablation_masks,
    size_matched_increase,
    surprisal_rows,
    sweep_condition,
    sweep_masks,
)
from bigram_subnetworks.analysis.scoring import (
    bigram_surprisal,
    score_mask,
    score_masks,
    well_estimated,
)
from bigram_subnetworks.artifacts import RANDOM_BODY
from bigram_subnetworks.config import EmbeddedModel, load_config, validate_config
from bigram_subnetworks.data.bigrams import count_bigrams
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.losses import BigramTarget
from bigram_subnetworks.masks.toolkit import keep_all, kept
from bigram_subnetworks.masks.train import MaskedLM
from bigram_subnetworks.models.loading import load_pretrained_dir
from bigram_subnetworks.models.pretrain import (
    build_model,
    prepare_model,
    small_init_std,
    wang_init_std,
)
from bigram_subnetworks.models.variants import transplant_embeddings
from bigram_subnetworks.report.claims import CLAIMS, NOT_RESOLVED, Evidence
from bigram_subnetworks.report.summary import Estimate, ModelSummary, _optimal_removal_sweep
from bigram_subnetworks.stages import (
    STAGES,
    all_masks,
    checkpoint_masks,
    control_masks,
    control_models,
    job_fields,
)
from test_models import config_dict, data_dirs  # noqa: F401  (a module-scoped fixture)
from tiny_models import tiny_lm

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# ------------------------------------------------------------------ Pythia's initialisation

# The default's largest embedded model (params.yaml: neox-4x96) at the default's vocabulary.
DEFAULT_SIZES = {"source": "embedded", "layers": 4, "d_model": 96, "heads": 6}


def test_the_init_formulas_are_gpt_neoxs() -> None:
    # Pythia 160M (12 layers, d 768): small_init √(2/3840) = 0.0228, wang_init 2/(12·√768).
    assert small_init_std(768) == pytest.approx(0.022822, abs=1e-6)
    assert wang_init_std(768, 12) == pytest.approx(0.0060141, abs=1e-6)


def test_embedded_models_start_with_pythias_stds_at_the_defaults_sizes() -> None:
    spec = EmbeddedModel.model_validate(DEFAULT_SIZES)
    model = build_model(spec, vocab_size=4096, seq_len=64, eos_id=0, seed=0)
    small, wang = small_init_std(96), wang_init_std(96, 4)  # 0.0645, 0.0510
    output_projections = 0
    for name, param in model.named_parameters():
        values = param.detach()
        if "layernorm" in name or "layer_norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(values == expected), name
        elif param.ndim == 1:
            assert torch.all(values == 0), name  # biases start at zero
        else:
            is_output = name.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight"))
            output_projections += is_output
            std = wang if is_output else small
            tolerance = 4 * std / math.sqrt(param.numel())
            assert float(values.mean()) == pytest.approx(0.0, abs=tolerance), name
            assert float(values.std()) == pytest.approx(std, rel=0.03), name
    assert output_projections == 2 * 4  # attention dense and MLP out of every layer


def test_the_pretrain_stage_saves_that_initialisation_as_step_0(
    tmp_path: Path,
    data_dirs: tuple[Path, Path],  # noqa: F811
) -> None:
    output = tmp_path / "models" / "tiny"
    cfg = validate_config(config_dict())
    prepare_model("tiny", cfg, *data_dirs, output)
    saved = load_pretrained_dir(output / "step-0").state_dict()
    spec = cfg.models["tiny"]
    vocab = saved["gpt_neox.embed_in.weight"].shape[0]
    built = build_model(spec, vocab, seq_len=32, eos_id=0, seed=cfg.seed).state_dict()
    assert saved.keys() == built.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, built[name]), name
    dense = saved["gpt_neox.layers.0.attention.dense.weight"]
    assert float(dense.std()) == pytest.approx(wang_init_std(16, 2), rel=0.15)


# ----------------------------------------------------------- the trained-embeddings variant


def test_gpt2s_random_body_keeps_its_step_0_position_embeddings() -> None:
    """The paper patches in only the token embeddings and unembeddings (§A.4): GPT-2's position
    embeddings belong to the random body."""
    trained = tiny_lm("gpt2", d=16, layers=2, heads=2, positions=16, seed=1)
    initial = tiny_lm("gpt2", d=16, layers=2, heads=2, positions=16, seed=2)
    positions_before = initial.transformer.wpe.weight.detach().clone()
    assert not torch.equal(positions_before, trained.transformer.wpe.weight)
    transplant_embeddings(initial, trained)
    assert torch.equal(initial.transformer.wpe.weight, positions_before)
    assert torch.equal(initial.transformer.wte.weight, trained.transformer.wte.weight)
    assert torch.equal(initial.lm_head.weight, trained.lm_head.weight)  # tied to wte


# ------------------------------------------------------- Table 2 on every embedded model


def test_every_embedded_model_gets_the_table_2_controls() -> None:
    cfg = load_config(ROOT / "params.yaml")
    embedded = [name for name, spec in cfg.models.items() if spec.source == "embedded"]
    assert len(embedded) == 3
    assert [job["model"] for job in control_models(cfg)] == embedded
    keys = {job["model"] for job in control_masks(cfg)}
    assert keys == {f"{name}+{variant}" for name in embedded for variant in ("step-0", RANDOM_BODY)}
    assert {job["lam"] for job in control_masks(cfg)} == {"0"}
    # the checkpoint model's random-initialisation mask is its trajectory's, trained once
    (followed,) = cfg.checkpoints.models
    step0 = {"model": f"{followed}+step-0", "target": "bigram", "lam": "0"}
    assert step0 in checkpoint_masks(cfg) and step0 in control_masks(cfg)
    assert sum(job == step0 for job in all_masks(cfg)) == 1
    # the controls stage reads every control model and every control mask, nothing else
    controls = STAGES["controls"]
    fields = job_fields(cfg, {})
    assert controls.inputs["models"].paths(cfg, fields) == [
        A.MODEL.render(**(fields | {"model": name})) for name in embedded
    ]
    assert "checkpoints" not in controls.inputs


def test_hub_models_get_the_controls_where_their_step_0_is_analysed() -> None:
    cfg = load_config(ROOT / "config" / "pythia.yaml")
    assert cfg.checkpoints is not None and len(cfg.models) > len(cfg.checkpoints.models)
    assert [job["model"] for job in control_models(cfg)] == list(cfg.checkpoints.models)


# ------------------------------------------------- bigram removal against optimal removal


def test_size_matched_harm_interpolates_linearly_in_the_kept_count() -> None:
    sweep = [(3000.0, 2.0), (1000.0, 0.5), (6000.0, 3.5)]  # (kept, increase), any order
    assert size_matched_increase(sweep, 2000.0) == pytest.approx(1.25)
    assert size_matched_increase(sweep, 4500.0) == pytest.approx(2.75)
    assert size_matched_increase(sweep, 1000.0) == pytest.approx(0.5)  # a sweep point itself
    assert size_matched_increase(sweep, 6000.0) == pytest.approx(3.5)
    # outside the sweep's range: not resolved, never extrapolated
    assert size_matched_increase(sweep, 999.0) is None
    assert size_matched_increase(sweep, 6001.0) is None
    assert size_matched_increase([], 10.0) is None
    assert size_matched_increase([(5.0, 1.0), (5.0, 3.0)], 5.0) == pytest.approx(2.0)
    assert size_matched_increase([(1.0, math.nan), (4.0, 1.0)], 2.0) is None


@given(
    points=st.dictionaries(
        st.integers(1, 10_000), st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8
    ),
    at=st.floats(0, 11_000, allow_nan=False),
)
def test_size_matched_harm_agrees_with_numpys_interpolation(
    points: dict[int, float], at: float
) -> None:
    found = size_matched_increase([(float(k), v) for k, v in points.items()], at)
    counts = sorted(points)
    if not counts[0] <= at <= counts[-1]:
        assert found is None
    else:
        expected = np.interp(at, counts, [points[c] for c in counts])
        assert found == pytest.approx(expected, abs=1e-9)


def _ablated(bigram: float, paired: float, sweep: list[tuple[float, float]]) -> ModelSummary:
    full = 5.0
    return ModelSummary(
        model="m",
        selected_kept=2000,
        ablation_mean={
            "full model": full,
            "bigram removed": full + bigram,
            "optimal removed": full + paired,
        },
        optimal_removal_sweep=sweep,
    )


def test_bigram_vs_optimal_decides_on_the_size_matched_optimal_removal() -> None:
    rule = CLAIMS["bigram_vs_optimal"]
    evidence = Evidence([], [], {})
    # The paired optimal mask keeps 4,000 weights (twice the bigram mask's 2,000): paired, the
    # bigram removal costs 0.5x as much and the old rule said "does not hold"; at the bigram
    # mask's size (between the sweep's 1,000 and 4,000) optimal removal costs 1.07 bits: 0.94x.
    sweep = [(1000.0, 0.6), (4000.0, 2.0), (8000.0, 3.0)]
    passed, text = rule.check(_ablated(1.0, 2.0, sweep), evidence)
    assert passed is True
    assert "size-matched +1.07 bits, 0.94×" in text and "paired mask +2.00 bits, 0.50×" in text
    # far less harmful than optimal removal at the same size: does not hold
    assert rule.check(_ablated(0.5, 2.0, sweep), evidence)[0] is False
    # the bigram mask is smaller than every optimal mask: not resolved
    outside = [(4000.0, 2.0), (8000.0, 3.0)]
    passed, text = rule.check(_ablated(1.0, 2.0, outside), evidence)
    assert passed == NOT_RESOLVED and "outside the optimal sweep" in text


def test_the_ablate_stage_removes_every_optimal_mask_of_the_sweep(
    model: GPTNeoXForCausalLM,
) -> None:
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    counts = count_bigrams(rng.integers(0, vocab, (40, 12)).astype(np.uint32), vocab)
    held_out = rng.integers(0, vocab, (6, 12)).astype(np.uint32)
    lm = MaskedLM(model, vocab)
    layout = lm.layout
    bigram = random_mask(layout, 0.1, 0)
    sweep = {"1e1": random_mask(layout, 0.3, 1), "1e2": random_mask(layout, 0.05, 2)}
    conditions = ablation_masks(layout, bigram, sweep["1e1"], seed=0) | sweep_masks(sweep)
    assert set(conditions) >= {"optimal removed, λ=1e1", "optimal removed, λ=1e2"}
    rows = surprisal_rows("m", lm, conditions, counts, held_out, 4, CPU)
    found = dict(_optimal_removal_sweep(pl.DataFrame(rows), lm.n_masked))
    surprisal = {row["condition"]: row["mean_surprisal_bits"] for row in rows}
    full = surprisal["full model"]
    for label, mask in sweep.items():  # (the removed mask's kept count, its increase)
        increase = surprisal[sweep_condition(label)] - full
        assert found[float(kept(mask))] == pytest.approx(increase)
    # the paired removal is the sweep's λ = 1e1 removal
    assert surprisal["optimal removed"] == pytest.approx(surprisal[sweep_condition("1e1")])


@pytest.fixture(scope="module")
def model() -> GPTNeoXForCausalLM:
    return tiny_lm(vocab=60, ff=32, initializer_range=0.3)


def random_mask(layout: Any, density: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=generator) < density for n, s in layout.shapes.items()}


# ----------------------------------------------- r over well-estimated contexts (diagnostic)


def test_well_estimated_positions_match_a_brute_force_count() -> None:
    rng = np.random.default_rng(3)
    vocab = 12
    train = rng.zipf(1.6, (60, 10)).clip(1, vocab - 1).astype(np.uint32)
    held_out = rng.integers(0, vocab, (7, 10)).astype(np.uint32)
    counts = count_bigrams(train, vocab)
    as_context = Counter(int(t) for row in train for t in row[:-1])
    pairs = {(int(a), int(b)) for row in train for a, b in itertools.pairwise(row)}
    for min_count in (1, 5, 40):
        found = well_estimated(counts, held_out, min_count)
        assert found.shape == (7, 9)
        for i, j in itertools.product(range(7), range(9)):
            prev, nxt = int(held_out[i, j]), int(held_out[i, j + 1])
            expected = as_context[prev] >= min_count and (prev, nxt) in pairs
            assert found[i, j] == expected, (min_count, prev, nxt)


def test_the_diagnostic_r_covers_only_well_estimated_positions(
    model: GPTNeoXForCausalLM,
) -> None:
    rng = np.random.default_rng(4)
    vocab = model.config.vocab_size
    train = rng.zipf(1.4, (80, 12)).clip(1, vocab - 1).astype(np.uint32)
    held_out = rng.zipf(1.4, (10, 12)).clip(1, vocab - 1).astype(np.uint32)
    counts = count_bigrams(train, vocab)
    found = score_masks(
        "m", model, [], counts, held_out, 4, CPU, resamples=200, min_context_count=30
    )
    full = {r["metric"]: r["value"] for r in found.metrics if r["lambda"] == "neginf"}
    well = well_estimated(counts, held_out, 30)
    assert 0 < well.mean() < 1
    assert full["well_estimated_fraction"] == pytest.approx(well.mean())
    assert full["well_estimated_min_count"] == 30
    lm = MaskedLM(model, vocab)
    surprisal, _ = score_mask(
        lm, keep_all(lm.layout), torch.from_numpy(held_out.astype(np.int64)),
        BigramTarget.build(counts, lm.unembed, lm.unembed_bias), 4, CPU,
    )  # fmt: skip
    reference = bigram_surprisal(counts, held_out)
    expected = np.corrcoef(surprisal[well], reference[well])[0, 1]
    assert full["bigram_r_well_estimated"] == pytest.approx(expected, abs=1e-9)
    low, high = full["bigram_r_well_estimated_low"], full["bigram_r_well_estimated_high"]
    assert low <= full["bigram_r_well_estimated"] <= high
    # without the setting (checkpoints, controls) the diagnostic is not computed
    plain = score_masks("m", model, [], counts, held_out, 4, CPU)
    assert not any(r["metric"].startswith("bigram_r_well") for r in plain.metrics)


def test_min_context_count_is_a_validated_key_the_evaluate_stage_declares() -> None:
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.analysis.min_context_count == 1000
    assert "analysis.min_context_count" in STAGES["evaluate"].reads
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["analysis"]["min_context_count"] = 0
    with pytest.raises(UserError, match=r"analysis\.min_context_count") as error:
        validate_config(raw)
    assert "\n" not in str(error.value)


def test_the_diagnostic_is_shown_beside_the_r_verdict_and_never_decides() -> None:
    rule = CLAIMS["best_high"]
    evidence = Evidence([], [], {})
    base = ModelSummary(model="m", estimates={"best_r": Estimate(0.93, 0.925, 0.935)})
    passed, text = rule.check(base, evidence)
    shown = replace(
        base,
        estimates={**base.estimates, "best_r_well_estimated": Estimate(0.96, 0.955, 0.965)},
        well_estimated_fraction=0.62,
        well_estimated_min_count=1000,
    )
    passed_with, text_with = rule.check(shown, evidence)
    assert passed is False and passed_with is False  # the diagnostic never decides
    assert "diagnostic" not in text
    assert text_with.endswith(
        "diagnostic, not deciding: 0.960 [0.955, 0.965] on contexts seen ≥ 1,000 times in "
        "train (62.0% of eval positions)"
    )


# --------------------------------------------------------- the checkpoint grid of the default

# neox-2x80's full-model bigram r peaks at step 1,408 (drop-unseen r 0.888, Pythia-style init;
# 0.878 with the old init): 0.867 at 682 and 0.875 at 2,906 are within 0.02 of it.
FULL_MODEL_PEAK = 1408


def test_the_default_puts_masks_densely_around_the_full_models_peak() -> None:
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.checkpoints is not None
    (model,) = cfg.checkpoints.models
    saved = cfg.models[model].pretrain.checkpoint_steps
    steps = cfg.checkpoints.steps
    assert set(steps) <= set(saved) and 0 in steps and saved[-1] in steps
    # the peak and its saved neighbours on both sides carry masks ...
    at = saved.index(FULL_MODEL_PEAK)
    assert {saved[at - 1], FULL_MODEL_PEAK, saved[at + 1]} <= set(steps)
    # ... which lie within a factor 2 of it, at most 1.7x apart (log-spaced saves)
    near = [s for s in steps if FULL_MODEL_PEAK / 2 <= s <= 2 * FULL_MODEL_PEAK]
    assert len(near) >= 3 and all(b / a <= 1.7 for a, b in itertools.pairwise(near))
    # the grid pays for the Table 2 controls on every model: fewer checkpoint jobs than before
    assert len(checkpoint_masks(cfg)) < 18
