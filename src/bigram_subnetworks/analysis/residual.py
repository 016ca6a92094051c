"""Residual-stream analyses (§5): linear maps between layers, their rotations, token recall and
cross-layer covariance similarity.

Layer ℓ (0 ≤ ℓ ≤ L for an L-block model) is the residual stream at the input of block ℓ; layer L is
the input of the final layer norm, i.e. the last block's output *before* the norm. Hugging Face's
`output_hidden_states[-1]` is taken after the final norm, so states are read with forward
pre-hooks instead. Layer 0 is the token embedding (plus the position embedding in GPT-2).

For every layer two ridge maps (α = 1, intercept not penalised, as sklearn's
`Ridge(alpha=1.0, fit_intercept=True)`) are fitted: "to input" predicts the current token's raw
embedding row (no position embedding), "to output" predicts the layer-L state. Fits use running
float64 sums (`Moments`), so memory does not grow with the number of tokens.

Fitting and scoring data (`split_sequences`): the sequences are split once, seeded, into a fitting
part (three quarters) and a held-out part (a quarter; whole sequences, so no context is shared).

- On the **fitting** part: the maps themselves, their rotations (a property of the fitted map, as
  in the paper, which reads them off maps fitted on its 1K sequences) and the covariance
  similarities (activation statistics, no map involved).
- On the **held-out** part: every number that scores a map's predictions: token recall@k through
  the "to input" maps, and the layer-0 linear-map bigram r (Table 2's "embeddings + learned linear
  map"), with its bootstrap interval over held-out sequences and the unseen-bigram fraction of the
  held-out positions. An in-sample r would credit the map with what it memorised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from bigram_subnetworks.artifacts import RESIDUAL
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.models.layout import (
    block_modules,
    body,
    final_norm,
    input_embedding,
    output_logits,
    unembedding,
)

if TYPE_CHECKING:
    from bigram_subnetworks.config import Config

log = logging.getLogger(__name__)

KS = (1, 5, 10)
HELDOUT_FRACTION = 0.25  # share of the residual sequences held out to score the maps
SPLIT_STREAM = 0x5E11  # seeds the fit/held-out split apart from other uses of the run's seed


def split_sequences(
    n: int, seed: int, heldout_fraction: float = HELDOUT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n sequences into (fitting, held-out) index arrays, each sorted; the
    held-out part has max(1, round(n · heldout_fraction)) sequences and the fitting part the
    rest (at least one each)."""
    if n < 2:
        raise UserError(f"{n} residual sequences: need at least two (one to fit, one to test)")
    n_heldout = min(n - 1, max(1, round(n * heldout_fraction)))
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(n)
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


@dataclass(frozen=True)
class LinearMap:
    """y = x @ weight + bias, with weight (d_in, d_out) and bias (d_out,), in float64."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight) @ self.weight + self.bias

    def columns(self, start: int, stop: int) -> LinearMap:
        """The map onto output features [start, stop) only."""
        return LinearMap(self.weight[:, start:stop], self.bias[start:stop])


class Moments:
    """Running float64 sums of x, y, xᵀx and xᵀy: enough for ridge with intercept and for cov(x)."""

    def __init__(self, d_in: int, d_out: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sum_y = torch.zeros(d_out, dtype=torch.float64, device=device)
        self.xx = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        self.xy = torch.zeros(d_in, d_out, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows x (n, d_in) with targets y (n, d_out)."""
        x, y = x.to(self.xx), y.to(self.xx)
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xx.addmm_(x.T, x)
        self.xy.addmm_(x.T, y)

    def covariance(self) -> torch.Tensor:
        """Covariance of x (centred, divided by n), (d_in, d_in)."""
        return (self.xx - torch.outer(self.sum_x, self.sum_x) / self.n) / self.n

    def ridge(self, alpha: float = 1.0) -> LinearMap:
        """Ridge fit of y on x: solve (XcᵀXc + αI) W = XcᵀYc on centred data; b = ȳ − x̄ W."""
        mean_x, mean_y = self.sum_x / self.n, self.sum_y / self.n
        xx = self.xx - self.n * torch.outer(mean_x, mean_x)
        xy = self.xy - self.n * torch.outer(mean_x, mean_y)
        eye = torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device)
        weight = torch.linalg.solve(xx + alpha * eye, xy)
        return LinearMap(weight, mean_y - mean_x @ weight)


def ridge(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0) -> LinearMap:
    """Ridge fit of y (n, d_out) on x (n, d_in) with an unpenalised intercept, as sklearn
    `Ridge(alpha, fit_intercept=True)`."""
    moments = Moments(x.shape[1], y.shape[1], x.device)
    moments.update(x, y)
    return moments.ridge(alpha)


@torch.no_grad()
def residual_states(
    model: torch.nn.Module, input_ids: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Residual states (L + 1, batch·positions, d) in float32 on `device`: index ℓ < L is the
    input of block ℓ, index L the input of the final layer norm. Runs the body in eval mode."""
    captured: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden.reshape(-1, hidden.shape[-1]).to(device, torch.float32))

    modules = [*block_modules(model), final_norm(model)]
    handles = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in modules]
    was_training = model.training
    model.eval()
    try:
        body(model)(input_ids=input_ids.to(input_embedding(model).device), use_cache=False)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if len(captured) != len(modules):
        raise RuntimeError(f"captured {len(captured)} residual states, expected {len(modules)}")
    return torch.stack(captured)


def median_rotation(matrix: torch.Tensor) -> float:
    """Median over the eigenvalues λ of a square map of |arg λ|, in degrees within [0, 180]."""
    eigenvalues = torch.linalg.eigvals(matrix.detach().to("cpu", torch.float64))
    return float(torch.quantile(torch.rad2deg(eigenvalues.angle().abs()), 0.5))


def token_ranks(
    predicted: torch.Tensor,
    token_ids: torch.Tensor,
    embeddings: torch.Tensor,
    max_scores: int = 2**24,
) -> torch.Tensor:
    """Per row of `predicted` (n, d): how many embedding rows (V, d) have a strictly higher cosine
    similarity than the row of its token (0 = top-1; ties count in the token's favour). The
    (n, V) score matrix is built at most `max_scores` entries at a time."""
    rows = F.normalize(embeddings.detach().float(), dim=-1)
    pred = F.normalize(predicted.to(rows), dim=-1)
    ids = token_ids.reshape(-1, 1).to(rows.device)
    step = max(1, max_scores // rows.shape[0])
    ranks = []
    for start in range(0, pred.shape[0], step):
        scores = pred[start : start + step] @ rows.T
        own = scores.gather(1, ids[start : start + step])
        ranks.append((scores > own).sum(1))
    return torch.cat(ranks).cpu()


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict[int, float]:
    """Fraction of tokens ranked within the top k, for each k."""
    return {k: float((ranks < k).double().mean()) for k in ks}


def covariance_similarity(covariances: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n, n) Frobenius cosine similarities of covariance matrices after removing each one's top
    principal direction v₁ (the top singular direction of the centred states): C − λ₁ v₁v₁ᵀ."""
    flat = []
    for cov in covariances:
        cov = cov.double()
        values, vectors = torch.linalg.eigh(cov)
        reduced = cov - values[-1] * torch.outer(vectors[:, -1], vectors[:, -1])
        flat.append((reduced / torch.linalg.norm(reduced)).reshape(-1))
    stacked = torch.stack(flat)
    return (stacked @ stacked.T).cpu()


@torch.no_grad()
def linear_map_logits(
    model: torch.nn.Module, states: torch.Tensor, fitted: LinearMap
) -> torch.Tensor:
    """The model's logits of final_norm(fitted(states)) for states (n, d) (its LM head and any
    logit soft-cap): Table 2's "embeddings + learned linear map" control with the layer-0 "to
    output" map."""
    weight = unembedding(model)
    hidden = final_norm(model)(fitted(states).to(weight.device, weight.dtype))
    return output_logits(model, hidden)


SCHEMA = RESIDUAL.schema  # one row per model × condition × metric × layer (× second layer)


def _row(metric: str, layer: int, value: float, layer_b: int | None = None) -> dict[str, Any]:
    return {"metric": metric, "layer": layer, "layer_b": layer_b, "value": value}


@dataclass(frozen=True)
class ResidualAnalysis:
    """Tidy result rows and the layer-0 "to output" map (for `linear_map_logits`)."""

    rows: list[dict[str, Any]]
    layer0_to_output: LinearMap


def residual_analysis(
    model: torch.nn.Module,
    fit: torch.Tensor,
    heldout: torch.Tensor,
    batch_size: int = 32,
    alpha: float = 1.0,
    vocab_size: int | None = None,
    ks: Sequence[int] = KS,
) -> ResidualAnalysis:
    """Fit both maps and the covariances on every position of the `fit` sequences, and score
    token recall on the `heldout` sequences (see the module docstring for which number uses
    which). Recall ranks the first `vocab_size` embedding rows (all if None).

    Rows are dicts with keys metric, layer, layer_b, value: metric "rotation_to_input",
    "rotation_to_output" (degrees) and "recall@k" per layer (layer_b None), and
    "covariance_similarity" for every layer pair (layer, layer_b)."""
    fit, heldout = torch.as_tensor(fit), torch.as_tensor(heldout)
    if len(fit) == 0 or len(heldout) == 0:
        raise UserError(
            f"{len(fit)} fitting and {len(heldout)} held-out sequences: the residual analyses "
            "need both"
        )
    embed = input_embedding(model).detach()
    device, d = embed.device, embed.shape[1]
    n_states = len(block_modules(model)) + 1
    moments = [Moments(d, 2 * d, device) for _ in range(n_states)]
    for start in range(0, len(fit), batch_size):
        batch = fit[start : start + batch_size]
        states = residual_states(model, batch, device)
        targets = torch.cat([embed[batch.reshape(-1).to(device)].float(), states[-1]], dim=1)
        for layer_moments, layer_states in zip(moments, states, strict=True):
            layer_moments.update(layer_states, targets)
    maps = [m.ridge(alpha) for m in moments]
    to_input = [fitted.columns(0, d) for fitted in maps]
    to_output = [fitted.columns(d, 2 * d) for fitted in maps]

    rows: list[dict[str, Any]] = []
    for layer in range(n_states):
        rows.append(_row("rotation_to_input", layer, median_rotation(to_input[layer].weight)))
        rows.append(_row("rotation_to_output", layer, median_rotation(to_output[layer].weight)))

    vocab = embed if vocab_size is None else embed[:vocab_size]
    ranks: list[list[torch.Tensor]] = [[] for _ in range(n_states)]
    for start in range(0, len(heldout), batch_size):
        batch = heldout[start : start + batch_size]
        states = residual_states(model, batch, device)
        for layer in range(n_states):
            ranks[layer].append(token_ranks(to_input[layer](states[layer]), batch, vocab))
    for layer in range(n_states):
        for k, value in recall_at_k(torch.cat(ranks[layer]), ks).items():
            rows.append(_row(f"recall@{k}", layer, value))

    similarity = covariance_similarity([m.covariance() for m in moments])
    rows += [
        _row("covariance_similarity", a, float(similarity[a, b]), b)
        for a in range(n_states)
        for b in range(n_states)
    ]
    return ResidualAnalysis(rows, to_output[0])


def linear_map_surprisal(
    model: torch.nn.Module,
    fitted: LinearMap,
    sequences: torch.Tensor,
    vocab_size: int,
    batch_size: int,
) -> np.ndarray:
    """Surprisal (bits, (n, T-1)) of every next token under "embeddings + the layer-0 linear
    map" (Table 2): final_norm(L_out(x_0)) through the model's LM head."""
    from bigram_subnetworks.analysis.scoring import LOG2E

    bits = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        states = residual_states(model, batch, input_embedding(model).device)[0]
        logits = linear_map_logits(model, states, fitted)[:, :vocab_size].float()
        log_probs = torch.log_softmax(logits, -1).reshape(batch.shape[0], batch.shape[1], -1)
        nll = -log_probs[:, :-1].gather(-1, batch[:, 1:, None].to(log_probs.device)).squeeze(-1)
        bits.append((nll * LOG2E).cpu().numpy())
    return np.concatenate(bits)


def linear_map_scores(
    bits: np.ndarray, reference_bits: np.ndarray, resamples: int, seed: int
) -> dict[str, float]:
    """Bigram r of the linear-map surprisals `bits` against the bigram surprisals of the same
    (held-out) positions, clipped and drop-unseen, each with its bootstrap interval over the
    sequences, and the unseen fraction of those positions; keys as the controls' metrics."""
    from bigram_subnetworks.analysis.scoring import (
        HIGH,
        LOW,
        Bootstrap,
        clip_infinite,
        pearson,
        sequence_moments,
        unseen_fraction,
    )

    clipped = clip_infinite(reference_bits)
    finite = np.isfinite(reference_bits)
    values = {
        "bigram_r": pearson(bits, clipped),
        "bigram_r_dropinf": pearson(bits[finite], reference_bits[finite]),
        "unseen_fraction": unseen_fraction(reference_bits),
    }
    resampling = Bootstrap.draw(len(bits), resamples, seed)
    if resampling.resamples:
        moments = np.stack(
            [
                sequence_moments(bits, clipped),
                sequence_moments(bits, np.where(finite, reference_bits, 0.0), finite),
            ],
            axis=1,
        )
        draws = resampling.replicates(moments)
        for i, metric in enumerate(("bigram_r", "bigram_r_dropinf")):
            values[metric + LOW], values[metric + HIGH] = resampling.interval(draws[:, i])
    return values


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    selection: Path,
    tokens_eval: Path,
    bigram_stats: Path,
    residual: Path,
) -> None:
    """The residual stage: `residual.parquet` for the full model, the selected bigram mask and a
    random mask with the same count in every block, for every model (maps fitted on the seeded
    fitting part of the sequences, scored on the held-out part)."""
    from bigram_subnetworks.analysis.scoring import (
        bigram_surprisal,
        eval_sample,
        find_mask,
        index_masks,
    )
    from bigram_subnetworks.analysis.select import read_selection
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.io import atomic_outputs, write_parquet
    from bigram_subnetworks.masks.toolkit import keep_all, load_mask, masked, random_within_blocks
    from bigram_subnetworks.models.layout import layout_of
    from bigram_subnetworks.models.loading import load_model, model_identity, pick_device

    settings = cfg.analysis
    counts = read_bigram_counts(bigram_stats)
    sequences = eval_sample(read_sequences(tokens_eval), settings.residual_sequences, cfg.seed + 1)
    tokens = torch.from_numpy(sequences.astype("int64"))
    fit_part, test_part = split_sequences(len(tokens), cfg.seed)
    fit, heldout = tokens[fit_part], tokens[test_part]
    heldout_bits = bigram_surprisal(counts, sequences[test_part])
    device = pick_device(cfg.device)
    index = index_masks(masks)
    rows: list[dict[str, Any]] = []
    for model_dir in models:
        name = model_dir.name
        model, info = load_model(model_dir)
        model = model.to(device).eval()
        layout = layout_of(model)
        chosen = read_selection(selection, name)["bigram"]["lambda"]
        path = find_mask(index, name, "bigram", chosen)
        bigram = load_mask(path, layout, model_identity(model_dir, info))[0]
        conditions = {
            "full model": keep_all(layout),
            "bigram": bigram,
            "random": random_within_blocks(bigram, layout, cfg.seed),
        }
        for condition, mask in conditions.items():
            with masked(model, mask):
                result = residual_analysis(
                    model, fit, heldout, settings.batch_size, vocab_size=counts.vocab_size
                )
                bits = linear_map_surprisal(
                    model,
                    result.layer0_to_output,
                    heldout,
                    counts.vocab_size,
                    settings.batch_size,
                )
            scores = linear_map_scores(bits, heldout_bits, settings.bootstrap_resamples, cfg.seed)
            extra = [_row(f"layer0_linear_map_{k}", 0, v) for k, v in scores.items()]
            rows += [{"model": name, "condition": condition, **row} for row in result.rows + extra]
        log.info("%s: residual analyses of %d conditions", name, len(conditions))
    with atomic_outputs(residual) as (temp,):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
