"""Residual-stream analyses: known answers for ridge, rotations, recall and covariance similarity,
and hooked states checked against Hugging Face's hidden states on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bigram_subnetworks.analysis.residual import (
    LinearMap,
    Moments,
    covariance_similarity,
    linear_map_logits,
    linear_map_scores,
    linear_map_surprisal,
    median_rotation,
    recall_at_k,
    residual_analysis,
    residual_states,
    ridge,
    split_sequences,
    token_ranks,
)
from bigram_subnetworks.analysis.scoring import clip_infinite, pearson
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.models.layout import final_norm, input_embedding
from tiny_models import tiny_lm

VOCAB, D, N_LAYERS = 64, 32, 2


def tiny_model(arch: str, init: float = 0.02) -> torch.nn.Module:
    model = tiny_lm(arch, vocab=VOCAB, d=D, layers=N_LAYERS, heads=4, initializer_range=init)
    assert sum(p.numel() for p in model.parameters()) < 50_000
    return model


@pytest.fixture(scope="module", params=["gpt_neox", "gpt2"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_model(request.param)


def random_data(n: int, d_in: int, d_out: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) * 3 + 5  # far from centred
    a = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)
    c = torch.randn(d_out, generator=g, dtype=torch.float64) * 10
    return x, a, c


# --- ridge ---------------------------------------------------------------------------------------


def test_ridge_recovers_an_exact_linear_map() -> None:
    x, a, c = random_data(400, 6, 4)
    fitted = ridge(x, x @ a + c, alpha=1e-8)
    torch.testing.assert_close(fitted.weight, a, atol=1e-7, rtol=0)
    torch.testing.assert_close(fitted.bias, c, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [1.0, 50.0])
def test_ridge_matches_the_closed_form_with_an_unpenalised_intercept(alpha: float) -> None:
    x, a, c = random_data(300, 5, 3, seed=1)
    y = x @ a + c + torch.randn(300, 3, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    # Minimise ‖Y − XW − 1bᵀ‖² + α‖W‖² directly: augmented design [X 1], no penalty on b.
    z = np.hstack([x.numpy(), np.ones((300, 1))])
    penalty = np.diag([alpha] * 5 + [0.0])
    theta = np.linalg.solve(z.T @ z + penalty, z.T @ y.numpy())
    fitted = ridge(x, y, alpha)
    np.testing.assert_allclose(fitted.weight.numpy(), theta[:5], atol=1e-9)
    np.testing.assert_allclose(fitted.bias.numpy(), theta[5], atol=1e-9)
    np.testing.assert_allclose(fitted(x).numpy(), z @ theta, atol=1e-8)


def test_moments_accumulated_in_batches_give_the_one_shot_fit() -> None:
    x, a, c = random_data(200, 4, 4, seed=3)
    y = torch.sin(x) @ a + c
    moments = Moments(4, 4)
    for part in range(4):
        moments.update(x[part * 50 : (part + 1) * 50].float(), y[part * 50 : (part + 1) * 50])
    whole = ridge(x.float(), y)
    torch.testing.assert_close(moments.ridge().weight, whole.weight)
    torch.testing.assert_close(moments.covariance(), torch.cov(x.float().double().T, correction=0))


# --- rotations -----------------------------------------------------------------------------------


def planes_rotated(theta_deg: float, n_planes: int, n_fixed: int, seed: int = 0) -> torch.Tensor:
    """n_planes 2-D planes rotated by θ and n_fixed axes left alone, in a random (non-orthogonal)
    basis: the eigenvalues, hence the angles, do not depend on the basis."""
    t = math.radians(theta_deg)
    plane = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    blocks = [plane] * n_planes + [torch.eye(1)] * n_fixed
    core = torch.block_diag(*blocks).double()
    d = core.shape[0]
    basis = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    basis = basis + d * torch.eye(d, dtype=torch.float64)  # well conditioned
    return basis @ core @ torch.linalg.inv(basis)


def test_identity_map_has_no_rotation() -> None:
    assert median_rotation(torch.eye(16)) == 0.0
    assert median_rotation(3 * torch.eye(16)) == 0.0  # scalings are ignored


@pytest.mark.parametrize("theta", [10.0, 56.2, 90.0, 135.0])
def test_planar_rotations_give_their_angle(theta: float) -> None:
    assert median_rotation(planes_rotated(theta, n_planes=4, n_fixed=0)) == pytest.approx(theta)
    # 3 planes (6 angles θ) and 5 fixed axes (angle 0): the median is still θ.
    assert median_rotation(planes_rotated(theta, 3, 5)) == pytest.approx(theta)
    # 2 planes and 4 fixed axes: angles {0 ×4, θ ×4}, median of the middle two = θ / 2.
    assert median_rotation(planes_rotated(theta, 2, 4)) == pytest.approx(theta / 2)


def test_reflection_is_180_degrees() -> None:
    assert median_rotation(-torch.eye(5)) == pytest.approx(180.0)


# --- recall --------------------------------------------------------------------------------------


def test_recall_is_one_through_an_exact_map() -> None:
    g = torch.Generator().manual_seed(4)
    embeddings = torch.randn(50, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 50, (300,), generator=g)
    mix = torch.randn(16, 16, generator=g, dtype=torch.float64) + 4 * torch.eye(16)
    states = embeddings[ids] @ mix + 1.5  # an invertible affine "layer" of the embeddings
    predicted = ridge(states, embeddings[ids], alpha=1e-9)(states)
    ranks = token_ranks(predicted, ids, embeddings)
    assert recall_at_k(ranks) == {1: 1.0, 5: 1.0, 10: 1.0}
    assert torch.equal(token_ranks(predicted, ids, embeddings, max_scores=120), ranks)
    assert torch.equal(token_ranks(2.5 * embeddings[ids], ids, embeddings), ranks)  # cosine


def test_ranks_count_strictly_better_rows() -> None:
    embeddings = torch.eye(12)
    predicted = (3 * embeddings[0] + 2 * embeddings[1] + embeddings[2]).expand(4, 12)
    ranks = token_ranks(predicted, torch.tensor([0, 1, 2, 3]), embeddings, max_scores=12)
    assert ranks.tolist() == [0, 1, 2, 3]
    assert recall_at_k(ranks, (1, 2, 5)) == {1: 0.25, 2: 0.5, 5: 1.0}


# --- covariance similarity -----------------------------------------------------------------------


def test_covariance_similarity_of_identical_layers_is_one_and_symmetric() -> None:
    g = torch.Generator().manual_seed(5)
    covs = [torch.cov(torch.randn(8, 100, generator=g)) for _ in range(3)]
    sim = covariance_similarity([covs[0], covs[1], covs[0], covs[2]])
    torch.testing.assert_close(sim, sim.T)
    torch.testing.assert_close(sim.diagonal(), torch.ones(4, dtype=sim.dtype))
    assert sim[0, 2] == pytest.approx(1.0)
    assert sim[0, 1] < 0.999


def test_covariance_similarity_ignores_the_top_direction() -> None:
    a, b = torch.diag(torch.tensor([10.0, 3, 2, 1])), torch.diag(torch.tensor([100.0, 3, 2, 1]))
    c = torch.diag(torch.tensor([10.0, 1, 2, 3]))
    sim = covariance_similarity([a, b, c])
    assert sim[0, 1] == pytest.approx(1.0)  # equal once the top direction is dropped
    assert sim[0, 2] == pytest.approx(10 / 14)  # (3·1 + 2·2 + 1·3) / (1 + 4 + 9)


# --- hooked states -------------------------------------------------------------------------------


def test_hooked_states_are_hf_hidden_states_but_pre_norm_at_the_end(model: torch.nn.Module) -> None:
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(6))
    states = residual_states(model, ids)
    assert states.shape == (N_LAYERS + 1, 30, D) and states.dtype == torch.float32
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        hidden = [h.reshape(30, D) for h in out.hidden_states]
        assert len(hidden) == N_LAYERS + 1
        for layer in range(N_LAYERS):
            torch.testing.assert_close(states[layer], hidden[layer])
        # HF's last hidden state is after the final norm; the hooked one is before it.
        assert not torch.allclose(states[-1], hidden[-1], atol=1e-2)
        torch.testing.assert_close(final_norm(model)(states[-1]), hidden[-1])
        # Layer 0 is the token embedding (+ position embedding in GPT-2).
        embedded = input_embedding(model)[ids.reshape(-1)]
        if model.config.model_type == "gpt2":
            embedded = embedded + model.transformer.wpe.weight[torch.arange(10).repeat(3)]
        torch.testing.assert_close(states[0], embedded)
        # The identity map on the last state reproduces the model's logits.
        identity = LinearMap(torch.eye(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64))
        logits = linear_map_logits(model, states[-1], identity)
        torch.testing.assert_close(logits, out.logits.reshape(30, VOCAB), atol=1e-5, rtol=1e-5)


def test_residual_states_restore_training_mode(model: torch.nn.Module) -> None:
    model.train()
    residual_states(model, torch.zeros(1, 4, dtype=torch.long))
    assert model.training
    model.eval()


# --- whole analysis ------------------------------------------------------------------------------


def test_residual_analysis_rows(model: torch.nn.Module) -> None:
    sequences = torch.randint(0, VOCAB, (24, 16), generator=torch.Generator().manual_seed(7))
    result = residual_analysis(model, sequences[:20], sequences[20:], batch_size=8)
    rows = result.rows
    n = N_LAYERS + 1
    assert len(rows) == 2 * n + 3 * n + n * n
    value = {(r["metric"], r["layer"], r["layer_b"]): r["value"] for r in rows}
    for layer in range(n):
        assert 0.0 <= value["rotation_to_input", layer, None] <= 180.0
        recalls = [value[f"recall@{k}", layer, None] for k in (1, 5, 10)]
        assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0
        assert value["covariance_similarity", layer, layer] == pytest.approx(1.0)
        for other in range(n):
            pair = value["covariance_similarity", layer, other]
            assert pair == pytest.approx(value["covariance_similarity", other, layer])
    # A state mapped onto itself (X_L → X_L): (XᵀX + αI)⁻¹XᵀX has real positive eigenvalues.
    assert value["rotation_to_output", n - 1, None] == pytest.approx(0.0, abs=1e-6)
    if model.config.model_type == "gpt_neox":  # layer 0 is exactly the input embedding
        assert value["rotation_to_input", 0, None] == pytest.approx(0.0, abs=1e-6)
    assert result.layer0_to_output.weight.shape == (D, D)


def test_layer0_input_recall_is_perfect_with_clear_embeddings() -> None:
    model = tiny_model("gpt_neox", init=1.0)  # embeddings large next to α = 1
    sequences = torch.randint(0, VOCAB, (40, 16), generator=torch.Generator().manual_seed(8))
    rows = residual_analysis(model, sequences[:32], sequences[32:], batch_size=16).rows
    assert next(r for r in rows if r["metric"] == "recall@1" and r["layer"] == 0)["value"] == 1.0


def test_residual_analysis_needs_fit_and_test_sequences(model: torch.nn.Module) -> None:
    with pytest.raises(UserError, match="need both"):
        residual_analysis(model, torch.zeros(3, 4, dtype=torch.long), torch.zeros(0, 4).long())
    with pytest.raises(UserError, match="at least two"):
        split_sequences(1, seed=0)


# --- fitting vs held-out data --------------------------------------------------------------------


def test_the_split_is_seeded_disjoint_and_holds_out_a_quarter() -> None:
    fit, heldout = split_sequences(40, seed=3)
    assert len(heldout) == 10 and len(fit) == 30
    assert sorted([*fit, *heldout]) == list(range(40)) and not set(fit) & set(heldout)
    assert list(fit) == sorted(fit) and list(heldout) == sorted(heldout)
    again = split_sequences(40, seed=3)
    assert np.array_equal(again[1], heldout)
    assert not np.array_equal(split_sequences(40, seed=4)[1], heldout)
    assert list(heldout) != list(range(30, 40))  # not simply the last quarter
    assert [len(part) for part in split_sequences(2, seed=0)] == [1, 1]


def test_maps_come_from_the_fitting_part_and_are_scored_on_the_held_out_part(
    model: torch.nn.Module,
) -> None:
    """Rotations and covariances depend on the fitting sequences only; recall and the
    linear-map surprisals change with the held-out ones."""
    g = torch.Generator().manual_seed(11)
    fit = torch.randint(0, VOCAB, (20, 16), generator=g)
    heldout_a = torch.randint(0, VOCAB, (6, 16), generator=g)
    heldout_b = torch.randint(0, VOCAB, (6, 16), generator=g)
    first = residual_analysis(model, fit, heldout_a, batch_size=8)
    second = residual_analysis(model, fit, heldout_b, batch_size=8)

    def values(rows: list[dict], prefix: str) -> list[float]:
        return [r["value"] for r in rows if r["metric"].startswith(prefix)]

    for prefix in ("rotation", "covariance"):
        assert values(first.rows, prefix) == values(second.rows, prefix)
    torch.testing.assert_close(first.layer0_to_output.weight, second.layer0_to_output.weight)
    assert values(first.rows, "recall") != values(second.rows, "recall")
    bits = linear_map_surprisal(model, first.layer0_to_output, heldout_a, VOCAB, 4)
    assert bits.shape == (6, 15)
    refit = residual_analysis(model, torch.cat([fit, heldout_a]), heldout_b, batch_size=8)
    in_sample = linear_map_surprisal(model, refit.layer0_to_output, heldout_a, VOCAB, 4)
    assert not np.allclose(bits, in_sample)  # fitted on the scored sequences: another map


def test_linear_map_scores_are_held_out_r_with_intervals_and_unseen_fraction() -> None:
    rng = np.random.default_rng(0)
    reference = rng.gamma(2.0, 3.0, size=(40, 15))
    reference[rng.random(reference.shape) < 0.05] = np.inf  # unseen bigrams
    bits = np.where(np.isfinite(reference), reference, 30.0) * 0.5 + rng.normal(size=(40, 15))
    scores = linear_map_scores(bits, reference, resamples=300, seed=0)
    finite = np.isfinite(reference)
    assert scores["bigram_r"] == pytest.approx(pearson(bits, clip_infinite(reference)))
    assert scores["bigram_r_dropinf"] == pytest.approx(pearson(bits[finite], reference[finite]))
    assert scores["unseen_fraction"] == pytest.approx(1 - finite.mean())
    for metric in ("bigram_r", "bigram_r_dropinf"):
        assert scores[f"{metric}_low"] < scores[metric] < scores[f"{metric}_high"]
    assert scores == linear_map_scores(bits, reference, resamples=300, seed=0)
